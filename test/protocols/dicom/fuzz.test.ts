// Fuzzing the DICOM filter with fast-check: DCMTK's captured conversations and built ones, their
// PDUs mutated (bytes flipped, lengths changed, cut, padded, swapped, replaced by random PDUs),
// fed in random chunks. Whatever comes in, the session must not throw, must keep its buffers
// within their bounds, and must not let anything the rules deny reach the device. The last is
// checked by reading what the device was sent with a small reader written here, apart from the
// session's parsers; in monitor mode, by checking that both streams pass unchanged.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createDicomSession } from '../../../agent/protocols/dicom/session.js';
import type { DicomRules } from '../../../agent/protocols/schema.js';
import type { SessionOutput } from '../../../agent/protocols/types.js';
import { ac, command, conversation, dataSet, echoRq, FIXTURES, pdata, recorder, releaseRq, response, rq, storeRq, UID, type Conversation } from './builders.js';

const MAX_PDU = 16 * 1024;
const MAX_COMMAND = 64 * 1024;

interface Oracle {
  rules: DicomRules;
  called: string;
  calling: readonly string[];
  sops: readonly string[];
  /** Request CommandFields the rules allow (C-CANCEL included when a query is). */
  fields: readonly number[];
}

const ORACLES: Oracle[] = [
  {
    rules: { calledAeTitle: 'CT01', callingAeTitles: ['PACS'], sopClasses: ['ct-image-storage', 'verification', 'study-root-qr-find'], commands: ['C-STORE', 'C-FIND'] },
    called: 'CT01',
    calling: ['PACS'],
    sops: [UID.ct, UID.verification, UID.studyFind],
    fields: [0x0001, 0x0020, 0x0fff],
  },
  {
    rules: { calledAeTitle: 'CT01', sopClasses: ['ct-image-storage'] },
    called: 'CT01',
    calling: [],
    sops: [UID.ct],
    fields: [0x0030, 0x0001, 0x0020, 0x0021, 0x0010, 0x0fff],
  },
];

type Step = { from: 'peer' | 'device'; bytes: Buffer };

const built: Conversation[] = [
  {
    name: 'find, cancel, store with a fragmented command',
    pdus: [
      { from: 'peer', bytes: rq({ contexts: [{ id: 1, abstract: UID.studyFind }, { id: 3, abstract: UID.ct }, { id: 5, abstract: UID.mr }, { id: 7, abstract: UID.verification }] }) },
      { from: 'device', bytes: ac([{ id: 1, result: 0 }, { id: 3, result: 0 }, { id: 5, result: 0 }, { id: 7, result: 0 }], 0) },
      { from: 'peer', bytes: pdata({ ctx: 1, command: true, last: true, data: command({ field: 0x0020, affected: UID.studyFind, messageId: 1, dataSetType: 0 }) }) },
      { from: 'peer', bytes: dataSet(1, 60) },
      { from: 'device', bytes: response(1, 0x8020) },
      { from: 'peer', bytes: pdata({ ctx: 1, command: true, last: true, data: command({ field: 0x0fff, respondingTo: 1 }) }) },
      { from: 'peer', bytes: pdata({ ctx: 3, command: true, last: false, data: command({ field: 0x0001, affected: UID.ct, messageId: 2, dataSetType: 0 }).subarray(0, 40) }) },
      { from: 'peer', bytes: pdata({ ctx: 3, command: true, last: true, data: command({ field: 0x0001, affected: UID.ct, messageId: 2, dataSetType: 0 }).subarray(40) }, { ctx: 3, command: false, last: false, data: Buffer.alloc(300, 7) }) },
      { from: 'peer', bytes: dataSet(3, 2000) },
      { from: 'device', bytes: response(3, 0x8001, 2) },
      { from: 'peer', bytes: storeRq(5, UID.mr, 3) },
      { from: 'peer', bytes: echoRq(7, 4) },
      { from: 'peer', bytes: releaseRq() },
    ],
  },
  {
    name: 'a denied command in fragments, across PDUs',
    pdus: [
      { from: 'peer', bytes: rq({ contexts: [{ id: 1, abstract: UID.verification }, { id: 3, abstract: UID.ct }] }) },
      { from: 'device', bytes: ac([{ id: 1, result: 0 }, { id: 3, result: 0 }]) },
      { from: 'peer', bytes: pdata({ ctx: 1, command: true, last: false, data: command({ field: 0x0030, affected: UID.verification, messageId: 1 }).subarray(0, 12) }) },
      { from: 'peer', bytes: pdata({ ctx: 1, command: true, last: false, data: command({ field: 0x0030, affected: UID.verification, messageId: 1 }).subarray(12, 40) }) },
      { from: 'peer', bytes: pdata({ ctx: 1, command: true, last: true, data: command({ field: 0x0030, affected: UID.verification, messageId: 1 }).subarray(40) }) },
      { from: 'device', bytes: response(1, 0x8030) },
      { from: 'peer', bytes: storeRq(3, UID.ct, 2) },
      { from: 'peer', bytes: dataSet(3, 100) },
    ],
  },
];
const BASES: Conversation[] = [...FIXTURES.map((n) => conversation(n)), ...built];

