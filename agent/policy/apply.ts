// Applying a ruleset without bricking the clinic: check, load atomically under a lock, and
// commit-confirm. A ruleset that is not confirmed within its window is rolled back by itself,
// also when the process that applied it was killed: the pending change lives on disk, and
// whoever starts next (the watcher, the agent, the boot-time restore) finishes it.
import { createHash, randomUUID } from 'node:crypto';
import { appendFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { NftError, type Backend, type NftFailure } from './backend.js';
import type { CompiledRuleset } from './compile.js';
import type { AuditSink } from '../audit/types.js';
import { readIfExists, removeIfExists, withLock, writeFileAtomic } from '../util/fsx.js';

export const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

/**
 * A listing of our table without what the running agent changes by design: the elements of the
 * proxies' alive sets (filled every 2 s while the proxies run, emptied when they stop). Those
 * are state, not policy; counting them would make the kernel look drifted and have the keeper
 * load the committed ruleset again, which empties them.
 */
export function stableListing(listing: string): string {
  return listing.replace(/(\n(\s*)set proxy_alive_v[46] \{\n[^}]*?)\n\s*elements = \{[^}]*\}(?=\n\2\})/g, '$1');
}

const listingSha256 = (listing: string | undefined) => sha256(stableListing(listing ?? ''));

export interface CommittedInfo {
  sha256: string;
  policyHash: string;
  committedAt: string;
  version: string;
  /** sha256 of the kernel's stateless listing right after the load, to detect drift. */
  listingSha256: string;
}

export interface PendingInfo {
  id: string;
  appliedAt: string;
  /** Epoch milliseconds after which the change is rolled back. */
  deadline: number;
  sha256: string;
  policyHash: string;
  version: string;
  listingSha256: string;
  /** Whether our table existed before: if not, rollback removes it. */
  previous: 'table' | 'absent';
  watcherPid?: number;
}

export interface PolicyStatus {
  backend: string;
  /** failsafe: the fail-safe ruleset that restore() loaded because the committed one could not be. */
  kernel: 'absent' | 'committed' | 'pending' | 'failsafe' | 'drifted';
  committed?: CommittedInfo;
  pending?: PendingInfo & { secondsLeft: number };
}

export type HistoryEvent =
  | { event: 'apply'; id: string; sha256: string; policyHash: string; deadline: string }
  | { event: 'confirm'; id: string; sha256: string; policyHash: string }
  | { event: 'rollback'; id: string; reason: string; restored: 'previous table' | 'no table' | 'committed' | 'failsafe'; error?: string }
  | { event: 'restore'; source: 'committed' | 'failsafe'; sha256: string; reason?: string }
  | { event: 'refused'; reason: string };

/** A change is waiting for confirmation, or there is none to confirm, or similar. */
export class CommitError extends Error {
  constructor(
    readonly code: 'E_PENDING' | 'E_NOTHING_PENDING' | 'E_EXPIRED' | 'E_NOTHING_COMMITTED' | 'E_CORRUPT',
    message: string,
  ) {
    super(message);
    this.name = 'CommitError';
  }
}

/** Maps nft's line numbers back to the configuration entry the failing line came from. */
export function explainNftError(err: NftError, compiled: CompiledRuleset): NftError {
  const failures: NftFailure[] = err.failures.map((f) => {
    const source = f.line === undefined ? undefined : compiled.lines.get(f.line);
    return source ? { ...f, source } : f;
  });
  const lines = failures.map((f) => {
    const at = f.source ? ` (from ${f.source.what}${f.source.src ? ` at ${f.source.src.file}:${f.source.src.line}` : ''})` : '';
    return `ruleset line ${f.line ?? '?'}: ${f.message}${at}`;
  });
  return new NftError(`nft refused the ruleset:\n${lines.join('\n')}`, failures);
}

