// `wardgate audit verify | show`: check the audit log's hash chain, or print its records. Reads
// only: a torn last line is reported here and repaired by the next process that appends.
import { resolve } from 'node:path';
import { auditLogPath, scanAuditLog, type AuditEntry } from '../audit/log.js';
import { stateDirOnly, UsageError, type GlobalOptions } from './context.js';
import type { Io } from './io.js';

export interface AuditOptions extends GlobalOptions {
  /** An audit log anywhere (a copy taken off a gateway); no gateway file is read. */
  file?: string;
  json?: boolean;
}

export function auditCommand(sub: string | undefined, opts: AuditOptions, io: Io): Promise<number> {
  return Promise.resolve().then(() => run(sub, opts, io));
}

function run(sub: string | undefined, opts: AuditOptions, io: Io): number {
  switch (sub) {
    case 'verify':
      return verify(logPath(opts), opts, io);
    case 'show':
      return show(logPath(opts), opts, io);
    case undefined:
      throw new UsageError('audit needs a subcommand: verify or show');
    default:
      throw new UsageError(`unknown audit command "${sub}" (verify, show)`);
  }
}

function logPath(opts: AuditOptions): string {
  return opts.file !== undefined ? resolve(opts.file) : auditLogPath(stateDirOnly(opts));
}

function verify(path: string, opts: AuditOptions, io: Io): number {
  const r = scanAuditLog(path);
  if (opts.json) io.out(JSON.stringify({ path, ...r }, null, 2));
  else if (r.ok) io.out(`ok: ${r.records} record(s), the chain is intact (${path}; head ${r.head})`);
  else io.err(`${path}: ${r.problem ?? 'not valid'}`);
  return r.ok ? 0 : 1;
}

function show(path: string, opts: AuditOptions, io: Io): number {
  const entries: AuditEntry[] = [];
  const r = scanAuditLog(path, (e) => entries.push(e));
  if (opts.json) io.out(JSON.stringify(entries, null, 2));
  else for (const e of entries) io.out(formatEntry(e));
  if (r.ok) {
    if (!opts.json && entries.length === 0) io.err(`no records yet in ${path}`);
    return 0;
  }
  const unverified = r.firstBadLine !== undefined ? `; the records from line ${r.firstBadLine} on are not verified` : '';
  io.err(`${path}: ${r.problem ?? 'not valid'}${unverified}`);
  return 1;
}

function formatEntry(e: AuditEntry): string {
  const detail = Object.keys(e.detail).length > 0 ? `  ${JSON.stringify(e.detail)}` : '';
  return `${String(e.seq).padStart(5)}  ${e.time}  ${e.outcome.padEnd(7)}  ${e.actor}  ${e.action}${detail}`;
}
