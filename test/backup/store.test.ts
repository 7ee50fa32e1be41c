// The store: round trip, content addressing, every read verified with the failing file and
// check named, retention within a budget, locking, and crash safety under kill -9.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { sha256 } from '../../agent/backup/blob.js';
import { BackupStoreError, BackupVerifyError } from '../../agent/backup/errors.js';
import { BufferKeyProvider, loadGatewayKey, parseGatewayPublicKey, publicKeyPem } from '../../agent/backup/keys.js';
import { manifestFileText, parseManifest, signManifest } from '../../agent/backup/manifest.js';
import { BackupStore } from '../../agent/backup/store.js';
import { createDriver } from '../../agent/backup/drivers/index.js';
import { DriverSchema } from '../../agent/backup/schema.js';
import { flip, makeStore, text, type TestStore } from './store-helpers.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CHILD = join(ROOT, 'test', 'backup', 'fixtures', 'writer-child.ts');

let t: TestStore;
beforeEach(() => {
  t = makeStore();
});
afterEach(() => t.cleanup());

function verifyError(fn: () => unknown): BackupVerifyError {
  try {
    fn();
  } catch (err) {
    if (err instanceof BackupVerifyError) return err;
    throw err;
  }
  throw new Error('expected a BackupVerifyError');
}

async function verifyErrorAsync(p: Promise<unknown>): Promise<BackupVerifyError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof BackupVerifyError) return err;
    throw err;
  }
  throw new Error('expected a BackupVerifyError');
}

describe('round trip', () => {
  it('stores a configuration encrypted and signed, and gives back the same bytes', async () => {
    const config = 'hostname ct-1\nae-title CT1\nport 104\n';
    const r = await t.store.put('ct-1', 'http', text(config, 'https://10.20.0.31/config'));
    expect(r.unchanged).toBe(false);
    expect(r.manifest).toMatchObject({
      device: 'ct-1',
      version: 1,
      driver: 'http',
      format: 'text',
      source: 'https://10.20.0.31/config',
      gateway: 'site-a/gw-1',
      plaintext: { size: config.length, sha256: sha256(config) },
      previous: null,
      cipher: 'AES-256-GCM',
    });
    const blobFile = t.store.blobPath('ct-1', sha256(config));
    const blob = readFileSync(blobFile);
    expect(blob.includes(Buffer.from('ae-title'))).toBe(false);
    expect(r.manifest.blob.sha256).toBe(sha256(blob));
    const got = await t.store.get('ct-1');
    expect(got.bytes.toString()).toBe(config);
    expect(got.manifest).toEqual(r.manifest);

    // A second version chains to the first.
    const r2 = await t.store.put('ct-1', 'http', text(`${config}port 11112\n`));
    expect(r2.manifest.version).toBe(2);
    expect(r2.manifest.previous?.version).toBe(1);
    expect((await t.store.get('ct-1', 1)).bytes.toString()).toBe(config);
    expect((await t.store.verify()).ok).toBe(true);

    // Reading with the public key alone: listing and signatures, no decryption.
    const pub = parseGatewayPublicKey(publicKeyPem(loadGatewayKey(t.stateDir).publicKey));
    const reader = BackupStore.open({ stateDir: t.stateDir, gateway: 'x', key: pub });
    expect(reader.list('ct-1').manifests.map((m) => m.version)).toEqual([1, 2]);
    await expect(reader.get('ct-1')).rejects.toThrow(BackupStoreError);
    await expect(reader.put('ct-1', 'http', text('x'))).rejects.toThrow(/private key/);
  });

  it('stores identical versions once: the same bytes again write no version, an earlier one shares its blob', async () => {
    const a = text('setpoint 37.0\n');
    const b = text('setpoint 42.0\n');
    const r1 = await t.store.put('pump-1', 'modbus-tcp', a);
    const again = await t.store.put('pump-1', 'modbus-tcp', a);
    expect(again.unchanged).toBe(true);
    expect(again.manifest.version).toBe(1);
    expect(t.store.versions('pump-1')).toEqual([1]);
    expect(t.store.lastChecked('pump-1')?.version).toBe(1);

    await t.store.put('pump-1', 'modbus-tcp', b);
    const back = await t.store.put('pump-1', 'modbus-tcp', a);
    expect(back.unchanged).toBe(false);
    expect(back.blobReused).toBe(true);
    expect(back.manifest.version).toBe(3);
    expect(back.manifest.blob.sha256).toBe(r1.manifest.blob.sha256);
    expect(readdirSync(join(t.store.deviceDir('pump-1'), 'blobs')).sort()).toEqual([`${sha256('setpoint 37.0\n')}.blob`, `${sha256('setpoint 42.0\n')}.blob`].sort());
    expect((await t.store.get('pump-1', 3)).bytes.toString()).toBe('setpoint 37.0\n');
  });

  it('writes files others cannot write, and refuses a bad device id', async () => {
    const r = await t.store.put('ct-1', 'file', text('x'));
    expect(statSync(t.store.manifestPath('ct-1', 1)).mode & 0o777).toBe(0o640);
    expect(statSync(t.store.blobPath('ct-1', r.manifest.plaintext.sha256)).mode & 0o777).toBe(0o640);
    await expect(t.store.put('../etc', 'file', text('x'))).rejects.toThrow(BackupStoreError);
  });

  it('serialises writes to one device: concurrent puts get distinct versions in one chain', async () => {
    const rs = await Promise.all([1, 2, 3, 4].map((i) => t.store.put('ct-1', 'file', text(`config ${i}\n`))));
    expect(rs.map((r) => r.manifest.version).sort()).toEqual([1, 2, 3, 4]);
    const ms = t.store.list('ct-1').manifests;
    for (const m of ms.slice(1)) expect(m.previous?.version).toBe(m.version - 1);
    expect((await t.store.verify()).ok).toBe(true);
  });
});

