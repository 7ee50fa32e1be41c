// Gateway vitals read through rootPath: from the fixture trees of four boards, from trees with
// files missing or damaged (never a throw: a null or 0 and a problem), and from this machine.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { HealthPayload } from '../../agent/mqtt/topics.js';
import { countCpuList, readVitals, roleInterfaces, type Vitals, type VitalsOptions } from '../../agent/health/vitals.js';
import { boardById, detectBoard } from '../../hardware/boards/index.js';

const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'boards');
const KB = 1024;
const temps: string[] = [];
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), 'wg-vitals-'));
  temps.push(d);
  return d;
};
const tempRoot = (files: Record<string, string>) => {
  const root = tempDir();
  for (const [rel, content] of Object.entries(files)) {
    mkdirSync(join(root, rel, '..'), { recursive: true });
    writeFileSync(join(root, rel), content);
  }
  return root;
};
afterAll(() => {
  for (const t of temps) rmSync(t, { recursive: true, force: true });
});

const stateDir = tempDir();
const pi = roleInterfaces({ uplink: 'eth0', device: 'eth1' });

/** The vitals fields of the health payload, as its schema checks them. */
const VitalsPart = HealthPayload.pick({ board: true, uptimeSeconds: true, load: true, cpuCount: true, memory: true, disk: true, temperatureC: true, interfaces: true }).extend({
  agent: HealthPayload.shape.agent.pick({ rssBytes: true, pid: true }),
});
function fitsPayload(v: Vitals): void {
  const { problems, ...rest } = v;
  expect(Array.isArray(problems)).toBe(true);
  expect(VitalsPart.strict().parse(rest)).toEqual(rest);
}

async function fixture(board: Parameters<typeof boardById>[0], interfaces: VitalsOptions['interfaces'] = pi): Promise<Vitals> {
  const rootPath = join(FIXTURES, board);
  const profile = await detectBoard(rootPath);
  expect(profile.id).toBe(board);
  return readVitals({ rootPath, board: profile, interfaces, stateDir });
}

