// A-ASSOCIATE-RQ/AC parsing (PS3.8 9.3.2, 9.3.3), and the RJ and ABORT the filter builds (9.3.4, 9.3.8).
import { describe, expect, it } from 'vitest';
import { buildAbort, buildAssociateRj, parseAssociateAc, parseAssociateRq, parseFourBytePdu, rejectReasonText } from '../../../agent/protocols/dicom/associate.js';
import { DicomProtocolError } from '../../../agent/protocols/dicom/pdu.js';
import { ac, APP_CONTEXT, conversation, EXPLICIT_LE, IMPLICIT_LE, item, pdu, rq, UID } from './builders.js';

/** The PDU with bytes [at, at+n) replaced, and its length field kept right. */
function patch(p: Buffer, at: number, bytes: Buffer, remove = bytes.length): Buffer {
  const out = Buffer.concat([p.subarray(0, at), bytes, p.subarray(at + remove)]);
  out.writeUInt32BE(out.length - 6, 2);
  return out;
}
const ITEMS_AT = 74;
const rqBody = (items: Buffer[]): Buffer => pdu(0x01, Buffer.concat([Buffer.from([0, 1, 0, 0]), Buffer.from('CT01'.padEnd(16)), Buffer.from('PACS'.padEnd(16)), Buffer.alloc(32), ...items]));
const pc = (id: number, subs: Buffer[]): Buffer => item(0x20, Buffer.concat([Buffer.from([id, 0, 0, 0]), ...subs]));

function malformedBy(f: () => unknown): string {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(DicomProtocolError);
    expect((err as DicomProtocolError).reason).toBe(6);
    expect((err as DicomProtocolError).code).toBe('dicom.malformed');
    return (err as Error).message;
  }
  throw new Error('did not throw');
}

