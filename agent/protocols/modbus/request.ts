// One parser per public function code ([MAP] 6.1-6.21): what a request reads and writes, so that
// the rules can check every table and address it touches, or why it is malformed.
//
// A malformed request is one the function's definition rules out on its face: a length that is
// not the function's, a quantity outside its limits, a byte count that disagrees with the
// quantity or with the frame (the libmodbus 0x17 overflow came from trusting a byte count). The
// filter never forwards one; it answers with the exception code the specification's state
// diagram for that function gives (03 for a quantity or length, 02 for an address range that
// runs past 65535) so that the peer sees what a correct device would have said.
import { MBAP_HEADER_BYTES, EXCEPTION, FUNCTION_NAMES, MEI_READ_DEVICE_ID, hex2, type ExceptionCode, type Table } from './spec.js';

export interface ModbusRead {
  table: Table;
  /** 0-based, as on the wire; for file records, the record number. */
  address: number;
  count: number;
  /** File records only: the file number. */
  file?: number;
}

export interface ModbusWrite {
  table: Table;
  address: number;
  count: number;
  /** What is written: registers 0-65535, coils 0/1. Empty for a mask write (see the masks). */
  values: number[];
  file?: number;
  /** Mask Write Register ([MAP] 6.16): result = (current AND and) OR (or AND NOT and). */
  andMask?: number;
  orMask?: number;
}

interface RequestHead {
  fc: number;
  /** The public function's name (MODBUS_FUNCTIONS), or "function-0xNN" for one the filter does not know. */
  name: string;
  unit: number;
  tid: number;
}

export interface ModbusRequest extends RequestHead {
  ok: true;
  /** A public function the filter parses; an unknown one is allowed only by an entry without modbus rules. */
  known: boolean;
  reads: readonly ModbusRead[];
  writes: readonly ModbusWrite[];
}

export interface MalformedRequest extends RequestHead {
  ok: false;
  /** The exception the filter answers with ([MAP] 7). */
  exception: ExceptionCode;
  reason: string;
}

export type ParsedRequest = ModbusRequest | MalformedRequest;

const NONE: readonly never[] = Object.freeze([]);

/** The bytes after the function code: PDU data, as offsets into the ADU. */
const DATA = MBAP_HEADER_BYTES + 1;

