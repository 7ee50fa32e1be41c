// The demo's console: Node-RED with flows/console.json (startConsole), on 1880 or the next free
// port, and what the demo asks of it through Node-RED's admin API: the flow's context (what the
// dashboard shows) and the flow's inject node that asks every gateway for its backups again.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { startConsole, type RunningConsole, type StartConsoleOptions } from '../console/nodered.js';
import { portFree } from './util.js';

/** The console flow's tab and its "every 5 minutes" inject node (flows/console.json). */
const FLOW_TAB = 'wg-tab';
const REFRESH_INJECT = 'wg-every';

export interface DemoConsole {
  running: RunningConsole;
  /** A value of the console flow's context: gateways, devices, alerts, backups, policy, pulls. */
  context<T>(key: string): Promise<T | undefined>;
  /** Asks every online gateway for backup.list and policy.status again (the dashboard's Refresh). */
  refresh(): Promise<void>;
}

export interface ConsoleRow {
  state: string;
}

export async function startDemoConsole(opts: Omit<StartConsoleOptions, 'port' | 'admin'> & { preferredPort: number }): Promise<DemoConsole> {
  const admin = { username: 'admin', password: randomBytes(12).toString('base64url') };
  let running: RunningConsole | undefined;
  let lastError: Error | undefined;
  for (let port = opts.preferredPort; port < opts.preferredPort + 20 && !running; port++) {
    if (!(await portFree(port, opts.host ?? '127.0.0.1'))) continue;
    try {
      running = await startConsole({ ...opts, port, admin });
    } catch (err) {
      lastError = err as Error;
      // Taken between the check and Node-RED's listen (another demo, another console): the next one.
      const log = /\(log: (.+)\)$/.exec(lastError.message)?.[1];
      const text = log !== undefined ? readLog(log) : '';
      if (!/EADDRINUSE/.test(text)) throw err;
    }
  }
  if (!running) throw lastError ?? new Error(`no free port from ${opts.preferredPort} to ${opts.preferredPort + 19} for the console`);
  const r = running;
  let token: string | undefined;
  const auth = async (): Promise<Record<string, string>> => {
    if (token === undefined) {
      const res = await fetch(`${r.adminUrl}/auth/token`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ client_id: 'node-red-admin', grant_type: 'password', scope: '*', username: r.admin.username, password: r.admin.password }),
      });
      if (!res.ok) throw new Error(`the console's admin login: HTTP ${res.status}`);
      token = ((await res.json()) as { access_token: string }).access_token;
    }
    return { authorization: `Bearer ${token}` };
  };
  return {
    running: r,
    context: async <T>(key: string): Promise<T | undefined> => {
      const res = await fetch(`${r.adminUrl}/context/flow/${FLOW_TAB}/${encodeURIComponent(key)}?store=default`, { headers: await auth() });
      if (!res.ok) throw new Error(`the console's flow context ${key}: HTTP ${res.status}`);
      const body = (await res.json()) as { msg?: string; format?: string };
      if (body.msg === undefined || body.format === 'undefined') return undefined;
      return (body.format?.startsWith('Object') || body.format?.startsWith('array') ? JSON.parse(body.msg) : body.msg) as T;
    },
    refresh: async () => {
      const res = await fetch(`${r.adminUrl}/inject/${REFRESH_INJECT}`, { method: 'POST', headers: await auth() });
      if (!res.ok) throw new Error(`the console's refresh: HTTP ${res.status}`);
    },
  };
}

function readLog(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}
