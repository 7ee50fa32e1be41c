// The gateway's own vitals, read from /proc and /sys under a root path: the real / on a gateway,
// a fixture tree in tests (test/fixtures/boards/<board>/). Nothing here throws for a missing or
// unreadable file: the field becomes null (or 0 where the health payload has no null) and the
// reason goes into `problems`, which the health report carries so that a console sees why.
import { readdir, readFile, stat, statfs } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { BoardProfile } from '../../hardware/boards/index.js';
import type { HealthPayload } from '../mqtt/topics.js';

export { rulesetCounters, rulesetHealth, type RulesetCounters } from './ruleset.js';

export type InterfaceVitals = HealthPayload['interfaces'][number];
export type InterfaceRole = InterfaceVitals['role'];

/** The vitals fields of the health payload, plus what could not be read. */
export interface Vitals extends Pick<HealthPayload, 'board' | 'uptimeSeconds' | 'load' | 'cpuCount' | 'memory' | 'disk' | 'temperatureC' | 'interfaces'> {
  agent: { rssBytes: number; pid: number };
  /** One line per field that could not be read, e.g. "temperature: /sys/class/thermal/thermal_zone0/temp is missing". */
  problems: string[];
}

export interface VitalsOptions {
  /** Where /proc and /sys are read from. */
  rootPath: string;
  board: BoardProfile;
  interfaces: { role: InterfaceRole; name: string }[];
  /** The agent's state directory: its file system's free space is what runs out first. */
  stateDir: string;
}

/** gateway.yaml's `interfaces`, as the list readVitals takes. */
export function roleInterfaces(ifaces: { uplink: string; device: string; management?: string; bridge?: string }): VitalsOptions['interfaces'] {
  const list: VitalsOptions['interfaces'] = [
    { role: 'uplink', name: ifaces.uplink },
    { role: 'device', name: ifaces.device },
  ];
  if (ifaces.management !== undefined) list.push({ role: 'management', name: ifaces.management });
  if (ifaces.bridge !== undefined) list.push({ role: 'bridge', name: ifaces.bridge });
  return list;
}

function why(err: unknown): string {
  switch ((err as NodeJS.ErrnoException).code) {
    case 'ENOENT':
      return 'is missing';
    case 'EACCES':
    case 'EPERM':
      return 'is not readable (permission denied)';
    case 'EINVAL':
      return 'has no value (EINVAL)';
    default:
      return `cannot be read: ${(err as Error).message}`;
  }
}

/** Reads files under the root, noting what it could not read. */
class Reader {
  readonly problems: string[] = [];
  constructor(
    private readonly root: string,
    private readonly field: string,
  ) {}

  problem(text: string): void {
    this.problems.push(`${this.field}: ${text}`);
  }

  /** The file's text; undefined, with a problem noted unless `optional`, when it cannot be read. */
  async text(path: string, opts: { optional?: boolean } = {}): Promise<string | undefined> {
    try {
      return await readFile(join(this.root, path), 'utf8');
    } catch (err) {
      if (opts.optional !== true) this.problem(`${path} ${why(err)}`);
      return undefined;
    }
  }

  async list(path: string): Promise<string[] | undefined> {
    try {
      return await readdir(join(this.root, path));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.problem(`${path} ${why(err)}`);
      return undefined;
    }
  }

  async exists(path: string): Promise<boolean> {
    try {
      await stat(join(this.root, path));
      return true;
    } catch {
      return false;
    }
  }
}

function finite(text: string | undefined): number | undefined {
  if (text === undefined || text.trim() === '') return undefined;
  const n = Number(text.trim());
  return Number.isFinite(n) ? n : undefined;
}

async function readLoad(r: Reader): Promise<[number, number, number]> {
  const text = await r.text('/proc/loadavg');
  if (text === undefined) return [0, 0, 0];
  const [a, b, c] = text.trim().split(/\s+/).map(Number);
  if (a === undefined || b === undefined || c === undefined || [a, b, c].some((n) => !Number.isFinite(n))) {
    r.problem(`/proc/loadavg is not "1m 5m 15m ...": ${JSON.stringify(text.slice(0, 60))}`);
    return [0, 0, 0];
  }
  return [a, b, c];
}

async function readUptime(r: Reader): Promise<number> {
  const text = await r.text('/proc/uptime');
  if (text === undefined) return 0;
  const up = finite(text.trim().split(/\s+/)[0]);
  if (up === undefined) {
    r.problem(`/proc/uptime is not "seconds idle": ${JSON.stringify(text.slice(0, 60))}`);
    return 0;
  }
  return up;
}

