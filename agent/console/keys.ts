// A console's signing key: an Ed25519 pair made once per console (or operator), the private half
// a PEM file only its owner reads, the public half the base64 of its 32 raw bytes that goes into
// every gateway's gateway.yaml (commands.publicKeys), under the key id the console signs with.
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, statSync, writeSync } from 'node:fs';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { rawPublicKeyBase64 } from '../mqtt/commands.js';

export class ConsoleKeyError extends Error {
  readonly code = 'E_CONSOLE_KEY';
}

const KEY_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export interface GeneratedKey {
  id: string;
  privateKeyPath: string;
  publicKeyPath: string;
  /** base64 of the 32 raw bytes: paste into commands.publicKeys[].key */
  publicKey: string;
}

function writeNew(path: string, text: string, mode: number): void {
  // 'wx': never overwrite a key; the mode is set at creation, so the key is never readable by others.
  const fd = openSync(path, 'wx', mode);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Makes `<dir>/<id>.key` (PKCS#8 PEM, mode 0600) and `<dir>/<id>.pub` (base64 raw key). */
export function generateConsoleKey(dir: string, id = 'console'): GeneratedKey {
  if (!KEY_ID.test(id)) throw new ConsoleKeyError(`key id "${id}": 1-64 letters, digits, ".", "_", "-", starting with a letter or digit`);
  const privateKeyPath = join(dir, `${id}.key`);
  const publicKeyPath = join(dir, `${id}.pub`);
  for (const p of [privateKeyPath, publicKeyPath]) {
    if (existsSync(p)) throw new ConsoleKeyError(`${p} exists: a key is never overwritten (remove it first, or choose another --id)`);
  }
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const publicB64 = rawPublicKeyBase64(publicKey);
  writeNew(privateKeyPath, privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(), 0o600);
  writeNew(publicKeyPath, `${publicB64}\n`, 0o644);
  return { id, privateKeyPath, publicKeyPath, publicKey: publicB64 };
}

/**
 * Loads a private key made by generateConsoleKey (any Ed25519 PKCS#8 PEM). Like ssh, refuses a
 * file that others can read: a leaked console key commands every gateway that trusts it.
 */
export function loadConsoleKey(path: string): KeyObject {
  let text: string;
  try {
    const mode = statSync(path).mode & 0o777;
    if ((mode & 0o077) !== 0) {
      throw new ConsoleKeyError(`${path}: mode ${mode.toString(8).padStart(4, '0')} lets others read the key; chmod 600 it`);
    }
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if (err instanceof ConsoleKeyError) throw err;
    throw new ConsoleKeyError(`${path}: ${(err as Error).message}`);
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(text);
  } catch (err) {
    throw new ConsoleKeyError(`${path}: not a PEM private key (${(err as Error).message})`);
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new ConsoleKeyError(`${path}: an ${key.asymmetricKeyType ?? 'unknown'} key, not Ed25519`);
  return key;
}

/** The public key to put into gateway.yaml for a private key. */
export function publicKeyOf(privateKey: KeyObject): string {
  return rawPublicKeyBase64(createPublicKey(privateKey));
}
