// Observed traffic: the flow log (<stateDir>/flows/flows.ndjson and its rotated files) read back
// and aggregated per device into (direction, peer, protocol, responder port) with counts and
// first and last seen. What learning proposes and what `policy diff --observed` compares.
//
// The files are streamed line by line (together they can hold 64 MiB); a line that is not a
// flow record (a torn write after a power cut, an edit by hand) is counted and skipped.
import { closeSync, createReadStream, fstatSync, openSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Direction } from '../policy/model.js';
import { formatAddress, parseAddress, type Family } from '../policy/net.js';
import type { Verdict } from './flows.js';

export const FLOW_LOG = 'flows.ndjson';

const VERDICTS: ReadonlySet<string> = new Set<Verdict>(['allowed', 'monitored', 'unmatched', 'denied']);

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
  /** The files read, newest first. */
  files: string[];
  /** Flow records counted (those that passed the device and time filters). */
  records: number;
  /** Lines that are not flow records. */
  skipped: number;
  devices: Map<string, DeviceObservation>;
}

export interface ObservedOptions {
  /** Only this device's records. */
  device?: string;
  /** Only records of connections that ended at or after this time. */
  since?: Date;
}

const UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/**
 * `--since`: an ISO 8601 time ("2025-03-01", "2025-03-01T08:00:00Z") or a duration back from
 * `now` ("90m", "24h", "7d", "2w"). Undefined when it is neither.
 */
export function parseSince(text: string, now = Date.now()): Date | undefined {
  const d = /^(\d+)([smhdw])$/.exec(text.trim());
  if (d) return new Date(now - Number(d[1]) * UNITS[d[2]!]!);
  if (!/^\d{4}-\d{2}-\d{2}/.test(text)) return undefined;
  const t = Date.parse(text);
  return Number.isFinite(t) ? new Date(t) : undefined;
}

/** The flow log's files in `dir`, newest first: flows.ndjson, flows.ndjson.1, flows.ndjson.2, … */
export function flowLogFiles(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const index = (n: string) => (n === FLOW_LOG ? 0 : Number(n.slice(FLOW_LOG.length + 1)));
  return names
    .filter((n) => n === FLOW_LOG || (n.startsWith(`${FLOW_LOG}.`) && /^\d+$/.test(n.slice(FLOW_LOG.length + 1))))
    .sort((a, b) => index(a) - index(b))
    .map((n) => join(dir, n));
}

interface Line {
  time: number;
  start: number | undefined;
  device: string;
  peer: { family: Family; value: bigint };
  direction: Direction;
  proto: string;
  port: number | null;
  packets: number;
  bytes: number;
  verdict: Verdict;
}

const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0;

/** One line of the flow log as a flow record, or undefined when it is not one. */
function parseLine(text: string): Line | undefined {
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof o !== 'object' || o === null) return undefined;
  const r = o as Record<string, unknown>;
  if (r.kind !== 'flow' || typeof r.device !== 'string' || typeof r.peer !== 'string' || typeof r.proto !== 'string') return undefined;
  if (r.direction !== 'inbound' && r.direction !== 'outbound') return undefined;
  if (typeof r.verdict !== 'string' || !VERDICTS.has(r.verdict)) return undefined;
  const time = typeof r.time === 'string' ? Date.parse(r.time) : NaN;
  if (!Number.isFinite(time)) return undefined;
  const start = typeof r.start === 'string' ? Date.parse(r.start) : NaN;
  const peer = parseAddress(r.peer);
  if (!peer) return undefined;
  const port = r.dport === null || r.dport === undefined ? null : r.dport;
  if (port !== null && !(Number.isInteger(port) && (port as number) >= 0 && (port as number) <= 65535)) return undefined;
  return {
    time,
    start: Number.isFinite(start) ? start : undefined,
    device: r.device,
    peer,
    direction: r.direction,
    proto: r.proto,
    port: port as number | null,
    packets: isCount(r.packets) ? r.packets : 0,
    bytes: isCount(r.bytes) ? r.bytes : 0,
    verdict: r.verdict as Verdict,
  };
}

interface Acc {
  flow: Omit<ObservedFlow, 'firstSeen' | 'lastSeen'>;
  /** The peer's address as a number, for sorting. */
  value: bigint;
  first: number;
  last: number;
}

function add(acc: Map<string, Map<string, Acc>>, l: Line): void {
  let byKey = acc.get(l.device);
  if (!byKey) acc.set(l.device, (byKey = new Map<string, Acc>()));
  const peer = formatAddress(l.peer.family, l.peer.value);
  const key = `${l.direction}|${peer}|${l.proto}|${l.port ?? ''}`;
  const first = Math.min(l.start ?? l.time, l.time);
  let a = byKey.get(key);
  if (!a) {
    a = { flow: { direction: l.direction, peer, family: l.peer.family, proto: l.proto, port: l.port, flows: 0, packets: 0, bytes: 0, verdicts: {} }, value: l.peer.value, first, last: l.time };
    byKey.set(key, a);
  }
  a.flow.flows++;
  a.flow.packets += l.packets;
  a.flow.bytes += l.bytes;
  a.flow.verdicts[l.verdict] = (a.flow.verdicts[l.verdict] ?? 0) + 1;
  a.first = Math.min(a.first, first);
  a.last = Math.max(a.last, l.time);
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

/**
 * Reads the flow log in `dir` and aggregates it per device. Files are opened newest first and
 * told apart by inode before any is read: a rotation while this runs renames files under us,
 * and an inode met twice is the same file under its new name (read once); what rotation drops
 * meanwhile is what the log itself gave up.
 */
export async function readObserved(dir: string, opts: ObservedOptions = {}): Promise<Observation> {
  const since = opts.since?.getTime();
  const fds: { path: string; fd: number }[] = [];
  const seen = new Set<string>();
  try {
    for (const path of flowLogFiles(dir)) {
      let fd: number;
      try {
        fd = openSync(path, 'r');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw err;
      }
      const st = fstatSync(fd);
      const id = `${st.dev}:${st.ino}`;
      if (seen.has(id)) {
        closeSync(fd);
        continue;
      }
      seen.add(id);
      fds.push({ path, fd });
    }
  } catch (err) {
    for (const { fd } of fds) closeSync(fd);
    throw err;
  }

  const acc = new Map<string, Map<string, Acc>>();
  let records = 0;
  let skipped = 0;
  let reached = 0;
  try {
    for (; reached < fds.length; reached++) {
      // The stream closes its descriptor when it ends, fails or is destroyed.
      const stream = createReadStream('', { fd: fds[reached]!.fd, encoding: 'utf8' });
      try {
        for await (const text of createInterface({ input: stream, crlfDelay: Infinity })) {
          if (text.trim() === '') continue;
          const l = parseLine(text);
          if (!l) {
            skipped++;
            continue;
          }
          if (opts.device !== undefined && l.device !== opts.device) continue;
          if (since !== undefined && l.time < since) continue;
          records++;
          add(acc, l);
        }
      } finally {
        if (!stream.closed) {
          const closed = new Promise<void>((r) => stream.once('close', () => r()));
          stream.destroy();
          await closed;
        }
      }
    }
  } finally {
    for (const { fd } of fds.slice(reached + 1)) closeSync(fd);
  }

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
  return { files: fds.map((f) => f.path), records, skipped, devices };
}
