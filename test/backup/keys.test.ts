// The data key file and the gateway's signing key: made once, never overwritten, refused when
// others can read them or when they are not what they should be; and the blob format's own
// checks (the GCM tag covers the header and the device binding).
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { decryptBlob, encryptBlob, sha256 } from '../../agent/backup/blob.js';
import { BackupKeyError, BackupVerifyError } from '../../agent/backup/errors.js';
import { createDataKeyFile, dataKeyId, ensureGatewayKey, FileKeyProvider, gatewayKeyPaths, loadGatewayKey, parseGatewayPublicKey, readGatewayPublicKey } from '../../agent/backup/keys.js';
import { flip } from './store-helpers.js';

let dir = '';
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'wg-bkeys-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('the data key', () => {
  it('is made 0600 as base64 of 32 bytes, once', async () => {
    const path = join(dir, 'keys', 'backup-data.key');
    expect(createDataKeyFile(path)).toBe(true);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const before = readFileSync(path);
    expect(createDataKeyFile(path)).toBe(false);
    expect(readFileSync(path)).toEqual(before);
    const p = new FileKeyProvider(path);
    const key = await p.dataKey();
    expect(key).toHaveLength(32);
    expect(Buffer.from(before.toString().trim(), 'base64')).toEqual(key);
    expect(p.id).toBe(dataKeyId(key));
    expect(p.id).toMatch(/^[0-9a-f]{16}$/);
  });

  it('is read raw too', async () => {
    const raw = randomBytes(32);
    const path = join(dir, 'raw.key');
    writeFileSync(path, raw, { mode: 0o600 });
    expect(await new FileKeyProvider(path).dataKey()).toEqual(raw);
  });

  it('is refused when missing, of the wrong length, or readable by others', () => {
    expect(() => new FileKeyProvider(join(dir, 'none.key'))).toThrow(/no data key here \(wardgate backup keygen makes one\)/);
    const short = join(dir, 'short.key');
    writeFileSync(short, randomBytes(16), { mode: 0o600 });
    expect(() => new FileKeyProvider(short)).toThrow(/a data key is 32 bytes, raw or as base64 \(44 characters\); this file holds 16 bytes/);
    const b64short = join(dir, 'b64.key');
    writeFileSync(b64short, `${randomBytes(24).toString('base64')}\n`, { mode: 0o600 });
    expect(() => new FileKeyProvider(b64short)).toThrow(BackupKeyError);
    const open = join(dir, 'open.key');
    createDataKeyFile(open);
    chmodSync(open, 0o604);
    expect(() => new FileKeyProvider(open)).toThrow(/mode 0604 lets others read the data key; chmod 600 it/);
  });
});

describe('the gateway signing key', () => {
  it('is made on first use: the private half 0600 PEM, the public half SPKI PEM', () => {
    const made = ensureGatewayKey(dir);
    expect(made.created).toBe(true);
    expect(made.privateKeyPath).toBe(join(dir, 'keys', 'gateway-ed25519.pem'));
    expect(statSync(made.privateKeyPath).mode & 0o777).toBe(0o600);
    expect(readFileSync(made.publicKeyPath, 'utf8')).toMatch(/^-----BEGIN PUBLIC KEY-----/);
    const key = loadGatewayKey(dir);
    expect(readGatewayPublicKey(made.publicKeyPath).fingerprint).toBe(key.fingerprint);
    expect(ensureGatewayKey(dir).created).toBe(false);
    expect(loadGatewayKey(dir).fingerprint).toBe(key.fingerprint);
  });

  it('gets its public half back after a crash between the two writes', () => {
    const paths = ensureGatewayKey(dir);
    const fp = loadGatewayKey(dir).fingerprint;
    rmSync(paths.publicKeyPath);
    ensureGatewayKey(dir);
    expect(readGatewayPublicKey(paths.publicKeyPath).fingerprint).toBe(fp);
  });

  it('is refused when others can read it, when its .pub is another key\'s, and when absent with create off', () => {
    expect(() => loadGatewayKey(dir, { create: false })).toThrow(/no gateway signing key here/);
    const paths = ensureGatewayKey(dir);
    chmodSync(paths.privateKeyPath, 0o644);
    expect(() => loadGatewayKey(dir)).toThrow(/mode 0644 lets others read the gateway signing key; chmod 600/);
    chmodSync(paths.privateKeyPath, 0o600);
    const other = mkdtempSync(join(tmpdir(), 'wg-bkeys-other-'));
    try {
      writeFileSync(paths.publicKeyPath, readFileSync(ensureGatewayKey(other).publicKeyPath));
    } finally {
      rmSync(other, { recursive: true, force: true });
    }
    expect(() => loadGatewayKey(dir)).toThrow(/gateway-ed25519.pub: not the public half of/);
    expect(gatewayKeyPaths(dir).publicKeyPath).toBe(paths.publicKeyPath);
  });

  it('a public key that is not one is a clear error', () => {
    expect(() => parseGatewayPublicKey('hello!', 'x.pub')).toThrow(/x.pub: not a PEM public key nor base64 of 32 raw bytes/);
    expect(() => parseGatewayPublicKey('aGVsbG8=', 'x.pub')).toThrow(/x.pub: an Ed25519 public key is 32 bytes, this one is 5/);
  });
});

describe('the blob format', () => {
  const key = randomBytes(32);
  const plain = Buffer.from('register 40001 = 370\n');
  const sum = { sha256: sha256(plain), size: plain.length };
  const blob = encryptBlob(key, 'pump-1', plain, sum.sha256);

  function check(fn: () => unknown): string {
    try {
      fn();
    } catch (err) {
      if (err instanceof BackupVerifyError) return err.problem.check;
      throw err;
    }
    return 'passed';
  }

  it('decrypts with the key, device and hash it was made for', () => {
    expect(decryptBlob('b', key, 'pump-1', blob, sum)).toEqual(plain);
    expect(blob.length).toBe(plain.length + 36);
    // A fresh nonce each time: the same bytes never give the same ciphertext.
    expect(encryptBlob(key, 'pump-1', plain, sum.sha256).equals(blob)).toBe(false);
  });

  it('names the check that fails', () => {
    expect(check(() => decryptBlob('b', key, 'pump-1', flip(blob, 25), sum))).toBe('gcm-tag'); // ciphertext
    expect(check(() => decryptBlob('b', key, 'pump-1', flip(blob, -1), sum))).toBe('gcm-tag'); // tag
    expect(check(() => decryptBlob('b', key, 'pump-1', flip(blob, 10), sum))).toBe('gcm-tag'); // nonce
    expect(check(() => decryptBlob('b', key, 'pump-2', blob, sum))).toBe('gcm-tag'); // another device
    expect(check(() => decryptBlob('b', randomBytes(32), 'pump-1', blob, sum))).toBe('gcm-tag'); // another key
    expect(check(() => decryptBlob('b', key, 'pump-1', blob, { ...sum, sha256: sha256('x') }))).toBe('gcm-tag'); // renamed
    expect(check(() => decryptBlob('b', key, 'pump-1', blob, { ...sum, size: 3 }))).toBe('plaintext-size');
    expect(check(() => decryptBlob('b', key, 'pump-1', flip(blob, 0), sum))).toBe('structure'); // magic
    expect(check(() => decryptBlob('b', key, 'pump-1', flip(blob, 4), sum))).toBe('structure'); // format
    expect(check(() => decryptBlob('b', key, 'pump-1', blob.subarray(0, 20), sum))).toBe('structure');
  });
});
