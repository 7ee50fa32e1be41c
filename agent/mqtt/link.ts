// The link to the consoles: one MQTT session with a retained birth and last will, our own
// reconnect with exponential backoff and full jitter, MQTT 5 falling back to 3.1.1, TLS with
// client certificates, and the outbox drained in order, QoS 1, only after the birth.
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import mqtt, { type IClientOptions, type IClientPublishOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import type { MqttConfig } from '../config/schema.js';
import { envelope, Topics, type StatusPayload } from './topics.js';

/** What the link needs of the outbox (agent/mqtt/outbox.ts). */
export interface OutboxQueue {
  peek(max: number): { seq: number; topic: string; payload: string; retain: boolean }[];
  ack(seq: number): void;
}

export interface LinkLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface LinkOptions {
  config: MqttConfig;
  site: string;
  gateway: string;
  bootId: string;
  version: string;
  policyHash: () => string | null;
  outbox: OutboxQueue;
  log: LinkLogger;
  /** Username and password held in memory (the agent's embedded broker); override config.username / passwordFile. */
  credentials?: { username: string; password: string };
  /** Called for every message on cmd/<name>; the answer is published by the caller. */
  onCommand?: (topic: string, payload: Buffer, packet: IPublishPacket) => void;
}

export interface LinkEvents {
  online: [{ seq: number; protocolVersion: 4 | 5 }];
  offline: [{ reason: string }];
}

// [MQTT-3.2.2-5] v3.1.1 return code 1 and v5 reason code 0x84: unsupported protocol version.
const UNSUPPORTED_VERSION = new Set([1, 0x84]);

export function backoffMs(attempt: number, minSeconds: number, maxSeconds: number, random = Math.random): number {
  const ceiling = Math.min(maxSeconds * 1000, minSeconds * 1000 * 2 ** Math.min(attempt, 30));
  return Math.max(minSeconds * 1000 * 0.5, Math.round(random() * ceiling));
}

export class MqttLink extends EventEmitter<LinkEvents> {
  readonly topics: Topics;
  private client: MqttClient | undefined;
  private protocolVersion: 4 | 5;
  private seq = 0;
  private attempt = 0;
  private online = false;
  private stopped = true;
  private draining = false;
  private retry: NodeJS.Timeout | undefined;

  constructor(private readonly opts: LinkOptions) {
    super();
    this.topics = new Topics(opts.site, opts.gateway);
    this.protocolVersion = opts.config.protocolVersion;
  }

  get isOnline(): boolean {
    return this.online;
  }

  get sessionSeq(): number {
    return this.seq;
  }

  start(): void {
    this.stopped = false;
    this.connect();
  }

  private status(state: 'online' | 'offline', reason?: string, seq = this.seq): StatusPayload {
    return {
      ...envelope('status', this.opts.site, this.opts.gateway),
      state,
      bootId: this.opts.bootId,
      version: this.opts.version,
      policyHash: this.opts.policyHash(),
      seq,
      ...(reason !== undefined ? { reason } : {}),
    };
  }

  private clientOptions(sessionSeq: number): IClientOptions {
    const c = this.opts.config;
    const options: IClientOptions = {
      protocolVersion: this.protocolVersion,
      clientId: c.clientId ?? `wardgate-${this.opts.site}-${this.opts.gateway}`,
      keepalive: c.keepaliveSeconds,
      reconnectPeriod: 0, // ours: backoff with jitter
      // mqtt-packet's write cache holds 65,536 small buffers (about 6 MiB) for a rate a gateway
      // never reaches; a 1 GB board has better use for the memory.
      writeCache: false,
      connectTimeout: 10000,
      clean: true,
      will: {
        topic: this.topics.status(),
        // The will is fixed when the session opens; its ts is that moment.
        payload: Buffer.from(JSON.stringify(this.status('offline', 'connection lost (last will)', sessionSeq))),
        qos: 1,
        retain: true,
      },
    };
    if (c.username !== undefined) options.username = c.username;
    if (c.passwordFile !== undefined) options.password = readFileSync(c.passwordFile, 'utf8').trim();
    if (this.opts.credentials) {
      options.username = this.opts.credentials.username;
      options.password = this.opts.credentials.password;
    }
    if (c.tls) {
      options.ca = readFileSync(c.tls.ca);
      options.cert = readFileSync(c.tls.cert);
      options.key = readFileSync(c.tls.key);
      options.rejectUnauthorized = true;
      if (c.tls.servername !== undefined) options.servername = c.tls.servername;
    }
    return options;
  }

  private connect(): void {
    if (this.stopped) return;
    // The session number counts sessions the broker accepted; the will carries the number of
    // the session it belongs to.
    const sessionSeq = this.seq + 1;
    const client = mqtt.connect(this.opts.config.url, this.clientOptions(sessionSeq));
    this.client = client;
    let fellBack = false;
    client.on('connect', () => {
      this.seq = sessionSeq;
      void this.birth(client);
    });
    client.on('error', (err: Error & { code?: number }) => {
      if (this.protocolVersion === 5 && typeof err.code === 'number' && UNSUPPORTED_VERSION.has(err.code)) {
        this.opts.log.warn({ url: this.opts.config.url }, 'the broker does not speak MQTT 5: falling back to 3.1.1');
        this.protocolVersion = 4;
        fellBack = true;
        return;
      }
      this.opts.log.warn({ err: err.message }, 'MQTT error');
    });
    client.on('message', (topic, payload, packet) => {
      if (topic.startsWith(`${this.topics.base}/cmd/`)) this.opts.onCommand?.(topic, payload, packet);
    });
    client.on('close', () => {
      if (this.client !== client) return;
      if (this.online) {
        this.online = false;
        this.emit('offline', { reason: 'connection closed' });
      }
      client.end(true);
      this.client = undefined;
      if (this.stopped) return;
      const delay = fellBack ? 0 : backoffMs(this.attempt++, this.opts.config.reconnect.minSeconds, this.opts.config.reconnect.maxSeconds);
      this.retry = setTimeout(() => this.connect(), delay);
    });
  }

  private async birth(client: MqttClient): Promise<void> {
    try {
      await client.publishAsync(this.topics.status(), JSON.stringify(this.status('online')), { qos: 1, retain: true });
      await client.subscribeAsync(`${this.topics.base}/cmd/+`, { qos: 1 });
      if (this.client !== client) return;
      // The backoff resets only here: a broker that accepts the connection but refuses the
      // birth (an ACL, a certificate for another gateway) must not be retried every second.
      this.attempt = 0;
      this.online = true;
      this.opts.log.info({ seq: this.seq, protocolVersion: this.protocolVersion }, 'online');
      this.emit('online', { seq: this.seq, protocolVersion: this.protocolVersion });
      this.kick();
    } catch (err) {
      this.opts.log.warn({ err: (err as Error).message }, 'birth failed');
      client.end(true);
    }
  }

  /** Drains the outbox: call after every push. In order, QoS 1, acked after the PUBACK. */
  kick(): void {
    if (!this.online || this.draining) return;
    this.draining = true;
    void this.drain().finally(() => {
      this.draining = false;
    });
  }

  private async drain(): Promise<void> {
    for (;;) {
      const client = this.client;
      if (!client || !this.online) return;
      const batch = this.opts.outbox.peek(32);
      if (batch.length === 0) return;
      for (const m of batch) {
        try {
          await client.publishAsync(m.topic, m.payload, { qos: 1, retain: m.retain });
        } catch (err) {
          this.opts.log.warn({ err: (err as Error).message }, 'publish failed; the message stays in the outbox');
          return;
        }
        this.opts.outbox.ack(m.seq);
      }
    }
  }

  /** Publishes at once, outside the outbox: command answers, which are useless late. */
  async publishNow(topic: string, payload: string, options: IClientPublishOptions = {}): Promise<boolean> {
    const client = this.client;
    if (!client || !this.online) return false;
    await client.publishAsync(topic, payload, { qos: 1, ...options });
    return true;
  }

  get version(): 4 | 5 {
    return this.protocolVersion;
  }

  /** A clean shutdown: `offline` published by ourselves, then disconnect (no will sent). */
  async stop(reason = 'shutdown'): Promise<void> {
    this.stopped = true;
    if (this.retry) clearTimeout(this.retry);
    const client = this.client;
    if (!client) return;
    if (this.online) {
      const offline = client.publishAsync(this.topics.status(), JSON.stringify(this.status('offline', reason)), { qos: 1, retain: true });
      await Promise.race([offline.catch(() => undefined), new Promise((r) => setTimeout(r, 2000))]);
    }
    this.online = false;
    await client.endAsync();
    this.client = undefined;
  }
}
