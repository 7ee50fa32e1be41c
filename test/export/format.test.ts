// The SIEM export's bytes, checked by hand: RFC 5424 header and structured data with its
// escaping, CEF with its two escaping rules, octet-counting framing, cutting to a size, the
// queue's drop order, and the siem section of gateway.yaml.
import { describe, expect, it } from 'vitest';
import { formatDiagnostic } from '../../agent/config/diagnostics.js';
import { loadGatewayText } from '../../agent/config/load.js';
import { FACILITIES } from '../../agent/config/schema.js';
import { cefExtension, escapeExtension, escapeHeader, formatCef } from '../../agent/export/cef.js';
import { SeverityQueue } from '../../agent/export/queue.js';
import { BOM, escapeParamValue, FACILITY_CODES, formatRfc5424, headerField, pri, sdName } from '../../agent/export/rfc5424.js';
import { backoffMs, defaultMaxBytes, defaultPort, formatEvent, frameOctetCounted, type FormatOptions } from '../../agent/export/syslog.js';
import type { EventPayload } from '../../agent/mqtt/topics.js';

const EVENT: EventPayload = {
  schema: 'wardgate/v1/event',
  schemaVersion: 1,
  site: 'st-1',
  gateway: 'gw-1',
  ts: '2025-03-04T05:06:07.089Z',
  id: '0b7e5c1a-2f4d-4e6a-8b9c-0d1e2f3a4b5c',
  severity: 'critical',
  kind: 'policy.drift',
  dedupKey: 'policy.drift:gw-1',
  message: 'the wardgate table was altered',
  data: { kernel: 'drifted', restored: 'committed' },
};

const FLOW: EventPayload = {
  ...EVENT,
  severity: 'warning',
  kind: 'flow.denied',
  dedupKey: 'flow.denied:ct-01',
  device: 'ct-01',
  message: 'denied tcp 10.10.1.10 -> ct-01:104 | a=b \\ c',
  data: { peer: '10.10.1.10', direction: 'inbound', proto: 'tcp', sport: 51514, dport: 104, app: 'DICOM', verdict: 'denied', deviceAddress: '10.20.0.11', peerGroup: 'pacs' },
};

const HEADER = { facility: 'local4', hostname: 'gw-1', procid: 4242 } as const;

