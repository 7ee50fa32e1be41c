// The DICOM filter's decisions, pure: PDUs in, what goes to the device and the peer out, the
// alerts and the association record. Built PDUs for the edges, DCMTK's captured ones for real life.
import { describe, expect, it } from 'vitest';
import { parseAssociateAc } from '../../../agent/protocols/dicom/associate.js';
import { createDicomSession } from '../../../agent/protocols/dicom/session.js';
import type { DicomRules } from '../../../agent/protocols/schema.js';
import type { ProtocolSession, SessionOutput } from '../../../agent/protocols/types.js';
import {
  abort,
  ac,
  collect,
  command,
  conversation,
  dataSet,
  echoRq,
  FIXTURES,
  pdata,
  recorder,
  releaseRp,
  releaseRq,
  response,
  rj,
  rq,
  storeRq,
  UID,
  type Conversation,
  type Recorder,
} from './builders.js';

const MAX = 64 * 1024;
const ABORT_0 = abort(2, 0);
const CT_RULE: DicomRules = { calledAeTitle: 'CT01', callingAeTitles: ['PACS'], sopClasses: ['ct-image-storage', 'verification'] };

interface Run {
  session: ProtocolSession;
  rec: Recorder;
  peer(b: Buffer): SessionOutput;
  device(b: Buffer): SessionOutput;
}

function start(rules: (DicomRules | 'all')[], enforce = true, maxPduBytes = MAX): Run {
  const rec = recorder(enforce);
  const session = createDicomSession({ rules, ctx: rec.ctx, maxPduBytes });
  return { session, rec, peer: (b) => session.fromPeer(b), device: (b) => session.fromDevice(b) };
}

/** Opens an association: the RQ goes through, the device accepts the given contexts. */
function open(run: Run, contexts: { id: number; abstract: string }[] = [{ id: 1, abstract: UID.verification }, { id: 3, abstract: UID.ct }], accept = contexts.map((c) => ({ id: c.id, result: 0 }))): SessionOutput {
  const out = run.peer(rq({ contexts }));
  expect(out.toDevice.length).toBeGreaterThan(0);
  return run.device(ac(accept));
}

function replay(run: Run, c: Conversation): { peer: SessionOutput[]; device: SessionOutput[] } {
  const outs = { peer: [] as SessionOutput[], device: [] as SessionOutput[] };
  for (const p of c.pdus) outs[p.from].push(p.from === 'peer' ? run.peer(p.bytes) : run.device(p.bytes));
  return outs;
}

/** The association's summary record (the others are one per denial). */
const summary = (run: Run) => {
  const all = run.rec.records.filter((r) => r.kind === 'dicom.association');
  expect(all.length).toBeLessThanOrEqual(1);
  return all[0];
};

const joinedFrom = (c: Conversation, from: 'peer' | 'device'): Buffer => Buffer.concat(c.pdus.filter((p) => p.from === from).map((p) => p.bytes));

