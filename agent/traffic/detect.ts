// Detections: events for what breaks the baseline, from the flow pipeline and the segment's
// neighbour table (docs/detections.md).
//
//   flow.denied          the ruleset dropped a connection attempt          per device and peer
//   monitor.outside      a monitor-mode device's traffic outside its list  per device, peer, port
//   traffic.fanout       one source opened connections to many addresses   per source
//                        or ports within a window (a scan, a worm)
//   device.new           a MAC or address on the device segment that no    per MAC or address
//                        device record lists, with the MAC's vendor
//   device.mac-mismatch  a listed device's address answered from another   per device and MAC
//                        MAC than its record's (spoofing, or a swap)
//   device.silent        no traffic of a device for its silentAfterSeconds  per device
//   device.active        ...and traffic again
//
// Two limits keep a storm from becoming a storm of events. An event with the same dedup key is
// raised at most once per dedupWindowSeconds; the repeats are counted and reported with the next
// one. Across keys, at most maxEventsPerMinute events are raised; the rest are counted per kind
// into one detections.suppressed event a minute. A port scan of a thousand ports from one host
// is then one flow.denied per device it touched and one traffic.fanout.
import type { GatewayConfig } from '../config/schema.js';
import type { Model, ResolvedDevice } from '../policy/model.js';
import { contains, parseAddress } from '../policy/net.js';
import type { ConntrackEvent } from './conntrack.js';
import { appOf, type FlowRecord } from './flows.js';
import type { Neighbour } from './neighbours.js';
import type { NflogEvent } from './nflog.js';
import type { Vendor } from './oui.js';
import { EventLimiter, type LimitedEvent } from '../util/event-limiter.js';

export type Detection = LimitedEvent;

export type DetectionsConfig = GatewayConfig['traffic']['detections'];

/** Sources tracked for fan-out at once; more are not tracked until the window turns. */
const MAX_SOURCES = 4096;
/** Unlisted MACs and addresses remembered; the oldest are forgotten first. */
const MAX_KEYS = 8192;

interface Fanout {
  peers: Set<string>;
  ports: Set<number>;
  raised: boolean;
}

export interface DetectorDeps {
  config: DetectionsConfig;
  model: Pick<Model, 'devices' | 'segments'>;
  emit: (d: Detection) => void;
  /** Vendors of MACs (OuiRegistry.lookup); without it device.new names no vendor. */
  vendors?: (macs: string[]) => Promise<Map<string, Vendor>>;
  now?: () => number;
}

export class Detector {
  private readonly cfg: DetectionsConfig;
  private readonly now: () => number;
  private readonly byAddress = new Map<string, ResolvedDevice>();
  private readonly byMac = new Map<string, ResolvedDevice>();
  private readonly byId = new Map<string, ResolvedDevice>();
  private readonly lastSeen = new Map<string, number>();
  private readonly silent = new Set<string>();
  private readonly limiter: EventLimiter;
  private readonly knownUnlisted = new Set<string>();
  /**
   * Unknown MACs seen without an address on the segments (a bridge's forwarding database, IPv6
   * link-local neighbours), held for a while: a listed device without a MAC in its record is
   * recognised once it shows up with its address.
   */
  private readonly pendingMacs = new Map<string, number>();
  /** Unlisted addresses seen in traffic, held until a neighbour read can add their MAC. */
  private readonly pendingAddresses = new Map<string, number>();
  private fanout = new Map<string, Fanout>();
  private fanoutStart: number;
  /** Counts, for health and tests. */
  get stats(): EventLimiter['stats'] {
    return this.limiter.stats;
  }

