// The Modbus RTU gateway with real peers on loopback: serial lines made of pseudo-terminal pairs
// (socat), a pymodbus RTU device on the far end of each, the proxy process (dist/, as the agent
// runs it) on the near end, and mbpoll and the pymodbus client speaking Modbus TCP to the
// gateway's ports. The targets come from a policy file through buildModel and workerTargets, as
// the agent makes them. What reached a device is read on a second path (the device's own Modbus
// TCP port onto the same registers) and, at the end, straight over the serial line.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../agent/config/load.js';
import { buildModel } from '../../agent/policy/model.js';
import { workerTargets } from '../../agent/protocols/module.js';
import { freePort } from '../fixtures/peers.js';
import { warnSkip } from '../integration/site.js';
import { adu } from './modbus/frames.js';
import { exchange, mbpoll, polled, ProxyWorker, Procs, ptyPair, pyClient, rtuSkipReason, startDevice, type Line } from './rtu-line.js';

warnSkip('modbus rtu gateway', rtuSkipReason);

const GATEWAY = `apiVersion: wardgate/v1
kind: Gateway
site: test
gateway: gw-1
mode: router
interfaces: { uplink: up0, device: dev0 }
deviceSegments: [10.20.0.0/24]
management: { networks: [10.99.0.0/24] }
stateDir: state
policies: [rules/*.yaml]
`;

/** The lines' settings: no parity (rtu-line.ts says why), a short timeout to keep the tests quick. */
const line = (path: string, port: number) => `
    rtu: { serialPort: ${path}, parity: none, listenPort: ${port}, responseTimeoutMs: 300, turnaroundDelayMs: 50 }`;

