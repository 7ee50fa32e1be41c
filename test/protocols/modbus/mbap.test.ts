// The MBAP framer: whole frames out of any cutting of the stream, broken headers stop it, and it
// never holds a whole frame's worth.
import { describe, expect, it } from 'vitest';
import { MbapFramer } from '../../../agent/protocols/modbus/mbap.js';
import { MAX_ADU_BYTES } from '../../../agent/protocols/modbus/spec.js';
import { adu, readHolding, writeRegisters } from './frames.js';

function frameAll(framer: MbapFramer, chunks: Buffer[]): { frames: Buffer[]; error: string | undefined; maxHeld: number } {
  const frames: Buffer[] = [];
  let error: string | undefined;
  let maxHeld = 0;
  for (const c of chunks) {
    const e = framer.push(c, (f) => void frames.push(Buffer.from(f)));
    maxHeld = Math.max(maxHeld, framer.buffered());
    if (e !== undefined) {
      error = e.code;
      break;
    }
  }
  return { frames, error, maxHeld };
}

/** A maximal frame (253-byte PDU), a minimal one (function code only), and a read. */
const stream = [writeRegisters(1, 1, 0, new Array<number>(123).fill(0xabcd)), adu(2, 1, [0x07]), readHolding(3, 1, 0, 10), adu(4, 1, new Array<number>(253).fill(0x41))];

describe('MbapFramer', () => {
  it('hands out each frame of one chunk, pipelined, as views of it', () => {
    const whole = Buffer.concat(stream);
    const views: Buffer[] = [];
    const framer = new MbapFramer();
    expect(framer.push(whole, (f) => void views.push(f))).toBeUndefined();
    expect(views.map((v) => Buffer.from(v))).toEqual(stream);
    // Views, not copies: the same memory as the chunk.
    expect(views[0]?.buffer).toBe(whole.buffer);
    expect(framer.buffered()).toBe(0);
    expect(stream[3]?.length).toBe(MAX_ADU_BYTES);
  });

  it('gives the same frames for a stream cut at every byte offset, once and twice', () => {
    const whole = Buffer.concat(stream);
    for (let i = 0; i <= whole.length; i++) {
      const r = frameAll(new MbapFramer(), [whole.subarray(0, i), whole.subarray(i)]);
      expect(r.frames, `cut at ${i}`).toEqual(stream);
      expect(r.maxHeld).toBeLessThan(MAX_ADU_BYTES);
    }
    for (let i = 0; i < whole.length; i += 3) {
      for (let j = i; j <= whole.length; j += 5) {
        const r = frameAll(new MbapFramer(), [whole.subarray(0, i), whole.subarray(i, j), whole.subarray(j)]);
        // Cheaper than toEqual for thousands of cuts, and as strict: same sizes, same bytes.
        if (r.frames.map((f) => f.length).join() !== stream.map((f) => f.length).join() || !Buffer.concat(r.frames).equals(whole)) {
          expect.fail(`cut at ${i} and ${j}: ${r.frames.map((f) => f.length).join()}`);
        }
      }
    }
  });

  it('frames a stream fed one byte at a time, holding less than one ADU', () => {
    const whole = Buffer.concat(stream);
    const r = frameAll(new MbapFramer(), [...whole].map((b) => Buffer.from([b])));
    expect(r.frames).toEqual(stream);
    expect(r.maxHeld).toBe(MAX_ADU_BYTES - 1);
  });

  it('accepts the MBAP length limits 2 and 254 (Modbus TCP 3.1.3, Application Protocol 4.1)', () => {
    const low = adu(9, 1, [0x11]);
    const high = adu(9, 1, new Array<number>(253).fill(1));
    expect(low.readUInt16BE(4)).toBe(2);
    expect(high.readUInt16BE(4)).toBe(254);
    expect(frameAll(new MbapFramer(), [Buffer.concat([low, high])])).toMatchObject({ frames: [low, high], error: undefined });
  });

  for (const [what, header, code] of [
    ['protocol id 1', [0, 7, 0, 1, 0, 6, 1], 'protocol-id'],
    ['protocol id 0xffff', [0, 7, 0xff, 0xff, 0, 6, 1], 'protocol-id'],
    ['length 0', [0, 7, 0, 0, 0, 0, 1], 'length'],
    ['length 1 (a unit id, no function code)', [0, 7, 0, 0, 0, 1, 1], 'length'],
    ['length 255 (a 254-byte PDU)', [0, 7, 0, 0, 0, 255, 1], 'length'],
    ['length 0xffff', [0, 7, 0, 0, 0xff, 0xff, 1], 'length'],
  ] as const) {
    it(`loses framing on ${what}, after the frames before it, whatever the cut`, () => {
      const good = readHolding(1, 1, 0, 1);
      const whole = Buffer.concat([good, Buffer.from(header), Buffer.alloc(300, 3)]);
      for (let i = 0; i <= whole.length; i++) {
        const framer = new MbapFramer();
        const r = frameAll(framer, [whole.subarray(0, i), whole.subarray(i)]);
        expect(r.frames, `cut at ${i}`).toEqual([good]);
        expect(r.error, `cut at ${i}`).toBe(code);
        // Once lost, framing stays lost: later bytes are not frames.
        expect(framer.push(good, () => expect.fail('framed after the error'))?.code).toBe(code);
        expect(framer.buffered()).toBe(0);
      }
    });
  }

  it('stops when the handler returns false and frames nothing after', () => {
    const framer = new MbapFramer();
    const seen: number[] = [];
    const whole = Buffer.concat(stream);
    expect(framer.push(whole, (f) => (seen.push(f.readUInt16BE(0)), f.readUInt16BE(0) !== 2))).toBeUndefined();
    expect(seen).toEqual([1, 2]);
    expect(framer.push(whole, () => expect.fail('framed after stop'))).toBeUndefined();
    expect(framer.buffered()).toBe(0);
  });
});