describe('what passes', () => {
  for (const name of FIXTURES) {
    it(`forwards DCMTK's ${name} conversation unchanged when an entry has no dicom rules`, () => {
      const c = conversation(name);
      const run = start(['all']);
      const outs = replay(run, c);
      expect(collect(outs.peer).toDevice.equals(joinedFrom(c, 'peer'))).toBe(true);
      expect(collect(outs.device).toPeer.equals(joinedFrom(c, 'device'))).toBe(true);
      expect(collect([...outs.peer, ...outs.device]).toPeer.length).toBe(joinedFrom(c, 'device').length);
      expect(run.rec.alerts).toEqual([]);
      run.session.end('the peer closed');
      expect(run.rec.records).toHaveLength(1);
    });
  }

  it('forwards an allowed C-ECHO and records the association, released', () => {
    const c = conversation('echoscu');
    const run = start([CT_RULE]);
    const outs = replay(run, c);
    expect(collect(outs.peer).toDevice.equals(joinedFrom(c, 'peer'))).toBe(true);
    expect(collect(outs.device).toPeer.equals(joinedFrom(c, 'device'))).toBe(true);
    expect(outs.device.at(-1)!.close).toMatch(/released/);
    run.session.end('closed');
    expect(run.rec.alerts).toEqual([]);
    expect(run.rec.records).toEqual([
      {
        kind: 'dicom.association',
        device: 'ct-01',
        peer: '10.20.0.5',
        peerPort: 40123,
        mode: 'enforce',
        calling: 'PACS',
        called: 'CT01',
        proposed: [{ uid: UID.verification, name: 'verification' }],
        accepted: [{ uid: UID.verification, name: 'verification' }],
        commands: { 'C-ECHO-RQ': 1 },
        responses: { 'C-ECHO-RSP': 1 },
        bytes: { fromPeer: joinedFrom(c, 'peer').length, fromDevice: joinedFrom(c, 'device').length },
        pdus: { fromPeer: 3, fromDevice: 3 },
        durationMs: expect.any(Number) as number,
        result: 'released',
        by: 'peer',
        reason: 'A-RELEASE',
        endReason: 'closed',
      },
    ]);
  });

  it('compares AE titles without their padding, and takes the union of entries', () => {
    const run = start([{ calledAeTitle: 'MR01' }, { calledAeTitle: ' CT01 ', callingAeTitles: ['OTHER', 'PACS '] }]);
    expect(run.peer(rq({ called: '  CT01', calling: 'PACS' })).toDevice).toHaveLength(1);
  });

  it('passes responses from the peer (the C-STORE sub-operations of a C-GET) and C-CANCEL with C-FIND', () => {
    const run = start([{ calledAeTitle: 'CT01', sopClasses: ['study-root-qr-find', 'ct-image-storage'], commands: ['C-FIND'] }]);
    open(run, [{ id: 1, abstract: UID.studyFind }, { id: 3, abstract: UID.ct }]);
    const find = pdata({ ctx: 1, command: true, last: true, data: command({ field: 0x0020, affected: UID.studyFind, messageId: 1, dataSetType: 0 }) });
    const identifier = dataSet(1, 40);
    const cancel = pdata({ ctx: 1, command: true, last: true, data: command({ field: 0x0fff, respondingTo: 1 }) });
    const storeRsp = response(3, 0x8001, 5);
    for (const p of [find, identifier, cancel, storeRsp]) expect(Buffer.concat(run.peer(p).toDevice).equals(p)).toBe(true);
    expect(run.rec.alerts).toEqual([]);
    run.session.end('x');
    expect(summary(run)).toMatchObject({ commands: { 'C-FIND-RQ': 1, 'C-CANCEL-RQ': 1, 'C-STORE-RSP': 1 } });
  });

  it('records C-MOVE destinations (AE titles, not patient data)', () => {
    const run = start([{ calledAeTitle: 'CT01', sopClasses: ['study-root-qr-move'], commands: ['C-MOVE'] }]);
    open(run, [{ id: 1, abstract: UID.studyMove }]);
    run.peer(pdata({ ctx: 1, command: true, last: true, data: command({ field: 0x0021, affected: UID.studyMove, messageId: 1, moveDestination: 'ARCHIVE', dataSetType: 0 }) }));
    run.session.end('x');
    expect(summary(run)).toMatchObject({ moveDestinations: ['ARCHIVE'], commands: { 'C-MOVE-RQ': 1 } });
  });

  it('holds a command in fragments until its last one, then lets it and its data set through in order', () => {
    const run = start([CT_RULE]);
    open(run);
    const whole = command({ field: 0x0001, affected: UID.ct, messageId: 1, dataSetType: 0 });
    const p1 = pdata({ ctx: 3, command: true, last: false, data: whole.subarray(0, 30) });
    const p2 = pdata({ ctx: 3, command: true, last: false, data: whole.subarray(30, 50) });
    const p3 = pdata({ ctx: 3, command: true, last: true, data: whole.subarray(50) }, { ctx: 3, command: false, last: false, data: Buffer.alloc(100, 1) });
    const p4 = dataSet(3, 10_000);
    expect(run.peer(p1).toDevice).toEqual([]);
    expect(run.peer(p2).toDevice).toEqual([]);
    expect(run.session.buffered()).toBe(p1.length + p2.length + 50);
    expect(Buffer.concat(run.peer(p3).toDevice).equals(Buffer.concat([p1, p2, p3]))).toBe(true);
    const out4 = run.peer(p4);
    expect(out4.toDevice).toHaveLength(1);
    // The data set goes on as the very bytes it came in (a view), not a copy.
    expect(out4.toDevice[0]!.buffer).toBe(p4.buffer);
    expect(run.session.buffered()).toBe(0);
  });
});