describe('RFC 5424', () => {
  it('a whole message, byte for byte', () => {
    const bytes = formatRfc5424(EVENT, { ...HEADER, sequenceId: 7 });
    const head =
      '<162>1 2025-03-04T05:06:07.089Z gw-1 wardgate 4242 policy.drift ' +
      '[wardgate@32473 id="0b7e5c1a-2f4d-4e6a-8b9c-0d1e2f3a4b5c" site="st-1" gateway="gw-1" kind="policy.drift" severity="critical" dedupKey="policy.drift:gw-1"]' +
      '[wardgateData@32473 kernel="drifted" restored="committed"]' +
      '[meta sequenceId="7"] ';
    expect(bytes.equals(Buffer.concat([Buffer.from(head, 'ascii'), Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('the wardgate table was altered', 'ascii')]))).toBe(true);
  });

  it('every facility gateway.yaml accepts has its code, and no other', () => {
    expect(Object.keys(FACILITY_CODES).sort()).toEqual([...FACILITIES].sort());
    expect(Object.values(FACILITY_CODES).sort((a, b) => a - b)).toEqual(Array.from({ length: 24 }, (_, i) => i));
  });

  it('PRI is facility * 8 + severity: local4 by default, crit 2, warning 4, info 6', () => {
    expect([pri('local4', 'critical'), pri('local4', 'warning'), pri('local4', 'info')]).toEqual([162, 164, 166]);
    expect([pri('kern', 'critical'), pri('local7', 'info'), pri('auth', 'warning')]).toEqual([2, 190, 36]);
  });

  it('PARAM-VALUE escapes ", \\ and ] and nothing else (6.3.3)', () => {
    expect(escapeParamValue('a"b\\c]d[e=f é\n')).toBe('a\\"b\\\\c\\]d[e=f é\n');
    const bytes = formatRfc5424({ ...EVENT, dedupKey: 'x"]\\', data: undefined }, { ...HEADER, sequenceId: 1 }).toString('utf8');
    expect(bytes).toContain(' dedupKey="x\\"\\]\\\\"]');
    expect(bytes).not.toContain('wardgateData');
  });

  it('SD-NAMEs and header fields cannot break the syntax', () => {
    expect(sdName('we ird="name]')).toBe('we_ird__name_');
    expect(sdName('a'.repeat(40))).toHaveLength(32);
    expect(sdName('')).toBe('_');
    // MSGID: printable US-ASCII, at most 32 characters (6.2.7)
    expect(headerField('détection: fan out', 32)).toBe('d_tection:_fan_out');
    expect(headerField('x'.repeat(40), 32)).toBe('x'.repeat(32));
    expect(headerField('', 32)).toBe('-');
    const long = formatRfc5424({ ...EVENT, kind: `new device ${'k'.repeat(40)}` }, { ...HEADER, sequenceId: 1 }).toString('utf8');
    expect(long.split(' ').slice(0, 6)).toEqual(['<162>1', '2025-03-04T05:06:07.089Z', 'gw-1', 'wardgate', '4242', `new_device_${'k'.repeat(21)}`]);
    // the whole kind still travels, in the structured data
    expect(long).toContain(`kind="new device ${'k'.repeat(40)}"`);
  });

  it('data values: strings as they are, the rest as JSON', () => {
    const s = formatRfc5424({ ...EVENT, data: { n: 3, ok: true, nil: null, list: [1, 'a'], obj: { k: 'v]' }, gone: undefined } }, { ...HEADER, sequenceId: 1 }).toString('utf8');
    expect(s).toContain('[wardgateData@32473 n="3" ok="true" nil="null" list="[1,\\"a\\"\\]" obj="{\\"k\\":\\"v\\]\\"}"]');
  });

  it('an event without a valid time is stamped now', () => {
    const s = formatRfc5424({ ...EVENT, ts: 'yesterday' }, { ...HEADER, sequenceId: 1 }).toString('utf8');
    const ts = s.split(' ')[1] ?? '';
    expect(ts).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    expect(Math.abs(Date.parse(ts) - Date.now())).toBeLessThan(5000);
  });
});

