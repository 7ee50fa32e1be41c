// The data-flow map: per device, the flows its allow-list approves next to the flows the flow log
// observed, as a graph, and that graph as Graphviz DOT. It is the "data-flow diagram showing how
// ePHI moves" that a joint risk assessment asks for (docs/flows-map.md).
//
// Observed flows are judged against the policy files as they are now, by the compiler's match
// (direction, peer address, protocol, the responder's port), so the map compares the approved
// map with what traffic shows; the verdicts the log recorded at the time ride along as counts.
// The output depends only on its inputs (no clock, sorted everywhere): the same policy and log
// give the same DOT, byte for byte, so maps can be diffed and filed as evidence.
import type { LoadedConfig } from '../config/load.js';
import type { Direction, Model, PortRange, ResolvedDevice, ResolvedEntry } from '../policy/model.js';
import { formatAddress, formatRange, inRange, parseAddress, parsePrefix, type AddrRange, type Family } from '../policy/net.js';
import { APP_PORTS, type Verdict } from './flows.js';
import type { LoggedFlow } from './read.js';

/** Application protocols that carry patient data (ePHI) on these devices. */
export const PHI_APPS: ReadonlySet<string> = new Set(['DICOM', 'HL7']);

export interface PeerGroup {
  name: string;
  description?: string;
  members: AddrRange[];
}

export interface MapInput {
  site?: string;
  gateway?: string;
  /** The policy's hash (Model.hash): which allow-lists the map was drawn against. */
  policyHash?: string;
  devices: readonly ResolvedDevice[];
  groups: readonly PeerGroup[];
}

/** The map's input from loaded configuration: the model's devices and every named peer group. */
export function mapInput(loaded: LoadedConfig, model: Model): MapInput {
  const groups: PeerGroup[] = [];
  for (const { policy } of loaded.policies) {
    for (const [name, g] of Object.entries(policy.groups)) {
      const members = g.members.flatMap((m) => {
        const r = parsePrefix(m);
        return r.ok ? [r.range] : [];
      });
      groups.push({ name, members, ...(g.description !== undefined ? { description: g.description } : {}) });
    }
  }
  return { site: model.gateway.site, gateway: model.gateway.gateway, policyHash: model.hash, devices: model.devices, groups };
}

export type NodeKind = 'device' | 'group' | 'network' | 'address' | 'others';

export interface MapNode {
  /** "<kind>:<name>": groups and devices share one namespace of names, so the kind is part of it. */
  id: string;
  kind: NodeKind;
  name: string;
  /** Label lines under the name. */
  detail: string[];
  device?: Pick<ResolvedDevice, 'criticality' | 'mode'>;
  /** A device drawn only because a shown device talks to it (outside --device). */
  context?: boolean;
}

/**
 * - allowed-observed: an allow entry covers it and the log has flows on it;
 * - allowed-unobserved: an allow entry (one port range of it) that no logged flow used;
 * - not-allowed: logged flows that no allow entry covers (denied, unmatched, or passed only
 *   because the device is in monitor mode).
 */
export type EdgeStatus = 'allowed-observed' | 'allowed-unobserved' | 'not-allowed';

export interface MapEdge {
  device: string;
  direction: Direction;
  /** The peer's node id. */
  peer: string;
  proto: string;
  /** "104", "5000-5100", "" (icmp), or "17 ports" when many uncovered ports were merged. */
  ports: string;
  /** The merged ports, when there are. */
  portList?: number[];
  apps: string[];
  phi: boolean;
  status: EdgeStatus;
  entry?: string;
  comment?: string;
  flows: number;
  packets: number;
  bytes: number;
  verdicts: Partial<Record<Verdict, number>>;
  first?: string;
  last?: string;
  /** Peer addresses seen on it, sorted. */
  peers: string[];
}

export interface MapStats {
  /** Records given to the map. */
  records: number;
  /** Records on the map's edges. */
  mapped: number;
  /** Records before --since. */
  before: number;
  /** Records of other devices than --device. */
  filtered: number;
  /** Records of devices that are not in the policy files, by device id. */
  unknownDevices: Record<string, number>;
  first?: string;
  last?: string;
}

export interface MapMeta {
  site?: string;
  gateway?: string;
  policyHash?: string;
  device?: string;
  /** ISO 8601. */
  since?: string;
}

export interface FlowMap {
  meta: MapMeta;
  nodes: MapNode[];
  edges: MapEdge[];
  stats: MapStats;
}

