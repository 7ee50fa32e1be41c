// The Modbus session between real peers over loopback: pymodbus (Debian's python3-pymodbus 3.0)
// and modbus-serial's ServerTCP as the device, mbpoll (libmodbus) and the pymodbus client as the
// peer, joined by the agent's relay (test/protocols/harness.ts). Allowed reads and writes pass;
// a denied write is answered with an exception and the device's registers, read directly from
// the device, do not change.
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { IServiceVector } from 'modbus-serial';
import { createModbusSession } from '../../../agent/protocols/modbus/session.js';
import type { ModbusRuleSet } from '../../../agent/protocols/modbus/rules.js';
import { ModbusRulesSchema } from '../../../agent/protocols/schema.js';
import { freePort, Peers, startModbusServer, waitFor } from '../../fixtures/peers.js';
import { warnSkip } from '../../integration/site.js';
import { startTestRelay, type TestRelay } from '../harness.js';
import { context, type Collected } from './frames.js';

const PYTHON = '/usr/bin/python3';
const DEVICE_SCRIPT = new URL('../../fixtures/pymodbus_backup_server.py', import.meta.url).pathname;

const skipReason: string | undefined = (() => {
  if (spawnSync('mbpoll', ['-V']).error !== undefined) return 'mbpoll is not installed (apt-get install mbpoll)';
  const py = spawnSync(PYTHON, ['-c', 'import pymodbus'], { encoding: 'utf8' });
  if (py.error !== undefined || py.status !== 0) return 'python3-pymodbus is not installed (apt-get install python3-pymodbus)';
  return undefined;
})();
warnSkip('modbus peers', skipReason);

/**
 * Unit 1 may read holding registers 0-49 (the read-only profile), and write 10-19 with the
 * single and multiple register writes.
 */
const RULES: ModbusRuleSet[] = [
  ModbusRulesSchema.parse({ profile: 'read-only', unitIds: [1], read: { holdingRegisters: ['0-49'] } }),
  ModbusRulesSchema.parse({ functions: ['write-single-register', 'write-multiple-registers'], unitIds: [1], write: { holdingRegisters: ['10-19'] } }),
];

/** The pymodbus device's holding registers at start (test/fixtures/pymodbus_backup_server.py). */
const initial = (i: number) => (7 * i + 3) & 0xffff;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(command: string, args: string[], timeoutMs = 15000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(command, args, { timeout: timeoutMs, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1;
      resolve({ code, stdout, stderr });
    });
  });
}

/** mbpoll, once, holding registers from a 1-based reference (-r); with values it writes them. */
const mbpoll = (port: number, ref: number, opts: { count?: number; values?: number[] } = {}) =>
  run('mbpoll', ['-m', 'tcp', '-a', '1', '-r', String(ref), ...(opts.values ? [] : ['-c', String(opts.count ?? 1)]), '-1', '-o', '2', '-p', String(port), '127.0.0.1', ...(opts.values ?? []).map(String)]);

/** The "[ref]: value" lines of mbpoll's output. */
function polled(out: string): Map<number, number> {
  return new Map([...out.matchAll(/^\[(\d+)\]:\s+(-?\d+)$/gm)].map((m) => [Number(m[1]), Number(m[2])]));
}

const PYMODBUS_CLIENT = `
import json, sys
from pymodbus.client import ModbusTcpClient
from pymodbus.other_message import ReportSlaveIdRequest
c = ModbusTcpClient('127.0.0.1', port=int(sys.argv[1]), timeout=3, retries=0)
if not c.connect():
    sys.exit('cannot connect')
def res(r):
    if r.isError():
        return {'error': True, 'exception': getattr(r, 'exception_code', None), 'text': str(r)}
    return {'error': False, 'registers': getattr(r, 'registers', None)}
out = {
    'read': res(c.read_holding_registers(0, 4, slave=1)),
    'write40': res(c.write_register(40, 999, slave=1)),
    'read60': res(c.read_holding_registers(60, 1, slave=1)),
    'unit2': res(c.read_holding_registers(0, 1, slave=2)),
    'report': res(c.execute(ReportSlaveIdRequest(slave=1))),
    'write15': res(c.write_registers(15, [11, 12], slave=1)),
    'read15': res(c.read_holding_registers(15, 2, slave=1)),
}
c.close()
print(json.dumps(out))
`;

