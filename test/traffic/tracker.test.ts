// Flow records from conntrack events, against the model of the integration site: device, peer
// and group, direction, verdict and entry by the compiler's matching, counts per direction.
import { describe, expect, it } from 'vitest';
import type { ConntrackEvent, Tuple } from '../../agent/traffic/conntrack.js';
import { appOf, FlowTracker } from '../../agent/traffic/flows.js';
import { siteModel } from './model.js';

const model = siteModel();

let nextId = 1;
function conn(l4: 'tcp' | 'udp', src: string, dst: string, sport: number, dport: number): { start: ConntrackEvent; end: ConntrackEvent } {
  const id = nextId++;
  const l3 = src.includes(':') ? 'ipv6' : 'ipv4';
  const orig: Tuple = { src, dst, sport, dport };
  const reply: Tuple = { src: dst, dst: src, sport: dport, dport: sport };
  const base = { l3, l4, l4num: l4 === 'tcp' ? 6 : 17, flags: [], id };
  return {
    start: { ...base, type: 'new', timestampMs: 1_000_000, orig, reply },
    end: { ...base, type: 'destroy', timestampMs: 1_002_500, orig: { ...orig, packets: 6, bytes: 400 }, reply: { ...reply, packets: 4, bytes: 300 } },
  };
}

function records(c: ReturnType<typeof conn>) {
  const t = new FlowTracker(model);
  expect(t.handle(c.start)).toEqual([]);
  expect(t.open).toBe(1);
  const out = t.handle(c.end);
  expect(t.open).toBe(0);
  return out;
}

