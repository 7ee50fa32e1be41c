// Learning: a proposed allow-list for one device from its observed traffic, written as the
// device's policy file with the allow list replaced, ready for a person to read and approve.
//
// The rules (docs/learning.md):
// - a peer inside a peer group of the policy files becomes that group (the smallest one, by its
//   addresses of the peer's family; ties by name); any other peer stays an address;
// - only the responder's port counts, as in the compiler: an inbound flow's port is the device's
//   service port, an outbound flow's the peer's; the initiator's (ephemeral) port never appears;
// - ports of one (direction, peer, protocol): more than MANY_HIGH_PORTS distinct ports from
//   HIGH_PORT up are folded into one range, lowest to highest of them (dynamically assigned
//   service ports: passive FTP, RPC, DICOM on negotiated ports); then runs of consecutive ports
//   become "low-high" ranges, which changes nothing that is allowed;
// - icmp and icmpv6 flows become one `icmp` entry per direction and peer (echo, no ports);
// - denied flows are not proposed: their first packet was dropped, so they are attempts, not
//   working traffic (`policy diff --observed` lists them for a person to decide); nor is traffic
//   the policy format cannot express (other protocols, tcp or udp without a port);
// - an entry keeps the `comment` of an existing entry with the same direction, peer and protocol.
import { readFileSync } from 'node:fs';
import { Document, isMap, isNode, isScalar, isSeq, parseDocument, Scalar, YAMLMap, YAMLSeq, type Pair, type Range } from 'yaml';
import type { LoadedConfig, LoadedPolicy } from '../config/load.js';
import type { AllowEntry, PortSpec } from '../config/schema.js';
import type { Direction, Proto, ResolvedDevice } from '../policy/model.js';
import { parseAddress, parsePrefix, type AddrRange, type Family } from '../policy/net.js';
import type { Verdict } from './flows.js';
import type { DeviceObservation, ObservedFlow } from './observed.js';

/** Ports from here up are not well-known (IANA system) ports. */
export const HIGH_PORT = 1024;
/** More distinct high ports than this, for one direction, peer and protocol, fold into one range. */
export const MANY_HIGH_PORTS = 8;

export interface PeerGroup {
  name: string;
  members: AddrRange[];
}

/** The named peer groups of the policy files. */
export function groupsOf(loaded: LoadedConfig): PeerGroup[] {
  return loaded.policies.flatMap((p) =>
    Object.entries(p.policy.groups).map(([name, g]) => ({
      name,
      members: g.members.flatMap((m) => {
        const r = parsePrefix(m);
        return r.ok ? [r.range] : [];
      }),
    })),
  );
}

function size(g: PeerGroup, family: Family): bigint {
  return g.members.reduce((n, r) => (r.family === family ? n + (r.hi - r.lo + 1n) : n), 0n);
}

/** The smallest group holding `address`, or undefined. */
export function groupFor(groups: readonly PeerGroup[], address: string): string | undefined {
  const a = parseAddress(address);
  if (!a) return undefined;
  let best: { name: string; size: bigint } | undefined;
  for (const g of groups) {
    if (!g.members.some((r) => r.family === a.family && r.lo <= a.value && a.value <= r.hi)) continue;
    const s = size(g, a.family);
    if (!best || s < best.size || (s === best.size && g.name < best.name)) best = { name: g.name, size: s };
  }
  return best?.name;
}

export interface FoldedPorts {
  specs: PortSpec[];
  /** The high ports folded into one range, when there were many. */
  widened?: { lo: number; hi: number; ports: number };
}

/** The ports of one entry, folded by the rules above. */
export function foldPorts(ports: Iterable<number>): FoldedPorts {
  const sorted = [...new Set(ports)].sort((a, b) => a - b);
  const high = sorted.filter((p) => p >= HIGH_PORT);
  let ranges: [number, number][] = sorted.map((p) => [p, p]);
  let widened: FoldedPorts['widened'];
  if (high.length > MANY_HIGH_PORTS) {
    const lo = high[0]!;
    const hi = high[high.length - 1]!;
    widened = { lo, hi, ports: high.length };
    ranges = [...sorted.filter((p) => p < HIGH_PORT).map((p): [number, number] => [p, p]), [lo, hi]];
  }
  const merged: [number, number][] = [];
  for (const [lo, hi] of ranges) {
    const last = merged[merged.length - 1];
    if (last && lo <= last[1] + 1) last[1] = Math.max(last[1], hi);
    else merged.push([lo, hi]);
  }
  return { specs: merged.map(([lo, hi]) => (lo === hi ? lo : `${lo}-${hi}`)), ...(widened ? { widened } : {}) };
}

