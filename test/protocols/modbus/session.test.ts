// The Modbus session: decisions per request (forward, exception, close), what it alerts and
// records, monitor mode, pairing of answers by transaction id, held requests, and that cutting
// the streams anywhere changes none of it.
import { describe, expect, it } from 'vitest';
import { createModbusSession, modbusBufferBound, type ModbusSession } from '../../../agent/protocols/modbus/session.js';
import type { ModbusRuleSet } from '../../../agent/protocols/modbus/rules.js';
import { ModbusRulesSchema } from '../../../agent/protocols/schema.js';
import type { SessionOutput } from '../../../agent/protocols/types.js';
import {
  adu,
  context,
  exception,
  maskWrite,
  readDeviceId,
  readHolding,
  readWriteRegisters,
  response,
  writeCoil,
  writeCoils,
  writeRegister,
  writeRegisters,
  type Collected,
} from './frames.js';

/** Unit 1 may read holding registers 0-99 and write 10-19; nothing else. */
const RULES: ModbusRuleSet[] = [ModbusRulesSchema.parse({ profile: 'read-write', unitIds: [1], read: { holdingRegisters: ['0-99'] }, write: { holdingRegisters: ['10-19'], coils: ['0-15'] } })];

function session(opts: { enforce?: boolean; rules?: ModbusRuleSet[]; maxPending?: number; staleAfterMs?: number } = {}): { s: ModbusSession; ctx: Collected } {
  const ctx = context({ enforce: opts.enforce ?? true });
  const s = createModbusSession({ rules: opts.rules ?? RULES, ctx, maxPendingRequests: opts.maxPending ?? 32, ...(opts.staleAfterMs !== undefined ? { staleAfterMs: opts.staleAfterMs } : {}) });
  return { s, ctx };
}

/** A read answer for `count` registers, all zero. */
const readAnswer = (tid: number, unit: number, count: number): Buffer => response(tid, unit, [3, 2 * count, ...new Array<number>(2 * count).fill(0)]);