describe('rejected associations (PS3.8 9.3.4)', () => {
  const cases: [string, (DicomRules | 'all')[], Parameters<typeof rq>[0], number][] = [
    ['a called AE title no entry has: reason 7', [CT_RULE], { called: 'MR01' }, 7],
    ['a calling AE title the entry does not list: reason 3', [CT_RULE], { calling: 'STRANGER' }, 3],
    ['a calling AE title listed only by an entry for another called AE title: reason 3', [CT_RULE, { calledAeTitle: 'MR01', callingAeTitles: ['STRANGER'] }], { calling: 'STRANGER' }, 3],
    ['no proposed context with an allowed SOP class: reason 1', [CT_RULE], { contexts: [{ id: 1, abstract: UID.mr }, { id: 3, abstract: UID.studyFind }] }, 1],
    ['no dicom entries at all: reason 7', [], {}, 7],
  ];
  for (const [what, rules, options, reason] of cases) {
    it(`rejects ${what}; the device sees nothing`, () => {
      const run = start(rules);
      const out = run.peer(rq(options));
      expect(out.toDevice).toEqual([]);
      expect(out.toPeer).toEqual([rj(1, 1, reason)]);
      expect(out.close).toMatch(/rejected by the proxy/);
      expect(run.rec.alerts).toHaveLength(1);
      expect(run.rec.alerts[0]).toMatchObject({ kind: 'dicom.rejected', severity: 'warning', data: { reason, peer: '10.20.0.5', device: 'ct-01' } });
      expect(run.rec.alerts[0]!.data.wouldDeny).toBe(false);
      // The same, as a line of the application log.
      expect(run.rec.records.filter((r) => r.kind === 'dicom.rejected')).toMatchObject([{ reason, action: 'rejected', wouldDeny: false, calling: expect.any(String) as string, called: expect.any(String) as string }]);
      // Nothing more is read: the connection is closing.
      expect(run.peer(echoRq())).toEqual({ toDevice: [], toPeer: [] });
      run.session.end('closed');
      expect(summary(run)).toMatchObject({ result: 'rejected', by: 'proxy' });
    });
  }

  it('passes the device\'s own A-ASSOCIATE-RJ to the peer', () => {
    const run = start(['all']);
    run.peer(rq());
    const out = run.device(rj(2, 3, 1));
    expect(out.toPeer).toEqual([rj(2, 3, 1)]);
    expect(out.close).toMatch(/rejected by the device/);
    run.session.end('closed');
    expect(summary(run)).toMatchObject({ result: 'rejected', by: 'device' });
  });
});

