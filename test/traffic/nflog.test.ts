// NFLOG events: the pcap parser on a capture taken from a real NFLOG group (fixtures/
// nflog-group10.pcap: `tcpdump -i nflog:10 -U -w -` in a scratch namespace whose output chain logged
// a TCP SYN and a UDP datagram with "wg deny ct-01 in ", an IPv6 SYN and an ICMP echo request with
// "wg monitor pump-01 out ", and a SYN with a foreign prefix, all over loopback), then end to end:
// a router-mode site with the committed policy, tcpdump on the gateway's group and denied packets
// from a stranger.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../agent/config/load.js';
import { NflogPcapParser, NflogReader, parseNflogPcap, type NflogEvent } from '../../agent/traffic/nflog.js';
import { canRoot, destroyAll, Lab, removeStale, skipReason, until, v4, warnSkip } from '../integration/site.js';
import { FLOW_POLICIES } from './model.js';

const FIXTURE = readFileSync(join(import.meta.dirname, 'fixtures', 'nflog-group10.pcap'));
const HOST = '10.20.0.11';

/** Byte offsets where each record of the fixture ends (after the 24-byte global header). */
function recordEnds(b: Buffer): number[] {
  const ends: number[] = [];
  for (let at = 24; at + 16 <= b.length; ) {
    at += 16 + b.readUInt32LE(at + 8);
    ends.push(at);
  }
  return ends;
}

const EXPECTED = [
  { verdict: 'deny', device: 'ct-01', dir: 'in', family: 'ipv4', proto: 'tcp', src: HOST, dst: HOST, dport: 104 },
  { verdict: 'deny', device: 'ct-01', dir: 'in', family: 'ipv4', proto: 'udp', src: HOST, dst: HOST, dport: 4242 },
  { verdict: 'monitor', device: 'pump-01', dir: 'out', family: 'ipv6', proto: 'tcp', src: 'fd00:20::11', dst: 'fd00:20::11', dport: 443 },
  { verdict: 'monitor', device: 'pump-01', dir: 'out', family: 'ipv4', proto: 'icmp', src: HOST, dst: HOST, icmpType: 8, icmpCode: 0 },
];

describe('NFLOG pcap parser', () => {
  it('reads the events of a real capture, and counts the foreign prefix', () => {
    const { events, stats, error } = parseNflogPcap(FIXTURE);
    expect(error).toBeUndefined();
    expect(events).toHaveLength(4);
    EXPECTED.forEach((want, i) => expect(events[i]).toMatchObject(want));
    expect(events[0]).toMatchObject({ group: 10, prefix: 'wg deny ct-01 in ', protoNum: 6 });
    expect(events[0]!.sport).toBeGreaterThan(1023);
    expect(events[3]!.sport).toBeUndefined();
    expect(events[3]!.dport).toBeUndefined();
    for (const ev of events) expect(Math.abs(ev.time - Date.UTC(2026, 10, 27))).toBeLessThan(86400e3);
    expect(stats).toEqual({ records: 5, events: 4, malformed: 0, foreign: 1, truncated: 0 });
  });

  it('gives the same events however the stream is split, at every byte of the first records', () => {
    const whole = parseNflogPcap(FIXTURE).events;
    const upTo = recordEnds(FIXTURE)[1]!; // the global header and two records
    for (let cut = 1; cut < upTo; cut++) {
      const p = new NflogPcapParser();
      const events = [...p.push(FIXTURE.subarray(0, cut)), ...p.push(FIXTURE.subarray(cut))];
      p.end();
      expect(events, `cut at ${cut}`).toEqual(whole);
      expect(p.stats.malformed).toBe(0);
    }
    // One byte at a time.
    const p = new NflogPcapParser();
    const events: NflogEvent[] = [];
    for (let i = 0; i < FIXTURE.length; i++) events.push(...p.push(FIXTURE.subarray(i, i + 1)));
    expect(events).toEqual(whole);
  });

  it('counts a truncated tail instead of throwing', () => {
    const ends = recordEnds(FIXTURE);
    const cut = ends[1]! + 30; // inside the third record
    const p = new NflogPcapParser();
    const events = p.push(FIXTURE.subarray(0, cut));
    expect(events).toHaveLength(2);
    p.end();
    expect(p.stats).toMatchObject({ records: 2, events: 2, malformed: 1, truncated: 30 });
    expect(p.error).toBeUndefined();
  });

  it('rejects what is not an NFLOG pcap, and counts damaged records', () => {
    const notPcap = parseNflogPcap(Buffer.from('tcpdump: nflog link-layer type not supported\n'));
    expect(notPcap.error).toMatch(/not a pcap stream/);
    expect(notPcap.events).toEqual([]);

    const ethernet = Buffer.from(FIXTURE.subarray(0, 24));
    ethernet.writeUInt32LE(1, 20);
    expect(parseNflogPcap(ethernet).error).toMatch(/link type 1, not NFLOG/);

    // A TLV length that runs past its record: that record is malformed, the next still parses.
    const damaged = Buffer.from(FIXTURE);
    damaged.writeUInt16LE(0xfff0, 24 + 16 + 4);
    const r = parseNflogPcap(damaged);
    expect(r.stats).toMatchObject({ records: 5, events: 3, malformed: 1 });
    expect(r.events[0]).toMatchObject(EXPECTED[1]!);

    // An impossible record length: the stream cannot be resynchronised, so it stops there.
    const corrupt = Buffer.from(FIXTURE);
    corrupt.writeUInt32LE(0x7fffffff, 24 + 8);
    const c = parseNflogPcap(corrupt);
    expect(c.error).toMatch(/corrupt/);
    expect(c.events).toEqual([]);

    expect(() => parseNflogPcap(Buffer.alloc(200, 0xff))).not.toThrow();
  });
});

