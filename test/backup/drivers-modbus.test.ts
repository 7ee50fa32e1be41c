// The Modbus TCP and RTU drivers against real devices: pymodbus (TCP, and RTU over a pair of
// pseudo-terminals) and modbus-serial's ServerTCP. Ranges are read in protocol-sized chunks,
// a restore writes holding registers and coils and reads back what it wrote, and a wrong unit id
// is named as such.
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BackupDriverError, createDriver, createDeviceDriver, parseModbusDocument, type ModbusDocument } from '../../agent/backup/drivers/index.js';
import { BackupDeviceSchema, DriverSchema } from '../../agent/backup/schema.js';
import { freePort, Peers, startModbusServer } from '../fixtures/peers.js';
import { FIXTURES, missing, never, PYTHON, startProcess, type Proc } from './helpers.js';

const SERVER = join(FIXTURES, 'pymodbus_backup_server.py');
const skip = missing('python3-pymodbus', [PYTHON, '-c', 'import pymodbus.server, serial']);
if (skip) console.warn(`[backup drivers modbus] pymodbus tests skipped: ${skip}`);

const device = { id: 'steriliser', ipv4: '127.0.0.1' };
const ctx = { baseDir: '/' };

// The fixture's initial values.
const holding = (i: number) => (7 * i + 3) & 0xffff;
const inputReg = (i: number) => 1000 + i;
const coil = (i: number) => i % 3 === 0;
const discrete = (i: number) => i % 2 === 0;
const span = <T>(from: number, count: number, f: (i: number) => T) => Array.from({ length: count }, (_, k) => f(from + k));

const RANGES = [
  { name: 'setpoints', kind: 'holding', address: 0, count: 300 },
  { name: 'alarms', kind: 'coil', address: 0, count: 2500 },
  { name: 'sensors', kind: 'input', address: 10, count: 20 },
  { name: 'inputs', kind: 'discrete', address: 3, count: 97 },
] as const;

function expected(unit: number): ModbusDocument {
  return {
    ranges: [
      { name: 'setpoints', kind: 'holding', unit, address: 0, values: span(0, 300, holding) },
      { name: 'alarms', kind: 'coil', unit, address: 0, values: span(0, 2500, coil) },
      { name: 'sensors', kind: 'input', unit, address: 10, values: span(10, 20, inputReg) },
      { name: 'inputs', kind: 'discrete', unit, address: 3, values: span(3, 97, discrete) },
    ],
  };
}

function tcpDriver(port: number, unit = 1, ranges: unknown = RANGES) {
  return createDriver(device, DriverSchema.parse({ type: 'modbus-tcp', port, unit, ranges, responseTimeoutMs: 500 }), ctx);
}