// --- an independent reader of what reached the device -------------------------------------------

function pdusOf(stream: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let o = 0;
  while (o < stream.length) {
    if (o + 6 > stream.length) throw new Error('a partial PDU header was sent');
    const size = 6 + stream.readUInt32BE(o + 2);
    if (o + size > stream.length) throw new Error('a partial PDU was sent');
    out.push(stream.subarray(o, o + size));
    o += size;
  }
  return out;
}

const uidText = (b: Buffer): string => b.toString('latin1').replace(/[\0 ]+$/, '');

/** type -> values of the (sub-)items in [start, end). */
function itemsOf(b: Buffer, start: number, end: number): { type: number; value: Buffer }[] {
  const out = [];
  for (let o = start; o + 4 <= end; ) {
    const n = b.readUInt16BE(o + 2);
    out.push({ type: b[o]!, value: b.subarray(o + 4, o + 4 + n) });
    o += 4 + n;
  }
  return out;
}

/** Every element of a command set: (0000,eeee) -> values (a list: duplicates must show). */
function elementsOf(cmd: Buffer): Map<number, Buffer[]> {
  const m = new Map<number, Buffer[]>();
  for (let o = 0; o + 8 <= cmd.length; ) {
    const el = cmd.readUInt16LE(o + 2);
    const n = cmd.readUInt32LE(o + 4);
    const v = cmd.subarray(o + 8, o + 8 + n);
    m.set(el, [...(m.get(el) ?? []), v]);
    o += 8 + Math.min(n, cmd.length);
  }
  return m;
}

/** Throws when the device was sent something the oracle's rules deny. */
function checkDevice(toDevice: Buffer, toPeer: Buffer, oracle: Oracle): void {
  const proposed = new Map<number, string>();
  const acceptedByPeer = new Set<number>();
  for (const p of pdusOf(toPeer)) {
    if (p[0] !== 0x02 || p.length < 74) continue;
    for (const it of itemsOf(p, 74, p.length)) if (it.type === 0x21 && it.value.length >= 3 && it.value[2] === 0) acceptedByPeer.add(it.value[0]!);
  }
  let aborted = false;
  let rqSeen = false;
  let fragments: Buffer[] = [];
  let dataOn: number | null = null;
  for (const p of pdusOf(toDevice)) {
    if (aborted) throw new Error('bytes after an A-ABORT');
    if (p.length > MAX_PDU) throw new Error(`a PDU of ${p.length} bytes`);
    switch (p[0]) {
      case 0x01: {
        if (rqSeen) throw new Error('a second A-ASSOCIATE-RQ');
        rqSeen = true;
        const called = p.toString('latin1', 10, 26).trim();
        const calling = p.toString('latin1', 26, 42).trim();
        if (called !== oracle.called) throw new Error(`an RQ for ${called}`);
        if (oracle.calling.length > 0 && !oracle.calling.includes(calling)) throw new Error(`an RQ from ${calling}`);
        for (const it of itemsOf(p, 74, p.length)) {
          if (it.type !== 0x20) continue;
          const abs = itemsOf(it.value, 4, it.value.length).find((s) => s.type === 0x30);
          if (abs !== undefined) proposed.set(it.value[0]!, uidText(abs.value));
        }
        if (![...proposed.values()].some((s) => oracle.sops.includes(s))) throw new Error('an RQ without an allowed SOP class');
        break;
      }
      case 0x04: {
        if (!rqSeen) throw new Error('P-DATA before an RQ');
        for (let o = 6; o < p.length; ) {
          const n = p.readUInt32BE(o);
          const ctx = p[o + 4]!;
          const header = p[o + 5]!;
          const fragment = p.subarray(o + 6, o + 4 + n);
          o += 4 + n;
          if ((header & 1) === 0) {
            if (dataOn !== ctx) throw new Error(`a data set on context ${ctx} nobody announced`);
            if ((header & 2) !== 0) dataOn = null;
            continue;
          }
          if (dataOn !== null) throw new Error('a command inside a data set');
          fragments.push(fragment);
          if ((header & 2) === 0) continue;
          const els = elementsOf(Buffer.concat(fragments));
          fragments = [];
          const fields = els.get(0x0100) ?? [];
          if (fields.length !== 1 || fields[0]!.length !== 2) throw new Error('a command without exactly one CommandField');
          const field = fields[0]!.readUInt16LE(0);
          if (!acceptedByPeer.has(ctx)) throw new Error(`a command on context ${ctx}, which the peer was not given`);
          const abstract = proposed.get(ctx);
          if ((field & 0x8000) === 0) {
            if (!oracle.fields.includes(field)) throw new Error(`command 0x${field.toString(16)}`);
            if (abstract === undefined || !oracle.sops.includes(abstract)) throw new Error(`a command on ${abstract ?? '?'}`);
            for (const el of [0x0002, 0x0003]) for (const v of els.get(el) ?? []) if (uidText(v) !== '' && !oracle.sops.includes(uidText(v))) throw new Error(`a command naming ${uidText(v)}`);
          }
          const type = els.get(0x0800)?.[0];
          if (type === undefined) throw new Error('a command without CommandDataSetType');
          if (type.readUInt16LE(0) !== 0x0101) dataOn = ctx;
        }
        break;
      }
      case 0x07:
        aborted = true;
        break;
      default:
        break;
    }
  }
  // Held PDUs leave only with their command's last fragment: the device never gets half a command.
  if (fragments.length > 0) throw new Error('part of a command that was never sent whole');
}