const tcpdumpSkip: string | undefined = (() => {
  if (!canRoot) return skipReason;
  const which = spawnSync('sh', ['-c', 'command -v tcpdump'], { encoding: 'utf8' });
  return which.status === 0 ? undefined : 'tcpdump is not installed';
})();

warnSkip('NFLOG events', tcpdumpSkip);

describe.skipIf(tcpdumpSkip !== undefined)('NFLOG events from tcpdump in a router-mode site', () => {
  const labs: Lab[] = [];
  let lab: Lab;
  let reader: NflogReader | undefined;
  const events: NflogEvent[] = [];

  beforeAll(async () => {
    await removeStale();
    lab = await Lab.create({ mode: 'router', hosts: ['pacs', 'stranger', 'ct'], policies: FLOW_POLICIES });
    labs.push(lab);
    await lab.listen('ct', 'tcp', [104]);
    await lab.listen('ct', 'udp', [4242]);
    await lab.commit();
    reader = await NflogReader.start({ netns: lab.site.gw, group: loadConfig(lab.gateway).gateway.config.nflogGroup, onEvent: (ev) => events.push(ev) });
  }, 60000);
  afterAll(async () => {
    try {
      await reader?.stop();
    } finally {
      await destroyAll(labs);
    }
  });

  it('a denied TCP connection attempt and a denied UDP datagram become deny events of ct-01, inbound', async () => {
    expect(await lab.connect('stranger', 'tcp', v4('ct'), 104)).toEqual({ ok: false, why: 'timeout' });
    expect(await lab.connect('stranger', 'udp', v4('ct'), 4242)).toEqual({ ok: false, why: 'timeout' });
    await until('a TCP and a UDP NFLOG event', () => events.some((e) => e.proto === 'tcp') && events.some((e) => e.proto === 'udp'), 10000);

    const common = { verdict: 'deny', device: 'ct-01', dir: 'in', family: 'ipv4', src: v4('stranger'), dst: v4('ct'), group: 10 };
    expect(events.find((e) => e.proto === 'tcp')).toMatchObject({ ...common, dport: 104, prefix: 'wg deny ct-01 in ' });
    expect(events.find((e) => e.proto === 'udp')).toMatchObject({ ...common, dport: 4242 });
    // The gateway's own input chain may log hosts' IPv6 multicast housekeeping as "wg deny gateway in".
    for (const e of events.filter((x) => x.device === 'ct-01')) expect(e).toMatchObject(common);
    expect(reader?.stats).toMatchObject({ malformed: 0, foreign: 0 });
    expect(reader?.parser.error).toBeUndefined();
  });

  it('stop() ends tcpdump', async () => {
    const pid = reader?.pid;
    await reader?.stop();
    expect(pid).toBeDefined();
    expect(() => process.kill(pid!, 0)).toThrow();
  });
});
