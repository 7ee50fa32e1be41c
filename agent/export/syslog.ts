// The SIEM export: wardgate events as RFC 5424 syslog messages (or CEF lines in them) to one
// collector over UDP (RFC 5426), TCP (RFC 6587) or TLS (RFC 5425). docs/siem.md has the formats.
//
// It must never hold the agent up: send() formats and queues, and returns; a bounded memory
// queue covers a collector that is down (the MQTT outbox, on disk, is the path that loses
// nothing); sockets reconnect by themselves with backoff; every socket error is caught here.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { lookup } from 'node:dns';
import { readFileSync } from 'node:fs';
import { connect as netConnect, isIP, type Socket } from 'node:net';
import { hostname as osHostname } from 'node:os';
import { resolve } from 'node:path';
import { checkServerIdentity, connect as tlsConnect, type TLSSocket } from 'node:tls';
import type { SyslogConfig } from '../config/schema.js';
import type { EventPayload, Severity } from '../mqtt/topics.js';
import { VERSION } from '../version.js';
import { formatCef } from './cef.js';
import { SEVERITY_RANK, SeverityQueue } from './queue.js';
import { formatRfc5424, type Facility } from './rfc5424.js';

export interface SyslogLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export class SyslogError extends Error {
  constructor(
    readonly code: 'E_SYSLOG_TLS_FILES' | 'E_SYSLOG_OPTIONS',
    message: string,
  ) {
    super(message);
    this.name = 'SyslogError';
  }
}

export interface SyslogStats {
  transport: SyslogConfig['transport'];
  /** tcp/tls: a connection is up; udp: the socket is connected (which says nothing of the collector). */
  connected: boolean;
  /** Messages waiting in memory. */
  queued: number;
  /** Handed to the kernel: written to the connection, or sent as a datagram. */
  sent: number;
  /** Pushed out of a full queue, by severity. */
  dropped: Record<Severity, number>;
  /** Below minSeverity: not sent, by design. */
  filtered: number;
  /** Cut to maxMessageBytes. */
  truncated: number;
  /** udp: send errors and ICMP port-unreachable reports (each means a datagram was lost). */
  failed: number;
  /** Connections made (tcp, tls) since start. */
  connects: number;
  lastError: string | null;
}

// --- formatting ---------------------------------------------------------------------------

export interface FormatOptions {
  format: SyslogConfig['format'];
  facility: Facility;
  hostname: string;
  procid: number | string;
  version: string;
  sequenceId: number;
  maxBytes: number;
}

function build(event: EventPayload, o: FormatOptions, withoutData: boolean, truncated: boolean): Buffer {
  if (o.format === 'rfc5424') return formatRfc5424(event, { ...o, withoutData, truncated });
  const cef = formatCef(event, { hostname: o.hostname, version: o.version, withoutData, truncated });
  // The CEF line goes in MSG without a BOM (RFC 5424 6.4 allows MSG-ANY): CEF receivers match
  // "CEF:" at the start of MSG. The structured data carries only meta sequenceId.
  return formatRfc5424({ ...event, message: cef, data: undefined }, { ...o, bom: false, eventElement: false });
}

/** The last UTF-8 character boundary at or before `n` (a cut never splits a character). */
function utf8Boundary(b: Buffer, n: number): number {
  let i = Math.min(n, b.length);
  while (i > 0 && i < b.length && ((b[i] ?? 0) & 0xc0) === 0x80) i--;
  return i;
}

/**
 * One message that fits in maxBytes: whole if it fits; else the event's text is cut (the
 * longest prefix that fits, found by bisection), first with the data, then without it; else,
 * when even the header and the event's own fields are too long, the bytes are cut.
 */
export function formatEvent(event: EventPayload, o: FormatOptions): { bytes: Buffer; truncated: boolean } {
  const whole = build(event, o, false, false);
  if (whole.length <= o.maxBytes) return { bytes: whole, truncated: false };
  const chars = Array.from(event.message);
  for (const withoutData of [false, true]) {
    const attempt = (n: number) => build({ ...event, message: chars.slice(0, n).join('') }, o, withoutData, true);
    if (attempt(0).length > o.maxBytes) continue;
    let lo = 0;
    let hi = chars.length;
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      if (attempt(mid).length <= o.maxBytes) lo = mid;
      else hi = mid - 1;
    }
    return { bytes: attempt(lo), truncated: true };
  }
  const last = build({ ...event, message: '' }, o, true, true);
  return { bytes: last.subarray(0, utf8Boundary(last, o.maxBytes)), truncated: true };
}

