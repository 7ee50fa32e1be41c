// The Modbus TCP filter for one connection: requests from the peer are framed, parsed and checked
// against the allow entries' rules; what passes goes to the device byte for byte, what does not
// is answered by the filter itself with the exception a device would give ([MAP] 7). Answers from
// the device are framed and paired with the requests by transaction id ([TCP] 3.1.3: the server
// copies it from the request), so a client may have several requests outstanding, answered in
// any order.
//
// Pure (types.ts): no sockets, no timers; time comes from ctx.now().
import { nothing, type ProtocolAlert, type ProtocolSession, type SessionContext, type SessionOutput } from '../types.js';
import { MbapFramer, type FramingError } from './mbap.js';
import { parseRequest, type MalformedRequest, type ModbusRequest, type ModbusWrite } from './request.js';
import { ModbusChecker, type ModbusRuleSet } from './rules.js';
import { MAX_ADU_BYTES, MBAP_HEADER_BYTES, hex2, type ExceptionCode } from './spec.js';

export interface ModbusSessionOptions {
  /** One per allow entry that matches the peer: its `modbus:` rules, or 'all' for an entry without them. */
  rules: readonly ModbusRuleSet[];
  ctx: SessionContext;
  /** Requests forwarded and not yet answered; more are held (at most as many again) until answers come. */
  maxPendingRequests: number;
  /**
   * A forwarded request still unanswered after this long stops counting against
   * maxPendingRequests: a device that silently drops requests (to a unit id it does not serve, a
   * broadcast) must not wedge the connection. Its answer, if it comes late, is still forwarded.
   * Default 10 s, longer than the usual clients' response timeouts (libmodbus 0.5 s, pymodbus 3 s).
   */
  staleAfterMs?: number;
}

/** The most a session holds: a cut frame each way, and the held requests. */
export function modbusBufferBound(maxPendingRequests: number): number {
  return 2 * (MAX_ADU_BYTES - 1) + maxPendingRequests * MAX_ADU_BYTES;
}

export function createModbusSession(opts: ModbusSessionOptions): ModbusSession {
  return new ModbusSession(opts);
}

/** A forwarded request awaiting its answer; requests that share a transaction id are chained, oldest first. */
interface Pending {
  fc: number;
  sentAt: number;
  next: Pending | undefined;
}

interface Held {
  req: ModbusRequest;
  adu: Buffer;
}

export interface ModbusSessionCounts {
  /** Frames from the peer. */
  requests: number;
  forwarded: number;
  denied: number;
  malformed: number;
  /** Write requests forwarded. */
  writes: number;
  responses: number;
  /** Exception responses from the device ([MAP] 7), not the filter's own. */
  exceptions: number;
  bytesFromPeer: number;
  bytesFromDevice: number;
}

export class ModbusSession implements ProtocolSession {
  readonly counts: ModbusSessionCounts = { requests: 0, forwarded: 0, denied: 0, malformed: 0, writes: 0, responses: 0, exceptions: 0, bytesFromPeer: 0, bytesFromDevice: 0 };
  private readonly ctx: SessionContext;
  private readonly checker: ModbusChecker;
  private readonly maxPending: number;
  private readonly staleAfterMs: number;
  private readonly startedAt: number;
  private readonly peerFramer = new MbapFramer();
  private readonly deviceFramer = new MbapFramer();
  private readonly pending = new Map<number, Pending>();
  private pendingCount = 0;
  /** Requests given up as stale, by transaction id (function code): their late answers still pass. Bounded by maxPending. */
  private readonly late = new Map<number, number>();
  private readonly held: Held[] = [];
  private heldBytes = 0;
  /** The output of the call in progress, for the frame handlers (bound once, not per call). */
  private out: SessionOutput = nothing();
  private closed: string | undefined;
  private ended = false;
  private readonly onRequest: (adu: Buffer) => boolean;
  private readonly onResponse: (adu: Buffer) => boolean;