export interface ManagerOptions {
  stateDir: string;
  backend: Backend;
  version: string;
  now?: () => number;
  /** Every apply, confirm, rollback, restore and refusal is also recorded here. */
  audit?: AuditSink;
  /** Who acts, for the audit log: "cli:<user>", "agent". */
  actor?: string;
}

export class PolicyManager {
  readonly dir: string;
  private readonly backend: Backend;
  private readonly version: string;
  private readonly now: () => number;

  constructor(opts: ManagerOptions) {
    this.dir = join(opts.stateDir, 'ruleset');
    this.backend = opts.backend;
    this.version = opts.version;
    this.now = opts.now ?? Date.now;
    this.audit = opts.audit;
    this.actor = opts.actor ?? 'unknown';
  }

  private readonly audit: AuditSink | undefined;
  private readonly actor: string;

  private path(name: string): string {
    return join(this.dir, name);
  }

  private record(e: HistoryEvent): void {
    mkdirSync(this.dir, { recursive: true, mode: 0o750 });
    appendFileSync(this.path('history.ndjson'), `${JSON.stringify({ time: new Date(this.now()).toISOString(), ...e })}\n`);
    const { event, ...detail } = e;
    this.audit?.append({ actor: this.actor, action: `policy.${event}`, outcome: event === 'refused' ? 'refused' : 'ok', detail });
  }

  private lock<T>(fn: () => Promise<T>): Promise<T> {
    return withLock(this.path('lock'), fn);
  }

  readPending(): PendingInfo | undefined {
    const text = readIfExists(this.path('pending.json'));
    return text === undefined ? undefined : (JSON.parse(text) as PendingInfo);
  }

  readCommitted(): CommittedInfo | undefined {
    const text = readIfExists(this.path('committed.json'));
    return text === undefined ? undefined : (JSON.parse(text) as CommittedInfo);
  }

  /** The committed ruleset's text, verified against its recorded hash. */
  committedText(): string | undefined {
    const info = this.readCommitted();
    const text = readIfExists(this.path('committed.nft'));
    if (!info || text === undefined) return undefined;
    if (sha256(text) !== info.sha256) {
      throw new CommitError('E_CORRUPT', `${this.path('committed.nft')} does not match its recorded sha256: the file was altered or damaged`);
    }
    return text;
  }

  async check(compiled: CompiledRuleset): Promise<void> {
    try {
      await this.backend.check(compiled.text);
    } catch (err) {
      if (err instanceof NftError) throw explainNftError(err, compiled);
      throw err;
    }
  }

  /**
   * Checks and loads a ruleset, leaving it pending until confirm(). The previous table is
   * saved first; on any failure the kernel keeps what it had.
   */
  async apply(compiled: CompiledRuleset, failsafe: CompiledRuleset, policyHash: string, timeoutSeconds: number): Promise<PendingInfo> {
    return this.lock(async () => {
      const pending = this.readPending();
      if (pending) {
        const left = Math.max(0, Math.round((pending.deadline - this.now()) / 1000));
        this.record({ event: 'refused', reason: `apply while change ${pending.id} is pending` });
        throw new CommitError('E_PENDING', `change ${pending.id} is waiting for confirmation (${left} s left): confirm or roll it back first`);
      }
      await this.check(compiled);
      await this.check(failsafe);
      const before = await this.backend.listTable({ stateful: true });
      if (before !== undefined) writeFileAtomic(this.path('rollback.nft'), before);
      else removeIfExists(this.path('rollback.nft'));
      writeFileAtomic(this.path('pending.nft'), compiled.text);
      writeFileAtomic(this.path('pending-failsafe.nft'), failsafe.text);
      const info: PendingInfo = {
        id: randomUUID(),
        appliedAt: new Date(this.now()).toISOString(),
        deadline: this.now() + timeoutSeconds * 1000,
        sha256: sha256(compiled.text),
        policyHash,
        version: this.version,
        listingSha256: '',
        previous: before === undefined ? 'absent' : 'table',
      };
      // The pending record is on disk before the kernel changes: a crash between the two
      // leaves a rollback to do, never an unconfirmed ruleset that nobody will roll back.
      writeFileAtomic(this.path('pending.json'), JSON.stringify(info, null, 2));
      try {
        await this.backend.load(compiled.text);
      } catch (err) {
        this.clearPending();
        if (err instanceof NftError) throw explainNftError(err, compiled);
        throw err;
      }
      info.listingSha256 = listingSha256(await this.backend.listTable());
      writeFileAtomic(this.path('pending.json'), JSON.stringify(info, null, 2));
      this.record({ event: 'apply', id: info.id, sha256: info.sha256, policyHash, deadline: new Date(info.deadline).toISOString() });
      return info;
    });
  }

