// The persistent outbox: every health message and event waits here, on disk, until the broker
// has acknowledged it (QoS 1). One append-only journal of framed records (length, CRC32, body):
// a push, an ack and a drop are each one record, so a crash leaves at worst a torn last record,
// which the CRC exposes and the next open cuts off. The journal is rewritten (temp file, fsync,
// rename) when acked and dropped records outweigh the live ones. Only an index (seq, priority,
// offset) is held in memory; payloads are read back from the file when the link asks for them.
// Format, fsync policy and drop policy: docs/outbox.md.
import { closeSync, fdatasyncSync, fstatSync, fsyncSync, ftruncateSync, mkdirSync, openSync, readSync, renameSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { LockError, removeIfExists, tryPidLock, writeAtOrTruncate } from '../util/fsx.js';

export const PRIORITIES = ['low', 'normal', 'high'] as const;
export type Priority = (typeof PRIORITIES)[number];

export interface OutboxOptions {
  /** Bound on the queued records' size on disk (frame included). */
  maxBytes: number;
  maxMessages: number;
  /** always: a push is on disk when it returns; batch: within 200 ms (BATCH_MS). */
  fsync: 'always' | 'batch';
  /** Dead bytes (acked, dropped) tolerated before a rewrite; default min(1 MiB, maxBytes / 4). */
  compactAfterBytes?: number;
}

export interface OutboxMessage {
  topic: string;
  payload: string;
  retain: boolean;
  priority: Priority;
}

export interface QueuedMessage extends OutboxMessage {
  seq: number;
}

export interface OutboxStats {
  depth: number;
  bytes: number;
  dropped: number;
  droppedByPriority: Record<Priority, number>;
  /** The journal's size: live records plus the acked and dropped ones not yet compacted. */
  fileBytes: number;
}

export class OutboxError extends Error {
  constructor(
    readonly code: 'E_OUTBOX_OPTIONS' | 'E_OUTBOX_MESSAGE' | 'E_OUTBOX_TOO_LARGE' | 'E_OUTBOX_CLOSED',
    message: string,
  ) {
    super(message);
  }
}

export const BATCH_MS = 200;
const LOG = 'outbox.log';
const HEADER = 8;
const MAX_RECORD = 256 * 1024 * 1024;
const READ_CHUNK = 1024 * 1024;

// Record bodies. u48 = 6-byte little-endian unsigned integer.
const PUSH = 1; // u8 type, u8 flags (bits 0-1 priority, bit 2 retain), u48 seq, u16 topic length, topic, payload
const ACK = 2; // u8 type, u48 seq
const DROP = 3; // u8 type, u8 priority, u48 seq (0: the incoming message itself was refused)
const STATE = 4; // u8 type, u48 next seq, u48 dropped low, normal, high (first record after a rewrite)

interface Entry {
  seq: number;
  priority: Priority;
  offset: number;
  size: number;
}

function frame(body: Buffer): Buffer {
  const rec = Buffer.allocUnsafe(HEADER + body.length);
  rec.writeUInt32LE(body.length, 0);
  body.copy(rec, HEADER);
  rec.writeUInt32LE(checksum(rec, body.length), 4);
  return rec;
}

/** CRC32 of the length field and the body, so that a corrupt length is caught too. */
function checksum(rec: Buffer, length: number, at = 0): number {
  return crc32(rec.subarray(at + HEADER, at + HEADER + length), crc32(rec.subarray(at, at + 4)));
}

function pushRecord(seq: number, m: OutboxMessage): Buffer {
  const topic = Buffer.from(m.topic);
  const payload = Buffer.from(m.payload);
  const body = Buffer.allocUnsafe(10 + topic.length + payload.length);
  body.writeUInt8(PUSH, 0);
  body.writeUInt8(PRIORITIES.indexOf(m.priority) | (m.retain ? 4 : 0), 1);
  body.writeUIntLE(seq, 2, 6);
  body.writeUInt16LE(topic.length, 8);
  topic.copy(body, 10);
  payload.copy(body, 10 + topic.length);
  return frame(body);
}

function ackRecord(seq: number): Buffer {
  const body = Buffer.allocUnsafe(7);
  body.writeUInt8(ACK, 0);
  body.writeUIntLE(seq, 1, 6);
  return frame(body);
}

function dropRecord(priority: Priority, seq: number): Buffer {
  const body = Buffer.allocUnsafe(8);
  body.writeUInt8(DROP, 0);
  body.writeUInt8(PRIORITIES.indexOf(priority), 1);
  body.writeUIntLE(seq, 2, 6);
  return frame(body);
}

function stateRecord(nextSeq: number, dropped: Record<Priority, number>): Buffer {
  const body = Buffer.allocUnsafe(25);
  body.writeUInt8(STATE, 0);
  body.writeUIntLE(nextSeq, 1, 6);
  PRIORITIES.forEach((p, i) => body.writeUIntLE(dropped[p], 7 + 6 * i, 6));
  return frame(body);
}

function priorityAt(code: number): Priority {
  return PRIORITIES[code & 3] ?? 'normal'; // 3 is never written, and the CRC vouches for the byte
}

function decodePush(rec: Buffer): QueuedMessage {
  const body = rec.subarray(HEADER);
  const flags = body.readUInt8(1);
  const topicLength = body.readUInt16LE(8);
  return {
    seq: body.readUIntLE(2, 6),
    priority: priorityAt(flags),
    retain: (flags & 4) !== 0,
    topic: body.toString('utf8', 10, 10 + topicLength),
    payload: body.toString('utf8', 10 + topicLength),
  };
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** One process owns an outbox; a lock left by a dead one (kill -9, power loss) is taken over. */
function takeLock(path: string): void {
  const holder = tryPidLock(path);
  if (holder !== undefined) throw new LockError(`the outbox is open in process ${holder || '?'} (${path})`);
}

function checkOptions(o: OutboxOptions): void {
  const bad = (msg: string) => new OutboxError('E_OUTBOX_OPTIONS', `outbox: ${msg}`);
  if (!Number.isSafeInteger(o.maxBytes) || o.maxBytes < 1024) throw bad(`maxBytes must be an integer >= 1024, not ${o.maxBytes}`);
  if (!Number.isSafeInteger(o.maxMessages) || o.maxMessages < 1) throw bad(`maxMessages must be an integer >= 1, not ${o.maxMessages}`);
  if (o.fsync !== 'always' && o.fsync !== 'batch') throw bad(`fsync must be "always" or "batch", not "${String(o.fsync)}"`);
  if (o.compactAfterBytes !== undefined && (!Number.isSafeInteger(o.compactAfterBytes) || o.compactAfterBytes < 0)) {
    throw bad(`compactAfterBytes must be an integer >= 0, not ${o.compactAfterBytes}`);
  }
}

export class Outbox {
  /** Every live message in seq order; a Map keeps insertion order and deletes in O(1). */
  private readonly all = new Map<number, Entry>();
  private readonly byPriority: Record<Priority, Map<number, Entry>> = { low: new Map(), normal: new Map(), high: new Map() };
  private readonly dropped: Record<Priority, number> = { low: 0, normal: 0, high: 0 };
  private fd: number | undefined;
  private size = 0;
  private bytes = 0;
  private nextSeq = 1;
  private dirty = false;
  private timer: NodeJS.Timeout | undefined;
  private syncError: Error | undefined;
  private nextCompactAt = 0;
  private readonly compactAfter: number;
  private readonly logPath: string;
  private readonly lockPath: string;
  /** What open found: records replayed, and the bytes of a torn tail that it cut off. */
  readonly recovered = { records: 0, tornBytes: 0 };

  private constructor(
    readonly dir: string,
    private readonly opts: OutboxOptions,
  ) {
    this.compactAfter = opts.compactAfterBytes ?? Math.min(1024 * 1024, Math.floor(opts.maxBytes / 4));
    this.logPath = join(dir, LOG);
    this.lockPath = join(dir, 'lock');
  }

  static open(dir: string, opts: OutboxOptions): Outbox {
    checkOptions(opts);
    mkdirSync(dir, { recursive: true, mode: 0o750 });
    const box = new Outbox(dir, opts);
    takeLock(box.lockPath);
    try {
      removeIfExists(join(dir, `${LOG}.tmp`)); // a rewrite cut short: the journal itself is intact
      box.fd = openSync(box.logPath, 'a+', 0o640);
      box.replay();
      box.enforceBound();
      box.maybeCompact();
    } catch (err) {
      if (box.fd !== undefined) closeSync(box.fd);
      removeIfExists(box.lockPath);
      throw err;
    }
    return box;
  }

  /**
   * Queues a message, dropping older ones if the bound requires it (docs/outbox.md). Returns
   * its seq, or undefined when the message itself was the one to drop (a full queue of
   * messages all of higher priority). With fsync "always" the message is on disk on return.
   */
  push(msg: OutboxMessage): number | undefined {
    const fd = this.openFd();
    if (this.syncError) {
      const err = this.syncError;
      this.syncError = undefined;
      throw err;
    }
    if (!PRIORITIES.includes(msg.priority)) throw new OutboxError('E_OUTBOX_MESSAGE', `outbox: priority must be low, normal or high, not "${String(msg.priority)}"`);
    if (Buffer.byteLength(msg.topic) > 0xffff) throw new OutboxError('E_OUTBOX_MESSAGE', `outbox: topic longer than 65535 bytes`);
    const seq = this.nextSeq;
    const rec = pushRecord(seq, msg);
    if (rec.length > this.opts.maxBytes) {
      throw new OutboxError('E_OUTBOX_TOO_LARGE', `outbox: a ${rec.length}-byte message on ${msg.topic} exceeds maxBytes (${this.opts.maxBytes})`);
    }
    const victims = this.victimsFor(msg.priority, rec.length);
    const at = this.size;
    if (victims === undefined) {
      this.write(fd, dropRecord(msg.priority, 0));
      this.settle(fd, at);
      this.dropped[msg.priority]++;
      return undefined;
    }
    const drops = victims.map((e) => dropRecord(e.priority, e.seq));
    this.write(fd, drops.length === 0 ? rec : Buffer.concat([...drops, rec]));
    this.settle(fd, at);
    for (const e of victims) {
      this.remove(e);
      this.dropped[e.priority]++;
    }
    this.add({ seq, priority: msg.priority, offset: this.size - rec.length, size: rec.length });
    this.nextSeq = seq + 1;
    this.maybeCompact();
    return seq;
  }

  /** The oldest `max` messages, in order; they stay queued until acked. */
  peek(max: number): QueuedMessage[] {
    const fd = this.openFd();
    const out: QueuedMessage[] = [];
    for (const e of this.all.values()) {
      if (out.length >= max) break;
      out.push(decodePush(this.readAt(fd, e.offset, e.size)));
    }
    return out;
  }

  /**
   * Removes a delivered message. The ack is written at once (a kill -9 keeps it) and fsynced
   * within BATCH_MS: a power cut inside that window delivers the message once more, which
   * QoS 1 allows and consumers de-duplicate on the payload id.
   */
  ack(seq: number): void {
    const fd = this.openFd();
    const e = this.all.get(seq);
    if (!e) return;
    this.write(fd, ackRecord(seq));
    this.remove(e);
    this.syncLater();
    this.maybeCompact();
  }

  stats(): OutboxStats {
    const droppedByPriority = { ...this.dropped };
    return {
      depth: this.all.size,
      bytes: this.bytes,
      dropped: droppedByPriority.low + droppedByPriority.normal + droppedByPriority.high,
      droppedByPriority,
      fileBytes: this.size,
    };
  }

  /** fsyncs what is written but not yet synced (batch pushes, acks). */
  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.fd === undefined || !this.dirty) return;
    fdatasyncSync(this.fd);
    this.dirty = false;
  }

  close(): void {
    if (this.fd === undefined) return;
    try {
      this.flush();
    } finally {
      closeSync(this.fd);
      this.fd = undefined;
      removeIfExists(this.lockPath);
    }
  }

  private openFd(): number {
    if (this.fd === undefined) throw new OutboxError('E_OUTBOX_CLOSED', 'outbox: closed');
    return this.fd;
  }

  /**
   * Which queued messages to drop so that one of `priority` and `size` bytes fits: the oldest
   * low first, then normal, then high, never one of higher priority than the newcomer.
   * undefined: even that would not make room, so the newcomer is the one to drop.
   */
  private victimsFor(priority: Priority, size: number): Entry[] | undefined {
    let depth = this.all.size;
    let bytes = this.bytes;
    const fits = () => depth + 1 <= this.opts.maxMessages && bytes + size <= this.opts.maxBytes;
    const victims: Entry[] = [];
    for (const level of PRIORITIES.slice(0, PRIORITIES.indexOf(priority) + 1)) {
      for (const e of this.byPriority[level].values()) {
        if (fits()) return victims;
        victims.push(e);
        depth--;
        bytes -= e.size;
      }
    }
    return fits() ? victims : undefined;
  }

  private add(e: Entry): void {
    this.all.set(e.seq, e);
    this.byPriority[e.priority].set(e.seq, e);
    this.bytes += e.size;
  }

  private remove(e: Entry): void {
    this.all.delete(e.seq);
    this.byPriority[e.priority].delete(e.seq);
    this.bytes -= e.size;
  }

  /** Appends whole records, or nothing: a failed write is cut back off the journal. */
  private write(fd: number, buf: Buffer): void {
    const at = this.size;
    writeAtOrTruncate(fd, buf, at, false);
    this.size = at + buf.length;
    this.dirty = true;
  }

  /**
   * Makes what was written since `at` durable as the fsync policy says. A record that cannot
   * be synced is not queued: it is cut back off the journal and the caller sees the error.
   */
  private settle(fd: number, at: number): void {
    if (this.opts.fsync === 'batch') {
      this.syncLater();
      return;
    }
    try {
      fdatasyncSync(fd);
    } catch (err) {
      try {
        ftruncateSync(fd, at);
        this.size = at;
      } catch {
        // Left for the next open, which replays it (at-least-once).
      }
      throw err;
    }
    this.dirty = false;
  }

  private syncLater(): void {
    this.dirty = true;
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      try {
        this.flush();
      } catch (err) {
        this.syncError = err as Error; // reported by the next push
      }
    }, BATCH_MS);
    this.timer.unref();
  }

  private readAt(fd: number, offset: number, size: number): Buffer {
    const buf = Buffer.allocUnsafe(size);
    for (let got = 0; got < size; ) {
      const n = readSync(fd, buf, got, size - got, offset + got);
      if (n === 0) throw new Error(`outbox: ${this.logPath} ends before offset ${offset + size}`);
      got += n;
    }
    return buf;
  }

  /** Rebuilds the index from the journal; a torn or corrupt tail is cut off. */
  private replay(): void {
    const fd = this.openFd();
    const fileSize = fstatSync(fd).size;
    let buf: Buffer = Buffer.alloc(0);
    let bufAt = 0; // file offset of buf[0]
    let pos = 0;
    const load = (need: number): boolean => {
      if (pos + need > fileSize) return false;
      if (pos + need <= bufAt + buf.length) return true;
      const len = Math.min(Math.max(need, READ_CHUNK), fileSize - pos);
      buf = this.readAt(fd, pos, len);
      bufAt = pos;
      return true;
    };
    while (pos < fileSize) {
      if (!load(HEADER)) break;
      const length = buf.readUInt32LE(pos - bufAt);
      if (length < 1 || length > MAX_RECORD || !load(HEADER + length)) break;
      const at = pos - bufAt;
      if (checksum(buf, length, at) !== buf.readUInt32LE(at + 4)) break;
      if (!this.apply(buf.subarray(at, at + HEADER + length), pos)) break;
      this.recovered.records++;
      pos += HEADER + length;
    }
    if (pos < fileSize) {
      this.recovered.tornBytes = fileSize - pos;
      ftruncateSync(fd, pos);
      fdatasyncSync(fd);
    }
    this.size = pos;
  }

  private apply(rec: Buffer, offset: number): boolean {
    const body = rec.subarray(HEADER);
    switch (body.readUInt8(0)) {
      case PUSH: {
        if (body.length < 10) return false;
        const seq = body.readUIntLE(2, 6);
        this.add({ seq, priority: priorityAt(body.readUInt8(1)), offset, size: rec.length });
        this.nextSeq = Math.max(this.nextSeq, seq + 1);
        return true;
      }
      case ACK: {
        if (body.length < 7) return false;
        const e = this.all.get(body.readUIntLE(1, 6));
        if (e) this.remove(e);
        return true;
      }
      case DROP: {
        if (body.length < 8) return false;
        const e = this.all.get(body.readUIntLE(2, 6));
        if (e) this.remove(e);
        this.dropped[priorityAt(body.readUInt8(1))]++;
        return true;
      }
      case STATE: {
        if (body.length < 25) return false;
        this.nextSeq = Math.max(this.nextSeq, body.readUIntLE(1, 6));
        PRIORITIES.forEach((p, i) => (this.dropped[p] = body.readUIntLE(7 + 6 * i, 6)));
        return true;
      }
      default:
        return false;
    }
  }

  /** After a restart with smaller bounds: drop down to them at once, by the same policy. */
  private enforceBound(): void {
    const over = () => this.all.size > this.opts.maxMessages || this.bytes > this.opts.maxBytes;
    if (!over()) return;
    const drops: Buffer[] = [];
    for (const level of PRIORITIES) {
      for (const e of this.byPriority[level].values()) {
        if (!over()) break;
        drops.push(dropRecord(e.priority, e.seq));
        this.remove(e);
        this.dropped[e.priority]++;
      }
    }
    this.write(this.openFd(), Buffer.concat(drops));
    this.flush();
  }

  private maybeCompact(): void {
    const dead = this.size - this.bytes;
    if (dead > Math.max(this.bytes, this.compactAfter) && this.size >= this.nextCompactAt) this.compact();
  }

  /**
   * Rewrites the journal with only the live records: temp file, fsync, rename, fsync of the
   * directory. The temp file's descriptor becomes the journal's, so nothing is reopened.
   */
  private compact(): void {
    const fd = this.openFd();
    const tmp = join(this.dir, `${LOG}.tmp`);
    const moved: [Entry, number][] = [];
    let out: number | undefined;
    let pos = 0;
    try {
      const o = (out = openSync(tmp, 'w+', 0o640));
      const put = (buf: Buffer) => {
        for (let done = 0; done < buf.length; ) done += writeSync(o, buf, done, buf.length - done, pos + done);
        pos += buf.length;
      };
      put(stateRecord(this.nextSeq, this.dropped));
      // Copy runs of adjacent live records with one read each.
      let run: Entry[] = [];
      let runBytes = 0;
      const copyRun = () => {
        const first = run[0];
        if (!first) return;
        const start = pos;
        put(this.readAt(fd, first.offset, runBytes));
        for (const e of run) moved.push([e, start + (e.offset - first.offset)]);
        run = [];
        runBytes = 0;
      };
      for (const e of this.all.values()) {
        const first = run[0];
        if (first && (first.offset + runBytes !== e.offset || runBytes + e.size > READ_CHUNK)) copyRun();
        run.push(e);
        runBytes += e.size;
      }
      copyRun();
      fdatasyncSync(o);
      renameSync(tmp, this.logPath);
    } catch {
      // Disk full or the like: the old journal is intact, only longer. Try again once it grows.
      if (out !== undefined) closeSync(out);
      removeIfExists(tmp);
      this.nextCompactAt = this.size + Math.max(this.compactAfter, 4096);
      return;
    }
    closeSync(fd);
    this.fd = out;
    for (const [e, offset] of moved) e.offset = offset;
    this.size = pos;
    this.dirty = false;
    this.nextCompactAt = 0;
    fsyncDir(this.dir);
  }
}