describe('the device\'s A-ASSOCIATE-AC', () => {
  it('refuses, in place, the contexts the rules do not allow (result 3); the rest of the PDU is unchanged', () => {
    const c = conversation('storescu-all');
    const run = start([{ calledAeTitle: 'CT01', sopClasses: ['ct-image-storage'] }]);
    expect(Buffer.concat(run.peer(c.pdus[0]!.bytes).toDevice).equals(c.pdus[0]!.bytes)).toBe(true);
    const original = c.pdus[1]!.bytes;
    const copy = Buffer.from(original);
    const sent = Buffer.concat(run.device(original).toPeer);
    expect(original.equals(copy)).toBe(true); // the input is not written to
    const before = parseAssociateAc(original);
    const after = parseAssociateAc(sent);
    let refused = 0;
    for (const [i, ctx] of after.contexts.entries()) {
      const was = before.contexts[i]!;
      expect(ctx.id).toBe(was.id);
      if (was.result === 0 && ctx.result === 3) refused++;
      else expect(ctx.result).toBe(was.result);
      sent[ctx.resultOffset] = was.result;
    }
    expect(refused).toBeGreaterThan(50);
    expect(sent.equals(original)).toBe(true);
    const info = run.rec.alerts.find((a) => a.kind === 'dicom.refused');
    expect(info).toMatchObject({ severity: 'info' });
    // The C-STORE on the CT context that is left goes through.
    const rest = replay(run, { name: 'rest', pdus: c.pdus.slice(2) });
    expect(collect(rest.peer).toDevice.equals(joinedFrom({ name: '', pdus: c.pdus.slice(2) }, 'peer'))).toBe(true);
    run.session.end('closed');
    expect(summary(run)).toMatchObject({ accepted: [{ uid: UID.ct, name: 'ct-image-storage' }], commands: { 'C-STORE-RQ': 1 }, responses: { 'C-STORE-RSP': 1 }, result: 'released' });
  });

  it('clamps the device\'s maximum length to the filter\'s (0 is unlimited), and leaves a smaller one alone', () => {
    for (const [deviceMax, expected] of [[0, MAX - 6], [MAX, MAX - 6], [16384, 16384]]) {
      const run = start([CT_RULE]);
      run.peer(rq());
      const sent = Buffer.concat(run.device(ac([{ id: 1, result: 0 }], deviceMax)).toPeer);
      expect(parseAssociateAc(sent).userInfo.maxLength).toBe(expected);
    }
  });

  it('refuses a context id the peer never proposed', () => {
    const run = start([CT_RULE]);
    run.peer(rq({ contexts: [{ id: 1, abstract: UID.ct }] }));
    const sent = Buffer.concat(run.device(ac([{ id: 1, result: 0 }, { id: 7, result: 0 }])).toPeer);
    expect(parseAssociateAc(sent).contexts.map((c) => c.result)).toEqual([0, 3]);
  });
});

describe('denied commands: A-ABORT both ways, nothing reaches the device', () => {
  const cases: [string, DicomRules, Buffer][] = [
    ['C-ECHO when the entry allows only C-STORE', { ...CT_RULE, commands: ['C-STORE'] }, echoRq(1)],
    ['a command on a context the filter refused', { calledAeTitle: 'CT01', sopClasses: ['verification'] }, storeRq(3, UID.ct)],
    ['a C-STORE whose SOP class is not the context\'s and not allowed', CT_RULE, storeRq(3, UID.mr)],
    ['a command the filter does not know', CT_RULE, pdata({ ctx: 1, command: true, last: true, data: command({ field: 0x0042, affected: UID.verification }) })],
    ['an N-ACTION the entry does not allow', CT_RULE, pdata({ ctx: 3, command: true, last: true, data: command({ field: 0x0130, requested: UID.ct }) })],
    ['a C-CANCEL when no query command is allowed', { ...CT_RULE, commands: ['C-STORE', 'C-ECHO'] }, pdata({ ctx: 1, command: true, last: true, data: command({ field: 0x0fff, respondingTo: 1 }) })],
  ];
  for (const [what, rule, bad] of cases) {
    it(`aborts ${what}`, () => {
      const run = start([rule]);
      open(run);
      const out = run.peer(bad);
      expect(out.toDevice).toEqual([ABORT_0]);
      expect(out.toPeer).toEqual([ABORT_0]);
      expect(out.close).toMatch(/aborted by the proxy/);
      expect(run.rec.alerts.filter((a) => a.kind === 'dicom.aborted')).toHaveLength(1);
      run.session.end('closed');
      expect(summary(run)).toMatchObject({ result: 'aborted', by: 'proxy' });
    });
  }

  it('does not mix entries: C-STORE of MR is allowed by one entry, the MR class by none that allows C-STORE', () => {
    const run = start([{ calledAeTitle: 'CT01', sopClasses: ['ct-image-storage'], commands: ['C-STORE'] }, { calledAeTitle: 'CT01', sopClasses: ['mr-image-storage'], commands: ['C-ECHO'] }]);
    open(run, [{ id: 1, abstract: UID.mr }]);
    expect(run.peer(storeRq(1, UID.mr)).toDevice).toEqual([ABORT_0]);
  });

  it('drops a held first fragment when the command turns out denied', () => {
    const run = start([{ ...CT_RULE, commands: ['C-STORE'] }]);
    open(run);
    const whole = command({ field: 0x0030, affected: UID.verification, messageId: 1 });
    expect(run.peer(pdata({ ctx: 1, command: true, last: false, data: whole.subarray(0, 20) })).toDevice).toEqual([]);
    const out = run.peer(pdata({ ctx: 1, command: true, last: true, data: whole.subarray(20) }));
    expect(out.toDevice).toEqual([ABORT_0]);
    expect(run.session.buffered()).toBe(0);
  });

  it('forwards what passed before a denied command in the same chunk, and not the denied one', () => {
    const run = start([{ ...CT_RULE, commands: ['C-STORE'] }]);
    open(run);
    const ok = storeRq(3, UID.ct);
    const data = dataSet(3, 50);
    const out = run.peer(Buffer.concat([ok, data, echoRq(1, 2)]));
    expect(Buffer.concat(out.toDevice).equals(Buffer.concat([ok, data, ABORT_0]))).toBe(true);
  });
});

