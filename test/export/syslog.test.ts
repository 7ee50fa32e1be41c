// The syslog sink against a real collector: rsyslogd on loopback, over UDP, TCP and TLS (gtls,
// client certificates from a throwaway CA). rsyslog's own parser must find our fields where
// RFC 5424 puts them (%pri%, %msgid%, %app-name%, %structured-data%, ...); a collector that is
// down must cost the agent nothing but a bounded queue; a restarted one must get what waited.
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { hostname } from 'node:os';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SyslogSchema, type SyslogConfig } from '../../agent/config/schema.js';
import { createSyslogSink, SyslogError, type SyslogLogger, type SyslogSink } from '../../agent/export/syslog.js';
import type { EventPayload, Severity } from '../../agent/mqtt/topics.js';
import { VERSION } from '../../agent/version.js';
import { freePort, makePki, removePki, until, type Pki } from '../mqtt/brokers.js';
import { gtlsMissing, killAll, rsyslogMissing, startRsyslog, type Received, type Rsyslog } from './rsyslog.js';

if (rsyslogMissing) console.warn(`[test/export/syslog.test.ts] skipped: ${rsyslogMissing}`);
else if (gtlsMissing) console.warn(`[test/export/syslog.test.ts] TLS cases skipped: ${gtlsMissing}`);

type Line = { level: 'info' | 'warn' | 'error'; obj: object; msg: string | undefined };
function recordingLog(): SyslogLogger & { lines: Line[] } {
  const lines: Line[] = [];
  return {
    lines,
    info: (obj, msg) => lines.push({ level: 'info', obj, msg }),
    warn: (obj, msg) => lines.push({ level: 'warn', obj, msg }),
    error: (obj, msg) => lines.push({ level: 'error', obj, msg }),
  };
}

function event(severity: Severity, extra: Partial<EventPayload> = {}): EventPayload {
  return {
    schema: 'wardgate/v1/event',
    schemaVersion: 1,
    site: 'st-1',
    gateway: 'gw-1',
    ts: new Date().toISOString(),
    id: randomUUID(),
    severity,
    kind: 'flow.denied',
    dedupKey: 'flow.denied:ct-01',
    message: 'denied tcp 10.10.1.10 -> ct-01:104',
    device: 'ct-01',
    ...extra,
  };
}

let work = '';
let pki: Pki | undefined;
let rsyslog: Rsyslog | undefined;
const sinks = new Set<SyslogSink>();

function sink(config: Record<string, unknown>, log = recordingLog()): SyslogSink & { logged: ReturnType<typeof recordingLog> } {
  const parsed: SyslogConfig = SyslogSchema.parse({ host: '127.0.0.1', reconnect: { minSeconds: 1, maxSeconds: 2 }, ...config });
  const s = createSyslogSink(parsed, log, { flushMs: 500 });
  sinks.add(s);
  return Object.assign(s, { logged: log });
}

/** The message rsyslog received for this event id. */
function arrived(r: Rsyslog, id: string): Received | undefined {
  return r.received().find((m) => m.raw.includes(id));
}

beforeAll(async () => {
  if (rsyslogMissing) return;
  work = mkdtempSync(join(tmpdir(), 'wg-siem-'));
  if (!gtlsMissing) pki = makePki();
  rsyslog = await startRsyslog({ dir: work, ...(pki ? { tls: { ca: pki.ca, cert: pki.serverCert, key: pki.serverKey, permittedPeer: 'gw-1' } } : {}) });
});

afterEach(async () => {
  await Promise.all([...sinks].map((s) => s.close()));
  sinks.clear();
});

afterAll(async () => {
  await Promise.all([...sinks].map((s) => s.close()));
  await killAll();
  if (pki) removePki(pki);
  if (work) rmSync(work, { recursive: true, force: true });
});

const TRANSPORTS = ['udp', 'tcp', 'tls'] as const;

