// The console's MQTT side: connect (MQTT 5, falling back to 3.1.1 when the broker refuses it),
// send a signed command to a gateway and wait for its answer. Answers come back on a topic of
// this client's own under the gateway's cmd-response tree: matched by correlation data (MQTT 5)
// or by the request's nonce (3.1.1, where the signed replyTo names the topic).
import { randomBytes, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { CommandResponsePayload, Topics, type CommandRequest } from '../mqtt/topics.js';
import { buildRequest, signRequest } from './sign.js';

export class ConsoleError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface ConnectOptions {
  /** 5 (default; falls back to 4 when the broker refuses it) or 4. */
  protocolVersion?: 4 | 5;
  /** Connection timeout, ms (default 10000). */
  timeoutMs?: number;
  /** TLS files (PEM) for mqtts:// brokers that want client certificates. */
  tls?: { ca?: string; cert?: string; key?: string };
  username?: string;
  password?: string;
  /** Reconnect after a lost connection (watch); commands do not. */
  reconnect?: boolean;
}

// [MQTT-3.2.2-5] 3.1.1 return code 1, 5.0 reason code 0x84: unsupported protocol version.
const UNSUPPORTED_VERSION = new Set([1, 0x84]);

/** Connects a console client; the session is clean and there is no reconnecting. */
export async function connectConsole(url: string, opts: ConnectOptions = {}): Promise<{ client: MqttClient; protocolVersion: 4 | 5 }> {
  const base: IClientOptions = {
    clientId: `wardgate-console-${randomBytes(6).toString('hex')}`,
    clean: true,
    reconnectPeriod: opts.reconnect ? 2000 : 0,
    connectTimeout: opts.timeoutMs ?? 10000,
  };
  if (opts.tls?.ca !== undefined) base.ca = readFileSync(opts.tls.ca);
  if (opts.tls?.cert !== undefined) base.cert = readFileSync(opts.tls.cert);
  if (opts.tls?.key !== undefined) base.key = readFileSync(opts.tls.key);
  if (opts.username !== undefined) base.username = opts.username;
  if (opts.password !== undefined) base.password = opts.password;
  const version = opts.protocolVersion ?? 5;
  const attempt = (v: 4 | 5) => mqtt.connectAsync(url, { ...base, protocolVersion: v }, false);
  try {
    try {
      return { client: await attempt(version), protocolVersion: version };
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (version === 5 && typeof code === 'number' && UNSUPPORTED_VERSION.has(code)) return { client: await attempt(4), protocolVersion: 4 };
      throw err;
    }
  } catch (err) {
    throw new ConsoleError('E_CONNECT', `cannot connect to ${url}: ${(err as Error).message}`);
  }
}

interface Pending {
  nonce: string | undefined;
  correlation: string | undefined;
  resolve: (r: CommandResponsePayload) => void;
}

export interface SendOptions {
  /** How long to wait for the answer, ms (default 10000). */
  timeoutMs?: number;
}

/** One console connection that sends commands and routes the answers back to their senders. */
export class CommandClient {
  private readonly tag = randomBytes(6).toString('hex');
  private readonly subscribed = new Map<string, Promise<unknown>>();
  private readonly pending = new Set<Pending>();

  private constructor(
    readonly client: MqttClient,
    readonly protocolVersion: 4 | 5,
  ) {
    client.on('message', (topic, payload, packet) => this.onMessage(topic, payload, packet.properties?.correlationData));
  }

  static async connect(url: string, opts: ConnectOptions = {}): Promise<CommandClient> {
    const { client, protocolVersion } = await connectConsole(url, opts);
    return new CommandClient(client, protocolVersion);
  }

  /** This client's answer topic for one gateway: within what the gateway answers to by default. */
  responseTopic(site: string, gateway: string): string {
    return `${new Topics(site, gateway).responses()}/${this.tag}`;
  }

  /** Builds, signs and sends a command; resolves with the gateway's answer. */
  async command(spec: { site: string; gateway: string; name: string; args?: Record<string, unknown>; key: KeyObject; keyId: string; ttlSeconds?: number }, opts: SendOptions = {}): Promise<CommandResponsePayload> {
    const replyTo = this.responseTopic(spec.site, spec.gateway);
    const request = signRequest(buildRequest({ ...spec, replyTo }), spec.key);
    return this.send(request, opts);
  }

  /** Sends a signed request as it is. */
  async send(request: CommandRequest, opts: SendOptions = {}): Promise<CommandResponsePayload> {
    const topic = new Topics(request.site, request.gateway).command(request.name);
    return this.sendRaw(topic, JSON.stringify(request), { site: request.site, gateway: request.gateway, nonce: request.nonce }, opts);
  }

  /**
   * Publishes any payload on a command topic and waits for the answer (tests send malformed and
   * tampered requests this way). An answer whose nonce could not be read is given to the only
   * request waiting without correlation data, if there is exactly one.
   */
  async sendRaw(topic: string, payload: string | Buffer, to: { site: string; gateway: string; nonce?: string }, opts: SendOptions = {}): Promise<CommandResponsePayload> {
    const responseTopic = this.responseTopic(to.site, to.gateway);
    await this.subscribe(responseTopic);
    const correlation = this.protocolVersion === 5 ? randomBytes(16) : undefined;
    const timeoutMs = opts.timeoutMs ?? 10000;
    let entry: Pending | undefined;
    let timer: NodeJS.Timeout | undefined;
    const answer = new Promise<CommandResponsePayload>((resolve, reject) => {
      entry = { nonce: to.nonce, correlation: correlation?.toString('hex'), resolve };
      this.pending.add(entry);
      timer = setTimeout(() => {
        reject(new ConsoleError('E_TIMEOUT', `no answer from ${to.site}/${to.gateway} within ${timeoutMs / 1000} s: is it online, and subscribed to its commands?`));
      }, timeoutMs);
    });
    void answer.catch(() => undefined); // a timeout during the publish is reported by the await below
    try {
      await this.client.publishAsync(topic, payload, {
        qos: 1,
        ...(correlation ? { properties: { responseTopic, correlationData: correlation } } : {}),
      });
      return await answer;
    } finally {
      clearTimeout(timer);
      if (entry) this.pending.delete(entry);
    }
  }

  private subscribe(topic: string): Promise<unknown> {
    let s = this.subscribed.get(topic);
    if (!s) {
      s = this.client.subscribeAsync(topic, { qos: 1 });
      this.subscribed.set(topic, s);
    }
    return s;
  }

  private onMessage(_topic: string, payload: Buffer, correlationData: Buffer | undefined): void {
    let parsed;
    try {
      parsed = CommandResponsePayload.safeParse(JSON.parse(payload.toString('utf8')));
    } catch {
      return;
    }
    if (!parsed.success) return;
    const r = parsed.data;
    const hex = correlationData?.toString('hex');
    let match: Pending | undefined;
    for (const p of this.pending) {
      if (hex !== undefined && p.correlation === hex) match = p;
      else if (hex === undefined && r.nonce !== null && p.nonce === r.nonce) match = p;
    }
    if (!match && hex === undefined && r.nonce === null) {
      const candidates = [...this.pending].filter((p) => p.correlation === undefined);
      if (candidates.length === 1) match = candidates[0];
    }
    if (!match) return;
    this.pending.delete(match);
    match.resolve(r);
  }

  async end(): Promise<void> {
    await this.client.endAsync();
  }
}

export interface SendCommandOptions extends ConnectOptions, SendOptions {
  ttlSeconds?: number;
}

/** Connects, sends one signed command, returns the answer, disconnects. */
export async function sendCommand(
  url: string,
  site: string,
  gateway: string,
  name: string,
  args: Record<string, unknown>,
  key: KeyObject,
  keyId: string,
  opts: SendCommandOptions = {},
): Promise<CommandResponsePayload> {
  const c = await CommandClient.connect(url, opts);
  try {
    return await c.command({ site, gateway, name, args, key, keyId, ...(opts.ttlSeconds !== undefined ? { ttlSeconds: opts.ttlSeconds } : {}) }, opts);
  } finally {
    await c.end();
  }
}
