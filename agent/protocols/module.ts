// The agent's side of the inline proxies: it starts the proxy process (worker.ts) in the
// enforcement namespace, gives it the targets of the committed policy, writes what it records
// to the application log (<stateDir>/app/app.ndjson), raises its alerts through a limiter, and
// keeps the fail-open devices' proxied ports in the ruleset's alive set while the proxies run.
// If the proxy process dies it is started again with a backoff; meanwhile a fail-open device's
// port bypasses the proxy (its alive element expires) and a fail-closed one refuses connections.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { GatewayConfig } from '../config/schema.js';
import type { Module } from '../module.js';
import { PROXY_ALIVE, TABLE, FAMILY } from '../policy/compile.js';
import type { Model } from '../policy/model.js';
import { formatAddress, type Family } from '../policy/net.js';
import { EventLimiter, type LimitedEvent } from '../util/event-limiter.js';
import { inNetns } from '../util/process.js';
import { RotatingFile } from '../util/rotating-file.js';
import { assignListenPorts } from './ports.js';
import type { FromWorker, ToWorker, WorkerTarget } from './worker.js';

/**
 * How long an alive element lives; refreshed every ALIVE_EVERY_MS while the proxies answer. The
 * proxy process reports every second; it counts as gone after ALIVE_SILENCE_MS without a word.
 * The silence allowed is generous because a false "gone" under load bypasses a fail-open
 * device's proxy, and a true one (a killed agent) waits out the element's timeout either way.
 */
const ALIVE_TIMEOUT_S = 8;
const ALIVE_EVERY_MS = 2000;
const ALIVE_SILENCE_MS = 6000;

export interface ProtocolsDeps {
  config: GatewayConfig;
  stateDir: string;
  /** The enforcement namespace: the proxies listen there, and the alive set is kept there. */
  netns: string | undefined;
  /** false with the dry-run backend: no ruleset, no alive set. */
  nft: boolean;
  log: { info(obj: object, msg?: string): void; warn(obj: object, msg?: string): void; error(obj: object, msg?: string): void };
  event: (e: LimitedEvent) => void;
  /** The worker script; defaults to worker.js beside this file. */
  workerPath?: string;
}

export interface ProtocolsStatus {
  listening: string[];
  failed: { key: string; error: string }[];
  restarts: number;
  stats?: Extract<FromWorker, { type: 'alive' }>['stats'];
  rssBytes?: number;
  /** The serial lines of Modbus RTU devices, by serial port: open or not, and their counters. */
  rtu?: Extract<FromWorker, { type: 'alive' }>['rtu'];
}

/** The worker's targets for a model: every device's proxied ports, with their listen ports. */
export function workerTargets(model: Model, stateDir: string): WorkerTarget[] {
  const proxies = model.devices.flatMap((d) => d.proxies.map((p) => ({ d, p })));
  if (proxies.length === 0) return [];
  const redirected = proxies.filter(({ p }) => p.rtu === undefined).map(({ p }) => p.key);
  const ports = redirected.length > 0 ? assignListenPorts(model.gateway.protocols.listenPorts, stateDir, redirected, { persist: false }) : new Map<string, number>();
  return proxies.map(({ d, p }) => {
    // An RTU device is reached on the gateway's own port, and through the serial line only.
    if (p.rtu !== undefined) return { ...p, listenPort: p.port, addresses: {}, enforce: d.mode === 'enforce' };
    const addresses: WorkerTarget['addresses'] = {};
    for (const family of ['ipv4', 'ipv6'] as Family[]) {
      const a = d.addresses[family];
      if (a !== undefined) addresses[family] = formatAddress(family, a);
    }
    return { ...p, listenPort: ports.get(p.key) as number, addresses, enforce: d.mode === 'enforce' };
  });
}