describe('CEF', () => {
  it('a whole line: escaped header, mapped flow fields, the rest in cs4', () => {
    expect(formatCef(FLOW, { hostname: 'gw-1', version: '9.9.9' })).toBe(
      'CEF:0|wardgate|wardgate|9.9.9|flow.denied|denied tcp 10.10.1.10 -> ct-01:104 \\| a=b \\\\ c|6|' +
        'rt=1741064767089 dvchost=gw-1 externalId=0b7e5c1a-2f4d-4e6a-8b9c-0d1e2f3a4b5c cs1Label=site cs1=st-1 cs2Label=device cs2=ct-01 ' +
        'cs3Label=dedupKey cs3=flow.denied:ct-01 src=10.10.1.10 dst=10.20.0.11 spt=51514 dpt=104 proto=tcp app=DICOM act=denied deviceDirection=0 ' +
        'cs4Label=data cs4={"peer":"10.10.1.10","deviceAddress":"10.20.0.11","peerGroup":"pacs"}',
    );
  });

  it('header: | and \\ escaped, line breaks become spaces; extension: = and \\ escaped, line breaks as \\n \\r, | as is', () => {
    expect(escapeHeader('a|b\\c\r\nd\ne')).toBe('a\\|b\\\\c d e');
    expect(escapeExtension('k=v\\x\nnext\rline|pipe')).toBe('k\\=v\\\\x\\nnext\\rline|pipe');
    const line = formatCef({ ...EVENT, kind: 'odd|kind', dedupKey: 'a=b\nc', data: { note: 'x=1' } }, { hostname: 'gw-1', version: '1' });
    expect(line.startsWith('CEF:0|wardgate|wardgate|1|odd\\|kind|the wardgate table was altered|10|')).toBe(true);
    expect(line).toContain(' cs3=a\\=b\\nc ');
    expect(line.endsWith(' cs4Label=data cs4={"note":"x\\=1"}')).toBe(true);
  });

  it('severity 3, 6, 10; an outbound flow puts the peer in dst; IPv6 goes in c6a2/c6a3', () => {
    const sev = (s: EventPayload['severity']) => formatCef({ ...EVENT, severity: s }, { hostname: 'h', version: '1' }).split('|')[6];
    expect([sev('info'), sev('warning'), sev('critical')]).toEqual(['3', '6', '10']);
    const out = Object.fromEntries(cefExtension({ ...FLOW, data: { peer: '10.10.1.10', deviceAddress: '10.20.0.11', direction: 'outbound', dport: 443 } }, 'h'));
    expect(out).toMatchObject({ src: '10.20.0.11', dst: '10.10.1.10', dpt: '443', deviceDirection: '1' });
    const v6 = Object.fromEntries(cefExtension({ ...FLOW, data: { peer: 'fd00:10::10', deviceAddress: 'fd00:20::11', direction: 'inbound' } }, 'h'));
    expect(v6).toMatchObject({ c6a2Label: 'source', c6a2: 'fd00:10::10', c6a3Label: 'destination', c6a3: 'fd00:20::11' });
    expect(v6.src).toBeUndefined();
    // explicit src/dst win; a port that is not a port stays in cs4
    const ex = Object.fromEntries(cefExtension({ ...FLOW, data: { src: '192.0.2.1', peer: '10.10.1.10', direction: 'inbound', dport: 'http' } }, 'h'));
    expect(ex).toMatchObject({ src: '192.0.2.1', cs4: '{"peer":"10.10.1.10","dport":"http"}' });
    expect(ex.dpt).toBeUndefined();
  });

  it("the detections' data: flow.denied with port, device.new with address and MAC, traffic.fanout with source", () => {
    const ext = (data: Record<string, unknown>) => Object.fromEntries(cefExtension({ ...FLOW, data }, 'h'));
    expect(ext({ direction: 'outbound', peer: '203.0.113.9', proto: 'tcp', port: 445, app: null })).toMatchObject({
      dst: '203.0.113.9',
      dpt: '445',
      proto: 'tcp',
      deviceDirection: '1',
      cs4: '{"peer":"203.0.113.9","app":null}',
    });
    const added = ext({ mac: '02:AB:cd:00:00:01', address: '10.20.0.77', vendor: 'Example Medical', registry: 'MA-L' });
    expect(added).toMatchObject({ src: '10.20.0.77', smac: '02:ab:cd:00:00:01', cs4: '{"mac":"02:AB:cd:00:00:01","address":"10.20.0.77","vendor":"Example Medical","registry":"MA-L"}' });
    expect(ext({ source: '10.20.0.11', peers: 40, ports: 3 })).toMatchObject({ src: '10.20.0.11', cs4: '{"source":"10.20.0.11","peers":40,"ports":3}' });
  });

  it('in a syslog message: MSG is the CEF line without a BOM, the structured data only meta', () => {
    const o: FormatOptions = { format: 'cef', facility: 'local4', hostname: 'gw-1', procid: 4242, version: '9.9.9', sequenceId: 3, maxBytes: 8192 };
    const { bytes } = formatEvent(FLOW, o);
    expect(bytes.toString('utf8')).toBe(`<164>1 2025-03-04T05:06:07.089Z gw-1 wardgate 4242 flow.denied [meta sequenceId="3"] ${formatCef(FLOW, { hostname: 'gw-1', version: '9.9.9' })}`);
  });
});

