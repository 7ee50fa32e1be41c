// The wardgate broker (aedes, MQTT 3.1.1): the agent's embedded broker (a standalone gateway,
// the demo) and `wardgate broker` for a small site. It mirrors deploy/mosquitto: every client
// has an identity (its TLS client certificate's CN, verified against the CA, else its username
// after a password check), and the ACL gives each identity only its own topics (docs/mqtt.md,
// "The broker"). A broker that consoles reach over the network needs TLS: it refuses to listen
// on a non-loopback address without it.
//
// A publish the ACL denies closes the client's connection (aedes' behaviour for an
// authorizePublish error; MQTT 3.1.1 has no way to refuse a single publish). We keep it: a
// misconfigured gateway (CN or username not its gateway id) shows as a link that never stays
// online, rather than acknowledged messages that go nowhere (Mosquitto 2.0 with 3.1.1). A
// subscription the ACL denies is granted 0x80 (failure) and the connection stays.
import { randomBytes, scrypt as scryptCb, timingSafeEqual, createHash, type ScryptOptions } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { createServer as createTlsServer, TLSSocket } from 'node:tls';
import { Aedes, type AedesOptions, type Client } from 'aedes';

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

/** Identities are one topic level: no `/`, `+`, `#`, `:` (the users file's separator). */
export const IDENTITY = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$/;

export interface EmbeddedBroker {
  port: number;
  close(): Promise<void>;
}

export class BrokerError extends Error {
  readonly code = 'E_BROKER';
}

export interface BrokerAuth {
  /** Password file: lines `username:scrypt:<N>:<r>:<p>:<salt b64>:<hash b64>` (`wardgate broker passwd`). Re-read when it changes. */
  usersFile?: string;
  /** Clients without a certificate or username get console rights. Demo only; loopback only. */
  allowAnonymous?: boolean;
  /** Pin the site (the topic's second level); any single level when absent. */
  site?: string;
  /** Identities with console rights; every other identity is a gateway id. */
  consoles?: string[];
  /** In-memory users (the agent's own link to its embedded broker). */
  extraUsers?: { username: string; password: string }[];
}

export interface BrokerOptions extends BrokerAuth {
  host: string;
  port: number;
  tls?: { ca: string | Buffer; cert: string | Buffer; key: string | Buffer; requireClientCert: boolean };
}

export interface Identity {
  id: string;
  console: boolean;
}

// --- passwords --------------------------------------------------------------------------------

export const SCRYPT = { N: 16384, r: 8, p: 1, keyLength: 32, saltLength: 16 } as const;

function scrypt(password: string | Buffer, salt: Buffer, keyLength: number, opts: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => scryptCb(password, salt, keyLength, opts, (err, key) => (err ? reject(err) : resolve(key))));
}

const scryptOptions = (N: number, r: number, p: number): ScryptOptions => ({ N, r, p, maxmem: 256 * N * r + 1024 * 1024 });

/** One users-file line for this user and password. */
export async function hashPasswordLine(username: string, password: string): Promise<string> {
  if (!IDENTITY.test(username)) throw new BrokerError(`unusable username "${username}": letters, digits, . _ @ - (one topic level)`);
  const salt = randomBytes(SCRYPT.saltLength);
  const hash = await scrypt(password, salt, SCRYPT.keyLength, scryptOptions(SCRYPT.N, SCRYPT.r, SCRYPT.p));
  return `${username}:scrypt:${SCRYPT.N}:${SCRYPT.r}:${SCRYPT.p}:${salt.toString('base64')}:${hash.toString('base64')}`;
}

interface PasswordEntry {
  N: number;
  r: number;
  p: number;
  salt: Buffer;
  hash: Buffer;
}

/** Parses a users file; malformed lines are errors (a typo must not lock out silently). */
export function parseUsersFile(text: string, source = 'users file'): Map<string, PasswordEntry> {
  const users = new Map<string, PasswordEntry>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const f = line.split(':');
    const [user, kind, n, r, p, salt, hash] = f;
    const N = Number(n);
    const R = Number(r);
    const P = Number(p);
    const ok =
      f.length === 7 && user !== undefined && IDENTITY.test(user) && kind === 'scrypt' &&
      Number.isInteger(N) && N >= 1024 && N <= 2 ** 20 && (N & (N - 1)) === 0 &&
      Number.isInteger(R) && R >= 1 && R <= 32 && Number.isInteger(P) && P >= 1 && P <= 16 &&
      salt !== undefined && salt !== '' && hash !== undefined && Buffer.from(hash, 'base64').length >= 16;
    if (!ok || user === undefined || salt === undefined || hash === undefined) throw new BrokerError(`${source}:${i + 1}: not a "username:scrypt:N:r:p:salt:hash" line`);
    users.set(user, { N, r: R, p: P, salt: Buffer.from(salt, 'base64'), hash: Buffer.from(hash, 'base64') });
  });
  return users;
}