describe('PDUs that break PS3.8: dicom.malformed, A-ABORT', () => {
  it('aborts an unknown PDU type with reason 1, to the peer only before the device has the RQ', () => {
    const run = start(['all']);
    const out = run.peer(Buffer.from([0x09, 0, 0, 0, 0, 0]));
    expect(out).toMatchObject({ toDevice: [], toPeer: [abort(2, 1)] });
    expect(run.rec.alerts[0]).toMatchObject({ kind: 'dicom.malformed', data: { abortReason: 1, from: 'peer' } });
  });

  const afterRq: [string, Buffer][] = [
    ['a P-DATA-TF before the A-ASSOCIATE-AC', echoRq()],
    ['a second A-ASSOCIATE-RQ', rq()],
    ['an A-RELEASE-RQ before the A-ASSOCIATE-AC', releaseRq()],
  ];
  for (const [what, bad] of afterRq) {
    it(`aborts ${what} with reason 2 (unexpected PDU), both ways`, () => {
      const run = start(['all']);
      run.peer(rq());
      const out = run.peer(bad);
      expect(out).toMatchObject({ toDevice: [abort(2, 2)], toPeer: [abort(2, 2)] });
      expect(out.close).toMatch(/unexpected|from the peer/);
    });
  }

  it('aborts a P-DATA-TF before any A-ASSOCIATE-RQ with reason 2, and an AC from the device out of turn', () => {
    expect(start(['all']).peer(echoRq())).toMatchObject({ toDevice: [], toPeer: [abort(2, 2)] });
    const run = start(['all']);
    open(run);
    expect(run.device(ac([{ id: 1, result: 0 }]))).toMatchObject({ toDevice: [abort(2, 2)], toPeer: [abort(2, 2)] });
  });

  const inAssociation: [string, () => Buffer[]][] = [
    ['a data set without a command', () => [dataSet(3, 10)]],
    ['a data set after a C-ECHO (which announces none)', () => [echoRq(1), dataSet(1, 10)]],
    ['a data set on another context than its command', () => [storeRq(3, UID.ct), dataSet(1, 10)]],
    ['a command before the data set ended', () => [storeRq(3, UID.ct), dataSet(3, 10, false), echoRq(1)]],
    ['a data set fragment inside a command', () => [pdata({ ctx: 3, command: true, last: false, data: Buffer.alloc(8) }, { ctx: 3, command: false, last: true, data: Buffer.alloc(8) })]],
    ['a command set that does not decode', () => [pdata({ ctx: 1, command: true, last: true, data: Buffer.from([0, 0, 0, 1, 4, 0, 0, 0, 0x30, 0]) })]],
    ['a command without CommandDataSetType', () => [pdata({ ctx: 1, command: true, last: true, data: Buffer.from([0, 0, 0, 1, 2, 0, 0, 0, 0x30, 0]) })]],
    ['a P-DATA-TF whose items do not add up', () => [Buffer.from([4, 0, 0, 0, 0, 8, 0, 0, 0, 9, 1, 3, 0, 0])]],
    ['an A-RELEASE-RQ in the middle of a data set', () => [storeRq(3, UID.ct), dataSet(3, 10, false), releaseRq()]],
    ['an A-ABORT of the wrong length', () => [Buffer.from([7, 0, 0, 0, 0, 2, 0, 0])]],
  ];
  for (const [what, build] of inAssociation) {
    it(`aborts ${what}`, () => {
      const run = start([CT_RULE]);
      open(run);
      const pdus = build();
      const outs = pdus.map((p) => run.peer(p));
      const last = outs.at(-1)!;
      expect(last.toPeer.at(-1)![0]).toBe(0x07);
      expect(last.toDevice.at(-1)![0]).toBe(0x07);
      // Nothing of the bad PDU reached the device: only the abort.
      expect(last.toDevice).toHaveLength(1);
      expect(last.close).toMatch(/malformed/);
      expect(run.rec.alerts.at(-1)).toMatchObject({ kind: 'dicom.malformed' });
    });
  }

  it('aborts a PDU longer than maxPduBytes from its header, without buffering it (reason 6)', () => {
    const run = start(['all'], true, 8192);
    open(run);
    const header = Buffer.from([0x04, 0, 0, 0, 0x20, 0x00]); // 8192 + 6 bytes
    const out = run.peer(Buffer.concat([header, Buffer.alloc(100)]));
    expect(out).toMatchObject({ toDevice: [abort(2, 6)], toPeer: [abort(2, 6)] });
    expect(run.rec.alerts.at(-1)).toMatchObject({ kind: 'dicom.oversize', data: { size: 8198, maxPduBytes: 8192, from: 'peer' } });
    expect(run.peer(Buffer.alloc(10_000))).toEqual({ toDevice: [], toPeer: [] });
  });

  it('aborts an oversize PDU from the device too', () => {
    const run = start(['all'], true, 8192);
    open(run);
    const out = run.device(Buffer.from([0x04, 0, 0, 1, 0, 0]));
    expect(out).toMatchObject({ toDevice: [abort(2, 6)], toPeer: [abort(2, 6)] });
  });

  it('counts but never judges the device\'s own P-DATA (a command set that does not decode is forwarded)', () => {
    const run = start([CT_RULE]);
    open(run);
    run.peer(echoRq(1));
    const odd = pdata({ ctx: 1, command: true, last: true, data: Buffer.from([1, 2, 3]) });
    expect(run.device(odd).toPeer).toEqual([odd]);
    expect(run.device(response(1, 0x8030)).toPeer).toHaveLength(1);
    run.session.end('x');
    expect(summary(run)).toMatchObject({ responses: {} });
  });

  it('refuses maxPduBytes under 4096 when built', () => {
    expect(() => createDicomSession({ rules: ['all'], ctx: recorder().ctx, maxPduBytes: 100 })).toThrow(/at least 4096/);
  });
});