describe('A-ASSOCIATE-RQ', () => {
  it('parses AE titles, the application context, presentation contexts and user information', () => {
    const p = rq({ called: 'CT01', calling: ' PACS', contexts: [{ id: 1, abstract: UID.verification }, { id: 3, abstract: UID.ct, transfer: [EXPLICIT_LE, IMPLICIT_LE] }], maxLength: 32768 });
    expect(parseAssociateRq(p)).toEqual({
      protocolVersion: 1,
      calledAeTitle: 'CT01',
      callingAeTitle: 'PACS',
      applicationContext: APP_CONTEXT,
      contexts: [
        { id: 1, abstractSyntax: UID.verification, transferSyntaxes: [IMPLICIT_LE] },
        { id: 3, abstractSyntax: UID.ct, transferSyntaxes: [EXPLICIT_LE, IMPLICIT_LE] },
      ],
      userInfo: { maxLength: 32768, maxLengthOffset: expect.any(Number) as number, implementationClassUid: '1.2.826.0.1.3680043.9.7433.9', implementationVersionName: 'WG_TEST' },
    });
  });

  it('parses the RQs DCMTK sends (echoscu: one context; storescu: every storage class it knows)', () => {
    const echo = parseAssociateRq(conversation('echoscu').pdus[0]!.bytes);
    expect(echo).toMatchObject({ calledAeTitle: 'CT01', callingAeTitle: 'PACS', applicationContext: APP_CONTEXT, contexts: [{ id: 1, abstractSyntax: UID.verification }] });
    expect(echo.userInfo).toMatchObject({ maxLength: 16384, implementationClassUid: '1.2.276.0.7230010.3.0.3.6.7', implementationVersionName: 'OFFIS_DCMTK_367' });
    const all = parseAssociateRq(conversation('storescu-all').pdus[0]!.bytes);
    expect(all.contexts.length).toBeGreaterThan(100);
    expect(all.contexts.every((c) => c.id % 2 === 1)).toBe(true);
    expect(all.contexts.map((c) => c.abstractSyntax)).toContain(UID.ct);
  });

  it('forgives a NUL padding a UID, and takes the AE title without its padding spaces', () => {
    const p = rqBody([item(0x10, `${APP_CONTEXT}\0`), pc(1, [item(0x30, `${UID.ct}\0`), item(0x40, IMPLICIT_LE)])]);
    const parsed = parseAssociateRq(p);
    expect(parsed.applicationContext).toBe(APP_CONTEXT);
    expect(parsed.contexts[0]!.abstractSyntax).toBe(UID.ct);
    expect(parsed.userInfo).toEqual({});
  });

  it('skips items and sub-items it does not know, by their length', () => {
    const roleSelection = item(0x54, Buffer.concat([Buffer.from([0, UID.ct.length]), Buffer.from(UID.ct), Buffer.from([1, 1])]));
    const userIdentity = item(0x58, Buffer.from([1, 0, 0, 4, 0x61, 0x62, 0x63, 0x64, 0, 0]));
    const p = rqBody([item(0x10, APP_CONTEXT), item(0x7e, 'future'), pc(1, [item(0x30, UID.ct), item(0x77, 'x'), item(0x40, IMPLICIT_LE)]), item(0x50, Buffer.concat([item(0x51, Buffer.from([0, 0, 0x40, 0])), roleSelection, userIdentity]))]);
    const parsed = parseAssociateRq(p);
    expect(parsed.contexts).toEqual([{ id: 1, abstractSyntax: UID.ct, transferSyntaxes: [IMPLICIT_LE] }]);
    expect(parsed.userInfo.maxLength).toBe(16384);
  });

  it('accepts the boundaries: the highest context id, 255; an empty PDU body item', () => {
    const p = rqBody([item(0x10, APP_CONTEXT), pc(255, [item(0x30, UID.ct), item(0x40, IMPLICIT_LE)]), item(0x7f, '')]);
    expect(parseAssociateRq(p).contexts[0]!.id).toBe(255);
  });

  const good = rq();
  const cases: [string, () => Buffer, RegExp][] = [
    ['shorter than its fixed part', () => good.subarray(0, 70), /shorter than its fixed part/],
    ['a length field that disagrees with its size', () => Buffer.concat([good, Buffer.alloc(2)]), /length field says/],
    ['an item that runs past the end', () => { const b = Buffer.from(good); b.writeUInt16BE(0xff00, ITEMS_AT + 2); return b; }, /runs past its end/],
    ['stray bytes after the last item', () => patch(good, good.length, Buffer.from([0x10, 0])), /stray bytes/],
    ['no application context', () => rqBody([pc(1, [item(0x30, UID.ct), item(0x40, IMPLICIT_LE)])]), /no application context/],
    ['two application contexts', () => rqBody([item(0x10, APP_CONTEXT), item(0x10, APP_CONTEXT), pc(1, [item(0x30, UID.ct), item(0x40, IMPLICIT_LE)])]), /two application context/],
    ['no presentation context', () => rqBody([item(0x10, APP_CONTEXT)]), /no presentation context/],
    ['an even context id', () => rqBody([item(0x10, APP_CONTEXT), pc(2, [item(0x30, UID.ct), item(0x40, IMPLICIT_LE)])]), /is even/],
    ['a context id proposed twice', () => rqBody([item(0x10, APP_CONTEXT), pc(1, [item(0x30, UID.ct), item(0x40, IMPLICIT_LE)]), pc(1, [item(0x30, UID.mr), item(0x40, IMPLICIT_LE)])]), /proposed twice/],
    ['a context without an abstract syntax', () => rqBody([item(0x10, APP_CONTEXT), pc(1, [item(0x40, IMPLICIT_LE)])]), /no abstract syntax/],
    ['a context with an empty abstract syntax', () => rqBody([item(0x10, APP_CONTEXT), pc(1, [item(0x30, ''), item(0x40, IMPLICIT_LE)])]), /no abstract syntax/],
    ['a context with two abstract syntaxes', () => rqBody([item(0x10, APP_CONTEXT), pc(1, [item(0x30, UID.ct), item(0x30, UID.mr), item(0x40, IMPLICIT_LE)])]), /two abstract syntaxes/],
    ['a context without a transfer syntax', () => rqBody([item(0x10, APP_CONTEXT), pc(1, [item(0x30, UID.ct)])]), /no transfer syntax/],
    ['a context item of 3 bytes', () => rqBody([item(0x10, APP_CONTEXT), item(0x20, Buffer.from([1, 0, 0]))]), /presentation context item of 3 bytes/],
    ['a sub-item running past its context', () => rqBody([item(0x10, APP_CONTEXT), item(0x20, Buffer.concat([Buffer.from([1, 0, 0, 0]), Buffer.from([0x30, 0, 0, 50]), Buffer.from(UID.ct)]))]), /runs past its end/],
    ['a maximum length of 2 bytes', () => rqBody([item(0x10, APP_CONTEXT), pc(1, [item(0x30, UID.ct), item(0x40, IMPLICIT_LE)]), item(0x50, item(0x51, Buffer.from([0, 1])))]), /maximum length sub-item of 2 bytes/],
    ['two user information items', () => rqBody([item(0x10, APP_CONTEXT), pc(1, [item(0x30, UID.ct), item(0x40, IMPLICIT_LE)]), item(0x50, Buffer.alloc(0)), item(0x50, Buffer.alloc(0))]), /two user information/],
  ];
  for (const [what, build, message] of cases) {
    it(`is malformed with ${what}`, () => {
      expect(malformedBy(() => parseAssociateRq(build()))).toMatch(message);
    });
  }
});

