// Each public function's parser (Modbus Application Protocol v1.1b3, 6.1-6.21): valid requests
// with their reads and writes, the limits on both sides, and the malformed ones with the exception
// a correct device would give.
import { describe, expect, it } from 'vitest';
import { parseRequest, type ModbusRequest, type MalformedRequest } from '../../../agent/protocols/modbus/request.js';
import {
  adu,
  maskWrite,
  read,
  readDeviceId,
  readFileRecord,
  readWriteRegisters,
  writeCoil,
  writeCoils,
  writeFileRecord,
  writeRegister,
  writeRegisters,
} from './frames.js';

function ok(frame: Buffer): ModbusRequest {
  const r = parseRequest(frame);
  if (!r.ok) expect.fail(`malformed: ${r.reason}`);
  return r;
}

function malformed(frame: Buffer, exception: number, reason?: RegExp): MalformedRequest {
  const r = parseRequest(frame);
  if (r.ok) expect.fail(`parsed as ${r.name}, expected malformed`);
  expect(r.exception).toBe(exception);
  if (reason) expect(r.reason).toMatch(reason);
  return r;
}

describe('parseRequest: the head of every request', () => {
  it('reads the transaction id, the unit id and the function name', () => {
    expect(ok(read(0xbeef, 247, 3, 0, 1))).toMatchObject({ tid: 0xbeef, unit: 247, fc: 3, name: 'read-holding-registers', known: true });
  });
});

describe('6.1-6.4 reads: address, quantity', () => {
  const cases = [
    [1, 'read-coils', 'coils', 2000],
    [2, 'read-discrete-inputs', 'discreteInputs', 2000],
    [3, 'read-holding-registers', 'holdingRegisters', 125],
    [4, 'read-input-registers', 'inputRegisters', 125],
  ] as const;
  for (const [fc, name, table, max] of cases) {
    it(`${name}: quantity 1-${max}, address + quantity <= 65536`, () => {
      expect(ok(read(1, 1, fc, 100, 1))).toMatchObject({ name, reads: [{ table, address: 100, count: 1 }], writes: [] });
      expect(ok(read(1, 1, fc, 0, max)).reads).toEqual([{ table, address: 0, count: max }]);
      expect(ok(read(1, 1, fc, 65536 - max, max)).reads).toEqual([{ table, address: 65536 - max, count: max }]);
      expect(ok(read(1, 1, fc, 65535, 1)).reads).toEqual([{ table, address: 65535, count: 1 }]);
      malformed(read(1, 1, fc, 0, 0), 3, /quantity 0/);
      malformed(read(1, 1, fc, 0, max + 1), 3, new RegExp(`quantity ${max + 1}`));
      malformed(read(1, 1, fc, 0, 0xffff), 3);
      malformed(read(1, 1, fc, 65536 - max + 1, max), 2, /past address 65535/);
      malformed(read(1, 1, fc, 65535, 2), 2);
      // One byte short, one byte long.
      malformed(adu(1, 1, [fc, 0, 0, 0]), 3, /3 data bytes, not 4/);
      malformed(adu(1, 1, [fc, 0, 0, 0, 1, 0]), 3, /5 data bytes, not 4/);
      malformed(adu(1, 1, [fc]), 3);
    });
  }
});

describe('6.5 write single coil', () => {
  it('takes 0xFF00 (1) and 0x0000 (0) only', () => {
    expect(ok(writeCoil(1, 1, 17, 0xff00)).writes).toEqual([{ table: 'coils', address: 17, count: 1, values: [1] }]);
    expect(ok(writeCoil(1, 1, 65535, 0x0000)).writes).toEqual([{ table: 'coils', address: 65535, count: 1, values: [0] }]);
    for (const v of [0x0001, 0x00ff, 0xff01, 0xffff, 0x0100]) malformed(writeCoil(1, 1, 0, v), 3, /neither 0x0000 nor 0xFF00/);
    malformed(adu(1, 1, [5, 0, 0, 0xff]), 3);
    malformed(adu(1, 1, [5, 0, 0, 0xff, 0, 0]), 3);
  });
});

