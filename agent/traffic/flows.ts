// Flow records from conntrack events: one record per listed device that a finished connection
// involved, with the verdict of the compiled ruleset ("allowed by <entry>" or "monitored").
//
// A NEW event gives the start time (kept by conntrack id until the DESTROY); the DESTROY event
// gives the end time and, with nf_conntrack_acct, packets and bytes per direction.
//
// Denied connections are not here: in enforce mode their first packet is dropped in the forward
// chain before conntrack confirms the entry, so the kernel reports no NEW and no DESTROY for it.
// They reach the agent through the NFLOG group of the ruleset (denied.ts).
import type { APPS } from '../config/schema.js';
import type { ConntrackEvent } from './conntrack.js';
import type { Direction, Model, ResolvedDevice, ResolvedEntry } from '../policy/model.js';
import { familyOf, inRange, parseAddress, type Family } from '../policy/net.js';

/** The application protocols a record can name (the same list allow entries' `app` takes). */
export type App = (typeof APPS)[number];

/** The application protocol by the responder's port, when the allow entry names none. */
export const APP_PORTS: ReadonlyMap<number, App> = new Map([
  [104, 'DICOM'],
  [11112, 'DICOM'],
  [2575, 'HL7'],
  [502, 'Modbus'],
  [443, 'HTTPS'],
  [53, 'DNS'],
  [123, 'NTP'],
  [22, 'SSH'],
]);

export function appOf(dport: number | null | undefined): App | null {
  return dport == null ? null : (APP_PORTS.get(dport) ?? null);
}

export interface Counts {
  packets: number;
  bytes: number;
}

/**
 * - allowed: an allow entry of the device covers the connection (`entry` names it);
 * - monitored: a monitor-mode device, no entry covers it (it passed, and was logged);
 * - unmatched: an enforce-mode device, no entry covers it: the connection predates the ruleset
 *   (the established fast path let it continue), or the ruleset is not the one compiled from
 *   this model;
 * - denied: the ruleset dropped it (from the NFLOG group, not conntrack: a dropped first packet
 *   never becomes a conntrack entry). Its counts are the packets NFLOG reported, which the
 *   ruleset rate-limits (`logRate`), so they are a lower bound; `entry` is null.
 */
export type Verdict = 'allowed' | 'monitored' | 'unmatched' | 'denied';

export interface FlowRecord {
  /** When the connection ended (the DESTROY event), ISO 8601. */
  time: string;
  /** When it started (its NEW event), when the agent saw that. */
  start: string | null;
  device: string;
  peer: string;
  /** The named peer group the peer belongs to, when one does. */
  peerGroup?: string;
  /** inbound: the peer opened the connection to the device; outbound: the device opened it. */
  direction: Direction;
  proto: string;
  sport: number | null;
  dport: number | null;
  /** Both directions. */
  packets: number;
  bytes: number;
  toDevice: Counts;
  fromDevice: Counts;
  /** false when the event had no counters (nf_conntrack_acct off): the counts are then 0, not measured. */
  accounted: boolean;
  durationMs: number | null;
  app: App | null;
  verdict: Verdict;
  /** The allow entry ("ct-01/allow[0]") that covers the connection, or null. */
  entry: string | null;
  conntrackId?: number;
}

interface DeviceRef {
  device: ResolvedDevice;
  family: Family;
}

const isEcho = (ev: Pick<ConntrackEvent, 'l4' | 'orig'>) =>
  (ev.l4 === 'icmp' && ev.orig.icmpType === 8) || (ev.l4 === 'icmpv6' && ev.orig.icmpType === 128);

/**
 * The first allow entry of `device` that covers a connection, by the same match as the compiled
 * sets: direction, peer address in the entry's peers, protocol, and the responder's port in its
 * ranges (for icmp: an echo request).
 */
export function matchEntry(
  device: ResolvedDevice,
  direction: Direction,
  family: Family,
  peer: bigint,
  ev: Pick<ConntrackEvent, 'l4' | 'orig'>,
): ResolvedEntry | undefined {
  return device.entries.find((e) => {
    if (e.direction !== direction) return false;
    if (!e.peers.some((r) => inRange(r, family, peer))) return false;
    if (e.proto === 'icmp') return isEcho(ev);
    if (e.proto !== ev.l4) return false;
    const port = ev.orig.dport;
    return port !== undefined && e.ports.some(([lo, hi]) => lo <= port && port <= hi);
  });
}

export interface FlowTrackerOptions {
  /** Most connections whose start time is remembered; the oldest are forgotten first. */
  maxOpen?: number;
}

/** Turns conntrack events into flow records for the devices of a model. */
export class FlowTracker {
  private readonly byAddress = new Map<string, DeviceRef>();
  private readonly groups: { name: string; entry: ResolvedEntry }[] = [];
  private readonly starts = new Map<number, number>();
  private readonly maxOpen: number;
  /** Connections that involved no listed device. */
  ignored = 0;

  constructor(model: Pick<Model, 'devices'>, opts: FlowTrackerOptions = {}) {
    this.maxOpen = opts.maxOpen ?? 65536;
    for (const device of model.devices) {
      for (const family of ['ipv4', 'ipv6'] as const) {
        const a = device.addresses[family];
        if (a !== undefined) this.byAddress.set(`${family}:${a}`, { device, family });
      }
      // A peer that is not an address or a CIDR is a group name.
      for (const entry of device.entries) {
        if (familyOf(entry.peer.split('/')[0] ?? '') === undefined) this.groups.push({ name: entry.peer, entry });
      }
    }
  }

