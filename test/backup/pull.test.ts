// The gateway's side of `backup.list` and `backup.pull`: chunks of the exported bundle, the
// bundle built once and kept (stable offsets), bounded in count, bytes and age, arguments checked.
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { verifyBundle } from '../../agent/backup/bundle.js';
import { FileKeyProvider, gatewayKeyPaths, readGatewayPublicKey } from '../../agent/backup/keys.js';
import { backupPullHandlers, listBackups, PullCache, pullChunk, PULL_CHUNK_DEFAULT, type PullResult } from '../../agent/backup/pull.js';
import { writeBaseline } from '../../agent/backup/baseline.js';
import { BackupStoreSchema } from '../../agent/backup/schema-store.js';
import { makeStore, text, type TestStore } from './store-helpers.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const bin = (n: number) => ({ bytes: randomBytes(n), format: 'binary' as const, source: 'file /cfg.bin' });

let t: TestStore;
let clock = 0;
let cache: PullCache;
const cacheDir = () => join(t.stateDir, 'backups', 'pulls');
beforeEach(async () => {
  t = makeStore();
  clock = Date.parse('2030-01-01T00:00:00Z');
  cache = new PullCache({ dir: cacheDir(), now: () => clock, ttlMs: 60_000, maxEntries: 2 });
  await t.store.put('ct-1', 'file', bin(100_000));
  await t.store.put('ct-1', 'file', bin(50_000));
  await t.store.put('pump-1', 'file', text('rate 5\n'));
});
afterEach(() => t.cleanup());

/** Every chunk of a bundle, in order, as a console would ask for them. */
function pullAll(args: Record<string, unknown>): { bundle: Buffer; answers: PullResult[] } {
  const answers: PullResult[] = [];
  const parts: Buffer[] = [];
  let offset = 0;
  for (;;) {
    const r = pullChunk(t.store, cache, { ...args, offset });
    answers.push(r);
    const b = Buffer.from(r.bytes, 'base64');
    expect(sha(b)).toBe(r.chunkSha256);
    parts.push(b);
    offset += b.length;
    if (offset >= r.totalBytes) break;
  }
  return { bundle: Buffer.concat(parts), answers };
}

describe('backup.pull', () => {
  it('chunks of one bundle: same hash on every answer, the whole verifies and decrypts to what was stored', async () => {
    const { bundle, answers } = pullAll({ device: 'ct-1', chunkSize: 16384 });
    expect(answers.length).toBe(Math.ceil(bundle.length / 16384));
    expect(answers.length).toBeGreaterThan(8);
    expect(new Set(answers.map((a) => a.bundleSha256)).size).toBe(1);
    expect(answers[0]).toMatchObject({ device: 'ct-1', versions: [1, 2], skipped: [], totalBytes: bundle.length, bundleSha256: sha(bundle) });
    const file = join(t.dir, 'pulled.wgb');
    writeFileSync(file, bundle);
    const report = await verifyBundle(file, readGatewayPublicKey(gatewayKeyPaths(t.stateDir).publicKeyPath), { dataKey: new FileKeyProvider(t.keyFile) });
    expect(report.problems).toEqual([]);
    expect(report.versions.map((v) => v.bytes?.length)).toEqual([100_000, 50_000]);
    expect(report.versions[1]?.bytes).toEqual((await t.store.get('ct-1', 2)).bytes);
  });

  it('asking for an offset again gives the same bytes; the default chunk is 64 KiB; prefixHash answers the hash of what comes before', () => {
    const a = pullChunk(t.store, cache, { device: 'ct-1', offset: 70_000 });
    clock += 30_000;
    const b = pullChunk(t.store, cache, { device: 'ct-1', offset: 70_000, prefixHash: true });
    expect(b.bytes).toBe(a.bytes);
    expect(Buffer.from(a.bytes, 'base64').length).toBe(Math.min(PULL_CHUNK_DEFAULT, a.totalBytes - 70_000));
    const whole = readFileSync(join(cacheDir(), `${a.bundleSha256}.wgb`));
    expect(b.prefixSha256).toBe(sha(whole.subarray(0, 70_000)));
    expect(a.prefixSha256).toBeUndefined();
    const end = pullChunk(t.store, cache, { device: 'ct-1', offset: a.totalBytes });
    expect(end).toMatchObject({ bytes: '', chunkSha256: sha(Buffer.alloc(0)) });
  });

  it('a new version makes a new bundle for a new pull, while the one being pulled is still served by its hash', async () => {
    const first = pullChunk(t.store, cache, { device: 'ct-1', chunkSize: 4096 });
    await t.store.put('ct-1', 'file', bin(10_000));
    const fresh = pullChunk(t.store, cache, { device: 'ct-1', chunkSize: 4096 });
    expect(fresh.versions).toEqual([1, 2, 3]);
    expect(fresh.bundleSha256).not.toBe(first.bundleSha256);
    const pinned = pullChunk(t.store, cache, { device: 'ct-1', offset: 4096, chunkSize: 4096, bundleSha256: first.bundleSha256 });
    expect(pinned).toMatchObject({ bundleSha256: first.bundleSha256, versions: [1, 2] });
  });

  it('one version; kept bundles are bounded by count and by age, their files removed', () => {
    const v1 = pullChunk(t.store, cache, { device: 'ct-1', version: 1 });
    expect(v1.versions).toEqual([1]);
    clock += 1000;
    const all = pullChunk(t.store, cache, { device: 'ct-1' });
    clock += 1000;
    pullChunk(t.store, cache, { device: 'ct-1', version: 1 }); // used again: now the newest
    clock += 1000;
    const pump = pullChunk(t.store, cache, { device: 'pump-1' }); // a third: the least recently used goes
    expect(cache.size).toBe(2);
    expect(cache.files()).toEqual([`${v1.bundleSha256}.wgb`, `${pump.bundleSha256}.wgb`].sort());
    expect(existsSync(join(cacheDir(), `${all.bundleSha256}.wgb`))).toBe(false);
    clock += 61_000;
    expect(cache.size).toBe(0);
    expect(cache.files()).toEqual([]);
  });

  it('a byte budget: a bundle over it alone is still served, the others go', () => {
    const small = new PullCache({ dir: cacheDir(), maxBytes: 1000 });
    const big = pullChunk(t.store, small, { device: 'ct-1' });
    expect(big.totalBytes).toBeGreaterThan(1000);
    pullChunk(t.store, small, { device: 'pump-1' });
    expect(small.files()).toHaveLength(1);
  });

  it('bundles left by an earlier run are removed at the first pull', () => {
    mkdirSync(cacheDir(), { recursive: true });
    writeFileSync(join(cacheDir(), `${'0'.repeat(64)}.wgb`), 'old');
    writeFileSync(join(cacheDir(), '.building-x.tmp'), 'half');
    const r = pullChunk(t.store, cache, { device: 'pump-1' });
    expect(cache.files()).toEqual([`${r.bundleSha256}.wgb`]);
  });

  it('bad arguments and unknown devices or versions are errors that name them', () => {
    const call = (args: Record<string, unknown>) => () => pullChunk(t.store, cache, args);
    expect(call({})).toThrow(/backup.pull: device: /);
    expect(call({ device: '../etc' })).toThrow(/device: a device id/);
    expect(call({ device: 'ct-1', chunkSize: 256 * 1024 + 1 })).toThrow(/chunkSize/);
    expect(call({ device: 'ct-1', chunkSize: 100 })).toThrow(/chunkSize/);
    expect(call({ device: 'ct-1', offset: -1 })).toThrow(/offset/);
    expect(call({ device: 'ct-1', whatever: 1 })).toThrow(/whatever|unrecognized/i);
    expect(call({ device: 'ct-1', offset: 10_000_000 })).toThrow(/offset 10000000 is past the end of the \d+-byte bundle/);
    expect(call({ device: 'ct-9' })).toThrow(/no backup of ct-9/);
    expect(call({ device: 'ct-1', version: 7 })).toThrow(/no version 7 of ct-1/);
  });
});