// --- mutations -------------------------------------------------------------------------------------

const mutation = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), pos: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('set' as const), pos: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ kind: fc.constant('length' as const), delta: fc.integer({ min: -40, max: 40 }) }),
  fc.record({ kind: fc.constant('cut' as const), pos: fc.nat() }),
  fc.record({ kind: fc.constant('append' as const), bytes: fc.uint8Array({ maxLength: 32 }) }),
  fc.record({ kind: fc.constant('swap' as const) }),
  fc.record({ kind: fc.constant('drop' as const) }),
  fc.record({ kind: fc.constant('repeat' as const) }),
  fc.record({
    kind: fc.constant('random' as const),
    type: fc.oneof(fc.integer({ min: 1, max: 7 }), fc.integer({ min: 0, max: 255 })),
    body: fc.uint8Array({ maxLength: 200 }),
    exactLength: fc.boolean(),
    from: fc.constantFrom('peer' as const, 'device' as const),
  }),
  // A PDU of the same conversation in the right format, but a value in the middle rewritten:
  // what a crafted command looks like (a CommandField, a context id).
  fc.record({ kind: fc.constant('word' as const), pos: fc.nat(), value: fc.constantFrom(0x0001, 0x0030, 0x0021, 0x0130, 0x0fff, 0x8001, 0x0101, 0x0000, 1, 3, 5) }),
);
type Mutation = typeof mutation extends fc.Arbitrary<infer M> ? M : never;

function mutate(steps: Step[], at: number, m: Mutation): void {
  const i = at % steps.length;
  const s = steps[i]!;
  const b = Buffer.from(s.bytes);
  switch (m.kind) {
    case 'flip':
      if (b.length > 0) b[m.pos % b.length] = b[m.pos % b.length]! ^ (1 << m.bit);
      break;
    case 'set':
      if (b.length > 0) b[m.pos % b.length] = m.value;
      break;
    case 'word':
      if (b.length >= 2) b.writeUInt16LE(m.value, m.pos % (b.length - 1));
      break;
    case 'length':
      if (b.length >= 6) b.writeUInt32BE(Math.max(0, b.readUInt32BE(2) + m.delta), 2);
      break;
    case 'cut':
      steps[i] = { from: s.from, bytes: b.subarray(0, b.length === 0 ? 0 : m.pos % b.length) };
      return;
    case 'append':
      steps[i] = { from: s.from, bytes: Buffer.concat([b, m.bytes]) };
      return;
    case 'swap':
      if (i + 1 < steps.length) [steps[i], steps[i + 1]] = [steps[i + 1]!, s];
      return;
    case 'drop':
      steps.splice(i, 1);
      return;
    case 'repeat':
      steps.splice(i, 0, s);
      return;
    case 'random': {
      const h = Buffer.alloc(6);
      h[0] = m.type;
      h.writeUInt32BE(m.exactLength ? m.body.length : m.body.length + 3, 2);
      steps.splice(i, 0, { from: m.from, bytes: Buffer.concat([h, m.body]) });
      return;
    }
  }
  steps[i] = { from: s.from, bytes: b };
}

/** Cuts each step into chunks at the given points (modulo its length). */
function chunked(steps: Step[], cuts: number[]): Step[] {
  const out: Step[] = [];
  let c = 0;
  for (const s of steps) {
    const n = cuts.length === 0 ? 0 : cuts[c++ % cuts.length]! % 3;
    let from = 0;
    for (let k = 0; k < n && s.bytes.length > 1; k++) {
      const to = from + 1 + ((cuts[(c + k) % cuts.length] ?? 0) % Math.max(1, s.bytes.length - from));
      if (to >= s.bytes.length) break;
      out.push({ from: s.from, bytes: s.bytes.subarray(from, to) });
      from = to;
    }
    out.push({ from: s.from, bytes: s.bytes.subarray(from) });
  }
  return out;
}

