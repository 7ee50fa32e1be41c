// Keeps a storm from becoming a storm of events. An event with the same dedup key is raised at
// most once per window; the repeats are counted and reported with the next one. Across keys, at
// most maxPerMinute are raised; the rest are counted per kind into one "<summaryKind>" event a
// minute. Used by the detections and by the inline proxies.
import type { Severity } from '../mqtt/topics.js';

export interface LimitedEvent {
  severity: Severity;
  kind: string;
  dedupKey: string;
  message: string;
  device?: string;
  data: Record<string, unknown>;
}

export interface EventLimiterOptions {
  dedupWindowSeconds: number;
  maxPerMinute: number;
  /** The kind of the summary of what a full minute held back, e.g. detections.suppressed. */
  summaryKind: string;
  /** "detection event(s)", "proxy event(s)": how the summary names what it counts. */
  noun: string;
  emit: (e: LimitedEvent) => void;
  now?: () => number;
  /** Dedup keys remembered; the oldest are forgotten first. */
  maxKeys?: number;
}

export class EventLimiter {
  private readonly now: () => number;
  /** Dedup key -> when it was last raised and how many repeats were held back since. */
  private readonly keys = new Map<string, { at: number; repeats: number }>();
  private minute: { start: number; raised: number; dropped: Map<string, number> };
  readonly stats = { raised: 0, deduplicated: 0, suppressed: 0 };

  constructor(private readonly opts: EventLimiterOptions) {
    this.now = opts.now ?? Date.now;
    this.minute = { start: this.now(), raised: 0, dropped: new Map() };
  }

  raise(e: LimitedEvent): void {
    const now = this.now();
    const k = this.keys.get(e.dedupKey);
    if (k && now - k.at < this.opts.dedupWindowSeconds * 1000) {
      k.repeats++;
      this.stats.deduplicated++;
      return;
    }
    this.tick();
    if (this.minute.raised >= this.opts.maxPerMinute) {
      this.minute.dropped.set(e.kind, (this.minute.dropped.get(e.kind) ?? 0) + 1);
      this.stats.suppressed++;
      return;
    }
    this.minute.raised++;
    if (this.keys.size >= (this.opts.maxKeys ?? 8192) && !k) {
      const oldest = this.keys.keys().next();
      if (!oldest.done) this.keys.delete(oldest.value);
    }
    this.keys.delete(e.dedupKey);
    this.keys.set(e.dedupKey, { at: now, repeats: 0 });
    this.stats.raised++;
    this.opts.emit(k && k.repeats > 0 ? { ...e, data: { ...e.data, repeatsSinceLast: k.repeats } } : e);
  }

  /** Turns the minute when it is over, raising the summary of what it held back. Call every few seconds. */
  tick(): void {
    const now = this.now();
    if (now - this.minute.start < 60_000) return;
    const dropped = this.minute.dropped;
    this.minute = { start: now, raised: 0, dropped: new Map() };
    if (dropped.size === 0) return;
    const total = [...dropped.values()].reduce((a, b) => a + b, 0);
    this.stats.raised++;
    this.opts.emit({
      severity: 'warning',
      kind: this.opts.summaryKind,
      dedupKey: this.opts.summaryKind,
      message: `${total} ${this.opts.noun} held back in the last minute (more than ${this.opts.maxPerMinute} a minute)`,
      data: { byKind: Object.fromEntries(dropped), total },
    });
  }
}
