// The HTTP(S) driver against a device web server run here (node https, a self-signed certificate
// made by openssl): certificate pinning, basic, digest (MD5 and SHA-256; the server's digest check
// is first proven against curl, an independent client) and bearer auth, restore by PUT, the size
// limit. Nothing listens beyond 127.0.0.1.
import { execFile, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { BackupDriverError, createDriver } from '../../agent/backup/drivers/index.js';
import { httpDriver } from '../../agent/backup/drivers/http.js';
import { DriverSchema } from '../../agent/backup/schema.js';
import { missing, never, tempDir } from './helpers.js';

const skip = missing('openssl', ['openssl', 'version']);
if (skip) console.warn(`[backup drivers http] skipped: ${skip}`);
const curlMissing = missing('curl', ['curl', '--version']);
if (curlMissing) console.warn(`[backup drivers http] the digest cross-check with curl is skipped: ${curlMissing}`);

const CONFIG = 'hostname=ct-01\nmodality=CT\naet=CT01\n';
const USER = 'service';
const PASSWORD = 'pa:ss "wörd"';
const TOKEN = 'tok-3f1c9a';

interface Seen {
  method: string;
  url: string;
  authorization?: string;
  body: Buffer;
}

/** Checks a Digest Authorization header (RFC 7616 3.4) the way a device would. */
function digestOk(header: string | undefined, method: string, realm: string, nonces: Set<string>): boolean {
  if (header?.startsWith('Digest ') !== true) return false;
  const p = new Map<string, string>();
  for (const m of header.slice(7).matchAll(/(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))/g)) p.set(m[1]!, (m[2] ?? m[3] ?? '').replace(/\\(.)/g, '$1'));
  const alg = p.get('algorithm') ?? 'MD5';
  const h = (s: string) => createHash(alg.startsWith('SHA-256') ? 'sha256' : 'md5').update(s).digest('hex');
  if (p.get('username') !== USER || p.get('realm') !== realm || !nonces.has(p.get('nonce') ?? '')) return false;
  const ha1 = h(`${USER}:${realm}:${PASSWORD}`);
  const ha2 = h(`${method}:${p.get('uri') ?? ''}`);
  if (p.get('qop') !== 'auth') return false;
  return p.get('response') === h(`${ha1}:${p.get('nonce') ?? ''}:${p.get('nc') ?? ''}:${p.get('cnonce') ?? ''}:auth:${ha2}`);
}