describe('6.6 write single register', () => {
  it('takes any value, exactly 4 data bytes', () => {
    expect(ok(writeRegister(1, 1, 40, 0xffff))).toMatchObject({ name: 'write-single-register', reads: [], writes: [{ table: 'holdingRegisters', address: 40, count: 1, values: [0xffff] }] });
    malformed(adu(1, 1, [6, 0, 40, 0]), 3);
    malformed(adu(1, 1, [6, 0, 40, 0, 1, 2]), 3);
  });
});

describe('functions without data: 0x07 (6.7), 0x0B (6.9), 0x0C (6.10), 0x11 (6.13)', () => {
  for (const [fc, name] of [[0x07, 'read-exception-status'], [0x0b, 'get-comm-event-counter'], [0x0c, 'get-comm-event-log'], [0x11, 'report-server-id']] as const) {
    it(`${name}: the function code alone`, () => {
      // The whole request is 8 bytes, MBAP header and function code: the length that made
      // libmodbus's modbus_reply read past its buffer (libmodbus #837). It is the length the
      // specification gives, so it is well-formed; the rules (no profile has these functions)
      // are what keep it from a device.
      const eight = adu(1, 1, [fc]);
      expect(eight.length).toBe(8);
      expect(ok(eight)).toMatchObject({ name, reads: [], writes: [] });
      malformed(adu(1, 1, [fc, 0]), 3, /1 data bytes, not 0/);
      malformed(adu(1, 1, [fc, ...new Array<number>(252).fill(0xff)]), 3);
    });
  }
});

describe('6.8 diagnostics: sub-function, data N x 2', () => {
  it('echo (0x0000) takes any even data; the others exactly one word', () => {
    expect(ok(adu(1, 1, [8, 0, 0]))).toMatchObject({ name: 'diagnostics', reads: [], writes: [] });
    ok(adu(1, 1, [8, 0, 0, 0xa5, 0x37]));
    ok(adu(1, 1, [8, 0, 0, ...new Array<number>(250).fill(1)]));
    ok(adu(1, 1, [8, 0, 1, 0xff, 0]));
    ok(adu(1, 1, [8, 0, 0x0a, 0, 0]));
    malformed(adu(1, 1, [8, 0, 0, 1]), 3, /sub-function 0 carries 1/);
    malformed(adu(1, 1, [8, 0, 1]), 3, /sub-function 1 carries 0/);
    malformed(adu(1, 1, [8, 0, 1, 0, 0, 0, 0]), 3);
    malformed(adu(1, 1, [8, 0]), 3, /not a sub-function/);
    malformed(adu(1, 1, [8]), 3);
  });
});

describe('6.11 write multiple coils: quantity 1-1968, byte count ceil(quantity / 8)', () => {
  it('unpacks the bits, first coil in the low bit', () => {
    const bits = [1, 0, 1, 1, 0, 0, 0, 0, 1, 1];
    expect(ok(writeCoils(1, 1, 20, bits)).writes).toEqual([{ table: 'coils', address: 20, count: 10, values: bits }]);
    expect(ok(writeCoils(1, 1, 0, [1])).writes[0]?.values).toEqual([1]);
    const max = new Array<number>(1968).fill(1);
    expect(ok(writeCoils(1, 1, 65536 - 1968, max)).writes[0]).toMatchObject({ address: 65536 - 1968, count: 1968 });
  });
  it('rejects a quantity outside 1-1968, a byte count that disagrees with it or with the frame, a range past 65535', () => {
    malformed(writeCoils(1, 1, 0, new Array<number>(1969).fill(0)), 3, /quantity 1969/);
    malformed(writeCoils(1, 1, 0, [], 0, 0), 3, /quantity 0/);
    malformed(writeCoils(1, 1, 0, new Array<number>(10).fill(1), 1), 3, /byte count 1 is not ceil\(10 \/ 8\)/);
    malformed(writeCoils(1, 1, 0, new Array<number>(10).fill(1), 3), 3);
    // Byte count agrees with the quantity, not with the bytes that follow it.
    malformed(Buffer.concat([writeCoils(1, 1, 0, new Array<number>(16).fill(1)).subarray(0, -1)]), 3);
    const long = writeCoils(1, 1, 0, new Array<number>(8).fill(1));
    malformed(adu(1, 1, [...long.subarray(7), 0]), 3, /disagrees/);
    malformed(writeCoils(1, 1, 65535, [1, 1]), 2, /past address 65535/);
    malformed(adu(1, 1, [0x0f, 0, 0, 0, 1]), 3, /fewer than its header/);
  });
});

