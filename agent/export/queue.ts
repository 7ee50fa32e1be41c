// The syslog sink's bounded memory queue. Messages leave in the order they came; when it is
// full, the oldest message of the lowest severity present (the incoming one included) is
// dropped, so that a flood of info events cannot push out a critical one.
import type { Severity } from '../mqtt/topics.js';

export const SEVERITY_RANK: Record<Severity, number> = { info: 0, warning: 1, critical: 2 };
const BY_RANK: readonly Severity[] = ['info', 'warning', 'critical'];

/** A FIFO with O(1) push and shift (an array with a moving head, compacted now and then). */
class Fifo<T> {
  private items: T[] = [];
  private head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(item: T): void {
    this.items.push(item);
  }

  peek(): T | undefined {
    return this.items[this.head];
  }

  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const item = this.items[this.head];
    this.items[this.head++] = undefined as T; // let the message be collected
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }
}

export interface Queued {
  severity: Severity;
  bytes: Buffer;
}

interface Entry extends Queued {
  seq: number;
}

/** One FIFO per severity; the next message out is the lowest sequence number among their heads. */
export class SeverityQueue {
  private readonly fifos: Record<Severity, Fifo<Entry>> = { info: new Fifo(), warning: new Fifo(), critical: new Fifo() };
  private seq = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`queue capacity must be a positive integer, not ${capacity}`);
  }

  get length(): number {
    return this.fifos.info.length + this.fifos.warning.length + this.fifos.critical.length;
  }

  /** Queues a message; returns the severity of the message dropped to make room, if one was. */
  push(item: Queued): Severity | undefined {
    if (this.length < this.capacity) {
      this.fifos[item.severity].push({ ...item, seq: this.seq++ });
      return undefined;
    }
    for (const severity of BY_RANK) {
      // Nothing queued is lower than the incoming message, and nothing of its severity is queued:
      // the incoming one is the oldest of the lowest, so it is the one dropped.
      if (severity === item.severity && this.fifos[severity].length === 0) return severity;
      if (this.fifos[severity].length > 0) {
        this.fifos[severity].shift();
        this.fifos[item.severity].push({ ...item, seq: this.seq++ });
        return severity;
      }
    }
    return item.severity; // unreachable: a full queue holds something
  }

  private next(): Fifo<Entry> | undefined {
    let best: Fifo<Entry> | undefined;
    for (const severity of BY_RANK) {
      const head = this.fifos[severity].peek();
      const current = best?.peek();
      if (head !== undefined && (current === undefined || head.seq < current.seq)) best = this.fifos[severity];
    }
    return best;
  }

  peek(): Queued | undefined {
    return this.next()?.peek();
  }

  shift(): Queued | undefined {
    return this.next()?.shift();
  }
}