describe('FlowTracker', () => {
  it('names the application by the entry\'s app before the port: HL7 on 2576', () => {
    const ct = model.devices.find((d) => d.id === 'ct-01')!;
    const withApp = { devices: model.devices.map((d) => (d === ct ? { ...ct, entries: ct.entries.map((e, i) => (i === 0 ? { ...e, ports: [[2576, 2576] as const], app: 'HL7' as const } : e)) } : d)) };
    const t = new FlowTracker(withApp);
    const c = conn('tcp', '10.10.1.10', '10.20.0.11', 40001, 2576);
    t.handle(c.start);
    expect(t.handle(c.end)).toMatchObject([{ entry: 'ct-01/allow[0]', dport: 2576, app: 'HL7' }]);
    expect(appOf(2576)).toBeNull();
  });

  it('inbound to an enforce device, allowed by its entry', () => {
    expect(records(conn('tcp', '10.10.1.10', '10.20.0.11', 40000, 104))).toEqual([
      {
        time: new Date(1_002_500).toISOString(),
        start: new Date(1_000_000).toISOString(),
        device: 'ct-01',
        peer: '10.10.1.10',
        peerGroup: 'pacs',
        direction: 'inbound',
        proto: 'tcp',
        sport: 40000,
        dport: 104,
        packets: 10,
        bytes: 700,
        toDevice: { packets: 6, bytes: 400 },
        fromDevice: { packets: 4, bytes: 300 },
        accounted: true,
        durationMs: 2500,
        app: 'DICOM',
        verdict: 'allowed',
        entry: 'ct-01/allow[0]',
        conntrackId: nextId - 1,
      },
    ]);
  });

  it('outbound from the device, over IPv6: the outbound entry; counts seen from the device', () => {
    const [r] = records(conn('tcp', 'fd00:20::11', 'fd00:10::1:10', 50000, 11112));
    expect(r).toMatchObject({ device: 'ct-01', peer: 'fd00:10::1:10', peerGroup: 'pacs', direction: 'outbound', app: 'DICOM', entry: 'ct-01/allow[3]', verdict: 'allowed' });
    expect(r?.fromDevice).toEqual({ packets: 6, bytes: 400 });
  });

  it('the same port the other way is not covered by an outbound entry', () => {
    expect(records(conn('tcp', '10.10.1.10', '10.20.0.11', 40000, 11112))[0]).toMatchObject({ verdict: 'unmatched', entry: null });
  });

  it('the protocol must match: udp 104 is not tcp 104', () => {
    expect(records(conn('udp', '10.10.1.10', '10.20.0.11', 40000, 104))[0]).toMatchObject({ entry: null });
    expect(records(conn('udp', '10.10.1.10', '10.20.0.11', 40000, 4242))[0]).toMatchObject({ entry: 'ct-01/allow[1]', app: null });
  });

  it('a monitor-mode device: covered traffic names its entry, the rest is monitored; the group of a non-entry peer', () => {
    expect(records(conn('tcp', '10.10.1.10', '10.20.0.21', 40000, 443))[0]).toMatchObject({ device: 'pump-01', entry: 'pump-01/allow[0]', verdict: 'allowed', app: 'HTTPS' });
    const [r] = records(conn('tcp', '10.10.5.3', '10.20.0.21', 40000, 8080));
    expect(r).toMatchObject({ device: 'pump-01', peer: '10.10.5.3', peerGroup: 'biomed', verdict: 'monitored', entry: null, app: null });
    expect(records(conn('tcp', '10.10.9.66', '10.20.0.21', 40000, 8080))[0]?.peerGroup).toBeUndefined();
  });

  it('device to device gives one record per device', () => {
    const out = records(conn('tcp', '10.20.0.21', '10.20.0.11', 40000, 22));
    expect(out.map((r) => [r.device, r.direction, r.verdict])).toEqual([
      ['ct-01', 'inbound', 'unmatched'],
      ['pump-01', 'outbound', 'monitored'],
    ]);
  });

  it('drops connections that involve no listed device; a DESTROY without its NEW has no duration', () => {
    const t = new FlowTracker(model);
    expect(t.handle(conn('tcp', '10.10.1.10', '10.10.9.66', 1, 2).end)).toEqual([]);
    expect(t.ignored).toBe(1);
    expect(t.handle(conn('tcp', '10.10.1.10', '10.20.0.11', 1, 104).end)[0]).toMatchObject({ start: null, durationMs: null });
  });

  it('forgets the oldest open connections beyond maxOpen', () => {
    const t = new FlowTracker(model, { maxOpen: 2 });
    const cs = [1, 2, 3].map(() => conn('tcp', '10.10.1.10', '10.20.0.11', 1, 104));
    for (const c of cs) t.handle(c.start);
    expect(t.open).toBe(2);
    expect(t.handle(cs[0]!.end)[0]?.durationMs).toBeNull();
    expect(t.handle(cs[2]!.end)[0]?.durationMs).toBe(2500);
  });

  it('ICMP echo: covered by an icmp entry of a peer in its group; no ports, no app', () => {
    const t = new FlowTracker(model);
    const echo = (src: string, icmpType: number): ConntrackEvent => ({
      type: 'destroy', timestampMs: 5, l3: 'ipv4', l4: 'icmp', l4num: 1, flags: [], id: 99,
      orig: { src, dst: '10.20.0.11', icmpType, icmpCode: 0, icmpId: 7, packets: 1, bytes: 84 },
      reply: { src: '10.20.0.11', dst: src, icmpType: 0, icmpCode: 0, icmpId: 7, packets: 1, bytes: 84 },
    });
    expect(t.handle(echo('10.10.5.3', 8))[0]).toMatchObject({ proto: 'icmp', sport: null, dport: null, app: null, entry: 'ct-01/allow[2]', peerGroup: 'biomed' });
    expect(t.handle(echo('10.10.9.66', 8))[0]).toMatchObject({ entry: null, verdict: 'unmatched' });
    expect(t.handle(echo('10.10.5.3', 13))[0]).toMatchObject({ entry: null }); // timestamp request, not echo
  });

  it('application by port', () => {
    expect([104, 11112, 2575, 502, 443, 53, 123, 22, 80, null].map(appOf)).toEqual(['DICOM', 'DICOM', 'HL7', 'Modbus', 'HTTPS', 'DNS', 'NTP', 'SSH', null, null]);
  });
});
