// The probes against real peers on loopback: plain TCP listeners, ping, a modbus-serial ServerTCP,
// pymodbus (device identification), DCMTK's storescp (C-ECHO) and dcmqrscp (which rejects an
// unknown called AE title).
import { performance } from 'node:perf_hooks';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ProbeSchema, type ProbeConfig } from '../../agent/config/schema.js';
import { parsePingLatency, probeDicom, probeIcmp, probeModbus, probeTcp, runProbe, type ProbeOf, type ProbeType } from '../../agent/health/probes.js';
import { ProbeResult } from '../../agent/mqtt/topics.js';
import { freePort, LOOPBACK, Peers, startDcmqrscp, startModbusServer, startPymodbus, startSilentServer, startStorescp, waitFor, type ModbusPeer } from '../fixtures/peers.js';

const target = { address: LOOPBACK };

function probe<T extends ProbeType>(config: { type: T } & Record<string, unknown>): ProbeOf<T> {
  return ProbeSchema.parse(config) as ProbeOf<T>;
}

async function timed<T>(work: Promise<T>): Promise<[T, number]> {
  const start = performance.now();
  const value = await work;
  return [value, performance.now() - start];
}

function expectValid(result: ProbeResult): void {
  expect(ProbeResult.safeParse(result).success).toBe(true);
}

const peers = new Peers();
afterEach(async () => {
  await peers.stopAll();
});

describe('tcp probe', () => {
  it('connects to a listening port and reports the latency', async () => {
    const silent = await startSilentServer(peers);
    const result = await probeTcp(target, probe({ type: 'tcp', port: silent.port, timeoutMs: 1000 }));
    expectValid(result);
    expect(result).toMatchObject({ type: 'tcp', ok: true });
    expect(result.latencyMs).toBeGreaterThanOrEqual(0);
    expect(result.latencyMs).toBeLessThan(1000);
    // The probe closed its connection.
    await waitFor('the probe connection to close', () => silent.connections() === 0, 2000);
  });

  it('fails on a closed port, with the kind of failure first', async () => {
    const port = await freePort();
    const result = await probeTcp(target, probe({ type: 'tcp', port, timeoutMs: 1000 }));
    expectValid(result);
    expect(result).toMatchObject({ type: 'tcp', ok: false, latencyMs: null });
    expect(result.error).toMatch(/^refused: /);
  });

  it('refuses a target that is not an IP address, without resolving it', async () => {
    const result = await probeTcp({ address: 'localhost' }, probe({ type: 'tcp', port: 80 }));
    expect(result).toMatchObject({ ok: false });
    expect(result.error).toMatch(/^invalid: /);
  });
});

describe('icmp probe', () => {
  it.each([['127.0.0.1'], ['::1']])('gets an echo reply from %s, latency from ping', async (address) => {
    const result = await probeIcmp({ address }, probe({ type: 'icmp', timeoutMs: 1000 }));
    expectValid(result);
    expect(result, result.error).toMatchObject({ type: 'icmp', ok: true });
    expect(result.latencyMs).toBeGreaterThanOrEqual(0);
    expect(result.latencyMs).toBeLessThan(1000);
  });

  it('fails within the timeout for an address that does not answer', async () => {
    // TEST-NET-3 (RFC 5737): not routed anywhere. Depending on the host's routes ping waits in
    // vain or is told at once that the network is unreachable; either way it is a failure.
    const [result, elapsed] = await timed(probeIcmp({ address: '203.0.113.77' }, probe({ type: 'icmp', timeoutMs: 300 })));
    expectValid(result);
    expect(result.ok).toBe(false);
    expect(result.error).toMatch(/^(timeout|unreachable|error): /);
    expect(elapsed).toBeLessThan(300 + 1500);
  });

  it('reads the latency from iputils and BusyBox output', () => {
    expect(parsePingLatency('64 bytes from ::1: icmp_seq=1 ttl=64 time=0.093 ms')).toBe(0.093);
    expect(parsePingLatency('64 bytes from 10.0.0.1: seq=0 ttl=64 time=1.234 ms')).toBe(1.234);
    expect(parsePingLatency('round-trip min/avg/max = 0.5/0.7/0.9 ms')).toBe(0.7);
    expect(parsePingLatency('1 packets transmitted, 0 received')).toBeUndefined();
  });
});