describe('with a real driver', () => {
  it('what the command driver fetches is stored and comes back byte for byte', async () => {
    const cfg = DriverSchema.parse({ type: 'command', argv: ['/bin/sh', '-c', 'printf "unit 1\\nsetpoint 370\\n"'] });
    const driver = createDriver({ id: 'pump-1' }, cfg, { baseDir: t.dir });
    const fetched = await driver.fetch(AbortSignal.timeout(10000));
    const r = await t.store.put('pump-1', driver.type, fetched);
    expect(r.manifest).toMatchObject({ driver: 'command', format: fetched.format, source: fetched.source });
    expect((await t.store.get('pump-1')).bytes.toString()).toBe('unit 1\nsetpoint 370\n');
    expect((await t.store.put('pump-1', driver.type, await driver.fetch(AbortSignal.timeout(10000)))).unchanged).toBe(true);
  });
});

describe('every read is verified, and a failure names the file and the check', () => {
  let blobFile = '';
  let manifestFile = '';
  beforeEach(async () => {
    const r = await t.store.put('ct-1', 'http', text('modality CT\nae CT1\n'));
    blobFile = t.store.blobPath('ct-1', r.manifest.plaintext.sha256);
    manifestFile = t.store.manifestPath('ct-1', 1);
  });

  it('a flipped byte in a blob: blob-hash', async () => {
    writeFileSync(blobFile, flip(readFileSync(blobFile), 30));
    const e = await verifyErrorAsync(t.store.get('ct-1'));
    expect(e.problem).toMatchObject({ file: blobFile, check: 'blob-hash' });
    const report = await t.store.verify();
    expect(report.ok).toBe(false);
    expect(report.problems).toEqual([expect.objectContaining({ file: blobFile, check: 'blob-hash' })]);
  });

  it('a missing blob: missing', async () => {
    writeFileSync(blobFile, Buffer.alloc(0));
    expect((await verifyErrorAsync(t.store.get('ct-1'))).problem.check).toBe('blob-hash');
    const { rmSync } = await import('node:fs');
    rmSync(blobFile);
    expect((await verifyErrorAsync(t.store.get('ct-1'))).problem).toMatchObject({ file: blobFile, check: 'missing' });
  });

  it('a flipped byte in a manifest: signature (or structure when it breaks the JSON)', async () => {
    const original = readFileSync(manifestFile, 'utf8');
    writeFileSync(manifestFile, original.replace('"driver":"http"', '"driver":"httq"'));
    expect(verifyError(() => t.store.readManifest('ct-1', 1)).problem).toMatchObject({ file: manifestFile, check: 'signature' });
    writeFileSync(manifestFile, original.replace('"size":', '"size";'));
    expect(verifyError(() => t.store.readManifest('ct-1', 1)).problem).toMatchObject({ file: manifestFile, check: 'structure' });
    const report = await t.store.verify();
    expect(report.problems.map((p) => [p.file, p.check])).toEqual([[manifestFile, 'structure']]);
  });

  it('a flipped byte in a signature: signature', () => {
    const m = JSON.parse(readFileSync(manifestFile, 'utf8')) as { signature: string };
    const sig = Buffer.from(m.signature, 'base64');
    writeFileSync(manifestFile, JSON.stringify({ ...m, signature: flip(sig, 5).toString('base64') }));
    expect(verifyError(() => t.store.readManifest('ct-1', 1)).problem).toMatchObject({ file: manifestFile, check: 'signature' });
  });

  it('a manifest moved to another version or device: identity', async () => {
    await t.store.put('ct-1', 'http', text('v2\n'));
    const second = t.store.manifestPath('ct-1', 2);
    writeFileSync(second, readFileSync(manifestFile));
    expect(verifyError(() => t.store.readManifest('ct-1', 2)).problem).toMatchObject({ file: second, check: 'identity' });
  });

  it('a manifest replaced by another validly signed one breaks the chain: chain', async () => {
    await t.store.put('ct-1', 'http', text('v2\n'));
    // Someone with the signing key rewrites version 1 (a different source); version 2 still names the old one.
    const key = loadGatewayKey(t.stateDir);
    const m1 = parseManifest(manifestFile, readFileSync(manifestFile, 'utf8'));
    const { signature: _s, ...rest } = m1;
    void _s;
    writeFileSync(manifestFile, manifestFileText(signManifest({ ...rest, source: 'forged' }, key.privateKey!)));
    const report = await t.store.verify();
    expect(report.problems).toEqual([expect.objectContaining({ file: t.store.manifestPath('ct-1', 2), check: 'chain' })]);
  });

  it('a wrong data key: key-id; a wrong public key: public-key', async () => {
    const other = t.open({ keys: new BufferKeyProvider(randomBytes(32)) });
    const e = await verifyErrorAsync(other.get('ct-1'));
    expect(e.problem.check).toBe('key-id');
    expect(e.message).toMatch(/encrypted under data key [0-9a-f]{16}; the data key given is [0-9a-f]{16}/);

    const { generateKeyPairSync } = await import('node:crypto');
    const stranger = parseGatewayPublicKey(publicKeyPem(generateKeyPairSync('ed25519').publicKey));
    const wrong = BackupStore.open({ stateDir: t.stateDir, gateway: 'x', key: stranger });
    const e2 = verifyError(() => wrong.readManifest('ct-1', 1));
    expect(e2.problem).toMatchObject({ file: manifestFile, check: 'public-key' });
    expect(e2.message).toMatch(/wrong public key/);
  });

  it('a damaged blob is replaced when the same configuration is fetched again', async () => {
    writeFileSync(blobFile, flip(readFileSync(blobFile), -1));
    const r = await t.store.put('ct-1', 'http', text('modality CT\nae CT1\n'));
    expect(r.unchanged).toBe(false);
    expect(r.blobReused).toBe(false);
    expect((await t.store.get('ct-1')).bytes.toString()).toBe('modality CT\nae CT1\n');
    // Version 1's manifest names the damaged ciphertext; it stays reported, not hidden.
    expect((await t.store.verify()).problems.map((p) => [p.file, p.check])).toEqual([[blobFile, 'blob-hash']]);
  });
});

