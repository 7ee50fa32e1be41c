// The audit log: every change and command, one NDJSON line each, append-only and hash-chained.
// A line's `prev` is the sha256 of the line before it and its `hash` the sha256 of its own
// canonical JSON without `hash`, so an edited, deleted, inserted or reordered line shows in
// verifyAuditLog. Each append is fsynced before it returns. The agent and the CLI may both
// append: a short lock around each append, and a re-read of the tail when another process has
// written since, keep one chain. Format and checks: docs/audit.md.
import { createHash } from 'node:crypto';
import { closeSync, existsSync, fdatasyncSync, fstatSync, fsyncSync, ftruncateSync, mkdirSync, openSync, readSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { LockError, removeIfExists, tryPidLock, writeAtOrTruncate, writeFileAtomic } from '../util/fsx.js';
import type { AuditRecord, AuditSink } from './types.js';

/** The `prev` of the first line. */
export const GENESIS = '0'.repeat(64);
export const OUTCOMES = ['ok', 'refused', 'failed'] as const;

export const AUDIT_FILE = 'audit.ndjson';

/** Where the log of a state directory lives: <stateDir>/audit/audit.ndjson. */
export function auditLogPath(stateDir: string): string {
  return join(stateDir, 'audit', AUDIT_FILE);
}

/** Opens (creating) the log in `dir`, a state directory's audit/ folder. */
export function openAuditLog(dir: string, opts: { now?: () => Date } = {}): AuditLog {
  return AuditLog.open(join(dir, AUDIT_FILE), opts);
}

export interface AuditEntry {
  seq: number;
  time: string;
  actor: string;
  action: string;
  outcome: AuditRecord['outcome'];
  detail: Record<string, unknown>;
  prev: string;
  hash: string;
}

export class AuditError extends Error {
  constructor(
    readonly code: 'E_AUDIT_RECORD' | 'E_AUDIT_CORRUPT' | 'E_AUDIT_CLOSED',
    message: string,
  ) {
    super(message);
  }
}

/** JSON with the keys of every object sorted (by UTF-16 code unit) and no whitespace. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v === undefined ? null : v)).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const obj = value as Record<string, unknown>;
    const keys = Object.keys(obj)
      .filter((k) => obj[k] !== undefined)
      .sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');

/** The hash of a record: sha256 of the canonical JSON of every field but `hash`. */
export function recordHash(entry: Omit<AuditEntry, 'hash'>): string {
  const { seq, time, actor, action, outcome, detail, prev } = entry;
  return sha256(canonicalJson({ seq, time, actor, action, outcome, detail, prev }));
}

/** The line as written: fields in reading order, detail canonical. */
function lineOf(e: AuditEntry): string {
  const s = JSON.stringify;
  return `{"seq":${e.seq},"time":${s(e.time)},"actor":${s(e.actor)},"action":${s(e.action)},"outcome":${s(e.outcome)},"detail":${canonicalJson(e.detail)},"prev":${s(e.prev)},"hash":${s(e.hash)}}`;
}

function checkRecord(r: AuditRecord): Record<string, unknown> {
  const bad = (msg: string) => new AuditError('E_AUDIT_RECORD', `audit record: ${msg}`);
  if (typeof r.actor !== 'string' || r.actor === '') throw bad('actor must be a non-empty string');
  if (typeof r.action !== 'string' || r.action === '') throw bad('action must be a non-empty string');
  if (!OUTCOMES.includes(r.outcome)) throw bad(`outcome must be ok, refused or failed, not "${String(r.outcome)}"`);
  let detail: unknown;
  try {
    // What JSON keeps of it (toJSON, no undefined), so that the hash covers what is on disk.
    detail = JSON.parse(JSON.stringify(r.detail ?? {}));
  } catch (err) {
    throw bad(`detail is not JSON: ${(err as Error).message}`);
  }
  if (detail === null || typeof detail !== 'object' || Array.isArray(detail)) throw bad('detail must be an object');
  return detail as Record<string, unknown>;
}

// A short lock around each append, shared by every process that writes the log. Held for one
// write and fsync, so waiting for it is done in place.
const pause = new Int32Array(new SharedArrayBuffer(4));
function lockSync(path: string, waitMs = 5000): () => void {
  const start = Date.now();
  for (;;) {
    const holder = tryPidLock(path);
    if (holder === undefined) return () => removeIfExists(path);
    if (Date.now() - start > waitMs) throw new LockError(`another process (pid ${holder || '?'}) holds ${path}`);
    Atomics.wait(pause, 0, 0, 5);
  }
}

function readAt(fd: number, offset: number, length: number): Buffer {
  const buf = Buffer.allocUnsafe(length);
  for (let got = 0; got < length; ) {
    const n = readSync(fd, buf, got, length - got, offset + got);
    if (n === 0) return buf.subarray(0, got);
    got += n;
  }
  return buf;
}

/** The last newline-terminated line (without its newline), and where the good part ends. */
function readTail(fd: number, size: number): { line: Buffer | undefined; goodEnd: number } {
  for (let span = 4096; ; span *= 4) {
    const start = Math.max(0, size - span);
    const buf = readAt(fd, start, size - start);
    const last = buf.lastIndexOf(0x0a);
    if (last < 0) {
      if (start === 0) return { line: undefined, goodEnd: 0 };
      continue;
    }
    const before = last === 0 ? -1 : buf.lastIndexOf(0x0a, last - 1);
    if (before < 0 && start > 0) continue;
    return { line: buf.subarray(before + 1, last), goodEnd: start + last + 1 };
  }
}

export class AuditLog implements AuditSink {
  private fd: number | undefined;
  /** The file's size when this process last read or wrote it; -1 before the first look. */
  private size = -1;
  private seq = 0;
  private head = GENESIS;

  private constructor(
    readonly path: string,
    private readonly now: () => Date,
  ) {}

  /**
   * Opens the log at `path` (auditLogPath(stateDir)), creating it, and continues its chain.
   * A torn last line (power loss mid-append) is moved to `<path>.torn-<time>`, cut off, and the
   * recovery itself is audited, so the chain goes on from the last whole record.
   */
  static open(path: string, opts: { now?: () => Date } = {}): AuditLog {
    const dir = dirname(path);
    mkdirSync(dir, { recursive: true, mode: 0o750 });
    const log = new AuditLog(path, opts.now ?? (() => new Date()));
    const fd = openSync(path, 'a+', 0o640);
    log.fd = fd;
    try {
      const dfd = openSync(dir, 'r'); // the file's own name must survive power loss too
      try {
        fsyncSync(dfd);
      } finally {
        closeSync(dfd);
      }
      log.locked(() => log.catchUp(fd));
    } catch (err) {
      closeSync(fd);
      log.fd = undefined;
      throw err;
    }
    return log;
  }

  /** Appends one record, fsynced before it returns. */
  append(record: AuditRecord): AuditEntry {
    if (this.fd === undefined) throw new AuditError('E_AUDIT_CLOSED', `audit log ${this.path}: closed`);
    const fd = this.fd;
    const detail = checkRecord(record);
    return this.locked(() => {
      this.catchUp(fd);
      return this.write(fd, { actor: record.actor, action: record.action, outcome: record.outcome, detail });
    });
  }

  close(): void {
    if (this.fd === undefined) return;
    closeSync(this.fd);
    this.fd = undefined;
  }

  private locked<T>(fn: () => T): T {
    const release = lockSync(`${this.path}.lock`);
    try {
      return fn();
    } finally {
      release();
    }
  }

  /** Re-reads the tail when the file is not as this process left it. */
  private catchUp(fd: number): void {
    const size = fstatSync(fd).size;
    if (size === this.size) return;
    const { line, goodEnd } = readTail(fd, size);
    if (line === undefined) {
      this.seq = 0;
      this.head = GENESIS;
    } else {
      let seq: unknown;
      try {
        seq = (JSON.parse(line.toString('utf8')) as { seq?: unknown }).seq;
      } catch {
        seq = undefined;
      }
      if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 1) {
        throw new AuditError('E_AUDIT_CORRUPT', `${this.path}: the last line is not an audit record, so the chain cannot go on; run wardgate audit verify`);
      }
      this.seq = seq;
      this.head = sha256(line);
    }
    this.size = size;
    if (goodEnd < size) this.recoverTorn(fd, goodEnd, size);
  }

  private recoverTorn(fd: number, goodEnd: number, size: number): void {
    const savedTo = `${this.path}.torn-${this.now().toISOString().replace(/[:.]/g, '-')}`;
    writeFileAtomic(savedTo, readAt(fd, goodEnd, size - goodEnd), { mode: 0o640 });
    ftruncateSync(fd, goodEnd);
    fdatasyncSync(fd);
    this.size = goodEnd;
    this.write(fd, {
      actor: 'agent',
      action: 'audit.recovered',
      outcome: 'ok',
      detail: { tornBytes: size - goodEnd, afterSeq: this.seq, savedTo },
    });
  }

  private write(fd: number, r: Omit<AuditEntry, 'seq' | 'time' | 'prev' | 'hash'>): AuditEntry {
    const base = { seq: this.seq + 1, time: this.now().toISOString(), ...r, prev: this.head };
    const entry: AuditEntry = { ...base, hash: recordHash(base) };
    const line = lineOf(entry);
    const buf = Buffer.from(`${line}\n`);
    const at = this.size;
    // Not durable, so not written: a failed append is cut back off rather than left half a line.
    writeAtOrTruncate(fd, buf, at, true);
    this.size = at + buf.length;
    this.seq = entry.seq;
    this.head = sha256(line);
    return entry;
  }
}

