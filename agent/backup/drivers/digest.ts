// HTTP Digest access authentication, client side (RFC 7616): the challenge's parameters, and the
// Authorization header answering it, for MD5 and SHA-256 (and their -sess variants) with qop
// "auth", or without qop for RFC 2069 servers (7616 section 3.4 still allows that answer).
import { createHash, randomBytes } from 'node:crypto';

export interface DigestChallenge {
  realm: string;
  nonce: string;
  opaque?: string;
  algorithm: 'MD5' | 'MD5-sess' | 'SHA-256' | 'SHA-256-sess';
  /** 'auth' when the server offers it; undefined for a challenge without qop. */
  qop?: 'auth';
  userhash: boolean;
}

/** Splits `WWW-Authenticate` values into challenges: scheme and auth-params (RFC 7235 section 2.1). */
export function parseChallenges(values: string[]): { scheme: string; params: Map<string, string> }[] {
  const out: { scheme: string; params: Map<string, string> }[] = [];
  for (const value of values) {
    let i = 0;
    let current: { scheme: string; params: Map<string, string> } | undefined;
    while (i < value.length) {
      while (i < value.length && (value[i] === ' ' || value[i] === ',' || value[i] === '\t')) i++;
      const tokenMatch = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+/.exec(value.slice(i));
      if (!tokenMatch) break;
      const token = tokenMatch[0];
      i += token.length;
      let j = i;
      while (value[j] === ' ' || value[j] === '\t') j++;
      if (value[j] === '=' && current !== undefined) {
        // auth-param: token BWS "=" BWS ( token / quoted-string )
        j++;
        while (value[j] === ' ' || value[j] === '\t') j++;
        let v = '';
        if (value[j] === '"') {
          j++;
          while (j < value.length && value[j] !== '"') {
            if (value[j] === '\\' && j + 1 < value.length) j++;
            v += value[j];
            j++;
          }
          j++;
        } else {
          const m = /^[^\s,]*/.exec(value.slice(j));
          v = m?.[0] ?? '';
          j += v.length;
        }
        current.params.set(token.toLowerCase(), v);
        i = j;
      } else {
        current = { scheme: token.toLowerCase(), params: new Map() };
        out.push(current);
      }
    }
  }
  return out;
}

const ALGORITHMS = ['SHA-256', 'SHA-256-sess', 'MD5', 'MD5-sess'] as const;

/**
 * The Digest challenge to answer: among those offered, the first with an algorithm we know,
 * SHA-256 before MD5 (7616 section 3.7: the client uses the first it supports, and servers list
 * their preference; we prefer the stronger hash whatever the order). Undefined when none fits.
 */
export function pickDigestChallenge(values: string[]): DigestChallenge | undefined {
  const candidates: DigestChallenge[] = [];
  for (const c of parseChallenges(values)) {
    if (c.scheme !== 'digest') continue;
    const realm = c.params.get('realm');
    const nonce = c.params.get('nonce');
    if (realm === undefined || nonce === undefined) continue;
    const algName = c.params.get('algorithm') ?? 'MD5';
    const algorithm = ALGORITHMS.find((a) => a.toLowerCase() === algName.toLowerCase());
    if (algorithm === undefined) continue;
    const qops = c.params.get('qop')?.split(',').map((q) => q.trim().toLowerCase());
    // A server that asks only for auth-int (a hash of the body) is not one we can answer with qop auth.
    if (qops !== undefined && !qops.includes('auth')) continue;
    const opaque = c.params.get('opaque');
    candidates.push({ realm, nonce, algorithm, userhash: c.params.get('userhash')?.toLowerCase() === 'true', ...(qops ? { qop: 'auth' as const } : {}), ...(opaque !== undefined ? { opaque } : {}) });
  }
  return candidates.sort((a, b) => ALGORITHMS.indexOf(a.algorithm) - ALGORITHMS.indexOf(b.algorithm))[0];
}

function quote(v: string): string {
  return `"${v.replace(/(["\\])/g, '\\$1')}"`;
}

/** The Authorization header for a request, given the challenge (7616 section 3.4). */
export function digestAuthorization(
  ch: DigestChallenge,
  req: { method: string; uri: string; username: string; password: string; nc?: number; cnonce?: string },
): string {
  const hashName = ch.algorithm.startsWith('SHA-256') ? 'sha256' : 'md5';
  const H = (s: string) => createHash(hashName).update(s, 'utf8').digest('hex');
  const cnonce = req.cnonce ?? randomBytes(16).toString('hex');
  const nc = (req.nc ?? 1).toString(16).padStart(8, '0');
  let ha1 = H(`${req.username}:${ch.realm}:${req.password}`);
  if (ch.algorithm.endsWith('-sess')) ha1 = H(`${ha1}:${ch.nonce}:${cnonce}`);
  const ha2 = H(`${req.method}:${req.uri}`);
  const response = ch.qop ? H(`${ha1}:${ch.nonce}:${nc}:${cnonce}:${ch.qop}:${ha2}`) : H(`${ha1}:${ch.nonce}:${ha2}`);
  // 3.4.4: with userhash, the username field carries H(username:realm).
  const username = ch.userhash ? H(`${req.username}:${ch.realm}`) : req.username;
  const parts = [
    `username=${quote(username)}`,
    `realm=${quote(ch.realm)}`,
    `nonce=${quote(ch.nonce)}`,
    `uri=${quote(req.uri)}`,
    `algorithm=${ch.algorithm}`,
    `response=${quote(response)}`,
  ];
  if (ch.qop) parts.push(`qop=${ch.qop}`, `nc=${nc}`, `cnonce=${quote(cnonce)}`);
  if (ch.opaque !== undefined) parts.push(`opaque=${quote(ch.opaque)}`);
  if (ch.userhash) parts.push('userhash=true');
  return `Digest ${parts.join(', ')}`;
}
