// What the commands that read the flow log (`flows map`, `policy learn`, `policy diff --observed`)
// share: the --since option, a log they may not read, and the warning about skipped lines.
import type { ReadStats } from '../traffic/read.js';
import { UsageError } from './context.js';
import type { Io } from './io.js';

const AGE_UNITS: Record<string, number> = { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 7 * 86400e3 };
const ISO_TIME = /^(\d{4})-(\d{2})-(\d{2})(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$/;

/**
 * --since: an age back from `now` ("90s", "90m", "24h", "7d", "2w") or an ISO 8601 time. A date
 * alone is midnight UTC and a time without an offset is local time, as JavaScript's Date reads
 * them. Anything else is a usage error (exit 2).
 */
export function parseSince(text: string, now = new Date()): Date {
  const trimmed = text.trim();
  const age = /^(\d{1,6})([smhdw])$/.exec(trimmed);
  if (age) return new Date(now.getTime() - Number(age[1]) * AGE_UNITS[age[2]!]!);
  const iso = ISO_TIME.exec(trimmed);
  // Date.parse rolls 2030-02-30 over into March; a date that is not on the calendar is refused.
  if (iso && onCalendar(Number(iso[1]), Number(iso[2]), Number(iso[3]))) {
    const t = Date.parse(trimmed);
    if (!Number.isNaN(t)) return new Date(t);
  }
  throw new UsageError(`--since takes an age back from now (90m, 24h, 7d, 2w; units s, m, h, d, w) or an ISO 8601 time (2030-01-31, 2030-01-31T08:00Z), not "${text}"`);
}

function onCalendar(year: number, month: number, day: number): boolean {
  const d = new Date(Date.UTC(year, month - 1, day));
  return d.getUTCFullYear() === year && d.getUTCMonth() === month - 1 && d.getUTCDate() === day;
}

/**
 * The warning for lines of the log that are not well-formed records (a write torn by a power
 * cut, an edit by hand), or undefined when there were none. Lines of another kind than "flow"
 * are well-formed and not warned about: the log may carry them.
 */
export function skippedWarning(read: Pick<ReadStats, 'bad'>): string | undefined {
  if (read.bad === 0) return undefined;
  return read.bad === 1
    ? 'warning: skipped 1 line of the flow log that is not a well-formed record'
    : `warning: skipped ${read.bad} lines of the flow log that are not well-formed records`;
}

/**
 * Runs `read`; a flow log this user may not read (it is the agent's, mode 0640) is said in one
 * line and gives undefined (the command exits 1), where any other failure is a bug to show whole.
 */
export async function readingFlowLog<T>(io: Io, read: () => Promise<T>): Promise<T | undefined> {
  try {
    return await read();
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code !== 'EACCES' && e.code !== 'EPERM') throw err;
    io.err(`wardgate: cannot read the flow log: ${e.message} (run as the wardgate user or root)`);
    return undefined;
  }
}