describe.skipIf(skipReason !== undefined)('Modbus session with real peers', () => {
  let device: ChildProcess | undefined;
  let devicePort = 0;
  let relay: TestRelay | undefined;
  const contexts: Collected[] = [];

  beforeAll(async () => {
    // The script serves until its stdin closes: it cannot outlive this process.
    const child = spawn(PYTHON, [DEVICE_SCRIPT, 'tcp', '1'], { stdio: ['pipe', 'pipe', 'pipe'] });
    device = child;
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    await waitFor('pymodbus to report its port', () => {
      if (child.exitCode !== null) throw new Error(`pymodbus exited with ${child.exitCode}: ${output}`);
      const m = /^PORT (\d+)$/m.exec(output);
      if (m?.[1] !== undefined) devicePort = Number(m[1]);
      return devicePort !== 0;
    }, 10000);
    relay = await startTestRelay({ host: '127.0.0.1', port: devicePort }, (peer) => {
      const ctx = context({ device: 'pump-01' });
      const withPeer: Collected = { ...ctx, peer };
      contexts.push(withPeer);
      return createModbusSession({ rules: RULES, ctx: withPeer, maxPendingRequests: 32 });
    });
  });

  afterEach(async () => {
    // Each peer's connection has ended and its session written its summary before the next test.
    if (relay) await waitFor('the relay to close its connections', () => relay!.connections() === 0, 5000);
  });

  afterAll(async () => {
    await relay?.close();
    if (device && device.exitCode === null) {
      const exited = new Promise((r) => device!.once('exit', r));
      device.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
      if (device.exitCode === null && device.signalCode === null) device.kill('SIGKILL');
    }
  });

  /** The context of the connection the last peer made. */
  const last = (): Collected => contexts.at(-1)!;

  it('mbpoll reads holding registers 1-4 (addresses 0-3) through the filter', async () => {
    const r = await mbpoll(relay!.port, 1, { count: 4 });
    expect(r.code, r.stderr).toBe(0);
    expect(polled(r.stdout)).toEqual(new Map([[1, initial(0)], [2, initial(1)], [3, initial(2)], [4, initial(3)]]));
    await waitFor('the session summary', () => last().records.some((x) => x.kind === 'modbus.session'));
    expect(last().alerts).toEqual([]);
    expect(last().records).toEqual([expect.objectContaining({ kind: 'modbus.session', requests: 1, forwarded: 1, denied: 0, responses: 1, peer: '127.0.0.1' })]);
  });

  it('mbpoll gets exception 02 for a read outside the allowed addresses', async () => {
    const r = await mbpoll(relay!.port, 51, { count: 1 });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/Illegal data address/);
    await waitFor('the session summary', () => last().records.some((x) => x.kind === 'modbus.session'));
    expect(last().alerts).toEqual([expect.objectContaining({ kind: 'modbus.denied', data: expect.objectContaining({ reason: 'address', fc: 3 }) as unknown })]);
  });

  it("mbpoll's denied write of register 40 gets exception 02, and the device's register is unchanged", async () => {
    const before = await mbpoll(devicePort, 41);
    expect(polled(before.stdout).get(41)).toBe(initial(40));
    const r = await mbpoll(relay!.port, 41, { values: [1234] });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/Illegal data address/);
    const after = await mbpoll(devicePort, 41);
    expect(polled(after.stdout).get(41)).toBe(initial(40));
    await waitFor('the session summary', () => last().records.some((x) => x.kind === 'modbus.session'));
    expect(last().records).toEqual([
      expect.objectContaining({ kind: 'modbus.denied', reason: 'address', exception: 2, action: 'exception' }),
      expect.objectContaining({ kind: 'modbus.session', requests: 1, forwarded: 0, denied: 1, writes: 0 }),
    ]);
  });

  it("mbpoll's allowed write of register 12 reaches the device and is recorded", async () => {
    const r = await mbpoll(relay!.port, 13, { values: [4321] });
    expect(r.code, r.stderr).toBe(0);
    const after = await mbpoll(devicePort, 13);
    expect(polled(after.stdout).get(13)).toBe(4321);
    await waitFor('the session summary', () => last().records.some((x) => x.kind === 'modbus.session'));
    expect(last().records[0]).toMatchObject({ kind: 'modbus.write', device: 'pump-01', unit: 1, table: 'holdingRegisters', address: 12, values: [4321] });
    expect(['write-single-register', 'write-multiple-registers']).toContain(last().records[0]?.function);
  });

  it('the pymodbus client: allowed reads and writes pass; write 40, read 60, unit 2 get 02, report-server-id 01', async () => {
    const r = await run(PYTHON, ['-c', PYMODBUS_CLIENT, String(relay!.port)]);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as Record<string, { error: boolean; exception?: number; registers?: number[] }>;
    expect(out.read).toEqual({ error: false, registers: [0, 1, 2, 3].map(initial) });
    expect(out.write40).toMatchObject({ error: true, exception: 2 });
    expect(out.read60).toMatchObject({ error: true, exception: 2 });
    expect(out.unit2).toMatchObject({ error: true, exception: 2 });
    expect(out.report).toMatchObject({ error: true, exception: 1 });
    expect(out.write15).toMatchObject({ error: false });
    expect(out.read15).toEqual({ error: false, registers: [11, 12] });
    const direct = await mbpoll(devicePort, 41);
    expect(polled(direct.stdout).get(41)).toBe(initial(40));
    await waitFor('the session summary', () => last().records.some((x) => x.kind === 'modbus.session'));
    expect(last().alerts.map((a) => `${a.data.function as string}/${a.data.reason as string}`)).toEqual([
      'write-single-register/address',
      'read-holding-registers/address',
      'read-holding-registers/unit',
      'report-server-id/function',
    ]);
    expect(last().records.at(-1)).toMatchObject({ kind: 'modbus.session', requests: 7, forwarded: 3, denied: 4, writes: 1, exceptions: 0 });
  });
});