  constructor(opts: ModbusSessionOptions) {
    const { maxPendingRequests, staleAfterMs = 10_000 } = opts;
    if (!Number.isInteger(maxPendingRequests) || maxPendingRequests < 1) throw new Error(`modbus session: maxPendingRequests must be a whole number >= 1, not ${maxPendingRequests}`);
    if (!(staleAfterMs > 0)) throw new Error(`modbus session: staleAfterMs must be > 0, not ${staleAfterMs}`);
    this.ctx = opts.ctx;
    this.checker = new ModbusChecker(opts.rules);
    this.maxPending = maxPendingRequests;
    this.staleAfterMs = staleAfterMs;
    this.startedAt = this.ctx.now();
    this.onRequest = (adu) => this.request(adu);
    this.onResponse = (adu) => this.response(adu);
  }

  fromPeer(chunk: Buffer): SessionOutput {
    if (this.closed !== undefined) return nothing();
    this.counts.bytesFromPeer += chunk.length;
    const out = (this.out = nothing());
    if (this.held.length > 0) this.release(out);
    const error = this.peerFramer.push(chunk, this.onRequest);
    if (error !== undefined) this.framingLost('peer', error);
    return out;
  }

  fromDevice(chunk: Buffer): SessionOutput {
    if (this.closed !== undefined) return nothing();
    this.counts.bytesFromDevice += chunk.length;
    const out = (this.out = nothing());
    const error = this.deviceFramer.push(chunk, this.onResponse);
    if (error !== undefined) this.framingLost('device', error);
    else if (this.held.length > 0 && this.closed === undefined) this.release(out);
    return out;
  }

  end(reason: string): void {
    if (this.ended) return;
    this.ended = true;
    const c = this.counts;
    this.ctx.record({
      kind: 'modbus.session',
      ...this.who(),
      reason: this.closed ?? reason,
      requests: c.requests,
      forwarded: c.forwarded,
      denied: c.denied,
      malformed: c.malformed,
      writes: c.writes,
      responses: c.responses,
      exceptions: c.exceptions,
      unanswered: this.pendingCount,
      dropped: this.held.length,
      bytesFromPeer: c.bytesFromPeer,
      bytesFromDevice: c.bytesFromDevice,
      durationMs: Math.max(0, this.ctx.now() - this.startedAt),
    });
    this.held.length = 0;
    this.heldBytes = 0;
  }

  buffered(): number {
    return this.peerFramer.buffered() + this.deviceFramer.buffered() + this.heldBytes;
  }

  // -------------------------------------------------------------------------------------------
  // Requests

  private request(adu: Buffer): boolean {
    this.counts.requests++;
    const req = parseRequest(adu);
    if (!req.ok) {
      this.malformed(req);
      this.out.toPeer.push(exceptionAdu(req.tid, req.unit, req.fc, req.exception));
      return true;
    }
    const verdict = this.checker.check(req);
    if (!verdict.allowed) {
      this.counts.denied++;
      const enforce = this.ctx.enforce;
      const close = enforce && this.checker.onDeny === 'close';
      const exception = enforce && !close ? verdict.exception : null;
      const data = { ...this.who(), unit: req.unit, fc: req.fc, function: req.name, tid: req.tid, reason: verdict.reason, detail: verdict.detail, exception, wouldDeny: !enforce };
      const action = close ? 'close' : enforce ? `exception ${hex2(verdict.exception)}` : 'forwarded (monitor mode)';
      this.alert({
        severity: 'warning',
        kind: 'modbus.denied',
        dedupKey: `modbus.denied/${this.ctx.device}/${this.ctx.peer.address}/${hex2(req.fc)}/${verdict.reason}`,
        message: `modbus: ${this.ctx.peer.address} asked ${this.ctx.device} (unit ${req.unit}) for ${req.name}: ${verdict.detail}; ${action}`,
        data,
      });
      this.ctx.record({ kind: 'modbus.denied', ...data, action: close ? 'close' : enforce ? 'exception' : 'forwarded' });
      if (close) {
        this.shut(`modbus: ${req.name} denied (${verdict.reason}), and the rules say close`);
        return false;
      }
      if (enforce) {
        this.out.toPeer.push(exceptionAdu(req.tid, req.unit, req.fc, verdict.exception));
        return true;
      }
    }
    return this.forward(req, adu);
  }

