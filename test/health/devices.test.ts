// The device health model: hysteresis and state as pure functions, then a device with two probes
// against real peers (a modbus-serial ServerTCP and DCMTK's storescp) that are stopped and
// restarted, walking unknown → up → degraded → down → degraded → up, with the hysteresis counts
// checked at each transition.
import { afterEach, describe, expect, it } from 'vitest';
import { ProbeSchema, type ProbeConfig } from '../../agent/config/schema.js';
import {
  DeviceHealthModel,
  deviceState,
  monitoredDevice,
  nextHysteresis,
  realTimers,
  type DeviceTransition,
  type Hysteresis,
  type HealthTimers,
  type MonitoredDevice,
  type ProbeOutcome,
} from '../../agent/health/devices.js';
import { DeviceHealthPayload, envelope } from '../../agent/mqtt/topics.js';
import type { ResolvedDevice } from '../../agent/policy/model.js';
import { parseIPv4, parseIPv6 } from '../../agent/policy/net.js';
import { freePort, LOOPBACK, Peers, startModbusServer, startStorescp, waitFor } from '../fixtures/peers.js';

/** Real timers, 20 times faster: a 1 s interval (the schema's minimum) is 50 ms. */
const SPEEDUP = 20;
const fastTimers: HealthTimers = { ...realTimers, setTimeout: (fn, ms) => realTimers.setTimeout(fn, ms / SPEEDUP) };

const probe = (config: Record<string, unknown>): ProbeConfig => ProbeSchema.parse(config);

describe('hysteresis', () => {
  const cfg = { failuresToDown: 3, successesToUp: 2 };
  const walk = (oks: boolean[]): Hysteresis[] => {
    let h: Hysteresis = { status: 'unknown', successes: 0, failures: 0 };
    return oks.map((ok) => (h = nextHysteresis(h, ok, cfg)));
  };

  it('takes the first result as it is', () => {
    expect(walk([true])[0]?.status).toBe('passing');
    expect(walk([false])[0]?.status).toBe('failing');
  });

  it('fails after failuresToDown consecutive failures, and passes again after successesToUp successes', () => {
    const statuses = walk([true, false, false, true, false, false, false, true, false, true, true]).map((h) => h.status);
    expect(statuses).toEqual(['passing', 'passing', 'passing', 'passing', 'passing', 'passing', 'failing', 'failing', 'failing', 'failing', 'passing']);
  });

  it('gives the device state from the probe statuses', () => {
    expect(deviceState([])).toBe('unknown');
    expect(deviceState(['passing', 'unknown'])).toBe('unknown');
    expect(deviceState(['passing', 'passing'])).toBe('up');
    expect(deviceState(['passing', 'failing'])).toBe('degraded');
    expect(deviceState(['failing', 'failing'])).toBe('down');
  });
});

describe('monitoredDevice', () => {
  const base = { id: 'ct-1', src: { file: 'x.yaml', line: 1, col: 1 }, class: 'ct-modality', criticality: 'high', mode: 'monitor', failMode: 'closed', entries: [], probes: [] } as const;
  it('probes the IPv4 address, else the IPv6 one, else nothing', () => {
    const both = { ...base, addresses: { ipv4: parseIPv4('10.1.2.3'), ipv6: parseIPv6('fd00::5') } } as unknown as ResolvedDevice;
    const six = { ...base, addresses: { ipv6: parseIPv6('fd00::5') } } as unknown as ResolvedDevice;
    const none = { ...base, addresses: {} } as unknown as ResolvedDevice;
    expect(monitoredDevice(both).address).toBe('10.1.2.3');
    expect(monitoredDevice(six).address).toBe('fd00::5');
    expect(monitoredDevice(none).address).toBeUndefined();
  });
});

