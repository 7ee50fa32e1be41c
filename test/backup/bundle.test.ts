// Bundles: exported from a store, verified with only the public key (structure, signatures,
// ciphertext hashes), and with the data key (plaintexts); every alteration found and named.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { exportBundle, readBundle, verifyBundle } from '../../agent/backup/bundle.js';
import { BackupStoreError, BackupVerifyError } from '../../agent/backup/errors.js';
import { FileKeyProvider, loadGatewayKey, parseGatewayPublicKey, publicKeyPem, readGatewayPublicKey, gatewayKeyPaths } from '../../agent/backup/keys.js';
import { flip, makeStore, text, type TestStore } from './store-helpers.js';

let t: TestStore;
let out = '';
beforeEach(async () => {
  t = makeStore();
  out = join(t.dir, 'usb', 'ct-1.wgb');
  await t.store.put('ct-1', 'http', text('ae CT1\nport 104\n', 'https://10.20.0.31/config'));
  await t.store.put('ct-1', 'http', text('ae CT1\nport 11112\n'));
  await t.store.put('ct-1', 'http', text('ae CT1\nport 104\n')); // the first again: its blob is shared
});
afterEach(() => t.cleanup());

const pub = () => readGatewayPublicKey(gatewayKeyPaths(t.stateDir).publicKeyPath);

describe('export and verify', () => {
  it('round trip: every version, shared blobs once; verifies with the public key alone, and decrypts with the data key', async () => {
    const r = exportBundle(t.store, 'ct-1', undefined, out);
    expect(r.versions).toEqual([1, 2, 3]);
    expect(r.skipped).toEqual([]);
    const data = readFileSync(out);
    expect(data.subarray(0, 25).toString()).toBe('wardgate-backup-bundle 1\n');
    expect(data.includes(Buffer.from('port 104'))).toBe(false);

    const noKey = await verifyBundle(out, pub());
    expect(noKey.problems).toEqual([]);
    expect(noKey).toMatchObject({ ok: true, decrypted: false, device: 'ct-1', gateway: 'site-a/gw-1', signer: pub().fingerprint });
    expect(noKey.versions.map((v) => [v.manifest.version, v.ok, v.bytes])).toEqual([[1, true, undefined], [2, true, undefined], [3, true, undefined]]);

    const withKey = await verifyBundle(out, pub(), { dataKey: new FileKeyProvider(t.keyFile) });
    expect(withKey.ok).toBe(true);
    expect(withKey.versions.map((v) => v.bytes?.toString())).toEqual(['ae CT1\nport 104\n', 'ae CT1\nport 11112\n', 'ae CT1\nport 104\n']);
    const read = await readBundle(out, pub(), await new FileKeyProvider(t.keyFile).dataKey());
    expect(read.map((v) => v.manifest.version)).toEqual([1, 2, 3]);
  });

  it('one version when asked; an unknown one or device is an error and writes nothing', async () => {
    expect(exportBundle(t.store, 'ct-1', 2, out).versions).toEqual([2]);
    const r = await verifyBundle(out, pub(), { dataKey: new FileKeyProvider(t.keyFile) });
    expect(r.ok).toBe(true);
    expect(r.versions.map((v) => v.bytes?.toString())).toEqual(['ae CT1\nport 11112\n']);
    const other = join(t.dir, 'other.wgb');
    expect(() => exportBundle(t.store, 'ct-1', 9, other)).toThrow(BackupVerifyError);
    expect(() => exportBundle(t.store, 'pump-1', undefined, other)).toThrow(BackupStoreError);
  });

  it('leaves out a version that fails in the store, and says so', async () => {
    const m2 = t.store.manifestPath('ct-1', 2);
    writeFileSync(m2, readFileSync(m2, 'utf8').replace('"driver":"http"', '"driver":"httq"'));
    const r = exportBundle(t.store, 'ct-1', undefined, out);
    expect(r.versions).toEqual([1, 3]);
    expect(r.skipped).toEqual([expect.objectContaining({ file: m2, check: 'signature' })]);
    expect((await verifyBundle(out, pub())).ok).toBe(true);
  });
});