describe('retention', () => {
  it('keeps the last N and the newest of each of the last D days, and removes unreferenced blobs', async () => {
    let now = new Date('2030-01-01T08:00:00Z');
    const s = t.open({ retention: { last: 3, dailyDays: 3, diskBudgetBytes: 1024 ** 3 }, now: () => now });
    // Four days, three versions a day at 08:00, 12:00, 16:00.
    const made: { version: number; time: string }[] = [];
    for (let day = 0; day < 4; day++) {
      for (const hour of [8, 12, 16]) {
        now = new Date(Date.UTC(2030, 0, 1 + day, hour));
        const r = await s.put('ct-1', 'file', text(`day ${day} hour ${hour}\n`));
        made.push({ version: r.manifest.version, time: r.manifest.time });
      }
    }
    // Now 2030-01-04 16:00. Last 3: versions 10, 11, 12. Daily for Jan 2, 3, 4: 6, 9, 12.
    expect(s.versions('ct-1')).toEqual([6, 9, 10, 11, 12]);
    expect(readdirSync(join(s.deviceDir('ct-1'), 'blobs'))).toHaveLength(5);
    expect((await s.verify()).ok).toBe(true);
  });

  it('keeps within the disk budget, oldest first, never a device\'s newest nor a protected version', async () => {
    let now = new Date('2030-01-01T00:00:00Z');
    const size = 40 * 1024;
    // Room for five blobs and their manifests.
    const budget = 5 * size + 16 * 1024;
    const s = t.open({ retention: { last: 100, dailyDays: 100, diskBudgetBytes: budget }, now: () => now, protect: (m) => m.device === 'ct-1' && m.version === 1 });
    const put = async (device: string, minute: number) => {
      now = new Date(Date.UTC(2030, 0, 1, 0, minute));
      return s.put(device, 'file', { bytes: randomBytes(size), format: 'binary', source: 'x' });
    };
    await put('ct-1', 0); // ct-1 v1, protected
    await put('ct-1', 1); // ct-1 v2
    await put('pump-1', 2); // pump-1 v1
    await put('ct-1', 3); // ct-1 v3
    const five = await put('pump-1', 4); // pump-1 v2
    expect(five.pruned.removed).toEqual([]);
    const r = await put('ct-1', 5); // ct-1 v4: six blobs, over the budget
    expect(r.pruned.removed).toEqual([{ device: 'ct-1', version: 2 }]);
    expect(r.pruned.usedBytes).toBeLessThanOrEqual(budget);
    expect(r.pruned.overBudget).toBe(false);
    const r7 = await put('pump-1', 6); // pump-1 v3: the oldest unprotected is now pump-1 v1
    expect(r7.pruned.removed).toEqual([{ device: 'pump-1', version: 1 }]);
    expect(s.versions('ct-1')).toEqual([1, 3, 4]);
    expect(s.versions('pump-1')).toEqual([2, 3]);
    expect(s.usedBytes()).toBeLessThanOrEqual(budget);

    // A budget too small even for the protected and newest: reported, nothing of theirs removed.
    const tight = t.open({ retention: { last: 100, dailyDays: 100, diskBudgetBytes: size }, now: () => now, protect: (m) => m.device === 'ct-1' && m.version === 1 });
    const p = await tight.prune();
    expect(p.overBudget).toBe(true);
    expect(tight.versions('ct-1')).toEqual([1, 4]);
    expect(tight.versions('pump-1')).toEqual([3]);
    expect((await tight.verify()).ok).toBe(true);
  });
});

