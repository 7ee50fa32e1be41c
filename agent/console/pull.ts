// Pulling a backup bundle from a gateway over MQTT, chunk by chunk (`backup.pull`, see
// agent/backup/pull.ts): each chunk's SHA-256 checked before it is kept, the whole bundle's at
// the end. The chunks go to <out>.part; after an interruption the part file is re-hashed and
// the gateway asked for the hash of the same prefix of its bundle, and the pull goes on from
// there when they agree (from zero when not). The bundle is then renamed into place, whole.
import { createHash, type Hash, type KeyObject } from 'node:crypto';
import { closeSync, fsyncSync, openSync, readSync, renameSync, rmSync, writeSync } from 'node:fs';
import { verifyBundle, type BundleReport } from '../backup/bundle.js';
import { formatProblem } from '../backup/errors.js';
import type { GatewayKey } from '../backup/keys.js';
import { ListResult, PullResult } from '../backup/pull.js';
import { ConsoleError, type CommandClient } from './client.js';

export interface PullTarget {
  site: string;
  gateway: string;
  key: KeyObject;
  keyId: string;
  ttlSeconds?: number;
  /** How long to wait for one answer, ms. */
  timeoutMs: number;
}

export interface PullSpec extends PullTarget {
  device: string;
  version?: number;
  /** Bytes per request; the gateway's default (64 KiB) when not given. */
  chunkSize?: number;
  out: string;
  /** Times one offset is asked again after a lost answer or a bad chunk (default 3). */
  retries?: number;
  /** Told what happens: resuming, a chunk refused, an answer lost. */
  note?: (line: string) => void;
  /** Told after each chunk kept. */
  progress?: (done: number, total: number) => void;
}

export interface PullOutcome {
  path: string;
  bundleSha256: string;
  totalBytes: number;
  versions: number[];
  skipped: PullResult['skipped'];
  /** Where this run started (0, or the size of a partial file that matched). */
  resumedAt: number;
  /** backup.pull requests this run sent (answered or not). */
  requests: number;
}

async function ask(client: CommandClient, t: PullTarget, name: string, args: Record<string, unknown>): Promise<unknown> {
  const r = await client.command(
    { site: t.site, gateway: t.gateway, name, args, key: t.key, keyId: t.keyId, ...(t.ttlSeconds !== undefined ? { ttlSeconds: t.ttlSeconds } : {}) },
    { timeoutMs: t.timeoutMs },
  );
  if (!r.ok) {
    const code = r.error?.code ?? 'E_UNKNOWN';
    throw new ConsoleError(code, `${code === 'E_HANDLER_FAILED' ? 'failed' : 'refused'}: ${name} on ${t.site}/${t.gateway}: ${code}: ${r.error?.message ?? ''}`);
  }
  return r.result;
}

export async function listRemote(client: CommandClient, t: PullTarget, device?: string): Promise<ListResult> {
  const result = await ask(client, t, 'backup.list', device !== undefined ? { device } : {});
  const parsed = ListResult.safeParse(result);
  if (!parsed.success) throw new ConsoleError('E_BAD_ANSWER', `backup.list: the gateway's answer is not a list: ${parsed.error.issues[0]?.message ?? ''}`);
  return parsed.data;
}

/** The SHA-256 state of a file's bytes, and its size. */
function hashFile(path: string): { hash: Hash; size: number } {
  const hash = createHash('sha256');
  let size = 0;
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { hash, size };
    throw err;
  }
  try {
    const buf = Buffer.alloc(1024 * 1024);
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, size);
      if (n === 0) break;
      hash.update(buf.subarray(0, n));
      size += n;
    }
  } finally {
    closeSync(fd);
  }
  return { hash, size };
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