describe.skipIf(rtuSkipReason !== undefined)('Modbus RTU gateway over loopback', () => {
  const procs = new Procs();
  const dir = mkdtempSync(join(tmpdir(), 'wg-rtu-gw-'));
  let line1: Line;
  let line2: Line;
  /** Where the third line will be: nothing there at first. */
  const line3 = { a: join(dir, 'line3-a'), b: join(dir, 'line3-b') };
  let worker: ProxyWorker;
  let check: string[];
  const port = { ro: 0, rw: 0, crc: 0, monitor: 0, absent: 0 };

  beforeAll(async () => {
    line1 = await ptyPair(procs, dir, 'line1');
    line2 = await ptyPair(procs, dir, 'line2');
    const checkPort = await freePort();
    check = ['tcp', '127.0.0.1', String(checkPort)];
    await startDevice(procs, line1.a, { tcpPort: checkPort });
    await startDevice(procs, line2.a, { badCrc: true });
    for (const k of Object.keys(port) as (keyof typeof port)[]) port[k] = await freePort();
    mkdirSync(join(dir, 'rules'));
    writeFileSync(join(dir, 'gateway.yaml'), GATEWAY);
    writeFileSync(
      join(dir, 'rules', 'devices.yaml'),
      `apiVersion: wardgate/v1
kind: Policy
groups:
  local: { members: [127.0.0.1] }
  scada: { members: [10.10.7.1] }
devices:
  - id: sterilizer-01
    class: sterilizer
    criticality: medium
    mode: enforce${line(line1.b, port.ro)}
    allow:
      - { peer: local, direction: inbound, proto: tcp, ports: [${port.ro}], modbus: { profile: read-only, unitIds: [3] } }
  - id: washer-01
    class: washer-disinfector
    criticality: medium
    mode: enforce${line(line1.b, port.rw)}
    allow:
      - peer: local
        direction: inbound
        proto: tcp
        ports: [${port.rw}]
        modbus: { profile: read-write, write: { holdingRegisters: ["100-119"] } }
  - id: dryer-01
    class: sterilizer
    criticality: medium
    mode: monitor${line(line1.b, port.monitor)}
    allow:
      - { peer: scada, direction: inbound, proto: tcp, ports: [${port.monitor}], modbus: { profile: read-only, unitIds: [4] } }
  - id: noisy-01
    class: sterilizer
    criticality: medium
    mode: enforce${line(line2.b, port.crc)}
    allow:
      - { peer: local, direction: inbound, proto: tcp, ports: [${port.crc}] }
  - id: later-01
    class: sterilizer
    criticality: medium
    mode: enforce${line(line3.b, port.absent)}
    allow:
      - { peer: local, direction: inbound, proto: tcp, ports: [${port.absent}] }
`,
    );
    const model = buildModel(loadConfig(join(dir, 'gateway.yaml')));
    worker = ProxyWorker.start(procs);
    const ready = await worker.targets(model.gateway.protocols, workerTargets(model, join(dir, 'state')));
    expect(ready.failed).toEqual([]);
    expect(ready.listening.sort()).toEqual(['dryer-01:rtu', 'later-01:rtu', 'noisy-01:rtu', 'sterilizer-01:rtu', 'washer-01:rtu']);
    await worker.until('both lines open', () => (worker.line(line1.b)?.open && worker.line(line2.b)?.open ? true : undefined));
  });

  afterAll(async () => {
    await procs.stopAll();
    rmSync(dir, { recursive: true, force: true });
  });

  it('passes an allowed read to the device and its answer back (mbpoll)', async () => {
    const r = await mbpoll(port.ro, ['-a', '3', '-r', '0', '-c', '4', '127.0.0.1']);
    expect(r.code, r.out).toBe(0);
    expect(polled(r.out)).toEqual([0, 1, 2, 3]);
  });

  it('passes an allowed read of input registers (pymodbus)', async () => {
    const r = await pyClient(['tcp', '127.0.0.1', String(port.ro)], 'read-input', 3, 5, 3);
    expect(r).toMatchObject({ registers: [1005, 1006, 1007] });
  });

  it('answers a write from a read-only peer with exception 01, and the device is unchanged', async () => {
    const r = await mbpoll(port.ro, ['-a', '3', '-r', '10', '127.0.0.1', '555']);
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/Illegal function/i);
    expect(await pyClient(check, 'read-holding', 3, 10, 1)).toMatchObject({ registers: [10] });
    expect(worker.records('modbus.denied').some((x) => x.device === 'sterilizer-01' && x.fc === 6)).toBe(true);
  });

  it('passes a write inside the allowed range, logs it, and refuses one outside it with exception 02', async () => {
    const ok = await pyClient(['tcp', '127.0.0.1', String(port.rw)], 'write-register', 4, 105, 4242);
    expect(ok).toMatchObject({ ok: true });
    expect(await pyClient(check, 'read-holding', 4, 105, 1)).toMatchObject({ registers: [4242] });
    expect(worker.records('modbus.write')).toContainEqual(expect.objectContaining({ device: 'washer-01', unit: 4, address: 105, values: [4242], peer: '127.0.0.1' }));
    const denied = await mbpoll(port.rw, ['-a', '4', '-r', '150', '127.0.0.1', '4242']);
    expect(denied.code).not.toBe(0);
    expect(denied.out).toMatch(/Illegal data address/i);
    expect(await pyClient(check, 'read-holding', 4, 150, 1)).toMatchObject({ registers: [150] });
  });

  it('gives each answer the transaction id of its request, in order, with requests sent together', async () => {
    const answers = await exchange(port.ro, [adu(0x1234, 3, [0x03, 0, 0, 0, 1]), adu(0xbeef, 3, [0x03, 0, 5, 0, 2])], { want: 2, ms: 3000 });
    expect(answers.map((a) => a.toString('hex'))).toEqual([adu(0x1234, 3, [0x03, 2, 0, 0]).toString('hex'), adu(0xbeef, 3, [0x03, 4, 0, 5, 0, 6]).toString('hex')]);
  });

  it('serves connections to one line one request at a time: three clients at once, every answer theirs', async () => {
    const before = await worker.freshLine(line1.b);
    const runs = await Promise.all([
      pyClient(['tcp', '127.0.0.1', String(port.ro)], 'check-loop', 3, 40),
      pyClient(['tcp', '127.0.0.1', String(port.ro)], 'check-loop', 3, 40),
      pyClient(['tcp', '127.0.0.1', String(port.rw)], 'check-loop', 4, 40),
    ]);
    for (const r of runs) expect(r, JSON.stringify(r)).toMatchObject({ ok: true, code: 0 });
    const after = await worker.freshLine(line1.b);
    expect(after.requests - before.requests).toBeGreaterThanOrEqual(120);
    expect(after.answers - before.answers).toBe(after.requests - before.requests);
    expect([after.crcErrors, after.timeouts, after.unexpected]).toEqual([before.crcErrors, before.timeouts, before.unexpected]);
  });

  it('answers for a unit that does not answer with exception 0x0B after the response timeout, and the line goes on', async () => {
    const r = await pyClient(['tcp', '127.0.0.1', String(port.rw)], 'read-holding', 7, 0, 1);
    expect(r).toMatchObject({ exception: 0x0b });
    expect(r.ms).toBeGreaterThanOrEqual(300);
    expect(worker.alerts('modbus.rtu-timeout')).toContainEqual(expect.objectContaining({ device: 'washer-01', dedupKey: 'modbus.rtu-timeout/washer-01/7' }));
    expect(await pyClient(['tcp', '127.0.0.1', String(port.rw)], 'read-holding', 4, 0, 2)).toMatchObject({ registers: [0, 1] });
  });

  it('sends a broadcast write to every device with no answer, and answers 0x0A for reserved units and broadcast reads', async () => {
    const before = await worker.freshLine(line1.b);
    const broadcast = await exchange(port.rw, [adu(1, 0, [0x06, 0, 110, 0x03, 0x09])], { want: 1, ms: 700 });
    expect(broadcast).toEqual([]);
    expect(await pyClient(check, 'read-holding', 3, 110, 1)).toMatchObject({ registers: [777] });
    expect(await pyClient(check, 'read-holding', 4, 110, 1)).toMatchObject({ registers: [777] });
    const refused = await exchange(port.rw, [adu(2, 250, [0x03, 0, 0, 0, 1]), adu(3, 0, [0x03, 0, 0, 0, 1])], { want: 2, ms: 3000 });
    expect(refused.map((a) => a.toString('hex'))).toEqual([adu(2, 250, [0x83, 0x0a]).toString('hex'), adu(3, 0, [0x83, 0x0a]).toString('hex')]);
    const after = await worker.freshLine(line1.b);
    expect(after.broadcasts - before.broadcasts).toBe(1);
    expect(after.refused - before.refused).toBe(2);
  });

  it('drops an answer with a broken CRC, counts and alerts it, and answers 0x0B', async () => {
    const r = await pyClient(['tcp', '127.0.0.1', String(port.crc)], 'read-holding', 3, 0, 2);
    expect(r).toMatchObject({ exception: 0x0b });
    expect(r.ms).toBeLessThan(300); // not a timeout: the broken frame was complete
    expect((await worker.freshLine(line2.b)).crcErrors).toBeGreaterThanOrEqual(1);
    expect(worker.alerts('modbus.rtu-crc')).toContainEqual(expect.objectContaining({ device: 'noisy-01', severity: 'warning', dedupKey: 'modbus.rtu-crc/noisy-01/3' }));
    expect(worker.records('modbus.rtu-crc')).toContainEqual(expect.objectContaining({ device: 'noisy-01', unit: 3, fc: 3, action: 'exception 0x0B' }));
  });

  it('lets a peer on none of a monitor-mode device\'s entries through, alerting what it would deny', async () => {
    const r = await mbpoll(port.monitor, ['-a', '4', '-r', '0', '-c', '2', '127.0.0.1']);
    expect(r.code, r.out).toBe(0);
    expect(polled(r.out)).toEqual([0, 1]);
    expect(worker.alerts('modbus.denied').filter((a) => a.device === 'dryer-01').map((a) => a.data.wouldDeny)).toContain(true);
  });

  it('answers 0x0A while a line cannot be opened, alerts it once, and serves it once it is there', async () => {
    const via = ['tcp', '127.0.0.1', String(port.absent)];
    expect(await pyClient(via, 'read-holding', 3, 0, 1)).toMatchObject({ exception: 0x0a });
    expect(worker.alerts('modbus.rtu-line')).toEqual([expect.objectContaining({ device: 'later-01', severity: 'critical', dedupKey: `modbus.rtu-line/${line3.b}` })]);
    const line = await ptyPair(procs, dir, 'line3');
    await startDevice(procs, line.a);
    // Tried again after 1, 2, 4 s...
    await worker.until('line 3 open', () => (worker.line(line3.b)?.open ? true : undefined), 20000);
    expect(await pyClient(via, 'read-holding', 3, 7, 2)).toMatchObject({ registers: [7, 8] });
  });

  it('opens a line anew when a policy changes its settings, ending the connections through it, and serves it', async () => {
    const before = await worker.freshLine(line1.b);
    expect(before.requests).toBeGreaterThan(100);
    // A client that keeps its connection open (as SCADA does) is let go, not left unanswered.
    const held = connect({ port: port.ro, host: '127.0.0.1' });
    const heldClosed = new Promise<void>((resolve) => held.once('close', () => resolve()));
    held.on('error', () => undefined);
    await new Promise((resolve) => held.once('connect', resolve));
    const file = join(dir, 'rules', 'devices.yaml');
    writeFileSync(file, readFileSync(file, 'utf8').replaceAll('responseTimeoutMs: 300', 'responseTimeoutMs: 400'));
    const model = buildModel(loadConfig(join(dir, 'gateway.yaml')));
    const ready = await worker.targets(model.gateway.protocols, workerTargets(model, join(dir, 'state')));
    expect(ready.failed).toEqual([]);
    await worker.until('line 1 open again', () => (worker.line(line1.b)?.open && (worker.line(line1.b)?.requests ?? 1) === 0 ? true : undefined));
    const r = await pyClient(['tcp', '127.0.0.1', String(port.rw)], 'read-holding', 7, 0, 1);
    expect(r).toMatchObject({ exception: 0x0b });
    expect(r.ms).toBeGreaterThanOrEqual(400);
    expect(await pyClient(['tcp', '127.0.0.1', String(port.ro)], 'read-holding', 3, 0, 2)).toMatchObject({ registers: [0, 1] });
    await heldClosed;
  });

  it('left the devices\' registers as the allowed requests set them, read straight over the serial line', async () => {
    // The gateway lets go of the line when its process ends; then the test is the line's master.
    const exited = new Promise((r) => worker.child.once('exit', r));
    worker.child.disconnect();
    await exited;
    const serial = ['serial', line1.b, 'N'];
    expect(await pyClient(serial, 'read-holding', 4, 105, 1)).toMatchObject({ registers: [4242] });
    expect(await pyClient(serial, 'read-holding', 3, 10, 1)).toMatchObject({ registers: [10] });
    expect(await pyClient(serial, 'read-holding', 4, 150, 1)).toMatchObject({ registers: [150] });
  });
});
