// Fuzzing the session with fast-check: mutated valid requests, random PDUs, the inputs that
// crashed libmodbus servers, and garbage, cut into random chunks, through a session with a
// restrictive rule set, with a device that answers what reaches it. Whatever comes in:
//   - the session never throws;
//   - every buffer it sends the device is one whole ADU that the rules allow, judged twice: by
//     re-parsing it with the filter's own parser and checker, and by an oracle written here from
//     the specification, which shares no code with the filter;
//   - buffered() never exceeds its bound, and the session never closes because of the device.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseRequest } from '../../../agent/protocols/modbus/request.js';
import { ModbusChecker, type ModbusRuleSet } from '../../../agent/protocols/modbus/rules.js';
import { createModbusSession, modbusBufferBound } from '../../../agent/protocols/modbus/session.js';
import { ModbusRulesSchema } from '../../../agent/protocols/schema.js';
import type { SessionOutput } from '../../../agent/protocols/types.js';
import { adu, context, maskWrite, read, readDeviceId, readFileRecord, readWriteRegisters, writeCoil, writeCoils, writeFileRecord, writeRegister, writeRegisters } from './frames.js';

/**
 * Entry A: read-only, units 1 and 255, holding registers 0-99 and coils 0-15 (other tables whole).
 * Entry B: unit 1 may write holding registers 10-19 with 0x06 and 0x17, and read 0-9 with 0x17.
 */
const RULES: ModbusRuleSet[] = [
  ModbusRulesSchema.parse({ profile: 'read-only', unitIds: [1, 255], read: { holdingRegisters: ['0-99'], coils: ['0-15'] } }),
  ModbusRulesSchema.parse({ functions: ['write-single-register', 'read-write-multiple-registers'], unitIds: [1], read: { holdingRegisters: ['0-9'] }, write: { holdingRegisters: ['10-19'] } }),
];
const MAX_PENDING = 4;

/** The oracle: whether these bytes are one request that entry A or entry B allows, from the specification alone. */
function oracleAllows(b: Buffer): string | true {
  if (b.length < 8 || b.length > 260) return `size ${b.length}`;
  const length = (b[4]! << 8) | b[5]!;
  if (b[2] !== 0 || b[3] !== 0) return 'protocol id';
  if (length + 6 !== b.length || length < 2 || length > 254) return `length field ${length} for ${b.length} bytes`;
  const unit = b[6]!;
  const fc = b[7]!;
  const pdu = b.length - 7;
  const w = (i: number) => (b[7 + i]! << 8) | b[8 + i]!;
  const unitA = unit === 1 || unit === 255;
  switch (fc) {
    case 1: // coils 0-15, 1-2000 bits
    case 2: // discrete inputs, whole table
    case 3: // holding registers 0-99
    case 4: {
      // input registers, whole table
      if (!unitA || pdu !== 5) return `fc ${fc} unit ${unit} pdu ${pdu}`;
      const [address, count] = [w(1), w(3)];
      const max = fc <= 2 ? 2000 : 125;
      const end = fc === 1 ? 16 : fc === 3 ? 100 : 65536;
      return count >= 1 && count <= max && address + count <= end ? true : `fc ${fc} ${address}+${count}`;
    }
    case 0x2b:
      return unitA && pdu === 4 && b[8] === 0x0e && b[9]! >= 1 && b[9]! <= 4 ? true : 'device identification';
    case 0x06:
      return unit === 1 && pdu === 5 && w(1) >= 10 && w(1) <= 19 ? true : `write-single-register unit ${unit} address ${w(1)}`;
    case 0x17: {
      if (unit !== 1 || pdu < 10) return '0x17 head';
      const [ra, rq, wa, wq, bc] = [w(1), w(3), w(5), w(7), b[16]!];
      const ok = rq >= 1 && rq <= 125 && ra + rq <= 10 && wq >= 1 && wq <= 121 && wa >= 10 && wa + wq <= 20 && bc === 2 * wq && pdu === 10 + bc;
      return ok ? true : `0x17 read ${ra}+${rq} write ${wa}+${wq} bc ${bc} pdu ${pdu}`;
    }
    default:
      return `function ${fc}`;
  }
}

