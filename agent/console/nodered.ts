// Starts the console (Node-RED with the site flow and its dashboard) as a child process, for
// the demo, tests and anyone who wants one from code. A process of its own, because Node-RED
// is one runtime per process, and because stopping it must leave nothing behind.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFileSync, closeSync, existsSync, mkdirSync, openSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** The wardgate checkout: the folder above this file's that holds flows/console.json (from agent/ or dist/agent/). */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'flows', 'console.json')) && existsSync(join(dir, 'package.json'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the wardgate checkout (flows/console.json) above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}

export interface StartConsoleOptions {
  /** The site the console follows (WARDGATE_SITE). */
  site: string;
  /** The broker (WARDGATE_BROKER_URL): mqtt://, mqtts://. */
  brokerUrl: string;
  /** The console's private key (wardgate console keygen), for signed commands. */
  keyFile?: string;
  /** Default: the key file's name without .key. */
  keyId?: string;
  /** A console identity of the broker. */
  username?: string;
  password?: string;
  /** PEM files for a broker that wants client certificates. */
  tls?: { ca?: string; cert?: string; key?: string };
  /** Node-RED's user directory: its copy of the flow, credentials, context, the log. */
  userDir: string;
  /** Default 0: any free port (the url says which). */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** A directory of <gateway>.pub files: the gateways' public keys, to verify pulled bundles. */
  gatewayKeys?: string;
  /** Where pulled bundles go (default <userDir>/wardgate-backups). */
  backupDir?: string;
  /** The editor's and admin API's login (default admin and a random password). */
  admin?: { username: string; password: string };
  /** The dashboard's login (HTTP basic); none by default, which only loopback allows. */
  dashboard?: { username: string; password: string };
  /** Milliseconds to wait for Node-RED to be up (default 60000). */
  timeoutMs?: number;
  /** More environment for the flow (this process's WARDGATE_* variables are not passed on). */
  env?: Record<string, string>;
}

export interface RunningConsole {
  /** http://host:port */
  url: string;
  /** The site's dashboard page. */
  dashboardUrl: string;
  /** Node-RED's editor and admin API. */
  adminUrl: string;
  admin: { username: string; password: string };
  /** Node-RED's output. */
  logFile: string;
  pid: number;
  /** Stops Node-RED (SIGTERM, then SIGKILL after 10 s); resolves when the process is gone. */
  stop(): Promise<void>;
}

interface Ready {
  event: 'ready';
  url: string;
  dashboard: string;
  admin: string;
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((r) => child.once('exit', () => r()));
}

export async function startConsole(opts: StartConsoleOptions): Promise<RunningConsole> {
  const root = repoRoot();
  const main = join(root, 'dist', 'agent', 'console', 'nodered-main.js');
  if (!existsSync(main)) throw new Error(`${main} is missing: run "npm run build" first`);
  const userDir = resolve(opts.userDir);
  mkdirSync(userDir, { recursive: true, mode: 0o700 });
  const admin = opts.admin ?? { username: 'admin', password: randomBytes(18).toString('base64url') };
  const set = (v: string | undefined): v is string => v !== undefined && v !== '';
  // None of this process's WARDGATE_* settings: the console is configured by the options alone.
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('WARDGATE_'))) as Record<string, string>;
  const env: Record<string, string> = {
    ...inherited,
    ...opts.env,
    WARDGATE_SITE: opts.site,
    WARDGATE_BROKER_URL: opts.brokerUrl,
    WARDGATE_CONSOLE_USERDIR: userDir,
    WARDGATE_CONSOLE_HOST: opts.host ?? '127.0.0.1',
    WARDGATE_CONSOLE_PORT: String(opts.port ?? 0),
    WARDGATE_CONSOLE_ADMIN_USER: admin.username,
    WARDGATE_CONSOLE_ADMIN_PASSWORD: admin.password,
  };
  if (opts.dashboard) {
    env.WARDGATE_CONSOLE_DASHBOARD_USER = opts.dashboard.username;
    env.WARDGATE_CONSOLE_DASHBOARD_PASSWORD = opts.dashboard.password;
  }
  const optional: [string, string | undefined][] = [
    ['WARDGATE_CONSOLE_KEY', opts.keyFile],
    ['WARDGATE_CONSOLE_KEY_ID', opts.keyId],
    ['WARDGATE_BROKER_USER', opts.username],
    ['WARDGATE_BROKER_PASSWORD', opts.password],
    ['WARDGATE_BROKER_CA', opts.tls?.ca],
    ['WARDGATE_BROKER_CERT', opts.tls?.cert],
    ['WARDGATE_BROKER_CERT_KEY', opts.tls?.key],
    ['WARDGATE_GATEWAY_KEYS', opts.gatewayKeys],
    ['WARDGATE_BACKUP_DIR', opts.backupDir],
  ];
  for (const [k, v] of optional) if (set(v)) env[k] = v;
  const logFile = join(userDir, 'node-red.log');
  const log = openSync(logFile, 'a', 0o600);
  let child: ChildProcess;
  try {
    // The IPC channel is a lifeline: Node-RED stops when this process goes, however it goes.
    child = spawn(process.execPath, [main], { env, stdio: ['ignore', 'pipe', log, 'ipc'], detached: false });
    child.unref();
    child.channel?.unref();
  } finally {
    closeSync(log);
  }
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10000);
      await exited(child);
      clearTimeout(timer);
    }
  };
  const lines = createInterface({ input: child.stdout! });
  let ready: Ready;
  try {
    ready = await new Promise<Ready>((ok, fail) => {
      const timer = setTimeout(() => fail(new Error(`Node-RED did not start within ${(opts.timeoutMs ?? 60000) / 1000} s (log: ${logFile})`)), opts.timeoutMs ?? 60000);
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        fail(new Error(`Node-RED exited (${signal ?? `code ${code}`}) before it was ready (log: ${logFile})`));
      });
      lines.on('line', (line) => {
        // Everything goes to the log; the ready line is also the answer.
        appendFileSync(logFile, `${line}\n`);
        if (!line.startsWith('{"event":"ready"')) return;
        try {
          const r = JSON.parse(line) as Ready;
          clearTimeout(timer);
          ok(r);
        } catch {
          // a log line that looks like it: keep waiting
        }
      });
    });
  } catch (err) {
    await stop();
    throw err;
  }
  return { url: ready.url, dashboardUrl: ready.dashboard, adminUrl: ready.admin, admin, logFile, pid: child.pid ?? -1, stop };
}
