// One encrypted configuration: a 20-byte header (magic "WGB1", format 1, cipher 1 =
// AES-256-GCM, two reserved zero bytes, the 96-bit random nonce), the ciphertext, and the 16-byte
// GCM tag. The associated data binds the header, the device id and the plaintext's SHA-256, so
// a blob moved to another device, or renamed to another hash, fails to decrypt.
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { BackupVerifyError } from './errors.js';

const MAGIC = Buffer.from('WGB1', 'latin1');
const FORMAT = 1;
const CIPHER_AES_256_GCM = 1;
const NONCE = 12;
const TAG = 16;
export const BLOB_HEADER_BYTES = 8 + NONCE;
export const BLOB_OVERHEAD = BLOB_HEADER_BYTES + TAG;

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

function aad(header: Buffer, device: string, plaintextSha256: string): Buffer {
  return Buffer.concat([header, Buffer.from(`wardgate-backup\0${device}\0${plaintextSha256}`, 'utf8')]);
}

export function encryptBlob(key: Buffer, device: string, plaintext: Buffer, plaintextSha256: string): Buffer {
  const header = Buffer.alloc(BLOB_HEADER_BYTES);
  MAGIC.copy(header, 0);
  header[4] = FORMAT;
  header[5] = CIPHER_AES_256_GCM;
  randomBytes(NONCE).copy(header, 8);
  const cipher = createCipheriv('aes-256-gcm', key, header.subarray(8), { authTagLength: TAG });
  cipher.setAAD(aad(header, device, plaintextSha256));
  const body = cipher.update(plaintext);
  const final = cipher.final();
  return Buffer.concat([header, body, final, cipher.getAuthTag()]);
}

/** Checks the header alone (no key needed): what verify can say about a blob without the data key. */
export function checkBlobHeader(file: string, blob: Buffer): void {
  if (blob.length < BLOB_OVERHEAD) throw new BackupVerifyError({ file, check: 'structure', message: `${blob.length} bytes, shorter than a blob's ${BLOB_OVERHEAD}-byte header and tag` });
  if (!blob.subarray(0, 4).equals(MAGIC)) throw new BackupVerifyError({ file, check: 'structure', message: 'does not start with "WGB1": not a wardgate backup blob' });
  if (blob[4] !== FORMAT || blob[5] !== CIPHER_AES_256_GCM || blob[6] !== 0 || blob[7] !== 0) {
    throw new BackupVerifyError({ file, check: 'structure', message: `unknown blob format ${blob[4]} / cipher ${blob[5]} (this wardgate reads format 1, AES-256-GCM)` });
  }
}

/**
 * Decrypts and checks a blob: header, GCM tag (which covers the binding), then the plaintext's
 * size and SHA-256 against what the manifest says.
 */
export function decryptBlob(file: string, key: Buffer, device: string, blob: Buffer, expect: { sha256: string; size: number }): Buffer {
  checkBlobHeader(file, blob);
  const header = blob.subarray(0, BLOB_HEADER_BYTES);
  const decipher = createDecipheriv('aes-256-gcm', key, header.subarray(8), { authTagLength: TAG });
  decipher.setAAD(aad(header, device, expect.sha256));
  decipher.setAuthTag(blob.subarray(blob.length - TAG));
  const body = decipher.update(blob.subarray(BLOB_HEADER_BYTES, blob.length - TAG));
  try {
    decipher.final();
  } catch {
    throw new BackupVerifyError({ file, check: 'gcm-tag', message: `AES-256-GCM authentication failed: the blob was altered, or is not ${device}'s configuration with sha256 ${expect.sha256.slice(0, 16)}…` });
  }
  if (body.length !== expect.size) throw new BackupVerifyError({ file, check: 'plaintext-size', message: `decrypts to ${body.length} bytes, the manifest says ${expect.size}` });
  const got = sha256(body);
  if (got !== expect.sha256) throw new BackupVerifyError({ file, check: 'plaintext-hash', message: `decrypts to sha256 ${got}, the manifest says ${expect.sha256}` });
  return body;
}