describe('A-ASSOCIATE-AC', () => {
  it('parses each context\'s result and where its result byte is', () => {
    const p = ac([{ id: 1, result: 0 }, { id: 3, result: 3 }, { id: 5, result: 4 }], 0);
    const parsed = parseAssociateAc(p);
    expect(parsed.contexts.map(({ id, result }) => ({ id, result }))).toEqual([{ id: 1, result: 0 }, { id: 3, result: 3 }, { id: 5, result: 4 }]);
    for (const c of parsed.contexts) expect(p[c.resultOffset]).toBe(c.result);
    expect(parsed.userInfo.maxLength).toBe(0);
    expect(p.readUInt32BE(parsed.userInfo.maxLengthOffset)).toBe(0);
  });

  it('parses storescp\'s answers: Verification accepted; C-FIND refused (abstract syntax not supported)', () => {
    expect(parseAssociateAc(conversation('echoscu').pdus[1]!.bytes).contexts).toMatchObject([{ id: 1, result: 0 }]);
    const find = parseAssociateAc(conversation('findscu').pdus[1]!.bytes);
    expect(find.contexts.length).toBeGreaterThan(0);
    expect(find.contexts.every((c) => c.result === 3)).toBe(true);
  });

  it('is malformed with a context answered twice, or with a wrong type', () => {
    expect(malformedBy(() => parseAssociateAc(ac([{ id: 1, result: 0 }, { id: 1, result: 0 }])))).toMatch(/answered twice/);
    expect(malformedBy(() => parseAssociateAc(rq()))).toMatch(/PDU type 0x01/);
  });
});

describe('A-ASSOCIATE-RJ and A-ABORT', () => {
  it('builds the bytes PS3.8 9.3.4 and 9.3.8 lay out', () => {
    expect([...buildAssociateRj(1, 1, 7)]).toEqual([0x03, 0, 0, 0, 0, 4, 0, 1, 1, 7]);
    expect([...buildAbort(2, 6)]).toEqual([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6]);
    expect(parseFourBytePdu(buildAssociateRj(1, 1, 3), 'A-ASSOCIATE-RJ')).toEqual({ result: 1, source: 1, reason: 3 });
    expect(rejectReasonText(1, 3)).toBe('calling-AE-title-not-recognized');
    expect(rejectReasonText(1, 7)).toBe('called-AE-title-not-recognized');
  });

  it('is malformed when not four bytes long', () => {
    expect(malformedBy(() => parseFourBytePdu(pdu(0x07, Buffer.alloc(5)), 'A-ABORT'))).toMatch(/A-ABORT of 11 bytes/);
  });
});
