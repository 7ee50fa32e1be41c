// The backup store, in <stateDir>/backups/devices/<device>/: blobs/<sha256 of the plaintext>.blob
// (encrypted, blob.ts), manifests/<version, 10 digits>.json (signed, manifest.ts) and
// checked.json (when a fetch last found the configuration unchanged). Writes go through temp
// file, fsync, rename, so a crash leaves whole files or temp files that are ignored and cleaned
// at the next open. Every read is verified. docs/backups.md describes it all.
import { readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import type { KeyObject } from 'node:crypto';
import { join } from 'node:path';
import { readIfExists, removeIfExists, tryPidLock, withLock, writeFileAtomic } from '../util/fsx.js';
import type { FetchedConfig } from './types.js';
import { decryptBlob, encryptBlob, sha256, checkBlobHeader } from './blob.js';
import { BackupStoreError, BackupVerifyError, type Problem } from './errors.js';
import type { GatewayKey, KeyProvider } from './keys.js';
import { DeviceId, MANIFEST_KIND, manifestFileText, manifestHash, parseManifest, signManifest, verifyManifestSignature, type Manifest, type SignedManifest } from './manifest.js';

export interface Retention {
  /** The newest `last` versions of each device are kept. */
  last: number;
  /** And the newest version of each of the last `dailyDays` days (UTC). */
  dailyDays: number;
  /** All devices' blobs and manifests together; over it, the oldest versions go first. */
  diskBudgetBytes: number;
}

export const DEFAULT_RETENTION: Retention = { last: 10, dailyDays: 30, diskBudgetBytes: 256 * 1024 * 1024 };

export interface StoreOptions {
  /** The store lives in <stateDir>/backups. */
  stateDir: string;
  /** Written into every manifest: "<site>/<gateway>". */
  gateway: string;
  /** The gateway key: its private half to write (sign), its public half to read (verify). */
  key: GatewayKey;
  /** The data key: needed to write and to decrypt, not to list, export or check signatures. */
  keys?: KeyProvider;
  retention?: Partial<Retention>;
  /** Versions retention and the budget never remove (an approved baseline, say). */
  protect?: (m: SignedManifest) => boolean;
  now?: () => Date;
  /** How long a write waits for another process's lock on the same device (default 15 s). */
  lockWaitMs?: number;
}

export interface PutResult {
  manifest: SignedManifest;
  /** The configuration equals the latest version's: no new version was written. */
  unchanged: boolean;
  /** A blob with the same content was already there (an earlier version) and is shared. */
  blobReused: boolean;
  pruned: PruneResult;
}

export interface PruneResult {
  removed: { device: string; version: number }[];
  blobsRemoved: number;
  /** Bytes in the store after pruning. */
  usedBytes: number;
  /** Still over the budget with only the protected versions left. */
  overBudget: boolean;
}

export interface StoreReport {
  ok: boolean;
  devices: number;
  versions: number;
  /** Versions whose plaintext was decrypted and checked (0 without the data key). */
  decrypted: number;
  problems: Problem[];
  /** Not failures: blobs no manifest refers to (left by a crash; the next prune removes them). */
  notes: string[];
}

export interface Checked {
  time: string;
  version: number;
  plaintextSha256: string;
}

const MANIFEST_FILE = /^(\d{10})\.json$/;
const BLOB_FILE = /^([0-9a-f]{64})\.blob$/;
const TEMP_FILE = /^\..*\.tmp$/;

export class BackupStore {
  readonly dir: string;
  readonly #opts: StoreOptions;
  readonly #retention: Retention;
  readonly #chains = new Map<string, Promise<unknown>>();

  private constructor(opts: StoreOptions) {
    this.#opts = opts;
    this.dir = join(opts.stateDir, 'backups');
    this.#retention = { ...DEFAULT_RETENTION, ...opts.retention };
    const r = this.#retention;
    if (!(Number.isInteger(r.last) && r.last >= 1)) throw new RangeError(`retention.last must be an integer >= 1, not ${r.last}`);
    if (!(Number.isInteger(r.dailyDays) && r.dailyDays >= 0)) throw new RangeError(`retention.dailyDays must be an integer >= 0, not ${r.dailyDays}`);
    if (!(r.diskBudgetBytes > 0)) throw new RangeError(`retention.diskBudgetBytes must be positive, not ${r.diskBudgetBytes}`);
  }

  get key(): GatewayKey {
    return this.#opts.key;
  }

  get gateway(): string {
    return this.#opts.gateway;
  }

  /** Opens the store; temp files of writes that never finished (kill -9, power loss) are removed. */
  static open(opts: StoreOptions): BackupStore {
    const store = new BackupStore(opts);
    store.#recover();
    return store;
  }

  #now(): Date {
    return this.#opts.now?.() ?? new Date();
  }

  deviceDir(device: string): string {
    const r = DeviceId.safeParse(device);
    if (!r.success) throw new BackupStoreError(`"${device}" is not a device id (1-63 lowercase letters, digits and "-")`);
    return join(this.dir, 'devices', device);
  }

  manifestPath(device: string, version: number): string {
    return join(this.deviceDir(device), 'manifests', `${String(version).padStart(10, '0')}.json`);
  }

  blobPath(device: string, plaintextSha256: string): string {
    return join(this.deviceDir(device), 'blobs', `${plaintextSha256}.blob`);
  }

  /** Devices with a directory in the store, sorted. */
  devices(): string[] {
    return listDir(join(this.dir, 'devices'))
      .filter((d) => DeviceId.safeParse(d).success)
      .sort();
  }

  /** The version numbers on disk for a device, ascending (manifests not read). */
  versions(device: string): number[] {
    return listDir(join(this.deviceDir(device), 'manifests'))
      .map((f) => MANIFEST_FILE.exec(f))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b);
  }

  /** A manifest, its structure, signature and place (device, version) checked. */
  readManifest(device: string, version: number): SignedManifest {
    const file = this.manifestPath(device, version);
    const text = readIfExists(file);
    if (text === undefined) throw new BackupVerifyError({ file, check: 'missing', message: `no version ${version} of ${device}` });
    const m = parseManifest(file, text);
    verifyManifestSignature(file, m, this.#opts.key);
    if (m.device !== device || m.version !== version) {
      throw new BackupVerifyError({ file, check: 'identity', message: `claims to be version ${m.version} of ${m.device}, but is stored as version ${version} of ${device}` });
    }
    return m;
  }

  /** Every version of a device (or of all), verified; the ones that fail are in `problems`. */
  list(device?: string): { manifests: SignedManifest[]; problems: Problem[] } {
    const manifests: SignedManifest[] = [];
    const problems: Problem[] = [];
    for (const d of device !== undefined ? [device] : this.devices()) {
      for (const v of this.versions(d)) {
        try {
          manifests.push(this.readManifest(d, v));
        } catch (err) {
          if (!(err instanceof BackupVerifyError)) throw err;
          problems.push(err.problem);
        }
      }
    }
    return { manifests, problems };
  }

  /** The newest version of a device whose manifest verifies. */
  latest(device: string): SignedManifest | undefined {
    const versions = this.versions(device);
    for (let i = versions.length - 1; i >= 0; i--) {
      try {
        return this.readManifest(device, versions[i]!);
      } catch (err) {
        if (!(err instanceof BackupVerifyError)) throw err;
      }
    }
    return undefined;
  }

  /**
   * When a fetch last succeeded: the later of the newest version's time and the last time a
   * fetch found it unchanged (checked.json, written only then, to spare a write per version).
   */
  lastChecked(device: string): Checked | undefined {
    const latest = this.latest(device);
    const fromLatest = latest ? { time: latest.time, version: latest.version, plaintextSha256: latest.plaintext.sha256 } : undefined;
    const text = readIfExists(join(this.deviceDir(device), 'checked.json'));
    let checked: Checked | undefined;
    try {
      checked = text === undefined ? undefined : (JSON.parse(text) as Checked);
    } catch {
      checked = undefined;
    }
    if (checked === undefined || typeof checked.time !== 'string') return fromLatest;
    if (fromLatest === undefined) return checked;
    return checked.time > fromLatest.time ? checked : fromLatest;
  }

  /** A version's encrypted blob, its SHA-256 checked against the (verified) manifest. */
  readBlob(m: SignedManifest): Buffer {
    const file = this.blobPath(m.device, m.plaintext.sha256);
    let blob: Buffer;
    try {
      blob = readFileSync(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new BackupVerifyError({ file, check: 'missing', message: `the blob of version ${m.version} of ${m.device} is not there` });
      throw err;
    }
    const got = sha256(blob);
    if (got !== m.blob.sha256) throw new BackupVerifyError({ file, check: 'blob-hash', message: `ciphertext sha256 ${got} differs from version ${m.version}'s manifest (${m.blob.sha256})` });
    checkBlobHeader(file, blob);
    return blob;
  }

  async #dataKey(): Promise<{ id: string; key: Buffer }> {
    const keys = this.#opts.keys;
    if (keys === undefined) throw new BackupStoreError('this needs the data key, and the store was opened without one');
    return { id: keys.id, key: await keys.dataKey() };
  }

  #decrypt(m: SignedManifest, blob: Buffer, dk: { id: string; key: Buffer }): Buffer {
    const file = this.blobPath(m.device, m.plaintext.sha256);
    if (m.keyId !== dk.id) throw new BackupVerifyError({ file, check: 'key-id', message: `encrypted under data key ${m.keyId}; the data key given is ${dk.id}` });
    return decryptBlob(file, dk.key, m.device, blob, m.plaintext);
  }

  /** A version (the latest when not given), every check run: signature, ciphertext hash, GCM tag, plaintext hash. */
  async get(device: string, version?: number): Promise<{ manifest: SignedManifest; bytes: Buffer }> {
    const dk = await this.#dataKey();
    let manifest: SignedManifest;
    if (version !== undefined) {
      manifest = this.readManifest(device, version);
    } else {
      const versions = this.versions(device);
      const last = versions[versions.length - 1];
      if (last === undefined) throw new BackupStoreError(`no backup of ${device}`);
      manifest = this.readManifest(device, last);
    }
    return { manifest, bytes: this.#decrypt(manifest, this.readBlob(manifest), dk) };
  }

  /** Serialises work on one device: in this process by a promise chain, across processes by a pid lock. */
  async #locked<T>(device: string, fn: () => Promise<T>): Promise<T> {
    const lock = join(this.deviceDir(device), '.lock');
    const prev = this.#chains.get(device) ?? Promise.resolve();
    const run = prev.then(
      () => withLock(lock, fn, this.#opts.lockWaitMs),
      () => withLock(lock, fn, this.#opts.lockWaitMs),
    );
    const tail = run.catch(() => undefined);
    this.#chains.set(device, tail);
    try {
      return await run;
    } finally {
      if (this.#chains.get(device) === tail) this.#chains.delete(device);
    }
  }

  /**
   * Runs `fn` holding the device's lock, in this process and across processes: for work that
   * must not interleave with a put (an approval, a restore). `fn` must not call put or prune on
   * the same device (the lock is not reentrant).
   */
  withDeviceLock<T>(device: string, fn: () => Promise<T>): Promise<T> {
    this.deviceDir(device);
    return this.#locked(device, fn);
  }

  /**
   * Stores a fetched configuration. The same bytes as the latest version write no new version
   * (checked.json records the check); bytes seen in an earlier version share its blob.
   * Retention and the budget are applied afterwards.
   */
  async put(device: string, driver: string, fetched: FetchedConfig): Promise<PutResult> {
    this.deviceDir(device);
    const privateKey = this.#opts.key.privateKey;
    if (privateKey === undefined) throw new BackupStoreError('writing needs the gateway\'s private key, and the store was opened with its public key only');
    const dk = await this.#dataKey();
    const plainSha = sha256(fetched.bytes);
    const result = await this.#locked(device, () => Promise.resolve(this.#write(device, driver, fetched, plainSha, dk, privateKey)));
    const pruned = await this.prune(device);
    return { ...result, pruned };
  }

  /** The write itself, under the device's lock. */
  #write(device: string, driver: string, fetched: FetchedConfig, plainSha: string, dk: { id: string; key: Buffer }, privateKey: KeyObject): Omit<PutResult, 'pruned'> {
    const now = this.#now();
    const versions = this.versions(device);
    const latest = this.latest(device);
    if (latest && latest.plaintext.sha256 === plainSha && latest.keyId === dk.id && this.#blobIntact(latest)) {
      this.#writeChecked(device, { time: now.toISOString(), version: latest.version, plaintextSha256: plainSha });
      return { manifest: latest, unchanged: true, blobReused: true };
    }
    const blobFile = this.blobPath(device, plainSha);
    let blob = this.#reusableBlob(blobFile, device, plainSha, fetched.bytes.length, dk);
    const blobReused = blob !== undefined;
    if (blob === undefined) {
      blob = encryptBlob(dk.key, device, fetched.bytes, plainSha);
      writeFileAtomic(blobFile, blob, { mode: 0o640 });
    }
    const version = (versions[versions.length - 1] ?? 0) + 1;
    const manifest: Manifest = {
      kind: MANIFEST_KIND,
      schema: 1,
      gateway: this.#opts.gateway,
      device,
      version,
      time: now.toISOString(),
      driver,
      format: fetched.format,
      source: fetched.source,
      plaintext: { size: fetched.bytes.length, sha256: plainSha },
      blob: { size: blob.length, sha256: sha256(blob) },
      cipher: 'AES-256-GCM',
      keyId: dk.id,
      previous: latest ? { version: latest.version, manifestSha256: manifestHash(latest) } : null,
      signer: { alg: 'Ed25519', publicKeySha256: this.#opts.key.fingerprint },
    };
    const signed = signManifest(manifest, privateKey);
    writeFileAtomic(this.manifestPath(device, version), manifestFileText(signed), { mode: 0o640 });
    return { manifest: signed, unchanged: false, blobReused };
  }

  #writeChecked(device: string, c: Checked): void {
    writeFileAtomic(join(this.deviceDir(device), 'checked.json'), `${JSON.stringify(c)}\n`, { mode: 0o640 });
  }

  #blobIntact(m: SignedManifest): boolean {
    try {
      this.readBlob(m);
      return true;
    } catch (err) {
      if (err instanceof BackupVerifyError) return false;
      throw err;
    }
  }

  /** An existing blob with these bytes, if it decrypts to them; a damaged one is rewritten. */
  #reusableBlob(file: string, device: string, plainSha: string, size: number, dk: { key: Buffer }): Buffer | undefined {
    let blob: Buffer;
    try {
      blob = readFileSync(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    try {
      decryptBlob(file, dk.key, device, blob, { sha256: plainSha, size });
      return blob;
    } catch (err) {
      if (err instanceof BackupVerifyError) return undefined;
      throw err;
    }
  }

  /**
   * Retention, then the budget. For each device (or the one given): keep the newest `last`
   * versions, the newest of each of the last `dailyDays` UTC days, the protected ones and the
   * newest; remove the rest and the blobs no manifest refers to. Then, while the store is over
   * its budget, remove the oldest version (by time, across devices) that is neither protected
   * nor its device's newest.
   */
  async prune(device?: string): Promise<PruneResult> {
    const result: PruneResult = { removed: [], blobsRemoved: 0, usedBytes: 0, overBudget: false };
    for (const d of device !== undefined ? [device] : this.devices()) {
      await this.#locked(d, () => Promise.resolve(this.#retain(d, result)));
    }
    result.usedBytes = this.usedBytes();
    if (result.usedBytes > this.#retention.diskBudgetBytes) await this.#toBudget(result);
    return result;
  }

  /** Structure-parsed manifests of a device (the signature is not needed to decide what to delete). */
  #parsedManifests(device: string): { all: SignedManifest[]; unreadable: number } {
    const all: SignedManifest[] = [];
    let unreadable = 0;
    for (const v of this.versions(device)) {
      const file = this.manifestPath(device, v);
      try {
        const m = parseManifest(file, readFileSync(file, 'utf8'));
        if (m.device === device && m.version === v) all.push(m);
        else unreadable++;
      } catch (err) {
        if (!(err instanceof BackupVerifyError) && (err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        unreadable++;
      }
    }
    return { all, unreadable };
  }

  #retain(device: string, result: PruneResult): void {
    const { all, unreadable } = this.#parsedManifests(device);
    const keep = new Set<number>();
    const byVersion = [...all].sort((a, b) => b.version - a.version);
    for (const m of byVersion.slice(0, this.#retention.last)) keep.add(m.version);
    if (this.#retention.dailyDays > 0) {
      const first = new Date(this.#now().getTime() - (this.#retention.dailyDays - 1) * 86400000).toISOString().slice(0, 10);
      const seen = new Set<string>();
      for (const m of byVersion) {
        const day = m.time.slice(0, 10);
        if (day < first || seen.has(day)) continue;
        seen.add(day);
        keep.add(m.version);
      }
    }
    for (const m of all) if (this.#opts.protect?.(m)) keep.add(m.version);
    for (const m of all) {
      if (keep.has(m.version)) continue;
      rmSync(this.manifestPath(device, m.version), { force: true });
      result.removed.push({ device, version: m.version });
    }
    // A manifest that cannot be read may still refer to any blob: keep them all until it is dealt with.
    if (unreadable === 0) result.blobsRemoved += this.#removeOrphanBlobs(device, all.filter((m) => keep.has(m.version)));
  }

  #removeOrphanBlobs(device: string, kept: SignedManifest[]): number {
    const referenced = new Set(kept.map((m) => m.plaintext.sha256));
    let n = 0;
    const dir = join(this.deviceDir(device), 'blobs');
    for (const f of listDir(dir)) {
      const b = BLOB_FILE.exec(f);
      if (b && !referenced.has(b[1]!)) {
        rmSync(join(dir, f), { force: true });
        n++;
      }
    }
    return n;
  }

  async #toBudget(result: PruneResult): Promise<void> {
    const newest = new Map<string, number>();
    const candidates: SignedManifest[] = [];
    for (const d of this.devices()) {
      const { all } = this.#parsedManifests(d);
      const top = Math.max(0, ...all.map((m) => m.version));
      newest.set(d, top);
      for (const m of all) if (m.version !== top && !this.#opts.protect?.(m)) candidates.push(m);
    }
    candidates.sort((a, b) => a.time.localeCompare(b.time) || a.version - b.version);
    let used = result.usedBytes;
    for (const victim of candidates) {
      if (used <= this.#retention.diskBudgetBytes) break;
      await this.#locked(victim.device, () => {
        rmSync(this.manifestPath(victim.device, victim.version), { force: true });
        result.removed.push({ device: victim.device, version: victim.version });
        const { all, unreadable } = this.#parsedManifests(victim.device);
        if (unreadable === 0) result.blobsRemoved += this.#removeOrphanBlobs(victim.device, all);
        return Promise.resolve();
      });
      used = this.usedBytes();
    }
    result.usedBytes = used;
    result.overBudget = used > this.#retention.diskBudgetBytes;
  }

  /** Bytes of every blob and manifest in the store. */
  usedBytes(): number {
    let total = 0;
    for (const d of this.devices()) {
      const base = this.deviceDir(d);
      for (const sub of ['manifests', 'blobs']) {
        for (const f of listDir(join(base, sub))) {
          if (TEMP_FILE.test(f)) continue;
          try {
            total += statSync(join(base, sub, f)).size;
          } catch {
            // removed meanwhile
          }
        }
      }
    }
    return total;
  }

  /**
   * Checks every version of every device: manifest structure, signature, place, the chain to
   * the previous version where it is still kept, the blob's hash and header, and with the data
   * key its GCM tag and plaintext hash.
   */
  async verify(opts: { decrypt?: boolean } = {}): Promise<StoreReport> {
    const dk = opts.decrypt !== false && this.#opts.keys !== undefined ? await this.#dataKey() : undefined;
    const report: StoreReport = { ok: true, devices: 0, versions: 0, decrypted: 0, problems: [], notes: [] };
    for (const device of this.devices()) {
      report.devices++;
      const good = new Map<number, SignedManifest>();
      const versions = this.versions(device);
      for (const v of versions) {
        report.versions++;
        try {
          const m = this.readManifest(device, v);
          good.set(v, m);
          const blob = this.readBlob(m);
          if (dk) {
            this.#decrypt(m, blob, dk);
            report.decrypted++;
          }
        } catch (err) {
          if (!(err instanceof BackupVerifyError)) throw err;
          report.problems.push(err.problem);
        }
      }
      for (const m of good.values()) {
        const prev = m.previous ? good.get(m.previous.version) : undefined;
        if (m.previous && prev && manifestHash(prev) !== m.previous.manifestSha256) {
          report.problems.push({ file: this.manifestPath(device, m.version), check: 'chain', message: `names version ${m.previous.version} as its previous with a hash that version does not have: a manifest was replaced` });
        }
      }
      const referenced = new Set([...good.values()].map((m) => m.plaintext.sha256));
      for (const f of listDir(join(this.deviceDir(device), 'blobs'))) {
        const b = BLOB_FILE.exec(f);
        if (b && !referenced.has(b[1]!) && versions.length === good.size) report.notes.push(`${join(this.deviceDir(device), 'blobs', f)}: no manifest refers to it (removed at the next prune)`);
      }
    }
    report.ok = report.problems.length === 0;
    return report;
  }

  /** Temp files of unfinished writes go, for each device no live process is writing to. */
  #recover(): void {
    for (const device of this.devices()) {
      const base = this.deviceDir(device);
      const lock = join(base, '.lock');
      if (tryPidLock(lock) !== undefined) continue;
      try {
        for (const sub of ['', 'manifests', 'blobs']) {
          for (const f of listDir(join(base, sub))) if (TEMP_FILE.test(f)) rmSync(join(base, sub, f), { force: true });
        }
      } finally {
        removeIfExists(lock);
      }
    }
  }
}

function listDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}
