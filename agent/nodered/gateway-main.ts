// The gateway's Node-RED process: Node-RED embedded with the flows of the gateway file's
// `nodeRed:` block, its editor, admin API and the flows' HTTP endpoints behind one login (a
// bcrypt hash), nothing installed or called home. Started by the agent (module.ts) as a child
// process, so that the agent never loads Node-RED, and configured by the environment:
//
//   WARDGATE_NODERED_HOST, _PORT          where to listen
//   WARDGATE_NODERED_USERDIR              Node-RED's user directory (<stateDir>/node-red)
//   WARDGATE_NODERED_FLOW_FILE            the flows
//   WARDGATE_NODERED_ADMIN_USER, _ADMIN_HASH_FILE   the login: a user name and a file holding
//                                         the bcrypt hash of its password
//   WARDGATE_EVENTS_URL, _TOKEN           for the flows: where and how to raise an event
//
// Prints one line of JSON, {"event":"ready","url":...}, when the flows are running.
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import { BCRYPT_HASH } from './schema.js';
import { LOCKED_DOWN, loadNodeRed, serveNodeRed } from '../util/nodered-runtime.js';


interface Bcrypt {
  compare(password: string, hash: string): Promise<boolean>;
}

/**
 * HTTP basic authentication for the flows' endpoints (http in nodes), with the admin login.
 * Node-RED's own (httpNodeAuth) lives in its command-line runner, not in the embedded runtime.
 * A password that passed is remembered by its hash, so bcrypt runs once, not per request.
 */
function basicLogin(username: string, hash: string, bcrypt: Bcrypt) {
  let passed: Buffer | undefined;
  const digest = (s: string) => createHash('sha256').update(s).digest();
  return (req: IncomingMessage, res: ServerResponse, next: () => void): void => {
    const m = /^Basic ([A-Za-z0-9+/=]+)$/.exec(req.headers.authorization ?? '');
    const text = m ? Buffer.from(m[1]!, 'base64').toString('utf8') : '';
    const i = text.indexOf(':');
    const deny = () => {
      res.setHeader('WWW-Authenticate', 'Basic realm="wardgate gateway flows", charset="UTF-8"');
      res.statusCode = 401;
      res.end('login needed');
    };
    if (i < 0 || !timingSafeEqual(digest(text.slice(0, i)), digest(username))) return deny();
    const password = text.slice(i + 1);
    if (passed !== undefined && timingSafeEqual(digest(password), passed)) return next();
    bcrypt.compare(password, hash).then(
      (ok) => {
        if (!ok) return deny();
        passed = digest(password);
        next();
      },
      () => deny(),
    );
  };
}

function need(name: string): string {
  const v = process.env[name];
  if (v === undefined || v === '') throw new Error(`${name} is not set (this process is started by the agent: wardgate run)`);
  return v;
}

async function main(): Promise<void> {
  const host = need('WARDGATE_NODERED_HOST');
  const port = Number(need('WARDGATE_NODERED_PORT'));
  const userDir = need('WARDGATE_NODERED_USERDIR');
  const flowFile = need('WARDGATE_NODERED_FLOW_FILE');
  const username = need('WARDGATE_NODERED_ADMIN_USER');
  const hashFile = need('WARDGATE_NODERED_ADMIN_HASH_FILE');
  // The agent checked the file before starting this process; it is read here, not passed in
  // the environment, which the flows can read (env.get).
  const hash = readFileSync(hashFile, 'utf8').trim();
  if (!BCRYPT_HASH.test(hash)) throw new Error(`${hashFile} holds no bcrypt hash: refusing to start Node-RED without a login`);

  const { RED, fromNodeRed } = loadNodeRed();
  const bcrypt = fromNodeRed('bcryptjs') as Bcrypt;

  const settings = {
    userDir,
    flowFile,
    flowFilePretty: true,
    uiHost: host,
    uiPort: port,
    httpAdminRoot: '/admin',
    httpNodeRoot: '/',
    adminAuth: { type: 'credentials', users: [{ username, password: hash, permissions: '*' }] },
    // The flows reach devices over Modbus with the library the agent uses (global.get('modbus')).
    functionGlobalContext: { modbus: createRequire(import.meta.url)('modbus-serial') as unknown },
    // A gateway calls nowhere but its devices and its agent.
    ...LOCKED_DOWN,
    logging: { console: { level: process.env.WARDGATE_NODERED_LOG_LEVEL ?? 'info', metrics: false, audit: false } },
  };

  // The flows' own HTTP endpoints (http in nodes) want the same login. It stops with the agent,
  // even one killed with SIGKILL: the IPC channel closes.
  const url = await serveNodeRed(RED, fromNodeRed, settings, { port, host, nodeAuth: basicLogin(username, hash, bcrypt) as unknown as RequestListener });
  process.stdout.write(`${JSON.stringify({ event: 'ready', url, admin: `${url}/admin` })}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`wardgate node-red: ${(err as Error).message}\n`);
  process.exit(1);
});