// ---------------------------------------------------------------------------------------------
// Frames

const word = fc.oneof(
  { arbitrary: fc.integer({ min: 0, max: 0xffff }), weight: 3 },
  { arbitrary: fc.constantFrom(0, 1, 2, 9, 10, 11, 15, 16, 19, 20, 99, 100, 120, 121, 122, 123, 124, 125, 126, 1968, 1969, 2000, 2001, 65411, 65535), weight: 2 },
);
const small = fc.integer({ min: 0, max: 130 });
const unit = fc.oneof(fc.constantFrom(0, 1, 2, 255), fc.integer({ min: 0, max: 255 }));
const tid = fc.integer({ min: 0, max: 0xffff });
const regs = (max: number) => fc.array(fc.integer({ min: 0, max: 0xffff }), { minLength: 0, maxLength: max });

/** Requests as the specification builds them, with parameters at and around their limits. */
const valid = fc.oneof(
  fc.tuple(tid, unit, fc.constantFrom<1 | 2 | 3 | 4>(1, 2, 3, 4), fc.oneof(small, word), fc.oneof(small, word)).map(([t, u, f, a, q]) => read(t, u, f, a, q)),
  fc.tuple(tid, unit, fc.oneof(small, word), fc.constantFrom(0, 0xff00, 1, 0xffff)).map(([t, u, a, v]) => writeCoil(t, u, a, v)),
  fc.tuple(tid, unit, fc.oneof(small, word), word).map(([t, u, a, v]) => writeRegister(t, u, a, v)),
  fc.tuple(tid, unit, fc.oneof(small, word), fc.array(fc.integer({ min: 0, max: 1 }), { maxLength: 2000 })).map(([t, u, a, bits]) => writeCoils(t, u, a, bits)),
  fc.tuple(tid, unit, fc.oneof(small, word), regs(124)).map(([t, u, a, v]) => writeRegisters(t, u, a, v)),
  fc.tuple(tid, unit, fc.oneof(small, word), fc.oneof(small, word), fc.oneof(small, word), regs(122)).map(([t, u, ra, rq, wa, v]) => readWriteRegisters(t, u, ra, rq, wa, v)),
  fc.tuple(tid, unit, word, word, word).map(([t, u, a, and, or]) => maskWrite(t, u, a, and, or)),
  fc.tuple(tid, unit, fc.integer({ min: 0, max: 5 }), fc.integer({ min: 0, max: 255 })).map(([t, u, code, obj]) => readDeviceId(t, u, code, obj)),
  fc.tuple(tid, unit, fc.constantFrom(0x07, 0x0b, 0x0c, 0x11, 0x18, 0x08, 0x2b, 0x41, 0x5a, 0x00, 0x80, 0x83, 0xff)).map(([t, u, f]) => adu(t, u, [f])),
  fc.tuple(tid, unit, fc.array(fc.record({ file: word, record: fc.oneof(small, word), length: fc.integer({ min: 0, max: 130 }), ref: fc.constantFrom(6, 6, 6, 5) }), { minLength: 1, maxLength: 5 })).map(([t, u, subs]) => readFileRecord(t, u, subs)),
  fc.tuple(tid, unit, fc.array(fc.record({ file: word, record: fc.oneof(small, word), length: fc.integer({ min: 0, max: 20 }), ref: fc.constantFrom(6, 6, 6, 5) }), { minLength: 1, maxLength: 4 })).map(([t, u, subs]) => writeFileRecord(t, u, subs)),
).filter((b) => b.length <= 260);

