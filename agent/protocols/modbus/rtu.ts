// The Modbus RTU gateway's serial side. Peers speak Modbus TCP to a port of the gateway's own,
// through the same filter as any Modbus connection (session.ts); what the filter passes for the
// device, an MBAP ADU, leaves here as an RTU frame and its answer comes back as an MBAP ADU with
// the request's transaction id. Specifications:
//   [SL]   Modbus over Serial Line Specification and Implementation Guide v1.02
//   [MAP]  Modbus Application Protocol Specification v1.1b3
//
// A line is one bus with one master ([SL] 2.1): one request at a time, for every connection to
// every device on it, taken from the connections in turn. An answer's length is read from its
// function code and byte count ([MAP] 6), it is checked against its CRC ([SL] 2.5.1.2, 6.2.2),
// and a device that does not answer in time, or answers with a broken frame, is answered for by
// the gateway with exception 0x0B ([MAP] 7).
import type { SerialPort } from 'serialport';
import type { DeviceLink } from '../relay.js';
import type { RtuLine } from '../schema.js';
import type { ProtocolAlert, SessionContext } from '../types.js';
import { exceptionAdu } from './session.js';
import { EXCEPTION, MBAP_HEADER_BYTES, hex2 } from './spec.js';

/** [SL] 2.5.1: address (1), PDU (at most 253), CRC (2). */
export const MAX_RTU_FRAME = 256;
/** [SL] 2.2: 1-247 are devices, 0 is the broadcast address, 248-255 are reserved. */
const MAX_UNIT = 247;
/** [SL] 2.1: broadcast requests are necessarily writes; [MAP] 6.5, 6.6, 6.11, 6.12, 6.15, 6.16. */
const BROADCAST_WRITES = new Set([0x05, 0x06, 0x0f, 0x10, 0x15, 0x16]);
/**
 * An answer with no length to read (an unknown function) ends when the line goes quiet. t3.5
 * is a few milliseconds, less than USB serial adapters take between the bursts they deliver
 * (FTDI's latency timer: 16 ms by default), so the silence that ends such a frame is longer.
 */
const SILENCE_FLOOR_MS = 20;
/** The line is opened again after this long when it cannot be, doubling up to the maximum. */
const REOPEN_MIN_MS = 1000;
const REOPEN_MAX_MS = 30_000;

// Loaded when a line is first opened: a serial driver that cannot load (its native binding)
// takes down the RTU lines, not the process and its TCP proxies.
let driver: Promise<typeof import('serialport')> | undefined;
const serialDriver = () => (driver ??= import('serialport'));

// ---------------------------------------------------------------------------------------------
// Frames

const CRC_TABLE = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xa001 : c >>> 1;
    t[i] = c;
  }
  return t;
})();

/** [SL] 6.2.2: CRC-16 (polynomial 0xA001 reflected, preset 0xFFFF) of buf[start, end). */
export function crc16(buf: Uint8Array, start = 0, end = buf.length): number {
  let crc = 0xffff;
  for (let i = start; i < end; i++) crc = (crc >>> 8) ^ (CRC_TABLE[(crc ^ (buf[i] ?? 0)) & 0xff] ?? 0);
  return crc;
}

/** [SL] 2.5.1: the MBAP ADU's unit id as the address, its PDU, the CRC low byte first. */
export function rtuFromMbap(adu: Buffer): Buffer {
  const pdu = adu.length - MBAP_HEADER_BYTES;
  const frame = Buffer.allocUnsafe(1 + pdu + 2);
  frame[0] = adu[6] ?? 0;
  adu.copy(frame, 1, MBAP_HEADER_BYTES);
  frame.writeUInt16LE(crc16(frame, 0, 1 + pdu), 1 + pdu);
  return frame;
}

/** An RTU answer (with its CRC) as the MBAP ADU of transaction `tid`. */
export function mbapFromRtu(tid: number, frame: Buffer): Buffer {
  const pdu = frame.length - 3;
  const adu = Buffer.allocUnsafe(MBAP_HEADER_BYTES + pdu);
  adu.writeUInt16BE(tid, 0);
  adu.writeUInt16BE(0, 2);
  adu.writeUInt16BE(1 + pdu, 4);
  adu[6] = frame[0] ?? 0;
  frame.copy(adu, MBAP_HEADER_BYTES, 1, 1 + pdu);
  return adu;
}

