// The rules checker: profiles and functions, unit ids, read and write ranges per table, the union
// across allow entries, and the reason (and exception) of a denial.
import { describe, expect, it } from 'vitest';
import { parseRequest, type ModbusRequest } from '../../../agent/protocols/modbus/request.js';
import { ModbusChecker, compileRanges } from '../../../agent/protocols/modbus/rules.js';
import { ModbusRulesSchema, type ModbusRules } from '../../../agent/protocols/schema.js';
import { adu, maskWrite, read, readDeviceId, readFileRecord, readHolding, readWriteRegisters, writeCoil, writeCoils, writeRegister, writeRegisters } from './frames.js';

const rules = (r: unknown): ModbusRules => ModbusRulesSchema.parse(r);

function req(frame: Buffer): ModbusRequest {
  const r = parseRequest(frame);
  if (!r.ok) throw new Error(r.reason);
  return r;
}

const verdict = (checker: ModbusChecker, frame: Buffer) => {
  const v = checker.check(req(frame));
  return v.allowed ? 'allowed' : `${v.reason} ${v.exception}`;
};

describe('ModbusChecker: functions', () => {
  it('read-only: the four reads and device identification, nothing else', () => {
    const c = new ModbusChecker([rules({ profile: 'read-only' })]);
    for (const fc of [1, 2, 3, 4] as const) expect(verdict(c, read(1, 1, fc, 0, 1))).toBe('allowed');
    expect(verdict(c, readDeviceId(1, 1, 1))).toBe('allowed');
    expect(verdict(c, writeRegister(1, 1, 0, 1))).toBe('function 1');
    expect(verdict(c, writeCoil(1, 1, 0, 0xff00))).toBe('function 1');
    expect(verdict(c, writeRegisters(1, 1, 0, [1]))).toBe('function 1');
    expect(verdict(c, readWriteRegisters(1, 1, 0, 1, 0, [1]))).toBe('function 1');
    expect(verdict(c, adu(1, 1, [0x07]))).toBe('function 1');
    expect(verdict(c, adu(1, 1, [0x11]))).toBe('function 1');
    expect(verdict(c, adu(1, 1, [0x08, 0, 0]))).toBe('function 1');
  });

  it('read-write adds the six writes; functions add to the profile', () => {
    const c = new ModbusChecker([rules({ profile: 'read-write', functions: ['diagnostics'] })]);
    for (const f of [writeRegister(1, 1, 0, 1), writeCoil(1, 1, 0, 0), writeRegisters(1, 1, 0, [1]), writeCoils(1, 1, 0, [1]), maskWrite(1, 1, 0, 0, 0), readWriteRegisters(1, 1, 0, 1, 0, [1])]) {
      expect(verdict(c, f)).toBe('allowed');
    }
    expect(verdict(c, adu(1, 1, [0x08, 0, 0]))).toBe('allowed');
    expect(verdict(c, adu(1, 1, [0x11]))).toBe('function 1');
    expect(verdict(c, readFileRecord(1, 1, [{ file: 1, record: 0, length: 1 }]))).toBe('function 1');
  });

  it('functions alone, without a profile', () => {
    const c = new ModbusChecker([rules({ functions: ['read-file-record', 'report-server-id'] })]);
    expect(verdict(c, readFileRecord(1, 1, [{ file: 1, record: 0, length: 1 }]))).toBe('allowed');
    expect(verdict(c, adu(1, 1, [0x11]))).toBe('allowed');
    expect(verdict(c, readHolding(1, 1, 0, 1))).toBe('function 1');
  });

  it('denies a function the filter does not know, even with every public one named', () => {
    const c = new ModbusChecker([rules({ profile: 'read-write', functions: ['read-fifo-queue', 'diagnostics', 'read-device-identification'] })]);
    expect(verdict(c, adu(1, 1, [0x5a, 0]))).toBe('function 1');
    expect(verdict(c, adu(1, 1, [0x2b, 0x0d, 0]))).toBe('function 1');
    const v = c.check(req(adu(1, 1, [0x41])));
    expect(v).toMatchObject({ allowed: false, reason: 'function', detail: expect.stringMatching(/function-0x41 .* not one the filter knows/) as unknown });
  });
});