describe('6.12 write multiple registers: quantity 1-123, byte count 2 x quantity', () => {
  it('reads the values', () => {
    expect(ok(writeRegisters(1, 1, 100, [1, 0xffff, 3])).writes).toEqual([{ table: 'holdingRegisters', address: 100, count: 3, values: [1, 0xffff, 3] }]);
    expect(ok(writeRegisters(1, 1, 65536 - 123, new Array<number>(123).fill(7))).writes[0]?.count).toBe(123);
  });
  it('rejects 124 registers, a byte count off by one either way, a frame longer or shorter than the count', () => {
    malformed(writeRegisters(1, 1, 0, new Array<number>(124).fill(0)), 3, /quantity 124/);
    malformed(writeRegisters(1, 1, 0, [1, 2], 3), 3, /byte count 3 is not 2 x 2/);
    malformed(writeRegisters(1, 1, 0, [1, 2], 5), 3);
    // Quantity and byte count agree, the values do not fill them.
    malformed(writeRegisters(1, 1, 0, [1, 2], 6, 3), 3, /disagrees/);
    malformed(adu(1, 1, [...writeRegisters(1, 1, 0, [1, 2]).subarray(7), 0, 0]), 3, /disagrees/);
    malformed(writeRegisters(1, 1, 65535, [1, 2]), 2);
    malformed(writeRegisters(1, 1, 0, [], 0, 0), 3, /quantity 0/);
  });
});

describe('6.14 read file record: byte count 0x07-0xF5, 7-byte sub-requests', () => {
  it('reads each sub-request as file records', () => {
    const r = ok(readFileRecord(1, 1, [{ file: 4, record: 1, length: 2 }, { file: 3, record: 9, length: 2 }]));
    expect(r.reads).toEqual([
      { table: 'fileRecords', file: 4, address: 1, count: 2 },
      { table: 'fileRecords', file: 3, address: 9, count: 2 },
    ]);
    ok(readFileRecord(1, 1, [{ file: 0xffff, record: 9999, length: 1 }]));
    // The answer must fit a PDU: 2 + (2 + 2 x 124) = 252 fits, 2 + (2 + 2 x 125) = 254 does not.
    ok(readFileRecord(1, 1, [{ file: 1, record: 0, length: 124 }]));
    malformed(readFileRecord(1, 1, [{ file: 1, record: 0, length: 125 }]), 3, /more than a 253-byte PDU/);
  });
  it('rejects a bad byte count, reference type, file, record range', () => {
    malformed(readFileRecord(1, 1, [{ file: 1, record: 0, length: 1 }], 6), 3, /outside 7-245/);
    malformed(adu(1, 1, [0x14, 0xf6, ...new Array<number>(0xf6).fill(0)]), 3, /outside 7-245/);
    malformed(readFileRecord(1, 1, [{ file: 1, record: 0, length: 1 }], 8), 3, /disagrees/);
    malformed(adu(1, 1, [0x14, 8, 6, 0, 1, 0, 0, 0, 1, 0]), 3, /whole number of 7-byte/);
    malformed(readFileRecord(1, 1, [{ file: 1, record: 0, length: 1, ref: 5 }]), 2, /reference type 5/);
    malformed(readFileRecord(1, 1, [{ file: 0, record: 0, length: 1 }]), 2, /file number 0/);
    malformed(readFileRecord(1, 1, [{ file: 1, record: 10000, length: 1 }]), 2, /past 9999/);
    malformed(readFileRecord(1, 1, [{ file: 1, record: 9999, length: 2 }]), 2);
    malformed(readFileRecord(1, 1, [{ file: 1, record: 0, length: 0 }]), 3, /record length 0/);
    malformed(adu(1, 1, [0x14]), 3, /no byte count/);
  });
});