describe('endings', () => {
  it('passes an A-ABORT from the peer to the device and records it', () => {
    const c = conversation('echoscu-abort');
    const run = start([CT_RULE]);
    const outs = replay(run, c);
    expect(outs.peer.at(-1)!.toDevice).toEqual([c.pdus.at(-1)!.bytes]);
    expect(outs.peer.at(-1)!.close).toMatch(/aborted by the peer/);
    run.session.end('closed');
    expect(summary(run)).toMatchObject({ result: 'aborted', by: 'peer', commands: { 'C-ECHO-RQ': 1 } });
  });

  it('releases either way, and with a release collision once both are answered', () => {
    const run = start([CT_RULE]);
    open(run);
    expect(run.device(releaseRq()).toPeer).toEqual([releaseRq()]);
    expect(run.peer(releaseRq()).toDevice).toEqual([releaseRq()]);
    expect(run.peer(releaseRp()).close).toBeUndefined();
    expect(run.device(releaseRp()).close).toMatch(/released/);
  });

  it('aborts a P-DATA-TF from the peer after its own A-RELEASE-RQ, and an A-RELEASE-RP nobody asked for', () => {
    const a = start([CT_RULE]);
    open(a);
    a.peer(releaseRq());
    expect(a.peer(echoRq()).toDevice).toEqual([abort(2, 2)]);
    const b = start([CT_RULE]);
    open(b);
    expect(b.peer(releaseRp()).toDevice).toEqual([abort(2, 2)]);
  });

  it('writes one record, only for a connection that carried bytes, and the result when no association came of it', () => {
    const silent = start(['all']);
    silent.session.end('closed');
    expect(silent.rec.records).toEqual([]);

    const half = start(['all']);
    half.peer(rq().subarray(0, 20));
    half.session.end('the peer closed');
    half.session.end('again');
    expect(half.rec.records).toHaveLength(1);
    expect(summary(half)).toMatchObject({ result: 'aborted', by: 'connection', reason: 'the peer closed', calling: null });

    const unanswered = start(['all']);
    open(unanswered);
    unanswered.session.end('idle timeout');
    expect(summary(unanswered)).toMatchObject({ result: 'accepted', by: null, reason: 'idle timeout' });
  });

  it('never puts patient data in alerts or records', () => {
    const c = conversation('storescu-required');
    for (const rules of [[CT_RULE], [{ ...CT_RULE, commands: ['C-ECHO'] } as DicomRules]]) {
      const run = start(rules);
      replay(run, c);
      run.session.end('closed');
      const text = JSON.stringify([run.rec.alerts, run.rec.records]);
      expect(text).toContain('CT01');
      for (const phi of ['Synthetic', 'WG-0001', '1.2.826.0.1.3680043.9.7433']) expect(text).not.toContain(phi);
    }
  });
});