describe('vitals from fixture trees', () => {
  it('Raspberry Pi 4', async () => {
    const v = await fixture('raspberry-pi-4');
    fitsPayload(v);
    expect(v.problems).toEqual([]);
    expect(v).toMatchObject({
      board: 'raspberry-pi-4',
      uptimeSeconds: 86412.37,
      load: [0.31, 0.27, 0.22],
      cpuCount: 4,
      memory: { totalBytes: 3881872 * KB, availableBytes: 3512344 * KB },
      temperatureC: 48.7,
    });
    expect(v.interfaces).toEqual([
      { role: 'uplink', name: 'eth0', present: true, up: true, speedMbps: 1000, rxBytes: 4821931520, txBytes: 913822208, rxErrors: 0, txErrors: 0, rxDropped: 17 },
      { role: 'device', name: 'eth1', present: true, up: true, speedMbps: 1000, rxBytes: 1210044416, txBytes: 3977011200, rxErrors: 0, txErrors: 2, rxDropped: 3 },
    ]);
    expect(v.agent).toEqual({ rssBytes: expect.any(Number) as number, pid: process.pid });
    expect(v.agent.rssBytes).toBeGreaterThan(1024 * 1024);
  });

  it('Raspberry Pi 5: an unplugged port is present but down, with no speed', async () => {
    const v = await fixture('raspberry-pi-5');
    fitsPayload(v);
    expect(v.problems).toEqual([]);
    expect(v).toMatchObject({ board: 'raspberry-pi-5', uptimeSeconds: 3611.02, load: [1.08, 0.74, 0.61], cpuCount: 4, temperatureC: 52.3 });
    expect(v.memory).toEqual({ totalBytes: 8245376 * KB, availableBytes: 7702236 * KB });
    expect(v.interfaces[1]).toEqual({ role: 'device', name: 'eth1', present: true, up: false, speedMbps: null, rxBytes: 0, txBytes: 0, rxErrors: 0, txErrors: 0, rxDropped: 0 });
  });

  it('RevPi Connect 4: the CPU count comes from /proc/cpuinfo when cpu/online is absent', async () => {
    const v = await fixture('revpi-connect-4');
    fitsPayload(v);
    expect(v.problems).toEqual([]);
    expect(v).toMatchObject({ board: 'revpi-connect-4', cpuCount: 4, temperatureC: 55, uptimeSeconds: 1209600.5 });
    expect(v.interfaces[1]).toMatchObject({ name: 'eth1', up: true, speedMbps: 100, rxErrors: 4, rxDropped: 9 });
  });

  it('generic x86: the package sensor is preferred to the ACPI zone; a bridge has no speed', async () => {
    const v = await fixture('generic-x86', roleInterfaces({ uplink: 'enp86s0', device: 'enp87s0', bridge: 'br-wg' }));
    fitsPayload(v);
    expect(v.problems).toEqual([]);
    expect(v).toMatchObject({ board: 'generic-x86', cpuCount: 8, temperatureC: 41, load: [0.05, 0.11, 0.09] });
    expect(v.memory.totalBytes).toBe(16107384 * KB);
    expect(v.interfaces.map((i) => [i.role, i.name, i.up, i.speedMbps])).toEqual([
      ['uplink', 'enp86s0', true, 2500],
      ['device', 'enp87s0', true, 1000],
      ['bridge', 'br-wg', true, null],
    ]);
  });

  it('an interface that is not there is present: false, and says so', async () => {
    const v = await fixture('raspberry-pi-4', [...pi, { role: 'management', name: 'eth2' }]);
    expect(v.interfaces[2]).toEqual({ role: 'management', name: 'eth2', present: false, up: false, speedMbps: null, rxBytes: 0, txBytes: 0, rxErrors: 0, txErrors: 0, rxDropped: 0 });
    expect(v.problems).toEqual(['interfaces: management interface eth2 is not present (/sys/class/net/eth2 is missing)']);
  });

  it('loopback counts as up: its operstate is "unknown" with carrier', async () => {
    const v = await fixture('raspberry-pi-4', [{ role: 'management', name: 'lo' }]);
    expect(v.interfaces[0]).toMatchObject({ present: true, up: true, speedMbps: null });
  });

  it('an interface name cannot climb out of /sys/class/net', async () => {
    const v = await fixture('raspberry-pi-4', [{ role: 'uplink', name: '..' }, { role: 'device', name: '../../proc' }]);
    expect(v.interfaces.map((i) => i.present)).toEqual([false, false]);
    expect(v.problems).toHaveLength(2);
    expect(v.problems[0]).toMatch(/not a Linux interface name/);
  });
});