async function readMemory(r: Reader): Promise<Vitals['memory']> {
  const text = await r.text('/proc/meminfo');
  if (text === undefined) return { totalBytes: 0, availableBytes: 0 };
  const kb = new Map<string, number>();
  for (const m of text.matchAll(/^(\w+):\s+(\d+)(?: kB)?$/gm)) kb.set(m[1] ?? '', Number(m[2]) * 1024);
  const total = kb.get('MemTotal');
  if (total === undefined) r.problem('/proc/meminfo has no MemTotal');
  let available = kb.get('MemAvailable');
  if (available === undefined) {
    // Kernels before 3.14 have no MemAvailable; free + buffers + page cache is the classic estimate.
    const free = kb.get('MemFree');
    if (free === undefined) r.problem('/proc/meminfo has neither MemAvailable nor MemFree');
    else {
      available = free + (kb.get('Buffers') ?? 0) + (kb.get('Cached') ?? 0);
      r.problem('/proc/meminfo has no MemAvailable: estimated from MemFree + Buffers + Cached');
    }
  }
  return { totalBytes: total ?? 0, availableBytes: available ?? 0 };
}

/** Counts a CPU list such as "0-3" or "0,2-3,8". */
export function countCpuList(list: string): number | undefined {
  let n = 0;
  for (const part of list.trim().split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) return undefined;
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (hi < lo) return undefined;
    n += hi - lo + 1;
  }
  return n > 0 ? n : undefined;
}

async function readCpuCount(r: Reader): Promise<number> {
  // os.cpus() would describe the machine the tests run on, not the root being read.
  const online = await r.text('/sys/devices/system/cpu/online', { optional: true });
  const fromOnline = online === undefined ? undefined : countCpuList(online);
  if (fromOnline !== undefined) return fromOnline;
  const cpuinfo = await r.text('/proc/cpuinfo', { optional: true });
  const fromCpuinfo = cpuinfo === undefined ? 0 : (cpuinfo.match(/^processor\s*:/gm) ?? []).length;
  if (fromCpuinfo > 0) return fromCpuinfo;
  r.problem('neither /sys/devices/system/cpu/online nor /proc/cpuinfo gives the CPU count');
  return 0;
}

const THERMAL = '/sys/class/thermal';

/** The thermal zone directory the board's profile points at, by type first, then by path. */
async function thermalZone(r: Reader, board: BoardProfile): Promise<string | undefined> {
  const zones = (await r.list(THERMAL))?.filter((z) => /^thermal_zone\d+$/.test(z)).sort((a, b) => Number(a.slice(12)) - Number(b.slice(12)));
  if (zones !== undefined && board.thermal.types.length > 0) {
    const types = await Promise.all(zones.map(async (z) => ({ zone: z, type: (await r.text(`${THERMAL}/${z}/type`, { optional: true }))?.trim() })));
    for (const wanted of board.thermal.types) {
      const hit = types.find((t) => t.type === wanted);
      if (hit) return `${THERMAL}/${hit.zone}`;
    }
  }
  if (board.thermal.zone !== undefined && (await r.exists(board.thermal.zone))) return board.thermal.zone;
  const looked = [...board.thermal.types.map((t) => `type ${t}`), ...(board.thermal.zone !== undefined ? [board.thermal.zone] : [])];
  r.problem(`no thermal zone found for ${board.name} (looked for ${looked.join(', ') || 'nothing'})`);
  return undefined;
}

async function readTemperature(r: Reader, board: BoardProfile): Promise<number | null> {
  const zone = await thermalZone(r, board);
  if (zone === undefined) return null;
  const text = await r.text(`${zone}/temp`);
  const milli = finite(text);
  if (text !== undefined && milli === undefined) r.problem(`${zone}/temp is not a number: ${JSON.stringify(text.slice(0, 30))}`);
  if (milli === undefined) return null;
  const celsius = Math.round(milli / 100) / 10;
  // A failing sensor reads as absurd values (-274 °C, 255 °C): better none than a wrong one.
  if (celsius < -60 || celsius > 150) {
    r.problem(`${zone}/temp reads ${celsius} °C, which no running board reaches: ignored`);
    return null;
  }
  return celsius;
}

// SPEED_UNKNOWN is -1; some drivers print it as an unsigned 32-bit number.
const UNKNOWN_SPEEDS = new Set([-1, 0xffffffff, 0xffff]);
const STATS = ['rx_bytes', 'tx_bytes', 'rx_errors', 'tx_errors', 'rx_dropped'] as const;