  constructor(private readonly deps: DetectorDeps) {
    this.cfg = deps.config;
    this.now = deps.now ?? Date.now;
    const t = this.now();
    this.fanoutStart = t;
    this.limiter = new EventLimiter({
      dedupWindowSeconds: this.cfg.dedupWindowSeconds,
      maxPerMinute: this.cfg.maxEventsPerMinute,
      summaryKind: 'detections.suppressed',
      noun: 'detection event(s)',
      emit: deps.emit,
      now: this.now,
    });
    for (const d of deps.model.devices) {
      for (const [family, a] of Object.entries(d.addresses)) if (a !== undefined) this.byAddress.set(`${family}:${a}`, d);
      if (d.mac) this.byMac.set(d.mac, d);
      this.byId.set(d.id, d);
      // Silence is measured from the agent's start: it cannot know what came before.
      this.lastSeen.set(d.id, t);
    }
  }

  /** The listed device with this address, or whether the address lies on the device segments. */
  private locate(address: string): { device?: ResolvedDevice; onSegment: boolean } {
    const p = parseAddress(address);
    if (!p) return { onSegment: false };
    const device = this.byAddress.get(`${p.family}:${p.value}`);
    if (device) return { device, onSegment: true };
    return { onSegment: this.deps.model.segments.some((s) => contains(s, { family: p.family, lo: p.value, hi: p.value })) };
  }

  private device(address: string): ResolvedDevice | undefined {
    return this.locate(address).device;
  }

  private onSegment(address: string): boolean {
    return this.locate(address).onSegment;
  }

  private seen(deviceId: string): void {
    this.lastSeen.set(deviceId, this.now());
    if (this.silent.delete(deviceId)) {
      this.raise({ severity: 'info', kind: 'device.active', dedupKey: `device.active/${deviceId}`, device: deviceId, message: `device ${deviceId} has traffic again`, data: {} });
    }
  }

  /** A connection the kernel started tracking (conntrack NEW): allowed or monitored traffic. */
  connection(ev: Pick<ConntrackEvent, 'orig' | 'l4'>): void {
    const from = this.locate(ev.orig.src);
    const to = this.locate(ev.orig.dst);
    const src = from.device;
    const dst = to.device;
    if (src) this.seen(src.id);
    if (dst) this.seen(dst.id);
    if (!src && from.onSegment) this.unlistedAddress(ev.orig.src);
    if (!dst && to.onSegment) this.unlistedAddress(ev.orig.dst);
    // Fan-out: sources towards or from the devices only (this gateway's business).
    if (src || dst) this.countFanout(ev.orig.src, ev.orig.dst, ev.orig.dport, src?.id);
  }

  /** A packet the ruleset logged to NFLOG: denied, or a monitor-mode device's unlisted traffic. */
  nflog(ev: NflogEvent): void {
    const listed = this.byId.get(ev.device);
    if (listed) this.seen(listed.id);
    const peer = ev.dir === 'in' ? ev.src : ev.dst;
    const port = ev.dport ?? null;
    const what = `${ev.proto}${port !== null ? `/${port}` : ''}`;
    const toward = ev.dir === 'in' ? `from ${peer}` : `to ${peer}`;
    const data = { direction: ev.dir === 'in' ? 'inbound' : 'outbound', peer, proto: ev.proto, port, app: appOf(ev.dport) };
    if (ev.verdict === 'deny' || ev.verdict === 'failclosed') {
      const target = ev.device === 'gateway' ? 'the gateway itself' : `device ${ev.device}`;
      this.raise({
        severity: 'warning',
        kind: 'flow.denied',
        dedupKey: `flow.denied/${ev.device}/${peer}`,
        ...(listed ? { device: listed.id } : {}),
        message: `denied ${what} ${toward} ${ev.dir === 'in' ? 'to' : 'from'} ${target}`,
        data,
      });
      // Dropped attempts never become conntrack entries: they count towards fan-out here.
      this.countFanout(ev.src, ev.dst, ev.dport, ev.dir === 'out' ? ev.device : undefined);
    } else if (ev.verdict === 'monitor' && listed) {
      this.raise({
        severity: 'info',
        kind: 'monitor.outside',
        dedupKey: `monitor.outside/${listed.id}/${data.direction}/${peer}/${what}`,
        device: listed.id,
        message: `device ${listed.id} (monitor mode): ${what} ${toward} is outside its allow-list`,
        data,
      });
    }
  }