export class ProtocolsModule implements Module {
  readonly name = 'protocols';
  private child: ChildProcess | undefined;
  private targets: WorkerTarget[] = [];
  private failOpen: { family: Family; address: string; port: number; key: string }[] = [];
  private appLog: RotatingFile | undefined;
  private readonly limiter: EventLimiter;
  private aliveTimer: NodeJS.Timeout | undefined;
  private restartTimer: NodeJS.Timeout | undefined;
  private lastAlive = 0;
  private stopping = false;
  private failures = 0;
  private readonly state: ProtocolsStatus = { listening: [], failed: [], restarts: 0 };
  private readyWaiters: ((m: Extract<FromWorker, { type: 'ready' }>) => void)[] = [];

  constructor(private readonly deps: ProtocolsDeps) {
    const d = deps.config.traffic.detections;
    this.limiter = new EventLimiter({
      dedupWindowSeconds: d.dedupWindowSeconds,
      maxPerMinute: d.maxEventsPerMinute,
      summaryKind: 'proxy.suppressed',
      noun: 'proxy event(s)',
      emit: deps.event,
    });
  }

  status(): ProtocolsStatus {
    return { ...this.state };
  }

  /** Starts the proxies for a model (or stops them when it has no proxied port). */
  async start(model?: Model): Promise<void> {
    if (model) await this.update(model);
    this.aliveTimer = setInterval(() => {
      this.limiter.tick();
      void this.refreshAlive();
    }, ALIVE_EVERY_MS);
  }

  /** Gives the proxies the targets of a (newly committed) model. */
  async update(model: Model): Promise<void> {
    this.targets = workerTargets(model, this.deps.stateDir);
    this.failOpen = this.targets.flatMap((t) => {
      const dev = model.devices.find((d) => d.id === t.device);
      if (dev?.failMode !== 'open') return [];
      return (['ipv4', 'ipv6'] as Family[]).flatMap((family) => {
        const address = t.addresses[family];
        return address === undefined ? [] : [{ family, address, port: t.port, key: t.key }];
      });
    });
    if (this.targets.length === 0) {
      this.kill();
      return;
    }
    this.appLog ??= new RotatingFile({ path: join(this.deps.stateDir, 'app', 'app.ndjson'), maxBytes: Math.floor(this.deps.config.protocols.logBytes / 4), files: 4, batch: true });
    if (!this.child) this.spawn();
    const ready = this.waitReady();
    this.send({ type: 'targets', config: this.deps.config.protocols, targets: this.targets });
    const r = await ready;
    if (r.failed.length > 0) {
      for (const f of r.failed) this.deps.log.error({ target: f.key, err: f.error }, 'proxy cannot listen');
    }
    await this.refreshAlive();
  }