/** Parses one whole ADU (as the framer hands it out: the MBAP length agrees with its size). */
export function parseRequest(adu: Buffer): ParsedRequest {
  const fc = adu[MBAP_HEADER_BYTES] ?? 0;
  /** PDU data bytes: after the function code. */
  const n = adu.length - DATA;
  const name = FUNCTION_NAMES[fc] ?? `function-${hex2(fc)}`;

  switch (fc) {
    case 0x01: // 6.1 Read Coils
    case 0x02: // 6.2 Read Discrete Inputs
    case 0x03: // 6.3 Read Holding Registers
    case 0x04: {
      // 6.4 Read Input Registers: starting address, quantity; 1-2000 bits, 1-125 registers.
      const wrong = exactly(adu, n, 4);
      if (wrong) return wrong;
      const address = adu.readUInt16BE(DATA);
      const count = adu.readUInt16BE(DATA + 2);
      const max = fc <= 0x02 ? 2000 : 125;
      if (count < 1 || count > max) return bad(adu, EXCEPTION.illegalDataValue, `${name} quantity ${count} is outside 1-${max} (${SECTION[fc]})`);
      // The state diagrams of 6.1-6.4: an address range past the table is exception 02.
      if (address + count > 0x10000) return bad(adu, EXCEPTION.illegalDataAddress, `${name} ${address}+${count} runs past address 65535 (${SECTION[fc]})`);
      return ok(adu, [{ table: READ_TABLE[fc - 1] ?? 'coils', address, count }], NONE);
    }
    case 0x05: {
      // 6.5 Write Single Coil: output address, value 0xFF00 (on) or 0x0000 (off), nothing else.
      const wrong = exactly(adu, n, 4);
      if (wrong) return wrong;
      const address = adu.readUInt16BE(DATA);
      const value = adu.readUInt16BE(DATA + 2);
      if (value !== 0xff00 && value !== 0x0000) return bad(adu, EXCEPTION.illegalDataValue, `write-single-coil value 0x${value.toString(16).padStart(4, '0')} is neither 0x0000 nor 0xFF00 (6.5)`);
      return ok(adu, NONE, [{ table: 'coils', address, count: 1, values: [value === 0xff00 ? 1 : 0] }]);
    }
    case 0x06: {
      // 6.6 Write Single Register: register address, value.
      const wrong = exactly(adu, n, 4);
      if (wrong) return wrong;
      return ok(adu, NONE, [{ table: 'holdingRegisters', address: adu.readUInt16BE(DATA), count: 1, values: [adu.readUInt16BE(DATA + 2)] }]);
    }
    case 0x07: // 6.7 Read Exception Status
    case 0x0b: // 6.9 Get Comm Event Counter
    case 0x0c: // 6.10 Get Comm Event Log
    case 0x11: // 6.13 Report Server ID
      // No data at all: the 8-byte 0x07 and 0x11 requests that crashed libmodbus servers end here.
      return exactly(adu, n, 0) ?? ok(adu, NONE, NONE);
    case 0x08: {
      // 6.8 Diagnostics: sub-function (2), data N x 2 bytes. Sub-function 0x0000 (Return Query
      // Data) echoes any data; every other sub-function of 6.8.1 carries exactly one word.
      if (n < 2) return bad(adu, EXCEPTION.illegalDataValue, `diagnostics carries ${n} data bytes, not a sub-function (6.8)`);
      const sub = adu.readUInt16BE(DATA);
      const data = n - 2;
      if (sub === 0 ? data % 2 !== 0 : data !== 2) return bad(adu, EXCEPTION.illegalDataValue, `diagnostics sub-function ${sub} carries ${data} data bytes (6.8.1: ${sub === 0 ? 'N x 2' : '2'})`);
      return ok(adu, NONE, NONE);
    }
    case 0x0f: {
      // 6.11 Write Multiple Coils: address, quantity 1-1968, byte count = ceil(quantity / 8), values.
      if (n < 5) return bad(adu, EXCEPTION.illegalDataValue, `write-multiple-coils carries ${n} data bytes, fewer than its header's 5 (6.11)`);
      const address = adu.readUInt16BE(DATA);
      const count = adu.readUInt16BE(DATA + 2);
      const byteCount = adu[DATA + 4] ?? 0;
      if (count < 1 || count > 1968) return bad(adu, EXCEPTION.illegalDataValue, `write-multiple-coils quantity ${count} is outside 1-1968 (6.11)`);
      if (byteCount !== Math.ceil(count / 8)) return bad(adu, EXCEPTION.illegalDataValue, `write-multiple-coils byte count ${byteCount} is not ceil(${count} / 8) (6.11)`);
      if (n !== 5 + byteCount) return bad(adu, EXCEPTION.illegalDataValue, `write-multiple-coils byte count ${byteCount} disagrees with the ${n - 5} value bytes sent (6.11)`);
      if (address + count > 0x10000) return bad(adu, EXCEPTION.illegalDataAddress, `write-multiple-coils ${address}+${count} runs past address 65535 (6.11)`);
      const values = new Array<number>(count);
      for (let i = 0; i < count; i++) values[i] = ((adu[DATA + 5 + (i >> 3)] ?? 0) >> (i & 7)) & 1;
      return ok(adu, NONE, [{ table: 'coils', address, count, values }]);
    }
    case 0x10: {
      // 6.12 Write Multiple Registers: address, quantity 1-123, byte count = 2 x quantity, values.
      if (n < 5) return bad(adu, EXCEPTION.illegalDataValue, `write-multiple-registers carries ${n} data bytes, fewer than its header's 5 (6.12)`);
      const address = adu.readUInt16BE(DATA);
      const count = adu.readUInt16BE(DATA + 2);
      const byteCount = adu[DATA + 4] ?? 0;
      if (count < 1 || count > 123) return bad(adu, EXCEPTION.illegalDataValue, `write-multiple-registers quantity ${count} is outside 1-123 (6.12)`);
      if (byteCount !== 2 * count) return bad(adu, EXCEPTION.illegalDataValue, `write-multiple-registers byte count ${byteCount} is not 2 x ${count} (6.12)`);
      if (n !== 5 + byteCount) return bad(adu, EXCEPTION.illegalDataValue, `write-multiple-registers byte count ${byteCount} disagrees with the ${n - 5} value bytes sent (6.12)`);
      if (address + count > 0x10000) return bad(adu, EXCEPTION.illegalDataAddress, `write-multiple-registers ${address}+${count} runs past address 65535 (6.12)`);
      return ok(adu, NONE, [{ table: 'holdingRegisters', address, count, values: words(adu, DATA + 5, count) }]);
    }
    case 0x14:
      return readFileRecord(adu, n);
    case 0x15:
      return writeFileRecord(adu, n);
    case 0x16: {
      // 6.16 Mask Write Register: address, AND mask, OR mask.
      const wrong = exactly(adu, n, 6);
      if (wrong) return wrong;
      return ok(adu, NONE, [{ table: 'holdingRegisters', address: adu.readUInt16BE(DATA), count: 1, values: [], andMask: adu.readUInt16BE(DATA + 2), orMask: adu.readUInt16BE(DATA + 4) }]);
    }
    case 0x17: {
      // 6.17 Read/Write Multiple registers: read address, read quantity 1-125, write address,
      // write quantity 1-121, write byte count = 2 x write quantity, the values; the byte count is
      // checked against both the quantity and the frame, never trusted.
      if (n < 9) return bad(adu, EXCEPTION.illegalDataValue, `read-write-multiple-registers carries ${n} data bytes, fewer than its header's 9 (6.17)`);
      const readAddress = adu.readUInt16BE(DATA);
      const readCount = adu.readUInt16BE(DATA + 2);
      const writeAddress = adu.readUInt16BE(DATA + 4);
      const writeCount = adu.readUInt16BE(DATA + 6);
      const byteCount = adu[DATA + 8] ?? 0;
      if (readCount < 1 || readCount > 125) return bad(adu, EXCEPTION.illegalDataValue, `read-write-multiple-registers read quantity ${readCount} is outside 1-125 (6.17)`);
      if (writeCount < 1 || writeCount > 121) return bad(adu, EXCEPTION.illegalDataValue, `read-write-multiple-registers write quantity ${writeCount} is outside 1-121 (6.17)`);
      if (byteCount !== 2 * writeCount) return bad(adu, EXCEPTION.illegalDataValue, `read-write-multiple-registers byte count ${byteCount} is not 2 x ${writeCount} (6.17)`);
      if (n !== 9 + byteCount) return bad(adu, EXCEPTION.illegalDataValue, `read-write-multiple-registers byte count ${byteCount} disagrees with the ${n - 9} value bytes sent (6.17)`);
      if (readAddress + readCount > 0x10000) return bad(adu, EXCEPTION.illegalDataAddress, `read-write-multiple-registers read ${readAddress}+${readCount} runs past address 65535 (6.17)`);
      if (writeAddress + writeCount > 0x10000) return bad(adu, EXCEPTION.illegalDataAddress, `read-write-multiple-registers write ${writeAddress}+${writeCount} runs past address 65535 (6.17)`);
      return ok(
        adu,
        [{ table: 'holdingRegisters', address: readAddress, count: readCount }],
        [{ table: 'holdingRegisters', address: writeAddress, count: writeCount, values: words(adu, DATA + 9, writeCount) }],
      );
    }
    case 0x18: {
      // 6.18 Read FIFO Queue: the FIFO pointer address. The answer is the count register there and
      // up to 31 queued registers; the queue is taken to sit in the registers that follow it (as
      // on the Modicon controllers that defined the function), so the read is checked as 32.
      const wrong = exactly(adu, n, 2);
      if (wrong) return wrong;
      const address = adu.readUInt16BE(DATA);
      return ok(adu, [{ table: 'holdingRegisters', address, count: Math.min(32, 0x10000 - address) }], NONE);
    }
    case 0x2b: {
      // 6.19-6.21 Encapsulated Interface Transport: the MEI type says which. Only 0x0E (Read
      // Device Identification) is public here; CANopen (0x0D) and others are unknown functions.
      if (n < 1) return bad(adu, EXCEPTION.illegalDataValue, 'encapsulated interface transport carries no MEI type (6.19)');
      const mei = adu[DATA] ?? 0;
      if (mei !== MEI_READ_DEVICE_ID) return unknown(adu, `encapsulated-interface-${hex2(mei)}`);
      // 6.21: MEI type, Read Device ID code 1-4, object id (any: the device answers 02 for an unknown one).
      const wrong = exactly(adu, n, 3);
      if (wrong) return wrong;
      const code = adu[DATA + 1] ?? 0;
      if (code < 1 || code > 4) return bad(adu, EXCEPTION.illegalDataValue, `read-device-identification code ${code} is outside 1-4 (6.21)`);
      return ok(adu, NONE, NONE);
    }
    default:
      // 4.1: function code 0 is not valid, and 128-255 are exception responses, not requests.
      if (fc === 0 || fc >= 0x80) return bad(adu, EXCEPTION.illegalFunction, `function code ${hex2(fc)} is not a request (Modbus Application Protocol 4.1)`);
      return unknown(adu, name);
  }
}