describe('missing and damaged files never throw', () => {
  it('an empty root gives zeros and nulls, and one problem per field', async () => {
    const v = await readVitals({ rootPath: tempDir(), board: boardById('raspberry-pi-4'), interfaces: pi, stateDir });
    fitsPayload(v);
    expect(v).toMatchObject({ uptimeSeconds: 0, load: [0, 0, 0], cpuCount: 0, memory: { totalBytes: 0, availableBytes: 0 }, temperatureC: null });
    expect(v.interfaces.map((i) => i.present)).toEqual([false, false]);
    expect(v.problems).toEqual([
      'load: /proc/loadavg is missing',
      'uptime: /proc/uptime is missing',
      'memory: /proc/meminfo is missing',
      'cpuCount: neither /sys/devices/system/cpu/online nor /proc/cpuinfo gives the CPU count',
      'temperature: no thermal zone found for Raspberry Pi 4 (looked for type cpu-thermal, /sys/class/thermal/thermal_zone0)',
      'interfaces: uplink interface eth0 is not present (/sys/class/net/eth0 is missing)',
      'interfaces: device interface eth1 is not present (/sys/class/net/eth1 is missing)',
    ]);
    // The disk is the real state directory's, whatever the root.
    expect(v.disk.totalBytes).toBeGreaterThan(0);
  });

  it('garbage, an old kernel\'s meminfo, a dead sensor and half an interface', async () => {
    const rootPath = tempRoot({
      'proc/loadavg': 'garbage\n',
      'proc/uptime': 'n/a\n',
      'proc/meminfo': 'MemTotal:        1000 kB\nMemFree:          100 kB\nBuffers:           20 kB\nCached:           300 kB\n',
      'sys/devices/system/cpu/online': 'weird\n',
      'proc/cpuinfo': 'processor\t: 0\n\nprocessor\t: 1\n',
      'sys/class/thermal/thermal_zone0/type': 'cpu-thermal\n',
      'sys/class/thermal/thermal_zone0/temp': '-274000\n',
      'sys/class/net/eth0/operstate': 'up\n',
      'sys/class/net/eth0/statistics/rx_bytes': '12\n',
      'sys/class/net/eth0/statistics/tx_bytes': 'x\n',
    });
    const v = await readVitals({ rootPath, board: boardById('raspberry-pi-4'), interfaces: [{ role: 'uplink', name: 'eth0' }], stateDir });
    fitsPayload(v);
    expect(v.memory).toEqual({ totalBytes: 1000 * KB, availableBytes: 420 * KB });
    expect(v.cpuCount).toBe(2);
    expect(v.temperatureC).toBeNull();
    expect(v.interfaces[0]).toMatchObject({ present: true, up: true, speedMbps: null, rxBytes: 12, txBytes: 0 });
    expect(v.problems).toEqual([
      'load: /proc/loadavg is not "1m 5m 15m ...": "garbage\\n"',
      'uptime: /proc/uptime is not "seconds idle": "n/a\\n"',
      'memory: /proc/meminfo has no MemAvailable: estimated from MemFree + Buffers + Cached',
      'temperature: /sys/class/thermal/thermal_zone0/temp reads -274 °C, which no running board reaches: ignored',
      expect.stringMatching(/^interfaces: \/sys\/class\/net\/eth0\/statistics\/(rx_errors|tx_errors|rx_dropped) is missing$/) as string,
      expect.stringMatching(/^interfaces: \/sys\/class\/net\/eth0\/statistics\/(rx_errors|tx_errors|rx_dropped) is missing$/) as string,
      expect.stringMatching(/^interfaces: \/sys\/class\/net\/eth0\/statistics\/(rx_errors|tx_errors|rx_dropped) is missing$/) as string,
      'interfaces: /sys/class/net/eth0/statistics/tx_bytes is not a number',
    ]);
  });

  it('a state directory not created yet is measured at its nearest parent', async () => {
    const base = tempDir();
    const v = await readVitals({ rootPath: tempDir(), board: boardById('generic-x86'), interfaces: [], stateDir: join(base, 'not', 'yet') });
    expect(v.disk.path).toBe(base);
    expect(v.disk.freeBytes).toBeGreaterThan(0);
    expect(v.disk.freeBytes).toBeLessThanOrEqual(v.disk.totalBytes);
  });

  it('CPU lists', () => {
    expect(countCpuList('0-3\n')).toBe(4);
    expect(countCpuList('0,2-3,8')).toBe(4);
    expect(countCpuList('0')).toBe(1);
    expect(countCpuList('3-1')).toBeUndefined();
    expect(countCpuList('')).toBeUndefined();
  });
});

describe('this machine', () => {
  it('reads the real / sensibly', async () => {
    const board = await detectBoard('/');
    const dir = tempDir();
    const v = await readVitals({ rootPath: '/', board, interfaces: [{ role: 'management', name: 'lo' }], stateDir: dir });
    fitsPayload(v);
    expect(v.memory.totalBytes).toBeGreaterThan(0);
    expect(v.memory.availableBytes).toBeGreaterThan(0);
    expect(v.memory.availableBytes).toBeLessThanOrEqual(v.memory.totalBytes);
    expect(v.uptimeSeconds).toBeGreaterThan(0);
    expect(v.cpuCount).toBe(cpus().length);
    expect(v.load.every((n) => n >= 0)).toBe(true);
    expect(v.interfaces[0]).toMatchObject({ name: 'lo', present: true, up: true });
    expect(v.interfaces[0]?.rxBytes).toBeGreaterThanOrEqual(0);
    // Whatever is missing here (no thermal zone in a VM or container) is said, not thrown.
    for (const p of v.problems) expect(p).toMatch(/^temperature: /);
    if (v.temperatureC !== null) expect(v.temperatureC).toBeGreaterThan(-40);
    const df = spawnSync('df', ['-B1', '--output=size,avail', dir], { encoding: 'utf8' });
    if (df.status === 0) {
      const [size, avail] = (df.stdout.trim().split('\n')[1] ?? '').trim().split(/\s+/).map(Number);
      expect(v.disk.totalBytes).toBe(size);
      expect(Math.abs(v.disk.freeBytes - (avail ?? 0))).toBeLessThan(64 * 1024 * 1024);
    }
  });
});
