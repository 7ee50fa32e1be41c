#!/usr/bin/env node
// A fast Modbus TCP device for bench/modbus-proxy.ts: a raw responder with no library between the
// socket and the table, so that the device costs as little as possible on both paths and the
// hop being measured shows. It answers read-holding-registers (03) from a table of 65,536
// registers (register i holds i at start) and write-single-register (06) by storing the value and
// echoing the request ([MAP] 6.3, 6.6); any other function gets exception 01. TCP_NODELAY is on.
//   node bench/modbus-device.mjs PORT      prints {"listening":PORT} once it listens
import { Buffer } from 'node:buffer';
import { createServer } from 'node:net';

const port = Number(process.argv[2]);
const regs = new Uint16Array(65536);
for (let i = 0; i < regs.length; i++) regs[i] = i;

/** The answer to one request ADU (a view valid during the call). */
function answer(adu) {
  const fc = adu[7];
  if (fc === 0x03 && adu.length === 12) {
    const address = adu.readUInt16BE(8);
    const count = adu.readUInt16BE(10);
    if (count >= 1 && count <= 125 && address + count <= 65536) {
      const out = Buffer.allocUnsafe(9 + 2 * count);
      adu.copy(out, 0, 0, 7);
      out.writeUInt16BE(3 + 2 * count, 4);
      out[7] = 0x03;
      out[8] = 2 * count;
      for (let i = 0; i < count; i++) out.writeUInt16BE(regs[address + i], 9 + 2 * i);
      return out;
    }
  } else if (fc === 0x06 && adu.length === 12) {
    regs[adu.readUInt16BE(8)] = adu.readUInt16BE(10);
    return Buffer.from(adu);
  }
  const out = Buffer.allocUnsafe(9);
  adu.copy(out, 0, 0, 7);
  out.writeUInt16BE(3, 4);
  out[7] = (fc | 0x80) & 0xff;
  out[8] = fc === 0x03 || fc === 0x06 ? 0x03 : 0x01;
  return out;
}

const server = createServer({ noDelay: true }, (s) => {
  s.setNoDelay(true);
  let rest = Buffer.alloc(0);
  s.on('data', (chunk) => {
    let buf = rest.length > 0 ? Buffer.concat([rest, chunk]) : chunk;
    const out = [];
    while (buf.length >= 6) {
      const n = 6 + buf.readUInt16BE(4);
      if (buf.length < n) break;
      out.push(answer(buf.subarray(0, n)));
      buf = buf.subarray(n);
    }
    rest = buf.length > 0 ? Buffer.from(buf) : Buffer.alloc(0);
    if (out.length === 1) s.write(out[0]);
    else if (out.length > 1) s.write(Buffer.concat(out));
  });
  s.on('error', () => s.destroy());
});
server.listen(port, '127.0.0.1', () => process.stdout.write(`${JSON.stringify({ listening: port })}\n`));
process.on('SIGTERM', () => process.exit(0));