const READ_TABLE: readonly Table[] = ['coils', 'discreteInputs', 'holdingRegisters', 'inputRegisters'];

const SECTION: Partial<Record<number, string>> = {
  0x01: '6.1', 0x02: '6.2', 0x03: '6.3', 0x04: '6.4', 0x05: '6.5', 0x06: '6.6', 0x07: '6.7', 0x0b: '6.9', 0x0c: '6.10',
  0x11: '6.13', 0x16: '6.16', 0x18: '6.18', 0x2b: '6.21',
};

function words(adu: Buffer, at: number, count: number): number[] {
  const values = new Array<number>(count);
  for (let i = 0; i < count; i++) values[i] = adu.readUInt16BE(at + 2 * i);
  return values;
}

/** Undefined when the function's data is `bytes` long; else the malformed request. */
function exactly(adu: Buffer, n: number, bytes: number): MalformedRequest | undefined {
  if (n === bytes) return undefined;
  const fc = adu[MBAP_HEADER_BYTES] ?? 0;
  return bad(adu, EXCEPTION.illegalDataValue, `${FUNCTION_NAMES[fc] ?? hex2(fc)} carries ${n} data bytes, not ${bytes} (Modbus Application Protocol ${SECTION[fc] ?? ''})`);
}

function ok(adu: Buffer, reads: readonly ModbusRead[], writes: readonly ModbusWrite[]): ModbusRequest {
  const fc = adu[MBAP_HEADER_BYTES] ?? 0;
  return { ok: true, known: true, fc, name: FUNCTION_NAMES[fc] ?? '', unit: adu[6] ?? 0, tid: adu.readUInt16BE(0), reads, writes };
}