describe('modbus probe against modbus-serial ServerTCP', () => {
  const UNIT = 17;
  let server: ModbusPeer;
  // A server per file, not per test: its connections are checked after each test instead.
  const own = new Peers();

  beforeAll(async () => {
    const port = await freePort();
    server = await startModbusServer(own, port, UNIT, {
      getHoldingRegister: (addr: number) => 1000 + addr,
      getMultipleHoldingRegisters: (addr: number, length: number) => Array.from({ length }, (_, i) => 1000 + addr + i),
      getInputRegister: (addr: number) => 2000 + addr,
      getCoil: (addr: number) => addr % 3 === 0,
      getDiscreteInput: (addr: number) => addr % 2 === 1,
    });
  });
  afterAll(async () => {
    await own.stopAll();
  });
  afterEach(async () => {
    // Every probe closes its client, whatever the outcome.
    await waitFor('the probe connections to close', () => server.connections() === 0, 2000);
  });

  it('reads a holding register range (function 3) into detail', async () => {
    const result = await probeModbus(target, probe({ type: 'modbus', port: server.port, unitId: UNIT, read: { kind: 'holding', address: 40, count: 5 }, timeoutMs: 1000 }));
    expectValid(result);
    expect(result, result.error).toMatchObject({ type: 'modbus', ok: true });
    expect(result.detail).toEqual({ functionCode: 3, kind: 'holding', address: 40, count: 5, values: [1040, 1041, 1042, 1043, 1044] });
    expect(result.latencyMs).toBeGreaterThanOrEqual(0);
  });

  it('reads input registers (4), coils (1) and discrete inputs (2)', async () => {
    const base = { type: 'modbus' as const, port: server.port, unitId: UNIT, timeoutMs: 1000 };
    const input = await probeModbus(target, probe({ ...base, read: { kind: 'input', address: 7, count: 2 } }));
    expect(input.detail).toMatchObject({ functionCode: 4, values: [2007, 2008] });
    const coils = await probeModbus(target, probe({ ...base, read: { kind: 'coils', address: 0, count: 5 } }));
    expect(coils.detail).toMatchObject({ functionCode: 1, values: [true, false, false, true, false] });
    const discrete = await probeModbus(target, probe({ ...base, read: { kind: 'discrete', address: 0, count: 3 } }));
    expect(discrete.detail).toMatchObject({ functionCode: 2, values: [false, true, false] });
  });

  it('times out, and fails, when the unit id is wrong (the server does not answer)', async () => {
    const [result, elapsed] = await timed(probeModbus(target, probe({ type: 'modbus', port: server.port, unitId: UNIT + 1, read: { address: 0, count: 1 }, timeoutMs: 300 })));
    expectValid(result);
    expect(result).toMatchObject({ type: 'modbus', ok: false, latencyMs: null });
    expect(result.error).toMatch(/^timeout: no response from unit 18/);
    expect(elapsed).toBeGreaterThanOrEqual(290);
    expect(elapsed).toBeLessThan(1000);
  });

  it('reports a Modbus exception: this server has no device identification (illegal function)', async () => {
    const result = await probeModbus(target, probe({ type: 'modbus', port: server.port, unitId: UNIT, timeoutMs: 1000 }));
    expectValid(result);
    expect(result.ok).toBe(false);
    expect(result.error).toMatch(/^exception: exception 1: Illegal function/);
  });

  it('fails on a closed port', async () => {
    const port = await freePort();
    const result = await probeModbus(target, probe({ type: 'modbus', port, read: { address: 0 }, timeoutMs: 1000 }));
    expect(result).toMatchObject({ ok: false });
    expect(result.error).toMatch(/^refused: /);
  });
});

describe('modbus probe against pymodbus', () => {
  it('reads the basic device identification (function 43 / MEI 14)', async () => {
    const py = await startPymodbus(peers, { vendor: 'Acme Sterilisation', product: 'AS-900', revision: '7.3' });
    const result = await probeModbus(target, probe({ type: 'modbus', port: py.port, unitId: 1, timeoutMs: 2000 }));
    expectValid(result);
    expect(result, `${result.error ?? ''} ${py.output()}`).toMatchObject({ type: 'modbus', ok: true });
    expect(result.detail).toMatchObject({
      functionCode: 43,
      meiType: 14,
      VendorName: 'Acme Sterilisation',
      ProductCode: 'AS-900',
      MajorMinorRevision: '7.3',
    });
    // Conformity level (6.21): basic identification, stream access at least.
    expect((result.detail?.conformityLevel as number) & 0x7f).toBeGreaterThanOrEqual(1);
  });

  it('times out on a server that accepts and never answers, and closes its socket', async () => {
    const silent = await startSilentServer(peers);
    const [result, elapsed] = await timed(probeModbus(target, probe({ type: 'modbus', port: silent.port, timeoutMs: 250 })));
    expect(result).toMatchObject({ ok: false });
    expect(result.error).toMatch(/^timeout: /);
    expect(elapsed).toBeLessThan(1000);
    await waitFor('the probe connection to close', () => silent.connections() === 0, 2000);
  });
});