describe('framing and size', () => {
  it('octet counting counts bytes, not characters (RFC 6587 3.4.1)', () => {
    expect(frameOctetCounted(Buffer.from('héllo')).equals(Buffer.from('6 héllo'))).toBe(true);
    const msg = formatRfc5424(EVENT, { ...HEADER, sequenceId: 1 });
    const framed = frameOctetCounted(msg).toString('latin1');
    expect(framed.slice(0, framed.indexOf(' '))).toBe(String(msg.length));
    expect(framed).toBe(`${msg.length} ${msg.toString('latin1')}`);
  });

  it('defaults: 514 udp and tcp, 6514 tls; 2048 bytes over udp, 8192 over tcp and tls', () => {
    expect([defaultPort('udp'), defaultPort('tcp'), defaultPort('tls')]).toEqual([514, 514, 6514]);
    expect([defaultMaxBytes('udp'), defaultMaxBytes('tcp'), defaultMaxBytes('tls')]).toEqual([2048, 8192, 8192]);
  });

  const o: FormatOptions = { format: 'rfc5424', facility: 'local4', hostname: 'gw-1', procid: 1, version: '1', sequenceId: 1, maxBytes: 480 };

  it('a long text is cut at a character boundary, the header and event fields intact, and marked', () => {
    const event = { ...EVENT, message: 'é€😀'.repeat(300) };
    const { bytes, truncated } = formatEvent(event, o);
    expect(truncated).toBe(true);
    expect(bytes.length).toBeLessThanOrEqual(480);
    expect(bytes.length).toBeGreaterThan(470); // the longest prefix that fits, not much less
    const text = bytes.toString('utf8');
    expect(Buffer.from(text, 'utf8').equals(bytes)).toBe(true); // valid UTF-8: nothing split
    expect(text).toContain('dedupKey="policy.drift:gw-1" truncated="true"]');
    expect(text).toContain('[wardgateData@32473 kernel="drifted" restored="committed"]');
    const msg = bytes.subarray(bytes.indexOf(BOM) + 3).toString('utf8');
    expect(event.message.startsWith(msg)).toBe(true);
  });

  it('data too large for the limit goes before the text does', () => {
    const { bytes, truncated } = formatEvent({ ...EVENT, data: { blob: 'x'.repeat(1000) } }, o);
    expect(truncated).toBe(true);
    const text = bytes.toString('utf8');
    expect(text).not.toContain('wardgateData');
    expect(text.endsWith('the wardgate table was altered')).toBe(true);
  });

  it('a message that fits is left alone; CEF is cut in its text too', () => {
    expect(formatEvent(EVENT, o).truncated).toBe(false);
    const { bytes, truncated } = formatEvent({ ...FLOW, message: 'm|'.repeat(400) }, { ...o, format: 'cef' });
    expect(truncated).toBe(true);
    expect(bytes.length).toBeLessThanOrEqual(480);
    const text = bytes.toString('utf8');
    expect(text).toMatch(/\|flow\.denied\|(m\\\|)+m?\|6\|rt=/);
    expect(text).toContain(' cs5Label=truncated cs5=true');
  });
});

