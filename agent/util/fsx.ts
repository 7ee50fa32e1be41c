// Crash-safe file writes (temp file, fsync, rename, fsync of the directory) and a lock that
// serialises every change to the ruleset. Node-RED learned the first from power loss on Pis.
import { closeSync, copyFileSync, existsSync, fdatasyncSync, fsyncSync, ftruncateSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { dirname, basename, join } from 'node:path';

export function writeFileAtomic(path: string, data: string | Buffer, opts: { mode?: number; keepPrevious?: boolean } = {}): void {
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true, mode: 0o750 });
  const tmp = join(dir, `.${basename(path)}.${process.pid}.tmp`);
  const fd = openSync(tmp, 'w', opts.mode ?? 0o640);
  try {
    writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  if (opts.keepPrevious && existsSync(path)) copyFileSync(path, `${path}.prev`);
  renameSync(tmp, path);
  const dfd = openSync(dir, 'r');
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
}

/**
 * Writes all of `buf` at offset `at` of an open file (and fdatasyncs it when `sync`). On any
 * failure the file is cut back to `at`, so no half record is left; if even that fails, the torn
 * tail is for the reader's recovery to find.
 */
export function writeAtOrTruncate(fd: number, buf: Buffer, at: number, sync: boolean): void {
  try {
    for (let done = 0; done < buf.length; ) done += writeSync(fd, buf, done, buf.length - done, at + done);
    if (sync) fdatasyncSync(fd);
  } catch (err) {
    try {
      ftruncateSync(fd, at);
    } catch {
      // left for recovery at the next open
    }
    throw err;
  }
}

export function readIfExists(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

export function removeIfExists(path: string): void {
  rmSync(path, { force: true });
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export class LockError extends Error {
  readonly code = 'E_LOCKED';
}

function ageMs(path: string): number {
  try {
    return Date.now() - statSync(path).mtimeMs;
  } catch {
    return 0;
  }
}

/**
 * Tries once to take a pid lock file (created exclusively, holding our pid). Returns undefined
 * when taken, or the holder's pid (0 while its creator has not written it yet). A lock left by a
 * dead process (kill -9, power loss), or one left empty for 2 s, is taken over.
 */
export function tryPidLock(path: string): number | undefined {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o640);
      writeSync(fd, String(process.pid));
      closeSync(fd);
      return undefined;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const holder = Number(readIfExists(path) ?? '');
    const known = Number.isInteger(holder) && holder > 0;
    const stale = known ? !pidAlive(holder) : ageMs(path) > 2000;
    if (!stale) return known ? holder : 0;
    removeIfExists(path);
  }
  return 0;
}

/** Runs `fn` holding an exclusive lock file; a live holder is waited for up to `waitMs`. */
export async function withLock<T>(path: string, fn: () => Promise<T>, waitMs = 15000): Promise<T> {
  mkdirSync(dirname(path), { recursive: true, mode: 0o750 });
  const start = Date.now();
  for (;;) {
    const holder = tryPidLock(path);
    if (holder === undefined) break;
    if (Date.now() - start > waitMs) throw new LockError(`another wardgate process (pid ${holder || '?'}) holds ${path}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  try {
    return await fn();
  } finally {
    removeIfExists(path);
  }
}