/** True when the frame's last two bytes are the CRC of the rest. */
export function crcOk(frame: Buffer): boolean {
  return frame.length >= 4 && crc16(frame, 0, frame.length - 2) === frame.readUInt16LE(frame.length - 2);
}

/**
 * The whole length of the answer whose first n bytes are in rx, from its function code and
 * byte count ([MAP] 6, the response of each function; 7, the exception response), given the
 * RTU request it answers: a number once it is known, undefined while more bytes are needed to
 * tell, 'silence' when the function's answer has no length to read.
 */
export function answerLength(rx: Buffer, n: number, request: Buffer): number | 'silence' | undefined {
  if (n < 2) return undefined;
  const fc = rx[1] ?? 0;
  if (fc & 0x80) return 5; // address, function | 0x80, exception code, CRC
  switch (fc) {
    case 0x01: // 6.1-6.4: byte count, then that many bytes
    case 0x02:
    case 0x03:
    case 0x04:
    case 0x0c: // 6.10: byte count
    case 0x11: // 6.13: byte count
    case 0x14: // 6.14: response data length
    case 0x15: // 6.15: the request echoed, from its request data length
    case 0x17: // 6.17: byte count
      return n < 3 ? undefined : 3 + (rx[2] ?? 0) + 2;
    case 0x05: // 6.5, 6.6: the request echoed
    case 0x06:
    case 0x0f: // 6.11, 6.12: address and quantity
    case 0x10:
    case 0x0b: // 6.9: status and event count
      return 8;
    case 0x07: // 6.7: one byte of output data
      return 5;
    case 0x16: // 6.16: the request echoed
      return 10;
    case 0x08: // 6.8: the sub-function and its data, as long as the request's
      return request.length;
    case 0x18: // 6.18: a two-byte byte count
      return n < 4 ? undefined : 4 + rx.readUInt16BE(2) + 2;
    case 0x2b: // 6.21: Read Device Identification has no byte count, its objects say their lengths
      if (n < 3) return undefined;
      return rx[2] === 0x0e ? deviceIdLength(rx, n) : 'silence';
    default:
      return 'silence';
  }
}

/** [MAP] 6.21: MEI type, code, conformity, more follows, next id, count; then id, length, value per object. */
function deviceIdLength(rx: Buffer, n: number): number | undefined {
  if (n < 8) return undefined;
  let off = 8;
  for (let i = 0; i < (rx[7] ?? 0); i++) {
    if (n < off + 2) return undefined;
    off += 2 + (rx[off + 1] ?? 0);
    if (off > MAX_RTU_FRAME) return off;
  }
  return off + 2;
}

/**
 * [SL] 2.5.1.1: t3.5, the silence that separates frames: 3.5 character times, and a fixed
 * 1.75 ms above 19200 baud. A character is a start bit, 8 data bits, the parity bit and the stop bits.
 */
export function silenceMs(line: Pick<RtuLine, 'baudRate' | 'parity' | 'stopBits'>): number {
  if (line.baudRate > 19200) return 1.75;
  const bits = 1 + 8 + (line.parity === 'none' ? 0 : 1) + line.stopBits;
  return (3.5 * bits * 1000) / line.baudRate;
}

// ---------------------------------------------------------------------------------------------
// The bus

export interface RtuCounts {
  /** Frames sent on the line, broadcasts included. */
  requests: number;
  broadcasts: number;
  /** Intact answers given back to their connections (the device's exceptions too). */
  answers: number;
  /** Requests the device did not answer in time: answered with 0x0B. */
  timeouts: number;
  /** Answers with a bad CRC (or too long to be a frame): dropped, answered with 0x0B. */
  crcErrors: number;
  /** Intact frames from another address or for another function: dropped, the wait goes on. */
  unexpected: number;
  /** Requests the gateway answered with 0x0A: a reserved unit id, a broadcast read, the line down, too many queued. */
  refused: number;
  /** Bytes that came with no request waiting for them. */
  noiseBytes: number;
}