describe.skipIf(skip !== undefined)('http driver against an HTTPS device', () => {
  const dir = tempDir('wg-backup-http-');
  let server: Server;
  let port: number;
  let fingerprint: string;
  let stored: Buffer = Buffer.from(CONFIG);
  let seen: Seen[] = [];
  const nonces = new Set<string>();
  const ctx = { baseDir: dir.path };

  function handle(req: IncomingMessage, res: ServerResponse, body: Buffer) {
    seen.push({ method: req.method ?? '', url: req.url ?? '', ...(req.headers.authorization !== undefined ? { authorization: req.headers.authorization } : {}), body });
    const url = new URL(req.url ?? '/', 'https://device');
    const auth = req.headers.authorization;
    const deny = (challenge: string[]) => {
      res.writeHead(401, { 'www-authenticate': challenge }).end('no');
    };
    switch (url.pathname) {
      case '/config':
        if (req.method === 'PUT') {
          stored = body;
          res.writeHead(204).end();
        } else res.writeHead(200, { 'content-type': 'text/plain' }).end(stored);
        return;
      case '/basic':
        if (auth !== `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}`) return deny(['Basic realm="device"']);
        res.end(stored);
        return;
      case '/bearer':
        if (auth !== `Bearer ${TOKEN}`) return deny(['Bearer realm="device"']);
        res.end(stored);
        return;
      case '/digest-md5':
      case '/digest-sha256': {
        const realm = 'ct-01@device';
        if (digestOk(auth, req.method ?? '', realm, nonces)) {
          if (req.method === 'PUT') stored = body;
          res.end(stored);
          return;
        }
        const nonce = randomBytes(12).toString('hex');
        nonces.add(nonce);
        const algs = url.pathname === '/digest-md5' ? ['MD5'] : ['SHA-256', 'MD5'];
        // Two challenges in two headers, as RFC 7616 3.7 shows: the client must pick SHA-256.
        return deny(algs.map((a) => `Digest realm="${realm}", qop="auth, auth-int", algorithm=${a}, nonce="${nonce}", opaque="c0ffee"`));
      }
      case '/big':
        res.end(Buffer.alloc(4096, 0x41));
        return;
      default:
        res.writeHead(404).end();
    }
  }

  beforeAll(async () => {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', join(dir.path, 'key.pem'), '-out', join(dir.path, 'cert.pem'), '-days', '2', '-subj', '/CN=ct-01.device.local'], { stdio: 'ignore' });
    // The pin as an operator would take it, from openssl itself.
    fingerprint = /=([0-9A-F:]+)/.exec(execFileSync('openssl', ['x509', '-noout', '-fingerprint', '-sha256', '-in', join(dir.path, 'cert.pem')], { encoding: 'utf8' }))![1]!;
    writeFileSync(join(dir.path, 'password'), `${PASSWORD}\n`);
    writeFileSync(join(dir.path, 'wrong-password'), 'nope\n');
    writeFileSync(join(dir.path, 'token'), `${TOKEN}\n`);
    server = createServer({ key: readFileSync(join(dir.path, 'key.pem')), cert: readFileSync(join(dir.path, 'cert.pem')) }, (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => handle(req, res, Buffer.concat(chunks)));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    await new Promise((r) => server?.close(r));
    server?.closeAllConnections();
    dir.remove();
  });
  beforeEach(() => {
    seen = [];
    stored = Buffer.from(CONFIG);
  });

  const drv = (extra: Record<string, unknown>, path = '/config') => createDriver({ id: 'ct-01' }, DriverSchema.parse({ type: 'http', url: `https://127.0.0.1:${port}${path}`, pin: fingerprint, ...extra }), ctx);
  const fails = async (p: Promise<unknown>) => {
    const err = await p.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackupDriverError);
    return err as BackupDriverError;
  };

  it('fetches through the right pin, as text', async () => {
    const got = await drv({}).fetch(never);
    expect(got.bytes.toString()).toBe(CONFIG);
    expect(got.format).toBe('text');
    expect(got.source).toBe(`https://127.0.0.1:${port}/config`);
    // The pin may be written without colons, in lower case.
    expect((await drv({ pin: fingerprint.replace(/:/g, '').toLowerCase() }).fetch(never)).bytes.toString()).toBe(CONFIG);
  });

  it('refuses a wrong pin before sending anything', async () => {
    const wrong = fingerprint.replace(/^../, fingerprint.startsWith('00') ? '11' : '00');
    const err = await fails(drv({ pin: wrong, auth: { type: 'basic', username: USER, passwordFile: 'password' } }).fetch(never));
    expect(err.code).toBe('pin');
    expect(err.message).toContain(`has SHA-256 ${fingerprint}`);
    expect(err.retryable).toBe(false);
    expect(seen).toEqual([]);
  });

  it('refuses a self-signed certificate without a pin', async () => {
    const d = createDriver({ id: 'ct-01' }, DriverSchema.parse({ type: 'http', url: `https://127.0.0.1:${port}/config` }), ctx);
    const err = await fails(d.fetch(never));
    expect(err.code).toBe('pin');
    expect(err.message).toMatch(/not trusted \(DEPTH_ZERO_SELF_SIGNED_CERT.*set pin/);
    expect(seen).toEqual([]);
  });

  it('basic auth: the password from its file; a wrong one is an auth error', async () => {
    expect((await drv({ auth: { type: 'basic', username: USER, passwordFile: 'password' } }, '/basic').fetch(never)).bytes.toString()).toBe(CONFIG);
    const err = await fails(drv({ auth: { type: 'basic', username: USER, passwordFile: 'wrong-password' } }, '/basic').fetch(never));
    expect(err.code).toBe('auth');
    expect(err.message).toMatch(/HTTP 401: the basic credentials were refused/);
    const noFile = await fails(drv({ auth: { type: 'basic', username: USER, passwordFile: 'absent' } }, '/basic').fetch(never));
    expect(noFile.code).toBe('secret');
  });

  it.skipIf(curlMissing !== undefined)('the test server\'s digest check accepts curl and refuses a wrong password (so it can judge the driver)', async () => {
    // Not spawnSync: the server runs on this process's event loop.
    const curl = (pass: string, path: string) =>
      new Promise<string>((resolve) => {
        execFile('curl', ['-sk', '--digest', '-u', `${USER}:${pass}`, '-o', '/dev/null', '-w', '%{http_code}', `https://127.0.0.1:${port}${path}`], { encoding: 'utf8', timeout: 10000 }, (_e, out) => resolve(out));
      });
    expect(await curl(PASSWORD, '/digest-md5')).toBe('200');
    expect(await curl(PASSWORD, '/digest-sha256')).toBe('200');
    expect(await curl('nope', '/digest-md5')).toBe('401');
  });

  it('digest auth with MD5 and SHA-256 (preferred when offered), and a refused password', async () => {
    for (const path of ['/digest-md5', '/digest-sha256']) {
      seen = [];
      expect((await drv({ auth: { type: 'digest', username: USER, passwordFile: 'password' } }, path).fetch(never)).bytes.toString()).toBe(CONFIG);
      expect(seen).toHaveLength(2);
      expect(seen[1]!.authorization).toMatch(new RegExp(`algorithm=${path === '/digest-md5' ? 'MD5' : 'SHA-256'},.*qop=auth, nc=00000001, cnonce="[0-9a-f]{32}", opaque="c0ffee"`));
    }
    const err = await fails(drv({ auth: { type: 'digest', username: USER, passwordFile: 'wrong-password' } }, '/digest-sha256').fetch(never));
    expect(err.code).toBe('auth');
  });

  it('bearer auth', async () => {
    expect((await drv({ auth: { type: 'bearer', tokenFile: 'token' } }, '/bearer').fetch(never)).bytes.toString()).toBe(CONFIG);
    expect((await fails(drv({ auth: { type: 'none' } }, '/bearer').fetch(never))).message).toMatch(/asks for credentials and none are configured/);
  });

  it('restores by PUT (with digest auth too), and has no restore unless configured', async () => {
    expect('restore' in drv({})).toBe(false);
    const next = Buffer.from('hostname=ct-01\nmodality=CT\naet=CT02\n');
    await drv({ restore: { method: 'PUT' } }).restore!(next, never);
    expect(stored.equals(next)).toBe(true);
    expect(seen.at(-1)).toMatchObject({ method: 'PUT', url: '/config' });
    stored = Buffer.from(CONFIG);
    await drv({ auth: { type: 'digest', username: USER, passwordFile: 'password' }, restore: { method: 'PUT' } }, '/digest-sha256').restore!(next, never);
    expect(stored.equals(next)).toBe(true);
  });

  it('stops at the size limit, and names a missing path', async () => {
    const d = httpDriver(DriverSchema.parse({ type: 'http', url: `https://127.0.0.1:${port}/big`, pin: fingerprint }) as never, ctx, { maxBytes: 1000 });
    expect((await fails(d.fetch(never))).code).toBe('too-large');
    expect((await fails(drv({}, '/nothing').fetch(never))).code).toBe('not-found');
  });

  it('times out when the signal fires', async () => {
    const silent = createHttpServer(() => {});
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    try {
      const d = createDriver({ id: 'ct-01' }, DriverSchema.parse({ type: 'http', url: `http://127.0.0.1:${(silent.address() as AddressInfo).port}/config` }), ctx);
      const err = await fails(d.fetch(AbortSignal.timeout(300)));
      expect(err.code).toBe('timeout');
    } finally {
      silent.closeAllConnections();
      await new Promise((r) => silent.close(r));
    }
  });
});
