// A portable backup bundle: one file a responder can carry away (a USB stick, an MQTT pull)
// and verify anywhere with only the gateway's public key; with the data key, also decrypt.
//
//   line 1   "wardgate-backup-bundle 1"
//   line 2   the index: canonical JSON (RFC 8785) on one line, signed by the gateway
//   then     the encrypted blobs, back to back, where the index's blob table says
//
// The index holds the signed manifests, the blob table (ciphertext SHA-256, offset from the
// first byte after line 2, size) and the signer's public-key fingerprint; its own signature
// covers all of that, so no version can be added, dropped or swapped unnoticed.
import { sign, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { canonicalJson, signingInput } from '../mqtt/commands.js';
import { writeFileAtomic } from '../util/fsx.js';
import { checkBlobHeader, decryptBlob, sha256 } from './blob.js';
import { BackupStoreError, BackupVerifyError, type Problem } from './errors.js';
import { dataKeyId, type GatewayKey, type KeyProvider } from './keys.js';
import { DeviceId, parseManifestValue, verifyManifestSignature, zodWhere, type SignedManifest } from './manifest.js';
import type { BackupStore } from './store.js';

export const BUNDLE_MAGIC = 'wardgate-backup-bundle 1';
export const BUNDLE_KIND = 'wardgate.backup.bundle';

const Hex64 = z.string().regex(/^[0-9a-f]{64}$/, '64 lowercase hex digits');

const BundleIndexSchema = z
  .object({
    kind: z.literal(BUNDLE_KIND),
    schema: z.literal(1),
    created: z.iso.datetime(),
    gateway: z.string().min(1),
    device: DeviceId,
    signer: z.object({ alg: z.literal('Ed25519'), publicKeySha256: Hex64 }).strict(),
    // Manifests are parsed on their own (parseManifestValue) so that a bad one is named by its entry.
    versions: z.array(z.unknown()).min(1),
    blobs: z.array(z.object({ sha256: Hex64, offset: z.number().int().min(0), size: z.number().int().min(0) }).strict()),
    signature: z.string().regex(/^[A-Za-z0-9+/]+={0,2}$/, 'base64'),
  })
  .strict();
type BundleIndex = z.infer<typeof BundleIndexSchema>;

export interface ExportResult {
  path: string;
  bytes: number;
  versions: number[];
  /** Versions left out because they did not verify in the store. */
  skipped: Problem[];
}

/**
 * Writes a bundle of a device's versions (all the store holds, or the one given) to `out`,
 * atomically. Every manifest and blob is verified on the way out; a version that fails is left
 * out and reported, and when it is the one asked for, nothing is written.
 */
export function exportBundle(store: BackupStore, device: string, version: number | undefined, out: string, now = new Date()): ExportResult {
  const privateKey = store.key.privateKey;
  if (privateKey === undefined) throw new BackupStoreError('exporting needs the gateway\'s private key (a bundle is signed)');
  const wanted = version !== undefined ? [version] : store.versions(device);
  if (wanted.length === 0) throw new BackupStoreError(`no backup of ${device}`);
  const manifests: SignedManifest[] = [];
  const blobs = new Map<string, Buffer>();
  const skipped: Problem[] = [];
  for (const v of wanted) {
    try {
      const m = store.readManifest(device, v);
      const blob = store.readBlob(m);
      manifests.push(m);
      blobs.set(m.blob.sha256, blob);
    } catch (err) {
      if (!(err instanceof BackupVerifyError)) throw err;
      if (version !== undefined) throw err;
      skipped.push(err.problem);
    }
  }
  if (manifests.length === 0) throw new BackupStoreError(`no version of ${device} verifies; nothing exported (${skipped.length} problem(s))`);
  const table: BundleIndex['blobs'] = [];
  let offset = 0;
  for (const [hash, blob] of blobs) {
    table.push({ sha256: hash, offset, size: blob.length });
    offset += blob.length;
  }
  const unsigned = {
    kind: BUNDLE_KIND,
    schema: 1,
    created: now.toISOString(),
    gateway: store.gateway,
    device,
    signer: { alg: 'Ed25519', publicKeySha256: store.key.fingerprint },
    versions: manifests,
    blobs: table,
  };
  const signature = sign(null, signingInput(unsigned), privateKey).toString('base64');
  const head = Buffer.from(`${BUNDLE_MAGIC}\n${canonicalJson({ ...unsigned, signature })}\n`, 'utf8');
  const data = Buffer.concat([head, ...blobs.values()]);
  writeFileAtomic(out, data, { mode: 0o640 });
  return { path: out, bytes: data.length, versions: manifests.map((m) => m.version), skipped };
}

export interface BundleVersion {
  manifest: SignedManifest;
  /** Whether every check passed for this version (signature, blob hash, and decryption when asked). */
  ok: boolean;
  /** The configuration, when a data key was given and it decrypted and matched. */
  bytes?: Buffer;
}

export interface BundleReport {
  ok: boolean;
  path: string;
  gateway?: string;
  device?: string;
  created?: string;
  signer?: string;
  /** Whether plaintexts were checked (a data key was given). */
  decrypted: boolean;
  versions: BundleVersion[];
  problems: Problem[];
}

/**
 * Checks a bundle with the gateway's public key: structure, the signer, the index signature,
 * every manifest's signature, every blob's hash and header; given the data key, also decrypts
 * each version and checks its plaintext hash. Reports every failure found, each naming the
 * entry and the check; it throws only when the file cannot be read.
 */
export async function verifyBundle(path: string, publicKey: GatewayKey, opts: { dataKey?: KeyProvider | Buffer } = {}): Promise<BundleReport> {
  const report: BundleReport = { ok: false, path, decrypted: opts.dataKey !== undefined, versions: [], problems: [] };
  const problem = (file: string, check: Problem['check'], message: string): void => {
    report.problems.push({ file, check, message });
  };
  const data = readFileSync(path);
  const nl1 = data.indexOf(0x0a);
  if (nl1 < 0 || data.subarray(0, nl1).toString('latin1') !== BUNDLE_MAGIC) {
    problem(path, 'structure', `does not start with "${BUNDLE_MAGIC}": not a wardgate backup bundle, or a version this wardgate does not read`);
    return report;
  }
  const nl2 = data.indexOf(0x0a, nl1 + 1);
  if (nl2 < 0) {
    problem(path, 'structure', 'the index line is not terminated: the bundle is cut short');
    return report;
  }
  const indexFile = `${path} (index)`;
  let json: unknown;
  try {
    json = JSON.parse(data.subarray(nl1 + 1, nl2).toString('utf8'));
  } catch (err) {
    problem(indexFile, 'structure', `not JSON (${(err as Error).message})`);
    return report;
  }
  const parsed = BundleIndexSchema.safeParse(json);
  if (!parsed.success) {
    problem(indexFile, 'structure', `not a bundle index: ${zodWhere(parsed.error)}`);
    return report;
  }
  const index = parsed.data;
  Object.assign(report, { gateway: index.gateway, device: index.device, created: index.created, signer: index.signer.publicKeySha256 });

  // The signer first: with the wrong public key every signature fails, and one line saying so is clearer.
  const rightKey = index.signer.publicKeySha256 === publicKey.fingerprint;
  if (!rightKey) {
    problem(indexFile, 'public-key', `signed by the key with fingerprint ${index.signer.publicKeySha256}, not by the public key given (${publicKey.fingerprint}): wrong public key, or another gateway's bundle`);
  } else {
    let ok = false;
    try {
      ok = verify(null, signingInput(index), publicKey.publicKey, Buffer.from(index.signature, 'base64'));
    } catch {
      ok = false;
    }
    if (!ok) problem(indexFile, 'signature', 'the Ed25519 signature of the index does not verify: the index (a manifest, the blob table) or its signature was altered');
  }

  // The blob table: contiguous from offset 0, up to the end of the file, each hash right.
  const base = nl2 + 1;
  const blobs = new Map<string, { blob: Buffer; ok: boolean }>();
  let expected = 0;
  for (const [i, b] of index.blobs.entries()) {
    const where = `${path} (blob ${i}, sha256 ${b.sha256.slice(0, 16)}…)`;
    if (b.offset !== expected || base + b.offset + b.size > data.length) {
      problem(where, 'structure', `offset ${b.offset} size ${b.size} does not follow the blob before it within the ${data.length - base} data bytes`);
      blobs.set(b.sha256, { blob: Buffer.alloc(0), ok: false });
      expected = b.offset + b.size;
      continue;
    }
    expected = b.offset + b.size;
    const blob = data.subarray(base + b.offset, base + b.offset + b.size);
    const got = sha256(blob);
    let ok = got === b.sha256;
    if (!ok) problem(where, 'blob-hash', `ciphertext sha256 ${got} differs from the index's: the blob was altered`);
    if (ok) {
      try {
        checkBlobHeader(where, blob);
      } catch (err) {
        if (!(err instanceof BackupVerifyError)) throw err;
        report.problems.push(err.problem);
        ok = false;
      }
    }
    if (blobs.has(b.sha256)) problem(where, 'structure', 'the same blob twice in the table');
    blobs.set(b.sha256, { blob, ok });
  }
  const extra = data.length - base - expected;
  if (extra > 0) problem(path, 'structure', `${extra} byte(s) after the last blob that the index does not account for`);
  if (extra < 0) problem(path, 'structure', `the file ends ${-extra} byte(s) before the index says the data does: cut short`);

  let dk: { id: string; key: Buffer } | undefined;
  if (opts.dataKey !== undefined) {
    dk = Buffer.isBuffer(opts.dataKey) ? { id: dataKeyId(opts.dataKey), key: opts.dataKey } : { id: opts.dataKey.id, key: await opts.dataKey.dataKey() };
  }

  const used = new Set<string>();
  for (const [i, raw] of index.versions.entries()) {
    const label = typeof raw === 'object' && raw !== null && 'version' in raw ? `version ${String((raw).version)}` : `entry ${i}`;
    const where = `${path} (${label})`;
    let m: SignedManifest;
    try {
      m = parseManifestValue(where, raw);
    } catch (err) {
      if (!(err instanceof BackupVerifyError)) throw err;
      report.problems.push(err.problem);
      continue;
    }
    const v: BundleVersion = { manifest: m, ok: false };
    report.versions.push(v);
    const before = report.problems.length;
    if (m.device !== index.device) problem(where, 'identity', `a manifest of ${m.device} in a bundle of ${index.device}`);
    // With the wrong key the index already says so; a manifest signed by yet another key is worth its own line.
    if (rightKey || m.signer.publicKeySha256 !== index.signer.publicKeySha256) {
      try {
        verifyManifestSignature(where, m, publicKey);
      } catch (err) {
        if (!(err instanceof BackupVerifyError)) throw err;
        report.problems.push(err.problem);
      }
    }
    const entry = blobs.get(m.blob.sha256);
    used.add(m.blob.sha256);
    if (entry === undefined) {
      problem(where, 'missing', `its blob (sha256 ${m.blob.sha256.slice(0, 16)}…) is not in the bundle`);
    } else if (entry.ok && entry.blob.length !== m.blob.size) {
      problem(where, 'structure', `its blob is ${entry.blob.length} bytes, the manifest says ${m.blob.size}`);
    } else if (entry.ok && dk !== undefined) {
      if (m.keyId !== dk.id) {
        problem(where, 'key-id', `encrypted under data key ${m.keyId}; the data key given is ${dk.id}`);
      } else {
        try {
          v.bytes = decryptBlob(where, dk.key, m.device, entry.blob, m.plaintext);
        } catch (err) {
          if (!(err instanceof BackupVerifyError)) throw err;
          report.problems.push(err.problem);
        }
      }
    } else if (!entry.ok) {
      problem(where, 'blob-hash', 'its blob failed its checks (above)');
    }
    v.ok = rightKey && report.problems.length === before;
  }
  for (const [hash] of blobs) if (!used.has(hash)) problem(`${path} (blob sha256 ${hash.slice(0, 16)}…)`, 'structure', 'no manifest refers to this blob');
  report.ok = report.problems.length === 0;
  return report;
}

/** The versions of a bundle with their configurations, everything verified; the first problem is thrown. */
export async function readBundle(path: string, publicKey: GatewayKey, dataKey: KeyProvider | Buffer): Promise<{ manifest: SignedManifest; bytes: Buffer }[]> {
  const report = await verifyBundle(path, publicKey, { dataKey });
  const first = report.problems[0];
  if (first !== undefined) throw new BackupVerifyError(first);
  return report.versions.map((v) => ({ manifest: v.manifest, bytes: v.bytes ?? Buffer.alloc(0) }));
}
