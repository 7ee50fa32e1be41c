// The conntrack event parser, on lines captured from a kernel (conntrack-tools 1.4.7,
// `conntrack -E -e NEW,DESTROY -o timestamp,extended,id` in a network namespace with
// nf_conntrack_acct=1): TCP over IPv4 and IPv6, UDP, ICMP echo, a refused TCP connection.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseConntrackLine } from '../../agent/traffic/conntrack.js';

const LINES = readFileSync(join(import.meta.dirname, 'fixtures', 'conntrack-events.txt'), 'utf8').split('\n').filter(Boolean);
const line = (re: RegExp) => {
  const l = LINES.find((x) => re.test(x));
  if (!l) throw new Error(`no fixture line matches ${re}`);
  return l;
};

describe('parseConntrackLine', () => {
  it('parses every captured event line, and nothing else', () => {
    const parsed = LINES.map(parseConntrackLine);
    expect(parsed.filter(Boolean)).toHaveLength(10);
    expect(parsed.filter((p) => p === undefined)).toHaveLength(LINES.length - 10);
  });

  it('a NEW TCP event over IPv4: timestamp, tuples, state, flags, id; no counters yet', () => {
    expect(parseConntrackLine(line(/\[NEW\] ipv4 .*dport=104 /))).toEqual({
      type: 'new',
      timestampMs: 1795753809915.819,
      l3: 'ipv4',
      l4: 'tcp',
      l4num: 6,
      state: 'SYN_SENT',
      orig: { src: '10.99.0.1', dst: '10.99.0.2', sport: 60074, dport: 104 },
      reply: { src: '10.99.0.2', dst: '10.99.0.1', sport: 104, dport: 60074 },
      flags: ['UNREPLIED'],
      id: 1190876255,
    });
  });

  it('a DESTROY TCP event: packets and bytes per direction', () => {
    const ev = parseConntrackLine(line(/\[DESTROY\] ipv4 .*dport=104 /));
    expect(ev).toMatchObject({
      type: 'destroy',
      state: 'TIME_WAIT',
      orig: { src: '10.99.0.1', dst: '10.99.0.2', sport: 60074, dport: 104, packets: 6, bytes: 328 },
      reply: { src: '10.99.0.2', sport: 104, packets: 4, bytes: 224 },
      flags: ['ASSURED', 'USERSPACE'],
      id: 1190876255,
    });
  });

  it('IPv6 addresses', () => {
    expect(parseConntrackLine(line(/\[DESTROY\] ipv6/))).toMatchObject({
      l3: 'ipv6',
      orig: { src: 'fd00:99::1', dst: 'fd00:99::2', dport: 104, bytes: 448 },
      reply: { bytes: 304 },
      id: 1518134589,
    });
  });

  it('UDP has no state', () => {
    const ev = parseConntrackLine(line(/\[DESTROY\] ipv4 .* udp/));
    expect(ev?.state).toBeUndefined();
    expect(ev).toMatchObject({ l4: 'udp', l4num: 17, orig: { dport: 53, packets: 1, bytes: 36 }, id: 3857661711 });
  });

  it('ICMP: the echo identifier of each tuple is not the conntrack id', () => {
    expect(parseConntrackLine(line(/\[DESTROY\] ipv4 .* icmp/))).toMatchObject({
      l4: 'icmp',
      orig: { icmpType: 8, icmpCode: 0, icmpId: 9959, packets: 1, bytes: 84 },
      reply: { icmpType: 0, icmpId: 9959 },
      id: 2225144917,
    });
    expect(parseConntrackLine(line(/\[NEW\] ipv4 .* icmp/))?.id).toBe(2225144917);
  });

  it('a refused connection is destroyed at once, still counted', () => {
    expect(parseConntrackLine(line(/\[DESTROY\] .*dport=23 /))).toMatchObject({ state: 'CLOSE', flags: ['UNREPLIED'], orig: { packets: 1 }, reply: { packets: 1 } });
  });

  it('without accounting there are no counters; delta-time is read when the kernel timestamps', () => {
    const ev = parseConntrackLine(
      '[1795753810.500000]\t[DESTROY] ipv4     2 udp      17 src=10.0.0.1 dst=10.0.0.2 sport=5000 dport=123 src=10.0.0.2 dst=10.0.0.1 sport=123 dport=5000 delta-time=7 id=42',
    );
    expect(ev).toMatchObject({ orig: { sport: 5000, dport: 123 }, deltaTime: 7, id: 42, timestampMs: 1795753810500 });
    expect(ev?.orig.packets).toBeUndefined();
  });

  it('rejects other lines', () => {
    for (const bad of ['', 'conntrack v1.4.7 (conntrack-tools): 10 flow events have been shown.', '[1.2]\t[UPDATE] ipv4 2 tcp 6 src=a dst=b src=b dst=a', '[1.2]\t[NEW] ipv4 2 tcp 6 120 SYN_SENT src=10.0.0.1']) {
      expect(parseConntrackLine(bad)).toBeUndefined();
    }
  });
});
