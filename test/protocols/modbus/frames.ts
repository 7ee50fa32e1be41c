// Test helpers: Modbus TCP request frames built byte by byte from the specification (not by the
// code under test), and a session context that keeps what the session alerts and records.
import type { ProtocolAlert, ProtocolRecord, SessionContext } from '../../../agent/protocols/types.js';

/** An ADU: MBAP header ([TCP] 3.1.3) with the length computed from the PDU, then the PDU. */
export function adu(tid: number, unit: number, pdu: readonly number[] | Buffer): Buffer {
  const body = Buffer.from(pdu);
  const head = Buffer.alloc(7);
  head.writeUInt16BE(tid & 0xffff, 0);
  head.writeUInt16BE(0, 2);
  head.writeUInt16BE(body.length + 1, 4);
  head[6] = unit;
  return Buffer.concat([head, body]);
}

const u16 = (n: number): number[] => [(n >> 8) & 0xff, n & 0xff];

/** 0x01-0x04: starting address, quantity. */
export const read = (tid: number, unit: number, fc: 1 | 2 | 3 | 4, address: number, count: number): Buffer => adu(tid, unit, [fc, ...u16(address), ...u16(count)]);
export const readHolding = (tid: number, unit: number, address: number, count: number): Buffer => read(tid, unit, 3, address, count);
export const writeCoil = (tid: number, unit: number, address: number, value: number): Buffer => adu(tid, unit, [0x05, ...u16(address), ...u16(value)]);
export const writeRegister = (tid: number, unit: number, address: number, value: number): Buffer => adu(tid, unit, [0x06, ...u16(address), ...u16(value)]);

export function writeCoils(tid: number, unit: number, address: number, bits: readonly number[], byteCount = Math.ceil(bits.length / 8), count = bits.length): Buffer {
  const bytes = new Array<number>(Math.ceil(bits.length / 8)).fill(0);
  bits.forEach((b, i) => {
    if (b) bytes[i >> 3] = (bytes[i >> 3] ?? 0) | (1 << (i & 7));
  });
  return adu(tid, unit, [0x0f, ...u16(address), ...u16(count), byteCount, ...bytes]);
}

export function writeRegisters(tid: number, unit: number, address: number, values: readonly number[], byteCount = 2 * values.length, count = values.length): Buffer {
  return adu(tid, unit, [0x10, ...u16(address), ...u16(count), byteCount, ...values.flatMap(u16)]);
}

export function readWriteRegisters(tid: number, unit: number, readAddress: number, readCount: number, writeAddress: number, values: readonly number[], byteCount = 2 * values.length, writeCount = values.length): Buffer {
  return adu(tid, unit, [0x17, ...u16(readAddress), ...u16(readCount), ...u16(writeAddress), ...u16(writeCount), byteCount, ...values.flatMap(u16)]);
}

export const maskWrite = (tid: number, unit: number, address: number, and: number, or: number): Buffer => adu(tid, unit, [0x16, ...u16(address), ...u16(and), ...u16(or)]);
export const readDeviceId = (tid: number, unit: number, code: number, object = 0): Buffer => adu(tid, unit, [0x2b, 0x0e, code, object]);

export interface FileSub {
  file: number;
  record: number;
  length: number;
  ref?: number;
  data?: number[];
}

export function readFileRecord(tid: number, unit: number, subs: readonly FileSub[], byteCount = 7 * subs.length): Buffer {
  return adu(tid, unit, [0x14, byteCount, ...subs.flatMap((s) => [s.ref ?? 6, ...u16(s.file), ...u16(s.record), ...u16(s.length)])]);
}

export function writeFileRecord(tid: number, unit: number, subs: readonly FileSub[], byteCount?: number): Buffer {
  const body = subs.flatMap((s) => [s.ref ?? 6, ...u16(s.file), ...u16(s.record), ...u16(s.length), ...(s.data ?? new Array<number>(s.length).fill(0)).flatMap(u16)]);
  return adu(tid, unit, [0x15, byteCount ?? body.length, ...body]);
}

/** A response ADU with the given PDU (for the device side). */
export const response = adu;

/** The exception response a request with these ids gets ([MAP] 7). */
export const exception = (tid: number, unit: number, fc: number, code: number): Buffer => adu(tid, unit, [fc | 0x80, code]);

export interface Collected extends SessionContext {
  alerts: ProtocolAlert[];
  records: ProtocolRecord[];
  clock: { t: number };
}

export function context(opts: { enforce?: boolean; device?: string; peer?: string } = {}): Collected {
  const alerts: ProtocolAlert[] = [];
  const records: ProtocolRecord[] = [];
  const clock = { t: 1_000_000 };
  return {
    device: opts.device ?? 'pump-01',
    peer: { address: opts.peer ?? '10.10.1.20', port: 50123 },
    target: { address: '10.20.0.12', port: 502 },
    enforce: opts.enforce ?? true,
    alert: (a) => alerts.push(a),
    record: (r) => records.push(r),
    now: () => clock.t,
    alerts,
    records,
    clock,
  };
}