export interface MapOptions {
  /** Only this device's flows (and the nodes they reach). */
  device?: string;
  /** Only flows that ended at or after this time. */
  since?: Date;
  /** Most separate peer-address nodes per device for uncovered flows; the rest become one node. */
  maxAddresses?: number;
  /** Most separate uncovered ports per device, direction, peer and protocol; more become one edge. */
  maxPorts?: number;
}

const KIND_ORDER: Record<NodeKind, number> = { device: 0, group: 1, network: 2, address: 3, others: 4 };
export const VERDICTS: readonly Verdict[] = ['allowed', 'monitored', 'unmatched', 'denied'];

interface EntryEdge {
  range: PortRange | undefined;
  edge: MapEdge;
}

/** Collects records into the map; build() returns it sorted, with the crowds merged. */
export class FlowMapBuilder {
  private readonly devices = new Map<string, ResolvedDevice>();
  private readonly byAddress = new Map<string, ResolvedDevice>();
  private readonly groups: PeerGroup[];
  /** CIDR peers of allow entries that are not single hosts, smallest first. */
  private readonly networks: { range: AddrRange; node: string }[] = [];
  private readonly entryEdges = new Map<string, EntryEdge[]>();
  private readonly edges = new Map<string, MapEdge>();
  private readonly peerSets = new Map<MapEdge, Set<string>>();
  private readonly contextDevices = new Set<string>();
  private readonly shown: ResolvedDevice[];
  private readonly stats: MapStats = { records: 0, mapped: 0, before: 0, filtered: 0, unknownDevices: {} };
  private readonly sinceMs: number | undefined;

  constructor(
    private readonly input: MapInput,
    private readonly opts: MapOptions = {},
  ) {
    for (const d of input.devices) {
      this.devices.set(d.id, d);
      for (const family of ['ipv4', 'ipv6'] as const) {
        const a = d.addresses[family];
        if (a !== undefined) this.byAddress.set(`${family}:${a}`, d);
      }
    }
    if (opts.device !== undefined && !this.devices.has(opts.device)) {
      throw new Error(`no device "${opts.device}" in the policy files`);
    }
    this.groups = [...input.groups].sort((a, b) => cmp(a.name, b.name));
    this.shown = input.devices.filter((d) => opts.device === undefined || d.id === opts.device);
    this.sinceMs = opts.since?.getTime();
    const nets = new Map<string, AddrRange>();
    for (const d of input.devices) {
      for (const e of d.entries) {
        const node = entryPeerNode(e);
        if (node.startsWith('network:') && e.peers[0]) nets.set(node, e.peers[0]);
      }
    }
    for (const [node, range] of nets) this.networks.push({ node, range });
    const size = (r: AddrRange) => r.hi - r.lo;
    this.networks.sort((a, b) => (size(a.range) < size(b.range) ? -1 : size(a.range) > size(b.range) ? 1 : cmp(a.node, b.node)));

    for (const d of this.shown) {
      for (const e of d.entries) {
        const ranges: (PortRange | undefined)[] = e.proto === 'icmp' ? [undefined] : e.ports;
        const list: EntryEdge[] = [];
        ranges.forEach((range, i) => {
          const edge = newEdge(d.id, e.direction, entryPeerNode(e), e.proto, range ? portText(range) : '', 'allowed-unobserved');
          edge.entry = e.id;
          if (e.comment !== undefined) edge.comment = e.comment;
          // The entry's own app, else the apps of the well-known ports in the range: a range
          // that merely holds a PHI port (1-65535) is marked too, as it may carry PHI.
          edge.apps = e.app !== undefined ? [e.app] : range ? appsInRange(range) : [];
          edge.phi = edge.apps.some((a) => PHI_APPS.has(a));
          this.edges.set(`entry|${e.id}|${i}`, edge);
          list.push({ range, edge });
        });
        this.entryEdges.set(e.id, list);
      }
    }
  }