/** Octet-counting framing (RFC 6587 3.4.1, RFC 5425 4.3): MSG-LEN SP SYSLOG-MSG. */
export function frameOctetCounted(msg: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`${msg.length} `, 'ascii'), msg]);
}

export function defaultPort(transport: SyslogConfig['transport']): number {
  return transport === 'tls' ? 6514 : 514;
}

export function defaultMaxBytes(transport: SyslogConfig['transport']): number {
  return transport === 'udp' ? 2048 : 8192;
}

/** Exponential backoff with full jitter, at least half the minimum. */
export function backoffMs(attempt: number, minSeconds: number, maxSeconds: number, random = Math.random): number {
  const ceiling = Math.min(maxSeconds * 1000, minSeconds * 1000 * 2 ** Math.min(attempt, 30));
  return Math.max(minSeconds * 500, Math.round(random() * ceiling));
}

// --- the sink -----------------------------------------------------------------------------

export interface SyslogSinkOptions {
  /** Where relative tls.ca/cert/key paths start: the gateway file's directory. */
  baseDir?: string;
  /** Device Version in CEF headers. */
  version?: string;
  /** How long close() tries to hand the queue to the collector before giving up. */
  flushMs?: number;
  connectTimeoutMs?: number;
}

interface TlsFiles {
  ca: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

type State = 'idle' | 'connecting' | 'connected' | 'waiting' | 'closed';

export class SyslogSink {
  readonly name = 'siem';
  private readonly queue: SeverityQueue;
  private readonly port: number;
  private readonly maxBytes: number;
  private readonly hostnameOs = osHostname();
  private state: State = 'idle';
  private socket: Socket | TLSSocket | undefined;
  private udp: UdpSocket | undefined;
  private udpInFlight = 0;
  private blocked = false;
  private attempt = 0;
  private retry: NodeJS.Timeout | undefined;
  private sequenceId = 0;
  /** Set while the collector is unreachable, so that an outage is logged once, not per retry. */
  private outage = false;
  private counters = { sent: 0, filtered: 0, truncated: 0, failed: 0, connects: 0, dropped: { info: 0, warning: 0, critical: 0 } as Record<Severity, number> };
  private lastError: string | null = null;
  private idle: (() => void)[] = [];

  constructor(
    readonly config: SyslogConfig,
    private readonly log: SyslogLogger,
    private readonly opts: SyslogSinkOptions = {},
  ) {
    this.queue = new SeverityQueue(config.queueSize);
    this.port = config.port ?? defaultPort(config.transport);
    this.maxBytes = config.maxMessageBytes ?? defaultMaxBytes(config.transport);
    if (config.transport === 'tls' && !config.tls) throw new SyslogError('E_SYSLOG_OPTIONS', 'transport tls needs tls.ca');
  }