async function readInterface(r: Reader, role: InterfaceRole, name: string): Promise<InterfaceVitals> {
  const absent: InterfaceVitals = { role, name, present: false, up: false, speedMbps: null, rxBytes: 0, txBytes: 0, rxErrors: 0, txErrors: 0, rxDropped: 0 };
  // The name comes from gateway.yaml; never let it climb out of /sys/class/net.
  if (name === '.' || name === '..' || !/^[^/\0\s]{1,15}$/.test(name)) {
    r.problem(`${role} interface name ${JSON.stringify(name)} is not a Linux interface name`);
    return absent;
  }
  const dir = `/sys/class/net/${name}`;
  if (!(await r.exists(dir))) {
    r.problem(`${role} interface ${name} is not present (${dir} is missing)`);
    return absent;
  }
  // carrier and speed fail with EINVAL while the interface is administratively down, and speed
  // is meaningless for bridges and virtual interfaces: their absence is no problem.
  const [operstate, carrier, speed, ...stats] = await Promise.all([
    r.text(`${dir}/operstate`),
    r.text(`${dir}/carrier`, { optional: true }),
    r.text(`${dir}/speed`, { optional: true }),
    ...STATS.map((s) => r.text(`${dir}/statistics/${s}`)),
  ]);
  const state = operstate?.trim();
  // Loopback and some virtual drivers never set an operstate ("unknown") yet carry traffic.
  const up = state === 'up' || (state === 'unknown' && carrier?.trim() === '1');
  const mbps = finite(speed);
  const counter = (i: number) => {
    const text = stats[i];
    const n = finite(text);
    if (text !== undefined && n === undefined) r.problem(`${dir}/statistics/${STATS[i] ?? ''} is not a number`);
    return n ?? 0;
  };
  return {
    role,
    name,
    present: true,
    up,
    speedMbps: mbps === undefined || UNKNOWN_SPEEDS.has(mbps) || mbps <= 0 ? null : mbps,
    rxBytes: counter(0),
    txBytes: counter(1),
    rxErrors: counter(2),
    txErrors: counter(3),
    rxDropped: counter(4),
  };
}

/**
 * Free space where the agent writes. Measured on the real file system, not under rootPath: a
 * fixture tree of /proc and /sys has no file systems of its own to ask, and the state directory
 * is the agent's own (the outbox, backups and rulesets fill it), wherever the root points. A
 * state directory not created yet is measured at its nearest existing parent.
 */
async function readDisk(problems: string[], stateDir: string): Promise<Vitals['disk']> {
  let path = stateDir;
  for (;;) {
    try {
      const s = await statfs(path);
      // Node's statfs gives f_bsize; blocks are in f_frsize units, equal to it on ext4, f2fs,
      // btrfs, xfs, vfat and tmpfs (the file systems a gateway's state lives on).
      return { path, totalBytes: s.blocks * s.bsize, freeBytes: s.bavail * s.bsize };
    } catch (err) {
      const parent = dirname(path);
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || parent === path) {
        problems.push(`disk: cannot measure ${stateDir}: ${(err as Error).message}`);
        return { path: stateDir, totalBytes: 0, freeBytes: 0 };
      }
      path = parent;
    }
  }
}

/** Reads the gateway's vitals. Never rejects for missing or unreadable files. */
export async function readVitals(opts: VitalsOptions): Promise<Vitals> {
  const reader = (field: string) => new Reader(opts.rootPath, field);
  const r = {
    load: reader('load'),
    uptime: reader('uptime'),
    memory: reader('memory'),
    cpu: reader('cpuCount'),
    temperature: reader('temperature'),
  };
  const ifaces = opts.interfaces.map((i) => ({ ...i, r: reader('interfaces') }));
  const diskProblems: string[] = [];
  const [load, uptimeSeconds, memory, cpuCount, temperatureC, interfaces, disk] = await Promise.all([
    readLoad(r.load),
    readUptime(r.uptime),
    readMemory(r.memory),
    readCpuCount(r.cpu),
    readTemperature(r.temperature, opts.board),
    Promise.all(ifaces.map((i) => readInterface(i.r, i.role, i.name))),
    readDisk(diskProblems, opts.stateDir),
  ]);
  return {
    board: opts.board.id,
    uptimeSeconds,
    load,
    cpuCount,
    memory,
    disk,
    temperatureC,
    interfaces,
    // rss alone: process.memoryUsage() would also walk the V8 heap spaces, for nothing.
    agent: { rssBytes: process.memoryUsage.rss(), pid: process.pid },
    // A fixed order, whatever finished first.
    problems: [...Object.values(r), ...ifaces.map((i) => i.r)].flatMap((x) => x.problems).concat(diskProblems),
  };
}