export async function pullBundle(client: CommandClient, spec: PullSpec): Promise<PullOutcome> {
  const part = `${spec.out}.part`;
  const retries = spec.retries ?? 3;
  const note = spec.note ?? (() => {});
  let { hash, size: offset } = hashFile(part);
  let expected: string | undefined;
  let total = 0;
  let requests = 0;
  let restarts = 0;
  let last: PullResult | undefined;
  let resumedAt = 0;

  const restart = (why: string): void => {
    if (++restarts > 3) throw new ConsoleError('E_PULL', `${why}; gave up after starting again ${restarts - 1} times`);
    note(`${why}; starting again from byte 0`);
    rmSync(part, { force: true });
    hash = createHash('sha256');
    offset = 0;
    expected = undefined;
    resumedAt = 0;
  };

  // One request: a lost answer or a chunk that fails its hash is asked again, `retries` times.
  const fetch = async (args: Record<string, unknown>): Promise<{ result: PullResult; bytes: Buffer }> => {
    for (let attempt = 0; ; attempt++) {
      requests++;
      let problem: string;
      try {
        const raw = await ask(client, spec, 'backup.pull', args);
        const parsed = PullResult.safeParse(raw);
        if (!parsed.success) throw new ConsoleError('E_BAD_ANSWER', `backup.pull: the gateway's answer is not a chunk: ${parsed.error.issues[0]?.message ?? ''}`);
        const result = parsed.data;
        const bytes = Buffer.from(result.bytes, 'base64');
        const got = sha256(bytes);
        if (result.offset !== args.offset) problem = `the answer is for offset ${result.offset}, not ${String(args.offset)}: refused`;
        else if (got !== result.chunkSha256) problem = `the chunk at offset ${result.offset} has sha256 ${got}, the gateway says ${result.chunkSha256}: refused`;
        else if (result.offset + bytes.length > result.totalBytes || (bytes.length === 0 && result.offset < result.totalBytes)) problem = `the chunk at offset ${result.offset} (${bytes.length} bytes) does not fit a ${result.totalBytes}-byte bundle: refused`;
        else return { result, bytes };
      } catch (err) {
        if (!(err instanceof ConsoleError) || err.code !== 'E_TIMEOUT') throw err;
        problem = `no answer for offset ${String(args.offset)} within ${spec.timeoutMs / 1000} s`;
      }
      if (attempt >= retries) throw new ConsoleError('E_PULL', `${problem}; gave up after ${retries + 1} tries (what was kept is in ${part}: run the same pull again to go on)`);
      note(`${problem}; asking again`);
    }
  };

  const base = { device: spec.device, ...(spec.version !== undefined ? { version: spec.version } : {}), ...(spec.chunkSize !== undefined ? { chunkSize: spec.chunkSize } : {}) };
  const keep = (result: PullResult, bytes: Buffer): void => {
    expected = result.bundleSha256;
    total = result.totalBytes;
    last = result;
    appendChunk(part, bytes);
    hash.update(bytes);
    offset += bytes.length;
    spec.progress?.(offset, total);
  };

  if (offset > 0) {
    // No fsync per chunk: a part file cut anywhere by a crash is still a prefix, and only a
    // prefix the gateway's bundle agrees with is kept.
    const mine = hash.copy().digest('hex');
    try {
      const { result, bytes } = await fetch({ ...base, offset, prefixHash: true });
      if (result.prefixSha256 === mine) {
        note(`resuming ${part} at byte ${offset} of ${result.totalBytes}`);
        resumedAt = offset;
        keep(result, bytes);
      } else {
        restart(`${part} (${offset} bytes) is not the start of the gateway's bundle ${result.bundleSha256.slice(0, 16)}… (rebuilt since, or another device or version)`);
      }
    } catch (err) {
      // Longer than the gateway's bundle, say: a fresh pull says what is wrong, if anything still is.
      if (!(err instanceof ConsoleError) || err.code !== 'E_HANDLER_FAILED') throw err;
      restart(`${part} (${offset} bytes) cannot be resumed (${err.message})`);
    }
  }

  while (expected === undefined || offset < total) {
    const { result, bytes } = await fetch({ ...base, offset, ...(expected !== undefined ? { bundleSha256: expected } : {}) });
    if (expected !== undefined && result.bundleSha256 !== expected) {
      restart(`the gateway no longer has bundle ${expected.slice(0, 16)}… (it keeps one for a while after the last request)`);
      continue;
    }
    keep(result, bytes);
  }

  const got = hash.digest('hex');
  if (got !== expected) {
    rmSync(part, { force: true });
    throw new ConsoleError('E_PULL', `the bundle's sha256 is ${got}, the gateway announced ${expected}: refused, and ${part} removed`);
  }
  const fd = openSync(part, 'r+');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(part, spec.out);
  return { path: spec.out, bundleSha256: got, totalBytes: total, versions: last?.versions ?? [], skipped: last?.skipped ?? [], resumedAt, requests };
}

function appendChunk(part: string, bytes: Buffer): void {
  const fd = openSync(part, 'a', 0o640);
  try {
    writeSync(fd, bytes);
  } finally {
    closeSync(fd);
  }
}

export interface PulledCheck {
  ok: boolean;
  report: BundleReport;
  /** Each failed check, one line each: the bundle's own problems, then a wrong gateway or device. */
  problems: string[];
}

/**
 * What `wardgate backup verify` checks, with the gateway's public key, plus that the bundle is
 * the one asked for: a bundle that verifies but is another gateway's or another device's is
 * not trusted either (a gateway key could sign for several names).
 */
export async function checkPulled(path: string, pub: GatewayKey, wanted: { site: string; gateway: string; device: string }): Promise<PulledCheck> {
  const report = await verifyBundle(path, pub);
  const target = `${wanted.site}/${wanted.gateway}`;
  const problems = report.problems.map(formatProblem);
  if (report.gateway !== target) problems.push(`the bundle is from ${report.gateway ?? '?'}, not ${target}`);
  if (report.device !== wanted.device) problems.push(`the bundle is of ${report.device ?? '?'}, not ${wanted.device}`);
  return { ok: report.ok && problems.length === 0, report, problems };
}