  /** Sends an allowed request now, or holds it behind those already held. */
  private forward(req: ModbusRequest, adu: Buffer): boolean {
    if (this.held.length === 0 && this.hasRoom()) {
      this.send(req, Buffer.from(adu));
      return true;
    }
    if (this.held.length >= this.maxPending) {
      this.alert({
        severity: 'warning',
        kind: 'modbus.overflow',
        dedupKey: `modbus.overflow/${this.ctx.device}/${this.ctx.peer.address}`,
        message: `modbus: ${this.ctx.peer.address} has ${this.pendingCount} requests unanswered by ${this.ctx.device} and ${this.held.length} more waiting; connection closed`,
        data: { ...this.who(), pending: this.pendingCount, held: this.held.length, maxPendingRequests: this.maxPending },
      });
      this.shut(`modbus: more than ${this.maxPending} requests waiting for the device`);
      return false;
    }
    const copy = Buffer.from(adu);
    this.held.push({ req, adu: copy });
    this.heldBytes += copy.length;
    return true;
  }

  private send(req: ModbusRequest, copy: Buffer): void {
    this.out.toDevice.push(copy);
    this.counts.forwarded++;
    const node: Pending = { fc: req.fc, sentAt: this.ctx.now(), next: undefined };
    const first = this.pending.get(req.tid);
    if (first === undefined) this.pending.set(req.tid, node);
    else {
      let last = first;
      while (last.next !== undefined) last = last.next;
      last.next = node;
    }
    this.pendingCount++;
    if (req.writes.length > 0) {
      this.counts.writes++;
      for (const w of req.writes) this.ctx.record(this.writeRecord(req, w));
    }
  }

  /** Sends held requests, oldest first, while there is room. */
  private release(out: SessionOutput): void {
    this.out = out;
    while (this.held.length > 0 && this.hasRoom()) {
      const next = this.held.shift();
      if (next === undefined) break;
      this.heldBytes -= next.adu.length;
      this.send(next.req, next.adu);
    }
  }

  private hasRoom(): boolean {
    if (this.pendingCount < this.maxPending) return true;
    this.forgetStale();
    return this.pendingCount < this.maxPending;
  }

  /** Moves requests unanswered for staleAfterMs out of the count (their late answers are still paired). */
  private forgetStale(): void {
    const before = this.ctx.now() - this.staleAfterMs;
    for (const [tid, first] of this.pending) {
      let head: Pending | undefined = first;
      while (head !== undefined && head.sentAt <= before) {
        this.late.set(tid, head.fc);
        if (this.late.size > this.maxPending) {
          const oldest = this.late.keys().next();
          if (oldest.done !== true) this.late.delete(oldest.value);
        }
        this.pendingCount--;
        head = head.next;
      }
      if (head === undefined) this.pending.delete(tid);
      else if (head !== first) this.pending.set(tid, head);
    }
  }

  private writeRecord(req: ModbusRequest, w: ModbusWrite): Record<string, unknown> & { kind: string } {
    return {
      kind: 'modbus.write',
      ...this.who(),
      unit: req.unit,
      fc: req.fc,
      function: req.name,
      tid: req.tid,
      table: w.table,
      ...(w.file !== undefined ? { file: w.file } : {}),
      address: w.address,
      count: w.count,
      values: w.values,
      ...(w.andMask !== undefined ? { andMask: w.andMask, orMask: w.orMask } : {}),
    };
  }

  private malformed(req: MalformedRequest): void {
    this.counts.malformed++;
    const data = { ...this.who(), from: 'peer', unit: req.unit, fc: req.fc, function: req.name, tid: req.tid, detail: req.reason, exception: req.exception };
    this.alert({
      severity: 'warning',
      kind: 'modbus.malformed',
      dedupKey: `modbus.malformed/${this.ctx.device}/${this.ctx.peer.address}/${hex2(req.fc)}`,
      message: `modbus: malformed ${req.name} from ${this.ctx.peer.address} to ${this.ctx.device}: ${req.reason}; answered with exception ${hex2(req.exception)}, not forwarded`,
      data,
    });
    this.ctx.record({ kind: 'modbus.malformed', ...data, action: 'exception' });
  }

