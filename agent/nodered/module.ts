// Node-RED on the gateway (the gateway file's `nodeRed:` block): the agent starts it as a child
// process (gateway-main.ts) with the flows and a login, gives it the means to raise events
// (events.ts), keeps its output in a rotating log, starts it again if it dies, and stops it with
// itself. This module is imported only when the block is there (agent/main.ts): the agent's
// normal path loads nothing of Node-RED, and the agent process never loads Node-RED at all.
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve, sep } from 'node:path';
import { createInterface } from 'node:readline';
import { ConfigError, type Diagnostic } from '../config/diagnostics.js';
import { loadConfig, loadGatewayText } from '../config/load.js';
import type { GatewayConfig } from '../config/schema.js';
import { locate } from '../config/yaml-source.js';
import type { Module } from '../module.js';
import type { Severity } from '../mqtt/topics.js';
import { buildModel } from '../policy/model.js';
import { RotatingFile } from '../util/rotating-file.js';
import { PACKAGE_ROOT } from '../version.js';
import { startFlowEvents, type FlowEvents } from './events.js';
import { BCRYPT_HASH, type NodeRedConfig } from './schema.js';

/** What the gateway file's block resolves to on this machine. */
export interface ResolvedNodeRed {
  config: NodeRedConfig & { adminAuth: NonNullable<NodeRedConfig['adminAuth']> };
  hashFile: string;
  /** The flow file Node-RED is given to read (and to write, from the editor). */
  flowFile: string;
  /** The shipped file it is a copy of, when the gateway file names one of the installation's. */
  shipped?: string;
  userDir: string;
}

/**
 * Checks what the schema cannot: the password hash file holds a bcrypt hash, and the flow file
 * exists and is a flow. Throws ConfigError with file, line and field: Node-RED does not start
 * without a login, and the agent does not start with a block it cannot honour.
 */
export function resolveNodeRed(gatewayPath: string, config: GatewayConfig, stateDir: string): ResolvedNodeRed {
  const nr = config.nodeRed;
  if (nr === undefined) throw new Error('no nodeRed block in the gateway file');
  const root = dirname(gatewayPath);
  const diagnostics: Diagnostic[] = [];
  const src = loadGatewayText(gatewayPath, readFileSync(gatewayPath, 'utf8')).gateway?.source;
  const at = (path: string[], message: string): void => {
    const where = src ? locate(src, ['nodeRed', ...path]) : { file: gatewayPath, line: 1, col: 1 };
    diagnostics.push({ ...where, severity: 'error', field: ['nodeRed', ...path].join('.'), message });
  };
  const auth = nr.adminAuth;
  let hashFile = '';
  if (auth === undefined) at(['adminAuth'], 'required when Node-RED runs: its editor and admin API need a login');
  else {
    hashFile = resolve(root, auth.passwordHashFile);
    let text: string | undefined;
    try {
      text = readFileSync(hashFile, 'utf8');
    } catch (err) {
      const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'file not found' : (err as Error).message;
      at(['adminAuth', 'passwordHashFile'], `${hashFile}: ${why}; make it with: npx node-red admin hash-pw > ${hashFile} (then chmod 600). Node-RED does not start without a login`);
    }
    if (text !== undefined && !BCRYPT_HASH.test(text.trim())) {
      at(['adminAuth', 'passwordHashFile'], `${hashFile} holds no bcrypt hash (one line, $2b$...: npx node-red admin hash-pw). Node-RED does not start without a login`);
    }
  }
  const beside = resolve(root, nr.flowFile);
  const installed = isAbsolute(nr.flowFile) ? undefined : join(PACKAGE_ROOT, nr.flowFile);
  const found = existsSync(beside) ? beside : installed !== undefined && existsSync(installed) ? installed : undefined;
  if (found === undefined) at(['flowFile'], `${nr.flowFile}: not found beside the gateway file (${beside})${installed !== undefined ? ` nor in the wardgate installation (${installed})` : ''}`);
  else {
    try {
      if (!Array.isArray(JSON.parse(readFileSync(found, 'utf8')))) throw new Error('not a JSON array of nodes');
    } catch (err) {
      at(['flowFile'], `${found} is not a Node-RED flow file: ${(err as Error).message}`);
    }
  }
  if (diagnostics.length > 0 || auth === undefined || found === undefined) throw new ConfigError(diagnostics);
  const userDir = join(stateDir, 'node-red');
  const fromInstallation = found.startsWith(join(PACKAGE_ROOT, 'flows') + sep);
  return {
    config: { ...nr, adminAuth: auth },
    hashFile,
    flowFile: fromInstallation ? join(userDir, 'flows.json') : found,
    ...(fromInstallation ? { shipped: found } : {}),
    userDir,
  };
}