describe('ModbusSession: requests', () => {
  it('forwards an allowed read byte for byte, in a buffer of its own, and forwards the answer', () => {
    const { s, ctx } = session();
    const frame = readHolding(7, 1, 0, 10);
    const out = s.fromPeer(frame);
    expect(out).toEqual({ toDevice: [frame], toPeer: [] });
    frame.fill(0);
    expect(out.toDevice[0]).toEqual(readHolding(7, 1, 0, 10));
    const answer = readAnswer(7, 1, 10);
    expect(s.fromDevice(answer)).toEqual({ toDevice: [], toPeer: [answer] });
    expect(ctx.alerts).toEqual([]);
    expect(ctx.records).toEqual([]);
  });

  it('answers a write outside the allowed addresses with exception 02 and alerts and records it', () => {
    const { s, ctx } = session();
    const out = s.fromPeer(writeRegister(0x1234, 1, 40, 99));
    expect(out).toEqual({ toDevice: [], toPeer: [exception(0x1234, 1, 0x06, 0x02)] });
    expect(out.close).toBeUndefined();
    expect(ctx.alerts).toEqual([
      {
        severity: 'warning',
        kind: 'modbus.denied',
        dedupKey: 'modbus.denied/pump-01/10.10.1.20/0x06/address',
        message: expect.stringContaining('write-single-register') as unknown,
        data: expect.objectContaining({ device: 'pump-01', peer: '10.10.1.20', unit: 1, fc: 6, function: 'write-single-register', reason: 'address', exception: 2, wouldDeny: false }) as unknown,
      },
    ]);
    expect(ctx.records).toEqual([expect.objectContaining({ kind: 'modbus.denied', device: 'pump-01', peer: '10.10.1.20', peerPort: 50123, tid: 0x1234, reason: 'address', action: 'exception', wouldDeny: false })]);
  });

  it('answers a function not allowed with exception 01, another unit with 02', () => {
    const { s, ctx } = session();
    expect(s.fromPeer(adu(3, 1, [0x11])).toPeer).toEqual([exception(3, 1, 0x11, 0x01)]);
    expect(s.fromPeer(readHolding(4, 2, 0, 1)).toPeer).toEqual([exception(4, 2, 0x03, 0x02)]);
    expect(s.fromPeer(adu(5, 1, [0x5a, 0, 1])).toPeer).toEqual([exception(5, 1, 0x5a, 0x01)]);
    expect(ctx.alerts.map((a) => a.dedupKey)).toEqual(['modbus.denied/pump-01/10.10.1.20/0x11/function', 'modbus.denied/pump-01/10.10.1.20/0x03/unit', 'modbus.denied/pump-01/10.10.1.20/0x5a/function']);
  });

  it('records every write it forwards: registers as numbers, coils as 0/1, the masks of a mask write', () => {
    const rules: ModbusRuleSet[] = [ModbusRulesSchema.parse({ profile: 'read-write' })];
    const { s, ctx } = session({ rules });
    const frames = [writeRegister(1, 1, 10, 0xbeef), writeCoil(2, 1, 3, 0xff00), writeCoils(3, 1, 8, [1, 0, 1]), writeRegisters(4, 1, 12, [1, 2]), maskWrite(5, 1, 13, 0xf0f0, 0x0101), readWriteRegisters(6, 1, 0, 2, 14, [7])];
    const out = s.fromPeer(Buffer.concat(frames));
    expect(out.toDevice).toEqual(frames);
    const base = { kind: 'modbus.write', device: 'pump-01', peer: '10.10.1.20', peerPort: 50123, unit: 1 };
    expect(ctx.records).toEqual([
      { ...base, fc: 6, function: 'write-single-register', tid: 1, table: 'holdingRegisters', address: 10, count: 1, values: [0xbeef] },
      { ...base, fc: 5, function: 'write-single-coil', tid: 2, table: 'coils', address: 3, count: 1, values: [1] },
      { ...base, fc: 15, function: 'write-multiple-coils', tid: 3, table: 'coils', address: 8, count: 3, values: [1, 0, 1] },
      { ...base, fc: 16, function: 'write-multiple-registers', tid: 4, table: 'holdingRegisters', address: 12, count: 2, values: [1, 2] },
      { ...base, fc: 22, function: 'mask-write-register', tid: 5, table: 'holdingRegisters', address: 13, count: 1, values: [], andMask: 0xf0f0, orMask: 0x0101 },
      { ...base, fc: 23, function: 'read-write-multiple-registers', tid: 6, table: 'holdingRegisters', address: 14, count: 1, values: [7] },
    ]);
  });

  it('never forwards a malformed request: exception 03 (or the one its function gives), alert, record', () => {
    for (const enforce of [true, false]) {
      const { s, ctx } = session({ enforce, rules: ['all'] });
      // 0x17 whose byte count claims more than the frame holds (the libmodbus overflow).
      const overflow = readWriteRegisters(9, 1, 0, 1, 0, [1], 0xff, 1);
      expect(s.fromPeer(overflow)).toEqual({ toDevice: [], toPeer: [exception(9, 1, 0x17, 0x03)] });
      expect(s.fromPeer(adu(10, 1, [0x11, 0])).toPeer).toEqual([exception(10, 1, 0x11, 0x03)]);
      expect(s.fromPeer(readHolding(11, 1, 65535, 2)).toPeer).toEqual([exception(11, 1, 0x03, 0x02)]);
      expect(ctx.alerts.map((a) => [a.kind, a.severity])).toEqual([['modbus.malformed', 'warning'], ['modbus.malformed', 'warning'], ['modbus.malformed', 'warning']]);
      expect(ctx.alerts[0]?.data).toMatchObject({ from: 'peer', fc: 0x17, exception: 3, detail: expect.stringMatching(/byte count 255/) as unknown });
      expect(ctx.records.map((r) => r.kind)).toEqual(['modbus.malformed', 'modbus.malformed', 'modbus.malformed']);
      s.end('done');
      expect(ctx.records.at(-1)).toMatchObject({ kind: 'modbus.session', requests: 3, malformed: 3, forwarded: 0 });
    }
  });

  it("onDeny 'close' ends the connection without an answer, and drops what follows", () => {
    const rules: ModbusRuleSet[] = [ModbusRulesSchema.parse({ profile: 'read-only', onDeny: 'close' })];
    const { s, ctx } = session({ rules });
    const out = s.fromPeer(Buffer.concat([readHolding(1, 1, 0, 1), writeRegister(2, 1, 0, 1), readHolding(3, 1, 0, 1)]));
    expect(out.toDevice).toEqual([readHolding(1, 1, 0, 1)]);
    expect(out.toPeer).toEqual([]);
    expect(out.close).toMatch(/write-single-register denied \(function\)/);
    expect(ctx.records).toEqual([expect.objectContaining({ kind: 'modbus.denied', action: 'close', exception: null })]);
    expect(s.fromPeer(readHolding(4, 1, 0, 1))).toEqual({ toDevice: [], toPeer: [] });
    expect(s.fromDevice(readAnswer(1, 1, 1))).toEqual({ toDevice: [], toPeer: [] });
  });

  it('closes when MBAP framing is lost (protocol id, length), after the frames before it', () => {
    for (const broken of [Buffer.from([0, 9, 0, 1, 0, 6, 1, 3, 0, 0, 0, 1]), Buffer.from([0, 9, 0, 0, 0, 255, 1]), Buffer.from([0, 9, 0, 0, 0, 1, 1])]) {
      const { s, ctx } = session();
      const out = s.fromPeer(Buffer.concat([readHolding(1, 1, 0, 1), broken]));
      expect(out.toDevice).toEqual([readHolding(1, 1, 0, 1)]);
      expect(out.close).toMatch(/framing lost \(peer\)/);
      expect(ctx.alerts).toEqual([expect.objectContaining({ kind: 'modbus.malformed', data: expect.objectContaining({ from: 'peer', tid: 9 }) as unknown })]);
      expect(s.buffered()).toBe(0);
    }
  });
});