export interface VerifyResult {
  ok: boolean;
  /** Records that passed every check, up to the first bad line. */
  records: number;
  /** 1-based. */
  firstBadLine?: number;
  problem?: string;
  /** The problem is a torn last line: the records before it are intact. */
  torn?: boolean;
  /** sha256 of the last good line: what the next record's prev will be. */
  head: string;
}

/** Calls `visit` with each line (without its newline); `terminated` is false for a last line with no newline. */
function eachLine(path: string, visit: (line: Buffer, n: number, terminated: boolean) => boolean): void {
  const fd = openSync(path, 'r');
  try {
    const chunk = Buffer.allocUnsafe(1024 * 1024);
    let carry = Buffer.alloc(0);
    let n = 0;
    for (;;) {
      const got = readSync(fd, chunk, 0, chunk.length, null);
      if (got === 0) break;
      const data = carry.length === 0 ? chunk.subarray(0, got) : Buffer.concat([carry, chunk.subarray(0, got)]);
      let start = 0;
      for (let nl = data.indexOf(0x0a); nl >= 0; nl = data.indexOf(0x0a, start)) {
        if (!visit(data.subarray(start, nl), ++n, true)) return;
        start = nl + 1;
      }
      carry = Buffer.from(data.subarray(start)); // a copy: chunk is reused
    }
    if (carry.length > 0) visit(carry, ++n, false);
  } finally {
    closeSync(fd);
  }
}

