// The device health model: each device's probes run on their own intervals, each probe passes or
// fails with hysteresis, and the device is up (every probe passing), degraded (some failing),
// down (all failing) or unknown (no probes, or not every probe has a result yet). Transitions are
// events; the agent turns them into `events` and `devices/<id>/health` messages. This module
// neither logs nor publishes.
import { EventEmitter } from 'node:events';
import type { ProbeConfig } from '../config/schema.js';
import type { DeviceHealthPayload, ProbeResult } from '../mqtt/topics.js';
import type { ResolvedDevice } from '../policy/model.js';
import { formatAddress } from '../policy/net.js';
import { runProbe, type ProbeTarget } from './probes.js';

export type DeviceState = DeviceHealthPayload['state'];
/** A probe with no result yet is unknown; after that, passing or failing with hysteresis. */
export type ProbeStatus = 'unknown' | 'passing' | 'failing';

/** What the model needs of a device. */
export interface MonitoredDevice {
  id: string;
  class: string;
  criticality: string;
  /** Where the probes go; undefined for a device known only by its MAC, which is not probed. */
  address: string | undefined;
  probes: ProbeConfig[];
}

/** A device of the allow-list model; probes go to its IPv4 address, or its IPv6 one. */
export function monitoredDevice(d: ResolvedDevice): MonitoredDevice {
  const address =
    d.addresses.ipv4 !== undefined ? formatAddress('ipv4', d.addresses.ipv4) : d.addresses.ipv6 !== undefined ? formatAddress('ipv6', d.addresses.ipv6) : undefined;
  return { id: d.id, class: d.class, criticality: d.criticality, address, probes: d.probes };
}

/** DeviceHealthPayload without its envelope. */
export type DeviceHealth = Pick<DeviceHealthPayload, 'device' | 'class' | 'criticality' | 'state' | 'since' | 'probes'>;

export interface DeviceTransition {
  device: string;
  from: DeviceState;
  to: DeviceState;
  /** When the device entered `to` (ISO 8601, UTC). */
  at: string;
  /** The latest result of each probe that has one, in configuration order. */
  probes: ProbeResult[];
}

export interface ProbeOutcome {
  device: string;
  /** The probe's index in the device's configuration. */
  index: number;
  result: ProbeResult;
  /** The probe's status after this result. */
  status: ProbeStatus;
  consecutiveSuccesses: number;
  consecutiveFailures: number;
}

export interface DeviceHealthEvents {
  transition: [DeviceTransition];
  probe: [ProbeOutcome];
  /** A listener threw; probing goes on. Emitted only when something listens for it. */
  error: [unknown];
}

/** The clock and timers the model schedules with; tests pass faster ones. */
export interface HealthTimers {
  /** Epoch milliseconds. */
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const realTimers: HealthTimers = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

export interface DeviceHealthOptions {
  devices: readonly MonitoredDevice[];
  timers?: HealthTimers;
  /** Runs one probe; the real probes by default. Must not reject. */
  runProbe?: (target: ProbeTarget, probe: ProbeConfig) => Promise<ProbeResult>;
}

export interface Hysteresis {
  status: ProbeStatus;
  successes: number;
  failures: number;
}

/**
 * The next status of a probe after one result. The first result sets the status outright (the
 * device's state is unknown only until every probe has answered once); after that a passing probe
 * fails after failuresToDown consecutive failures, and a failing one passes again after
 * successesToUp consecutive successes.
 */
export function nextHysteresis(h: Hysteresis, ok: boolean, probe: Pick<ProbeConfig, 'failuresToDown' | 'successesToUp'>): Hysteresis {
  const successes = ok ? h.successes + 1 : 0;
  const failures = ok ? 0 : h.failures + 1;
  let status = h.status;
  if (status === 'unknown') status = ok ? 'passing' : 'failing';
  else if (status === 'passing' && failures >= probe.failuresToDown) status = 'failing';
  else if (status === 'failing' && successes >= probe.successesToUp) status = 'passing';
  return { status, successes, failures };
}

/** The device's state from its probes' statuses. */
export function deviceState(statuses: readonly ProbeStatus[]): DeviceState {
  if (statuses.length === 0 || statuses.includes('unknown')) return 'unknown';
  if (statuses.every((s) => s === 'passing')) return 'up';
  if (statuses.every((s) => s === 'failing')) return 'down';
  return 'degraded';
}

interface ProbeSlot {
  config: ProbeConfig;
  h: Hysteresis;
  last: ProbeResult | undefined;
  timer: unknown;
}

interface DeviceSlot {
  device: MonitoredDevice;
  probes: ProbeSlot[];
  state: DeviceState;
  since: number;
}

export class DeviceHealthModel extends EventEmitter<DeviceHealthEvents> {
  private readonly timers: HealthTimers;
  private readonly run: (target: ProbeTarget, probe: ProbeConfig) => Promise<ProbeResult>;
  private slots = new Map<string, DeviceSlot>();
  private readonly inFlight = new Set<Promise<void>>();
  private running = false;
  /** Bumped by start() and stop(), so that a probe still in flight from before is ignored. */
  private generation = 0;