export interface GatewayNodeRedDeps {
  gatewayPath: string;
  config: GatewayConfig;
  stateDir: string;
  log: { info(obj: object, msg?: string): void; warn(obj: object, msg?: string): void; error(obj: object, msg?: string): void };
  /** The agent's event (Controller.event): to the outbox, the consoles and the SIEM. */
  event: (severity: Severity, kind: string, message: string, extra: { device?: string; dedupKey?: string; data?: Record<string, unknown> }) => void;
  /** Milliseconds to wait for Node-RED to run its flows (default 90000: a Raspberry Pi is slow to start it). */
  timeoutMs?: number;
}

interface Ready {
  event: 'ready';
  url: string;
  admin: string;
}

export class GatewayNodeRed implements Module {
  readonly name = 'node-red';
  private resolved: ResolvedNodeRed | undefined;
  private events: FlowEvents | undefined;
  private child: ChildProcess | undefined;
  private log: RotatingFile | undefined;
  private tickTimer: NodeJS.Timeout | undefined;
  private restartTimer: NodeJS.Timeout | undefined;
  private stopping = false;
  private failures = 0;
  /** Set once the first start ran the flows: from then on, a death is answered with a restart. */
  private started = false;
  /** Where Node-RED listens, once it runs. */
  url: string | undefined;

  constructor(private readonly deps: GatewayNodeRedDeps) {}

  get pid(): number | undefined {
    return this.child?.pid;
  }

  async start(): Promise<void> {
    const r = resolveNodeRed(this.deps.gatewayPath, this.deps.config, this.deps.stateDir);
    this.resolved = r;
    mkdirSync(r.userDir, { recursive: true, mode: 0o700 });
    // The editor deploys to the flow file: never to the installation's. A copy, made once.
    if (r.shipped !== undefined && !existsSync(r.flowFile)) copyFileSync(r.shipped, r.flowFile);
    let devices: string[] | undefined;
    try {
      devices = buildModel(loadConfig(this.deps.gatewayPath)).devices.map((d) => d.id);
    } catch {
      devices = undefined; // a broken policy: any device id is taken
    }
    const d = this.deps.config.traffic.detections;
    this.events = await startFlowEvents({
      devices: () => devices,
      dedupWindowSeconds: d.dedupWindowSeconds,
      maxPerMinute: d.maxEventsPerMinute,
      raise: (severity, kind, message, extra) => this.deps.event(severity, kind, message, extra),
      refused: (status, reason) => this.deps.log.warn({ status, reason }, 'a flow\'s event was refused'),
    });
    this.tickTimer = setInterval(() => this.events?.tick(), 5000);
    this.log = new RotatingFile({ path: join(r.userDir, 'node-red.log'), maxBytes: 1024 * 1024, files: 4 });
    await this.spawn();
    this.started = true;
  }