describe.skipIf(skip !== undefined)('modbus-tcp against pymodbus', () => {
  let server: Proc;
  let port: number;
  beforeAll(async () => {
    const p = await startProcess([PYTHON, SERVER, 'tcp', '1'], /^PORT (\d+)$/m);
    server = p;
    port = Number(p.match[1]);
  });
  afterAll(async () => server?.stop());

  it('reads the named ranges, in chunks within the protocol limits, as a modbus document', async () => {
    const got = await tcpDriver(port).fetch(never);
    expect(got.format).toBe('modbus');
    expect(got.source).toBe(`modbus-tcp 127.0.0.1:${port} unit 1`);
    expect(JSON.parse(got.bytes.toString())).toEqual(expected(1));
    // The same device state gives the same bytes (one blob in a content-addressed store).
    expect((await tcpDriver(port).fetch(never)).bytes.equals(got.bytes)).toBe(true);
  });

  it('restores holding registers and coils: what reads back equals what was written; input ranges are never written', async () => {
    const driver = tcpDriver(port);
    const original = await driver.fetch(never);
    const changed = parseModbusDocument(original.bytes);
    const [hr, co, ir] = changed.ranges;
    hr!.values = hr!.values.map((v, i) => (i % 2 === 0 ? 65535 - i : v));
    co!.values = co!.values.map((v) => !v);
    ir!.values = ir!.values.map(() => 7);
    await driver.restore!(Buffer.from(JSON.stringify(changed)), never);
    const after = parseModbusDocument((await driver.fetch(never)).bytes);
    expect(after.ranges[0]!.values).toEqual(hr!.values);
    expect(after.ranges[1]!.values).toEqual(co!.values);
    expect(after.ranges[2]!.values).toEqual(span(10, 20, inputReg));
    // And back to the backup: the device reads exactly as the backup again.
    await driver.restore!(original.bytes, never);
    expect((await driver.fetch(never)).bytes.equals(original.bytes)).toBe(true);
  });

  it('checks the whole document before writing: a bad value in a later range writes nothing', async () => {
    const driver = tcpDriver(port);
    const original = await driver.fetch(never);
    const bad = parseModbusDocument(original.bytes);
    bad.ranges[0]!.values = bad.ranges[0]!.values.map(() => 1);
    (bad.ranges[1]!.values as unknown[])[5] = 2;
    const err = await driver.restore!(Buffer.from(JSON.stringify(bad)), never).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackupDriverError);
    expect((err as BackupDriverError).code).toBe('invalid');
    expect((err as Error).message).toContain('ranges[1].values[5] is not true or false');
    expect((await driver.fetch(never)).bytes.equals(original.bytes)).toBe(true);
    const other = { ranges: [{ ...bad.ranges[0]!, unit: 9 }] };
    await expect(driver.restore!(Buffer.from(JSON.stringify(other)), never)).rejects.toThrow(/read from unit 9, and this device is unit 1/);
    await expect(driver.restore!(Buffer.from('not json'), never)).rejects.toThrow(/not a modbus backup/);
  });

  it('says "no answer from unit N (wrong unit id?)" when the unit does not answer', async () => {
    const err = await tcpDriver(port, 7).fetch(never).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackupDriverError);
    expect((err as BackupDriverError).code).toBe('timeout');
    expect((err as Error).message).toMatch(/no answer from unit 7 within 500 ms \(wrong unit id\?\)/);
  });

  it('reports a Modbus exception from the device', async () => {
    const err = await tcpDriver(port, 1, [{ name: 'past-the-end', kind: 'holding', address: 290, count: 20 }]).fetch(never).catch((e: unknown) => e);
    expect((err as BackupDriverError).code).toBe('exception');
    expect((err as Error).message).toMatch(/read 20 holding at 290: Modbus exception 2/);
  });

  it('gives up on a refused connection after the configured retries', async () => {
    const closed = await freePort();
    const backup = BackupDeviceSchema.parse({ driver: { type: 'modbus-tcp', port: closed, ranges: RANGES }, retries: 2, timeoutSeconds: 5 });
    const seen: number[] = [];
    const driver = createDeviceDriver(device, backup, ctx, { backoffMs: 20, onRetry: (_e, attempt) => seen.push(attempt) });
    const err = await driver.fetch(never).catch((e: unknown) => e);
    expect((err as BackupDriverError).code).toBe('refused');
    expect((err as Error).message).toMatch(/connection refused \(try 3 of 3\)/);
    expect(seen).toEqual([1, 2]);
  });
});