describe('ModbusChecker: unit ids and addresses', () => {
  it('unit ids: numbers and ranges; another unit is exception 02', () => {
    const c = new ModbusChecker([rules({ profile: 'read-only', unitIds: [1, '10-12', 255] })]);
    for (const unit of [1, 10, 11, 12, 255]) expect(verdict(c, readHolding(1, unit, 0, 1))).toBe('allowed');
    for (const unit of [0, 2, 9, 13, 254]) expect(verdict(c, readHolding(1, unit, 0, 1))).toBe('unit 2');
  });

  it('read ranges per table: the whole request inside one range (touching ranges are one)', () => {
    const c = new ModbusChecker([rules({ profile: 'read-only', read: { holdingRegisters: ['0-9', '10-19', 100], coils: ['0-15'] } })]);
    expect(verdict(c, readHolding(1, 1, 0, 20))).toBe('allowed');
    expect(verdict(c, readHolding(1, 1, 5, 10))).toBe('allowed');
    expect(verdict(c, readHolding(1, 1, 100, 1))).toBe('allowed');
    expect(verdict(c, readHolding(1, 1, 0, 21))).toBe('address 2');
    expect(verdict(c, readHolding(1, 1, 19, 2))).toBe('address 2');
    expect(verdict(c, readHolding(1, 1, 99, 2))).toBe('address 2');
    expect(verdict(c, read(1, 1, 1, 0, 16))).toBe('allowed');
    expect(verdict(c, read(1, 1, 1, 8, 9))).toBe('address 2');
    // Tables not named may be read whole.
    expect(verdict(c, read(1, 1, 4, 60000, 125))).toBe('allowed');
    expect(verdict(c, read(1, 1, 2, 0, 2000))).toBe('allowed');
  });

  it('write ranges per table; reads of 0x17 are checked against the read ranges, its writes against the write ranges', () => {
    const c = new ModbusChecker([rules({ profile: 'read-write', read: { holdingRegisters: ['0-99'] }, write: { holdingRegisters: ['40-49'], coils: [3] } })]);
    expect(verdict(c, writeRegister(1, 1, 40, 7))).toBe('allowed');
    expect(verdict(c, writeRegisters(1, 1, 40, new Array<number>(10).fill(1)))).toBe('allowed');
    expect(verdict(c, writeRegisters(1, 1, 40, new Array<number>(11).fill(1)))).toBe('address 2');
    expect(verdict(c, writeRegister(1, 1, 39, 7))).toBe('address 2');
    expect(verdict(c, maskWrite(1, 1, 50, 0, 0))).toBe('address 2');
    expect(verdict(c, writeCoil(1, 1, 3, 0xff00))).toBe('allowed');
    expect(verdict(c, writeCoils(1, 1, 3, [1, 0]))).toBe('address 2');
    expect(verdict(c, readWriteRegisters(1, 1, 0, 100, 45, [1]))).toBe('allowed');
    expect(verdict(c, readWriteRegisters(1, 1, 0, 101, 45, [1]))).toBe('address 2');
    expect(verdict(c, readWriteRegisters(1, 1, 0, 10, 30, [1]))).toBe('address 2');
    const v = c.check(req(readWriteRegisters(1, 1, 0, 10, 30, [1, 2])));
    expect(v).toMatchObject({ allowed: false, detail: 'write of holdingRegisters 30-31 is outside the allowed addresses' });
  });

  it('read-fifo-queue is a read of 32 registers from the pointer', () => {
    const c = new ModbusChecker([rules({ functions: ['read-fifo-queue'], read: { holdingRegisters: ['100-131'] } })]);
    expect(verdict(c, adu(1, 1, [0x18, 0, 100]))).toBe('allowed');
    expect(verdict(c, adu(1, 1, [0x18, 0, 101]))).toBe('address 2');
  });
});

describe('ModbusChecker: entries add up', () => {
  it('allows what one entry allows whole, never a mix of two', () => {
    const c = new ModbusChecker([
      rules({ profile: 'read-only', unitIds: [1], read: { holdingRegisters: ['0-9'] } }),
      rules({ profile: 'read-write', unitIds: [2], write: { holdingRegisters: ['50-59'] } }),
    ]);
    expect(verdict(c, readHolding(1, 1, 0, 10))).toBe('allowed');
    expect(verdict(c, readHolding(1, 2, 1000, 10))).toBe('allowed');
    expect(verdict(c, writeRegister(1, 2, 55, 1))).toBe('allowed');
    // Unit 1 may not write (entry 1 has no writes; entry 2 is for unit 2): a unit denial.
    expect(verdict(c, writeRegister(1, 1, 55, 1))).toBe('unit 2');
    // Unit 2 writing outside its range: the address is what stops the closest entry.
    expect(verdict(c, writeRegister(1, 2, 60, 1))).toBe('address 2');
    expect(verdict(c, readHolding(1, 1, 5, 10))).toBe('address 2');
    expect(verdict(c, readHolding(1, 3, 0, 1))).toBe('unit 2');
    expect(verdict(c, adu(1, 2, [0x11]))).toBe('function 1');
  });

  it("an entry without modbus rules ('all') allows any well-formed request, unknown functions too", () => {
    const c = new ModbusChecker([rules({ profile: 'read-only', unitIds: [1] }), 'all']);
    expect(verdict(c, writeRegister(1, 9, 0, 1))).toBe('allowed');
    expect(verdict(c, adu(1, 1, [0x5a, 1, 2]))).toBe('allowed');
    expect(c.onDeny).toBe('exception');
  });

  it('no entry at all allows nothing', () => {
    expect(verdict(new ModbusChecker([]), readHolding(1, 1, 0, 1))).toBe('function 1');
  });

  it("onDeny: 'close' when any entry with rules says so", () => {
    expect(new ModbusChecker([rules({ profile: 'read-only' })]).onDeny).toBe('exception');
    expect(new ModbusChecker([rules({ profile: 'read-only' }), rules({ profile: 'read-write', onDeny: 'close' })]).onDeny).toBe('close');
  });

  it('allocates no verdict for an allowed request', () => {
    const c = new ModbusChecker([rules({ profile: 'read-only', read: { holdingRegisters: ['0-99'] } })]);
    expect(c.check(req(readHolding(1, 1, 0, 1)))).toBe(c.check(req(readHolding(2, 1, 5, 5))));
  });
});

describe('compileRanges', () => {
  it('sorts and merges touching and overlapping ranges', () => {
    expect(compileRanges(['10-19', 5, '0-4', '6-9', '30-40', '35-50', 52], 65535, 'address')).toEqual([0, 19, 30, 50, 52, 52]);
    expect(compileRanges(['10-19', 5, '0-4', '30-40', '35-50', 52], 65535, 'address')).toEqual([0, 5, 10, 19, 30, 50, 52, 52]);
  });
  it('throws on a range the schema would have refused', () => {
    expect(() => compileRanges(['9-1'], 65535, 'address')).toThrow(/range 9-1/);
    expect(() => compileRanges([256], 255, 'unit id')).toThrow(/0-255/);
    expect(() => compileRanges(['a-b'], 65535, 'address')).toThrow(/address "a-b" is not a number or a range/);
  });
});
