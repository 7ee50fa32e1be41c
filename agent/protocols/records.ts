// What keeps a storm from writing over the application log. Writes that passed, and each
// connection's or association's summary, are always kept: they are the record of what reached
// the device. Denials and malformed frames are kept up to a number per minute for each device,
// peer and kind; the rest are counted into one records.suppressed line per key at the minute's
// end. Without it, one run of 140,000 malformed frames rotated the loop's writes out of the log
// (test/protocols/load-netns.test.ts). It runs in the proxy process, so the suppressed records
// do not cross to the agent either.
import type { ProtocolRecord } from './types.js';

type Rec = ProtocolRecord & { device: string };

/** Kinds never held back. */
const KEPT = /\.(write|session|association)$/;

export class RecordLimiter {
  private start: number;
  private counts = new Map<string, { n: number; device: string; peer: unknown; kind: string }>();
  readonly stats = { kept: 0, suppressed: 0 };

  constructor(
    private readonly perMinute: number,
    private readonly emit: (r: Rec) => void,
    private readonly now: () => number = Date.now,
  ) {
    this.start = now();
  }

  push(r: Rec): void {
    this.tick();
    if (!KEPT.test(r.kind)) {
      const key = `${r.device}\0${String(r.peer)}\0${r.kind}`;
      let c = this.counts.get(key);
      if (!c) {
        // Bounded: beyond this many keys a minute, new keys share one.
        const k = this.counts.size >= 4096 ? `${r.device}\0*\0${r.kind}` : key;
        c = this.counts.get(k) ?? { n: 0, device: r.device, peer: k === key ? r.peer : '*', kind: r.kind };
        this.counts.set(k, c);
      }
      c.n++;
      if (c.n > this.perMinute) {
        this.stats.suppressed++;
        return;
      }
    }
    this.stats.kept++;
    this.emit(r);
  }

  /** Ends the minute when it is over: one records.suppressed line per key that went over. */
  tick(): void {
    const now = this.now();
    if (now - this.start < 60_000) return;
    this.start = now;
    const counts = this.counts;
    this.counts = new Map();
    for (const c of counts.values()) {
      if (c.n <= this.perMinute) continue;
      this.emit({ kind: 'records.suppressed', device: c.device, peer: c.peer, of: c.kind, count: c.n - this.perMinute, perMinute: this.perMinute });
    }
  }
}
