// The manifest of one version: what was backed up, from where, when, its hashes, the key it is
// encrypted under and the version before it, signed by the gateway (Ed25519 over the canonical
// JSON, RFC 8785, of every member but `signature`: the same signing input as commands).
import { sign, verify, type KeyObject } from 'node:crypto';
import { z } from 'zod';
import { canonicalJson, signingInput } from '../mqtt/commands.js';
import { sha256 } from './blob.js';
import { BackupVerifyError } from './errors.js';
import type { GatewayKey } from './keys.js';

export const MANIFEST_KIND = 'wardgate.backup.manifest';

const Hex64 = z.string().regex(/^[0-9a-f]{64}$/, '64 lowercase hex digits');
export const DeviceId = z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'a device id: 1-63 lowercase letters, digits and "-"');

export const ManifestSchema = z
  .object({
    kind: z.literal(MANIFEST_KIND),
    schema: z.literal(1),
    gateway: z.string().min(1),
    device: DeviceId,
    version: z.number().int().min(1),
    time: z.iso.datetime(),
    driver: z.string().min(1),
    format: z.enum(['text', 'binary', 'modbus']),
    source: z.string(),
    plaintext: z.object({ size: z.number().int().min(0), sha256: Hex64 }).strict(),
    blob: z.object({ size: z.number().int().min(0), sha256: Hex64 }).strict(),
    cipher: z.literal('AES-256-GCM'),
    keyId: z.string().min(1),
    previous: z.object({ version: z.number().int().min(1), manifestSha256: Hex64 }).strict().nullable(),
    signer: z.object({ alg: z.literal('Ed25519'), publicKeySha256: Hex64 }).strict(),
  })
  .strict();
export type Manifest = z.infer<typeof ManifestSchema>;

export const SignedManifestSchema = ManifestSchema.extend({ signature: z.string().regex(/^[A-Za-z0-9+/]+={0,2}$/, 'base64') }).strict();
export type SignedManifest = z.infer<typeof SignedManifestSchema>;

/** The hash that the next version's `previous` names: over the signed content, not the file's bytes. */
export function manifestHash(m: Manifest | SignedManifest): string {
  return sha256(signingInput(m));
}

export function signManifest(m: Manifest, privateKey: KeyObject): SignedManifest {
  const signature = sign(null, signingInput(m), privateKey).toString('base64');
  return { ...m, signature };
}

/** The manifest file's bytes: canonical JSON and a newline. */
export function manifestFileText(m: SignedManifest): string {
  return `${canonicalJson(m)}\n`;
}

function zodWhere(err: z.ZodError): string {
  const i = err.issues[0];
  return i ? `${i.path.length > 0 ? i.path.join('.') : '(top)'}: ${i.message}` : 'invalid';
}

/** Parses a manifest without checking its signature (structure only). */
export function parseManifest(file: string, text: string): SignedManifest {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new BackupVerifyError({ file, check: 'structure', message: `not JSON (${(err as Error).message})` });
  }
  return parseManifestValue(file, json);
}

export function parseManifestValue(file: string, json: unknown): SignedManifest {
  const r = SignedManifestSchema.safeParse(json);
  if (!r.success) throw new BackupVerifyError({ file, check: 'structure', message: `not a backup manifest: ${zodWhere(r.error)}` });
  return r.data;
}

/** Checks a manifest's signer and signature against the gateway key given. */
export function verifyManifestSignature(file: string, m: SignedManifest, key: GatewayKey): void {
  if (m.signer.publicKeySha256 !== key.fingerprint) {
    throw new BackupVerifyError({
      file,
      check: 'public-key',
      message: `signed by the key with fingerprint ${m.signer.publicKeySha256}, not by the public key given (${key.fingerprint}): wrong public key, or another gateway's backup`,
    });
  }
  let ok = false;
  try {
    ok = verify(null, signingInput(m), key.publicKey, Buffer.from(m.signature, 'base64'));
  } catch {
    ok = false;
  }
  if (!ok) throw new BackupVerifyError({ file, check: 'signature', message: 'the Ed25519 signature does not verify: the manifest or its signature was altered' });
}

export { zodWhere };
