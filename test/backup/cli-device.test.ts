// `wardgate backup now | approve | restore | import` through the built CLI against a real Modbus
// device (pymodbus): a register changed on the device shows as drift naming it, a restore
// without --yes changes nothing, with --yes what reads back equals the backup, and approvals,
// imports and restores are in the audit log.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import ModbusSerial from 'modbus-serial';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FIXTURES, missing, PYTHON, startProcess, tempDir, type Proc } from './helpers.js';

const CLI = join(import.meta.dirname, '..', '..', 'bin', 'wardgate.js');
const SERVER = join(FIXTURES, 'pymodbus_backup_server.py');
const skip = missing('python3-pymodbus', [PYTHON, '-c', 'import pymodbus.server, serial']);
if (skip) console.warn(`[backup cli-device] skipped: ${skip}`);

// The fixture's initial holding registers.
const holding = (i: number) => (7 * i + 3) & 0xffff;

let dir: ReturnType<typeof tempDir> | undefined;
let server: Proc | undefined;
let port = 0;
let gw = '';

function run(...args: string[]): { code: number | null; out: string; err: string } {
  const env = { ...process.env };
  delete env.WARDGATE_GATEWAY;
  delete env.WARDGATE_STATE_DIR;
  const r = spawnSync(process.execPath, [CLI, 'backup', ...args, '--gateway', gw], { encoding: 'utf8', cwd: dir!.path, env, timeout: 60000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** Talks to the device directly, as its front panel or a service laptop would. */
type ModbusClient = InstanceType<typeof ModbusSerial.default>;
async function device<T>(fn: (c: ModbusClient) => Promise<T>): Promise<T> {
  const c = new ModbusSerial.default();
  c.on('error', () => {});
  await c.connectTCP('127.0.0.1', { port });
  c.setID(1);
  c.setTimeout(2000);
  try {
    return await fn(c);
  } finally {
    await new Promise<void>((r) => c.close(() => r()));
  }
}
const readHolding = (at: number, n: number) => device(async (c) => (await c.readHoldingRegisters(at, n)).data);

function auditRecords(): { actor: string; action: string; outcome: string; detail: Record<string, unknown> }[] {
  const file = join(dir!.path, 'state', 'audit', 'audit.ndjson');
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { actor: string; action: string; outcome: string; detail: Record<string, unknown> });
}

beforeAll(async () => {
  if (skip) return;
  dir = tempDir('wg-bdev-');
  server = await startProcess([PYTHON, SERVER, 'tcp', '1'], /^PORT (\d+)$/m);
  port = Number((server as Proc & { match: RegExpExecArray }).match[1]);
  gw = join(dir.path, 'gateway.yaml');
  writeFileSync(
    gw,
    ['apiVersion: wardgate/v1', 'kind: Gateway', 'site: st-a', 'gateway: gw-1', 'mode: router', 'interfaces: { uplink: eth0, device: eth1 }', 'deviceSegments: [127.0.0.0/8]', 'management: { networks: [10.99.0.0/24] }', 'stateDir: state', 'policies: [policy.yaml]', ''].join('\n'),
  );
  writeFileSync(
    join(dir.path, 'policy.yaml'),
    `apiVersion: wardgate/v1
kind: Policy
devices:
  - id: steriliser
    class: steriliser
    criticality: high
    ipv4: 127.0.0.1
    backup:
      driver:
        type: modbus-tcp
        port: ${port}
        responseTimeoutMs: 1000
        ranges:
          - { name: setpoints, kind: holding, address: 0, count: 40 }
          - { name: alarms, kind: coil, address: 0, count: 16 }
          - { name: sensors, kind: input, address: 0, count: 4 }
      retries: 0
  - id: monitor
    class: monitor
    criticality: medium
    ipv4: 127.0.0.2
    backup:
      driver: { type: command, argv: [cat, monitor.conf] }
  - id: pump
    class: infusion-pump
    criticality: high
    ipv4: 127.0.0.3
    backup:
      driver: { type: file }
  - id: ct
    class: ct
    criticality: high
    ipv4: 127.0.0.4
    backup:
      driver: { type: modbus-tcp, port: 1, responseTimeoutMs: 200, ranges: [{ name: x, kind: holding, address: 0, count: 1 }] }
      retries: 0
      timeoutSeconds: 2
`,
  );
  writeFileSync(join(dir.path, 'monitor.conf'), 'alarm.volume=7\n');
  expect(run('keygen').code).toBe(0);
}, 30000);

afterAll(async () => {
  await server?.stop();
  dir?.remove();
});

describe.skipIf(skip !== undefined)('wardgate backup now / approve / restore against pymodbus', () => {
  it('refuses to restore before there is a backup', () => {
    const r = run('restore', 'steriliser', '--yes');
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/no backup of steriliser/);
  });

  it('backup now stores a version, makes it the baseline, and names a changed register as drift', async () => {
    const first = run('now', 'steriliser');
    expect(first.err).toBe('');
    expect(first.code).toBe(0);
    expect(first.out).toMatch(/^steriliser: stored version 1 \(\d+ B, sha256 [0-9a-f]{16}\)$/m);
    expect(first.out).toMatch(/no approved baseline yet: version 1 is the baseline now/);

    await device((c) => c.writeRegister(5, 999));
    const second = run('now', 'steriliser');
    expect(second.code).toBe(0);
    expect(second.out).toMatch(/stored version 2/);
    expect(second.out).toMatch(/differs from the approved baseline \(version 1\), 1 change\(s\):\n {2}setpoints: unit 1 holding 5: 38 -> 999$/m);

    const json = JSON.parse(run('now', 'steriliser', '--json').out) as { version: number; unchanged: boolean; drift: { registers: unknown[] } };
    expect(json).toMatchObject({ version: 2, unchanged: true });
    expect(json.drift.registers).toEqual([{ range: 'setpoints', kind: 'holding', unit: 1, address: 5, old: 38, new: 999 }]);
  });

  it('restore without --yes shows the difference and changes nothing', async () => {
    const r = run('restore', 'steriliser');
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/restoring version 1 .*, the approved baseline/);
    expect(r.out).toMatch(/the restore would change \(now -> version 1\):\n {2}setpoints: unit 1 holding 5: 999 -> 38$/m);
    expect(r.err).toMatch(/nothing was written; add --yes to write version 1 to steriliser/);
    expect(await readHolding(5, 1)).toEqual([999]);
    expect(auditRecords().some((a) => a.action === 'backup.restore')).toBe(false);
  });

  it('restore --yes writes the backup back: what reads back equals it, and the audit log says so', async () => {
    await device((c) => c.writeCoil(3, true)); // coil 3 was already true (i % 3 == 0); coil 4 was false
    await device((c) => c.writeCoil(4, true));
    const r = run('restore', 'steriliser', '--yes');
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/alarms: unit 1 coil 4: true -> false/);
    expect(r.out).toMatch(/restored version 1; what reads back equals it/);
    expect(await readHolding(0, 40)).toEqual(Array.from({ length: 40 }, (_, i) => holding(i)));
    expect((await device((c) => c.readCoils(0, 16))).data.slice(0, 16)).toEqual(Array.from({ length: 16 }, (_, i) => i % 3 === 0));
    const rec = auditRecords().filter((a) => a.action === 'backup.restore');
    expect(rec).toHaveLength(1);
    expect(rec[0]?.actor).toMatch(/^cli:/);
    expect(rec[0]).toMatchObject({ outcome: 'ok', detail: { device: 'steriliser', driver: 'modbus-tcp', version: 1, readBack: 'equal' } });
    // Nothing left to do.
    const again = run('restore', 'steriliser', '--yes');
    expect(again.code).toBe(0);
    expect(again.out).toMatch(/already has this configuration; nothing to restore/);
  });

  it('approve --version moves the baseline (audited), and drift is measured against it', () => {
    const a = run('approve', 'steriliser', '--version', '2');
    expect(a.code).toBe(0);
    expect(a.out).toMatch(/steriliser: version 2 .* is the approved baseline \(was version 1\)/);
    const now = run('now', 'steriliser');
    expect(now.out).toMatch(/stored version 3/);
    // Version 2 was taken before coil 4 was set (and the restore cleared it): holding 5 is the one difference.
    expect(now.out).toMatch(/differs from the approved baseline \(version 2\), 1 change\(s\):\n {2}setpoints: unit 1 holding 5: 999 -> 38\n$/);
    expect(auditRecords().find((x) => x.action === 'backup.approve')).toMatchObject({ outcome: 'ok', detail: { device: 'steriliser', version: 2, previous: 1 } });
    expect(run('approve', 'steriliser', '--version', '9').code).toBe(1);
    expect(run('approve', 'steriliser', '--version', 'x').code).toBe(2);
  });

  it('restore --version V writes that version', async () => {
    const r = run('restore', 'steriliser', '--version', '2', '--yes');
    expect(r.code).toBe(0);
    expect(await readHolding(5, 1)).toEqual([999]);
  });

  it('says clearly when a driver cannot restore, and exits 1 when a fetch fails', () => {
    expect(run('now', 'monitor').code).toBe(0);
    writeFileSync(join(dir!.path, 'monitor.conf'), 'alarm.volume=2\n');
    const r = run('restore', 'monitor', '--yes');
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/- 1: alarm.volume=2\n {2}\+ 1: alarm.volume=7/);
    expect(r.err).toMatch(/the command driver cannot write a configuration back; restore monitor by hand from: wardgate backup export monitor --version 1/);
    const f = run('now', 'ct');
    expect(f.code).toBe(1);
    expect(f.err).toMatch(/backup of ct \(modbus-tcp\) failed: .*refused/);
    expect(run('now', 'nosuch').code).toBe(2);
    expect(run('now').code).toBe(2);
  });

  it('import stores a file by hand (audited); backup now of a file device says to import', () => {
    writeFileSync(join(dir!.path, 'pump.cfg'), 'rate.max=1200\n');
    const r = run('import', 'pump', 'pump.cfg');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/pump: stored version 1/);
    expect(auditRecords().find((x) => x.action === 'backup.import')).toMatchObject({ outcome: 'ok', detail: { device: 'pump', version: 1 } });
    expect(run('list', 'pump').out).toMatch(/^pump +1 .* file +text .*file .*pump\.cfg$/m);
    const now = run('now', 'pump');
    expect(now.code).toBe(1);
    expect(now.err).toMatch(/imported by hand \(wardgate backup import\)/);
  });

  it('backup.restore as a signed command: a preview without confirm, then the write, read back and audited under the console\'s key', async () => {
    const { generateConsoleKey } = await import('../../agent/console/keys.js');
    const { freePort, until } = await import('../mqtt/brokers.js');
    const { spawn } = await import('node:child_process');
    const brokerPort = await freePort();
    const k = generateConsoleKey(join(dir!.path, 'console-keys'), 'responder');
    // The agent runs from its own gateway file: the same state directory and policy, plus a broker.
    const agentGw = join(dir!.path, 'gateway-agent.yaml');
    writeFileSync(
      agentGw,
      `${readFileSync(gw, 'utf8')}mqtt:\n  url: mqtt://127.0.0.1:${brokerPort}\n  embeddedBroker: { port: ${brokerPort}, allowAnonymous: true }\ncommands:\n  publicKeys: [{ id: responder, key: "${k.publicKey}" }]\n`,
    );
    const agent = spawn(process.execPath, [CLI, 'run', '--gateway', agentGw, '--backend', 'dry-run'], { stdio: ['ignore', 'pipe', 'pipe'], cwd: dir!.path });
    let out = '';
    agent.stdout.on('data', (d: Buffer) => (out += d.toString()));
    agent.stderr.on('data', (d: Buffer) => (out += d.toString()));
    try {
      await until('the agent online', () => out.includes('"online"'), 15000);
      const cmd = (...args: string[]) => {
        const r = spawnSync(process.execPath, [CLI, 'console', 'cmd', 'st-a/gw-1', 'backup.restore', 'device=steriliser', ...args, '--json', '--url', `mqtt://127.0.0.1:${brokerPort}`, '--key', k.privateKeyPath], { encoding: 'utf8', timeout: 60000 });
        return { code: r.status, body: JSON.parse(r.stdout || '{}') as { ok: boolean; result?: Record<string, unknown>; error?: { message: string } }, err: r.stderr };
      };
      await device((c) => c.writeRegister(5, 4242));
      const preview = cmd('version:=2');
      expect(preview.code, preview.err).toBe(0);
      expect(preview.body.result).toMatchObject({ device: 'steriliser', status: 'preview', version: 2, why: 'asked', total: 1 });
      expect(preview.body.result?.changes).toEqual(['setpoints: unit 1 holding 5: 4242 -> 999']);
      expect(await readHolding(5, 1)).toEqual([4242]);

      const done = cmd('version:=2', 'confirm:=true');
      expect(done.code, done.err).toBe(0);
      expect(done.body.result).toMatchObject({ status: 'restored', version: 2 });
      expect(await readHolding(5, 1)).toEqual([999]);
      const rec = auditRecords().filter((a) => a.action === 'backup.restore').at(-1);
      expect(rec).toMatchObject({ actor: 'responder', outcome: 'ok', detail: { device: 'steriliser', version: 2, readBack: 'equal' } });

      const bad = cmd('version:=0');
      expect(bad.code).not.toBe(0);
      expect(bad.body.error?.message).toMatch(/version must be a version number/);
    } finally {
      agent.kill('SIGTERM');
      await new Promise((r) => agent.once('exit', r));
    }
  });
});