  // -------------------------------------------------------------------------------------------
  // Responses

  private response(adu: Buffer): boolean {
    this.counts.responses++;
    const tid = adu.readUInt16BE(0);
    const fc = adu[MBAP_HEADER_BYTES] ?? 0;
    // [MAP] 7: an exception response carries the request's function code with the high bit set.
    const asked = fc & 0x7f;
    if (!this.answer(tid, asked)) {
      const known = this.pending.has(tid);
      const detail = known ? `response ${tid} is ${hex2(fc)}, and no request ${tid} asked for that function` : `response ${tid} answers no request`;
      this.alert({
        severity: 'warning',
        kind: 'modbus.unsolicited',
        dedupKey: `modbus.unsolicited/${this.ctx.device}/${this.ctx.peer.address}`,
        message: `modbus: ${this.ctx.device} sent ${this.ctx.peer.address} a response that pairs with no request (${detail}); connection closed`,
        data: { ...this.who(), tid, fc, detail },
      });
      this.shut(`modbus: unsolicited response from the device (${detail})`);
      return false;
    }
    if (fc & 0x80) this.counts.exceptions++;
    this.out.toPeer.push(Buffer.from(adu));
    return true;
  }

  /** Takes the oldest pending request with this id and function off the books; false if there is none. */
  private answer(tid: number, fc: number): boolean {
    let prev: Pending | undefined;
    for (let p = this.pending.get(tid); p !== undefined; prev = p, p = p.next) {
      if (p.fc !== fc) continue;
      if (prev !== undefined) prev.next = p.next;
      else if (p.next !== undefined) this.pending.set(tid, p.next);
      else this.pending.delete(tid);
      this.pendingCount--;
      return true;
    }
    if (this.late.get(tid) === fc) {
      this.late.delete(tid);
      return true;
    }
    return false;
  }

  // -------------------------------------------------------------------------------------------

  private framingLost(from: 'peer' | 'device', error: FramingError): void {
    if (this.closed !== undefined) return;
    if (from === 'peer') this.counts.malformed++;
    const source = from === 'peer' ? this.ctx.peer.address : this.ctx.device;
    const data = { ...this.who(), from, tid: error.tid, code: error.code, detail: error.message };
    this.alert({
      severity: 'warning',
      kind: 'modbus.malformed',
      dedupKey: `modbus.malformed/${this.ctx.device}/${this.ctx.peer.address}/${from}-framing`,
      message: `modbus: broken frame from ${source}: ${error.message}; framing is lost, connection closed`,
      data,
    });
    this.ctx.record({ kind: 'modbus.malformed', ...data, action: 'close' });
    this.shut(`modbus: framing lost (${from}): ${error.message}`);
  }

  private shut(reason: string): void {
    if (this.closed !== undefined) return;
    this.closed = reason;
    this.out.close = reason;
    this.held.length = 0;
    this.heldBytes = 0;
  }

  private alert(a: ProtocolAlert): void {
    this.ctx.alert(a);
  }

  private who(): { device: string; peer: string; peerPort: number } {
    return { device: this.ctx.device, peer: this.ctx.peer.address, peerPort: this.ctx.peer.port };
  }
}

/** [MAP] 7: the request's transaction and unit ids, function code | 0x80, the exception code. */
export function exceptionAdu(tid: number, unit: number, fc: number, code: ExceptionCode): Buffer {
  const adu = Buffer.allocUnsafe(MBAP_HEADER_BYTES + 2);
  adu.writeUInt16BE(tid, 0);
  adu.writeUInt16BE(0, 2);
  adu.writeUInt16BE(3, 4);
  adu[6] = unit;
  adu[7] = (fc | 0x80) & 0xff;
  adu[8] = code;
  return adu;
}