describe('6.15 write file record: byte count 0x09-0xFB, sub-requests that fill it', () => {
  it('reads each sub-request and its data', () => {
    const r = ok(writeFileRecord(1, 1, [{ file: 4, record: 7, length: 3, data: [0x06af, 0x04be, 0x100d] }, { file: 5, record: 0, length: 1, data: [9] }]));
    expect(r.writes).toEqual([
      { table: 'fileRecords', file: 4, address: 7, count: 3, values: [0x06af, 0x04be, 0x100d] },
      { table: 'fileRecords', file: 5, address: 0, count: 1, values: [9] },
    ]);
  });
  it('rejects a byte count out of range or off the frame, a record length past the data, a truncated sub-request', () => {
    malformed(adu(1, 1, [0x15, 8, 6, 0, 1, 0, 0, 0, 0, 0]), 3, /outside 9-251/);
    malformed(writeFileRecord(1, 1, [{ file: 1, record: 0, length: 1 }], 10), 3, /disagrees/);
    // Record length 2, one word of data: the sub-request runs past the byte count.
    malformed(adu(1, 1, [0x15, 9, 6, 0, 1, 0, 0, 0, 2, 0, 1]), 3, /runs past the byte count/);
    // A whole sub-request, then 3 stray bytes: a header cut short.
    malformed(adu(1, 1, [0x15, 12, 6, 0, 1, 0, 0, 0, 1, 0, 1, 6, 0, 1]), 3, /inside a sub-request header/);
    malformed(writeFileRecord(1, 1, [{ file: 1, record: 0, length: 1, ref: 7 }]), 2, /reference type 7/);
    malformed(writeFileRecord(1, 1, [{ file: 1, record: 9999, length: 2 }]), 2);
  });
});

describe('6.16 mask write register: exactly 6 data bytes', () => {
  it('names the register and keeps the masks', () => {
    expect(ok(maskWrite(1, 1, 4, 0x00f2, 0x0025)).writes).toEqual([{ table: 'holdingRegisters', address: 4, count: 1, values: [], andMask: 0x00f2, orMask: 0x0025 }]);
    malformed(adu(1, 1, [0x16, 0, 4, 0, 0xf2, 0]), 3, /5 data bytes, not 6/);
    malformed(adu(1, 1, [0x16, 0, 4, 0, 0xf2, 0, 0x25, 0]), 3, /7 data bytes, not 6/);
  });
});