describe('the queue', () => {
  const msg = (severity: EventPayload['severity'], n: number) => ({ severity, bytes: Buffer.from(`${severity[0]}${n}`) });
  const drain = (q: SeverityQueue) => {
    const out: string[] = [];
    for (let m = q.shift(); m; m = q.shift()) out.push(m.bytes.toString());
    return out;
  };

  it('full: the oldest of the lowest severity goes, the incoming one if it is that; order is kept', () => {
    const q = new SeverityQueue(5);
    const dropped: (string | undefined)[] = [];
    for (const m of [msg('critical', 1), msg('info', 1), msg('critical', 2), msg('info', 2), msg('warning', 1)]) dropped.push(q.push(m));
    expect(dropped).toEqual([undefined, undefined, undefined, undefined, undefined]);
    expect(q.push(msg('warning', 2))).toBe('info'); // i1 goes
    expect(q.push(msg('info', 3))).toBe('info'); // i2 goes, i3 in
    expect(q.push(msg('critical', 3))).toBe('info'); // i3 goes
    expect(q.push(msg('info', 4))).toBe('info'); // no info queued: the incoming one goes
    expect(q.push(msg('critical', 4))).toBe('warning'); // w1 goes
    expect(q.length).toBe(5);
    expect(drain(q)).toEqual(['c1', 'c2', 'w2', 'c3', 'c4']);
    expect(q.length).toBe(0);
  });

  it('a queue of criticals only drops the oldest critical', () => {
    const q = new SeverityQueue(3);
    for (let i = 1; i <= 5; i++) q.push(msg('critical', i));
    expect(drain(q)).toEqual(['c3', 'c4', 'c5']);
  });

  it('stays O(1): 200 000 pushes into a queue of 1000', () => {
    const q = new SeverityQueue(1000);
    const t = Date.now();
    for (let i = 0; i < 200000; i++) q.push(msg(i % 7 === 0 ? 'warning' : 'info', i));
    expect(Date.now() - t).toBeLessThan(2000);
    expect(q.length).toBe(1000);
  });

  it('backoff: full jitter between half the minimum and the maximum', () => {
    expect(backoffMs(0, 1, 60, () => 0)).toBe(500);
    expect(backoffMs(0, 1, 60, () => 1)).toBe(1000);
    expect(backoffMs(3, 1, 60, () => 1)).toBe(8000);
    expect(backoffMs(20, 1, 60, () => 1)).toBe(60000);
  });
});

describe('siem in gateway.yaml', () => {
  const gateway = (siem: string) => `apiVersion: wardgate/v1
kind: Gateway
site: test
gateway: gw-1
mode: router
interfaces: { uplink: up0, device: dev0 }
deviceSegments: [10.20.0.0/24]
management: { networks: [10.99.0.0/24] }
siem:
  syslog:
${siem}`;
  const load = (siem: string) => loadGatewayText('/etc/wardgate/gateway.yaml', gateway(siem));

  it('defaults: tls, rfc5424, local4, the gateway id as HOSTNAME, every severity, 1000 messages', () => {
    const g = load('    host: siem.example.org\n    tls: { ca: ca.pem }\n');
    expect(g.diagnostics).toEqual([]);
    expect(g.gateway?.config.siem?.syslog).toEqual({
      host: 'siem.example.org',
      transport: 'tls',
      format: 'rfc5424',
      facility: 'local4',
      hostname: 'gateway',
      minSeverity: 'info',
      queueSize: 1000,
      tls: { ca: 'ca.pem' },
      reconnect: { minSeconds: 1, maxSeconds: 60 },
    });
  });

  it('tls needs a CA; tls settings without tls; a cert without its key: each at its line and column', () => {
    expect(load('    host: 10.0.0.5\n').diagnostics.map(formatDiagnostic)).toEqual([
      "gateway.yaml:11:5: error: siem.syslog.transport: transport tls (the default) needs tls.ca, the CA that signed the collector's certificate",
    ]);
    expect(load('    host: 10.0.0.5\n    transport: udp\n    tls:\n      ca: ca.pem\n      cert: gw.pem\n').diagnostics.map(formatDiagnostic)).toEqual([
      'gateway.yaml:14:7: error: siem.syslog.tls: tls settings apply only to transport tls, and transport is udp',
      'gateway.yaml:15:13: error: siem.syslog.tls.cert: tls.cert and tls.key go together',
    ]);
  });

  it('bad values are named', () => {
    const d = load('    host: "a host"\n    transport: relp\n    facility: local9\n    queueSize: 0\n    maxMessageBytes: 100\n    tls: { ca: ca.pem }\n').diagnostics;
    expect(d.map((x) => x.field)).toEqual(['siem.syslog.host', 'siem.syslog.transport', 'siem.syslog.facility', 'siem.syslog.queueSize', 'siem.syslog.maxMessageBytes']);
    expect(d.every((x) => x.line >= 11 && x.line <= 15)).toBe(true);
  });
});