describe('ModbusSession: monitor mode', () => {
  it('alerts and records what would be denied, with wouldDeny, and forwards it', () => {
    const { s, ctx } = session({ enforce: false });
    const frames = [writeRegister(1, 1, 40, 5), adu(2, 1, [0x11]), readHolding(3, 9, 0, 1)];
    const out = s.fromPeer(Buffer.concat(frames));
    expect(out).toEqual({ toDevice: frames, toPeer: [] });
    expect(ctx.alerts.map((a) => [a.kind, a.data.reason, a.data.wouldDeny, a.data.exception])).toEqual([
      ['modbus.denied', 'address', true, null],
      ['modbus.denied', 'function', true, null],
      ['modbus.denied', 'unit', true, null],
    ]);
    expect(ctx.records.map((r) => [r.kind, r.action ?? r.table])).toEqual([
      ['modbus.denied', 'forwarded'],
      ['modbus.write', 'holdingRegisters'],
      ['modbus.denied', 'forwarded'],
      ['modbus.denied', 'forwarded'],
    ]);
  });

  it("does not close on onDeny 'close'", () => {
    const { s } = session({ enforce: false, rules: [ModbusRulesSchema.parse({ profile: 'read-only', onDeny: 'close' })] });
    const out = s.fromPeer(writeRegister(1, 1, 0, 1));
    expect(out.close).toBeUndefined();
    expect(out.toDevice).toHaveLength(1);
  });
});

describe('ModbusSession: answers', () => {
  it('pairs pipelined requests with answers in any order, exceptions included, and counts the exceptions', () => {
    const { s, ctx } = session();
    const reqs = [readHolding(10, 1, 0, 1), readHolding(11, 1, 1, 2), writeRegister(12, 1, 10, 5), readHolding(13, 1, 3, 3)];
    expect(s.fromPeer(Buffer.concat(reqs)).toDevice).toEqual(reqs);
    const answers = [readAnswer(13, 1, 3), exception(11, 1, 0x03, 0x02), writeRegister(12, 1, 10, 5), readAnswer(10, 1, 1)];
    const out = s.fromDevice(Buffer.concat(answers));
    expect(out).toEqual({ toDevice: [], toPeer: answers });
    ctx.clock.t += 1500;
    s.end('peer closed');
    expect(ctx.records.at(-1)).toEqual({
      kind: 'modbus.session',
      device: 'pump-01',
      peer: '10.10.1.20',
      peerPort: 50123,
      reason: 'peer closed',
      requests: 4,
      forwarded: 4,
      denied: 0,
      malformed: 0,
      writes: 1,
      responses: 4,
      exceptions: 1,
      unanswered: 0,
      dropped: 0,
      bytesFromPeer: Buffer.concat(reqs).length,
      bytesFromDevice: Buffer.concat(answers).length,
      durationMs: 1500,
    });
    s.end('again');
    expect(ctx.records.filter((r) => r.kind === 'modbus.session')).toHaveLength(1);
  });

  it('pairs requests that share a transaction id oldest first, by function', () => {
    const { s } = session();
    s.fromPeer(Buffer.concat([readHolding(0, 1, 0, 1), writeRegister(0, 1, 10, 1), readHolding(0, 1, 0, 1)]));
    const out = s.fromDevice(Buffer.concat([writeRegister(0, 1, 10, 1), readAnswer(0, 1, 1), readAnswer(0, 1, 1)]));
    expect(out.close).toBeUndefined();
    expect(out.toPeer).toHaveLength(3);
    const extra = s.fromDevice(readAnswer(0, 1, 1));
    expect(extra.close).toMatch(/unsolicited/);
  });

  it('closes on an answer to no request, or of another function', () => {
    const a = session();
    const out = a.s.fromDevice(readAnswer(5, 1, 1));
    expect(out).toMatchObject({ toPeer: [], close: expect.stringMatching(/answers no request/) as unknown });
    expect(a.ctx.alerts).toEqual([expect.objectContaining({ kind: 'modbus.unsolicited', dedupKey: 'modbus.unsolicited/pump-01/10.10.1.20' })]);

    const b = session();
    b.s.fromPeer(readHolding(6, 1, 0, 1));
    expect(b.s.fromDevice(response(6, 1, [4, 2, 0, 0])).close).toMatch(/no request 6 asked for that function/);
  });

  it('closes when the device breaks framing', () => {
    const { s, ctx } = session();
    s.fromPeer(readHolding(1, 1, 0, 1));
    const out = s.fromDevice(Buffer.from([0, 1, 0, 0, 1, 0, 1, 3]));
    expect(out.close).toMatch(/framing lost \(device\)/);
    expect(ctx.alerts).toEqual([expect.objectContaining({ kind: 'modbus.malformed', data: expect.objectContaining({ from: 'device', code: 'length' }) as unknown })]);
  });
});