describe('backup.list', () => {
  it('every device and version with sizes, hashes, driver and the last successful fetch', async () => {
    await t.store.put('pump-1', 'file', text('rate 5\n')); // unchanged: checked later, no new version
    const r = listBackups(t.store);
    expect(r.gateway).toBe('site-a/gw-1');
    expect(r.devices.map((d) => [d.device, d.versions.map((v) => v.version)])).toEqual([['ct-1', [1, 2]], ['pump-1', [1]]]);
    const v2 = r.devices[0]?.versions[1];
    const m2 = t.store.readManifest('ct-1', 2);
    expect(v2).toMatchObject({ version: 2, driver: 'file', format: 'binary', size: 50_000, plaintextSha256: m2.plaintext.sha256, blobSha256: m2.blob.sha256, blobSize: m2.blob.size, time: m2.time });
    expect(t.store.readManifest('ct-1', 2).previous?.manifestSha256).toBe(r.devices[0]?.versions[0]?.manifestSha256);
    expect(r.devices[1]?.lastChecked).toBe(t.store.lastChecked('pump-1')?.time);
    expect(r.problems).toEqual([]);
    expect(listBackups(t.store, 'pump-1').devices.map((d) => d.device)).toEqual(['pump-1']);
    // Nothing approved yet; then version 1 of ct-1 is.
    expect(r.devices.flatMap((d) => d.versions.map((v) => v.approved))).toEqual([false, false, false]);
    writeBaseline(t.store, t.store.readManifest('ct-1', 1), 'cli:test');
    expect(listBackups(t.store, 'ct-1').devices[0]?.versions.map((v) => [v.version, v.approved])).toEqual([[1, true], [2, false]]);
  });

  it('a manifest that fails its signature is reported, not listed', () => {
    const file = t.store.manifestPath('ct-1', 1);
    writeFileSync(file, readFileSync(file, 'utf8').replace('"driver":"file"', '"driver":"filf"'));
    const r = listBackups(t.store);
    expect(r.devices[0]?.versions.map((v) => v.version)).toEqual([2]);
    expect(r.problems).toEqual([expect.objectContaining({ file, check: 'signature' })]);
  });

  it('the handlers open the store at the first command, and say why when there is no key yet', async () => {
    const h = backupPullHandlers({ stateDir: t.stateDir, gateway: 'site-a/gw-1', config: BackupStoreSchema.parse({}) });
    const ctx = {} as never;
    const listed = (await h['backup.list']!({}, ctx)) as { devices: unknown[] };
    expect(listed.devices).toHaveLength(2);
    const chunk = (await h['backup.pull']!({ device: 'pump-1' }, ctx)) as PullResult;
    expect(chunk.versions).toEqual([1]);
    const none = backupPullHandlers({ stateDir: join(t.dir, 'empty'), gateway: 'x/y', config: BackupStoreSchema.parse({}) });
    await expect(async () => none['backup.list']!({}, ctx)).rejects.toThrow(/gateway-ed25519|key/);
    await expect(async () => h['backup.list']!({ device: 'A' }, ctx)).rejects.toThrow(/backup.list: device/);
  });
});