function unknown(adu: Buffer, name: string): ModbusRequest {
  return { ok: true, known: false, fc: adu[MBAP_HEADER_BYTES] ?? 0, name, unit: adu[6] ?? 0, tid: adu.readUInt16BE(0), reads: NONE, writes: NONE };
}

function bad(adu: Buffer, exception: ExceptionCode, reason: string): MalformedRequest {
  const fc = adu[MBAP_HEADER_BYTES] ?? 0;
  return { ok: false, fc, name: FUNCTION_NAMES[fc] ?? `function-${hex2(fc)}`, unit: adu[6] ?? 0, tid: adu.readUInt16BE(0), exception, reason };
}

/** 6.14/6.15: reference type 6; file 1-65535; records 0-9999 (0x270F), a sub-request's within them. */
const REFERENCE_TYPE = 6;
const RECORDS = 10000;

function subRequestHead(adu: Buffer, at: number, name: string, section: string): { file: number; address: number; count: number } | MalformedRequest {
  const ref = adu[at] ?? 0;
  const file = adu.readUInt16BE(at + 1);
  const address = adu.readUInt16BE(at + 3);
  const count = adu.readUInt16BE(at + 5);
  // The state diagrams of 6.14/6.15 give 02 for reference type, file and record number, range.
  if (ref !== REFERENCE_TYPE) return bad(adu, EXCEPTION.illegalDataAddress, `${name} reference type ${ref} is not 6 (${section})`);
  if (file === 0) return bad(adu, EXCEPTION.illegalDataAddress, `${name} file number 0 is outside 1-65535 (${section})`);
  if (count === 0) return bad(adu, EXCEPTION.illegalDataValue, `${name} record length 0 (${section})`);
  if (address + count > RECORDS) return bad(adu, EXCEPTION.illegalDataAddress, `${name} records ${address}+${count} run past 9999 (${section})`);
  return { file, address, count };
}