describe('other processes', () => {
  const children: ChildProcess[] = [];
  afterEach(() => {
    for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  });

  function writer(device: string, count: number, bytes: number): { child: ChildProcess; puts: () => number; done: Promise<number | null> } {
    const child = spawn(process.execPath, ['--import', 'tsx', CHILD, t.stateDir, t.keyFile, device, String(count), String(bytes)], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const done = new Promise<number | null>((resolve) =>
      child.on('exit', (code) => {
        if (code !== 0 && code !== null) console.error(err);
        resolve(code);
      }),
    );
    return { child, puts: () => out.split('\n').filter((l) => l.startsWith('put ')).length, done };
  }

  it('two processes writing the same device take turns: every put is a distinct version in one chain', async () => {
    const a = writer('ct-1', 15, 4096);
    const b = writer('ct-1', 15, 4096);
    expect(await a.done).toBe(0);
    expect(await b.done).toBe(0);
    expect(t.store.versions('ct-1')).toEqual(Array.from({ length: 30 }, (_, i) => i + 1));
    const report = await t.store.verify();
    expect(report.problems).toEqual([]);
    expect(report.decrypted).toBe(30);
    for (const m of t.store.list('ct-1').manifests.slice(1)) expect(m.previous?.version).toBe(m.version - 1);
  });

  it('kill -9 during writes leaves a store that verifies; temp files are cleaned at open', async () => {
    let leftovers = 0;
    for (let round = 0; round < 4; round++) {
      const w = writer('ct-1', 0, 512 * 1024);
      const started = Date.now();
      while (w.puts() < 2 && Date.now() - started < 30000) await new Promise((r) => setTimeout(r, 20));
      expect(w.puts()).toBeGreaterThanOrEqual(2);
      // Somewhere in a write: the child does little else.
      await new Promise((r) => setTimeout(r, 5 + Math.floor(Math.random() * 40)));
      w.child.kill('SIGKILL');
      await w.done;
      const base = t.store.deviceDir('ct-1');
      const temps = ['', 'manifests', 'blobs'].flatMap((d) => readdirSync(join(base, d)).filter((f) => f.endsWith('.tmp')));
      leftovers += temps.length;

      const store = t.open();
      expect(['', 'manifests', 'blobs'].flatMap((d) => readdirSync(join(base, d)).filter((f) => f.endsWith('.tmp')))).toEqual([]);
      const report = await store.verify();
      expect(report.problems).toEqual([]);
      expect(report.decrypted).toBe(store.versions('ct-1').length);
      // The store still takes writes (the dead child's lock is taken over).
      const r = await store.put('ct-1', 'file', text(`after round ${round}\n`));
      expect((await store.get('ct-1', r.manifest.version)).bytes.toString()).toBe(`after round ${round}\n`);
    }
    console.log(`kill -9: ${leftovers} temp file(s) left by the 4 killed writers, all cleaned at open`);
  });
});

describe('recovery at open', () => {
  it('removes temp files but leaves a live writer\'s alone', async () => {
    await t.store.put('ct-1', 'file', text('x'));
    const base = t.store.deviceDir('ct-1');
    const tmp = join(base, 'blobs', '.abc.blob.99999999.tmp');
    writeFileSync(tmp, 'partial');
    // A lock held by a live process (this one): the device is being written, hands off.
    writeFileSync(join(base, '.lock'), String(process.pid));
    t.open();
    expect(existsSync(tmp)).toBe(true);
    writeFileSync(join(base, '.lock'), '99999999');
    t.open();
    expect(existsSync(tmp)).toBe(false);
    expect(existsSync(join(base, '.lock'))).toBe(false);
  });
});

describe('key files', () => {
  it('a data key others can read is refused', () => {
    chmodSync(t.keyFile, 0o640);
    expect(() => t.open()).toThrow(/mode 0640 lets others read the data key; chmod 600/);
  });
});