describe('monitor mode: alerted and recorded, forwarded unchanged', () => {
  /** Everything each side sent comes out on the other, byte for byte. */
  function transparent(run: Run, steps: { from: 'peer' | 'device'; bytes: Buffer }[]): void {
    const outs = steps.map((s) => (s.from === 'peer' ? run.peer(s.bytes) : run.device(s.bytes)));
    const all = collect(outs);
    expect(all.close).toBeUndefined();
    expect(all.toDevice.equals(Buffer.concat(steps.filter((s) => s.from === 'peer').map((s) => s.bytes)))).toBe(true);
    expect(all.toPeer.equals(Buffer.concat(steps.filter((s) => s.from === 'device').map((s) => s.bytes)))).toBe(true);
  }
  const p = (bytes: Buffer) => ({ from: 'peer' as const, bytes });
  const d = (bytes: Buffer) => ({ from: 'device' as const, bytes });

  it('lets a rejected association through and says it would have rejected it', () => {
    const run = start([CT_RULE], false);
    transparent(run, [p(rq({ calling: 'STRANGER' })), d(ac([{ id: 1, result: 0 }])), p(storeRq(1, UID.ct)), p(dataSet(1, 20)), d(response(1, 0x8001))]);
    expect(run.rec.alerts.map((a) => a.kind)).toEqual(['dicom.rejected']);
    expect(run.rec.alerts[0]).toMatchObject({ data: { reason: 3, wouldDeny: true } });
    expect(run.rec.alerts[0]!.message).toMatch(/monitor mode, forwarded: association rejected/);
    expect(run.rec.records).toMatchObject([{ kind: 'dicom.rejected', reason: 3, calling: 'STRANGER', action: 'forwarded', wouldDeny: true }]);
    run.session.end('closed');
    expect(summary(run)).toMatchObject({ mode: 'monitor', result: 'accepted', wouldDeny: true, wouldDenials: 1 });
  });

  it('does not refuse contexts, and lets a denied command and its data set through', () => {
    const run = start([{ ...CT_RULE, sopClasses: ['verification'], commands: ['C-ECHO'] }], false);
    const contexts = [{ id: 1, abstract: UID.verification }, { id: 3, abstract: UID.ct }];
    transparent(run, [p(rq({ contexts })), d(ac([{ id: 1, result: 0 }, { id: 3, result: 0 }], 0)), p(storeRq(3, UID.ct)), p(dataSet(3, 20)), p(echoRq(1, 2)), d(response(1, 0x8030))]);
    expect(run.rec.alerts.map((a) => [a.kind, a.data.wouldDeny])).toEqual([['dicom.refused', true], ['dicom.aborted', true]]);
    run.session.end('closed');
    expect(summary(run)).toMatchObject({ wouldDeny: true, wouldDenials: 2, accepted: [{ uid: UID.verification }, { uid: UID.ct }] });
  });

  it('stops reading at a malformed or oversize PDU and passes everything after it', () => {
    const junk = Buffer.from([0x42, 1, 2, 3, 4, 5, 6, 7]);
    const run = start([CT_RULE], false, 8192);
    transparent(run, [p(rq()), d(ac([{ id: 1, result: 0 }])), p(echoRq().subarray(0, 7)), p(Buffer.concat([echoRq().subarray(7), junk])), p(echoRq()), d(Buffer.from([0x04, 0, 0, 1, 0, 0])), d(Buffer.alloc(70_000, 9))]);
    expect(run.rec.alerts.map((a) => a.kind)).toEqual(['dicom.malformed']);
    expect(run.session.buffered()).toBe(0);

    const big = start(['all'], false, 8192);
    transparent(big, [p(rq()), d(ac([{ id: 1, result: 0 }])), p(Buffer.from([0x04, 0, 0, 1, 0, 0])), p(Buffer.alloc(70_000, 1))]);
    expect(big.rec.alerts.map((a) => a.kind)).toEqual(['dicom.oversize']);
  });
});