describe('ModbusSession: pending requests', () => {
  it('holds requests beyond maxPendingRequests and releases them, in order, as answers come', () => {
    const { s } = session({ maxPending: 2 });
    const reqs = [1, 2, 3, 4].map((tid) => readHolding(tid, 1, 0, 1));
    const out = s.fromPeer(Buffer.concat(reqs));
    expect(out.toDevice).toEqual(reqs.slice(0, 2));
    expect(s.buffered()).toBe(reqs[2]!.length + reqs[3]!.length);
    expect(s.fromDevice(readAnswer(2, 1, 1))).toEqual({ toDevice: [reqs[2]], toPeer: [readAnswer(2, 1, 1)] });
    expect(s.fromDevice(Buffer.concat([readAnswer(1, 1, 1), readAnswer(3, 1, 1)])).toDevice).toEqual([reqs[3]]);
    expect(s.buffered()).toBe(0);
    // A new request goes straight through again.
    expect(s.fromPeer(readHolding(5, 1, 0, 1)).toDevice).toHaveLength(1);
  });

  it('records a held write when it is forwarded, not before', () => {
    const { s, ctx } = session({ maxPending: 1 });
    s.fromPeer(Buffer.concat([readHolding(1, 1, 0, 1), writeRegister(2, 1, 10, 3)]));
    expect(ctx.records).toEqual([]);
    s.fromDevice(readAnswer(1, 1, 1));
    expect(ctx.records).toEqual([expect.objectContaining({ kind: 'modbus.write', tid: 2 })]);
  });

  it('closes with an alert when more than maxPendingRequests wait as well', () => {
    const { s, ctx } = session({ maxPending: 2 });
    const out = s.fromPeer(Buffer.concat([1, 2, 3, 4, 5, 6].map((tid) => readHolding(tid, 1, 0, 1))));
    expect(out.toDevice).toHaveLength(2);
    expect(out.close).toMatch(/more than 2 requests waiting/);
    expect(ctx.alerts).toEqual([expect.objectContaining({ kind: 'modbus.overflow', data: expect.objectContaining({ pending: 2, held: 2 }) as unknown })]);
    expect(s.buffered()).toBe(0);
    s.end('closed');
    expect(ctx.records.at(-1)).toMatchObject({ kind: 'modbus.session', unanswered: 2, dropped: 0 });
  });

  it('stops counting a request unanswered for staleAfterMs, and still passes its late answer', () => {
    const { s, ctx } = session({ maxPending: 2, staleAfterMs: 5000 });
    s.fromPeer(Buffer.concat([readHolding(1, 1, 0, 1), readHolding(2, 1, 0, 1)]));
    expect(s.fromPeer(readHolding(3, 1, 0, 1)).toDevice).toEqual([]);
    ctx.clock.t += 5000;
    // The held request goes out when the peer sends again, and so does the new one.
    expect(s.fromPeer(readHolding(4, 1, 0, 1)).toDevice).toEqual([readHolding(3, 1, 0, 1), readHolding(4, 1, 0, 1)]);
    const late = s.fromDevice(Buffer.concat([readAnswer(1, 1, 1), readAnswer(3, 1, 1), readAnswer(2, 1, 1), readAnswer(4, 1, 1)]));
    expect(late.close).toBeUndefined();
    expect(late.toPeer).toHaveLength(4);
    expect(s.fromDevice(readAnswer(1, 1, 1)).close).toMatch(/unsolicited/);
  });

  it('checks its options when built', () => {
    expect(() => createModbusSession({ rules: [], ctx: context(), maxPendingRequests: 0 })).toThrow(/maxPendingRequests/);
    expect(() => createModbusSession({ rules: [], ctx: context(), maxPendingRequests: 1.5 })).toThrow(/maxPendingRequests/);
    expect(() => createModbusSession({ rules: [], ctx: context(), maxPendingRequests: 1, staleAfterMs: 0 })).toThrow(/staleAfterMs/);
  });
});