export interface ProposedEntry {
  direction: Direction;
  /** A group name or an address. */
  peer: string;
  proto: Proto;
  /** Empty for icmp. */
  ports: PortSpec[];
  widened?: FoldedPorts['widened'];
  flows: number;
  firstSeen: string;
  lastSeen: string;
  verdicts: Partial<Record<Verdict, number>>;
  /** Flows per responder port, lowest port first (empty for icmp). */
  byPort: [number, number][];
}

export interface Proposal {
  device: string;
  entries: ProposedEntry[];
  /** Flows the entries come from. */
  flows: number;
  /** Observed traffic that is not proposed, and why. */
  left: { flow: ObservedFlow; why: string }[];
}

const PROTO_ORDER: Record<Proto, number> = { tcp: 0, udp: 1, icmp: 2 };

/** The policy's protocol for observed traffic, or why the policy format cannot express it. */
function policyProto(f: ObservedFlow): { proto: Proto } | { why: string } {
  if (f.proto === 'icmp' || f.proto === 'icmpv6') return { proto: 'icmp' };
  if (f.proto !== 'tcp' && f.proto !== 'udp') return { why: `the policy format has no protocol "${f.proto}"` };
  if (f.port === null || f.port < 1) return { why: `${f.proto} without a port` };
  return { proto: f.proto };
}

/** The allow-list that covers a device's observed traffic, by the rules above. */
export function propose(device: Pick<ResolvedDevice, 'id'>, observed: DeviceObservation, groups: readonly PeerGroup[]): Proposal {
  const byEntry = new Map<string, { entry: Omit<ProposedEntry, 'ports' | 'byPort' | 'firstSeen' | 'lastSeen'>; first: string; last: string; ports: Map<number, number> }>();
  const left: Proposal['left'] = [];
  let flows = 0;
  for (const f of observed.traffic) {
    const denied = f.verdicts.denied ?? 0;
    if (denied > 0) left.push({ flow: { ...f, flows: denied, verdicts: { denied } }, why: 'denied by the ruleset' });
    const n = f.flows - denied;
    if (n === 0) continue;
    const p = policyProto(f);
    if ('why' in p) {
      const verdicts = { ...f.verdicts };
      delete verdicts.denied;
      left.push({ flow: { ...f, flows: n, verdicts }, why: p.why });
      continue;
    }
    const proto = p.proto;
    flows += n;
    const peer = groupFor(groups, f.peer) ?? f.peer;
    const key = `${f.direction}|${peer}|${proto}`;
    let e = byEntry.get(key);
    if (!e) byEntry.set(key, (e = { entry: { direction: f.direction, peer, proto, flows: 0, verdicts: {} }, first: f.firstSeen, last: f.lastSeen, ports: new Map() }));
    e.entry.flows += n;
    for (const [v, c] of Object.entries(f.verdicts) as [Verdict, number][]) {
      if (v !== 'denied') e.entry.verdicts[v] = (e.entry.verdicts[v] ?? 0) + c;
    }
    if (f.firstSeen < e.first) e.first = f.firstSeen;
    if (f.lastSeen > e.last) e.last = f.lastSeen;
    if (proto !== 'icmp' && f.port !== null) e.ports.set(f.port, (e.ports.get(f.port) ?? 0) + n);
  }

  const entries = [...byEntry.values()].map(({ entry, first, last, ports }): ProposedEntry => {
    const folded = foldPorts(ports.keys());
    return {
      ...entry,
      ports: entry.proto === 'icmp' ? [] : folded.specs,
      ...(folded.widened ? { widened: folded.widened } : {}),
      firstSeen: first,
      lastSeen: last,
      byPort: [...ports].sort((a, b) => a[0] - b[0]),
    };
  });
  entries.sort(
    (a, b) =>
      a.direction.localeCompare(b.direction) ||
      comparePeers(a.peer, b.peer) ||
      PROTO_ORDER[a.proto] - PROTO_ORDER[b.proto],
  );
  return { device: device.id, entries, flows, left };
}