export interface RtuStatus extends RtuCounts {
  open: boolean;
  queued: number;
}

export interface RtuBusOptions {
  line: RtuLine;
  /** Requests one connection may have waiting for the line; more are answered 0x0A. */
  maxQueuedPerConnection: number;
  /** Alerts about the line itself (it cannot be opened, it was lost); the caller names the devices on it. */
  lineAlert(a: ProtocolAlert): void;
  log: { info(o: object, m?: string): void; warn(o: object, m?: string): void; error(o: object, m?: string): void };
  now?: () => number;
}

interface Job {
  link: BusLink;
  tid: number;
  unit: number;
  fc: number;
  frame: Buffer;
}

/** One connection's share of the bus: what the relay writes and reads instead of a socket. */
class BusLink implements DeviceLink {
  readonly queue: Job[] = [];
  closed = false;
  private handler: ((adu: Buffer) => void) | undefined;
  private ender: ((why: string) => void) | undefined;

  constructor(
    private readonly bus: RtuBus,
    readonly ctx: SessionContext,
  ) {}

  write(adu: Buffer): void {
    this.bus.submit(this, adu);
  }

  onData(handler: (adu: Buffer) => void): void {
    this.handler = handler;
  }

  idle(): boolean {
    return this.queue.length === 0 && !this.bus.serving(this);
  }

  onEnd(handler: (why: string) => void): void {
    this.ender = handler;
  }

  /** The bus is closing: the connection ends with it. */
  end(why: string): void {
    this.close();
    this.ender?.(why);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.queue.length = 0;
    this.bus.forget(this);
  }

  deliver(adu: Buffer): void {
    if (!this.closed) this.handler?.(adu);
  }
}

export class RtuBus {
  readonly counts: RtuCounts = { requests: 0, broadcasts: 0, answers: 0, timeouts: 0, crcErrors: 0, unexpected: 0, refused: 0, noiseBytes: 0 };
  private readonly line: RtuLine;
  private readonly now: () => number;
  private readonly t35: number;
  private readonly links: BusLink[] = [];
  /** The link the next request is looked for from, for turns. */
  private turn = 0;
  private port: SerialPort | undefined;
  private opening = false;
  private opened = false;
  private closing = false;
  private reopenMs = REOPEN_MIN_MS;
  private reopenTimer: NodeJS.Timeout | undefined;
  private lineDown: string | undefined;

  /** The request on the line, and what has come back for it. */
  private current: Job | undefined;
  private readonly rx = Buffer.alloc(MAX_RTU_FRAME);
  private rxLength = 0;
  private responseTimer: NodeJS.Timeout | undefined;
  private silenceTimer: NodeJS.Timeout | undefined;
  private waitTimer: NodeJS.Timeout | undefined;
  /** When the line last carried a byte either way (ms, this.now()). */
  private lastActivity = 0;
  /** No request leaves before this (after a broadcast, after a timeout). */
  private quietUntil = 0;

  constructor(private readonly opts: RtuBusOptions) {
    this.line = opts.line;
    this.now = opts.now ?? (() => performance.now());
    this.t35 = silenceMs(opts.line);
  }

  /** Opens the line; when it cannot be, alerts and tries again later (a USB adapter may come back). */
  open(): void {
    if (this.closing || this.port !== undefined || this.opening) return;
    this.opening = true;
    serialDriver().then(
      ({ SerialPort }) => {
        this.opening = false;
        if (!this.closing) this.openWith(SerialPort);
      },
      (err: unknown) => {
        this.opening = false;
        this.down(`the serial port driver cannot be loaded: ${(err as Error).message}`);
      },
    );
  }

