// The agent's backups: each device with a `backup:` block and a schedule is fetched every
// `everyHours` (the first run soon after start, runs spread by jitter so that fifty devices do not
// fire at once), on demand by runNow, and never twice at once. Each run: driver fetch (timeout,
// retries) -> store.put (retention) -> compare with the approved baseline. Events: backup.failed,
// config.drift, and backup.stale when no fetch has succeeded for expectEveryHours (measured from
// the store's lastChecked, so that it survives restarts).
import type { Severity } from '../mqtt/topics.js';
import { BackupDriverError, createDeviceDriver, type RetryOptions } from './drivers/index.js';
import { driftMessage, storeAndCompare, type BackupTarget, type StoredOutcome } from './run.js';
import type { BackupStore } from './store.js';

export type BackupEvent = (severity: Severity, kind: string, message: string, extra: { device?: string; dedupKey?: string; data?: Record<string, unknown> }) => void;

export interface ServiceLog {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface BackupServiceOptions {
  store: BackupStore;
  targets: BackupTarget[];
  event: BackupEvent;
  log: ServiceLog;
  /** The length of an hour in ms: the schedule's and stale check's unit (tests shorten it). */
  hourMs?: number;
  /** The first runs are spread over this long after start (default 5 s per scheduled device), or over the interval if shorter. */
  startSpreadMs?: number;
  /** The drivers' backoff between retries. */
  retry?: RetryOptions;
  now?: () => number;
}

export interface RunResult {
  device: string;
  ok: boolean;
  outcome?: StoredOutcome;
  error?: BackupDriverError | Error;
}

interface DeviceState {
  target: BackupTarget;
  timer?: NodeJS.Timeout;
  running?: Promise<RunResult>;
  /** When backup.stale was last raised for this device (reset by a success). */
  staleRaisedAt?: number;
}

export class BackupService {
  readonly #opts: BackupServiceOptions;
  readonly #devices = new Map<string, DeviceState>();
  readonly #hourMs: number;
  #abort = new AbortController();
  #staleTimer: NodeJS.Timeout | undefined;
  #startedAt = 0;
  #stopped = true;

