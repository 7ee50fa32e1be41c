// Reading the flow log back: every file of <stateDir>/flows/ (flows.ndjson and its rotated
// copies), oldest first, one line at a time, so a log of any size takes little memory.
//
// Only the fields that readers of the log use are checked; the record type may grow without
// breaking them. A line that is not a flow record (the torn last line after a power cut, a hand
// edit, another kind of line) is skipped and counted, never fatal.
import { closeSync, createReadStream, openSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { z } from 'zod';
import { familyOf } from '../policy/net.js';
import type { FlowRecord } from './flows.js';

/** The flow log's directory under the state directory (the traffic module writes there). */
export const FLOW_LOG_DIR = 'flows';
const LOG_FILE = /^flows\.ndjson(?:\.([1-9]\d{0,5}))?$/;

const Count = z.number().nonnegative();

const FIELDS = {
  kind: z.literal('flow'),
  time: z.string().refine((t) => !Number.isNaN(Date.parse(t)), 'not a time'),
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
export const ObservedFlowSchema = z.looseObject(FIELDS);
/** The checked fields of a flow record. */
export type ObservedFlow = Omit<z.infer<z.ZodObject<typeof FIELDS>>, 'kind'>;
/** A line of the flow log: the checked fields, and whatever else the record holds. */
export type FlowLine = ObservedFlow & { readonly [field: string]: unknown };

// If the record type drifts from what is checked here, this stops compiling.
const _recordIsObserved = (r: FlowRecord): ObservedFlow => r;
void _recordIsObserved;

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
  files: number;
  lines: number;
  records: number;
  /** Lines that are not JSON or lack a field the readers need. */
  bad: number;
  /** Well-formed lines of another kind than "flow". */
  other: number;
}

/**
 * Calls `onRecord` for every flow record in the log in `dir`, oldest file first. Every file is
 * opened before the first is read: the agent may rotate the log meanwhile, and open descriptors
 * keep following the same files through the renames (and the removal of the oldest), so each
 * line is read once.
 */
export async function readFlowLog(dir: string, onRecord: (flow: FlowLine) => void): Promise<ReadStats> {
  const paths = flowLogFiles(dir);
  const fds: number[] = [];
  try {
    for (const p of paths) fds.push(openSync(p, 'r'));
  } catch (err) {
    for (const fd of fds) closeSync(fd);
    throw err;
  }
  const stats: ReadStats = { files: paths.length, lines: 0, records: 0, bad: 0, other: 0 };
  let next = 0;
  try {
    for (; next < fds.length; next++) {
      const input = createReadStream('', { fd: fds[next]!, encoding: 'utf8' });
      try {
        for await (const line of createInterface({ input, crlfDelay: Infinity })) readLine(line, stats, onRecord);
      } finally {
        input.destroy();
      }
    }
  } finally {
    // Descriptors not yet handed to a stream (which closes its own) when a callback threw.
    for (const fd of fds.slice(next + 1)) closeSync(fd);
  }
  return stats;
}

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
  const parsed = ObservedFlowSchema.safeParse(value);
  if (parsed.success) {
    stats.records++;
    onRecord(parsed.data);
  } else if (typeof value === 'object' && value !== null && 'kind' in value && value.kind !== 'flow') stats.other++;
  else stats.bad++;
}
