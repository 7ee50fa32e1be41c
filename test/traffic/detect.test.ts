// Denied records from NFLOG packets, the detector's events and limits, the IEEE registry lookup
// (Debian's ieee-data, the real files) and the neighbour table parsers, on the model of the
// integration site (ct-01 enforce, pump-01 monitor) with a clock the test turns.
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DetectionsSchema } from '../../agent/config/schema.js';
import { DeniedAggregator } from '../../agent/traffic/denied.js';
import { Detector, type Detection } from '../../agent/traffic/detect.js';
import type { Model } from '../../agent/policy/model.js';
import { parseFdb, parseNeigh } from '../../agent/traffic/neighbours.js';
import type { NflogEvent } from '../../agent/traffic/nflog.js';
import { IEEE_DATA_DIR, macHex, OuiRegistry } from '../../agent/traffic/oui.js';
import { siteModel } from './model.js';

const model = siteModel();

function pkt(over: Partial<NflogEvent> = {}): NflogEvent {
  return {
    time: 1_000_000,
    group: 10,
    prefix: 'wg deny ct-01 in ',
    verdict: 'deny',
    device: 'ct-01',
    dir: 'in',
    family: 'ipv4',
    proto: 'tcp',
    protoNum: 6,
    src: '10.10.9.66',
    dst: '10.20.0.11',
    sport: 40000,
    dport: 23,
    length: 60,
    ...over,
  };
}

describe('denied records', () => {
  it('folds the retransmissions of one attempt into one record, written once it has been quiet', () => {
    const agg = new DeniedAggregator(model, { idleMs: 10_000, maxMs: 60_000 });
    const groupOf = () => undefined;
    for (const dt of [0, 1000, 3000, 7000]) expect(agg.add(pkt({ time: 1_000_000 + dt }), groupOf)).toEqual([]);
    agg.add(pkt({ sport: 40001, time: 1_000_000 }), groupOf);
    // The second attempt (another source port) was one packet, quiet since 1_000_000.
    expect(agg.flush(1_016_000).map((r) => r.sport)).toEqual([40001]);
    const out = agg.flush(1_017_000);
    expect(out).toHaveLength(1);
    expect(out[0]).toMatchObject({
      device: 'ct-01',
      peer: '10.10.9.66',
      direction: 'inbound',
      proto: 'tcp',
      sport: 40000,
      dport: 23,
      packets: 4,
      bytes: 240,
      toDevice: { packets: 4, bytes: 240 },
      fromDevice: { packets: 0, bytes: 0 },
      durationMs: 7000,
      verdict: 'denied',
      entry: null,
      start: new Date(1_000_000).toISOString(),
      time: new Date(1_007_000).toISOString(),
    });
    expect(agg.size).toBe(0);
  });

  it('names the peer group, takes outbound peers from the destination, ignores monitor packets', () => {
    const agg = new DeniedAggregator(model);
    agg.add(pkt({ dir: 'out', src: '10.20.0.11', dst: '10.10.1.10', dport: 8080 }), (p) => (p === '10.10.1.10' ? 'pacs' : undefined));
    agg.add(pkt({ verdict: 'monitor', device: 'pump-01' }), () => undefined);
    const [r, ...rest] = agg.flush(0, true);
    expect(rest).toEqual([]);
    expect(r).toMatchObject({ direction: 'outbound', peer: '10.10.1.10', peerGroup: 'pacs', fromDevice: { packets: 1, bytes: 60 }, toDevice: { packets: 0 } });
  });

  it('holds at most maxOpen attempts: the oldest is written early', () => {
    const agg = new DeniedAggregator(model, { maxOpen: 100 });
    const early = [];
    for (let port = 1; port <= 1000; port++) early.push(...agg.add(pkt({ dport: port }), () => undefined));
    expect(agg.size).toBe(100);
    expect(early).toHaveLength(900);
    expect(early[0]!.dport).toBe(1);
    expect(agg.evicted).toBe(900);
  });
});