  private openWith(SerialPortClass: typeof SerialPort): void {
    const l = this.line;
    const port = new SerialPortClass({ path: l.serialPort, baudRate: l.baudRate, parity: l.parity, dataBits: l.dataBits, stopBits: l.stopBits, autoOpen: false });
    this.port = port;
    port.on('data', (chunk: Buffer) => this.onData(chunk));
    port.on('error', (err: Error) => this.opts.log.warn({ serialPort: l.serialPort, err: err.message }, 'RTU line error'));
    port.on('close', (err: Error | null) => {
      if (this.port !== port) return;
      this.port = undefined;
      this.opened = false;
      if (this.closing) return;
      this.down(`${l.serialPort} was lost${err ? `: ${err.message}` : ''}`);
    });
    port.open((err) => {
      if (this.port !== port) return;
      if (err) {
        this.port = undefined;
        this.down(`${l.serialPort} cannot be opened: ${err.message}`);
        return;
      }
      this.opened = true;
      this.reopenMs = REOPEN_MIN_MS;
      this.lastActivity = this.now();
      if (this.lineDown !== undefined) this.opts.log.info({ serialPort: l.serialPort }, 'RTU line open again');
      else this.opts.log.info({ serialPort: l.serialPort, baudRate: l.baudRate, parity: l.parity, stopBits: l.stopBits }, 'RTU line open');
      this.lineDown = undefined;
      this.kick();
    });
  }

  status(): RtuStatus {
    return { ...this.counts, open: this.opened, queued: this.links.reduce((n, k) => n + k.queue.length, 0) };
  }

  /** The device side of one connection. */
  link(ctx: SessionContext): DeviceLink {
    const link = new BusLink(this, ctx);
    this.links.push(link);
    return link;
  }

  async close(): Promise<void> {
    this.closing = true;
    clearTimeout(this.reopenTimer);
    this.clearJobTimers();
    clearTimeout(this.waitTimer);
    this.current = undefined;
    for (const l of [...this.links]) l.end(`the line ${this.line.serialPort} was closed (its settings changed, or no device uses it)`);
    const port = this.port;
    this.port = undefined;
    this.opened = false;
    if (port?.isOpen) await new Promise<void>((resolve) => port.close(() => resolve()));
  }

  /** Takes a request (an MBAP ADU) of a connection for the line. */
  submit(link: BusLink, adu: Buffer): void {
    if (link.closed || adu.length <= MBAP_HEADER_BYTES) return;
    const job: Job = { link, tid: adu.readUInt16BE(0), unit: adu[6] ?? 0, fc: adu[MBAP_HEADER_BYTES] ?? 0, frame: rtuFromMbap(adu) };
    // [SL] 2.2: no device answers to 248-255; [SL] 2.1: a broadcast is a write, and nobody answers it.
    if (job.unit > MAX_UNIT) return this.refuse(job, `unit ${job.unit} is reserved on a serial line (Modbus over Serial Line 2.2: devices are 1-247)`);
    if (job.unit === 0 && !BROADCAST_WRITES.has(job.fc)) return this.refuse(job, `${hex2(job.fc)} to unit 0: a broadcast is a write (Modbus over Serial Line 2.1), and nobody would answer it`);
    if (!this.opened) return this.refuse(job, `the line ${this.line.serialPort} is not open${this.lineDown !== undefined ? ` (${this.lineDown})` : ''}`);
    if (link.queue.length >= this.opts.maxQueuedPerConnection) return this.refuse(job, `${link.queue.length} requests of this connection are already waiting for the line`);
    link.queue.push(job);
    this.kick();
  }

  serving(link: BusLink): boolean {
    return this.current?.link === link;
  }

  forget(link: BusLink): void {
    const i = this.links.indexOf(link);
    if (i < 0) return;
    this.links.splice(i, 1);
    if (this.turn > i) this.turn--;
  }

  // -------------------------------------------------------------------------------------------

  /** Sends the next request once the line has been quiet long enough. */
  private kick(): void {
    if (this.current !== undefined || this.waitTimer !== undefined || !this.opened) return;
    if (!this.links.some((l) => l.queue.length > 0)) return;
    // [SL] 2.5.1.1: frames are separated by at least t3.5 of silence.
    const ready = Math.max(this.lastActivity + this.t35, this.quietUntil);
    const wait = ready - this.now();
    if (wait > 0) {
      this.waitTimer = setTimeout(() => {
        this.waitTimer = undefined;
        this.kick();
      }, Math.ceil(wait));
      return;
    }
    const job = this.next();
    if (job !== undefined) this.send(job);
  }