/** Requests at the edges of what the rules allow, so that forwarding, holding and pairing run often. */
const near = fc.oneof(
  fc.tuple(tid, fc.constantFrom(1, 255, 2), fc.constantFrom<1 | 2 | 3 | 4>(1, 2, 3, 4), fc.integer({ min: 0, max: 20 }), fc.integer({ min: 0, max: 20 })).map(([t, u, f, a, q]) => read(t, u, f, a, q)),
  fc.tuple(tid, fc.constantFrom(1, 255), fc.integer({ min: 80, max: 101 }), fc.integer({ min: 1, max: 21 })).map(([t, u, a, q]) => read(t, u, 3, a, q)),
  fc.tuple(tid, fc.constantFrom(1, 1, 255), fc.integer({ min: 8, max: 21 }), word).map(([t, u, a, v]) => writeRegister(t, u, a, v)),
  fc.tuple(tid, fc.constantFrom(1, 1, 2), fc.integer({ min: 0, max: 10 }), fc.integer({ min: 0, max: 11 }), fc.integer({ min: 8, max: 20 }), regs(12)).map(([t, u, ra, rq, wa, v]) => readWriteRegisters(t, u, ra, rq, wa, v)),
  fc.tuple(tid, fc.constantFrom(1, 255), fc.integer({ min: 0, max: 5 })).map(([t, u, code]) => readDeviceId(t, u, code)),
);

/** A valid frame changed: bytes overwritten, the PDU cut or extended; the MBAP length mostly kept true. */
const mutated = fc
  .tuple(fc.oneof(valid, near), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 3 }), fc.integer({ min: -4, max: 4 }), fc.integer({ min: 0, max: 199 }))
  .map(([frame, edits, delta, keepLength]) => {
    const size = Math.max(8, Math.min(260, frame.length + delta));
    const b = Buffer.alloc(size, 0xa5);
    frame.copy(b, 0, 0, Math.min(frame.length, size));
    for (const [at, value] of edits) b[at % size] = value;
    // One in 200 keeps whatever the edits left in the header: the framing may break there.
    if (keepLength !== 0) {
      b.writeUInt16BE(0, 2);
      b.writeUInt16BE(size - 6, 4);
    }
    return b;
  });

/** A well-framed ADU with a random PDU. */
const randomPdu = fc.tuple(tid, unit, fc.uint8Array({ minLength: 1, maxLength: 253 })).map(([t, u, pdu]) => adu(t, u, Buffer.from(pdu)));

/** Inputs that crashed libmodbus servers (issues #612, #614, #837; CVE-2019-14462/14463, CVE-2022-0367). */
const CRASHERS: Buffer[] = [
  Buffer.from('A90AAAAN/xcBYgABAGoAAQLXEQ==', 'base64'),
  Buffer.from([0x03, 0xdd, 0, 0, 0, 5, 0xff, 0x17, 0x02, 0, 0]),
  readWriteRegisters(7, 1, 0, 1, 10, [1], 0xff, 1),
  readWriteRegisters(7, 1, 0, 1, 10, [1], 0xf2, 0x79),
  adu(8, 0xff, [0x07]),
  adu(8, 0xff, [0x11]),
  adu(8, 1, [0x07, 0]),
  adu(8, 1, [0x11, 0, 0]),
  writeRegisters(9, 1, 10, [1], 0xf6, 0x7b),
  writeCoils(9, 1, 0, [1], 0xf6, 0x7b0),
];
const crasher = fc.constantFrom(...CRASHERS);

const frame = fc.oneof({ arbitrary: valid, weight: 25 }, { arbitrary: near, weight: 25 }, { arbitrary: mutated, weight: 35 }, { arbitrary: randomPdu, weight: 10 }, { arbitrary: crasher, weight: 5 });

/** One connection: frames, then maybe garbage, cut into chunks of random sizes. */
const connection = fc.record({
  frames: fc.array(frame, { minLength: 60, maxLength: 60 }),
  garbage: fc.option(fc.uint8Array({ minLength: 1, maxLength: 40 })),
  cuts: fc.array(fc.integer({ min: 1, max: 400 }), { minLength: 1, maxLength: 40 }),
  answerEvery: fc.integer({ min: 1, max: 4 }),
});