  add(flow: LoggedFlow): void {
    const s = this.stats;
    s.records++;
    const t = Date.parse(flow.time);
    if (this.sinceMs !== undefined && t < this.sinceMs) {
      s.before++;
      return;
    }
    const device = this.devices.get(flow.device);
    if (this.opts.device !== undefined && flow.device !== this.opts.device) {
      s.filtered++;
      return;
    }
    if (!device) {
      s.unknownDevices[flow.device] = (s.unknownDevices[flow.device] ?? 0) + 1;
      return;
    }
    const addr = parseAddress(flow.peer);
    if (!addr) return; // the reader lets only addresses through
    const iso = new Date(t).toISOString();
    if (s.first === undefined || iso < s.first) s.first = iso;
    if (s.last === undefined || iso > s.last) s.last = iso;
    s.mapped++;

    let edge: MapEdge | undefined;
    const entry = covering(device, flow, addr.family, addr.value);
    if (entry) {
      const list = this.entryEdges.get(entry.id) ?? [];
      edge = (list.find((x) => x.range === undefined || (flow.dport !== null && x.range[0] <= flow.dport && flow.dport <= x.range[1])) ?? list[0])?.edge;
    }
    if (edge) {
      edge.status = 'allowed-observed';
    } else {
      const peer = this.peerNode(flow, addr.family, addr.value);
      const port = flow.dport === null ? '' : String(flow.dport);
      const key = `flow|${device.id}|${flow.direction}|${peer}|${flow.proto}|${port}`;
      edge = this.edges.get(key);
      if (!edge) {
        edge = newEdge(device.id, flow.direction, peer, flow.proto, port, 'not-allowed');
        if (flow.dport !== null) edge.portList = [flow.dport];
        this.edges.set(key, edge);
      }
    }
    edge.flows++;
    edge.packets += flow.packets;
    edge.bytes += flow.bytes;
    edge.verdicts[flow.verdict] = (edge.verdicts[flow.verdict] ?? 0) + 1;
    if (edge.first === undefined || iso < edge.first) edge.first = iso;
    if (edge.last === undefined || iso > edge.last) edge.last = iso;
    if (flow.app !== null && !edge.apps.includes(flow.app)) {
      edge.apps = [...edge.apps, flow.app].sort(cmp);
      if (PHI_APPS.has(flow.app)) edge.phi = true;
    }
    let peers = this.peerSets.get(edge);
    if (!peers) this.peerSets.set(edge, (peers = new Set()));
    peers.add(formatAddress(addr.family, addr.value));
  }

  /**
   * Where an uncovered flow's peer is drawn: a listed device; else the named group it is in (the
   * one the record names, or the first by name); else the smallest CIDR peer of an allow entry
   * that holds it; else its own address.
   */
  private peerNode(flow: LoggedFlow, family: Family, value: bigint): string {
    const device = this.byAddress.get(`${family}:${value}`);
    if (device) {
      if (!this.shown.includes(device)) this.contextDevices.add(device.id);
      return `device:${device.id}`;
    }
    const holds = (g: PeerGroup) => g.members.some((r) => inRange(r, family, value));
    const named = this.groups.find((g) => g.name === flow.peerGroup && holds(g)) ?? this.groups.find(holds);
    if (named) return `group:${named.name}`;
    const net = this.networks.find((n) => inRange(n.range, family, value));
    if (net) return net.node;
    return `address:${formatAddress(family, value)}`;
  }

  build(): FlowMap {
    let edges = [...this.edges.values()];
    for (const e of edges) e.peers = [...(this.peerSets.get(e) ?? [])].sort(compareAddresses);
    edges = this.mergeAddresses(edges);
    edges = this.mergePorts(edges);
    edges.sort(compareEdges);

    const nodes = new Map<string, MapNode>();
    for (const d of this.shown) nodes.set(`device:${d.id}`, this.deviceNode(d, false));
    for (const id of this.contextDevices) {
      const d = this.devices.get(id);
      if (d) nodes.set(`device:${id}`, this.deviceNode(d, true));
    }
    for (const e of edges) {
      if (!nodes.has(e.peer)) nodes.set(e.peer, this.peerNodeOf(e.peer, edges));
    }
    const i = this.input;
    const meta: MapMeta = {
      ...(i.site !== undefined ? { site: i.site } : {}),
      ...(i.gateway !== undefined ? { gateway: i.gateway } : {}),
      ...(i.policyHash !== undefined ? { policyHash: i.policyHash } : {}),
      ...(this.opts.device !== undefined ? { device: this.opts.device } : {}),
      ...(this.opts.since !== undefined ? { since: this.opts.since.toISOString() } : {}),
    };
    return {
      meta,
      nodes: [...nodes.values()].sort((a, b) => KIND_ORDER[a.kind] - KIND_ORDER[b.kind] || cmp(a.id, b.id)),
      edges,
      stats: { ...this.stats, unknownDevices: { ...this.stats.unknownDevices } },
    };
  }