describe.skipIf(rsyslogMissing !== undefined)('syslog export to rsyslog', () => {
  describe.each(TRANSPORTS)('RFC 5424 over %s', (transport) => {
    const tlsConfig = () => ({ tls: { ca: pki?.ca, cert: pki?.clientCert, key: pki?.clientKey } });
    const portOf = (r: Rsyslog) => (transport === 'udp' ? r.udpPort : transport === 'tcp' ? r.tcpPort : r.tlsPort);

    it.skipIf(transport === 'tls' && gtlsMissing !== undefined)('rsyslog finds every field where RFC 5424 puts it', async () => {
      const r = rsyslog as Rsyslog;
      const s = sink({ transport, port: portOf(r), ...(transport === 'tls' ? tlsConfig() : {}) });
      const nasty = event('warning', {
        message: 'denied "x" \\ ] é | = 😀',
        dedupKey: 'flow.denied:ct-01:"quoted"]\\',
        data: { peer: '10.10.1.10', dport: 104, 'odd key=]': 'a]b"c\\d', nested: { list: [1, 2] } },
      });
      s.start();
      s.send(nasty);
      const m = await until(`the ${transport} message`, () => arrived(r, nasty.id) !== undefined).then(() => arrived(r, nasty.id) as Received);
      expect(m.input).toBe(transport);
      expect(m).toMatchObject({ pri: '164', facility: 'local4', severity: 'warning', version: '1', hostname: 'gw-1', app: 'wardgate', procid: String(process.pid), msgid: 'flow.denied' });
      expect(m.timereported).toBe(nasty.ts);
      // rsyslog's own structured-data parser gets our values back, unescaped
      expect(m.parsed['wardgate@32473']).toEqual({ id: nasty.id, site: 'st-1', gateway: 'gw-1', kind: 'flow.denied', severity: 'warning', dedupKey: nasty.dedupKey, device: 'ct-01' });
      expect(m.parsed['wardgateData@32473']).toEqual({ peer: '10.10.1.10', dport: '104', odd_key__: 'a]b"c\\d', nested: '{"list":[1,2]}' });
      expect(m.parsed.meta).toEqual({ sequenceId: '1' });
      expect(m.msg).toBe(`\u{feff}${nasty.message}`);
      expect(s.stats()).toMatchObject({ transport, sent: 1, queued: 0, failed: 0, dropped: { info: 0, warning: 0, critical: 0 } });
    });

    it.skipIf(transport === 'tls' && gtlsMissing !== undefined)('every severity, in order, with its PRI; below minSeverity nothing', async () => {
      const r = rsyslog as Rsyslog;
      const s = sink({ transport, port: portOf(r), facility: 'local0', minSeverity: 'warning', ...(transport === 'tls' ? tlsConfig() : {}) });
      s.start();
      const events = [event('critical'), event('info'), event('warning'), event('critical')];
      for (const e of events) s.send(e);
      await until('three messages', () => [events[0], events[2], events[3]].every((e) => arrived(r, (e as EventPayload).id)));
      expect(arrived(r, (events[1] as EventPayload).id)).toBeUndefined();
      expect([events[0], events[2], events[3]].map((e) => arrived(r, (e as EventPayload).id)?.pri)).toEqual(['130', '132', '130']);
      const seq = [events[0], events[2], events[3]].map((e) => arrived(r, (e as EventPayload).id)?.parsed.meta?.sequenceId);
      expect(seq).toEqual(['1', '2', '3']);
      expect(s.stats()).toMatchObject({ sent: 3, filtered: 1 });
    });
  });

  it('CEF over tcp: MSG is the CEF line, the OS host name as HOSTNAME', async () => {
    const r = rsyslog as Rsyslog;
    const s = sink({ transport: 'tcp', port: r.tcpPort, format: 'cef', hostname: 'os' });
    const e = event('critical', { message: 'denied | a=b', data: { peer: '10.10.1.10', direction: 'inbound', dport: 104, proto: 'tcp', verdict: 'denied', note: 'x=y\nz' } });
    s.start();
    s.send(e);
    await until('the CEF message', () => arrived(r, e.id) !== undefined);
    const m = arrived(r, e.id) as Received;
    expect(m).toMatchObject({ pri: '162', hostname: hostname(), app: 'wardgate', msgid: 'flow.denied', sd: '[meta sequenceId="1"]' });
    expect(m.msg).toBe(
      `CEF:0|wardgate|wardgate|${VERSION}|flow.denied|denied \\| a=b|10|rt=${Date.parse(e.ts)} dvchost=${hostname()} externalId=${e.id} ` +
        'cs1Label=site cs1=st-1 cs2Label=device cs2=ct-01 cs3Label=dedupKey cs3=flow.denied:ct-01 src=10.10.1.10 dpt=104 proto=tcp act=denied deviceDirection=0 ' +
        'cs4Label=data cs4={"peer":"10.10.1.10","note":"x\\=y\\\\nz"}', // JSON's \n, its backslash escaped
    );
  });

  it('udp: a message cut to maxMessageBytes is still one rsyslog parses, marked truncated', async () => {
    const r = rsyslog as Rsyslog;
    const s = sink({ transport: 'udp', port: r.udpPort, maxMessageBytes: 600 });
    const e = event('warning', { message: 'é'.repeat(2000) });
    s.start();
    s.send(e);
    await until('the cut message', () => arrived(r, e.id) !== undefined);
    const m = arrived(r, e.id) as Received;
    expect(Buffer.byteLength(m.raw)).toBeLessThanOrEqual(600);
    expect(m.parsed['wardgate@32473']).toMatchObject({ id: e.id, truncated: 'true' });
    expect(m.msg).toMatch(/^\u{feff}(é)+$/u);
    expect(s.stats()).toMatchObject({ truncated: 1, sent: 1 });
  });

  describe.skipIf(gtlsMissing !== undefined)('TLS checks', () => {
    const tls = (over: Record<string, unknown>) => ({ transport: 'tls', port: rsyslog?.tlsPort, tls: { ca: pki?.ca, cert: pki?.clientCert, key: pki?.clientKey, ...over } });

    it('serverName: a certificate for localhost passes, one that is not for the name asked is refused', async () => {
      const r = rsyslog as Rsyslog;
      const good = sink(tls({ serverName: 'localhost' }));
      const bad = sink(tls({ serverName: 'siem.example.org' }));
      const e1 = event('critical');
      const e2 = event('critical');
      good.start();
      bad.start();
      good.send(e1);
      bad.send(e2);
      await until('the message with the right name', () => arrived(r, e1.id) !== undefined);
      await until('the refusal', () => bad.stats().lastError !== null);
      expect(bad.stats().lastError).toMatch(/siem\.example\.org/);
      expect(bad.stats()).toMatchObject({ connected: false, connects: 0, queued: 1, sent: 0 });
      expect(bad.logged.lines.filter((l) => l.level === 'warn').map((l) => l.msg)).toEqual(['syslog collector unreachable; events are queued in memory']);
      expect(arrived(r, e2.id)).toBeUndefined();
    });

    it('a collector whose certificate another CA signed is refused', async () => {
      const r = rsyslog as Rsyslog;
      const s = sink(tls({ ca: join((pki as Pki).dir, 'other-ca.crt') }));
      const e = event('critical');
      s.start();
      s.send(e);
      await until('the refusal', () => s.stats().lastError !== null);
      expect(s.stats().lastError).toMatch(/certificate/i);
      expect(s.stats()).toMatchObject({ connects: 0, queued: 1 });
      await new Promise((res) => setTimeout(res, 300));
      expect(arrived(r, e.id)).toBeUndefined();
    });

    it('without the client certificate a collector that asks for one gets nothing', async () => {
      const r = rsyslog as Rsyslog;
      const s = sink({ transport: 'tls', port: r.tlsPort, tls: { ca: pki?.ca } });
      const e = event('critical');
      s.start();
      s.send(e);
      await until('a refused connection', () => s.stats().lastError !== null, 10000);
      await new Promise((res) => setTimeout(res, 500));
      expect(arrived(r, e.id)).toBeUndefined();
    });

    it('unreadable TLS files fail start with their name, before any connection', () => {
      const s = sink(tls({ ca: join(work, 'no-such-ca.pem') }));
      expect(() => s.start()).toThrow(SyslogError);
      expect(() => s.start()).toThrow(/siem\.syslog\.tls\.ca: cannot read .*no-such-ca\.pem: ENOENT/);
    });
  });

  it('a collector that is down: send() returns at once, the queue keeps queueSize messages, the oldest info first out; they arrive, in order, when it comes up', async () => {
    const port = await freePort();
    const s = sink({ transport: 'tcp', port, queueSize: 5 });
    s.start();
    const criticals = [event('critical'), event('critical'), event('critical')];
    const warnings = [event('warning'), event('warning')];
    const t = Date.now();
    for (const e of criticals) s.send(e);
    for (let i = 0; i < 10000; i++) s.send(event('info'));
    for (const e of warnings) s.send(e);
    s.send(event('info'));
    expect(Date.now() - t).toBeLessThan(3000);
    expect(s.stats()).toMatchObject({ connected: false, queued: 5, sent: 0, dropped: { info: 10001, warning: 0, critical: 0 } });
    await until('a failed connection', () => s.stats().lastError !== null);
    expect(s.stats().lastError).toMatch(/ECONNREFUSED/);
    // The outage is logged once, not at every retry.
    await new Promise((res) => setTimeout(res, 2500));
    expect(s.logged.lines.filter((l) => l.level === 'warn')).toHaveLength(1);

    const late = await startRsyslog({ dir: work, tcp: port });
    try {
      const kept = [...criticals, ...warnings];
      await until('the queued messages', () => kept.every((e) => arrived(late, e.id)), 15000);
      const got = late.received();
      expect(got.map((m) => m.parsed['wardgate@32473']?.id)).toEqual(kept.map((e) => e.id));
      // The gap in sequenceId shows the collector what was dropped.
      expect(got.map((m) => m.parsed.meta?.sequenceId)).toEqual(['1', '2', '3', '10004', '10005']);
      expect(s.stats()).toMatchObject({ connected: true, connects: 1, queued: 0, sent: 5 });
      expect(s.logged.lines.map((l) => l.msg)).toEqual(['syslog collector unreachable; events are queued in memory', 'syslog collector reachable again']);
    } finally {
      await late.stop();
    }
  });

  it('udp with nobody listening: datagrams are lost and counted, nothing throws', async () => {
    const port = await freePort();
    const s = sink({ transport: 'udp', port });
    s.start();
    for (let i = 0; i < 5; i++) {
      s.send(event('warning'));
      await new Promise((res) => setTimeout(res, 50));
    }
    await until('an ICMP port unreachable', () => s.stats().failed > 0);
    expect(s.stats()).toMatchObject({ queued: 0 });
    expect(s.logged.lines.filter((l) => l.level === 'warn').map((l) => l.msg)).toEqual(['syslog collector does not take datagrams; sending on']);
  });

  describe.each(['tcp', 'tls'] as const)('%s: the collector restarts', (transport) => {
    it.skipIf(transport === 'tls' && gtlsMissing !== undefined)('what is sent while it is down waits, and arrives after the reconnection', async () => {
      const own = await startRsyslog({ dir: work, ...(pki ? { tls: { ca: pki.ca, cert: pki.serverCert, key: pki.serverKey, permittedPeer: 'gw-1' } } : {}) });
      try {
        const port = transport === 'tcp' ? own.tcpPort : own.tlsPort;
        const s = sink({ transport, port, ...(transport === 'tls' ? { tls: { ca: pki?.ca, cert: pki?.clientCert, key: pki?.clientKey } } : {}) });
        s.start();
        const before = event('info');
        s.send(before);
        await until('the first message', () => arrived(own, before.id) !== undefined);
        await own.stop('SIGKILL');
        await until('the sink to see the collector gone', () => !s.stats().connected);
        const during = [event('critical'), event('warning'), event('info')];
        for (const e of during) s.send(e);
        expect(s.stats()).toMatchObject({ queued: 3 });
        await own.start();
        await until('the messages sent while it was down', () => during.every((e) => arrived(own, e.id)), 15000);
        expect(own.received().slice(-3).map((m) => m.parsed['wardgate@32473']?.id)).toEqual(during.map((e) => e.id));
        expect(s.stats()).toMatchObject({ connected: true, connects: 2, queued: 0, sent: 4, dropped: { info: 0, warning: 0, critical: 0 } });
      } finally {
        await own.stop();
      }
    });
  });

  it('close() hands over what is queued, then stops; later sends are ignored', async () => {
    const r = rsyslog as Rsyslog;
    const s = sink({ transport: 'tcp', port: r.tcpPort });
    const events = Array.from({ length: 50 }, () => event('info'));
    for (const e of events) s.send(e);
    s.start();
    await s.close();
    await until('all 50', () => events.every((e) => arrived(r, e.id)));
    s.send(event('critical'));
    expect(s.stats()).toMatchObject({ sent: 50, queued: 0, connected: false });
  });
});