  private readTls(): TlsFiles {
    const t = this.config.tls;
    if (!t) throw new SyslogError('E_SYSLOG_OPTIONS', 'transport tls needs tls.ca');
    const read = (what: string, path: string) => {
      const full = resolve(this.opts.baseDir ?? '.', path);
      try {
        return readFileSync(full);
      } catch (err) {
        throw new SyslogError('E_SYSLOG_TLS_FILES', `siem.syslog.tls.${what}: cannot read ${full}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
    };
    return { ca: read('ca', t.ca), ...(t.cert !== undefined ? { cert: read('cert', t.cert) } : {}), ...(t.key !== undefined ? { key: read('key', t.key) } : {}) };
  }

  /** Reads the TLS files (a missing one throws, so the agent reports it at start) and connects in the background. */
  start(): void {
    if (this.state !== 'idle') return;
    if (this.config.transport === 'tls') this.readTls();
    this.connect();
  }

  /** Formats and queues one event (dropped when below minSeverity); never throws, never waits. */
  send(event: EventPayload): void {
    if (this.state === 'closed') return;
    try {
      if (SEVERITY_RANK[event.severity] < SEVERITY_RANK[this.config.minSeverity]) {
        this.counters.filtered++;
        return;
      }
      // meta sequenceId runs 1 to 2147483647 and wraps to 1 (RFC 5424 7.3.1).
      this.sequenceId = this.sequenceId >= 2147483647 ? 1 : this.sequenceId + 1;
      const { bytes, truncated } = formatEvent(event, {
        format: this.config.format,
        facility: this.config.facility,
        hostname: this.hostname(event),
        procid: process.pid,
        version: this.opts.version ?? VERSION,
        sequenceId: this.sequenceId,
        maxBytes: this.maxBytes,
      });
      if (truncated) this.counters.truncated++;
      const dropped = this.queue.push({ severity: event.severity, bytes });
      if (dropped !== undefined) this.counters.dropped[dropped]++;
      this.pump();
    } catch (err) {
      this.failure(err as Error);
    }
  }

  stats(): SyslogStats {
    return {
      transport: this.config.transport,
      connected: this.state === 'connected',
      queued: this.queue.length,
      sent: this.counters.sent,
      dropped: { ...this.counters.dropped },
      filtered: this.counters.filtered,
      truncated: this.counters.truncated,
      failed: this.counters.failed,
      connects: this.counters.connects,
      lastError: this.lastError,
    };
  }

  private hostname(event: EventPayload): string {
    if (this.config.hostname === 'gateway') return event.gateway;
    if (this.config.hostname === 'os') return this.hostnameOs;
    return this.config.hostname;
  }

  private failure(err: Error): void {
    this.lastError = err.message;
    this.log.error({ err: err.message }, 'syslog export: an event could not be formatted');
  }

  // --- connections ---

  private connect(): void {
    this.state = 'connecting';
    if (this.config.transport === 'udp') return this.connectUdp();
    let socket: Socket | TLSSocket;
    try {
      socket = this.config.transport === 'tls' ? this.connectTls() : netConnect({ host: this.config.host, port: this.port });
    } catch (err) {
      this.lost((err as Error).message);
      return;
    }
    this.socket = socket;
    const ready = this.config.transport === 'tls' ? 'secureConnect' : 'connect';
    socket.setTimeout(this.opts.connectTimeoutMs ?? 10000, () => socket.destroy(new Error('connection timed out')));
    socket.once(ready, () => {
      if (this.state !== 'connecting' || this.socket !== socket) return;
      socket.setTimeout(0);
      // An idle link to a collector behind a firewall would otherwise be cut silently.
      socket.setKeepAlive(true, 30000);
      this.state = 'connected';
      this.attempt = 0;
      this.counters.connects++;
      this.log.info({ host: this.config.host, port: this.port, transport: this.config.transport, queued: this.queue.length }, this.outage ? 'syslog collector reachable again' : 'syslog collector connected');
      this.outage = false;
      this.pump();
    });
    let failed: string | undefined;
    socket.on('error', (err: Error) => {
      failed = err.message;
    });
    // Collectors do not talk back on a syslog connection; reading keeps the socket flowing.
    socket.on('data', () => {});
    socket.once('close', () => {
      if (this.socket === socket) this.socket = undefined;
      this.blocked = false;
      this.lost(failed ?? 'the collector closed the connection');
    });
  }

  private connectTls(): TLSSocket {
    const files = this.readTls();
    const expected = this.config.tls?.serverName ?? this.config.host;
    return tlsConnect({
      host: this.config.host,
      port: this.port,
      ca: files.ca,
      ...(files.cert ? { cert: files.cert } : {}),
      ...(files.key ? { key: files.key } : {}),
      minVersion: 'TLSv1.2',
      rejectUnauthorized: true,
      // SNI carries a name, never an address (RFC 6066 3).
      ...(isIP(expected) === 0 ? { servername: expected } : {}),
      checkServerIdentity: (_host, cert) => checkServerIdentity(expected, cert),
    });
  }

  private connectUdp(): void {
    // Resolved here so that the socket's family is the address's, whatever the host name gives.
    lookup(this.config.host, (err, address, family) => {
      if (this.state !== 'connecting') return;
      if (err) return this.lost(err.message);
      const udp = createSocket(family === 6 ? 'udp6' : 'udp4');
      this.udp = udp;
      // A connected UDP socket hears the ICMP port-unreachable of an earlier datagram as an error.
      udp.on('error', (e) => {
        this.counters.failed++;
        this.lastError = e.message;
        if (!this.outage) this.log.warn({ host: this.config.host, port: this.port, err: e.message }, 'syslog collector does not take datagrams; sending on');
        this.outage = true;
      });
      udp.connect(this.port, address, () => {
        if (this.udp !== udp || this.state !== 'connecting') return;
        this.state = 'connected';
        this.counters.connects++;
        this.pump();
      });
    });
  }

  private lost(reason: string): void {
    if (this.state === 'closed') return this.settle();
    this.lastError = reason;
    const delay = backoffMs(this.attempt++, this.config.reconnect.minSeconds, this.config.reconnect.maxSeconds);
    if (!this.outage) this.log.warn({ host: this.config.host, port: this.port, transport: this.config.transport, err: reason, retryMs: delay }, 'syslog collector unreachable; events are queued in memory');
    this.outage = true;
    this.state = 'waiting';
    clearTimeout(this.retry);
    this.retry = setTimeout(() => {
      if (this.state === 'waiting') this.connect();
    }, delay);
    this.retry.unref();
    this.settle();
  }

  /** Hands queued messages to the socket until it pushes back or the queue is empty. */
  private pump(): void {
    if (this.state !== 'connected') return;
    if (this.udp) {
      const udp = this.udp;
      for (let m = this.queue.shift(); m !== undefined; m = this.queue.shift()) {
        this.udpInFlight++;
        udp.send(m.bytes, (err) => {
          this.udpInFlight--;
          if (err) {
            this.counters.failed++;
            this.lastError = err.message;
          } else this.counters.sent++;
          this.settle();
        });
      }
      return;
    }
    const socket = this.socket;
    if (!socket || this.blocked) return;
    for (let m = this.queue.shift(); m !== undefined; m = this.queue.shift()) {
      this.counters.sent++;
      if (!socket.write(frameOctetCounted(m.bytes))) {
        this.blocked = true;
        socket.once('drain', () => {
          this.blocked = false;
          this.pump();
        });
        return;
      }
    }
    this.settle();
  }

  /** Wakes close() when there is nothing left to hand over. */
  private settle(): void {
    if (this.queue.length > 0 && (this.state === 'connected' || this.state === 'connecting')) return;
    if (this.udpInFlight > 0 || this.blocked) return;
    for (const f of this.idle.splice(0)) f();
  }

  /**
   * Stops: gives the collector up to flushMs (default 2 s) to take what is queued, then closes
   * the connection. What is still queued then is lost (and counted as dropped).
   */
  async close(): Promise<void> {
    if (this.state === 'closed') return;
    // Only a connection that is up or on its way gets the chance; a collector known to be down does not.
    const live = this.state === 'connected' || this.state === 'connecting';
    if (live && (this.queue.length > 0 || this.udpInFlight > 0 || this.blocked)) {
      await new Promise<void>((done) => {
        const t = setTimeout(done, this.opts.flushMs ?? 2000);
        this.idle.push(() => {
          clearTimeout(t);
          done();
        });
        this.pump();
      });
    }
    clearTimeout(this.retry);
    this.state = 'closed';
    for (const m of this.drain()) this.counters.dropped[m]++;
    const socket = this.socket;
    const udp = this.udp;
    this.socket = undefined;
    this.udp = undefined;
    await Promise.all([
      socket &&
        new Promise<void>((done) => {
          const t = setTimeout(() => {
            socket.destroy();
            done();
          }, 1000);
          socket.once('close', () => {
            clearTimeout(t);
            done();
          });
          socket.end();
        }),
      udp && new Promise<void>((done) => udp.close(() => done())),
    ]);
  }

  stop(): Promise<void> {
    return this.close();
  }

  private drain(): Severity[] {
    const out: Severity[] = [];
    for (let m = this.queue.shift(); m !== undefined; m = this.queue.shift()) out.push(m.severity);
    return out;
  }
}

/**
 * The SIEM sink of gateway.yaml's siem.syslog. Not connected until start(); send() before then
 * queues. `baseDir` is the gateway file's directory (relative TLS paths start there).
 */
export function createSyslogSink(config: SyslogConfig, log: SyslogLogger, opts: SyslogSinkOptions = {}): SyslogSink {
  return new SyslogSink(config, log, opts);
}