describe('dicom probe', () => {
  it('C-ECHOes storescp', async () => {
    const scp = await startStorescp(peers, await freePort(), 'WARDPACS');
    const result = await probeDicom(target, probe({ type: 'dicom', port: scp.port, calledAe: 'WARDPACS', callingAe: 'WARDGATE', timeoutMs: 3000 }));
    expectValid(result);
    expect(result, `${result.error ?? ''} ${scp.output()}`).toMatchObject({ type: 'dicom', ok: true });
    expect(result.latencyMs).toBeGreaterThan(0);
    expect(result.latencyMs).toBeLessThan(3000);
  });

  it('fails when the called AE title is not the peer\'s (dcmqrscp rejects the association)', async () => {
    const scp = await startDcmqrscp(peers, await freePort(), 'WARDPACS');
    const good = await probeDicom(target, probe({ type: 'dicom', port: scp.port, calledAe: 'WARDPACS', timeoutMs: 3000 }));
    expect(good, `${good.error ?? ''} ${scp.output()}`).toMatchObject({ ok: true });
    const wrong = await probeDicom(target, probe({ type: 'dicom', port: scp.port, calledAe: 'NOT-THE-PACS', timeoutMs: 3000 }));
    expectValid(wrong);
    expect(wrong).toMatchObject({ type: 'dicom', ok: false });
    expect(wrong.error).toBe('rejected: association rejected (permanent): called AE title not recognized');
  });

  it('fails at once when the peer aborts the association (A-ABORT), instead of waiting for the timeout', async () => {
    const scp = await startDcmqrscp(peers, await freePort(), 'WARDPACS', { withoutDatabase: true });
    const [result, elapsed] = await timed(probeDicom(target, probe({ type: 'dicom', port: scp.port, calledAe: 'WARDPACS', timeoutMs: 3000 })));
    expectValid(result);
    expect(result, scp.output()).toMatchObject({ type: 'dicom', ok: false });
    expect(result.error).toMatch(/^aborted: association aborted by /);
    expect(elapsed).toBeLessThan(2000);
  });

  it('fails on a closed port', async () => {
    const port = await freePort();
    const result = await probeDicom(target, probe({ type: 'dicom', port, calledAe: 'WARDPACS', timeoutMs: 2000 }));
    expectValid(result);
    expect(result).toMatchObject({ type: 'dicom', ok: false, latencyMs: null });
    expect(result.error).toMatch(/^refused: /);
  });

  it('times out on a peer that accepts and never answers the association request, and closes its socket', async () => {
    const silent = await startSilentServer(peers);
    const [result, elapsed] = await timed(probeDicom(target, probe({ type: 'dicom', port: silent.port, calledAe: 'WARDPACS', timeoutMs: 300 })));
    expect(result).toMatchObject({ ok: false });
    expect(result.error).toMatch(/^timeout: /);
    expect(elapsed).toBeGreaterThanOrEqual(290);
    expect(elapsed).toBeLessThan(1500);
    await waitFor('the probe connection to close', () => silent.connections() === 0, 2000);
  });
});

describe('runProbe', () => {
  it('dispatches on the type, and never throws', async () => {
    const port = await freePort();
    const configs: ProbeConfig[] = [
      probe({ type: 'tcp', port, timeoutMs: 200 }),
      probe({ type: 'icmp', timeoutMs: 500 }),
      probe({ type: 'modbus', port, timeoutMs: 200 }),
      probe({ type: 'dicom', port, calledAe: 'X', timeoutMs: 200 }),
    ];
    const results = await Promise.all(configs.map((c) => runProbe(target, c)));
    expect(results.map((r) => [r.type, r.ok])).toEqual([
      ['tcp', false],
      ['icmp', true],
      ['modbus', false],
      ['dicom', false],
    ]);
    results.forEach(expectValid);
  });
});