  /** A finished flow (conntrack DESTROY or a denied attempt): the device had traffic. */
  flow(rec: Pick<FlowRecord, 'device'>): void {
    if (this.lastSeen.has(rec.device)) this.seen(rec.device);
  }

  /** The device segment's neighbour table or forwarding database, read now. */
  async neighbours(list: readonly Neighbour[]): Promise<void> {
    const fresh: Neighbour[] = [];
    // Listed addresses first: a device record without a MAC learns it here, so that the same
    // device seen by its IPv6 link-local address (outside the segments) is not a new device.
    const rows = list.map((n) => ({ ...n, mac: n.mac.toLowerCase(), listed: n.address !== undefined ? this.device(n.address) : undefined }));
    for (const n of rows) {
      const d = n.listed;
      if (!d) continue;
      this.seen(d.id);
      if (d.mac && d.mac !== n.mac) {
        this.raise({
          severity: 'critical',
          kind: 'device.mac-mismatch',
          dedupKey: `device.mac-mismatch/${d.id}/${n.mac}`,
          device: d.id,
          message: `${n.address} (device ${d.id}) answers from MAC ${n.mac}, not ${d.mac} as its record says: spoofed, or the device was replaced`,
          data: { address: n.address, mac: n.mac, expectedMac: d.mac },
        });
      } else if (!d.mac && !this.byMac.has(n.mac)) {
        this.byMac.set(n.mac, d);
        this.pendingMacs.delete(n.mac);
      }
    }
    for (const n of rows) {
      if (n.listed) continue;
      const byMac = this.byMac.get(n.mac);
      if (byMac) {
        this.seen(byMac.id);
        continue;
      }
      // An address outside the segments (IPv6 link-local) names no device: the MAC still does.
      const address = n.address !== undefined && this.onSegment(n.address) ? n.address : undefined;
      // The address belongs to this MAC's report, whether that is now or was earlier.
      if (address !== undefined) {
        this.remember(`ip:${address}`);
        this.pendingAddresses.delete(address);
      }
      const key = `mac:${n.mac}`;
      if (this.knownUnlisted.has(key)) continue;
      if (address === undefined) {
        if (!this.pendingMacs.has(n.mac) && this.pendingMacs.size < MAX_KEYS) this.pendingMacs.set(n.mac, this.now());
        continue;
      }
      this.pendingMacs.delete(n.mac);
      this.remember(key);
      fresh.push({ mac: n.mac, address });
    }
    const now = this.now();
    const wait = Math.max(60_000, (2 * this.cfg.neighbourIntervalSeconds + 1) * 1000);
    for (const [mac, since] of this.pendingMacs) {
      if (now - since < wait) continue;
      this.pendingMacs.delete(mac);
      this.remember(`mac:${mac}`);
      fresh.push({ mac });
    }
    if (fresh.length === 0) return;
    const vendors = this.deps.vendors ? await this.deps.vendors(fresh.map((n) => n.mac)).catch(() => new Map<string, Vendor>()) : new Map<string, Vendor>();
    for (const n of fresh) {
      const v = vendors.get(n.mac);
      const vendor = v?.name ?? (v?.registry === 'local' ? 'locally administered address (no vendor)' : 'unknown vendor');
      this.raise({
        severity: 'warning',
        kind: 'device.new',
        dedupKey: `device.new/${n.mac}`,
        message: `new device on the device segment: MAC ${n.mac}${n.address !== undefined ? `, address ${n.address}` : ''} (${vendor}), not in the inventory`,
        data: { mac: n.mac, ...(n.address !== undefined ? { address: n.address } : {}), vendor: v?.name ?? null, registry: v?.registry ?? null },
      });
    }
  }

  /** Unlisted MACs and addresses already reported, bounded (random MACs must not grow it forever). */
  private remember(key: string): void {
    if (this.knownUnlisted.size >= MAX_KEYS) {
      const oldest = this.knownUnlisted.values().next();
      if (!oldest.done) this.knownUnlisted.delete(oldest.value);
    }
    this.knownUnlisted.add(key);
  }