  private waitReady(): Promise<Extract<FromWorker, { type: 'ready' }>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the proxy process did not answer within 10 s')), 10000);
      this.readyWaiters.push((m) => {
        clearTimeout(timer);
        resolve(m);
      });
    });
  }

  private send(m: ToWorker): void {
    this.child?.send(m);
  }

  private spawn(): void {
    const worker = this.deps.workerPath ?? join(import.meta.dirname, 'worker.js');
    const argv = this.deps.netns !== undefined ? ['nsenter', `--net=/run/netns/${this.deps.netns}`, '--', process.execPath, worker] : [process.execPath, worker];
    // The proxies must live in the namespace, not only talk to it: nsenter execs node there.
    const child = spawn(argv[0] as string, argv.slice(1), { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'advanced' });
    this.child = child;
    const startedAt = Date.now();
    child.on('message', (m: FromWorker) => this.onMessage(m));
    child.on('error', (err) => this.deps.log.error({ err: err.message }, 'the proxy process could not start'));
    child.on('exit', (code, signal) => {
      if (this.child !== child) return;
      this.child = undefined;
      this.lastAlive = 0;
      this.state.listening = [];
      if (this.stopping || this.targets.length === 0) return;
      this.failures = Date.now() - startedAt > 60_000 ? 1 : this.failures + 1;
      const delay = Math.min(30_000, 1000 * 2 ** (this.failures - 1));
      this.deps.log.error({ code, signal, restartInMs: delay }, 'the proxy process exited');
      this.limiter.raise({
        severity: 'critical',
        kind: 'proxy.restarted',
        dedupKey: 'proxy.restarted',
        message: `the proxy process exited (${signal ?? `code ${code}`}); starting it again in ${delay / 1000} s. Meanwhile fail-open devices' proxied ports bypass the proxy, fail-closed ones refuse connections`,
        data: { code, signal, restartInMs: delay },
      });
      this.restartTimer = setTimeout(() => {
        this.state.restarts++;
        this.spawn();
        this.send({ type: 'targets', config: this.deps.config.protocols, targets: this.targets });
      }, delay);
    });
  }

  private onMessage(m: FromWorker): void {
    switch (m.type) {
      case 'ready':
        this.state.listening = m.listening;
        this.state.failed = m.failed;
        this.lastAlive = Date.now();
        for (const w of this.readyWaiters.splice(0)) w(m);
        break;
      case 'alive':
        this.lastAlive = Date.now();
        this.state.stats = m.stats;
        this.state.rssBytes = m.rssBytes;
        if (m.rtu !== undefined) this.state.rtu = m.rtu;
        break;
      case 'record':
        this.appLog?.write(`${JSON.stringify({ time: new Date().toISOString(), ...m.record })}\n`);
        break;
      case 'alert': {
        const { device, ...a } = m.alert;
        this.limiter.raise({ ...a, device });
        break;
      }
    }
  }

  /** Keeps the fail-open ports in the alive set while the proxies answer (flush and fill: one transaction). */
  private async refreshAlive(): Promise<void> {
    if (!this.deps.nft || this.failOpen.length === 0) return;
    const alive = !this.stopping && this.child !== undefined && Date.now() - this.lastAlive < ALIVE_SILENCE_MS;
    const up = alive ? this.failOpen.filter((f) => this.state.listening.includes(f.key)) : [];
    const lines: string[] = [];
    for (const family of ['ipv4', 'ipv6'] as Family[]) {
      if (!this.failOpen.some((f) => f.family === family)) continue;
      lines.push(`flush set ${FAMILY} ${TABLE} ${PROXY_ALIVE[family]}`);
      const els = up.filter((f) => f.family === family).map((f) => `${f.address} . ${f.port} timeout ${ALIVE_TIMEOUT_S}s`);
      if (els.length > 0) lines.push(`add element ${FAMILY} ${TABLE} ${PROXY_ALIVE[family]} { ${els.join(', ')} }`);
    }
    const argv = inNetns(this.deps.netns, ['nft', '-f', '-']);
    await new Promise<void>((resolve) => {
      const p = spawn(argv[0] as string, argv.slice(1), { stdio: ['pipe', 'ignore', 'pipe'] });
      let err = '';
      p.stderr.on('data', (d: Buffer) => (err += d.toString()));
      p.on('error', () => resolve());
      p.on('close', (code) => {
        // Missing sets mean the committed ruleset is not this policy's (or the fail-safe one is loaded).
        if (code !== 0) this.deps.log.warn({ err: err.trim().split('\n')[0] }, 'the proxies\' alive set could not be refreshed');
        resolve();
      });
      p.stdin.end(`${lines.join('\n')}\n`);
    });
  }

  /** The proxy process ends when its channel closes (it ignores signals); SIGKILL if it lingers. */
  private kill(): void {
    const c = this.child;
    this.child = undefined;
    this.state.listening = [];
    if (!c) return;
    if (c.connected) c.disconnect();
    const timer = setTimeout(() => c.kill('SIGKILL'), 5000).unref();
    c.once('exit', () => clearTimeout(timer));
  }

  async stop(): Promise<void> {
    this.stopping = true;
    clearInterval(this.aliveTimer);
    clearTimeout(this.restartTimer);
    // A planned stop (an upgrade, a restart) hands the fail-open ports to the kernel's allow-list
    // at once, instead of refusing their connections until the alive elements expire.
    await this.refreshAlive();
    const c = this.child;
    if (c) {
      const exited = new Promise<void>((r) => c.once('exit', () => r()));
      this.kill();
      await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
    }
    this.appLog?.close();
  }
}
