// The responder's side of the store over MQTT: `backup.list` and `backup.pull`, as command
// handlers (agent/mqtt/commands.ts verifies, audits and answers). A pull hands out one chunk of a
// device's exported bundle (bundle.ts, the same bytes as `wardgate backup export`) per request.
// The bundle is built once per (device, version) and kept in <stateDir>/backups/pulls/ for a
// while, so that a console can ask for offset after offset, lose an answer and ask again, or
// come back after an interruption, and get the same bytes. docs/backups.md, "Pulling a backup".
import { closeSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, renameSync, rmSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { z } from 'zod';
import type { CommandHandler } from '../mqtt/commands.js';
import { readBaseline } from './baseline.js';
import { exportBundle } from './bundle.js';
import { BackupStoreError, type Problem } from './errors.js';
import { loadGatewayKey } from './keys.js';
import { DeviceId, manifestHash, zodWhere } from './manifest.js';
import type { BackupStoreConfig } from './schema-store.js';
import { BackupStore } from './store.js';

export const PULL_CHUNK_DEFAULT = 64 * 1024;
// 256 KiB is 342 KiB of base64 in the answer: well under any broker's message limit (Mosquitto's
// message_size_limit is often set to 1 MiB or less on shared brokers).
export const PULL_CHUNK_MAX = 256 * 1024;
export const PULL_CHUNK_MIN = 1024;

const Hex64 = z.string().regex(/^[0-9a-f]{64}$/, '64 lowercase hex digits');

export const PullArgs = z
  .object({
    device: DeviceId,
    version: z.number().int().min(1).optional().describe('One version; all the store keeps when absent'),
    offset: z.number().int().min(0).default(0),
    chunkSize: z.number().int().min(PULL_CHUNK_MIN).max(PULL_CHUNK_MAX).default(PULL_CHUNK_DEFAULT),
    bundleSha256: Hex64.optional().describe('The bundle the console is pulling: served while it is still kept'),
    prefixHash: z.boolean().default(false).describe('Also answer the SHA-256 of the bundle\'s first `offset` bytes (to resume a partial file)'),
  })
  .strict();

export const PullResult = z.object({
  device: z.string(),
  versions: z.array(z.number().int()).describe('The versions in the bundle'),
  skipped: z.array(z.object({ file: z.string(), check: z.string(), message: z.string() })).describe('Versions left out: they failed their checks in the store'),
  bundleSha256: Hex64,
  totalBytes: z.number().int().min(0),
  offset: z.number().int().min(0),
  bytes: z.string().describe('base64 of the chunk: bundle bytes [offset, offset + chunk size)'),
  chunkSha256: Hex64,
  prefixSha256: Hex64.optional(),
});
export type PullResult = z.infer<typeof PullResult>;

export const ListArgs = z.object({ device: DeviceId.optional() }).strict();

export const ListedVersion = z.object({
  version: z.number().int(),
  time: z.string(),
  driver: z.string(),
  format: z.string(),
  source: z.string(),
  size: z.number().int().describe('Plaintext bytes'),
  plaintextSha256: Hex64,
  blobSize: z.number().int(),
  blobSha256: Hex64,
  manifestSha256: Hex64.describe('What the next version\'s `previous` names'),
  keyId: z.string(),
  approved: z.boolean().default(false).describe('The approved baseline (wardgate backup approve): what drift is measured against and a restore takes by default'),
});
export const ListResult = z.object({
  gateway: z.string(),
  devices: z.array(
    z.object({
      device: z.string(),
      lastChecked: z.string().nullable().describe('When a fetch last succeeded (new version or unchanged)'),
      versions: z.array(ListedVersion),
    }),
  ),
  problems: z.array(z.object({ file: z.string(), check: z.string(), message: z.string() })),
});
export type ListResult = z.infer<typeof ListResult>;

export interface PullCacheOptions {
  /** Where built bundles are kept; emptied at first use (the index lives in memory). */
  dir: string;
  /** A bundle not asked for in this long is removed (default 15 min). */
  ttlMs?: number;
  /** At most this many bundles (default 8)... */
  maxEntries?: number;
  /** ...and this many bytes together (default 64 MiB); the least recently used go first. */
  maxBytes?: number;
  now?: () => number;
}

export interface CachedBundle {
  key: string;
  sha256: string;
  path: string;
  size: number;
  device: string;
  versions: number[];
  skipped: Problem[];
  lastUsed: number;
}

/** Built bundles by content hash, bounded in count, bytes and age. */
export class PullCache {
  readonly #opts: Required<Omit<PullCacheOptions, 'now'>> & { now: () => number };
  readonly #entries = new Map<string, CachedBundle>();
  #ready = false;

  constructor(opts: PullCacheOptions) {
    this.#opts = { ttlMs: 15 * 60_000, maxEntries: 8, maxBytes: 64 * 1024 * 1024, now: Date.now, ...opts };
    const o = this.#opts;
    if (!(o.ttlMs > 0)) throw new RangeError(`ttlMs must be positive, not ${o.ttlMs}`);
    if (!(Number.isInteger(o.maxEntries) && o.maxEntries >= 1)) throw new RangeError(`maxEntries must be an integer >= 1, not ${o.maxEntries}`);
    if (!(o.maxBytes > 0)) throw new RangeError(`maxBytes must be positive, not ${o.maxBytes}`);
  }

  /** Bundles kept now (for tests and health). */
  get size(): number {
    this.#expire();
    return this.#entries.size;
  }

  files(): string[] {
    try {
      return readdirSync(this.#opts.dir).sort();
    } catch {
      return [];
    }
  }

  /**
   * The bundle asked for: the one named by `bundleSha256` while it is kept; otherwise the one
   * of (device, version) built from what the store holds now, built if need be.
   */
  bundle(store: BackupStore, device: string, version: number | undefined, bundleSha256?: string): CachedBundle {
    this.#start();
    this.#expire();
    const now = this.#opts.now();
    const pinned = bundleSha256 !== undefined ? this.#entries.get(bundleSha256) : undefined;
    if (pinned && pinned.device === device) {
      pinned.lastUsed = now;
      return pinned;
    }
    // All versions: the key changes when a version is added or removed, so a new pull gets them.
    const key = version !== undefined ? `${device}@${version}` : `${device}@all:${store.versions(device).join(',')}`;
    for (const e of this.#entries.values()) {
      if (e.key === key) {
        e.lastUsed = now;
        return e;
      }
    }
    const building = join(this.#opts.dir, `.building-${randomBytes(6).toString('hex')}.tmp`);
    let entry: CachedBundle;
    try {
      const r = exportBundle(store, device, version, building, new Date(now));
      const sha256 = createHash('sha256').update(readFileSync(building)).digest('hex');
      const path = join(this.#opts.dir, `${sha256}.wgb`);
      renameSync(building, path);
      entry = { key, sha256, path, size: r.bytes, device, versions: r.versions, skipped: r.skipped, lastUsed: now };
    } finally {
      rmSync(building, { force: true });
    }
    const old = this.#entries.get(entry.sha256);
    if (old) this.#entries.delete(old.sha256);
    this.#entries.set(entry.sha256, entry);
    this.#bound(entry);
    return entry;
  }

  /** Bytes [offset, offset + length) of a kept bundle, and the hash of the bytes before offset when asked. */
  read(entry: CachedBundle, offset: number, length: number, prefixHash: boolean): { bytes: Buffer; prefixSha256?: string } {
    const fd = openSync(entry.path, 'r');
    try {
      const bytes = Buffer.alloc(Math.max(0, Math.min(length, entry.size - offset)));
      if (bytes.length > 0) readSync(fd, bytes, 0, bytes.length, offset);
      if (!prefixHash) return { bytes };
      const h = createHash('sha256');
      const buf = Buffer.alloc(Math.min(1024 * 1024, Math.max(1, offset)));
      for (let at = 0; at < offset; ) {
        const n = readSync(fd, buf, 0, Math.min(buf.length, offset - at), at);
        if (n === 0) break;
        h.update(buf.subarray(0, n));
        at += n;
      }
      return { bytes, prefixSha256: h.digest('hex') };
    } finally {
      closeSync(fd);
    }
  }

  /** Removes every kept bundle. */
  clear(): void {
    for (const e of this.#entries.values()) rmSync(e.path, { force: true });
    this.#entries.clear();
  }

  #start(): void {
    if (this.#ready) return;
    // Bundles of an earlier run have no index any more; they would only take space.
    rmSync(this.#opts.dir, { recursive: true, force: true });
    mkdirSync(this.#opts.dir, { recursive: true, mode: 0o750 });
    this.#ready = true;
  }

  #remove(e: CachedBundle): void {
    this.#entries.delete(e.sha256);
    rmSync(e.path, { force: true });
  }

  #expire(): void {
    const limit = this.#opts.now() - this.#opts.ttlMs;
    for (const e of [...this.#entries.values()]) if (e.lastUsed < limit) this.#remove(e);
  }

  /** Over the bounds, the least recently used go; the bundle just built stays even if it alone is over. */
  #bound(keep: CachedBundle): void {
    const total = () => [...this.#entries.values()].reduce((n, e) => n + e.size, 0);
    const lru = () => [...this.#entries.values()].filter((e) => e !== keep).sort((a, b) => a.lastUsed - b.lastUsed)[0];
    while (this.#entries.size > this.#opts.maxEntries || total() > this.#opts.maxBytes) {
      const victim = lru();
      if (!victim) break;
      this.#remove(victim);
    }
  }
}

function parseArgs<T>(schema: z.ZodType<T>, args: Record<string, unknown>, command: string): T {
  const r = schema.safeParse(args);
  if (!r.success) throw new BackupStoreError(`${command}: ${zodWhere(r.error)}`);
  return r.data;
}

/** The answer to `backup.list`: every device's versions, signatures checked; failures in `problems`. */
/** A device's approved baseline; none when its record cannot be read (the list still answers). */
function readBaselineOrNone(store: BackupStore, device: string): ReturnType<typeof readBaseline> {
  try {
    return readBaseline(store, device);
  } catch {
    return undefined;
  }
}

export function listBackups(store: BackupStore, device?: string): ListResult {
  const { manifests, problems } = store.list(device);
  const devices = new Map<string, ListResult['devices'][number]>();
  for (const d of device !== undefined ? [device] : store.devices()) {
    devices.set(d, { device: d, lastChecked: store.lastChecked(d)?.time ?? null, versions: [] });
  }
  const baselines = new Map<string, ReturnType<typeof readBaseline>>();
  for (const m of manifests) {
    if (!baselines.has(m.device)) baselines.set(m.device, readBaselineOrNone(store, m.device));
    const b = baselines.get(m.device);
    devices.get(m.device)?.versions.push({
      version: m.version,
      time: m.time,
      driver: m.driver,
      format: m.format,
      source: m.source,
      size: m.plaintext.size,
      plaintextSha256: m.plaintext.sha256,
      blobSize: m.blob.size,
      blobSha256: m.blob.sha256,
      manifestSha256: manifestHash(m),
      keyId: m.keyId,
      // Approved only if the manifest is still the one that was approved.
      approved: b !== undefined && b.version === m.version && b.manifestSha256 === manifestHash(m),
    });
  }
  return { gateway: store.gateway, devices: [...devices.values()], problems };
}

/** The answer to one `backup.pull`: a chunk of the bundle, with its hash and the whole bundle's. */
export function pullChunk(store: BackupStore, cache: PullCache, rawArgs: Record<string, unknown>): PullResult {
  const a = parseArgs(PullArgs, rawArgs, 'backup.pull');
  const entry = cache.bundle(store, a.device, a.version, a.bundleSha256);
  if (a.offset > entry.size) throw new BackupStoreError(`offset ${a.offset} is past the end of the ${entry.size}-byte bundle ${entry.sha256}`);
  const { bytes, prefixSha256 } = cache.read(entry, a.offset, a.chunkSize, a.prefixHash);
  return {
    device: entry.device,
    versions: entry.versions,
    skipped: entry.skipped,
    bundleSha256: entry.sha256,
    totalBytes: entry.size,
    offset: a.offset,
    bytes: bytes.toString('base64'),
    chunkSha256: createHash('sha256').update(bytes).digest('hex'),
    ...(prefixSha256 !== undefined ? { prefixSha256 } : {}),
  };
}

export interface BackupHandlerOptions {
  /** The store, or how to get it (the agent's one, opened once); opened at the first command when not given. */
  store?: BackupStore | (() => BackupStore);
  stateDir: string;
  /** "<site>/<gateway>", as in every manifest. */
  gateway: string;
  config: BackupStoreConfig;
  cache?: Omit<PullCacheOptions, 'dir'>;
}

/**
 * `backup.list` and `backup.pull`. The store is opened at the first command, not at start, so
 * that a gateway without keys yet (before `wardgate backup keygen`) answers with why.
 */
export function backupPullHandlers(opts: BackupHandlerOptions): Record<string, CommandHandler> {
  const given = opts.store;
  let store = typeof given === 'function' ? undefined : given;
  const cache = new PullCache({ dir: join(opts.stateDir, 'backups', 'pulls'), ...opts.cache });
  const open = (): BackupStore => {
    if (typeof given === 'function') return given();
    store ??= BackupStore.open({
      stateDir: opts.stateDir,
      gateway: opts.gateway,
      // A bundle is signed: the private key, which the agent's user owns.
      key: loadGatewayKey(opts.stateDir, { create: false }),
      retention: { last: opts.config.retention.last, dailyDays: opts.config.retention.dailyDays, diskBudgetBytes: opts.config.diskBudgetBytes },
    });
    return store;
  };
  return {
    'backup.list': (args) => Promise.resolve(listBackups(open(), parseArgs(ListArgs, args, 'backup.list').device)),
    'backup.pull': (args) => Promise.resolve(pullChunk(open(), cache, args)),
  };
}
