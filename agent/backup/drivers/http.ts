// HTTP(S): GET (or POST) a configuration; PUT or POST it back where the device allows it.
// Auth: basic, digest (RFC 7616) or a bearer token, each read from its file at use.
//
// The connection is opened here, not by http.request, so that the server is checked before a
// single request byte (an Authorization header included) goes out: with a pin, the leaf
// certificate's SHA-256 must match and the CA chain is not consulted; without one, node's usual
// checks apply (a trusted CA and the host name). A pin cannot be done with checkServerIdentity
// alone: node calls it only after the chain verified, which a self-signed certificate never does.
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { connect as netConnect, isIP, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import type { BackupDriver, FetchedConfig } from '../types.js';
import type { DriverOf } from '../schema.js';
import { abortable, BackupDriverError, fetched, MAX_CONFIG_BYTES, networkError, readSecret, type DriverContext } from './common.js';
import { digestAuthorization, pickDigestChallenge } from './digest.js';

type HttpConfig = DriverOf<'http'>;

interface Response {
  status: number;
  /** Header values by lower-case name, repeated headers kept apart (WWW-Authenticate may come twice). */
  headers: Map<string, string[]>;
  body: Buffer;
}

/** A pin as node prints fingerprint256: upper-case hex pairs joined by ":". */
export function normalizePin(pin: string): string {
  const hex = pin.replace(/:/g, '').toUpperCase();
  return hex.replace(/(..)(?!$)/g, '$1:');
}

export function httpDriver(cfg: HttpConfig, ctx: DriverContext, opts: { maxBytes?: number } = {}): BackupDriver {
  const url = new URL(cfg.url);
  const maxBytes = opts.maxBytes ?? MAX_CONFIG_BYTES;
  const pin = cfg.pin !== undefined ? normalizePin(cfg.pin) : undefined;
  if (pin !== undefined && url.protocol !== 'https:') throw new BackupDriverError('invalid', `${cfg.url}: a certificate pin needs an https:// URL`);
  const label = (u: URL) => `${u.protocol}//${u.host}${u.pathname}${u.search}`;

  async function exchange(method: string, target: URL, body: Buffer | undefined, signal: AbortSignal): Promise<Buffer> {
    const headers: Record<string, string> = {};
    const auth = cfg.auth;
    switch (auth.type) {
      case 'none':
      case 'digest':
        break;
      case 'basic':
        headers.authorization = `Basic ${Buffer.from(`${auth.username}:${await readSecret(ctx, auth.passwordFile, 'password')}`).toString('base64')}`;
        break;
      case 'bearer':
        headers.authorization = `Bearer ${await readSecret(ctx, auth.tokenFile, 'token')}`;
        break;
    }
    let res = await once(target, method, headers, body, signal, pin, maxBytes);
    if (res.status === 401 && auth.type === 'digest') {
      const challenge = pickDigestChallenge(res.headers.get('www-authenticate') ?? []);
      if (challenge === undefined) throw new BackupDriverError('auth', `${label(target)}: 401 without a Digest challenge we can answer (MD5 or SHA-256, qop auth): ${(res.headers.get('www-authenticate') ?? []).join(' | ') || 'none'}`);
      headers.authorization = digestAuthorization(challenge, { method, uri: `${target.pathname}${target.search}`, username: auth.username, password: await readSecret(ctx, auth.passwordFile, 'password') });
      res = await once(target, method, headers, body, signal, pin, maxBytes);
    }
    if (res.status >= 200 && res.status < 300) return res.body;
    const what = `${method} ${label(target)}: HTTP ${res.status}`;
    if (res.status === 401 || res.status === 403) throw new BackupDriverError('auth', `${what}: ${auth.type === 'none' ? 'the device asks for credentials and none are configured' : `the ${auth.type} credentials were refused`}`);
    if (res.status === 404) throw new BackupDriverError('not-found', what);
    if (res.status >= 300 && res.status < 400) throw new BackupDriverError('status', `${what} to ${res.headers.get('location')?.[0] ?? '?'} (redirects are not followed)`);
    throw new BackupDriverError('status', what);
  }

  const driver: BackupDriver = {
    type: 'http',
    async fetch(signal: AbortSignal): Promise<FetchedConfig> {
      return fetched(await exchange(cfg.method, url, undefined, signal), label(url));
    },
  };
  const restoreCfg = cfg.restore;
  if (restoreCfg !== undefined) {
    driver.restore = async (bytes: Buffer, signal: AbortSignal): Promise<void> => {
      const target = new URL(restoreCfg.url ?? cfg.url);
      if (pin !== undefined && target.protocol !== 'https:') throw new BackupDriverError('invalid', `${label(target)}: the restore URL must be https:// like the pinned one`);
      await exchange(restoreCfg.method, target, bytes, signal);
    };
  }
  return driver;
}

/** Opens the connection and checks the server (pin, or CA and name) before anything is sent. */
async function open(url: URL, pin: string | undefined, signal: AbortSignal): Promise<Socket> {
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
  const target = `${url.protocol}//${url.host}`;
  let socket: Socket | undefined;
  let ready = false;
  return abortable(
    signal,
    target,
    () =>
      new Promise<Socket>((resolve, reject) => {
        if (url.protocol === 'http:') {
          const s = netConnect({ host, port });
          socket = s;
          s.once('error', (err) => reject(networkError(err, target)));
          s.once('connect', () => {
            ready = true;
            resolve(s);
          });
          return;
        }
        const s: TLSSocket = tlsConnect({
          host,
          port,
          // SNI carries names only (RFC 6066 section 3).
          ...(isIP(host) === 0 ? { servername: host } : {}),
          rejectUnauthorized: pin === undefined,
        });
        socket = s;
        s.once('error', (err: Error & { code?: string }) => {
          const code = err.code ?? '';
          if (/CERT|SELF_SIGNED|ERR_TLS_CERT_ALTNAME_INVALID|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER/.test(code)) {
            reject(new BackupDriverError('pin', `${target}: the server's certificate is not trusted (${code}: ${err.message}); for a device with a self-signed certificate, set pin to its SHA-256 fingerprint`, { cause: err }));
          } else reject(networkError(err, target));
        });
        s.once('secureConnect', () => {
          if (pin !== undefined) {
            const seen = s.getPeerCertificate().fingerprint256;
            if (seen !== pin) {
              s.destroy();
              reject(new BackupDriverError('pin', `${target}: the server's certificate has SHA-256 ${seen || 'none'}, and the pin is ${pin}: refused`));
              return;
            }
          }
          ready = true;
          resolve(s);
        });
      }),
    // A socket that never became ready (an error, a refused pin, an abort) is closed here.
    () => {
      if (!ready) socket?.destroy();
    },
  );
}

async function once(url: URL, method: string, headers: Record<string, string>, body: Buffer | undefined, signal: AbortSignal, pin: string | undefined, maxBytes: number): Promise<Response> {
  const socket = await open(url, pin, signal);
  const target = `${method} ${url.protocol}//${url.host}${url.pathname}`;
  return abortable(
    signal,
    target,
    () =>
      new Promise<Response>((resolve, reject) => {
        const req = httpRequest({
          createConnection: () => socket,
          host: url.hostname,
          port: url.port,
          path: `${url.pathname}${url.search}`,
          method,
          headers: {
            ...headers,
            host: url.host,
            connection: 'close',
            accept: '*/*',
            ...(body !== undefined ? { 'content-type': 'application/octet-stream', 'content-length': String(body.length) } : {}),
          },
        });
        req.once('error', (err) => reject(networkError(err, target)));
        req.once('response', (res: IncomingMessage) => {
          const length = Number(res.headers['content-length']);
          if (Number.isFinite(length) && length > maxBytes) {
            res.destroy();
            reject(new BackupDriverError('too-large', `${target}: ${length} bytes, over the limit of ${maxBytes}`));
            return;
          }
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (chunk: Buffer) => {
            size += chunk.length;
            if (size > maxBytes) {
              res.destroy();
              reject(new BackupDriverError('too-large', `${target}: more than ${maxBytes} bytes`));
              return;
            }
            chunks.push(chunk);
          });
          res.once('error', (err) => reject(networkError(err, target)));
          res.once('end', () => {
            const h = new Map<string, string[]>();
            for (let i = 0; i + 1 < res.rawHeaders.length; i += 2) {
              const name = (res.rawHeaders[i] ?? '').toLowerCase();
              h.set(name, [...(h.get(name) ?? []), res.rawHeaders[i + 1] ?? '']);
            }
            resolve({ status: res.statusCode ?? 0, headers: h, body: Buffer.concat(chunks) });
          });
        });
        req.end(body);
      }),
    () => void socket.destroy(),
  );
}
