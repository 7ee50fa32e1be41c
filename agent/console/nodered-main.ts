// The console's Node-RED process: Node-RED embedded with the wardgate nodes (flows/nodes), the
// FlowFuse Dashboard 2.0 and the site flow (flows/console.json), its editor and admin API behind
// a login. Run as `node dist/agent/console/nodered-main.js`, or through startConsole()
// (nodered.ts). Configured by the environment (docs/console.md):
//
//   WARDGATE_CONSOLE_HOST, _PORT      where to listen (127.0.0.1, 1880; port 0: any free port)
//   WARDGATE_CONSOLE_USERDIR          Node-RED's user directory (flows, credentials, context)
//   WARDGATE_CONSOLE_FLOW_FILE        the flow file (default <userDir>/flows.json, made from
//                                     flows/console.json when it does not exist)
//   WARDGATE_CONSOLE_ADMIN_USER, _PASSWORD   the editor's and admin API's login (admin, and a
//                                     random password written to <userDir>/admin-password)
//   WARDGATE_CONSOLE_DASHBOARD_USER, _PASSWORD   the dashboard's login (HTTP basic, the page and
//                                     its socket.io channel); required off loopback
//   WARDGATE_CONSOLE_CREDENTIAL_SECRET   the key of Node-RED's credentials file (default: one
//                                     Node-RED makes and keeps in <userDir>/.config.runtime.json)
//   WARDGATE_SITE, WARDGATE_BROKER_URL, ...  read by the flow's console node
//
// Prints one line of JSON, {"event":"ready","url":...}, when the flows are running.
import { randomBytes, timingSafeEqual, createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { repoRoot } from './nodered.js';
import { LOCKED_DOWN, loadNodeRed, serveNodeRed } from '../util/nodered-runtime.js';


const sameSecret = (a: string, b: string): boolean => {
  // Hashes first: timingSafeEqual wants equal lengths, and the length is no clue then.
  const h = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(h(a), h(b));
};

interface Req {
  headers: Record<string, string | string[] | undefined>;
  url?: string;
}
interface Res {
  setHeader(name: string, value: string): void;
  statusCode: number;
  end(body?: string): void;
}
interface IoSocket {
  request: Req;
  handshake: { xdomain: boolean };
  client: { conn: { request: Req; close(): void } };
  disconnect(close: boolean): void;
}

/**
 * HTTP basic authentication for Dashboard 2.0: its pages (settings.dashboard.middleware) and
 * its socket.io channel (ioMiddleware), which the page's own login does not cover. The browser
 * sends the credentials it was asked for with the page on the channel's requests too.
 */
function dashboardLogin(user: string, password: string) {
  const ok = (req: Req): boolean => {
    const h = req.headers.authorization;
    const m = typeof h === 'string' ? /^Basic ([A-Za-z0-9+/=]+)$/.exec(h) : null;
    if (!m) return false;
    const text = Buffer.from(m[1]!, 'base64').toString('utf8');
    const i = text.indexOf(':');
    return i >= 0 && sameSecret(text.slice(0, i), user) && sameSecret(text.slice(i + 1), password);
  };
  return {
    middleware: (req: Req, res: Res, next: () => void) => {
      if (ok(req)) return next();
      res.setHeader('WWW-Authenticate', 'Basic realm="wardgate console", charset="UTF-8"');
      res.statusCode = 401;
      res.end('login needed');
    },
    // Replaces the dashboard's default check, which is kept: no websocket without the polling
    // handshake first, nothing from another origin.
    ioMiddleware: (socket: IoSocket, next: (err?: Error) => void) => {
      if (!ok(socket.request)) return next(new Error('login needed'));
      if ((socket.client.conn.request.url ?? '').includes('transport=websocket')) {
        socket.client.conn.close();
        return;
      }
      if (socket.handshake.xdomain === false) return next();
      socket.disconnect(true);
    },
  };
}

async function main(): Promise<void> {
  const env = process.env;
  const root = repoRoot();
  const host = env.WARDGATE_CONSOLE_HOST ?? '127.0.0.1';
  const port = Number(env.WARDGATE_CONSOLE_PORT ?? 1880);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`WARDGATE_CONSOLE_PORT "${env.WARDGATE_CONSOLE_PORT}": a port number`);
  const userDir = resolve(env.WARDGATE_CONSOLE_USERDIR ?? join(homedir(), '.wardgate-console'));
  mkdirSync(userDir, { recursive: true, mode: 0o700 });
  let flowFile = env.WARDGATE_CONSOLE_FLOW_FILE;
  if (flowFile === undefined || flowFile === '') {
    flowFile = join(userDir, 'flows.json');
    // The user directory's copy is the one the editor deploys to; the shipped flow is not touched.
    if (!existsSync(flowFile)) copyFileSync(join(root, 'flows', 'console.json'), flowFile);
  }
  const adminUser = env.WARDGATE_CONSOLE_ADMIN_USER ?? 'admin';
  let adminPassword = env.WARDGATE_CONSOLE_ADMIN_PASSWORD;
  if (adminPassword === undefined || adminPassword === '') {
    adminPassword = randomBytes(18).toString('base64url');
    writeFileSync(join(userDir, 'admin-password'), `${adminPassword}\n`, { mode: 0o600 });
  }
  const password = adminPassword;
  const dashUser = env.WARDGATE_CONSOLE_DASHBOARD_USER ?? 'dashboard';
  const dashPassword = env.WARDGATE_CONSOLE_DASHBOARD_PASSWORD;
  const loopback = host === '127.0.0.1' || host === '::1' || host === 'localhost';
  if ((dashPassword === undefined || dashPassword === '') && !loopback) {
    throw new Error(`listening on ${host} needs a dashboard login: set WARDGATE_CONSOLE_DASHBOARD_PASSWORD (the dashboard's buttons send signed commands)`);
  }

  const { RED, fromNodeRed } = loadNodeRed();

  const user = (username: string) => (username === adminUser ? { username, permissions: '*' } : null);
  const settings = {
    userDir,
    flowFile,
    flowFilePretty: true,
    nodesDir: [join(root, 'flows', 'nodes')],
    uiHost: host,
    uiPort: port,
    httpAdminRoot: '/admin',
    httpNodeRoot: '/',
    adminAuth: {
      type: 'credentials',
      users: (username: string) => Promise.resolve(user(username)),
      authenticate: (username: string, pass: string) => Promise.resolve(username === adminUser && sameSecret(pass, password) ? user(username) : null),
    },
    ...(dashPassword !== undefined && dashPassword !== '' ? { dashboard: dashboardLogin(dashUser, dashPassword) } : {}),
    ...(env.WARDGATE_CONSOLE_CREDENTIAL_SECRET ? { credentialSecret: env.WARDGATE_CONSOLE_CREDENTIAL_SECRET } : {}),
    // Acknowledged alerts and the last answers survive a restart of the console.
    contextStorage: { default: { module: 'localfilesystem' } },
    // This console calls nowhere but its broker.
    ...LOCKED_DOWN,
    logging: { console: { level: env.WARDGATE_CONSOLE_LOG_LEVEL ?? 'info', metrics: false, audit: false } },
  };

  // Started by startConsole(): it stops with its parent, even one killed with SIGKILL.
  const url = await serveNodeRed(RED, fromNodeRed, settings, { port, host });
  process.stdout.write(`${JSON.stringify({ event: 'ready', url, dashboard: `${url}/dashboard/site`, admin: `${url}/admin`, userDir })}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`wardgate console: ${(err as Error).message}\n`);
  process.exit(1);
});
