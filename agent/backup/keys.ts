// The two keys of the backup store. The data key (32 random bytes, AES-256-GCM) encrypts every
// blob; it sits behind KeyProvider so that a TPM-held key can replace the file later. The
// gateway's Ed25519 key signs every manifest and bundle; its public half is what a responder
// needs to verify a bundle anywhere. Neither is ever overwritten.
import { createHash, createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { closeSync, fsyncSync, linkSync, lstatSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { ConsoleKeyError, loadConsoleKey } from '../console/keys.js';
import { CommandKeyError, parsePublicKey } from '../mqtt/commands.js';
import { BackupKeyError } from './errors.js';

export const DATA_KEY_BYTES = 32;

/** Where the data key comes from. `id` names the key (not secret) so a wrong key is told apart from a damaged blob. */
export interface KeyProvider {
  readonly id: string;
  dataKey(): Promise<Buffer>;
}

/** The id of a data key: a domain-separated SHA-256, so it reveals nothing of the key. */
export function dataKeyId(key: Buffer): string {
  return createHash('sha256').update('wardgate backup data key id\n').update(key).digest('hex').slice(0, 16);
}

/**
 * Writes a file that must not exist, atomically: temp file (mode set at creation), fsync, then
 * link(2), which fails if the name is taken. A crash leaves either no key or a whole one, and
 * two processes racing to create it end up with the same key.
 */
function createExclusive(path: string, data: string | Buffer, mode: number): boolean {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  rmSync(tmp, { force: true });
  const fd = openSync(tmp, 'wx', mode);
  try {
    writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    linkSync(tmp, path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    rmSync(tmp, { force: true });
  }
  const dfd = openSync(dirname(path), 'r');
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
  return true;
}

/** Refuses a key file that is missing, not a regular file, or readable by group or others (like ssh). */
function checkPrivateFile(path: string, what: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new BackupKeyError(`${path}: no ${what} here (wardgate backup keygen makes one)`);
    throw new BackupKeyError(`${path}: ${(err as Error).message}`);
  }
  if (!st.isFile()) throw new BackupKeyError(`${path}: the ${what} must be a regular file`);
  const mode = st.mode & 0o777;
  if ((mode & 0o077) !== 0) throw new BackupKeyError(`${path}: mode ${mode.toString(8).padStart(4, '0')} lets others read the ${what}; chmod 600 it`);
}

/**
 * A data key file holds the 32 bytes raw, or their base64 (44 characters, a newline allowed):
 * the two are told apart by length, so no file is ambiguous.
 */
export function parseDataKey(path: string, bytes: Buffer): Buffer {
  if (bytes.length === DATA_KEY_BYTES) return Buffer.from(bytes);
  const text = bytes.toString('latin1').trim();
  if (/^[A-Za-z0-9+/]{43}=$/.test(text)) {
    const key = Buffer.from(text, 'base64');
    if (key.length === DATA_KEY_BYTES) return key;
  }
  throw new BackupKeyError(`${path}: a data key is ${DATA_KEY_BYTES} bytes, raw or as base64 (44 characters); this file holds ${bytes.length} bytes that are neither`);
}

/** Makes a data key file (base64, mode 0600) if there is none. Returns whether it made one. */
export function createDataKeyFile(path: string): boolean {
  return createExclusive(path, `${randomBytes(DATA_KEY_BYTES).toString('base64')}\n`, 0o600);
}

/** The data key from a file made at install. Checked (mode, size) and read once, when built. */
export class FileKeyProvider implements KeyProvider {
  readonly id: string;
  readonly #key: Buffer;

  constructor(readonly path: string) {
    checkPrivateFile(path, 'data key');
    let bytes: Buffer;
    try {
      bytes = readFileSync(path);
    } catch (err) {
      throw new BackupKeyError(`${path}: ${(err as Error).message}`);
    }
    this.#key = parseDataKey(path, bytes);
    this.id = dataKeyId(this.#key);
  }

  dataKey(): Promise<Buffer> {
    return Promise.resolve(this.#key);
  }
}

/** A data key held in memory (a responder's copy, tests). */
export class BufferKeyProvider implements KeyProvider {
  readonly id: string;
  readonly #key: Buffer;

  constructor(key: Buffer) {
    if (key.length !== DATA_KEY_BYTES) throw new BackupKeyError(`a data key is ${DATA_KEY_BYTES} bytes, not ${key.length}`);
    this.#key = Buffer.from(key);
    this.id = dataKeyId(this.#key);
  }

  dataKey(): Promise<Buffer> {
    return Promise.resolve(this.#key);
  }
}

// ---------------------------------------------------------------------------------------------
// The gateway's signing key

export interface GatewayKeyPaths {
  privateKeyPath: string;
  publicKeyPath: string;
}

export function gatewayKeyPaths(stateDir: string): GatewayKeyPaths {
  const dir = join(stateDir, 'keys');
  return { privateKeyPath: join(dir, 'gateway-ed25519.pem'), publicKeyPath: join(dir, 'gateway-ed25519.pub') };
}

/** The public half, and the private half where this process holds it (signing needs it, verifying does not). */
export interface GatewayKey {
  publicKey: KeyObject;
  privateKey?: KeyObject;
  /** SHA-256 of the SubjectPublicKeyInfo DER, hex: what manifests and bundles name the signer by. */
  fingerprint: string;
}

export function publicKeyFingerprint(publicKey: KeyObject): string {
  return createHash('sha256').update(publicKey.export({ format: 'der', type: 'spki' })).digest('hex');
}

export function publicKeyPem(publicKey: KeyObject): string {
  return publicKey.export({ format: 'pem', type: 'spki' }).toString();
}

/**
 * Makes the gateway's key pair if there is none (install calls this; so does first use). A
 * private key left without its public half (a crash between the two writes) gets it back.
 */
export function ensureGatewayKey(stateDir: string): GatewayKeyPaths & { created: boolean } {
  const paths = gatewayKeyPaths(stateDir);
  let created = false;
  let privateKey: KeyObject | undefined;
  try {
    lstatSync(paths.privateKeyPath);
  } catch {
    const pair = generateKeyPairSync('ed25519');
    created = createExclusive(paths.privateKeyPath, pair.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(), 0o600);
    if (created) privateKey = pair.privateKey;
  }
  try {
    lstatSync(paths.publicKeyPath);
  } catch {
    privateKey ??= loadPrivate(paths.privateKeyPath);
    createExclusive(paths.publicKeyPath, publicKeyPem(createPublicKey(privateKey)), 0o644);
  }
  return { ...paths, created };
}

function loadPrivate(path: string): KeyObject {
  try {
    checkPrivateFile(path, 'gateway signing key');
    return loadConsoleKey(path);
  } catch (err) {
    if (err instanceof ConsoleKeyError) throw new BackupKeyError(err.message);
    throw err;
  }
}

/**
 * The gateway's key pair for signing, made on first use unless `create` is false. The public
 * file is checked against the private key: a swapped .pub would have responders trust the wrong key.
 */
export function loadGatewayKey(stateDir: string, opts: { create?: boolean } = {}): GatewayKey {
  const paths = opts.create === false ? gatewayKeyPaths(stateDir) : ensureGatewayKey(stateDir);
  const privateKey = loadPrivate(paths.privateKeyPath);
  const publicKey = createPublicKey(privateKey);
  const fingerprint = publicKeyFingerprint(publicKey);
  try {
    const onFile = publicKeyFingerprint(parsePublicKey(readFileSync(paths.publicKeyPath, 'utf8')));
    if (onFile !== fingerprint) throw new BackupKeyError(`${paths.publicKeyPath}: not the public half of ${paths.privateKeyPath}`);
  } catch (err) {
    if (err instanceof BackupKeyError) throw err;
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new BackupKeyError(`${paths.publicKeyPath}: ${(err as Error).message}`);
  }
  return { publicKey, privateKey, fingerprint };
}

/** A public key to verify with: PEM (SPKI) text or base64 of the 32 raw bytes, e.g. a .pub file's content. */
export function parseGatewayPublicKey(text: string, where = 'public key'): GatewayKey {
  try {
    const publicKey = parsePublicKey(text);
    return { publicKey, fingerprint: publicKeyFingerprint(publicKey) };
  } catch (err) {
    if (err instanceof CommandKeyError) throw new BackupKeyError(`${where}: ${err.message}`);
    throw err;
  }
}

/** Reads a public key file (PEM or base64). */
export function readGatewayPublicKey(path: string): GatewayKey {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new BackupKeyError(`${path}: ${(err as Error).message}`);
  }
  return parseGatewayPublicKey(text, path);
}
