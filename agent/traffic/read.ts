// Reading the flow log back: every file of <stateDir>/flows/ (flows.ndjson and its rotated
// copies), oldest first, one line at a time, so a log of any size takes little memory. The one
// reader of the log: `flows map` feeds its records to the map, `policy learn` and
// `policy diff --observed` to the per-device aggregation of observed.ts.
//
// Only the fields that readers of the log use are checked; the record type may grow without
// breaking them. A line that is not a flow record (the torn last line after a power cut, a hand
// edit, another kind of line) is skipped and counted, never fatal.
import { closeSync, createReadStream, fstatSync, openSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { z } from 'zod';
import { familyOf } from '../policy/net.js';
import type { FlowRecord } from './flows.js';

/** The flow log's directory under the state directory (the traffic module writes there). */
export const FLOW_LOG_DIR = 'flows';
const LOG_FILE = /^flows\.ndjson(?:\.([1-9]\d{0,5}))?$/;

const Count = z.number().nonnegative();
const Time = z.string().refine((t) => !Number.isNaN(Date.parse(t)), 'not a time');

const FIELDS = {
  kind: z.literal('flow'),
  time: Time,
  start: Time.nullable(),
  device: z.string().min(1),
  peer: z.string().refine((p) => familyOf(p) !== undefined, 'not an IP address'),
  peerGroup: z.string().optional(),
  direction: z.enum(['inbound', 'outbound']),
  proto: z.string().min(1),
  dport: z.number().int().min(0).max(65535).nullable(),
  packets: Count,
  bytes: Count,
  app: z.string().nullable(),
  verdict: z.enum(['allowed', 'monitored', 'unmatched', 'denied']),
  entry: z.string().nullable(),
};
/** A flow log line, as far as readers need it; its other fields pass through unchecked. */
export const LoggedFlowSchema = z.looseObject(FIELDS);
/** The checked fields of a flow record. */
export type LoggedFlow = Omit<z.infer<z.ZodObject<typeof FIELDS>>, 'kind'>;
/** A line of the flow log: the checked fields, and whatever else the record holds. */
export type FlowLine = LoggedFlow & { readonly [field: string]: unknown };

// If the record type drifts from what is checked here, this stops compiling.
const _recordIsLogged = (r: FlowRecord): LoggedFlow => r;
void _recordIsLogged;

/** The flow log's files in `dir`, oldest first (flows.ndjson.N … flows.ndjson.1, flows.ndjson). */
export function flowLogFiles(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  return names
    .flatMap((n) => {
      const m = LOG_FILE.exec(n);
      return m ? [{ n, age: Number(m[1] ?? 0) }] : [];
    })
    .sort((a, b) => b.age - a.age)
    .map(({ n }) => join(dir, n));
}

export interface ReadStats {
  /** The files read, oldest first; a file found under two names is read (and listed) once. */
  files: string[];
  lines: number;
  records: number;
  /** Lines that are not JSON or lack a field the readers need. */
  bad: number;
  /** Well-formed lines of another kind than "flow". */
  other: number;
}

/**
 * Calls `onRecord` for every flow record in the log in `dir`, oldest file first, each line once
 * even while the agent rotates the log. Every file is opened before the first is read: open
 * descriptors keep following the same files through the renames of a rotation (and the removal
 * of the oldest), so once all are open, rotations lose and repeat nothing. A rotation while they
 * are being opened is caught by the check of openLog.
 */
export async function readFlowLog(dir: string, onRecord: (flow: FlowLine) => void): Promise<ReadStats> {
  const held = openLog(dir);
  const stats: ReadStats = { files: held.map((h) => h.path), lines: 0, records: 0, bad: 0, other: 0 };
  let next = 0;
  try {
    for (; next < held.length; next++) {
      // The stream closes its descriptor when it ends, fails or is destroyed.
      const input = createReadStream('', { fd: held[next]!.fd, encoding: 'utf8' });
      try {
        for await (const line of createInterface({ input, crlfDelay: Infinity })) readLine(line, stats, onRecord);
      } finally {
        if (!input.closed) {
          const closed = new Promise<void>((r) => input.once('close', () => r()));
          input.destroy();
          await closed;
        }
      }
    }
  } finally {
    // Descriptors not yet handed to a stream, when a callback threw.
    for (const { fd } of held.slice(next + 1)) closeSync(fd);
  }
  return stats;
}

interface Held {
  path: string;
  fd: number;
}

/** Attempts at a set of open files that no rotation came between (see openLog). */
const OPEN_TRIES = 20;

/**
 * Opens every file of the log, oldest first in the result. Between listing the directory and
 * opening the last file, a rotation would shift names under the opener: a file would be met
 * twice under two names, or one moved to a name already passed would be missed. So after opening,
 * the directory is listed again and each name must still name the file held (a held file's
 * inode cannot be reused, so a rotation always changes some name's inode); if not, everything is
 * closed and opened again. Rotations come once per maxBytes of log (8 MiB by default), so a
 * second try nearly always holds.
 *
 * Should no try hold (a writer rotating faster than the files can be opened), the last set is
 * read as it is, and the order of opening limits the harm: newest first, with the renames (a
 * rotation moves each file to the next older name), a rotation can only make the opener meet a
 * file again, which is told apart by inode and read once, and, when the log is at its file
 * count, miss the oldest, which that rotation removed anyway. A file under two names (a hard
 * link) is read once, too.
 */
function openLog(dir: string): Held[] {
  for (let attempt = 1; ; attempt++) {
    const paths = flowLogFiles(dir);
    const { held, ids } = openAll([...paths].reverse());
    let settled: boolean;
    try {
      settled = attempt >= OPEN_TRIES || unchanged(dir, paths, ids);
    } catch (err) {
      for (const { fd } of held) closeSync(fd);
      throw err;
    }
    if (settled) return held.reverse();
    for (const { fd } of held) closeSync(fd);
  }
}

/** The files opened (newest first, each file once) and the file each name held when opened. */
function openAll(newestFirst: string[]): { held: Held[]; ids: Map<string, string> } {
  const held: Held[] = [];
  const ids = new Map<string, string>();
  const seen = new Set<string>();
  try {
    for (const path of newestFirst) {
      let fd: number;
      try {
        fd = openSync(path, 'r');
      } catch (err) {
        // Removed by a rotation since the listing; unchanged() sees that it is gone.
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw err;
      }
      let id: string;
      try {
        id = fileId(fstatSync(fd, { bigint: true }));
      } catch (err) {
        closeSync(fd);
        throw err;
      }
      ids.set(path, id);
      if (seen.has(id)) {
        closeSync(fd);
        continue;
      }
      seen.add(id);
      held.push({ path, fd });
    }
  } catch (err) {
    for (const { fd } of held) closeSync(fd);
    throw err;
  }
  return { held, ids };
}

/** True when `dir` lists the same log files as `paths` and each still names the file in `ids`. */
function unchanged(dir: string, paths: string[], ids: Map<string, string>): boolean {
  const now = flowLogFiles(dir);
  if (now.length !== paths.length || now.some((p, i) => p !== paths[i])) return false;
  for (const path of now) {
    let id: string;
    try {
      id = fileId(statSync(path, { bigint: true }));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
    if (ids.get(path) !== id) return false;
  }
  return true;
}

const fileId = (st: { dev: bigint; ino: bigint }) => `${st.dev}:${st.ino}`;

function readLine(line: string, stats: ReadStats, onRecord: (flow: FlowLine) => void): void {
  if (line.trim() === '') return;
  stats.lines++;
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    stats.bad++;
    return;
  }
  const parsed = LoggedFlowSchema.safeParse(value);
  if (parsed.success) {
    stats.records++;
    onRecord(parsed.data);
  } else if (typeof value === 'object' && value !== null && 'kind' in value && value.kind !== 'flow') stats.other++;
  else stats.bad++;
}