  /**
   * An unlisted address with traffic. With neighbour reads on, it waits for one (two intervals)
   * so that the host is one device.new with its MAC and vendor, not one per source.
   */
  private unlistedAddress(address: string): void {
    const key = `ip:${address}`;
    if (this.knownUnlisted.has(key) || this.pendingAddresses.has(address)) return;
    if (this.cfg.neighbourIntervalSeconds > 0 && this.pendingAddresses.size < MAX_KEYS) {
      this.pendingAddresses.set(address, this.now());
      return;
    }
    this.raiseUnlistedAddress(address);
  }

  private raiseUnlistedAddress(address: string): void {
    this.remember(`ip:${address}`);
    this.raise({
      severity: 'warning',
      kind: 'device.new',
      dedupKey: `device.new/${address}`,
      message: `new device on the device segment: address ${address} has traffic and is not in the inventory`,
      data: { address },
    });
  }

  private countFanout(src: string, dst: string, dport: number | undefined, deviceId: string | undefined): void {
    const now = this.now();
    if (now - this.fanoutStart >= this.cfg.fanout.windowSeconds * 1000) {
      this.fanout = new Map();
      this.fanoutStart = now;
    }
    let f = this.fanout.get(src);
    if (!f) {
      if (this.fanout.size >= MAX_SOURCES) return;
      this.fanout.set(src, (f = { peers: new Set(), ports: new Set(), raised: false }));
    }
    if (f.raised) return;
    // Sets stop growing at the threshold: that is all the question needs.
    if (f.peers.size < this.cfg.fanout.peers) f.peers.add(dst);
    if (dport !== undefined && f.ports.size < this.cfg.fanout.ports) f.ports.add(dport);
    if (f.peers.size >= this.cfg.fanout.peers || f.ports.size >= this.cfg.fanout.ports) {
      f.raised = true;
      const what = f.peers.size >= this.cfg.fanout.peers ? `${f.peers.size} addresses` : `${f.ports.size} ports`;
      this.raise({
        severity: deviceId !== undefined ? 'critical' : 'warning',
        kind: 'traffic.fanout',
        dedupKey: `traffic.fanout/${src}`,
        ...(deviceId !== undefined ? { device: deviceId } : {}),
        message: `${deviceId !== undefined ? `device ${deviceId}` : src} opened connections to at least ${what} within ${this.cfg.fanout.windowSeconds} s: a scan, or a worm`,
        data: { source: src, peers: f.peers.size, ports: f.ports.size, windowSeconds: this.cfg.fanout.windowSeconds, samplePorts: [...f.ports].slice(0, 10) },
      });
    }
  }

  /** Periodic work: silent devices, the suppressed-events summary. Call every few seconds. */
  tick(): void {
    const now = this.now();
    const wait = (2 * this.cfg.neighbourIntervalSeconds + 1) * 1000;
    for (const [address, since] of this.pendingAddresses) {
      if (now - since < wait) continue;
      this.pendingAddresses.delete(address);
      if (!this.knownUnlisted.has(`ip:${address}`)) this.raiseUnlistedAddress(address);
    }
    for (const d of this.deps.model.devices) {
      const after = d.silentAfterSeconds ?? this.cfg.silentAfterSeconds;
      if (after <= 0 || this.silent.has(d.id)) continue;
      const last = this.lastSeen.get(d.id) ?? now;
      if (now - last >= after * 1000) {
        this.silent.add(d.id);
        this.raise({
          severity: 'warning',
          kind: 'device.silent',
          dedupKey: `device.silent/${d.id}`,
          device: d.id,
          message: `device ${d.id} has had no traffic for ${Math.round((now - last) / 1000)} s (expected within ${after} s)`,
          data: { lastSeen: new Date(last).toISOString(), silentAfterSeconds: after },
        });
      }
    }
    this.limiter.tick();
  }

  private raise(d: Detection): void {
    this.limiter.raise(d);
  }

}