  /** The oldest request of the next connection, in turn, that has one. */
  private next(): Job | undefined {
    for (let i = 0; i < this.links.length; i++) {
      const k = (this.turn + i) % this.links.length;
      const job = this.links[k]?.queue.shift();
      if (job !== undefined) {
        this.turn = (k + 1) % this.links.length;
        return job;
      }
    }
    return undefined;
  }

  private send(job: Job): void {
    const port = this.port;
    if (port === undefined) return this.refuse(job, 'the line is not open');
    const broadcast = job.unit === 0;
    this.current = job;
    this.rxLength = 0;
    this.counts.requests++;
    if (broadcast) this.counts.broadcasts++;
    port.write(job.frame);
    // The response timeout counts from the end of the request on the wire, which drain waits for.
    port.drain((err) => {
      if (this.current !== job) return;
      this.lastActivity = this.now();
      if (err) return this.finish(job, exceptionAdu(job.tid, job.unit, job.fc, EXCEPTION.gatewayTargetFailed));
      if (broadcast) {
        // [SL] 2.4.1: no answer; the turnaround delay lets the devices act on it first.
        this.quietUntil = this.now() + this.line.turnaroundDelayMs;
        this.current = undefined;
        this.kick();
        return;
      }
      this.responseTimer = setTimeout(() => this.timeout(job), this.line.responseTimeoutMs);
    });
  }

  private onData(chunk: Buffer): void {
    this.lastActivity = this.now();
    const job = this.current;
    if (job === undefined || job.unit === 0) {
      this.counts.noiseBytes += chunk.length;
      return;
    }
    const room = MAX_RTU_FRAME - this.rxLength;
    chunk.copy(this.rx, this.rxLength, 0, Math.min(room, chunk.length));
    this.rxLength += Math.min(room, chunk.length);
    this.frame(job);
  }

  /** Whether what came back makes an answer yet. */
  private frame(job: Job): void {
    const need = answerLength(this.rx, this.rxLength, job.frame);
    if (need === undefined) return;
    if (need === 'silence') {
      clearTimeout(this.silenceTimer);
      this.silenceTimer = setTimeout(() => this.answer(job, this.rxLength), Math.max(SILENCE_FLOOR_MS, Math.ceil(this.t35)));
      return;
    }
    if (need > MAX_RTU_FRAME) return this.broken(job, `its length fields make it ${need} bytes, longer than a frame (Modbus over Serial Line 2.5.1: 256)`);
    if (this.rxLength >= need) this.answer(job, need);
  }

  private answer(job: Job, length: number): void {
    if (this.current !== job) return;
    const frame = Buffer.from(this.rx.subarray(0, length));
    if (!crcOk(frame)) return this.broken(job, `its CRC is 0x${frame.length >= 2 ? frame.readUInt16LE(frame.length - 2).toString(16).padStart(4, '0') : '?'}, not 0x${crc16(frame, 0, Math.max(0, frame.length - 2)).toString(16).padStart(4, '0')}`);
    // [SL] 2.4.1: a frame from another device (or for another function) is not the answer; wait on.
    if (frame[0] !== job.unit || ((frame[1] ?? 0) & 0x7f) !== job.fc) {
      this.counts.unexpected++;
      this.opts.log.warn({ serialPort: this.line.serialPort, unit: job.unit, fc: job.fc, got: frame.subarray(0, 2).toString('hex') }, 'RTU frame that does not answer the request: dropped');
      this.rxLength = 0;
      return;
    }
    this.counts.answers++;
    this.finish(job, mbapFromRtu(job.tid, frame));
  }

  /** A broken answer: dropped, counted, alerted; the peer hears that the device failed to respond. */
  private broken(job: Job, why: string): void {
    this.counts.crcErrors++;
    const { ctx } = job.link;
    const data = { serialPort: this.line.serialPort, unit: job.unit, fc: job.fc, tid: job.tid, peer: ctx.peer.address, bytes: this.rx.subarray(0, Math.min(this.rxLength, 16)).toString('hex'), detail: why };
    ctx.alert({
      severity: 'warning',
      kind: 'modbus.rtu-crc',
      dedupKey: `modbus.rtu-crc/${ctx.device}/${job.unit}`,
      message: `modbus rtu: a broken answer from ${ctx.device} (unit ${job.unit} on ${this.line.serialPort}) to ${hex2(job.fc)}: ${why}; dropped, ${ctx.peer.address} gets exception 0x0B`,
      data,
    });
    ctx.record({ kind: 'modbus.rtu-crc', device: ctx.device, peerPort: ctx.peer.port, ...data, action: 'exception 0x0B' });
    this.finish(job, exceptionAdu(job.tid, job.unit, job.fc, EXCEPTION.gatewayTargetFailed));
  }