/** Groups by name first, then addresses: IPv4 before IPv6, by value. */
function comparePeers(a: string, b: string): number {
  const pa = parseAddress(a);
  const pb = parseAddress(b);
  if (!pa || !pb) return pa ? 1 : pb ? -1 : a.localeCompare(b);
  if (pa.family !== pb.family) return pa.family === 'ipv4' ? -1 : 1;
  return pa.value < pb.value ? -1 : pa.value > pb.value ? 1 : 0;
}

/** What the comment above an entry says: how many flows, when, and per port when there are several. */
export function entryComment(e: ProposedEntry): string {
  const verdicts = Object.entries(e.verdicts)
    .map(([v, n]) => `${v} ${n}`)
    .join(', ');
  let text = ` ${e.flows} flow${e.flows === 1 ? '' : 's'} (${verdicts}), first seen ${e.firstSeen}, last seen ${e.lastSeen}`;
  if (e.byPort.length > 1 && e.byPort.length <= 12) text += `; by port: ${e.byPort.map(([p, n]) => `${p}: ${n}`).join(', ')}`;
  if (e.widened) text += `; ${e.widened.ports} ports from ${e.widened.lo} to ${e.widened.hi} folded into one range`;
  return text;
}

export class LearnError extends Error {
  readonly code = 'E_LEARN';
}

/** The policy file that holds `deviceId`, and the device's index in it. */
export function fileOf(loaded: LoadedConfig, deviceId: string): { policy: LoadedPolicy; index: number } | undefined {
  for (const policy of loaded.policies) {
    const index = policy.policy.devices.findIndex((d) => d.id === deviceId);
    if (index !== -1) return { policy, index };
  }
  return undefined;
}

export interface RenderMeta {
  generatedAt: Date;
  since?: Date;
  /** How the flows were read, for the header comment ("the flow log of <stateDir>"). */
  from: string;
  /** The device file's text as loaded; read from its path when not given. */
  text?: string;
}

/** The proposal as an `allow` pair: a header comment on the key, then one commented entry each. */
function allowPair(proposal: Proposal, meta: RenderMeta, existing: readonly AllowEntry[]): Pair {
  const doc = new Document();
  const seq = new YAMLSeq();
  for (const e of proposal.entries) {
    // What a person wrote about the same peer and protocol still describes it.
    const comment = existing.find((x) => x.comment !== undefined && x.direction === e.direction && x.peer === e.peer && x.proto === e.proto)?.comment;
    const node = doc.createNode({
      peer: e.peer,
      direction: e.direction,
      proto: e.proto,
      ...(e.proto === 'icmp' ? {} : { ports: e.ports }),
      ...(comment !== undefined ? { comment } : {}),
    });
    const peer = node.get('peer', true);
    // An IPv6 address reads better quoted, as in the example policies (it is a string either way).
    if (isScalar(peer) && e.peer.includes(':')) peer.type = Scalar.QUOTE_DOUBLE;
    const ports = node.get('ports', true);
    if (isSeq(ports)) ports.flow = true;
    node.commentBefore = entryComment(e);
    seq.items.push(node);
  }
  if (seq.items.length === 0) seq.flow = true;
  const first = proposal.entries.reduce((t, e) => (e.firstSeen < t ? e.firstSeen : t), '\uffff');
  const last = proposal.entries.reduce((t, e) => (e.lastSeen > t ? e.lastSeen : t), '');
  const key = doc.createNode('allow');
  key.commentBefore = [
    ` Proposed by wardgate policy learn at ${meta.generatedAt.toISOString()} from ${proposal.flows} flow${proposal.flows === 1 ? '' : 's'}`,
    ` in ${meta.from}${meta.since ? ` since ${meta.since.toISOString()}` : ''}${proposal.entries.length > 0 ? `, seen ${first} to ${last}` : ''}.`,
    ...(proposal.left.length > 0 ? [` Not proposed: ${leftSummary(proposal)} (see docs/learning.md).`] : []),
    ' Review every entry before setting mode: enforce.',
  ].join('\n');
  return doc.createPair(key, seq);
}

/** The pair as text at the top level, indented by two spaces per level. */
function blockOf(pair: Pair): string {
  const doc = new Document(new YAMLMap());
  (doc.contents as YAMLMap).items.push(pair);
  return doc.toString({ lineWidth: 0, flowCollectionPadding: false }).replace(/\n+$/, '');
}