describe('fuzzing the DICOM session', () => {
  it('never throws, stays bounded, and lets nothing denied reach the device (>= 10,000 PDUs)', () => {
    let pdus = 0;
    let aborted = 0;
    let forwarded = 0;
    const bound = 3 * MAX_PDU + 3 * MAX_COMMAND;
    fc.assert(
      fc.property(
        fc.record({
          base: fc.integer({ min: 0, max: BASES.length - 1 }),
          oracle: fc.integer({ min: 0, max: ORACLES.length - 1 }),
          enforce: fc.boolean(),
          mutations: fc.array(fc.tuple(fc.nat(), mutation), { maxLength: 4 }),
          cuts: fc.array(fc.nat({ max: 100_000 }), { maxLength: 8 }),
        }),
        ({ base, oracle: o, enforce, mutations, cuts }) => {
          const oracle = ORACLES[o]!;
          const steps: Step[] = BASES[base]!.pdus.map((p) => ({ from: p.from, bytes: p.bytes }));
          for (const [at, m] of mutations) if (steps.length > 0) mutate(steps, at, m);
          pdus += steps.length;
          const rec = recorder(enforce);
          const session = createDicomSession({ rules: [oracle.rules], ctx: rec.ctx, maxPduBytes: MAX_PDU });
          const outs: SessionOutput[] = [];
          const input = { peer: [] as Buffer[], device: [] as Buffer[] };
          for (const s of chunked(steps, cuts)) {
            input[s.from].push(s.bytes);
            outs.push(s.from === 'peer' ? session.fromPeer(s.bytes) : session.fromDevice(s.bytes));
            expect(session.buffered()).toBeLessThanOrEqual(bound);
          }
          session.end('fuzz');
          const toDevice = Buffer.concat(outs.flatMap((x) => x.toDevice));
          const toPeer = Buffer.concat(outs.flatMap((x) => x.toPeer));
          if (enforce) {
            checkDevice(toDevice, toPeer, oracle);
          } else {
            // Monitor mode changes nothing: each side gets a prefix of what the other sent.
            const peerIn = Buffer.concat(input.peer);
            const deviceIn = Buffer.concat(input.device);
            expect(peerIn.subarray(0, toDevice.length).equals(toDevice)).toBe(true);
            expect(deviceIn.subarray(0, toPeer.length).equals(toPeer)).toBe(true);
          }
          expect(rec.records.filter((r) => r.kind === 'dicom.association').length).toBeLessThanOrEqual(1);
          // Every alert is also a record of the application log.
          expect(rec.records.length - rec.records.filter((r) => r.kind === 'dicom.association').length).toBe(rec.alerts.length);
          if (outs.some((x) => x.close?.includes('aborted by the proxy'))) aborted++;
          if (toDevice.length > 0) forwarded++;
        },
      ),
      { numRuns: 8000, seed: Number(process.env.WARDGATE_FUZZ_SEED ?? Date.now() % 2 ** 31) },
    );
    expect(pdus).toBeGreaterThanOrEqual(10_000);
    // The runs reach both outcomes; a fuzzer that only ever aborts at the first PDU proves little.
    expect(aborted).toBeGreaterThan(500);
    expect(forwarded).toBeGreaterThan(3000);
  });

  it('the oracle itself catches what it must (a denied command, an RQ for another AE title)', () => {
    const o = ORACLES[0]!;
    const contexts = [{ id: 1, abstract: UID.verification }, { id: 3, abstract: UID.ct }];
    const acPdu = ac([{ id: 1, result: 0 }, { id: 3, result: 0 }]);
    expect(() => checkDevice(Buffer.concat([rq({ contexts }), storeRq(3, UID.ct), dataSet(3, 10)]), acPdu, o)).not.toThrow();
    expect(() => checkDevice(Buffer.concat([rq({ contexts }), echoRq(1)]), acPdu, o)).toThrow(/command 0x30/);
    expect(() => checkDevice(Buffer.concat([rq({ contexts }), storeRq(3, UID.mr)]), acPdu, o)).toThrow(/naming/);
    expect(() => checkDevice(Buffer.concat([rq({ contexts }), storeRq(3, UID.ct)]), ac([{ id: 1, result: 0 }, { id: 3, result: 3 }]), o)).toThrow(/not given/);
    expect(() => checkDevice(rq({ called: 'MR01', contexts }), acPdu, o)).toThrow(/RQ for MR01/);
    expect(() => checkDevice(Buffer.concat([rq({ contexts }), dataSet(3, 10)]), acPdu, o)).toThrow(/nobody announced/);
  });
});