  private timeout(job: Job): void {
    if (this.current !== job) return;
    this.counts.timeouts++;
    const { ctx } = job.link;
    const partial = this.rxLength > 0 ? `, ${this.rxLength} bytes of an answer` : '';
    const data = { serialPort: this.line.serialPort, unit: job.unit, fc: job.fc, tid: job.tid, peer: ctx.peer.address, timeoutMs: this.line.responseTimeoutMs, received: this.rxLength };
    ctx.alert({
      severity: 'warning',
      kind: 'modbus.rtu-timeout',
      dedupKey: `modbus.rtu-timeout/${ctx.device}/${job.unit}`,
      message: `modbus rtu: ${ctx.device} (unit ${job.unit} on ${this.line.serialPort}) did not answer ${hex2(job.fc)} within ${this.line.responseTimeoutMs} ms${partial}; ${ctx.peer.address} gets exception 0x0B`,
      data,
    });
    ctx.record({ kind: 'modbus.rtu-timeout', device: ctx.device, peerPort: ctx.peer.port, ...data, action: 'exception 0x0B' });
    // A late answer must not be taken for the next request's: give it the turnaround delay.
    this.quietUntil = this.now() + this.line.turnaroundDelayMs;
    this.finish(job, exceptionAdu(job.tid, job.unit, job.fc, EXCEPTION.gatewayTargetFailed));
  }

  private finish(job: Job, adu: Buffer): void {
    this.clearJobTimers();
    this.current = undefined;
    this.rxLength = 0;
    job.link.deliver(adu);
    this.kick();
  }

  /** [MAP] 7: 0x0A, no path to the target; answered by the gateway without using the line. */
  private refuse(job: Job, why: string): void {
    this.counts.refused++;
    this.opts.log.warn({ serialPort: this.line.serialPort, unit: job.unit, fc: job.fc, peer: job.link.ctx.peer.address, reason: why }, 'RTU request answered with 0x0A');
    const adu = exceptionAdu(job.tid, job.unit, job.fc, EXCEPTION.gatewayPathUnavailable);
    // Never into the session while the relay is still writing what the session just gave it.
    setImmediate(() => job.link.deliver(adu));
  }

  private down(why: string): void {
    const first = this.lineDown === undefined;
    this.lineDown = why;
    // The request on the line will get no answer; those waiting have no line to go to.
    const current = this.current;
    this.clearJobTimers();
    this.current = undefined;
    if (current !== undefined) current.link.deliver(exceptionAdu(current.tid, current.unit, current.fc, EXCEPTION.gatewayTargetFailed));
    for (const l of this.links) for (const job of l.queue.splice(0)) this.refuse(job, why);
    if (first) {
      this.opts.lineAlert({
        severity: 'critical',
        kind: 'modbus.rtu-line',
        dedupKey: `modbus.rtu-line/${this.line.serialPort}`,
        message: `modbus rtu: ${why}; requests for its devices get exception 0x0A until it is back (tried again every ${REOPEN_MIN_MS / 1000}-${REOPEN_MAX_MS / 1000} s)`,
        data: { serialPort: this.line.serialPort, reason: why },
      });
    }
    this.opts.log.error({ serialPort: this.line.serialPort, reason: why, retryInMs: this.reopenMs }, 'RTU line down');
    this.reopenTimer = setTimeout(() => this.open(), this.reopenMs);
    this.reopenMs = Math.min(REOPEN_MAX_MS, this.reopenMs * 2);
  }

  private clearJobTimers(): void {
    clearTimeout(this.responseTimer);
    clearTimeout(this.silenceTimer);
    this.responseTimer = undefined;
    this.silenceTimer = undefined;
  }
}
