// Building and signing a command request (docs/commands.md): a fresh random nonce, issued now,
// expiring after a short lifetime, every field but the signature covered by Ed25519 over the
// canonical JSON (RFC 8785), replyTo included.
import { randomBytes, sign, type KeyObject } from 'node:crypto';
import { signingInput } from '../mqtt/commands.js';
import type { CommandRequest } from '../mqtt/topics.js';

export type UnsignedRequest = Omit<CommandRequest, 'signature'>;

export interface RequestSpec {
  site: string;
  gateway: string;
  name: string;
  args?: Record<string, unknown>;
  keyId: string;
  /** Lifetime in seconds (default 120): long enough for clock differences, short for replays. */
  ttlSeconds?: number;
  /** Where a gateway should answer; signed with the rest. */
  replyTo?: string;
  now?: Date;
}

export const DEFAULT_TTL_SECONDS = 120;

/** 18 random bytes, base64url: 24 characters, 144 bits. */
export function newNonce(): string {
  return randomBytes(18).toString('base64url');
}

export function buildRequest(spec: RequestSpec): UnsignedRequest {
  const now = spec.now ?? new Date();
  const ttl = spec.ttlSeconds ?? DEFAULT_TTL_SECONDS;
  if (!(ttl > 0)) throw new RangeError('the lifetime must be positive');
  return {
    name: spec.name,
    args: spec.args ?? {},
    site: spec.site,
    gateway: spec.gateway,
    nonce: newNonce(),
    issuedAt: now.toISOString(),
    expiresAt: new Date(now.getTime() + ttl * 1000).toISOString(),
    keyId: spec.keyId,
    ...(spec.replyTo !== undefined ? { replyTo: spec.replyTo } : {}),
  };
}

export function signRequest(request: UnsignedRequest, privateKey: KeyObject): CommandRequest {
  const signature = sign(null, signingInput(request), privateKey).toString('base64');
  return { ...request, signature };
}