  /** Records which process waits to roll the pending change back. */
  setWatcher(id: string, pid: number): void {
    const pending = this.readPending();
    if (pending?.id !== id) return;
    writeFileAtomic(this.path('pending.json'), JSON.stringify({ ...pending, watcherPid: pid }, null, 2));
  }

  private clearPending(): void {
    for (const f of ['pending.json', 'pending.nft', 'pending-failsafe.nft', 'rollback.nft']) removeIfExists(this.path(f));
  }

  /** Makes the pending ruleset the committed one; too late and it is rolled back instead. */
  async confirm(): Promise<CommittedInfo> {
    return this.lock(async () => {
      const pending = this.readPending();
      if (!pending) throw new CommitError('E_NOTHING_PENDING', 'no change is waiting for confirmation');
      if (this.now() > pending.deadline) {
        await this.rollbackLocked(pending, 'confirmation came after the window closed');
        throw new CommitError('E_EXPIRED', `the window of change ${pending.id} closed before confirmation: it was rolled back`);
      }
      const text = readIfExists(this.path('pending.nft')) ?? '';
      const failsafe = readIfExists(this.path('pending-failsafe.nft')) ?? '';
      const info: CommittedInfo = {
        sha256: pending.sha256,
        policyHash: pending.policyHash,
        committedAt: new Date(this.now()).toISOString(),
        version: pending.version,
        listingSha256: pending.listingSha256,
      };
      writeFileAtomic(this.path('committed.nft'), text, { keepPrevious: true });
      writeFileAtomic(this.path('failsafe.nft'), failsafe, { keepPrevious: true });
      writeFileAtomic(this.path('committed.json'), JSON.stringify(info, null, 2), { keepPrevious: true });
      this.clearPending();
      removeIfExists(this.path('failsafe-loaded.json'));
      this.record({ event: 'confirm', id: pending.id, sha256: info.sha256, policyHash: info.policyHash });
      stopWatcher(pending.watcherPid);
      return info;
    });
  }

  /**
   * Puts back the table that was in force before `pending`. If that cannot be loaded (the saved
   * listing is missing or refused), the verified committed ruleset comes back instead, and
   * failing that the fail-safe one: an unconfirmed ruleset never stays in force.
   */
  private async rollbackLocked(pending: PendingInfo, reason: string): Promise<void> {
    const previous = readIfExists(this.path('rollback.nft'));
    let restored: 'previous table' | 'no table' | 'committed' | 'failsafe' = pending.previous === 'table' ? 'previous table' : 'no table';
    let error: string | undefined;
    try {
      if (pending.previous === 'absent') await this.backend.deleteTable();
      else if (previous === undefined) throw new CommitError('E_CORRUPT', 'the saved previous table (rollback.nft) is missing');
      else await this.backend.loadListing(previous);
    } catch (err) {
      error = (err as Error).message;
      const committed = (() => {
        try {
          return this.committedText();
        } catch {
          return undefined;
        }
      })();
      const failsafe = readIfExists(this.path('failsafe.nft'));
      if (committed !== undefined) {
        await this.backend.load(committed);
        restored = 'committed';
      } else if (failsafe !== undefined && failsafe !== '') {
        await this.backend.load(failsafe);
        restored = 'failsafe';
      } else throw err;
    }
    this.clearPending();
    this.record({ event: 'rollback', id: pending.id, reason, restored, ...(error !== undefined ? { error } : {}) });
  }