describe('DeviceHealthModel with real peers', () => {
  const peers = new Peers();
  let model: DeviceHealthModel | undefined;

  afterEach(async () => {
    await model?.stop();
    model = undefined;
    await peers.stopAll();
  });

  function record(m: DeviceHealthModel) {
    const log: ({ kind: 'probe'; e: ProbeOutcome } | { kind: 'transition'; e: DeviceTransition })[] = [];
    m.on('probe', (e) => log.push({ kind: 'probe', e }));
    m.on('transition', (e) => log.push({ kind: 'transition', e }));
    const transitions = () => log.flatMap((x) => (x.kind === 'transition' ? [x.e] : []));
    /** The outcomes of probe `index` just before the n-th transition, latest last. */
    const before = (n: number, index: number): ProbeOutcome[] => {
      const at = log.findIndex((x) => x.kind === 'transition' && transitions().indexOf(x.e) === n);
      return log.slice(0, at).flatMap((x) => (x.kind === 'probe' && x.e.index === index ? [x.e] : []));
    };
    return { log, transitions, before };
  }

  it('walks up → degraded → down → degraded → up as the peers stop and come back, with the hysteresis counts', async () => {
    const modbusPort = await freePort();
    const dicomPort = await freePort();
    const registers = { getMultipleHoldingRegisters: (addr: number, n: number) => Array.from({ length: n }, (_, i) => addr + i) };
    let modbus = await startModbusServer(peers, modbusPort, 1, registers);
    let scp = await startStorescp(peers, dicomPort, 'STERILE');

    const common = { intervalSeconds: 1, timeoutMs: 1000, failuresToDown: 3, successesToUp: 2 };
    const device: MonitoredDevice = {
      id: 'steriliser-1',
      class: 'steriliser',
      criticality: 'high',
      address: LOOPBACK,
      probes: [probe({ type: 'modbus', port: modbusPort, unitId: 1, read: { address: 10, count: 2 }, ...common }), probe({ type: 'dicom', port: dicomPort, calledAe: 'STERILE', ...common })],
    };
    model = new DeviceHealthModel({ devices: [device], timers: fastTimers });
    const { transitions, before } = record(model);
    const MODBUS = 0;
    const DICOM = 1;
    const reached = (n: number, what: string) => waitFor(what, () => transitions().length >= n, 15000);

    // Before start: unknown, no results.
    expect(model.snapshot('steriliser-1')).toMatchObject({ state: 'unknown', probes: [] });
    model.start();
    await reached(1, 'unknown → up');
    expect(transitions()[0]).toMatchObject({ device: 'steriliser-1', from: 'unknown', to: 'up' });
    expect(transitions()[0]?.probes.map((p) => [p.type, p.ok])).toEqual([
      ['modbus', true],
      ['dicom', true],
    ]);
    expect(transitions()[0]?.probes[0]?.detail).toMatchObject({ values: [10, 11] });

    // The DICOM peer goes away: degraded after exactly failuresToDown failures in a row.
    await scp.stop();
    await reached(2, 'up → degraded');
    expect(transitions()[1]).toMatchObject({ from: 'up', to: 'degraded' });
    const dicomDown = before(1, DICOM);
    expect(dicomDown.slice(-3).map((o) => [o.result.ok, o.status, o.consecutiveFailures])).toEqual([
      [false, 'passing', 1],
      [false, 'passing', 2],
      [false, 'failing', 3],
    ]);
    expect(dicomDown.at(-4)?.result.ok).toBe(true);
    expect(transitions()[1]?.probes[DICOM]).toMatchObject({ type: 'dicom', ok: false });
    expect(transitions()[1]?.probes[DICOM]?.error).toMatch(/^refused: /);

    // The Modbus peer goes away too: down.
    await modbus.stop();
    await reached(3, 'degraded → down');
    expect(transitions()[2]).toMatchObject({ from: 'degraded', to: 'down' });
    expect(before(2, MODBUS).slice(-3).map((o) => [o.status, o.consecutiveFailures])).toEqual([
      ['passing', 1],
      ['passing', 2],
      ['failing', 3],
    ]);
    const down = model.snapshot('steriliser-1');
    expect(down).toMatchObject({ state: 'down', since: transitions()[2]?.at });
    expect(down?.probes.every((p) => !p.ok)).toBe(true);

    // The Modbus peer comes back: degraded after successesToUp successes in a row.
    modbus = await startModbusServer(peers, modbusPort, 1, registers);
    await reached(4, 'down → degraded');
    expect(transitions()[3]).toMatchObject({ from: 'down', to: 'degraded' });
    expect(before(3, MODBUS).slice(-2).map((o) => [o.result.ok, o.status, o.consecutiveSuccesses])).toEqual([
      [true, 'failing', 1],
      [true, 'passing', 2],
    ]);

    // And the DICOM peer: up.
    scp = await startStorescp(peers, dicomPort, 'STERILE');
    await reached(5, 'degraded → up');
    expect(transitions()[4]).toMatchObject({ from: 'degraded', to: 'up' });
    expect(before(4, DICOM).slice(-2).map((o) => [o.status, o.consecutiveSuccesses])).toEqual([
      ['failing', 1],
      ['passing', 2],
    ]);

    expect(transitions().map((t) => `${t.from}→${t.to}`)).toEqual(['unknown→up', 'up→degraded', 'degraded→down', 'down→degraded', 'degraded→up']);

    // The snapshot is a DeviceHealthPayload once the envelope is added.
    const snap = model.snapshot('steriliser-1');
    expect(snap).toMatchObject({ device: 'steriliser-1', class: 'steriliser', criticality: 'high', state: 'up', since: transitions()[4]?.at });
    expect(DeviceHealthPayload.safeParse({ ...envelope('device-health', 'site', 'gw'), ...snap }).success).toBe(true);

    // stop() waits for the probes in flight; nothing runs after it.
    await model.stop();
    const count = transitions().length;
    const seen = record(model);
    await new Promise((r) => setTimeout(r, 300));
    expect(seen.log).toEqual([]);
    expect(transitions()).toHaveLength(count);
  });

  it('keeps a device without probes, or without an IP address, unknown', async () => {
    const port = await freePort();
    const devices: MonitoredDevice[] = [
      { id: 'no-probes', class: 'x', criticality: 'low', address: LOOPBACK, probes: [] },
      { id: 'mac-only', class: 'x', criticality: 'low', address: undefined, probes: [probe({ type: 'tcp', port })] },
    ];
    model = new DeviceHealthModel({ devices, timers: fastTimers });
    const { log } = record(model);
    model.start();
    await new Promise((r) => setTimeout(r, 200));
    expect(log).toEqual([]);
    expect(model.snapshots().map((s) => [s.device, s.state, s.probes.length])).toEqual([
      ['no-probes', 'unknown', 0],
      ['mac-only', 'unknown', 0],
    ]);
    expect(model.snapshot('nope')).toBeUndefined();
  });

  it('goes on probing when a listener throws', async () => {
    const port = await freePort();
    const device: MonitoredDevice = { id: 'd', class: 'x', criticality: 'low', address: LOOPBACK, probes: [probe({ type: 'tcp', port, intervalSeconds: 1, timeoutMs: 200 })] };
    model = new DeviceHealthModel({ devices: [device], timers: fastTimers });
    const errors: unknown[] = [];
    model.on('error', (err) => errors.push(err));
    model.on('transition', () => {
      throw new Error('a broken listener');
    });
    let probes = 0;
    model.on('probe', () => probes++);
    model.start();
    await waitFor('three probe runs', () => probes >= 3, 5000);
    expect(errors).toHaveLength(1);
    expect(model.snapshot('d')?.state).toBe('down');
  });
});