/**
 * Where a value's text ends: before the line break that closes a block collection, or at the
 * end of the line of a flow collection or scalar when only a comment follows it there (that
 * comment described the old value).
 */
function valueEnd(text: string, node: { range?: Range | null } | null | undefined): number | undefined {
  const end = node?.range?.[1];
  if (end === undefined) return undefined;
  if (end > 0 && text[end - 1] === '\n') return end - 1;
  const eol = text.indexOf('\n', end);
  const stop = eol === -1 ? text.length : eol;
  return /^[ \t]*(#.*)?$/.test(text.slice(end, stop)) ? stop : end;
}

/**
 * The device file's text with only the device's allow list replaced (or added after its last
 * field): every other byte stays as the person wrote it, so a review diff shows the proposal
 * and nothing else. Undefined for a layout it does not handle (a device written as a flow
 * mapping, an `allow` key on the line of the item's dash).
 */
function splice(text: string, device: YAMLMap, block: string): string | undefined {
  if (device.flow) return undefined;
  const lineStart = (pos: number) => text.lastIndexOf('\n', pos - 1) + 1;
  const indented = (col: number) =>
    block
      .split('\n')
      .map((l) => (l === '' ? l : `${' '.repeat(col)}${l}`))
      .join('\n');
  const pair = device.items.find((p) => isScalar(p.key) && p.key.value === 'allow');
  if (pair) {
    const keyStart = isScalar(pair.key) ? pair.key.range?.[0] : undefined;
    if (keyStart === undefined) return undefined;
    const end = isNode(pair.value) ? valueEnd(text, pair.value) : (pair.key as Scalar).range?.[1];
    const start = lineStart(keyStart);
    if (end === undefined || text.slice(start, keyStart).trim() !== '') return undefined;
    return text.slice(0, start) + indented(keyStart - start) + text.slice(end);
  }
  const firstKey = device.items[0]?.key;
  const lastPair = device.items[device.items.length - 1];
  const firstStart = isNode(firstKey) ? firstKey.range?.[0] : undefined;
  if (firstStart === undefined || !lastPair) return undefined;
  const end = isNode(lastPair.value) ? valueEnd(text, lastPair.value) : isNode(lastPair.key) ? valueEnd(text, lastPair.key) : undefined;
  if (end === undefined) return undefined;
  return `${text.slice(0, end)}\n${indented(firstStart - lineStart(firstStart))}${text.slice(end)}`;
}

/**
 * The device's policy file with the device's allow list replaced by the proposal: comments,
 * groups and any other device in that file are kept, so the result goes in place of the file.
 */
export function renderProposal(loaded: LoadedConfig, proposal: Proposal, meta: RenderMeta): { path: string; text: string } {
  const at = fileOf(loaded, proposal.device);
  if (!at) throw new LearnError(`device "${proposal.device}" is in no policy file`);
  const text = meta.text ?? readFileSync(at.policy.path, 'utf8');
  const doc = parseDocument(text, { uniqueKeys: true });
  // The file is read again for its text: it must still say what was loaded.
  if (doc.errors.length > 0 || JSON.stringify(doc.toJS()) !== JSON.stringify(at.policy.source.doc.toJS())) {
    throw new LearnError(`${at.policy.source.file} changed while learning; run learn again`);
  }
  const device = doc.getIn(['devices', at.index], true);
  if (!isMap(device)) throw new LearnError(`${at.policy.source.file}: devices[${at.index}] is not a mapping`);
  const pair = allowPair(proposal, meta, at.policy.policy.devices[at.index]?.allow ?? []);
  const spliced = splice(text, device, blockOf(pair));
  if (spliced !== undefined) return { path: at.policy.path, text: spliced };
  // A layout splice() does not handle: the whole file through the YAML library (the same
  // content, in its formatting).
  const i = device.items.findIndex((p) => isScalar(p.key) && p.key.value === 'allow');
  if (i === -1) device.items.push(pair);
  else device.items[i] = pair;
  return { path: at.policy.path, text: doc.toString({ lineWidth: 0 }) };
}

function leftSummary(p: Proposal): string {
  const by = new Map<string, number>();
  for (const l of p.left) by.set(l.why, (by.get(l.why) ?? 0) + l.flow.flows);
  return [...by].map(([why, n]) => `${n} flow${n === 1 ? '' : 's'} ${why}`).join('; ');
}