  /** Puts back the ruleset that was in force before the pending change. */
  async rollback(reason: string, onlyId?: string): Promise<PendingInfo | undefined> {
    return this.lock(async () => {
      const pending = this.readPending();
      if (!pending || (onlyId !== undefined && pending.id !== onlyId)) return undefined;
      await this.rollbackLocked(pending, reason);
      if (pending.watcherPid !== process.pid) stopWatcher(pending.watcherPid);
      return pending;
    });
  }

  /** Rolls back the pending change if its window has closed; returns ms left otherwise. */
  async expireIfDue(): Promise<{ rolledBack?: PendingInfo; msLeft?: number }> {
    const pending = this.readPending();
    if (!pending) return {};
    const left = pending.deadline - this.now();
    if (left > 0) return { msLeft: left };
    const rolledBack = await this.rollback('not confirmed within the window', pending.id);
    return rolledBack ? { rolledBack } : {};
  }

  /**
   * At boot, before the network comes up: load the last committed ruleset. A pending change
   * was never confirmed, so it is dropped. If the committed ruleset is missing, damaged or
   * refused, the fail-safe ruleset is loaded (see docs/fail-modes.md).
   */
  async restore(): Promise<{ source: 'committed' | 'failsafe' | 'none'; reason?: string }> {
    return this.lock(async () => {
      // A pending change was never confirmed: put back what it replaced, then load the committed.
      const pending = this.readPending();
      if (pending) await this.rollbackLocked(pending, 'restore before confirmation');
      removeIfExists(this.path('failsafe-loaded.json'));
      let reason: string | undefined;
      try {
        const text = this.committedText();
        if (text !== undefined) {
          await this.backend.load(text);
          this.record({ event: 'restore', source: 'committed', sha256: sha256(text) });
          return { source: 'committed' as const };
        }
        reason = 'no committed ruleset';
      } catch (err) {
        reason = (err as Error).message;
      }
      const failsafe = readIfExists(this.path('failsafe.nft'));
      if (failsafe === undefined || failsafe === '') return { source: 'none' as const, reason };
      await this.backend.load(failsafe);
      const loaded = listingSha256(await this.backend.listTable());
      writeFileAtomic(this.path('failsafe-loaded.json'), JSON.stringify({ listingSha256: loaded, reason, at: new Date(this.now()).toISOString() }, null, 2));
      this.record({ event: 'restore', source: 'failsafe', sha256: sha256(failsafe), reason });
      return { source: 'failsafe' as const, reason };
    });
  }

  async status(): Promise<PolicyStatus> {
    const committed = this.readCommitted();
    const pending = this.readPending();
    const listing = await this.backend.listTable();
    const failsafe = readIfExists(this.path('failsafe-loaded.json'));
    const failsafeSha = failsafe === undefined ? undefined : (JSON.parse(failsafe) as { listingSha256: string }).listingSha256;
    let kernel: PolicyStatus['kernel'] = 'absent';
    if (listing !== undefined) {
      const h = listingSha256(listing);
      if (pending && h === pending.listingSha256) kernel = 'pending';
      else if (committed && h === committed.listingSha256) kernel = 'committed';
      else if (h === failsafeSha) kernel = 'failsafe';
      else kernel = 'drifted';
    }
    return {
      backend: this.backend.description,
      kernel,
      ...(committed ? { committed } : {}),
      ...(pending ? { pending: { ...pending, secondsLeft: Math.max(0, Math.round((pending.deadline - this.now()) / 1000)) } } : {}),
    };
  }
}

function stopWatcher(pid: number | undefined): void {
  if (pid === undefined || pid === process.pid) return;
  const cmdline = readIfExists(`/proc/${pid}/cmdline`) ?? '';
  if (!cmdline.includes('wardgate')) return; // the pid was reused by something else
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    // already gone
  }
}