describe.skipIf(skipReason !== undefined)('Modbus session with modbus-serial ServerTCP as the device', () => {
  const peers = new Peers();
  afterAll(() => peers.stopAll());

  it('mbpoll reads through; a denied write leaves the server\'s registers as they were', async () => {
    const registers = Array.from({ length: 100 }, (_, i) => 1000 + i);
    const vector: IServiceVector = {
      getHoldingRegister: (addr: number) => registers[addr] ?? 0,
      setRegister: (addr: number, value: number) => {
        registers[addr] = value;
      },
    };
    // ServerTCP turns port 0 into 502: pick a free port first.
    const server = await startModbusServer(peers, await freePort(), 1, vector);
    const ctxs: Collected[] = [];
    const relay = await startTestRelay({ host: '127.0.0.1', port: server.port }, (peer) => {
      const ctx: Collected = { ...context(), peer };
      ctxs.push(ctx);
      return createModbusSession({ rules: RULES, ctx, maxPendingRequests: 4 });
    });
    peers.add({ name: 'test relay', port: relay.port, stop: () => relay.close() });

    const r = await mbpoll(relay.port, 1, { count: 3 });
    expect(r.code, r.stderr).toBe(0);
    expect(polled(r.stdout)).toEqual(new Map([[1, 1000], [2, 1001], [3, 1002]]));

    const w = await mbpoll(relay.port, 31, { values: [7] });
    expect(w.code).not.toBe(0);
    expect(w.stderr).toMatch(/Illegal data address/);
    expect(registers[30]).toBe(1030);

    const ok = await mbpoll(relay.port, 11, { values: [7] });
    expect(ok.code, ok.stderr).toBe(0);
    expect(registers[10]).toBe(7);
    await waitFor('three session summaries', () => ctxs.filter((c) => c.records.some((x) => x.kind === 'modbus.session')).length === 3);
  });
});