function shapeProblem(r: unknown): string | undefined {
  if (r === null || typeof r !== 'object' || Array.isArray(r)) return 'not a JSON object';
  const o = r as Record<string, unknown>;
  const hex = (v: unknown) => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v);
  if (typeof o.seq !== 'number' || !Number.isSafeInteger(o.seq) || o.seq < 1) return 'seq is not a positive integer';
  if (typeof o.time !== 'string') return 'time is not a string';
  if (typeof o.actor !== 'string' || o.actor === '') return 'actor is missing';
  if (typeof o.action !== 'string' || o.action === '') return 'action is missing';
  if (!OUTCOMES.includes(o.outcome as AuditEntry['outcome'])) return 'outcome is not ok, refused or failed';
  if (o.detail === null || typeof o.detail !== 'object' || Array.isArray(o.detail)) return 'detail is not an object';
  if (!hex(o.prev)) return 'prev is not a sha256 hex digest';
  if (!hex(o.hash)) return 'hash is not a sha256 hex digest';
  return undefined;
}

/**
 * Reads the log and checks every line: JSON, the fields, the hash, seq one more than the line
 * before, prev the sha256 of the line before. Stops checking at the first failure; `visit`
 * (for `show`) still sees every later line that parses as a record.
 */
export function scanAuditLog(path: string, visit?: (entry: AuditEntry, line: number) => void): VerifyResult {
  if (!existsSync(path)) return { ok: false, records: 0, problem: `no audit log at ${path}`, head: GENESIS };
  let records = 0;
  let head = GENESIS;
  let failed: Omit<VerifyResult, 'records' | 'head'> | undefined;
  eachLine(path, (buf, n, terminated) => {
    const fail = (problem: string, torn = false) => {
      failed ??= { ok: false, firstBadLine: n, problem: `line ${n}: ${problem}`, ...(torn ? { torn } : {}) };
    };
    let parsed: unknown;
    try {
      parsed = JSON.parse(buf.toString('utf8'));
    } catch {
      parsed = undefined;
    }
    const shape = parsed === undefined ? 'bad JSON' : shapeProblem(parsed);
    if (shape === undefined && terminated && visit) visit(parsed as AuditEntry, n);
    if (failed) return visit !== undefined;
    if (!terminated) {
      fail(`torn last line (${buf.length} bytes and no newline): an append cut short by a crash or power loss; the ${records} record(s) before it are intact`, true);
    } else if (shape !== undefined) {
      fail(shape === 'bad JSON' ? (buf.length === 0 ? 'bad JSON (an empty line)' : 'bad JSON') : `not an audit record: ${shape}`);
    } else {
      const e = parsed as AuditEntry;
      const { hash, ...rest } = e;
      if (recordHash(rest) !== hash || Object.keys(rest).length !== 7) fail('hash mismatch: the record was changed after it was written');
      else if (e.seq !== records + 1) fail(`seq gap: expected seq ${records + 1}, found ${e.seq} (a record missing, added or moved)`);
      else if (e.prev !== head) fail(n === 1 ? 'broken chain: prev of the first line is not 64 zeros' : `broken chain: prev is not the sha256 of line ${n - 1}`);
    }
    if (failed) return visit !== undefined;
    records++;
    head = sha256(buf);
    return true;
  });
  return failed ? { ...failed, records, head } : { ok: true, records, head };
}

export function verifyAuditLog(path: string): VerifyResult {
  return scanAuditLog(path);
}