async function checkEntry(entry: PasswordEntry, password: Buffer): Promise<boolean> {
  const got = await scrypt(password, entry.salt, entry.hash.length, scryptOptions(entry.N, entry.r, entry.p));
  return timingSafeEqual(got, entry.hash);
}

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest();

class UsersFile {
  private cache: { key: string; users: Map<string, PasswordEntry> } | undefined;
  constructor(private readonly path: string) {
    this.users(); // fail at start, not at the first connection
  }

  users(): Map<string, PasswordEntry> {
    const st = statSync(this.path);
    const key = `${st.mtimeMs}:${st.size}:${st.ino}`;
    if (this.cache?.key !== key) this.cache = { key, users: parseUsersFile(readFileSync(this.path, 'utf8'), this.path) };
    return this.cache.users;
  }
}

// A fixed entry to hash against for unknown users, so that a miss takes as long as a hit.
const DUMMY: PasswordEntry = { ...SCRYPT, salt: Buffer.alloc(16), hash: Buffer.alloc(32) };

// --- the ACL (deploy/mosquitto/wardgate.acl) --------------------------------------------------

const siteOk = (level: string | undefined, site: string | undefined, filter: boolean) =>
  level !== undefined && level !== '' && level !== '#' && (site !== undefined ? level === site : filter || level !== '+');

/** May this identity publish to this topic? */
export function mayPublish(who: Identity, topic: string, site?: string): boolean {
  const l = topic.split('/');
  if (l[0] !== 'wardgate' || l[1] !== 'v1' || !siteOk(l[2], site, false)) return false;
  if (who.console) return l.length === 6 && !!l[3] && l[4] === 'cmd' && !!l[5];
  if (l[3] !== who.id) return false;
  const rest = l.slice(4);
  const [a, b, c] = rest;
  if (rest.length === 1) return a === 'status' || a === 'health' || a === 'events' || a === 'flows' || a === 'cmd-response';
  if (a === 'devices') return rest.length === 3 && !!b && c === 'health';
  return a === 'cmd-response';
}

/** May this identity subscribe to this filter? */
export function maySubscribe(who: Identity, filter: string, site?: string): boolean {
  const l = filter.split('/');
  if (l[0] !== 'wardgate' || l[1] !== 'v1' || l.length < 3) return false;
  if (who.console) return true;
  return l.length === 6 && siteOk(l[2], site, true) && l[3] === who.id && l[4] === 'cmd' && !!l[5] && l[5] !== '#';
}

// --- the broker -------------------------------------------------------------------------------

function authError(returnCode: 2 | 4 | 5, message: string) {
  return Object.assign(new Error(message), { returnCode });
}

