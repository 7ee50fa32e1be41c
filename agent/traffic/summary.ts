// The flows of one summary interval, per device: what the `flows` topic carries.
import { envelope, TOP_PEERS, type DeviceFlowSummary, type FlowsSummaryPayload } from '../mqtt/topics.js';
import type { FlowRecord } from './flows.js';

interface Counts {
  flows: number;
  bytes: number;
  packets: number;
}
const zero = (): Counts => ({ flows: 0, bytes: 0, packets: 0 });
const add = (c: Counts, r: FlowRecord) => {
  c.flows++;
  c.bytes += r.bytes;
  c.packets += r.packets;
};
/** Distinct peers remembered per device and interval (a scan must not grow memory without end). */
const MAX_PEERS = 4096;

/** The flows of one summary interval, per device. */
export class FlowSummary {
  private devices = new Map<string, { total: Counts; byApp: Map<string, Counts>; byVerdict: Map<string, Counts>; peers: Map<string, Counts & { peerGroup?: string }> }>();
  private start = new Date();

  add(r: FlowRecord): void {
    let d = this.devices.get(r.device);
    if (!d) this.devices.set(r.device, (d = { total: zero(), byApp: new Map(), byVerdict: new Map(), peers: new Map() }));
    add(d.total, r);
    for (const [map, key] of [[d.byApp, r.app ?? 'other'], [d.byVerdict, r.verdict]] as const) {
      let c = map.get(key);
      if (!c) map.set(key, (c = zero()));
      add(c, r);
    }
    let p = d.peers.get(r.peer);
    if (!p && d.peers.size < MAX_PEERS) d.peers.set(r.peer, (p = { ...zero(), ...(r.peerGroup !== undefined ? { peerGroup: r.peerGroup } : {}) }));
    if (p) add(p, r);
  }

  get empty(): boolean {
    return this.devices.size === 0;
  }

  /** The summary of the interval so far, and a new interval. */
  take(site: string, gateway: string, now = new Date()): FlowsSummaryPayload {
    const devices: DeviceFlowSummary[] = [...this.devices].map(([device, d]) => ({
      device,
      ...d.total,
      byApp: Object.fromEntries(d.byApp),
      byVerdict: Object.fromEntries(d.byVerdict),
      topPeers: [...d.peers]
        .sort((a, b) => b[1].bytes - a[1].bytes || b[1].flows - a[1].flows)
        .slice(0, TOP_PEERS)
        .map(([peer, c]) => ({ peer, ...c })),
    }));
    const payload: FlowsSummaryPayload = { ...envelope('flows', site, gateway, now), intervalStart: this.start.toISOString(), intervalEnd: now.toISOString(), devices };
    this.devices = new Map();
    this.start = now;
    return payload;
  }
}
