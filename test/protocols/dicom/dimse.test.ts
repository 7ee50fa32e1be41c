// P-DATA-TF items (PS3.8 9.3.5, annex E) and command sets (PS3.7 6.3.1, annex E).
import { describe, expect, it } from 'vitest';
import { CommandAssembler, decodeCommandSet, hasDataSet, MAX_COMMAND_BYTES, pdvs } from '../../../agent/protocols/dicom/dimse.js';
import { DicomProtocolError, PartsReader } from '../../../agent/protocols/dicom/pdu.js';
import { command, conversation, pdata, pdu, UID } from './builders.js';

const reader = (p: Buffer, ...cuts: number[]): PartsReader => {
  const parts: Buffer[] = [];
  let from = 0;
  for (const c of [...cuts, p.length]) {
    parts.push(p.subarray(from, c));
    from = c;
  }
  return new PartsReader(parts);
};

function malformed(f: () => unknown): string {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(DicomProtocolError);
    return (err as Error).message;
  }
  throw new Error('did not throw');
}

/** The command sets of a captured conversation, from one side. */
function commandSets(name: Parameters<typeof conversation>[0], from: 'peer' | 'device'): Buffer[] {
  const out: Buffer[] = [];
  const assembler = new CommandAssembler();
  for (const p of conversation(name).pdus) {
    if (p.from !== from || p.bytes[0] !== 0x04) continue;
    const r = new PartsReader([p.bytes]);
    for (const v of pdvs(r)) {
      if (!v.command) continue;
      const whole = assembler.add(r, v);
      if (whole !== null) out.push(whole);
    }
  }
  return out;
}

describe('PDV items', () => {
  it('reads context id, command/data set and last fragment from the control header, across pieces', () => {
    const p = pdata({ ctx: 1, command: true, last: false, data: Buffer.alloc(10) }, { ctx: 1, command: true, last: true, data: Buffer.alloc(3) }, { ctx: 3, command: false, last: true, data: Buffer.alloc(0) });
    for (const cuts of [[], [7], [8, 9, 10, 11], [22, 23, 24]]) {
      expect(pdvs(reader(p, ...cuts))).toEqual([
        { contextId: 1, command: true, last: false, at: 12, length: 10 },
        { contextId: 1, command: true, last: true, at: 28, length: 3 },
        { contextId: 3, command: false, last: true, at: 37, length: 0 },
      ]);
    }
  });

  it('ignores the reserved bits of the control header (annex E.2)', () => {
    const p = pdata({ ctx: 5, command: true, last: true, data: Buffer.alloc(4) });
    p[11] = 0xfc | 0x03;
    expect(pdvs(reader(p))[0]).toMatchObject({ command: true, last: true });
  });

  it('is malformed without items, with an item length under 2, running past the PDU, or with stray bytes', () => {
    expect(malformed(() => pdvs(reader(pdu(0x04, Buffer.alloc(0)))))).toMatch(/without a presentation data value/);
    expect(malformed(() => pdvs(reader(pdu(0x04, Buffer.from([0, 0, 0, 2, 1])))))).toMatch(/5 stray bytes/);
    expect(malformed(() => pdvs(reader(pdu(0x04, Buffer.from([0, 0, 0, 1, 1, 3])))))).toMatch(/PDV item length 1/);
    expect(malformed(() => pdvs(reader(pdu(0x04, Buffer.from([0, 0, 0, 9, 1, 3, 0])))))).toMatch(/runs past the PDU/);
    expect(malformed(() => pdvs(reader(pdu(0x04, Buffer.from([0, 0, 0, 2, 1, 3, 0, 0])))))).toMatch(/2 stray bytes/);
  });
});