/**
 * 6.14 Read File Record: byte count 0x07-0xF5, then 7-byte sub-requests (reference type, file,
 * record number, record length). The answer (2 bytes, then 2 + 2 x length per sub-request) must
 * fit in a PDU as well.
 */
function readFileRecord(adu: Buffer, n: number): ParsedRequest {
  if (n < 1) return bad(adu, EXCEPTION.illegalDataValue, 'read-file-record carries no byte count (6.14)');
  const byteCount = adu[DATA] ?? 0;
  if (byteCount < 0x07 || byteCount > 0xf5) return bad(adu, EXCEPTION.illegalDataValue, `read-file-record byte count ${byteCount} is outside 7-245 (6.14)`);
  if (n !== 1 + byteCount) return bad(adu, EXCEPTION.illegalDataValue, `read-file-record byte count ${byteCount} disagrees with the ${n - 1} bytes sent (6.14)`);
  if (byteCount % 7 !== 0) return bad(adu, EXCEPTION.illegalDataValue, `read-file-record byte count ${byteCount} is not a whole number of 7-byte sub-requests (6.14)`);
  const reads: ModbusRead[] = [];
  let answer = 2;
  for (let at = DATA + 1; at < adu.length; at += 7) {
    const sub = subRequestHead(adu, at, 'read-file-record', '6.14');
    if ('ok' in sub) return sub;
    answer += 2 + 2 * sub.count;
    reads.push({ table: 'fileRecords', file: sub.file, address: sub.address, count: sub.count });
  }
  if (answer > 253) return bad(adu, EXCEPTION.illegalDataValue, `read-file-record asks for an answer of ${answer} bytes, more than a 253-byte PDU (6.14)`);
  return ok(adu, reads, NONE);
}

/**
 * 6.15 Write File Record: byte count 0x09-0xFB, then sub-requests (reference type, file, record
 * number, record length, 2 x length bytes of data) that fill it exactly.
 */
function writeFileRecord(adu: Buffer, n: number): ParsedRequest {
  if (n < 1) return bad(adu, EXCEPTION.illegalDataValue, 'write-file-record carries no byte count (6.15)');
  const byteCount = adu[DATA] ?? 0;
  if (byteCount < 0x09 || byteCount > 0xfb) return bad(adu, EXCEPTION.illegalDataValue, `write-file-record byte count ${byteCount} is outside 9-251 (6.15)`);
  if (n !== 1 + byteCount) return bad(adu, EXCEPTION.illegalDataValue, `write-file-record byte count ${byteCount} disagrees with the ${n - 1} bytes sent (6.15)`);
  const writes: ModbusWrite[] = [];
  let at = DATA + 1;
  while (at < adu.length) {
    if (adu.length - at < 7) return bad(adu, EXCEPTION.illegalDataValue, `write-file-record ends inside a sub-request header (6.15)`);
    const sub = subRequestHead(adu, at, 'write-file-record', '6.15');
    if ('ok' in sub) return sub;
    at += 7;
    if (adu.length - at < 2 * sub.count) return bad(adu, EXCEPTION.illegalDataValue, `write-file-record record length ${sub.count} runs past the byte count (6.15)`);
    writes.push({ table: 'fileRecords', file: sub.file, address: sub.address, count: sub.count, values: words(adu, at, sub.count) });
    at += 2 * sub.count;
  }
  return ok(adu, NONE, writes);
}