  private environment(r: ResolvedNodeRed, events: FlowEvents): Record<string, string> {
    // None of the agent's own WARDGATE_* settings: Node-RED gets what is set here.
    const inherited = Object.fromEntries(Object.entries(process.env).filter(([k, v]) => !k.startsWith('WARDGATE_') && v !== undefined)) as Record<string, string>;
    // The flows post events to 127.0.0.1: never through a proxy the environment may name.
    const noProxy = [inherited.no_proxy ?? inherited.NO_PROXY, '127.0.0.1', 'localhost'].filter((x) => x !== undefined && x !== '').join(',');
    return {
      ...inherited,
      ...r.config.env,
      no_proxy: noProxy,
      NO_PROXY: noProxy,
      WARDGATE_SITE: this.deps.config.site,
      WARDGATE_GATEWAY: this.deps.config.gateway,
      WARDGATE_EVENTS_URL: events.url,
      WARDGATE_EVENTS_TOKEN: events.token,
      WARDGATE_NODERED_HOST: r.config.host,
      WARDGATE_NODERED_PORT: String(r.config.port),
      WARDGATE_NODERED_USERDIR: r.userDir,
      WARDGATE_NODERED_FLOW_FILE: r.flowFile,
      WARDGATE_NODERED_ADMIN_USER: r.config.adminAuth.username,
      WARDGATE_NODERED_ADMIN_HASH_FILE: r.hashFile,
    };
  }

  private spawn(): Promise<Ready> {
    const r = this.resolved!;
    const events = this.events!;
    const main = join(import.meta.dirname, 'gateway-main.js');
    // The IPC channel is a lifeline: Node-RED stops when the agent goes, however it goes.
    const child = spawn(process.execPath, [main], { env: this.environment(r, events), stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
    this.child = child;
    const startedAt = Date.now();
    let readyLine: ((r: Ready) => void) | undefined;
    for (const stream of [child.stdout, child.stderr]) {
      createInterface({ input: stream! }).on('line', (line) => {
        this.log?.write(`${line}\n`);
        if (readyLine !== undefined && line.startsWith('{"event":"ready"')) {
          try {
            readyLine(JSON.parse(line) as Ready);
          } catch {
            // a log line that looks like it
          }
        }
      });
    }
    const logFile = join(r.userDir, 'node-red.log');
    const ready = new Promise<Ready>((resolveReady, reject) => {
      const ms = this.deps.timeoutMs ?? 90000;
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`Node-RED did not start within ${ms / 1000} s (log: ${logFile})`));
      }, ms);
      readyLine = (m) => {
        clearTimeout(timer);
        readyLine = undefined;
        this.url = m.url;
        this.deps.log.info({ url: m.url, flowFile: r.flowFile, pid: child.pid }, 'Node-RED runs the gateway\'s flows');
        resolveReady(m);
      };
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        if (readyLine !== undefined) reject(new Error(`Node-RED exited (${signal ?? `code ${code}`}) before it ran the flows (log: ${logFile})`));
      });
    });
    child.once('exit', (code, signal) => {
      if (this.child !== child) return;
      this.child = undefined;
      if (this.stopping || !this.started) return;
      // It ran, then died (or a restart failed): started again with a backoff, and said so.
      this.failures = Date.now() - startedAt > 60_000 ? 1 : this.failures + 1;
      const delay = Math.min(60_000, 1000 * 2 ** (this.failures - 1));
      this.deps.log.error({ code, signal, restartInMs: delay }, 'Node-RED exited');
      this.deps.event('warning', 'node-red.exited', `Node-RED exited (${signal ?? `code ${code}`}); starting it again in ${delay / 1000} s. The gateway's flows do not run meanwhile`, {
        dedupKey: 'node-red.exited',
        data: { code, signal, restartInMs: delay },
      });
      this.restartTimer = setTimeout(() => {
        this.spawn().catch((err: unknown) => this.deps.log.error({ err: (err as Error).message }, 'Node-RED did not start again'));
      }, delay);
    });
    return ready;
  }

  async stop(): Promise<void> {
    this.stopping = true;
    clearInterval(this.tickTimer);
    clearTimeout(this.restartTimer);
    const c = this.child;
    if (c && c.exitCode === null && c.signalCode === null) {
      const exited = new Promise<void>((r) => c.once('exit', () => r()));
      c.kill('SIGTERM');
      const timer = setTimeout(() => c.kill('SIGKILL'), 10000);
      await exited;
      clearTimeout(timer);
    }
    await this.events?.close();
    this.log?.close();
  }
}
