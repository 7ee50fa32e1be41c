// The allow entries' `modbus:` rules compiled into one checker for a connection.
//
// A connection is covered by every allow entry that matches its peer; allow-lists add up, so a
// request passes when one entry allows it whole: its function, its unit id, and every address it
// reads and writes. An entry without `modbus:` rules allows any request ('all'): it is a plain
// TCP allow, and the session only keeps malformed frames away from the device.
import { MODBUS_FUNCTIONS, MODBUS_PROFILES, type ModbusRules, type NumberRangeSpec } from '../schema.js';
import { EXCEPTION, hex2, type ExceptionCode, type Table } from './spec.js';
import type { ModbusRead, ModbusRequest, ModbusWrite } from './request.js';

export type ModbusRuleSet = ModbusRules | 'all';

/** Why no entry allows a request, in the order a request is checked. */
export type DenyReason = 'function' | 'unit' | 'address';

export type Verdict = { allowed: true } | { allowed: false; reason: DenyReason; exception: ExceptionCode; detail: string };

/** [MAP] 7: a function the peer may not use is 01; a unit or an address it may not touch is 02. */
export const DENY_EXCEPTION: Record<DenyReason, ExceptionCode> = {
  function: EXCEPTION.illegalFunction,
  unit: EXCEPTION.illegalDataAddress,
  address: EXCEPTION.illegalDataAddress,
};

const ALLOWED: Verdict = Object.freeze({ allowed: true });

/** Sorted, merged, inclusive [low, high] pairs; null is the whole space. */
type Ranges = readonly number[] | null;

type Tables = Record<Table, Ranges>;

interface CompiledEntry {
  /** By function code: whether the entry permits it. */
  functions: Uint8Array;
  units: Ranges;
  read: Tables;
  write: Tables;
}

export class ModbusChecker {
  /** 'close' when any entry with rules says so: the stricter answer wins for a peer they share. */
  readonly onDeny: 'exception' | 'close';
  private readonly all: boolean;
  private readonly entries: readonly CompiledEntry[];

  constructor(rules: readonly ModbusRuleSet[]) {
    this.all = rules.includes('all');
    const withRules = rules.filter((r): r is ModbusRules => r !== 'all');
    this.entries = withRules.map(compileEntry);
    this.onDeny = withRules.some((r) => r.onDeny === 'close') ? 'close' : 'exception';
  }

  /** Whether one entry allows the request whole. Allocates nothing when it does. */
  check(req: ModbusRequest): Verdict {
    if (this.all) return ALLOWED;
    // How far the best entry got: 0 function, 1 unit, 2 address; and what stopped it.
    let stage = 0;
    let detail = '';
    for (const e of this.entries) {
      if (!req.known || e.functions[req.fc] !== 1) continue;
      if (!within(e.units, req.unit, req.unit)) {
        if (stage < 1) {
          stage = 1;
          detail = `unit ${req.unit} is not allowed`;
        }
        continue;
      }
      let what = 'read';
      let outside: ModbusRead | ModbusWrite | undefined = firstOutside(req.reads, e.read);
      if (outside === undefined) {
        what = 'write';
        outside = firstOutside(req.writes, e.write);
      }
      if (outside === undefined) return ALLOWED;
      if (stage < 2) {
        stage = 2;
        const last = outside.address + outside.count - 1;
        detail = `${what} of ${outside.table} ${outside.count === 1 ? outside.address : `${outside.address}-${last}`} is outside the allowed addresses`;
      }
    }
    const reason: DenyReason = stage === 0 ? 'function' : stage === 1 ? 'unit' : 'address';
    if (stage === 0) detail = req.known ? `function ${req.name} (${hex2(req.fc)}) is not allowed` : `function ${req.name} (${hex2(req.fc)}) is not one the filter knows`;
    return { allowed: false, reason, exception: DENY_EXCEPTION[reason], detail };
  }
}

export function compileModbusRules(rules: readonly ModbusRuleSet[]): ModbusChecker {
  return new ModbusChecker(rules);
}

function firstOutside<T extends ModbusRead | ModbusWrite>(list: readonly T[], tables: Tables): T | undefined {
  for (const item of list) {
    if (!within(tables[item.table], item.address, item.address + item.count - 1)) return item;
  }
  return undefined;
}

/** Whether [low, high] lies inside one merged range. */
function within(ranges: Ranges, low: number, high: number): boolean {
  if (ranges === null) return true;
  for (let i = 0; i < ranges.length; i += 2) {
    if (low >= (ranges[i] ?? 0) && high <= (ranges[i + 1] ?? -1)) return true;
  }
  return false;
}

function compileEntry(rules: ModbusRules): CompiledEntry {
  const functions = new Uint8Array(256);
  const names = [...(rules.profile !== undefined ? MODBUS_PROFILES[rules.profile] : []), ...(rules.functions ?? [])];
  for (const name of names) {
    const code = MODBUS_FUNCTIONS[name];
    // An unvalidated name would silently allow nothing; say so where the rules are built.
    if (code === undefined) throw new Error(`modbus rules: unknown function "${String(name)}"`);
    functions[code] = 1;
  }
  const read = rules.read ?? {};
  const write = rules.write ?? {};
  return {
    functions,
    units: rules.unitIds !== undefined ? compileRanges(rules.unitIds, 255, 'unit id') : null,
    read: {
      coils: optionalRanges(read.coils),
      discreteInputs: optionalRanges(read.discreteInputs),
      holdingRegisters: optionalRanges(read.holdingRegisters),
      inputRegisters: optionalRanges(read.inputRegisters),
      fileRecords: null,
    },
    write: {
      coils: optionalRanges(write.coils),
      holdingRegisters: optionalRanges(write.holdingRegisters),
      // No function writes these two tables ([MAP] 4.3: read-only); listed for the type's sake.
      discreteInputs: null,
      inputRegisters: null,
      fileRecords: null,
    },
  };
}

function optionalRanges(specs: readonly NumberRangeSpec[] | undefined): Ranges {
  return specs === undefined ? null : compileRanges(specs, 65535, 'address');
}

/** Parses "low-high" and numbers (checked again: options are checked when built), then sorts and merges touching ranges. */
export function compileRanges(specs: readonly NumberRangeSpec[], max: number, what: string): readonly number[] {
  const pairs: [number, number][] = specs.map((spec) => {
    if (typeof spec === 'number') return [spec, spec];
    const m = /^(\d{1,5})-(\d{1,5})$/.exec(spec);
    if (!m) throw new Error(`modbus rules: ${what} "${spec}" is not a number or a range "low-high"`);
    return [Number(m[1]), Number(m[2])];
  });
  for (const [lo, hi] of pairs) {
    if (!Number.isInteger(lo) || !Number.isInteger(hi) || lo < 0 || hi > max || lo > hi) throw new Error(`modbus rules: ${what} range ${lo}-${hi} is not within 0-${max}`);
  }
  pairs.sort((a, b) => a[0] - b[0]);
  const merged: number[] = [];
  for (const [lo, hi] of pairs) {
    const last = merged.length - 1;
    // "0-9" and "10-19" are one range: a request for 5-14 is inside what the entry allows.
    if (last >= 1 && lo <= (merged[last] ?? 0) + 1) merged[last] = Math.max(merged[last] ?? 0, hi);
    else merged.push(lo, hi);
  }
  return merged;
}