function hooks(opts: BrokerAuth): Pick<AedesOptions, 'authenticate' | 'authorizePublish' | 'authorizeSubscribe'> {
  const identities = new WeakMap<Client, Identity>();
  const consoles = new Set(opts.consoles ?? []);
  const file = opts.usersFile !== undefined ? new UsersFile(opts.usersFile) : undefined;
  const extra = new Map((opts.extraUsers ?? []).map((u) => [u.username, sha256(u.password)]));
  const identify = async (client: Client, username: string | undefined, password: Buffer | undefined): Promise<Identity> => {
    const conn = client.conn;
    if (conn instanceof TLSSocket) {
      const cert = conn.getPeerCertificate();
      if (cert && Object.keys(cert).length > 0) {
        // A certificate is the identity (the username is ignored, as use_identity_as_username).
        if (!conn.authorized) throw authError(5, `client certificate refused: ${String(conn.authorizationError)}`);
        const cn = cert.subject?.CN;
        if (typeof cn !== 'string' || !IDENTITY.test(cn)) throw authError(5, 'client certificate without a usable CN');
        return { id: cn, console: consoles.has(cn) };
      }
    }
    if (username === undefined) {
      if (opts.allowAnonymous) return { id: 'anonymous', console: true };
      throw authError(5, 'anonymous clients are refused');
    }
    if (!IDENTITY.test(username) || password === undefined) throw authError(4, 'bad username or password');
    const mem = extra.get(username);
    if (mem) {
      if (timingSafeEqual(sha256(password), mem)) return { id: username, console: consoles.has(username) };
      throw authError(4, 'bad username or password');
    }
    const entry = file?.users().get(username);
    const ok = await checkEntry(entry ?? DUMMY, password);
    if (entry && ok) return { id: username, console: consoles.has(username) };
    throw authError(4, 'bad username or password');
  };
  // A second connection with a client id takes the first one's session over [MQTT-3.1.4-2].
  // So a client id belongs to the first identity that used it, for the broker's lifetime, and a
  // gateway's own form of id (`...-<gateway>`) is reserved to that gateway: one authenticated
  // client cannot knock another gateway offline (and fire its last will) by reusing its id.
  const owners = new Map<string, string>();
  const mayUse = (clientId: string, who: Identity): boolean => {
    const owner = owners.get(clientId);
    if (owner !== undefined) return owner === who.id;
    if (who.console) return !clientId.startsWith('wardgate-') || clientId.startsWith('wardgate-console-');
    return clientId === who.id || clientId.endsWith(`-${who.id}`);
  };
  return {
    authenticate: (client, username, password, done) => {
      identify(client, username, password).then(
        (who) => {
          if (!mayUse(client.id, who)) return done(authError(2, `client id "${client.id}" is not ${who.id}'s to use`), false);
          owners.set(client.id, who.id);
          identities.set(client, who);
          done(null, true);
        },
        (err: Error & { returnCode?: 2 | 4 | 5 }) => done(authError(err.returnCode ?? 5, err.message), false),
      );
    },
    authorizePublish: (client, packet, done) => {
      const who = client ? identities.get(client) : undefined;
      if (who && mayPublish(who, packet.topic, opts.site)) return done(null);
      done(new Error(`not authorized to publish to ${packet.topic}`));
    },
    authorizeSubscribe: (client, sub, done) => {
      const who = identities.get(client);
      done(null, who && maySubscribe(who, sub.topic, opts.site) ? sub : null); // null: granted 0x80
    },
  };
}

async function listen(opts: BrokerOptions, auth: boolean): Promise<EmbeddedBroker> {
  const loopback = LOOPBACK.has(opts.host);
  if (!loopback && !opts.tls) throw new BrokerError(`refusing to listen on ${opts.host} without TLS: consoles and gateways on the network must reach the broker over TLS (tls: in broker.yaml), or bind 127.0.0.1`);
  if (!loopback && opts.allowAnonymous) throw new BrokerError(`refusing anonymous clients on ${opts.host}: allowAnonymous is for a loopback demo only`);
  if (opts.site !== undefined && !IDENTITY.test(opts.site)) throw new BrokerError(`unusable site "${opts.site}"`);
  const broker = await Aedes.createBroker(auth ? hooks(opts) : {});
  let server: Server;
  if (opts.tls) {
    const t = opts.tls;
    const read = (v: string | Buffer) => (typeof v === 'string' ? readFileSync(v) : v);
    server = createTlsServer({ ca: read(t.ca), cert: read(t.cert), key: read(t.key), requestCert: true, rejectUnauthorized: t.requireClientCert, minVersion: 'TLSv1.2' }, (socket) => broker.handle(socket));
  } else {
    server = createServer(broker.handle);
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : opts.port;
  return {
    port,
    // aedes first: it closes the client sockets that would keep server.close waiting.
    close: () => new Promise<void>((resolve) => broker.close(() => server.close(() => resolve()))),
  };
}

/** A broker with authentication and the wardgate ACL. */
export function startBroker(opts: BrokerOptions): Promise<EmbeddedBroker> {
  return listen(opts, true);
}

/**
 * The agent's embedded broker: loopback only, built on startBroker. The agent always passes
 * `auth` (its own link is an extra user). Without `auth` it is open (no authentication, no
 * ACL), as it was before: for tests of the link and the console only.
 */
export async function startEmbeddedBroker(opts: { host: string; port: number; auth?: BrokerAuth }): Promise<EmbeddedBroker> {
  if (!LOOPBACK.has(opts.host)) {
    throw new BrokerError(`the embedded broker binds loopback only, not ${opts.host}: consoles on the network reach a site broker (wardgate broker with TLS, or Mosquitto)`);
  }
  return opts.auth ? startBroker({ host: opts.host, port: opts.port, ...opts.auth }) : listen({ host: opts.host, port: opts.port }, false);
}