  /** Open connections whose start is remembered. */
  get open(): number {
    return this.starts.size;
  }

  /**
   * Lookups by the address's text as conntrack prints it. Most connections involve a few
   * addresses, and parsing them into numbers was half the tracker's time. Bounded: cleared when
   * full (a scan from random addresses must not grow it).
   */
  private readonly lookups = new Map<string, { parsed: ReturnType<typeof parseAddress>; ref: (DeviceRef & { value: bigint }) | undefined }>();

  private resolve(address: string): { parsed: ReturnType<typeof parseAddress>; ref: (DeviceRef & { value: bigint }) | undefined } {
    const cached = this.lookups.get(address);
    if (cached) return cached;
    const parsed = parseAddress(address);
    const ref = parsed ? this.byAddress.get(`${parsed.family}:${parsed.value}`) : undefined;
    const result = { parsed, ref: ref && parsed ? { ...ref, value: parsed.value } : undefined };
    if (this.lookups.size >= 4096) this.lookups.clear();
    this.lookups.set(address, result);
    return result;
  }

  private lookup(address: string): (DeviceRef & { value: bigint }) | undefined {
    return this.resolve(address).ref;
  }

  private groupOf(family: Family, value: bigint): string | undefined {
    return this.groups.find((g) => g.entry.peers.some((r) => inRange(r, family, value)))?.name;
  }

  /** The named peer group (of some allow entry) an address belongs to. */
  groupOfAddress(address: string): string | undefined {
    const parsed = parseAddress(address);
    return parsed ? this.groupOf(parsed.family, parsed.value) : undefined;
  }

  /** The listed devices a conntrack event involves (by its original tuple's addresses). */
  devicesOf(ev: Pick<ConntrackEvent, 'orig'>): string[] {
    const out: string[] = [];
    for (const a of [ev.orig.src, ev.orig.dst]) {
      const ref = this.lookup(a);
      if (ref) out.push(ref.device.id);
    }
    return out;
  }

  /** Feeds one event; returns the flow records it completes (none for NEW events). */
  handle(ev: ConntrackEvent): FlowRecord[] {
    if (ev.type === 'new') {
      if (ev.id !== undefined) {
        if (this.starts.size >= this.maxOpen) {
          const oldest = this.starts.keys().next();
          if (!oldest.done) this.starts.delete(oldest.value);
        }
        this.starts.set(ev.id, ev.timestampMs);
      }
      return [];
    }
    const started = ev.id !== undefined ? this.starts.get(ev.id) : undefined;
    if (ev.id !== undefined) this.starts.delete(ev.id);
    const startMs = started ?? (ev.deltaTime !== undefined ? ev.timestampMs - ev.deltaTime * 1000 : undefined);

    const records: FlowRecord[] = [];
    // Router mode: the reply tuple's source is the responder (before any NAT, the same as orig dst).
    const sides: [Direction, string, string][] = [
      ['inbound', ev.orig.dst, ev.orig.src],
      ['outbound', ev.orig.src, ev.orig.dst],
    ];
    for (const [direction, deviceAddr, peerAddr] of sides) {
      const ref = this.lookup(deviceAddr);
      if (!ref) continue;
      const peer = this.resolve(peerAddr).parsed;
      const peerValue = peer?.value ?? -1n;
      const entry = peer ? matchEntry(ref.device, direction, ref.family, peerValue, ev) : undefined;
      const o = { packets: ev.orig.packets ?? 0, bytes: ev.orig.bytes ?? 0 };
      const r = { packets: ev.reply.packets ?? 0, bytes: ev.reply.bytes ?? 0 };
      const group = entry && familyOf(entry.peer.split('/')[0] ?? '') === undefined ? entry.peer : peer ? this.groupOf(ref.family, peerValue) : undefined;
      const hasPorts = ev.orig.dport !== undefined;
      records.push({
        time: new Date(ev.timestampMs).toISOString(),
        start: startMs !== undefined ? new Date(startMs).toISOString() : null,
        device: ref.device.id,
        peer: peerAddr,
        ...(group !== undefined ? { peerGroup: group } : {}),
        direction,
        proto: ev.l4,
        sport: hasPorts ? (ev.orig.sport ?? null) : null,
        dport: hasPorts ? (ev.orig.dport ?? null) : null,
        packets: o.packets + r.packets,
        bytes: o.bytes + r.bytes,
        // The original direction flows from the initiator.
        toDevice: direction === 'inbound' ? o : r,
        fromDevice: direction === 'inbound' ? r : o,
        accounted: ev.orig.bytes !== undefined,
        durationMs: startMs !== undefined ? Math.max(0, Math.round(ev.timestampMs - startMs)) : null,
        // The entry's own `app` (HL7 on 2576) before the port's well-known protocol.
        app: entry?.app ?? (hasPorts ? appOf(ev.orig.dport) : null),
        verdict: entry ? 'allowed' : ref.device.mode === 'monitor' ? 'monitored' : 'unmatched',
        entry: entry?.id ?? null,
        ...(ev.id !== undefined ? { conntrackId: ev.id } : {}),
      });
    }
    if (records.length === 0) this.ignored++;
    return records;
  }
}
