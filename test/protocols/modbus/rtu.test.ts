// RTU framing (Modbus over Serial Line v1.02): the CRC against frames published with theirs,
// the MBAP <-> RTU conversion, the answer length of each function, and t3.5. The bus itself
// runs against a real serial line (a pseudo-terminal pair) in rtu-gateway.test.ts.
import { describe, expect, it } from 'vitest';
import { answerLength, crc16, crcOk, mbapFromRtu, rtuFromMbap, silenceMs } from '../../../agent/protocols/modbus/rtu.js';
import { adu, readDeviceId, readHolding, writeRegister } from './frames.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

/** The whole length answerLength gives once it has every byte of `frame`, fed one byte more each time. */
function lengthOf(frame: Buffer, request: Buffer): { known: number | 'silence' | undefined; after: number } {
  for (let n = 0; n <= frame.length; n++) {
    const r = answerLength(frame, n, request);
    if (r !== undefined) return { known: r, after: n };
  }
  return { known: undefined, after: frame.length };
}

describe('RTU frames', () => {
  it('CRC-16 (Serial Line 6.2.2) of frames whose CRC is known, low byte first on the wire', () => {
    // Read holding registers 0-9 of device 1, and of 0-0: the usual worked examples.
    expect(crc16(hex('01 03 00 00 00 0a'))).toBe(0xcdc5);
    expect(crc16(hex('01 03 00 00 00 01'))).toBe(0x0a84);
    // Serial Line 6.2.2's own example: 02 07, CRC 41 12 on the wire.
    expect(crc16(hex('02 07'))).toBe(0x1241);
    expect(crcOk(hex('01 03 00 00 00 0a c5 cd'))).toBe(true);
    expect(crcOk(hex('01 03 00 00 00 0a cd c5'))).toBe(false);
    expect(crcOk(hex('01 03 00'))).toBe(false);
  });

  it('an MBAP request becomes unit + PDU + CRC, and the answer takes back the transaction id', () => {
    const req = readHolding(0xbeef, 1, 0, 10);
    expect(rtuFromMbap(req).toString('hex')).toBe('01030000000ac5cd');
    const answer = hex('01 03 04 00 2a 00 2b');
    const frame = Buffer.concat([answer, Buffer.from([0, 0])]);
    frame.writeUInt16LE(crc16(answer), answer.length);
    expect(mbapFromRtu(0xbeef, frame)).toEqual(adu(0xbeef, 1, [0x03, 0x04, 0x00, 0x2a, 0x00, 0x2b]));
  });

  it('knows each answer\'s length from its function code and byte count, byte by byte', () => {
    const read = rtuFromMbap(readHolding(1, 3, 0, 2));
    const cases: [string, Buffer, Buffer, number | 'silence'][] = [
      ['read holding registers', hex('03 03 04 00 01 00 02 ff ff'), read, 9],
      ['an exception', hex('03 83 02 ff ff'), read, 5],
      ['write single register (echo)', hex('03 06 00 0a 00 2a ff ff'), rtuFromMbap(writeRegister(1, 3, 10, 42)), 8],
      ['write multiple registers', hex('03 10 00 0a 00 02 ff ff'), read, 8],
      ['read exception status', hex('03 07 6d ff ff'), read, 5],
      ['get comm event counter', hex('03 0b 00 00 01 08 ff ff'), read, 8],
      ['mask write register', hex('03 16 00 04 00 f2 00 25 ff ff'), read, 10],
      ['diagnostics: as long as the request', hex('03 08 00 00 a5 37 12 34 ff ff'), hex('03 08 00 00 a5 37 12 34 ff ff'), 10],
      ['read FIFO queue: a two-byte count', hex('03 18 00 06 00 02 01 b8 12 84 ff ff'), read, 12],
      ['report server id', hex('03 11 03 01 ff 00 ff ff'), read, 8],
      ['a vendor function: framed by silence', hex('03 41 01 02 03'), read, 'silence'],
    ];
    for (const [what, frame, request, length] of cases) expect(lengthOf(frame, request).known, what).toBe(length);
    // Not before the bytes that say it: a read's byte count is its third byte.
    expect(answerLength(hex('03 03'), 2, read)).toBeUndefined();
    expect(answerLength(hex('03 03 04'), 3, read)).toBe(9);
  });

  it('reads a device identification answer object by object', () => {
    // MEI 0x0E, code 1, conformity 0x01, no more, next 0, three objects: "ACME", "X1", "1.0".
    const objects = [0x00, 4, ...Buffer.from('ACME'), 0x01, 2, ...Buffer.from('X1'), 0x02, 3, ...Buffer.from('1.0')];
    const frame = Buffer.from([0x03, 0x2b, 0x0e, 0x01, 0x01, 0x00, 0x00, 0x03, ...objects, 0xff, 0xff]);
    const request = rtuFromMbap(readDeviceId(1, 3, 1));
    for (let n = 0; n < 8 + 2 + 4 + 2 + 2 + 2; n++) expect(answerLength(frame, n, request), `${n} bytes`).toBeUndefined();
    expect(answerLength(frame, frame.length, request)).toBe(frame.length);
    // Another MEI type (CANopen, 0x0D) has no length to read.
    expect(answerLength(hex('03 2b 0d 00'), 4, request)).toBe('silence');
  });

  it('t3.5 is 3.5 characters up to 19200 baud, then 1.75 ms (Serial Line 2.5.1.1)', () => {
    expect(silenceMs({ baudRate: 9600, parity: 'even', stopBits: 1 })).toBeCloseTo((3.5 * 11 * 1000) / 9600, 6);
    expect(silenceMs({ baudRate: 19200, parity: 'none', stopBits: 2 })).toBeCloseTo((3.5 * 11 * 1000) / 19200, 6);
    expect(silenceMs({ baudRate: 19200, parity: 'none', stopBits: 1 })).toBeCloseTo((3.5 * 10 * 1000) / 19200, 6);
    expect(silenceMs({ baudRate: 38400, parity: 'even', stopBits: 1 })).toBe(1.75);
    expect(silenceMs({ baudRate: 115200, parity: 'none', stopBits: 2 })).toBe(1.75);
  });
});