  private deviceNode(d: ResolvedDevice, context: boolean): MapNode {
    const addresses = (['ipv4', 'ipv6'] as const).flatMap((f) => (d.addresses[f] !== undefined ? [formatAddress(f, d.addresses[f])] : []));
    return {
      id: `device:${d.id}`,
      kind: 'device',
      name: d.id,
      detail: [d.class, `${d.criticality}, ${d.mode}, fail ${d.failMode}`, ...(addresses.length > 0 ? [addresses.join(', ')] : [])],
      device: { criticality: d.criticality, mode: d.mode },
      ...(context ? { context: true } : {}),
    };
  }

  private peerNodeOf(id: string, edges: readonly MapEdge[]): MapNode {
    const colon = id.indexOf(':');
    const kind = id.slice(0, colon) as NodeKind;
    const name = id.slice(colon + 1);
    switch (kind) {
      case 'group': {
        const g = this.groups.find((x) => x.name === name);
        const members = (g?.members ?? []).map(formatRange);
        const shown = members.slice(0, 3).join(', ') + (members.length > 3 ? `, +${members.length - 3}` : '');
        return { id, kind, name, detail: [...(g?.description !== undefined ? [g.description] : []), ...(shown ? [shown] : [])] };
      }
      case 'others': {
        const n = new Set(edges.filter((e) => e.peer === id).flatMap((e) => e.peers)).size;
        return { id, kind, name: `${n} other address(es)`, detail: [`talking to ${name}`] };
      }
      case 'device':
      case 'network':
      case 'address':
        return { id, kind, name, detail: [] };
    }
  }

  /** Uncovered flows from many lone addresses (a scan, a misconfigured subnet) become one node. */
  private mergeAddresses(edges: MapEdge[]): MapEdge[] {
    const max = this.opts.maxAddresses ?? 20;
    const byDevice = new Map<string, Map<string, { bytes: number; flows: number }>>();
    for (const e of edges) {
      if (e.status !== 'not-allowed' || !e.peer.startsWith('address:')) continue;
      const m = byDevice.get(e.device) ?? new Map<string, { bytes: number; flows: number }>();
      byDevice.set(e.device, m);
      const t = m.get(e.peer) ?? { bytes: 0, flows: 0 };
      t.bytes += e.bytes;
      t.flows += e.flows;
      m.set(e.peer, t);
    }
    const moved = new Map<string, Set<string>>();
    for (const [device, totals] of byDevice) {
      if (totals.size <= max) continue;
      const ranked = [...totals].sort(([a, x], [b, y]) => y.bytes - x.bytes || y.flows - x.flows || compareAddresses(a.slice(8), b.slice(8)));
      moved.set(device, new Set(ranked.slice(max).map(([peer]) => peer)));
    }
    if (moved.size === 0) return edges;
    return mergeBy(edges, (e) => {
      if (!moved.get(e.device)?.has(e.peer)) return undefined;
      return { key: `${e.device}|${e.direction}|${e.proto}|${e.ports}`, apply: (m) => (m.peer = `others:${e.device}`) };
    });
  }

  /** Uncovered flows to many ports of one peer (a port scan) become one edge. */
  private mergePorts(edges: MapEdge[]): MapEdge[] {
    const max = this.opts.maxPorts ?? 8;
    const count = new Map<string, number>();
    const groupKey = (e: MapEdge) => `${e.device}|${e.direction}|${e.peer}|${e.proto}`;
    for (const e of edges) if (e.status === 'not-allowed' && e.portList) count.set(groupKey(e), (count.get(groupKey(e)) ?? 0) + 1);
    return mergeBy(edges, (e) => {
      const k = groupKey(e);
      if (e.status !== 'not-allowed' || !e.portList || (count.get(k) ?? 0) <= max) return undefined;
      return {
        key: k,
        apply: (m) => {
          m.ports = `${m.portList?.length ?? 0} ports`;
        },
      };
    });
  }
}

