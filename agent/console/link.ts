// A long-lived console connection to one site's broker, for the Node-RED nodes in flows/nodes
// (and any other always-on console): it follows the site's status, health, device health and
// events, hands on only the messages that pass their schema (site.ts), and sends signed
// commands and pulls backups over the same connection (client.ts, pull.ts). Unlike the CLI, it
// never gives up: a broker that is down at start is tried again until stop().
import { EventEmitter } from 'node:events';
import { existsSync, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { readGatewayPublicKey } from '../backup/keys.js';
import { Topics, type CommandResponsePayload } from '../mqtt/topics.js';
import { CommandClient, ConsoleError, type ConnectOptions } from './client.js';
import { loadConsoleKey } from './keys.js';
import { checkPulled, pullBundle } from './pull.js';
import { parseSiteMessage, type SiteMessage } from './site.js';

export interface ConsoleLinkOptions {
  url: string;
  site: string;
  /** The console's private key (wardgate console keygen): read at each command, so it can be added later. */
  keyFile?: string;
  /** Default: the key file's name without .key, as the CLI does. */
  keyId?: string;
  username?: string;
  password?: string;
  tls?: ConnectOptions['tls'];
  protocolVersion?: 4 | 5;
  /** First and longest wait between connection attempts, ms (default 1000 and 30000). */
  retryMs?: { min: number; max: number };
}

export type LinkState = 'connecting' | 'connected' | 'disconnected' | 'stopped';

export interface PullRequest {
  gateway: string;
  device: string;
  version?: number;
  /** Where the bundle is written, as <site>_<gateway>_<device>_<UTC time>.wgb. */
  dir: string;
  /** The gateway's public key (gateway-ed25519.pub from a trusted source); without it, the bundle is not verified. */
  pubkeyFile?: string;
  chunkSize?: number;
  /** How long to wait for each answer, ms (default 10000). */
  timeoutMs?: number;
}

export interface PulledVersion {
  version: number;
  time: string;
  driver: string;
  format: string;
  source: string;
  size: number;
  sha256: string;
}

export interface PullReport {
  file: string;
  gateway: string;
  device: string;
  /** The bundle passed `wardgate backup verify` with the gateway's public key and is the one asked for. */
  verified: boolean;
  /** Why not, one line each (no public key, a failed check, another gateway's bundle, ...). */
  problems: string[];
  bundleSha256: string;
  totalBytes: number;
  /** The manifest summary of each version in the bundle (from the verified manifests; empty when unverified). */
  versions: PulledVersion[];
  /** Versions the gateway left out because they failed its own checks. */
  skipped: { file: string; check: string; message: string }[];
}

const SAFE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/**
 * Events: `message` (a SiteMessage that passed its checks, and its topic), `malformed` (topic,
 * reason: dropped), `state` (LinkState, detail).
 */
export class ConsoleLink extends EventEmitter<{ message: [SiteMessage, string]; malformed: [string, string]; state: [LinkState, string | undefined] }> {
  private client: CommandClient | undefined;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private attempt: Promise<void> | undefined;
  private waiters: { resolve: (c: CommandClient) => void; reject: (e: Error) => void }[] = [];
  state: LinkState = 'disconnected';

  constructor(readonly opts: ConsoleLinkOptions) {
    super();
    if (!/^(mqtts?|tcp|tls|wss?):\/\/[^\s]+$/.test(opts.url)) throw new ConsoleError('E_CONFIG', `broker URL "${opts.url}": mqtt://, mqtts://, ws:// or wss://`);
    if (!SAFE_NAME.test(opts.site)) throw new ConsoleError('E_CONFIG', `site "${opts.site}": letters, digits, ".", "_", "-"`);
  }

  private setState(state: LinkState, detail?: string): void {
    this.state = state;
    this.emit('state', state, detail);
  }

  start(): void {
    this.stopped = false;
    this.connect(this.opts.retryMs?.min ?? 1000);
  }

  private connect(delay: number): void {
    if (this.stopped) return;
    this.setState('connecting');
    this.attempt = (async () => {
      let c: CommandClient;
      try {
        c = await CommandClient.connect(this.opts.url, {
          reconnect: true,
          ...(this.opts.protocolVersion !== undefined ? { protocolVersion: this.opts.protocolVersion } : {}),
          ...(this.opts.username !== undefined ? { username: this.opts.username } : {}),
          ...(this.opts.password !== undefined ? { password: this.opts.password } : {}),
          ...(this.opts.tls !== undefined ? { tls: this.opts.tls } : {}),
        });
      } catch (err) {
        if (this.stopped) return;
        this.setState('disconnected', (err as Error).message);
        const max = this.opts.retryMs?.max ?? 30000;
        this.timer = setTimeout(() => this.connect(Math.min(delay * 2, max)), delay);
        return;
      }
      if (this.stopped) {
        await c.end();
        return;
      }
      this.client = c;
      // mqtt.js subscribes again by itself after a reconnection; retained status and device
      // health come back then, so a console that was cut off catches up.
      c.client.on('message', (topic, payload) => this.onMessage(topic, payload));
      c.client.on('connect', () => this.setState('connected'));
      c.client.on('close', () => {
        if (!this.stopped) this.setState('disconnected', 'connection lost; reconnecting');
      });
      try {
        await c.client.subscribeAsync(Topics.siteWildcards(this.opts.site), { qos: 1 });
      } catch (err) {
        this.setState('disconnected', `subscribe: ${(err as Error).message}`);
      }
      this.setState('connected');
      for (const w of this.waiters.splice(0)) w.resolve(c);
    })();
  }

  private onMessage(topic: string, payload: Buffer): void {
    if (topic.includes('/cmd-response')) return; // answers: the command client's
    const r = parseSiteMessage(this.opts.site, topic, payload);
    if (r.ok) this.emit('message', r.message, topic);
    else this.emit('malformed', topic, r.reason);
  }

  /** The connection, waiting for it up to timeoutMs when it is not there yet. */
  private ready(timeoutMs: number): Promise<CommandClient> {
    if (this.client) return Promise.resolve(this.client);
    if (this.stopped) return Promise.reject(new ConsoleError('E_STOPPED', 'the console link is stopped'));
    return new Promise((resolve, reject) => {
      const w = {
        resolve: (c: CommandClient) => {
          clearTimeout(t);
          resolve(c);
        },
        reject,
      };
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new ConsoleError('E_CONNECT', `not connected to ${this.opts.url} within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.waiters.push(w);
    });
  }

  private signer(): { key: ReturnType<typeof loadConsoleKey>; keyId: string } {
    const file = this.opts.keyFile;
    if (file === undefined || file === '') throw new ConsoleError('E_CONSOLE_KEY', 'no console key configured (WARDGATE_CONSOLE_KEY)');
    const keyId = this.opts.keyId ?? file.replace(/^.*\//, '').replace(/\.key$/, '');
    return { key: loadConsoleKey(file), keyId };
  }

  /** Sends one signed command; resolves with the gateway's answer, ok or not. */
  async command(gateway: string, name: string, args: Record<string, unknown> = {}, timeoutMs = 10000): Promise<CommandResponsePayload> {
    if (!SAFE_NAME.test(gateway)) throw new ConsoleError('E_USAGE', `gateway "${gateway}": letters, digits, ".", "_", "-"`);
    if (!/^[a-z][a-z0-9.-]{0,63}$/.test(name)) throw new ConsoleError('E_USAGE', `command "${name}": lower-case letters, digits, ".", "-"`);
    const { key, keyId } = this.signer();
    const c = await this.ready(timeoutMs);
    return c.command({ site: this.opts.site, gateway, name, args, key, keyId }, { timeoutMs });
  }

  /** Pulls a device's bundle (`wardgate console backup pull`), then verifies it (`wardgate backup verify`). */
  async pull(req: PullRequest): Promise<PullReport> {
    if (!SAFE_NAME.test(req.gateway)) throw new ConsoleError('E_USAGE', `gateway "${req.gateway}": letters, digits, ".", "_", "-"`);
    if (!SAFE_NAME.test(req.device)) throw new ConsoleError('E_USAGE', `device "${req.device}": letters, digits, ".", "_", "-"`);
    const timeoutMs = req.timeoutMs ?? 10000;
    // Read before the pull, as the CLI does: a bad key file should not cost a download. A key
    // that is not there is a gateway this console has no key for: pulled, and said unverified.
    const pubFile = req.pubkeyFile !== undefined && req.pubkeyFile !== '' ? resolve(req.pubkeyFile) : undefined;
    const pub = pubFile !== undefined && existsSync(pubFile) ? readGatewayPublicKey(pubFile) : undefined;
    const { key, keyId } = this.signer();
    const c = await this.ready(timeoutMs);
    const dir = resolve(req.dir);
    mkdirSync(dir, { recursive: true, mode: 0o750 });
    const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
    const out = join(dir, `${this.opts.site}_${req.gateway}_${req.device}_${stamp}.wgb`);
    const r = await pullBundle(c, {
      site: this.opts.site,
      gateway: req.gateway,
      key,
      keyId,
      timeoutMs,
      device: req.device,
      out,
      ...(req.version !== undefined ? { version: req.version } : {}),
      ...(req.chunkSize !== undefined ? { chunkSize: req.chunkSize } : {}),
    });
    const base = { file: out, gateway: req.gateway, device: req.device, bundleSha256: r.bundleSha256, totalBytes: r.totalBytes, skipped: r.skipped };
    if (pub === undefined) {
      const why = pubFile === undefined ? `no public key of ${this.opts.site}/${req.gateway} was given` : `no public key of ${this.opts.site}/${req.gateway} at ${pubFile}`;
      return { ...base, verified: false, problems: [why], versions: [] };
    }
    const check = await checkPulled(out, pub, { site: this.opts.site, gateway: req.gateway, device: req.device });
    const versions = check.report.versions
      .filter((v) => v.ok)
      .map(({ manifest: m }) => ({ version: m.version, time: m.time, driver: m.driver, format: m.format, source: m.source, size: m.plaintext.size, sha256: m.plaintext.sha256 }));
    return { ...base, verified: check.ok, problems: check.problems, versions };
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    for (const w of this.waiters.splice(0)) w.reject(new ConsoleError('E_STOPPED', 'the console link is stopped'));
    await this.attempt;
    const c = this.client;
    this.client = undefined;
    if (c) await c.end();
    this.setState('stopped');
  }
}
