// What changed between two versions of a configuration, as a summary fit for an event: register
// by register for a 'modbus' document, a line diff for text, sizes and hashes for binary. Never
// the whole configuration: at most MAX_CHANGES items, text lines cut short, and lines that look
// like secrets (passwords, keys, SNMP communities) shown by number only.
import { createHash } from 'node:crypto';
import { diffLines } from 'diff';
import { parseModbusDocument, type ModbusRangeValues } from './drivers/modbus.js';
import type { FetchedConfig } from './types.js';

export const MAX_CHANGES = 20;
const MAX_LINE = 120;
const SECRET_LINE = /pass(word|wd|phrase)?|secret|token|private|community|psk|credential|api[-_]?key|\bkey\b/i;

export type Format = FetchedConfig['format'];

export interface RegisterChange {
  range: string;
  kind: ModbusRangeValues['kind'];
  unit: number;
  address: number;
  old: number | boolean | null;
  new: number | boolean | null;
}

export interface LineChange {
  op: '+' | '-';
  /** The line number: in the old text for '-', in the new text for '+'. */
  line: number;
  text: string;
}

export interface Drift {
  changed: boolean;
  /** How the two were compared: 'modbus' and 'text' item by item, 'binary' by size and hash. */
  compared: Format;
  /** Register or line changes in all (the listed ones are at most MAX_CHANGES). */
  total: number;
  registers?: RegisterChange[];
  lines?: LineChange[];
  /** Ranges present in only one of the two (modbus). */
  ranges?: { added: string[]; removed: string[] };
  before: { size: number; sha256: string };
  after: { size: number; sha256: string };
  /** One line per listed change, and a last "... and N more" when some were left out. */
  summary: string[];
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Compares `before` with `after`; the format is the newer version's. */
export function compareConfigs(format: Format, before: Buffer, after: Buffer, beforeFormat: Format = format): Drift {
  const base = { before: { size: before.length, sha256: sha256(before) }, after: { size: after.length, sha256: sha256(after) } };
  if (before.equals(after)) return { changed: false, compared: format, total: 0, ...base, summary: [] };
  if (format === 'modbus' && beforeFormat === 'modbus') {
    const m = modbusDrift(before, after);
    if (m !== undefined) return { changed: true, compared: 'modbus', ...m, ...base };
  }
  if (format === 'text' && beforeFormat === 'text') return { changed: true, compared: 'text', ...textDrift(before, after), ...base };
  return {
    changed: true,
    compared: 'binary',
    total: 1,
    ...base,
    summary: [`size ${before.length} -> ${after.length} bytes, sha256 ${base.before.sha256.slice(0, 16)} -> ${base.after.sha256.slice(0, 16)}`],
  };
}

function more(total: number, listed: number): string[] {
  return total > listed ? [`... and ${total - listed} more`] : [];
}

function rangeKey(r: ModbusRangeValues): string {
  return r.name ?? `${r.kind}@${r.unit}:${r.address}`;
}

function modbusDrift(before: Buffer, after: Buffer): Pick<Drift, 'total' | 'registers' | 'ranges' | 'summary'> | undefined {
  let a: ModbusRangeValues[];
  let b: ModbusRangeValues[];
  try {
    a = parseModbusDocument(before).ranges;
    b = parseModbusDocument(after).ranges;
  } catch {
    return undefined;
  }
  const old = new Map(a.map((r) => [rangeKey(r), r]));
  const registers: RegisterChange[] = [];
  const added: string[] = [];
  let total = 0;
  for (const r of b) {
    const o = old.get(rangeKey(r));
    old.delete(rangeKey(r));
    if (o === undefined || o.kind !== r.kind || o.unit !== r.unit) {
      added.push(rangeKey(r));
      continue;
    }
    // Compared by address, so that a range that was moved or resized shows what each address holds now.
    const lo = Math.min(o.address, r.address);
    const hi = Math.max(o.address + o.values.length, r.address + r.values.length);
    for (let at = lo; at < hi; at++) {
      const ov = o.values[at - o.address] ?? null;
      const nv = r.values[at - r.address] ?? null;
      if (ov === nv) continue;
      total++;
      if (registers.length < MAX_CHANGES) registers.push({ range: rangeKey(r), kind: r.kind, unit: r.unit, address: at, old: ov, new: nv });
    }
  }
  const removed = [...old.keys()];
  const show = (v: number | boolean | null) => (v === null ? '(none)' : String(v));
  const summary = [
    ...registers.map((c) => `${c.range}: unit ${c.unit} ${c.kind} ${c.address}: ${show(c.old)} -> ${show(c.new)}`),
    ...more(total, registers.length),
    ...added.map((n) => `range ${n}: new`),
    ...removed.map((n) => `range ${n}: gone`),
  ];
  return { total: total + added.length + removed.length, registers, ranges: { added, removed }, summary };
}

function shown(text: string): string {
  if (SECRET_LINE.test(text)) return '(not shown: looks like a secret)';
  return text.length > MAX_LINE ? `${text.slice(0, MAX_LINE)}...` : text;
}

function textDrift(before: Buffer, after: Buffer): Pick<Drift, 'total' | 'lines' | 'summary'> {
  const lines: LineChange[] = [];
  let total = 0;
  let oldLine = 1;
  let newLine = 1;
  for (const part of diffLines(before.toString('utf8'), after.toString('utf8'))) {
    const partLines = part.value.replace(/\n$/, '').split('\n');
    for (const text of partLines) {
      if (part.added) {
        total++;
        if (lines.length < MAX_CHANGES) lines.push({ op: '+', line: newLine, text: shown(text) });
        newLine++;
      } else if (part.removed) {
        total++;
        if (lines.length < MAX_CHANGES) lines.push({ op: '-', line: oldLine, text: shown(text) });
        oldLine++;
      } else {
        oldLine++;
        newLine++;
      }
    }
  }
  return { total, lines, summary: [...lines.map((l) => `${l.op} ${l.line}: ${l.text}`), ...more(total, lines.length)] };
}
