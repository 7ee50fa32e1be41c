// Console keys: made once, the private half readable by its owner only, the public half in the
// form gateway.yaml takes; signing with a loaded key verifies on a gateway.
import { createPublicKey, verify } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConsoleKeyError, generateConsoleKey, loadConsoleKey, publicKeyOf } from '../../agent/console/keys.js';
import { buildRequest, newNonce, signRequest } from '../../agent/console/sign.js';
import { parsePublicKey, signingInput } from '../../agent/mqtt/commands.js';
import { CommandRequest } from '../../agent/mqtt/topics.js';

let dir = '';
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'wg-keys-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('console keys', () => {
  it('writes the private key 0600 and the public key as base64 of 32 raw bytes', () => {
    const k = generateConsoleKey(join(dir, 'keys'), 'ops-laptop');
    expect(k.privateKeyPath).toBe(join(dir, 'keys', 'ops-laptop.key'));
    expect(statSync(k.privateKeyPath).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, 'keys')).mode & 0o777).toBe(0o700);
    expect(readFileSync(k.privateKeyPath, 'utf8')).toMatch(/^-----BEGIN PRIVATE KEY-----/);
    expect(readFileSync(k.publicKeyPath, 'utf8').trim()).toBe(k.publicKey);
    expect(Buffer.from(k.publicKey, 'base64')).toHaveLength(32);
    const loaded = loadConsoleKey(k.privateKeyPath);
    expect(publicKeyOf(loaded)).toBe(k.publicKey);
    parsePublicKey(k.publicKey); // what a gateway does with it
  });

  it('never overwrites a key, and checks the id', () => {
    generateConsoleKey(dir, 'ops');
    expect(() => generateConsoleKey(dir, 'ops')).toThrow(/is never overwritten/);
    expect(() => generateConsoleKey(dir, '../evil')).toThrow(ConsoleKeyError);
  });

  it('refuses a private key that others can read, or that is not Ed25519', () => {
    const k = generateConsoleKey(dir);
    chmodSync(k.privateKeyPath, 0o644);
    expect(() => loadConsoleKey(k.privateKeyPath)).toThrow(/mode 0644.*chmod 600/);
    expect(() => loadConsoleKey(join(dir, 'missing.key'))).toThrow(ConsoleKeyError);
    chmodSync(k.publicKeyPath, 0o600);
    expect(() => loadConsoleKey(k.publicKeyPath)).toThrow(/not a PEM private key/);
  });
});

describe('signing', () => {
  it('builds a request the schema accepts, with a fresh nonce and the lifetime asked for', () => {
    const k = generateConsoleKey(dir);
    const key = loadConsoleKey(k.privateKeyPath);
    const now = new Date('2030-01-01T00:00:00Z');
    const r = signRequest(buildRequest({ site: 's', gateway: 'g', name: 'ping', keyId: 'console', ttlSeconds: 30, now, replyTo: 'wardgate/v1/s/g/cmd-response/x' }), key);
    expect(CommandRequest.parse(r)).toEqual(r);
    expect(r).toMatchObject({ issuedAt: '2030-01-01T00:00:00.000Z', expiresAt: '2030-01-01T00:00:30.000Z', args: {}, replyTo: 'wardgate/v1/s/g/cmd-response/x' });
    expect(Buffer.from(r.nonce, 'base64url').length).toBeGreaterThanOrEqual(16);
    expect(newNonce()).not.toBe(newNonce());
    expect(verify(null, signingInput(r), createPublicKey(key), Buffer.from(r.signature, 'base64'))).toBe(true);
    expect(verify(null, signingInput({ ...r, replyTo: 'elsewhere' }), createPublicKey(key), Buffer.from(r.signature, 'base64'))).toBe(false);
  });
});
