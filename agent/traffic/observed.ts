// Observed traffic: the flow log's records (read.ts reads them) aggregated per device into
// (direction, peer, protocol, responder port) with counts and first and last seen. What learning
// proposes and what `policy diff --observed` compares.
import type { Direction } from '../policy/model.js';
import { formatAddress, parseAddress, type Family } from '../policy/net.js';
import type { Verdict } from './flows.js';
import { readFlowLog, type FlowLine, type ReadStats } from './read.js';

/** One kind of traffic of a device, summed over the flow records that share its key. */
export interface ObservedFlow {
  direction: Direction;
  /** The peer's address, in canonical form. */
  peer: string;
  family: Family;
  /** As recorded: tcp, udp, icmp, icmpv6, or another protocol's name or number. */
  proto: string;
  /** The responder's port (the device's for inbound, the peer's for outbound); null without ports. */
  port: number | null;
  flows: number;
  packets: number;
  bytes: number;
  /** The earliest start (or end, when the start is unknown) of its flows, ISO 8601. */
  firstSeen: string;
  /** The latest end of its flows, ISO 8601. */
  lastSeen: string;
  /** Flows by the verdict recorded at the time. */
  verdicts: Partial<Record<Verdict, number>>;
}

export interface DeviceObservation {
  device: string;
  flows: number;
  firstSeen: string;
  lastSeen: string;
  traffic: ObservedFlow[];
}

export interface Observation {
  /** What the reader met: the files read, their flow records and the lines it skipped. */
  read: ReadStats;
  /** Flow records counted (those that passed the device and time filters). */
  records: number;
  devices: Map<string, DeviceObservation>;
}

export interface ObservedOptions {
  /** Only this device's records. */
  device?: string;
  /** Only records of connections that ended at or after this time. */
  since?: Date;
}

interface Acc {
  flow: Omit<ObservedFlow, 'firstSeen' | 'lastSeen'>;
  /** The peer's address as a number, for sorting. */
  value: bigint;
  first: number;
  last: number;
}

function add(acc: Map<string, Map<string, Acc>>, f: FlowLine, time: number): void {
  let byKey = acc.get(f.device);
  if (!byKey) acc.set(f.device, (byKey = new Map<string, Acc>()));
  // The reader checked that the peer is an address.
  const addr = parseAddress(f.peer)!;
  const peer = formatAddress(addr.family, addr.value);
  const key = `${f.direction}|${peer}|${f.proto}|${f.dport ?? ''}`;
  const first = f.start === null ? time : Math.min(Date.parse(f.start), time);
  let a = byKey.get(key);
  if (!a) {
    a = { flow: { direction: f.direction, peer, family: addr.family, proto: f.proto, port: f.dport, flows: 0, packets: 0, bytes: 0, verdicts: {} }, value: addr.value, first, last: time };
    byKey.set(key, a);
  }
  a.flow.flows++;
  a.flow.packets += f.packets;
  a.flow.bytes += f.bytes;
  a.flow.verdicts[f.verdict] = (a.flow.verdicts[f.verdict] ?? 0) + 1;
  a.first = Math.min(a.first, first);
  a.last = Math.max(a.last, time);
}

/** Inbound first; then by peer (IPv4 first), protocol and port. */
function compareKeys(x: Acc, y: Acc): number {
  const a = x.flow;
  const b = y.flow;
  if (a.direction !== b.direction) return a.direction === 'inbound' ? -1 : 1;
  if (a.family !== b.family) return a.family === 'ipv4' ? -1 : 1;
  if (x.value !== y.value) return x.value < y.value ? -1 : 1;
  return a.proto.localeCompare(b.proto) || (a.port ?? -1) - (b.port ?? -1);
}

/** Reads the flow log in `dir` (readFlowLog: streamed, safe against rotation) and aggregates it per device. */
export async function readObserved(dir: string, opts: ObservedOptions = {}): Promise<Observation> {
  const since = opts.since?.getTime();
  const acc = new Map<string, Map<string, Acc>>();
  let records = 0;
  const read = await readFlowLog(dir, (f) => {
    if (opts.device !== undefined && f.device !== opts.device) return;
    const time = Date.parse(f.time);
    if (since !== undefined && time < since) return;
    records++;
    add(acc, f, time);
  });

  const devices = new Map<string, DeviceObservation>();
  for (const [device, byKey] of [...acc].sort((a, b) => a[0].localeCompare(b[0]))) {
    const all = [...byKey.values()];
    const iso = (t: number) => new Date(t).toISOString();
    devices.set(device, {
      device,
      flows: all.reduce((n, a) => n + a.flow.flows, 0),
      firstSeen: iso(all.reduce((t, a) => Math.min(t, a.first), Infinity)),
      lastSeen: iso(all.reduce((t, a) => Math.max(t, a.last), -Infinity)),
      traffic: all.sort(compareKeys).map((a) => ({ ...a.flow, firstSeen: iso(a.first), lastSeen: iso(a.last) })),
    });
  }
  return { read, records, devices };
}