function detector(over: Partial<ReturnType<typeof DetectionsSchema.parse>> = {}, m: Pick<Model, 'devices' | 'segments'> = model) {
  let now = 1_000_000;
  const events: Detection[] = [];
  const d = new Detector({
    config: { ...DetectionsSchema.parse({}), ...over },
    model: m,
    emit: (e) => events.push(e),
    vendors: (macs) => new OuiRegistry().lookup(macs),
    now: () => now,
  });
  return { d, events, advance: (ms: number) => (now += ms), kinds: () => events.map((e) => e.kind) };
}

describe('detections', () => {
  it('a port scan of a thousand ports is one flow.denied and one traffic.fanout', () => {
    const { d, events, kinds } = detector();
    for (let port = 1; port <= 1000; port++) d.nflog(pkt({ dport: port }));
    expect(kinds()).toEqual(['flow.denied', 'traffic.fanout']);
    expect(events[1]).toMatchObject({ severity: 'warning', dedupKey: 'traffic.fanout/10.10.9.66', data: { source: '10.10.9.66', ports: 20 } });
    expect(d.stats.deduplicated).toBe(999);
  });

  it('a device opening connections to many addresses is a critical fan-out, with the device named', () => {
    const { d, events } = detector();
    for (let i = 1; i <= 25; i++) {
      d.connection({ l4: 'tcp', orig: { src: '10.20.0.21', dst: `10.10.3.${i}`, sport: 50000 + i, dport: 445 } });
    }
    expect(events.map((e) => [e.kind, e.severity, e.device])).toEqual([['traffic.fanout', 'critical', 'pump-01']]);
  });

  it('raises a key again after the dedup window, with the repeats held back meanwhile', () => {
    const { d, events, advance } = detector({ dedupWindowSeconds: 60 });
    d.nflog(pkt());
    d.nflog(pkt());
    d.nflog(pkt());
    advance(61_000);
    d.nflog(pkt());
    expect(events).toHaveLength(2);
    expect(events[1]!.data).toMatchObject({ repeatsSinceLast: 2 });
  });

  it('caps events per minute across keys and reports the rest in one detections.suppressed', () => {
    const { d, events, advance, kinds } = detector({ maxEventsPerMinute: 5 });
    for (let i = 1; i <= 50; i++) d.nflog(pkt({ src: `10.10.9.${i}` }));
    expect(events).toHaveLength(5);
    advance(60_000);
    d.tick();
    expect(kinds().at(-1)).toBe('detections.suppressed');
    expect(events.at(-1)!.data).toEqual({ byKind: { 'flow.denied': 45 }, total: 45 });
    d.tick();
    expect(events).toHaveLength(6);
  });

  it('monitor mode: traffic outside the allow-list is monitor.outside, per peer and port', () => {
    const { d, events } = detector();
    const m = pkt({ verdict: 'monitor', device: 'pump-01', prefix: 'wg monitor pump-01 in ', dst: '10.20.0.21', dport: 8443 });
    d.nflog(m);
    d.nflog(m);
    d.nflog({ ...m, dport: 22 });
    expect(events.map((e) => [e.kind, e.severity, e.dedupKey])).toEqual([
      ['monitor.outside', 'info', 'monitor.outside/pump-01/inbound/10.10.9.66/tcp/8443'],
      ['monitor.outside', 'info', 'monitor.outside/pump-01/inbound/10.10.9.66/tcp/22'],
    ]);
  });

  it('a silent device, and its traffic again', () => {
    const devices = model.devices.map((dev) => (dev.id === 'ct-01' ? { ...dev, silentAfterSeconds: 600 } : dev));
    const { d, events, advance, kinds } = detector({}, { devices, segments: model.segments });
    advance(599_000);
    d.tick();
    expect(events).toHaveLength(0);
    advance(1000);
    d.tick();
    d.tick();
    expect(kinds()).toEqual(['device.silent']);
    expect(events[0]).toMatchObject({ device: 'ct-01', severity: 'warning' });
    d.flow({ device: 'ct-01' });
    expect(kinds()).toEqual(['device.silent', 'device.active']);
    // pump-01 has no silentAfterSeconds and the default is 0: never silent.
    advance(86_400_000);
    d.tick();
    expect(events.filter((e) => e.device === 'pump-01')).toEqual([]);
  });

  it.skipIf(!existsSync(IEEE_DATA_DIR))('a new MAC on the segment is device.new with its vendor; a known address from another MAC is a mismatch', async () => {
    const devices = model.devices.map((dev) => (dev.id === 'ct-01' ? { ...dev, mac: '00:1b:63:84:45:e6' } : dev));
    const { d, events, advance } = detector({}, { devices, segments: model.segments });
    await d.neighbours([
      { address: '10.20.0.11', mac: '00:1b:63:84:45:e6' },
      // pump-01 has no MAC in its record: learnt, so its link-local entry is no new device.
      { address: '10.20.0.21', mac: '02:aa:bb:cc:dd:01' },
      { address: 'fe80::aa:bbff:fecc:dd01', mac: '02:aa:bb:cc:dd:01' },
      // 00:1B:63 is registered to Apple (MA-L), 00:00:0C to Cisco.
      { address: '10.20.0.99', mac: '00:00:0C:12:34:56' },
    ]);
    await d.neighbours([{ address: '10.20.0.99', mac: '00:00:0c:12:34:56' }]);
    await d.neighbours([{ address: '10.20.0.11', mac: '00:00:0c:aa:aa:aa' }]);
    expect(events.map((e) => e.kind)).toEqual(['device.new', 'device.mac-mismatch']);
    // A MAC with no address on the segments (a bridge's forwarding database) waits a minute for
    // one to show up that names a listed device (two neighbour reads, at least, so 61 s with the
    // default 30 s interval); then it is new, without an address.
    await d.neighbours([{ mac: '00:00:0c:77:77:77' }, { mac: '02:00:00:00:00:21' }]);
    advance(30_000);
    await d.neighbours([{ mac: '00:00:0c:77:77:77' }, { mac: '02:00:00:00:00:21' }, { address: '10.20.0.21', mac: '02:00:00:00:00:21' }]);
    expect(events).toHaveLength(2);
    advance(30_000);
    await d.neighbours([]);
    expect(events).toHaveLength(2);
    advance(1000);
    await d.neighbours([]);
    expect(events.map((e) => e.kind)).toEqual(['device.new', 'device.mac-mismatch', 'device.new']);
    expect(events[2]!.data).toEqual({ mac: '00:00:0c:77:77:77', vendor: 'Cisco Systems, Inc', registry: 'MA-L' });
    expect(events[0]!.data).toMatchObject({ mac: '00:00:0c:12:34:56', address: '10.20.0.99', vendor: 'Cisco Systems, Inc', registry: 'MA-L' });
    expect(events[0]!.message).toContain('Cisco');
    expect(events[1]).toMatchObject({ severity: 'critical', device: 'ct-01', data: { expectedMac: '00:1b:63:84:45:e6', mac: '00:00:0c:aa:aa:aa' } });
  });

  it('an unlisted address with traffic on the segment is device.new, once, after the neighbour reads had their chance', async () => {
    const { d, kinds, events, advance } = detector({ neighbourIntervalSeconds: 30 });
    d.connection({ l4: 'tcp', orig: { src: '10.20.0.77', dst: '10.10.1.10', sport: 1, dport: 104 } });
    d.connection({ l4: 'tcp', orig: { src: '10.20.0.77', dst: '10.10.1.10', sport: 2, dport: 104 } });
    // Off the device segments: not ours to report.
    d.connection({ l4: 'tcp', orig: { src: '10.10.7.7', dst: '10.10.1.10', sport: 2, dport: 104 } });
    // A host the neighbour table then names: one event, with the MAC.
    d.connection({ l4: 'tcp', orig: { src: '10.20.0.78', dst: '10.10.1.10', sport: 3, dport: 104 } });
    await d.neighbours([{ address: '10.20.0.78', mac: '02:00:00:00:00:78' }]);
    expect(kinds()).toEqual(['device.new']);
    advance(60_000);
    d.tick();
    expect(kinds()).toEqual(['device.new']);
    advance(1000);
    d.tick();
    d.tick();
    expect(kinds()).toEqual(['device.new', 'device.new']);
    expect(events.map((e) => e.data)).toEqual([
      { mac: '02:00:00:00:00:78', address: '10.20.0.78', vendor: null, registry: 'local' },
      { address: '10.20.0.77' },
    ]);
  });
});