  constructor(private readonly opts: DeviceHealthOptions) {
    super();
    this.timers = opts.timers ?? realTimers;
    this.run = opts.runProbe ?? runProbe;
  }

  /** Resets every device to unknown and runs each probe now, then on its interval. */
  start(): void {
    if (this.running) return;
    this.running = true;
    const generation = ++this.generation;
    const now = this.timers.now();
    this.slots = new Map(
      this.opts.devices.map((device) => [
        device.id,
        {
          device,
          probes: device.probes.map((config) => ({ config, h: { status: 'unknown', successes: 0, failures: 0 }, last: undefined, timer: undefined })),
          state: 'unknown',
          since: now,
        },
      ]),
    );
    for (const slot of this.slots.values()) {
      const address = slot.device.address;
      if (address === undefined) continue;
      slot.probes.forEach((probe, index) => this.launch(generation, slot, probe, index, address));
    }
  }

  /** Stops scheduling and waits for the probes in flight (each bounded by its timeout). */
  async stop(): Promise<void> {
    this.running = false;
    this.generation++;
    for (const slot of this.slots.values()) {
      for (const probe of slot.probes) {
        if (probe.timer !== undefined) this.timers.clearTimeout(probe.timer);
        probe.timer = undefined;
      }
    }
    await Promise.allSettled([...this.inFlight]);
  }

  snapshot(deviceId: string): DeviceHealth | undefined {
    const slot = this.slots.get(deviceId);
    if (slot) return this.view(slot);
    // Before start(): every configured device is unknown.
    const device = this.opts.devices.find((d) => d.id === deviceId);
    return device && { device: device.id, class: device.class, criticality: device.criticality, state: 'unknown', since: new Date(this.timers.now()).toISOString(), probes: [] };
  }

  snapshots(): DeviceHealth[] {
    return this.opts.devices.flatMap((d) => this.snapshot(d.id) ?? []);
  }

  private view(slot: DeviceSlot): DeviceHealth {
    return {
      device: slot.device.id,
      class: slot.device.class,
      criticality: slot.device.criticality,
      state: slot.state,
      since: new Date(slot.since).toISOString(),
      probes: this.latest(slot),
    };
  }

  private latest(slot: DeviceSlot): ProbeResult[] {
    return slot.probes.flatMap((p) => (p.last ? [p.last] : []));
  }

  private launch(generation: number, slot: DeviceSlot, probe: ProbeSlot, index: number, address: string): void {
    probe.timer = undefined;
    const started = this.timers.now();
    const run = this.runOnce(generation, slot, probe, index, address)
      .catch((err: unknown) => this.failed(err))
      .finally(() => {
        this.inFlight.delete(run);
        if (!this.running || generation !== this.generation) return;
        // The interval runs from start to start; a probe never overlaps itself, so one that takes
        // longer than its interval runs again at once.
        const wait = Math.max(0, probe.config.intervalSeconds * 1000 - (this.timers.now() - started));
        probe.timer = this.timers.setTimeout(() => this.launch(generation, slot, probe, index, address), wait);
      });
    this.inFlight.add(run);
  }

  private async runOnce(generation: number, slot: DeviceSlot, probe: ProbeSlot, index: number, address: string): Promise<void> {
    const result = await this.run({ address }, probe.config);
    if (generation !== this.generation) return;
    probe.last = result;
    probe.h = nextHysteresis(probe.h, result.ok, probe.config);
    const state = deviceState(slot.probes.map((p) => p.h.status));
    const from = slot.state;
    if (state !== from) {
      slot.state = state;
      slot.since = this.timers.now();
    }
    const outcome: ProbeOutcome = {
      device: slot.device.id,
      index,
      result,
      status: probe.h.status,
      consecutiveSuccesses: probe.h.successes,
      consecutiveFailures: probe.h.failures,
    };
    this.tell(() => this.emit('probe', outcome));
    if (state !== from) {
      const transition: DeviceTransition = { device: slot.device.id, from, to: state, at: new Date(slot.since).toISOString(), probes: this.latest(slot) };
      this.tell(() => this.emit('transition', transition));
    }
  }

  /** Emits; a listener that throws does not stop probing, nor keep the other event from going out. */
  private tell(emit: () => void): void {
    try {
      emit();
    } catch (err) {
      this.failed(err);
    }
  }

  private failed(err: unknown): void {
    if (this.listenerCount('error') > 0) this.emit('error', err);
  }
}