/** Merges the edges `pick` names a key for into one edge per key; the rest pass unchanged. */
function mergeBy(edges: MapEdge[], pick: (e: MapEdge) => { key: string; apply: (merged: MapEdge) => void } | undefined): MapEdge[] {
  const out: MapEdge[] = [];
  const merged = new Map<string, { edge: MapEdge; apply: (m: MapEdge) => void }>();
  for (const e of [...edges].sort(compareEdges)) {
    const p = pick(e);
    if (!p) {
      out.push(e);
      continue;
    }
    const m = merged.get(p.key);
    if (!m) {
      merged.set(p.key, { edge: { ...e, verdicts: { ...e.verdicts }, apps: [...e.apps], peers: [...e.peers], ...(e.portList ? { portList: [...e.portList] } : {}) }, apply: p.apply });
      continue;
    }
    const t = m.edge;
    t.flows += e.flows;
    t.packets += e.packets;
    t.bytes += e.bytes;
    for (const v of VERDICTS) if (e.verdicts[v] !== undefined) t.verdicts[v] = (t.verdicts[v] ?? 0) + e.verdicts[v];
    if (e.first !== undefined && (t.first === undefined || e.first < t.first)) t.first = e.first;
    if (e.last !== undefined && (t.last === undefined || e.last > t.last)) t.last = e.last;
    t.apps = [...new Set([...t.apps, ...e.apps])].sort(cmp);
    t.phi ||= e.phi;
    t.peers = [...new Set([...t.peers, ...e.peers])].sort(compareAddresses);
    if (e.portList) t.portList = [...new Set([...(t.portList ?? []), ...e.portList])].sort((a, b) => a - b);
  }
  for (const { edge, apply } of merged.values()) {
    apply(edge);
    out.push(edge);
  }
  return out;
}

function newEdge(device: string, direction: Direction, peer: string, proto: string, ports: string, status: EdgeStatus): MapEdge {
  return { device, direction, peer, proto, ports, apps: [], phi: false, status, flows: 0, packets: 0, bytes: 0, verdicts: {}, peers: [] };
}

/** The node an allow entry's peer is drawn as: its group, its network, or its one address. */
function entryPeerNode(e: ResolvedEntry): string {
  const r = parsePrefix(e.peer);
  if (!r.ok) return `group:${e.peer}`;
  return r.range.lo === r.range.hi ? `address:${formatAddress(r.range.family, r.range.lo)}` : `network:${formatRange(r.range)}`;
}

/**
 * The first allow entry of the device that covers a logged flow, as the compiled sets match.
 * ICMP: the record does not keep the ICMP type, and the ruleset allows only echo requests, so an
 * ICMP flow counts as covered when an icmp entry covers its peer and the log recorded it allowed.
 */
function covering(device: ResolvedDevice, flow: LoggedFlow, family: Family, peer: bigint): ResolvedEntry | undefined {
  return device.entries.find((e) => {
    if (e.direction !== flow.direction) return false;
    if (!e.peers.some((r) => inRange(r, family, peer))) return false;
    if (e.proto === 'icmp') return (flow.proto === 'icmp' || flow.proto === 'icmpv6') && flow.verdict === 'allowed';
    return e.proto === flow.proto && flow.dport !== null && e.ports.some(([lo, hi]) => lo <= flow.dport! && flow.dport! <= hi);
  });
}

function portText([lo, hi]: PortRange): string {
  return lo === hi ? String(lo) : `${lo}-${hi}`;
}

/** The applications whose well-known port lies in the range, sorted. */
function appsInRange([lo, hi]: PortRange): string[] {
  const apps = new Set<string>();
  for (const [port, app] of APP_PORTS) if (lo <= port && port <= hi) apps.add(app);
  return [...apps].sort(cmp);
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** IPv4 before IPv6, then by value; anything else by text. */
function compareAddresses(a: string, b: string): number {
  const x = parseAddress(a);
  const y = parseAddress(b);
  if (!x || !y) return cmp(a, b);
  if (x.family !== y.family) return x.family === 'ipv4' ? -1 : 1;
  return x.value < y.value ? -1 : x.value > y.value ? 1 : 0;
}

function firstPort(e: MapEdge): number {
  return e.portList?.[0] ?? (e.ports === '' ? -1 : Number.parseInt(e.ports, 10));
}

function compareEdges(a: MapEdge, b: MapEdge): number {
  return (
    cmp(a.device, b.device) ||
    cmp(a.direction, b.direction) ||
    cmp(a.peer, b.peer) ||
    cmp(a.proto, b.proto) ||
    firstPort(a) - firstPort(b) ||
    cmp(a.ports, b.ports) ||
    cmp(a.entry ?? '', b.entry ?? '')
  );
}