describe('the IEEE registries', () => {
  const dir = mkdtempSync(join(tmpdir(), 'wg-oui-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('takes the longest assignment, reads quoted names, and knows local addresses', async () => {
    writeFileSync(join(dir, 'oui.csv'), 'Registry,Assignment,Organization Name,Organization Address\nMA-L,001BC5,IEEE Registration Authority,x\nMA-L,00000C,"Cisco Systems, Inc",y\n');
    writeFileSync(join(dir, 'oui36.csv'), 'Registry,Assignment,Organization Name,Organization Address\nMA-S,001BC5012,"Acme ""Medical"" GmbH",z\n');
    const r = new OuiRegistry(dir);
    const v = await r.lookup(['00:1b:c5:01:2f:00', '00-00-0c-00-00-01', '001bc5ffffff', 'fa:16:3e:00:00:01', 'nonsense']);
    expect(v.get('00:1b:c5:01:2f:00')).toEqual({ name: 'Acme "Medical" GmbH', registry: 'MA-S', assignment: '001BC5012' });
    expect(v.get('00-00-0c-00-00-01')?.name).toBe('Cisco Systems, Inc');
    expect(v.get('001bc5ffffff')?.registry).toBe('MA-L');
    expect(v.get('fa:16:3e:00:00:01')).toEqual({ name: null, registry: 'local' });
    expect(v.get('nonsense')).toEqual({ name: null, registry: null });
    expect(macHex('00:1b:c5:01:2f')).toBeUndefined();
  });
});

