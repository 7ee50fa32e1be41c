// Modbus TCP frames built byte by byte from the specifications (Modbus Application Protocol
// v1.1b3, "MAP"; Modbus Messaging on TCP/IP Implementation Guide v1.0b, "TCP"), for the load
// tools beside this file. Deliberately not the agent's code: a tool that shares the parser under
// test cannot catch its mistakes.
import { Buffer } from 'node:buffer';

/** An ADU: the MBAP header (TCP 3.1.3) with the length computed from the PDU, then the PDU. */
export function adu(tid, unit, pdu) {
  const body = Buffer.from(pdu);
  const head = Buffer.alloc(7);
  head.writeUInt16BE(tid & 0xffff, 0);
  head.writeUInt16BE(0, 2);
  head.writeUInt16BE(body.length + 1, 4);
  head[6] = unit & 0xff;
  return Buffer.concat([head, body]);
}

export const u16 = (n) => [(n >> 8) & 0xff, n & 0xff];

/** MAP 6.3: read holding registers. */
export const readHolding = (tid, unit, address, count) => adu(tid, unit, [0x03, ...u16(address), ...u16(count)]);
/** MAP 6.6: write single register; a correct answer echoes the request. */
export const writeRegister = (tid, unit, address, value) => adu(tid, unit, [0x06, ...u16(address), ...u16(value)]);

/**
 * Splits a byte stream into ADUs by the MBAP length field. Returns the frames and the bytes left
 * over; throws on a header no Modbus server would send (a broken length).
 */
export function takeFrames(buf) {
  const frames = [];
  let off = 0;
  while (buf.length - off >= 6) {
    const length = buf.readUInt16BE(off + 4);
    if (length < 2 || length > 254) throw new Error(`MBAP length ${length} in an answer`);
    if (buf.length - off < 6 + length) break;
    frames.push(buf.subarray(off, off + 6 + length));
    off += 6 + length;
  }
  return { frames, rest: buf.subarray(off) };
}