describe('command sets', () => {
  it('decodes the fields the filter reads', () => {
    const c = decodeCommandSet(command({ field: 0x0021, affected: UID.studyMove, messageId: 7, moveDestination: 'ARCHIVE', dataSetType: 0x0000 }));
    expect(c).toEqual({ commandField: 0x0021, affectedSopClass: UID.studyMove, messageId: 7, moveDestination: 'ARCHIVE', commandDataSetType: 0 });
    expect(hasDataSet(c)).toBe(true);
    const rsp = decodeCommandSet(command({ field: 0x8030, requested: UID.verification, respondingTo: 7, status: 0 }));
    expect(rsp).toEqual({ commandField: 0x8030, requestedSopClass: UID.verification, messageIdBeingRespondedTo: 7, commandDataSetType: 0x0101, status: 0 });
    expect(hasDataSet(rsp)).toBe(false);
    expect(decodeCommandSet(command({ field: 0x0030, groupLength: false })).commandField).toBe(0x0030);
  });

  it('decodes what DCMTK sends: C-ECHO, C-STORE and their responses', () => {
    expect(commandSets('echoscu', 'peer').map(decodeCommandSet)).toMatchObject([{ commandField: 0x0030, affectedSopClass: UID.verification, commandDataSetType: 0x0101 }]);
    expect(commandSets('echoscu', 'device').map(decodeCommandSet)).toMatchObject([{ commandField: 0x8030, status: 0 }]);
    const store = commandSets('storescu-fragmented', 'peer').map(decodeCommandSet);
    expect(store).toMatchObject([{ commandField: 0x0001, affectedSopClass: UID.ct }]);
    expect(hasDataSet(store[0]!)).toBe(true);
  });

  const el = (group: number, element: number, value: Buffer): Buffer => {
    const h = Buffer.alloc(8);
    h.writeUInt16LE(group, 0);
    h.writeUInt16LE(element, 2);
    h.writeUInt32LE(value.length, 4);
    return Buffer.concat([h, value]);
  };
  const us = (n: number) => Buffer.from([n & 0xff, n >> 8]);
  const cases: [string, Buffer, RegExp][] = [
    ['no CommandField', el(0, 0x0800, us(0x0101)), /without a CommandField/],
    ['an element outside group 0000', Buffer.concat([el(0, 0x0100, us(0x30)), el(8, 0x0016, Buffer.from('12'))]), /outside group 0000/],
    ['CommandField twice', Buffer.concat([el(0, 0x0100, us(0x30)), el(0, 0x0100, us(0x01))]), /out of order or repeated/],
    ['elements out of order', Buffer.concat([el(0, 0x0800, us(0x0101)), el(0, 0x0100, us(0x30))]), /out of order/],
    ['a value running past the end', Buffer.concat([el(0, 0x0100, us(0x30)), Buffer.from([0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff])]), /runs past the end/],
    ['stray bytes', Buffer.concat([el(0, 0x0100, us(0x30)), Buffer.from([0, 0, 0])]), /3 stray bytes/],
    ['a CommandField of 4 bytes', el(0, 0x0100, Buffer.alloc(4)), /CommandField is 4 bytes/],
    ['a CommandGroupLength that does not match', Buffer.concat([el(0, 0, Buffer.from([20, 0, 0, 0])), el(0, 0x0100, us(0x30))]), /CommandGroupLength 20, 10 bytes follow/],
  ];
  for (const [what, bytes, message] of cases) {
    it(`is malformed with ${what}`, () => {
      expect(malformed(() => decodeCommandSet(bytes))).toMatch(message);
    });
  }
});

describe('CommandAssembler', () => {
  const fragments = (whole: Buffer, sizes: number[]): Buffer => {
    const specs = [];
    let o = 0;
    for (const [i, n] of sizes.entries()) {
      specs.push({ ctx: 1, command: true, last: i === sizes.length - 1, data: whole.subarray(o, o + n) });
      o += n;
    }
    return pdata(...specs);
  };

  it('joins a command sent in fragments, and copies them (the PDU moves on)', () => {
    const whole = command({ field: 0x0001, affected: UID.ct, messageId: 3, dataSetType: 0 });
    const p = fragments(whole, [5, 0, 20, whole.length - 25]);
    const r = new PartsReader([p]);
    const a = new CommandAssembler();
    const got = pdvs(r).map((v) => a.add(r, v));
    expect(got.slice(0, 3)).toEqual([null, null, null]);
    expect(got[3]).toEqual(whole);
    p.fill(0);
    expect(got[3]).toEqual(whole);
    expect(a.active).toBe(false);
    expect(a.buffered).toBe(0);
  });

  it('refuses a fragment on another context, and more than 64 KiB', () => {
    const a = new CommandAssembler();
    const p = pdata({ ctx: 1, command: true, last: false, data: Buffer.alloc(10) }, { ctx: 3, command: true, last: true, data: Buffer.alloc(10) });
    const r = new PartsReader([p]);
    const [v1, v2] = pdvs(r);
    expect(a.add(r, v1!)).toBeNull();
    expect(malformed(() => a.add(r, v2!))).toMatch(/on presentation context 3 inside a command on 1/);

    const b = new CommandAssembler();
    const big = pdata({ ctx: 1, command: true, last: false, data: Buffer.alloc(MAX_COMMAND_BYTES - 10) }, { ctx: 1, command: true, last: false, data: Buffer.alloc(10) }, { ctx: 1, command: true, last: true, data: Buffer.alloc(1) });
    const rb = new PartsReader([big]);
    const [b1, b2, b3] = pdvs(rb);
    expect(b.add(rb, b1!)).toBeNull();
    expect(b.add(rb, b2!)).toBeNull();
    expect(b.buffered).toBe(MAX_COMMAND_BYTES);
    expect(malformed(() => b.add(rb, b3!))).toMatch(/larger than 65536/);
  });
});