describe('neighbour tables', () => {
  it('ip -j neigh: entries with a MAC, not failed or incomplete', () => {
    const json = JSON.stringify([
      { dst: '10.20.0.11', dev: 'dev0', lladdr: '00:1B:63:84:45:E6', state: ['REACHABLE'] },
      { dst: '10.20.0.12', dev: 'dev0', state: ['FAILED'] },
      { dst: '10.20.0.13', dev: 'dev0', lladdr: '00:00:0c:00:00:01', state: ['INCOMPLETE'] },
      { dst: '10.10.0.1', dev: 'up0', lladdr: '00:00:0c:00:00:02', state: ['STALE'] },
    ]);
    expect(parseNeigh(json, 'dev0')).toEqual([{ mac: '00:1b:63:84:45:e6', address: '10.20.0.11' }]);
  });

  it('bridge -j fdb: learned MACs of the device port, not permanent, self or multicast', () => {
    const json = JSON.stringify([
      { mac: '00:1b:63:84:45:e6', ifname: 'p1', master: 'br0', state: '' },
      { mac: '00:1b:63:84:45:e6', ifname: 'p1', vlan: 1, master: 'br0', state: '' },
      { mac: '02:00:00:00:00:01', ifname: 'p1', master: 'br0', state: 'permanent' },
      { mac: '33:33:00:00:00:01', ifname: 'p1', flags: ['self'], state: 'permanent' },
      { mac: '01:00:5e:00:00:01', ifname: 'p1', state: '' },
      { mac: '00:00:0c:00:00:09', ifname: 'p0', master: 'br0', state: '' },
    ]);
    expect(parseFdb(json, 'p1')).toEqual([{ mac: '00:1b:63:84:45:e6' }]);
  });
});