describe('ModbusSession: cutting the streams', () => {
  /** Everything the session decided, flattened: what went each way, what closed, what it said. */
  function run(chunks: Buffer[], side: 'peer' | 'device', s: ModbusSession): { toDevice: Buffer; toPeer: Buffer; close: string | undefined; maxBuffered: number } {
    const outs: SessionOutput[] = [];
    let maxBuffered = 0;
    for (const c of chunks) {
      outs.push(side === 'peer' ? s.fromPeer(c) : s.fromDevice(c));
      maxBuffered = Math.max(maxBuffered, s.buffered());
    }
    return {
      toDevice: Buffer.concat(outs.flatMap((o) => o.toDevice)),
      toPeer: Buffer.concat(outs.flatMap((o) => o.toPeer)),
      close: outs.find((o) => o.close !== undefined)?.close,
      maxBuffered,
    };
  }

  const requests = Buffer.concat([
    readHolding(1, 1, 0, 100),
    writeRegister(2, 1, 40, 1),
    writeRegisters(3, 1, 10, [1, 2, 3]),
    readWriteRegisters(4, 1, 0, 1, 0, [1], 0xff, 1),
    adu(5, 1, [0x07]),
    readDeviceId(6, 1, 1),
    writeCoils(7, 1, 0, new Array<number>(16).fill(1)),
    readHolding(8, 3, 0, 1),
    adu(9, 1, [0x11, 0]),
    writeRegisters(10, 1, 10, new Array<number>(10).fill(0xffff)),
    Buffer.from([0, 11, 0, 0, 1, 0]),
  ]);

  it('decides the same for a request stream cut at every byte offset', () => {
    const whole = (() => {
      const { s, ctx } = session();
      return { ...run([requests], 'peer', s), alerts: ctx.alerts, records: ctx.records };
    })();
    expect(whole.close).toMatch(/framing lost/);
    for (let i = 0; i <= requests.length; i++) {
      const { s, ctx } = session();
      const r = run([requests.subarray(0, i), requests.subarray(i)], 'peer', s);
      expect(r.toDevice.equals(whole.toDevice), `toDevice, cut at ${i}`).toBe(true);
      expect(r.toPeer.equals(whole.toPeer), `toPeer, cut at ${i}`).toBe(true);
      expect(r.close).toBe(whole.close);
      expect(ctx.alerts).toEqual(whole.alerts);
      expect(ctx.records).toEqual(whole.records);
      expect(r.maxBuffered).toBeLessThanOrEqual(modbusBufferBound(32));
    }
  });

  it('decides the same for a stream fed byte by byte', () => {
    const { s: s1 } = session();
    const whole = run([requests], 'peer', s1);
    const { s: s2 } = session();
    const bytes = run([...requests].map((b) => Buffer.from([b])), 'peer', s2);
    expect(bytes.toDevice.equals(whole.toDevice)).toBe(true);
    expect(bytes.toPeer.equals(whole.toPeer)).toBe(true);
    expect(bytes.close).toBe(whole.close);
  });

  it('forwards the same answers for a response stream cut at every byte offset', () => {
    const reqs = [readHolding(1, 1, 0, 100), writeRegister(2, 1, 10, 1), readHolding(3, 1, 0, 2)];
    const answers = Buffer.concat([exception(2, 1, 6, 4), readAnswer(1, 1, 100), readAnswer(3, 1, 2)]);
    for (let i = 0; i <= answers.length; i++) {
      const { s } = session();
      s.fromPeer(Buffer.concat(reqs));
      const r = run([answers.subarray(0, i), answers.subarray(i)], 'device', s);
      expect(r.toPeer.equals(answers), `cut at ${i}`).toBe(true);
      expect(r.close).toBeUndefined();
    }
  });
});
