// Flow records for what the ruleset dropped, from its NFLOG group.
//
// A dropped connection attempt is a few packets (a SYN and its retransmissions, a UDP datagram
// sent again): NFLOG reports each, conntrack none. Packets with the same device, direction, peer,
// protocol, source and destination port (or ICMP type) are one attempt: the first opens a record,
// the others add to it, and the record is written once the attempt has been quiet for `idleMs`
// (TCP's SYN retransmissions come 1, 2, 4 s apart), or has lasted `maxMs`. A scan of a thousand
// ports is a thousand records in the log (bounded by the rotation) and a handful of events (the
// detector's work, not this one's).
import type { Direction, Model } from '../policy/model.js';
import { appOf, type FlowRecord } from './flows.js';
import type { NflogEvent } from './nflog.js';

export interface DeniedOptions {
  /** A record is written once no packet of it came for this long. */
  idleMs?: number;
  /** ...or once it has been open this long. */
  maxMs?: number;
  /** Most attempts open at once; beyond it the oldest is written early. */
  maxOpen?: number;
}

interface Open {
  record: FlowRecord;
  first: number;
  last: number;
}

/** The verdicts of NFLOG prefixes that mean "dropped". */
const DROPPED = new Set(['deny', 'failclosed']);

export class DeniedAggregator {
  private readonly open = new Map<string, Open>();
  private readonly devices = new Set<string>();
  private readonly groups: { name: string; match: (peer: string) => boolean }[] = [];
  private readonly idleMs: number;
  private readonly maxMs: number;
  private readonly maxOpen: number;
  /** Attempts written early because too many were open. */
  evicted = 0;

  constructor(model: Pick<Model, 'devices'>, opts: DeniedOptions = {}) {
    this.idleMs = opts.idleMs ?? 10_000;
    this.maxMs = opts.maxMs ?? 60_000;
    this.maxOpen = opts.maxOpen ?? 16_384;
    for (const d of model.devices) this.devices.add(d.id);
  }

  /** True for the NFLOG events this aggregator records (deny, failclosed). */
  static records(ev: Pick<NflogEvent, 'verdict'>): boolean {
    return DROPPED.has(ev.verdict);
  }

  /**
   * Adds a dropped packet. Returns the records it pushed out (when too many are open), which the
   * caller writes like those of flush().
   */
  add(ev: NflogEvent, groupOf: (peer: string) => string | undefined): FlowRecord[] {
    if (!DeniedAggregator.records(ev)) return [];
    const direction: Direction = ev.dir === 'in' ? 'inbound' : 'outbound';
    const peer = ev.dir === 'in' ? ev.src : ev.dst;
    const hasPorts = ev.dport !== undefined;
    const key = `${ev.device}|${ev.dir}|${peer}|${ev.proto}|${hasPorts ? `${ev.sport}>${ev.dport}` : `t${ev.icmpType ?? ''}`}`;
    const hit = this.open.get(key);
    if (hit) {
      hit.last = ev.time;
      hit.record.packets++;
      hit.record.bytes += ev.length;
      const side = direction === 'inbound' ? hit.record.toDevice : hit.record.fromDevice;
      side.packets++;
      side.bytes += ev.length;
      return [];
    }
    const out: FlowRecord[] = [];
    if (this.open.size >= this.maxOpen) {
      const oldest = this.open.keys().next();
      if (!oldest.done) {
        out.push(this.finish(this.open.get(oldest.value)!));
        this.open.delete(oldest.value);
        this.evicted++;
      }
    }
    const group = this.devices.has(ev.device) ? groupOf(peer) : undefined;
    const one = () => ({ packets: 1, bytes: ev.length });
    const none = () => ({ packets: 0, bytes: 0 });
    this.open.set(key, {
      first: ev.time,
      last: ev.time,
      record: {
        time: '',
        start: new Date(ev.time).toISOString(),
        device: ev.device,
        peer,
        ...(group !== undefined ? { peerGroup: group } : {}),
        direction,
        proto: ev.proto,
        sport: hasPorts ? (ev.sport ?? null) : null,
        dport: hasPorts ? (ev.dport ?? null) : null,
        packets: 1,
        bytes: ev.length,
        toDevice: direction === 'inbound' ? one() : none(),
        fromDevice: direction === 'inbound' ? none() : one(),
        accounted: true,
        durationMs: null,
        app: hasPorts ? appOf(ev.dport) : null,
        verdict: 'denied',
        entry: null,
      },
    });
    return out;
  }

  /** The attempts that are over at `now` (all of them with `all`), removed and returned. */
  flush(now: number, all = false): FlowRecord[] {
    const out: FlowRecord[] = [];
    for (const [key, o] of this.open) {
      if (all || now - o.last >= this.idleMs || now - o.first >= this.maxMs) {
        out.push(this.finish(o));
        this.open.delete(key);
      }
    }
    return out;
  }

  get size(): number {
    return this.open.size;
  }

  private finish(o: Open): FlowRecord {
    o.record.time = new Date(o.last).toISOString();
    o.record.durationMs = Math.round(o.last - o.first);
    return o.record;
  }
}
