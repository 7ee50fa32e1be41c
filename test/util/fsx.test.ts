import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { LockError, withLock, writeFileAtomic } from '../../agent/util/fsx.js';

let dir = '';
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('crash-safe writes and the ruleset lock', () => {
  it('writes atomically, keeps the previous copy, leaves no temp file', () => {
    dir = mkdtempSync(join(tmpdir(), 'wg-fsx-'));
    const f = join(dir, 'committed.nft');
    writeFileAtomic(f, 'one', { keepPrevious: true });
    writeFileAtomic(f, 'two', { keepPrevious: true });
    expect(readFileSync(f, 'utf8')).toBe('two');
    expect(readFileSync(`${f}.prev`, 'utf8')).toBe('one');
    expect(readdirSync(dir).sort()).toEqual(['committed.nft', 'committed.nft.prev']);
  });

  it('serialises holders, and takes over a lock left by a dead process', async () => {
    dir = mkdtempSync(join(tmpdir(), 'wg-fsx-'));
    const lock = join(dir, 'lock');
    const order: string[] = [];
    const slow = withLock(lock, async () => {
      order.push('a-in');
      await new Promise((r) => setTimeout(r, 200));
      order.push('a-out');
    });
    await new Promise((r) => setTimeout(r, 20));
    await withLock(lock, () => {
      order.push('b');
      return Promise.resolve();
    });
    await slow;
    expect(order).toEqual(['a-in', 'a-out', 'b']);
    expect(existsSync(lock)).toBe(false);

    // A pid that no longer exists: a holder killed with -9.
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout;
    writeFileSync(lock, dead);
    expect(await withLock(lock, () => Promise.resolve('taken over'))).toBe('taken over');

    // A live holder is waited for, then refused with a clear error.
    writeFileSync(lock, String(process.ppid));
    await expect(withLock(lock, () => Promise.resolve(1), 300)).rejects.toBeInstanceOf(LockError);
  });
});