// ---------------------------------------------------------------------------------------------

describe('ModbusSession fuzz', () => {
  it('sends the device only whole ADUs that the rules allow, within its buffer bound, for 100,000 frames and more', () => {
    const checker = new ModbusChecker(RULES);
    const bound = modbusBufferBound(MAX_PENDING);
    let framesIn = 0;
    let framesParsed = 0;
    let forwarded = 0;
    let closes = 0;
    let overflows = 0;
    const started = Date.now();

    const check = (out: SessionOutput): void => {
      for (const b of out.toDevice) {
        forwarded++;
        const verdict = oracleAllows(b);
        if (verdict !== true) throw new Error(`the oracle refuses ${b.toString('hex')}: ${verdict}`);
        const again = parseRequest(b);
        if (!again.ok) throw new Error(`forwarded a malformed request ${b.toString('hex')}: ${again.reason}`);
        if (!checker.check(again).allowed) throw new Error(`forwarded a denied request ${b.toString('hex')}`);
      }
      for (const b of out.toPeer) {
        if (b.length < 9 || b.readUInt16BE(2) !== 0 || b.readUInt16BE(4) + 6 !== b.length) throw new Error(`not a whole ADU to the peer: ${b.toString('hex')}`);
      }
    };

    fc.assert(
      fc.property(connection, ({ frames, garbage, cuts, answerEvery }) => {
        const ctx = context();
        const s = createModbusSession({ rules: RULES, ctx, maxPendingRequests: MAX_PENDING });
        const stream = Buffer.concat([...frames, ...(garbage !== null ? [Buffer.from(garbage)] : [])]);
        framesIn += frames.length;
        /** What the device has been sent and not yet answered. */
        const toAnswer: Buffer[] = [];
        let closed: string | undefined;
        let at = 0;
        for (let i = 0; at < stream.length && closed === undefined; i++) {
          const size = cuts[i % cuts.length]!;
          const out = s.fromPeer(stream.subarray(at, at + size));
          at += size;
          check(out);
          toAnswer.push(...out.toDevice);
          closed = out.close;
          if (s.buffered() > bound) throw new Error(`buffered ${s.buffered()} > ${bound}`);
          if (closed === undefined && i % answerEvery === 0 && toAnswer.length > 0) {
            // Answer newest first (out of order), each with exception 04: a valid answer to any function.
            const answers = toAnswer.splice(0).reverse().map((r) => adu(r.readUInt16BE(0), r[6]!, [r[7]! | 0x80, 4]));
            const back = s.fromDevice(Buffer.concat(answers));
            check(back);
            if (back.close !== undefined) throw new Error(`closed on the device's answers: ${back.close}`);
            if (back.toPeer.length !== answers.length) throw new Error(`${answers.length} answers in, ${back.toPeer.length} out`);
            if (s.buffered() > bound) throw new Error(`buffered ${s.buffered()} > ${bound}`);
          }
        }
        if (closed !== undefined) {
          closes++;
          if (closed.includes('waiting')) overflows++;
          if (!/framing lost \(peer\)|requests waiting for the device/.test(closed)) throw new Error(`closed for ${closed}`);
        }
        s.end('fuzz');
        const summary = ctx.records.at(-1)!;
        framesParsed += summary.requests as number;
      }),
      { numRuns: 5000 },
    );
    const seconds = (Date.now() - started) / 1000;
    console.log(`[modbus fuzz] ${framesIn} frames in, ${framesParsed} parsed by the session, ${forwarded} forwarded, ${closes} connections closed (${overflows} for requests waiting), ${seconds.toFixed(1)} s`);
    expect(framesParsed).toBeGreaterThanOrEqual(100_000);
    // Not vacuous: some requests pass, and with them the held-request and pairing paths run.
    expect(forwarded).toBeGreaterThan(10_000);
    expect(overflows).toBeGreaterThan(0);
  });
});