describe('modbus-tcp against modbus-serial ServerTCP', () => {
  const peers = new Peers();
  afterEach(async () => peers.stopAll());

  it('reads, restores and reads back; a wrong unit id gets the wrong-unit error', async () => {
    const regs = new Map<number, number>(span(0, 10, (i) => [100 + i, i * 11] as [number, number]));
    const coils = new Map<number, boolean>(span(0, 16, (i) => [i, i % 5 === 0] as [number, boolean]));
    const port = await freePort();
    await startModbusServer(peers, port, 3, {
      getHoldingRegister: (addr: number) => regs.get(addr) ?? 0,
      setRegister: (addr: number, value: number) => void regs.set(addr, value),
      getCoil: (addr: number) => coils.get(addr) ?? false,
      setCoil: (addr: number, value: boolean) => void coils.set(addr, value),
    });
    const driver = tcpDriver(port, 3, [
      { name: 'config', kind: 'holding', address: 100, count: 10 },
      { name: 'flags', kind: 'coil', address: 0, count: 16 },
    ]);
    const got = await driver.fetch(never);
    const doc = parseModbusDocument(got.bytes);
    expect(doc.ranges[0]!.values).toEqual(span(0, 10, (i) => i * 11));
    expect(doc.ranges[1]!.values).toEqual(span(0, 16, (i) => i % 5 === 0));

    regs.set(104, 9999);
    coils.set(1, true);
    await driver.restore!(got.bytes, never);
    expect(regs.get(104)).toBe(44);
    expect(coils.get(1)).toBe(false);

    const err = await tcpDriver(port, 4, [{ name: 'config', kind: 'holding', address: 100, count: 10 }]).fetch(never).catch((e: unknown) => e);
    expect((err as BackupDriverError).code).toBe('timeout');
    expect((err as Error).message).toMatch(/no answer from unit 4 .*\(wrong unit id\?\)/);
  });

  it('a restore that does not read back as written fails with verify', async () => {
    const port = await freePort();
    // A device that ignores writes to register 2, as a device with a write-protected field does.
    const regs = [5, 6, 7, 8];
    await startModbusServer(peers, port, 1, {
      getHoldingRegister: (addr: number) => regs[addr] ?? 0,
      setRegister: (addr: number, value: number) => {
        if (addr !== 2) regs[addr] = value;
      },
    });
    const driver = tcpDriver(port, 1, [{ name: 'config', kind: 'holding', address: 0, count: 4 }]);
    const doc = { ranges: [{ name: 'config', kind: 'holding', unit: 1, address: 0, values: [1, 2, 3, 4] }] };
    const err = await driver.restore!(Buffer.from(JSON.stringify(doc)), never).catch((e: unknown) => e);
    expect((err as BackupDriverError).code).toBe('verify');
    expect((err as Error).message).toMatch(/range "config": holding 2 reads back 7 after 3 was written/);
  });
});

describe.skipIf(skip !== undefined)('modbus-rtu against pymodbus on a pseudo-terminal pair', () => {
  let server: Proc;
  let path: string;
  beforeAll(async () => {
    const p = await startProcess([PYTHON, SERVER, 'rtu', '5'], /^PTY (\S+)$/m);
    server = p;
    path = p.match[1]!;
  });
  afterAll(async () => server?.stop());

  it('reads the ranges and restores them over the serial line', async () => {
    const cfg = DriverSchema.parse({
      type: 'modbus-rtu',
      path,
      parity: 'none',
      unit: 5,
      responseTimeoutMs: 1000,
      ranges: [
        { name: 'setpoints', kind: 'holding', address: 0, count: 130 },
        { name: 'alarms', kind: 'coil', address: 0, count: 40 },
      ],
    });
    const driver = createDriver(device, cfg, ctx);
    const got = await driver.fetch(never);
    expect(got.source).toBe(`modbus-rtu ${path} 19200 8N1 unit 5`);
    const doc = parseModbusDocument(got.bytes);
    expect(doc.ranges[0]!.values).toEqual(span(0, 130, holding));
    expect(doc.ranges[1]!.values).toEqual(span(0, 40, coil));

    const changed = structuredClone(doc);
    changed.ranges[0]!.values[129] = 4242;
    changed.ranges[1]!.values[0] = false;
    await driver.restore!(Buffer.from(JSON.stringify(changed)), never);
    expect(parseModbusDocument((await driver.fetch(never)).bytes)).toEqual(changed);
    await driver.restore!(got.bytes, never);
    expect((await driver.fetch(never)).bytes.equals(got.bytes)).toBe(true);
  });
});