describe('what verify finds', () => {
  let data = Buffer.alloc(0);
  let indexStart = 0;
  let dataStart = 0;
  beforeEach(() => {
    exportBundle(t.store, 'ct-1', undefined, out);
    data = readFileSync(out);
    indexStart = data.indexOf(0x0a) + 1;
    dataStart = data.indexOf(0x0a, indexStart) + 1;
  });

  function checks(r: { problems: { file: string; check: string }[] }): string[] {
    return r.problems.map((p) => `${p.file.replace(out, 'B')}: ${p.check}`);
  }

  it('a flipped byte in a blob: blob-hash, naming the blob and the versions that use it', async () => {
    writeFileSync(out, flip(data, dataStart + 30)); // in the first blob (versions 1 and 3)
    const r = await verifyBundle(out, pub());
    expect(r.ok).toBe(false);
    expect(checks(r)).toEqual([expect.stringMatching(/^B \(blob 0, sha256 [0-9a-f]{16}…\): blob-hash$/), 'B (version 1): blob-hash', 'B (version 3): blob-hash']);
    expect(r.versions.map((v) => v.ok)).toEqual([false, true, false]);
  });

  it('a flipped byte in a manifest: the index signature and that manifest\'s signature', async () => {
    const text = data.toString('latin1');
    const at = text.indexOf('"source":"https://10.20.0.31/config"') + 12;
    writeFileSync(out, flip(data, at));
    expect(checks(await verifyBundle(out, pub()))).toEqual(['B (index): signature', 'B (version 1): signature']);
  });

  it('a flipped byte in a manifest\'s signature: that signature and the index\'s', async () => {
    const index = JSON.parse(data.subarray(indexStart, dataStart - 1).toString()) as { versions: { signature: string }[] };
    const sig = index.versions[1]!.signature;
    const bad = flip(Buffer.from(sig, 'base64'), 3).toString('base64');
    writeFileSync(out, Buffer.from(data.toString('latin1').replace(sig, bad), 'latin1'));
    expect(checks(await verifyBundle(out, pub()))).toEqual(['B (index): signature', 'B (version 2): signature']);
  });

  it('a flipped byte in the index signature: the index signature only', async () => {
    const index = JSON.parse(data.subarray(indexStart, dataStart - 1).toString()) as { signature: string };
    const bad = flip(Buffer.from(index.signature, 'base64'), 10).toString('base64');
    writeFileSync(out, Buffer.from(data.toString('latin1').replace(`"signature":"${index.signature}"`, `"signature":"${bad}"`), 'latin1'));
    expect(checks(await verifyBundle(out, pub()))).toEqual(['B (index): signature']);
  });

  it('a broken header, index or length: structure', async () => {
    writeFileSync(out, flip(data, 3));
    expect(checks(await verifyBundle(out, pub()))).toEqual(['B: structure']);
    writeFileSync(out, flip(data, indexStart)); // "{" becomes "z"
    expect(checks(await verifyBundle(out, pub()))).toEqual(['B (index): structure']);
    writeFileSync(out, data.subarray(0, data.length - 1));
    expect(checks(await verifyBundle(out, pub()))).toEqual([expect.stringMatching(/^B \(blob 1, .*\): structure$/), 'B: structure', 'B (version 2): blob-hash']);
    expect((await verifyBundle(out, pub())).problems[1]!.message).toMatch(/ends 1 byte\(s\) before the index says/);
    writeFileSync(out, Buffer.concat([data, Buffer.from('x')]));
    expect(checks(await verifyBundle(out, pub()))).toEqual(['B: structure']);
    writeFileSync(out, data.subarray(0, dataStart - 1));
    expect(checks(await verifyBundle(out, pub()))).toEqual(['B: structure']);
  });

  it('the wrong public key: one clear public-key problem', async () => {
    const stranger = parseGatewayPublicKey(publicKeyPem(generateKeyPairSync('ed25519').publicKey));
    const r = await verifyBundle(out, stranger);
    expect(checks(r)).toEqual(['B (index): public-key']);
    expect(r.problems[0]!.message).toMatch(/not by the public key given .*: wrong public key, or another gateway's bundle/);
    expect(r.versions.every((v) => !v.ok)).toBe(true);
  });

  it('the wrong data key: key-id for each version', async () => {
    const r = await verifyBundle(out, pub(), { dataKey: randomBytes(32) });
    expect(checks(r)).toEqual(['B (version 1): key-id', 'B (version 2): key-id', 'B (version 3): key-id']);
    expect(r.problems[0]!.message).toMatch(/encrypted under data key [0-9a-f]{16}; the data key given is [0-9a-f]{16}/);
    await expect(readBundle(out, pub(), randomBytes(32))).rejects.toThrow(/key-id/);
  });

  it('a blob swapped for another validly encrypted one, index re-signed by the gateway: still caught by the manifest', async () => {
    // The gateway key signs a new index whose blob table names other ciphertext: the manifest's own hash disagrees.
    const key = loadGatewayKey(t.stateDir);
    const { canonicalJson, signingInput } = await import('../../agent/mqtt/commands.js');
    const { sign } = await import('node:crypto');
    const index = JSON.parse(data.subarray(indexStart, dataStart - 1).toString()) as Record<string, unknown> & { blobs: { sha256: string; offset: number; size: number }[] };
    const blobs = index.blobs.map((b) => data.subarray(dataStart + b.offset, dataStart + b.offset + b.size));
    const swapped = [blobs[1]!, blobs[0]!];
    const table = [
      { sha256: index.blobs[0]!.sha256, offset: 0, size: swapped[0]!.length },
      { sha256: index.blobs[1]!.sha256, offset: swapped[0]!.length, size: swapped[1]!.length },
    ];
    const unsigned: Record<string, unknown> = { ...index, blobs: table };
    delete unsigned.signature;
    const signature = sign(null, signingInput(unsigned), key.privateKey!).toString('base64');
    writeFileSync(out, Buffer.concat([Buffer.from(`wardgate-backup-bundle 1\n${canonicalJson({ ...unsigned, signature })}\n`), ...swapped]));
    const r = await verifyBundle(out, pub());
    expect(r.problems.map((p) => p.check)).toContain('blob-hash');
    expect(r.ok).toBe(false);
  });
});