describe('split anywhere, same decisions', () => {
  /** What a run decided, in a form two runs can be compared by. */
  function decisions(rules: (DicomRules | 'all')[], enforce: boolean, steps: { from: 'peer' | 'device'; chunks: Buffer[] }[]) {
    const run = start(rules, enforce);
    const outs: SessionOutput[] = [];
    for (const s of steps) for (const c of s.chunks) outs.push(s.from === 'peer' ? run.peer(c) : run.device(c));
    run.session.end('end');
    const all = collect(outs);
    const record = { ...summary(run) };
    delete record.durationMs;
    return { toDevice: all.toDevice.toString('hex'), toPeer: all.toPeer.toString('hex'), close: all.close, alerts: JSON.stringify(run.rec.alerts), record: JSON.stringify(record) };
  }

  const scenarios: [string, (DicomRules | 'all')[], boolean, { from: 'peer' | 'device'; bytes: Buffer }[]][] = [
    ['storescu, allowed', [CT_RULE], true, conversation('storescu-fragmented').pdus],
    ['storescu-all, contexts refused', [{ calledAeTitle: 'CT01', sopClasses: ['ct-image-storage'] }], true, conversation('storescu-all').pdus],
    ['echoscu, C-ECHO denied', [{ ...CT_RULE, commands: ['C-STORE'] }], true, conversation('echoscu').pdus],
    ['echoscu, rejected', [{ calledAeTitle: 'MR01' }], true, conversation('echoscu').pdus],
    ['echoscu, C-ECHO denied, monitor', [{ ...CT_RULE, commands: ['C-STORE'] }], false, conversation('echoscu').pdus],
  ];
  for (const [what, rules, enforce, pdus] of scenarios) {
    it(`${what}: every PDU cut at every byte offset`, () => {
      const whole = decisions(rules, enforce, pdus.map((x) => ({ from: x.from, chunks: [x.bytes] })));
      expect(whole.toPeer.length).toBeGreaterThan(0);
      let runs = 0;
      for (const [i, target] of pdus.entries()) {
        for (let cut = 1; cut < target.bytes.length; cut++) {
          const steps = pdus.map((x, j) => ({ from: x.from, chunks: j === i ? [x.bytes.subarray(0, cut), x.bytes.subarray(cut)] : [x.bytes] }));
          expect(decisions(rules, enforce, steps)).toEqual(whole);
          runs++;
        }
      }
      expect(runs).toBeGreaterThan(100);
    });
  }

  it('one byte at a time gives the same decisions as whole PDUs', () => {
    for (const [, rules, enforce, pdus] of scenarios) {
      const whole = decisions(rules, enforce, pdus.map((x) => ({ from: x.from, chunks: [x.bytes] })));
      const bytewise = decisions(rules, enforce, pdus.map((x) => ({ from: x.from, chunks: [...x.bytes].map((b) => Buffer.from([b])) })));
      expect(bytewise).toEqual(whole);
    }
  });
});
