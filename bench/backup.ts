// Store throughput for 1 MB configurations (agent/backup/store.ts): BackupStore.put, which
// hashes, encrypts (AES-256-GCM), hashes the ciphertext, signs the manifest (Ed25519) and
// writes blob and manifest crash-safely (temp file, fsync, rename, fsync of the directory),
// then applies retention; against a plain copy of the same bytes plus their SHA-256, written
// with the same crash-safe write (writeFileAtomic), in the same run. For information, the
// crypto alone (no disk). Distinct random configurations (nothing deduplicated), the default
// retention (last 10), rounds with the variants alternating, median MB/s.
//
// The files live in a fresh directory under the system's temporary directory (TMPDIR): its file
// system decides what an fsync costs.
import { createHash, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { encryptBlob } from '../agent/backup/blob.js';
import { BufferKeyProvider, publicKeyFingerprint } from '../agent/backup/keys.js';
import { BackupStore } from '../agent/backup/store.js';
import { writeFileAtomic } from '../agent/util/fsx.js';
import { envNumber, median, ratio, table, withTempDir } from './lib.js';

const SIZE = 1024 * 1024;
const TARGET = 0.5;

type Variant = 'copy' | 'store' | 'crypto';
const VARIANTS: Variant[] = ['copy', 'store', 'crypto'];

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

export async function backup(): Promise<string[]> {
  const rounds = envNumber('WARDGATE_BENCH_ROUNDS', 5);
  const count = envNumber('WARDGATE_BENCH_CONFIGS', 30);
  return withTempDir('wgbench-backup-', async (dir) => {
    const pair = generateKeyPairSync('ed25519');
    const key = { publicKey: pair.publicKey, privateKey: pair.privateKey, fingerprint: publicKeyFingerprint(pair.publicKey) };
    const dataKey = randomBytes(32);
    const configs = Array.from({ length: count }, () => randomBytes(SIZE));
    const runs = new Map<Variant, number[]>(VARIANTS.map((v) => [v, []]));

    const runOnce = async (variant: Variant, round: number): Promise<number> => {
      const base = join(dir, `${variant}-${round}`);
      const store = BackupStore.open({ stateDir: base, gateway: 'bench/gw-1', key, keys: new BufferKeyProvider(dataKey) });
      const t0 = performance.now();
      for (const [i, bytes] of configs.entries()) {
        if (variant === 'copy') {
          const sum = sha256(bytes);
          writeFileAtomic(join(base, 'copies', `${i}-${sum.slice(0, 16)}.cfg`), bytes, { mode: 0o640 });
        } else if (variant === 'store') {
          await store.put('dev-1', 'file', { bytes, format: 'binary', source: `bench #${i}` });
        } else {
          const sum = sha256(bytes);
          const blob = encryptBlob(dataKey, 'dev-1', bytes, sum);
          sign(null, Buffer.from(`${sum}${sha256(blob)}`), key.privateKey);
        }
      }
      const seconds = (performance.now() - t0) / 1000;
      return (count * SIZE) / (1024 * 1024) / seconds;
    };

    await runOnce('store', -1); // warm up: JIT, the file system's allocator
    await runOnce('copy', -1);
    for (let r = 0; r < rounds; r++) {
      const order = r % 2 === 0 ? VARIANTS : [...VARIANTS].reverse();
      for (const v of order) runs.get(v)!.push(await runOnce(v, r));
    }
    const med = (v: Variant) => median(runs.get(v) ?? []);
    console.log(`${count} configurations of 1 MiB per run, ${rounds} rounds, in ${dir}\n`);
    console.log(
      table(
        ['variant', 'runs (MB/s)', 'median MB/s', 'ms per config', 'vs copy'],
        VARIANTS.map((v) => [v, (runs.get(v) ?? []).map((x) => x.toFixed(0)).join(' '), med(v).toFixed(0), (1000 / med(v)).toFixed(2), ratio(med(v) / med('copy'))]),
      ),
    );
    const x = med('store') / med('copy');
    const summary = [`backup: 1 MiB configurations, store (encrypt, sign, write) / plain copy + SHA-256 = ${ratio(x)} (target >= ${TARGET}x: ${x >= TARGET ? 'PASS' : 'MISS'}); crypto alone ${med('crypto').toFixed(0)} MB/s`];
    console.log('');
    for (const line of summary) console.log(line);
    return summary;
  });
}