describe('6.17 read/write multiple registers: read 1-125, write 1-121, byte count 2 x write quantity', () => {
  it('reads both ranges', () => {
    const r = ok(readWriteRegisters(1, 1, 3, 6, 14, [0xff, 0xff, 0xff]));
    expect(r.reads).toEqual([{ table: 'holdingRegisters', address: 3, count: 6 }]);
    expect(r.writes).toEqual([{ table: 'holdingRegisters', address: 14, count: 3, values: [0xff, 0xff, 0xff] }]);
    expect(ok(readWriteRegisters(1, 1, 0, 125, 0, new Array<number>(121).fill(1))).writes[0]?.count).toBe(121);
  });
  it('never trusts the byte count: larger than the frame, smaller, or off the quantity (the libmodbus overflow)', () => {
    // Write quantity 1, byte count 0xff and 2 value bytes: the libmodbus crash input.
    malformed(readWriteRegisters(1, 1, 0, 1, 0, [1], 0xff, 1), 3, /byte count 255 is not 2 x 1/);
    // Quantity 121 with byte count 242, and only 2 value bytes sent.
    malformed(readWriteRegisters(1, 1, 0, 1, 0, [1], 242, 121), 3, /disagrees/);
    malformed(adu(1, 1, [...readWriteRegisters(1, 1, 0, 1, 0, [1]).subarray(7), 0]), 3, /disagrees/);
    malformed(readWriteRegisters(1, 1, 0, 126, 0, [1]), 3, /read quantity 126/);
    malformed(readWriteRegisters(1, 1, 0, 0, 0, [1]), 3, /read quantity 0/);
    malformed(readWriteRegisters(1, 1, 0, 1, 0, new Array<number>(122).fill(0)), 3, /write quantity 122/);
    malformed(readWriteRegisters(1, 1, 0, 1, 0, [], 0, 0), 3, /write quantity 0/);
    malformed(readWriteRegisters(1, 1, 65535, 2, 0, [1]), 2, /read 65535\+2/);
    malformed(readWriteRegisters(1, 1, 0, 1, 65535, [1, 2]), 2, /write 65535\+2/);
    malformed(adu(1, 1, [0x17, 0, 0, 0, 1, 0, 0, 0, 1]), 3, /fewer than its header/);
  });
});

describe('6.18 read FIFO queue', () => {
  it('is a read of the pointer register and the 31 after it', () => {
    expect(ok(adu(1, 1, [0x18, 0x04, 0xde])).reads).toEqual([{ table: 'holdingRegisters', address: 0x04de, count: 32 }]);
    expect(ok(adu(1, 1, [0x18, 0xff, 0xf0])).reads).toEqual([{ table: 'holdingRegisters', address: 0xfff0, count: 16 }]);
    malformed(adu(1, 1, [0x18, 0x04]), 3);
  });
});

describe('6.21 read device identification (0x2B / MEI 0x0E)', () => {
  it('takes codes 1-4 and any object id', () => {
    for (const code of [1, 2, 3, 4]) expect(ok(readDeviceId(1, 1, code, 0x80))).toMatchObject({ name: 'read-device-identification', known: true, reads: [], writes: [] });
    malformed(readDeviceId(1, 1, 0), 3, /code 0/);
    malformed(readDeviceId(1, 1, 5), 3, /code 5/);
    malformed(adu(1, 1, [0x2b, 0x0e, 1]), 3);
    malformed(adu(1, 1, [0x2b, 0x0e, 1, 0, 0]), 3);
    malformed(adu(1, 1, [0x2b]), 3, /no MEI type/);
  });
  it('treats another MEI type (CANopen 0x0D) as an unknown function', () => {
    expect(ok(adu(1, 1, [0x2b, 0x0d, 1, 2]))).toMatchObject({ known: false, name: 'encapsulated-interface-0x0d' });
  });
});

describe('function codes outside the public set', () => {
  it('parses an unknown code (user-defined 0x41, vendor 0x5A) as unknown, not malformed', () => {
    expect(ok(adu(1, 1, [0x41, 1, 2, 3]))).toMatchObject({ fc: 0x41, known: false, name: 'function-0x41', reads: [], writes: [] });
    expect(ok(adu(1, 1, [0x5a, 0]))).toMatchObject({ known: false, name: 'function-0x5a' });
  });
  it('rejects code 0 and the exception codes 0x80-0xFF with exception 01 (4.1)', () => {
    malformed(adu(1, 1, [0]), 1, /not a request/);
    malformed(adu(1, 1, [0x83, 2]), 1);
    malformed(adu(1, 1, [0xff]), 1);
  });
});
