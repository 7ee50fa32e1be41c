// The PDU framer (PS3.8 9.3.1) and the reader over a PDU in pieces.
import { describe, expect, it } from 'vitest';
import { PartsReader, PduFramer, type Frame } from '../../../agent/protocols/dicom/pdu.js';
import { abort, dataSet, echoRq, releaseRq, rq } from './builders.js';

const frames = (framer: PduFramer): Frame[] => {
  const out: Frame[] = [];
  for (;;) {
    const f = framer.next();
    out.push(f);
    if (f.kind !== 'pdu') return out;
  }
};

describe('PduFramer', () => {
  it('cuts a stream of several PDUs, returning each as views of the input', () => {
    const stream = Buffer.concat([rq(), echoRq(), dataSet(1, 5000), releaseRq()]);
    const framer = new PduFramer(64 * 1024);
    framer.push(stream);
    const got = frames(framer);
    expect(got.map((f) => f.kind)).toEqual(['pdu', 'pdu', 'pdu', 'pdu', 'more']);
    const pdus = got.flatMap((f) => (f.kind === 'pdu' ? [f.pdu] : []));
    expect(pdus.map((p) => p.type)).toEqual([1, 4, 4, 5]);
    expect(Buffer.concat(pdus.flatMap((p) => p.parts))).toEqual(stream);
    // No copy: the data set PDU is a view of the input's memory.
    expect(pdus[2]!.parts).toHaveLength(1);
    expect(pdus[2]!.parts[0]!.buffer).toBe(stream.buffer);
    expect(framer.buffered).toBe(0);
  });

  it('waits for the header and for the last byte, at every split point', () => {
    const p = dataSet(1, 3000);
    for (let cut = 1; cut < p.length; cut++) {
      const framer = new PduFramer(64 * 1024);
      framer.push(p.subarray(0, cut));
      expect(framer.next().kind).toBe('more');
      expect(framer.buffered).toBe(cut);
      framer.push(p.subarray(cut));
      const f = framer.next();
      expect(f.kind).toBe('pdu');
      // equals(), not toEqual(): a deep comparison of 3,000 buffers takes seconds.
      if (f.kind === 'pdu') expect(Buffer.concat(f.pdu.parts).equals(p)).toBe(true);
      expect(framer.buffered).toBe(0);
    }
  });

  it('reports an unknown type at its first byte, before waiting for a header', () => {
    for (const t of [0x00, 0x08, 0x10, 0xff]) {
      const framer = new PduFramer(4096);
      framer.push(Buffer.from([t]));
      expect(framer.next()).toEqual({ kind: 'unknown', type: t });
    }
  });

  it('reports a PDU larger than the limit from its header alone, and the limit itself passes', () => {
    const framer = new PduFramer(4096);
    const header = Buffer.from([0x04, 0, 0, 0, 0x0f, 0xfb]); // 4091 + 6 = 4097 bytes
    framer.push(header);
    expect(framer.next()).toEqual({ kind: 'oversize', type: 4, size: 4097 });
    expect(framer.buffered).toBe(6);

    const exact = new PduFramer(4096);
    exact.push(dataSet(1, 4096 - 12));
    const f = exact.next();
    expect(f.kind === 'pdu' && f.pdu.size).toBe(4096);
  });

  it('reads a length with the top bit set as unsigned (4 GiB PDUs are oversize, not negative)', () => {
    const framer = new PduFramer(4096);
    framer.push(Buffer.from([0x04, 0, 0xff, 0xff, 0xff, 0xff]));
    expect(framer.next()).toEqual({ kind: 'oversize', type: 4, size: 6 + 0xffffffff });
  });

  it('keeps a trickled PDU in a few pieces, and what it handed out unchanged', () => {
    const stream = Buffer.concat([dataSet(1, 20000), abort(0, 0)]);
    const framer = new PduFramer(64 * 1024);
    const handed: Buffer[] = [];
    const copyOfHanded: Buffer[] = [];
    for (let i = 0; i < stream.length; i++) {
      framer.push(stream.subarray(i, i + 1));
      const f = framer.next();
      if (f.kind === 'pdu') {
        expect(f.pdu.parts.length).toBeLessThanOrEqual(Math.ceil(f.pdu.size / 16384) + 1);
        handed.push(...f.pdu.parts);
        copyOfHanded.push(...f.pdu.parts.map((b) => Buffer.from(b)));
      }
    }
    expect(Buffer.concat(handed).equals(stream)).toBe(true);
    expect(handed.every((b, i) => b.equals(copyOfHanded[i]!))).toBe(true);
  });

  it('drains what it holds', () => {
    const framer = new PduFramer(4096);
    framer.push(Buffer.from([0x04, 0, 0, 0]));
    framer.push(Buffer.from([0, 9, 1, 2]));
    expect(Buffer.concat(framer.drain())).toEqual(Buffer.from([4, 0, 0, 0, 0, 9, 1, 2]));
    expect(framer.buffered).toBe(0);
    expect(framer.next().kind).toBe('more');
  });
});

describe('PartsReader', () => {
  it('reads bytes, big-endian words and copies across piece boundaries', () => {
    const whole = Buffer.from(Array.from({ length: 40 }, (_, i) => i));
    for (const cuts of [[], [1], [3, 4, 5], [10, 11, 12, 13, 30]]) {
      const parts: Buffer[] = [];
      let from = 0;
      for (const c of [...cuts, whole.length]) {
        parts.push(whole.subarray(from, c));
        from = c;
      }
      const r = new PartsReader(parts);
      expect(r.length).toBe(40);
      for (let i = 0; i < 37; i++) expect(r.u32be(i)).toBe(whole.readUInt32BE(i));
      for (let i = 39; i >= 0; i--) expect(r.u8(i)).toBe(i);
      expect(r.copy(2, 30)).toEqual(whole.subarray(2, 32));
      expect(() => r.u8(40)).toThrow(RangeError);
    }
  });
});