  constructor(opts: BackupServiceOptions) {
    this.#opts = opts;
    this.#hourMs = opts.hourMs ?? 3600_000;
    if (!(this.#hourMs > 0)) throw new RangeError(`hourMs must be positive, not ${this.#hourMs}`);
    for (const t of opts.targets) {
      if (this.#devices.has(t.address.id)) throw new RangeError(`device ${t.address.id} is listed twice`);
      this.#devices.set(t.address.id, { target: t });
    }
  }

  #now(): number {
    return this.#opts.now?.() ?? Date.now();
  }

  /** The devices this service backs up. */
  get devices(): string[] {
    return [...this.#devices.keys()];
  }

  #everyMs(t: BackupTarget): number | undefined {
    return t.backup.schedule ? t.backup.schedule.everyHours * this.#hourMs : undefined;
  }

  /** How long a device may go without a successful fetch: expectEveryHours, else twice the schedule. */
  #expectMs(t: BackupTarget): number | undefined {
    if (t.backup.expectEveryHours !== undefined) return t.backup.expectEveryHours * this.#hourMs;
    const every = this.#everyMs(t);
    return every === undefined ? undefined : 2 * every;
  }

  start(): void {
    this.#stopped = false;
    this.#abort = new AbortController();
    this.#startedAt = this.#now();
    // About one first run per 5 s on average: one device is backed up within seconds of the
    // start, fifty are spread over four minutes instead of hitting the network at once.
    const scheduled = [...this.#devices.values()].filter((s) => s.target.backup.schedule).length;
    const spread = this.#opts.startSpreadMs ?? 5000 * scheduled;
    for (const [id, s] of this.#devices) {
      const every = this.#everyMs(s.target);
      if (every === undefined) continue;
      this.#schedule(id, Math.random() * Math.min(spread, every));
    }
    const expects = [...this.#devices.values()].map((s) => this.#expectMs(s.target)).filter((v): v is number => v !== undefined);
    if (expects.length > 0) {
      // Often enough to notice within a quarter of the shortest expectation, and at most once a minute.
      const tick = Math.max(10, Math.min(60_000, Math.min(...expects) / 4));
      this.#checkStale();
      this.#staleTimer = setInterval(() => this.#checkStale(), tick);
    }
    this.#opts.log.info({ devices: this.devices.length, scheduled }, 'backups started');
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#staleTimer);
    this.#staleTimer = undefined;
    for (const s of this.#devices.values()) {
      clearTimeout(s.timer);
      s.timer = undefined;
    }
    this.#abort.abort(new Error('the agent is stopping'));
    await Promise.all([...this.#devices.values()].flatMap((s) => (s.running ? [s.running] : [])));
  }

  #schedule(id: string, delayMs: number): void {
    const s = this.#devices.get(id);
    if (s === undefined || this.#stopped) return;
    clearTimeout(s.timer);
    s.timer = setTimeout(() => {
      s.timer = undefined;
      void this.runNow(id).finally(() => {
        const every = this.#everyMs(s.target);
        // +-10 %: devices started together drift apart instead of firing in step forever.
        if (every !== undefined) this.#schedule(id, every * (0.9 + 0.2 * Math.random()));
      });
    }, delayMs);
  }

  /**
   * Runs a device's backup now; a run already going for the device is joined, not doubled.
   * Resolves (never rejects) with what happened; failures also raise backup.failed.
   */
  runNow(device: string): Promise<RunResult> {
    const s = this.#devices.get(device);
    if (s === undefined) return Promise.reject(new RangeError(`device ${device} has no backup: block`));
    if (s.running) return s.running;
    const run = this.#run(s).finally(() => {
      s.running = undefined;
    });
    s.running = run;
    return run;
  }

  async #run(s: DeviceState): Promise<RunResult> {
    const t = s.target;
    const id = t.address.id;
    const driverType = t.backup.driver.type;
    try {
      const driver = createDeviceDriver(t.address, t.backup, { baseDir: t.baseDir }, {
        ...this.#opts.retry,
        onRetry: (err, attempt, delayMs) => this.#opts.log.warn({ device: id, attempt, delayMs: Math.round(delayMs), err: err.message }, 'backup try failed; trying again'),
      });
      const fetched = await driver.fetch(this.#abort.signal);
      const o = await storeAndCompare(this.#opts.store, id, driver.type, fetched);
      s.staleRaisedAt = undefined;
      this.#opts.log.info({ device: id, version: o.manifest.version, unchanged: o.unchanged, pruned: o.pruned.removed.length }, o.unchanged ? 'backup unchanged' : 'backup stored');
      if (o.baselineSet) this.#opts.log.info({ device: id, version: o.manifest.version }, `no approved baseline for ${id}: version ${o.manifest.version} is its baseline now (wardgate backup approve to choose another)`);
      // Drift is news when a new version appears; the same drifted bytes again are not.
      if (!o.unchanged && (o.drift !== undefined || o.driftError !== undefined)) {
        this.#opts.event('warning', 'config.drift', driftMessage(id, o), {
          device: id,
          dedupKey: `config.drift:${id}`,
          data: {
            version: o.manifest.version,
            baseline: o.baseline.version,
            format: o.manifest.format,
            ...(o.drift
              ? {
                  compared: o.drift.compared,
                  total: o.drift.total,
                  before: o.drift.before,
                  after: o.drift.after,
                  ...(o.drift.registers ? { registers: o.drift.registers, ranges: o.drift.ranges } : {}),
                  ...(o.drift.lines ? { lines: o.drift.lines } : {}),
                }
              : { error: o.driftError }),
          },
        });
      }
      return { device: id, ok: true, outcome: o };
    } catch (raw) {
      const err = raw instanceof Error ? raw : new Error(String(raw));
      if (this.#stopped && this.#abort.signal.aborted) return { device: id, ok: false, error: err };
      const code = err instanceof BackupDriverError ? err.code : ((err as { code?: unknown }).code as string | undefined);
      this.#opts.event('warning', 'backup.failed', `backup of ${id} (${driverType}) failed: ${err.message}`, {
        device: id,
        dedupKey: `backup.failed:${id}`,
        data: { driver: driverType, error: err.message, ...(code !== undefined ? { code } : {}) },
      });
      this.#checkStale(id);
      return { device: id, ok: false, error: err };
    }
  }

  /** Raises backup.stale for each device (or the one given) overdue, at most once per expected interval. */
  #checkStale(only?: string): void {
    if (this.#stopped) return;
    const now = this.#now();
    for (const [id, s] of this.#devices) {
      if (only !== undefined && id !== only) continue;
      const expect = this.#expectMs(s.target);
      if (expect === undefined) continue;
      let last: string | undefined;
      try {
        last = this.#opts.store.lastChecked(id)?.time;
      } catch (err) {
        this.#opts.log.error({ device: id, err: (err as Error).message }, 'cannot read when the last backup succeeded');
        continue;
      }
      // Never backed up: counted from the agent's start (nothing older is known).
      const since = last !== undefined ? Date.parse(last) : this.#startedAt;
      if (now - since <= expect) continue;
      if (s.staleRaisedAt !== undefined && now - s.staleRaisedAt < expect) continue;
      s.staleRaisedAt = now;
      const hours = (n: number) => `${Math.round((n / this.#hourMs) * 10) / 10} h`;
      this.#opts.event('warning', 'backup.stale', last !== undefined ? `no successful backup of ${id} for ${hours(now - since)} (last ${last}; expected every ${hours(expect)})` : `no successful backup of ${id} yet (expected every ${hours(expect)})`, {
        device: id,
        dedupKey: `backup.stale:${id}`,
        data: { lastSuccess: last ?? null, expectEveryHours: expect / this.#hourMs },
      });
    }
  }
}
