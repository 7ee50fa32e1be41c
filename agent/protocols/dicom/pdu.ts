// DICOM upper-layer PDUs (PS3.8 9.3): an incremental framer that cuts a byte stream into whole
// PDUs without copying them, and a reader over a PDU that arrived in several pieces.
//
// Every PDU starts with type (1 byte), reserved (1) and length (4, big endian): the length of
// what follows the header (PS3.8 9.3.1). A PDU is handed on as views (subarray) of the chunks it
// came in, so that a large C-STORE data set is forwarded without being copied.

/** PDU types (PS3.8 9.3.1, table 9-1 ... 9.3.8). */
export const PDU = {
  ASSOCIATE_RQ: 0x01,
  ASSOCIATE_AC: 0x02,
  ASSOCIATE_RJ: 0x03,
  P_DATA_TF: 0x04,
  RELEASE_RQ: 0x05,
  RELEASE_RP: 0x06,
  ABORT: 0x07,
} as const;
export type PduType = (typeof PDU)[keyof typeof PDU];

export const PDU_NAMES: Readonly<Record<PduType, string>> = {
  1: 'A-ASSOCIATE-RQ',
  2: 'A-ASSOCIATE-AC',
  3: 'A-ASSOCIATE-RJ',
  4: 'P-DATA-TF',
  5: 'A-RELEASE-RQ',
  6: 'A-RELEASE-RP',
  7: 'A-ABORT',
};

export const PDU_HEADER = 6;

export function isPduType(t: number): t is PduType {
  return t >= PDU.ASSOCIATE_RQ && t <= PDU.ABORT;
}

/**
 * A-ABORT reasons when the source is the service provider (PS3.8 9.3.8, table 9-26). Also the
 * codes of DicomProtocolError, so that the abort a parse error causes names the right reason.
 */
export const ABORT_REASON = {
  notSpecified: 0,
  unrecognizedPdu: 1,
  unexpectedPdu: 2,
  unrecognizedParameter: 4,
  unexpectedParameter: 5,
  invalidParameter: 6,
} as const;
export type AbortReason = (typeof ABORT_REASON)[keyof typeof ABORT_REASON];

/** A PDU or a part of one that breaks PS3.8; `reason` is the A-ABORT reason it earns. */
export class DicomProtocolError extends Error {
  readonly code = 'dicom.malformed';
  constructor(
    readonly reason: AbortReason,
    message: string,
  ) {
    super(message);
    this.name = 'DicomProtocolError';
  }
}

export const malformed = (message: string): DicomProtocolError => new DicomProtocolError(ABORT_REASON.invalidParameter, message);

/** A whole PDU: its header fields and its bytes, header included, as views of the input. */
export interface Pdu {
  type: PduType;
  /** The header's length field: bytes after the header. */
  length: number;
  /** PDU_HEADER + length. */
  size: number;
  parts: Buffer[];
}

export type Frame =
  | { kind: 'pdu'; pdu: Pdu }
  | { kind: 'more' }
  | { kind: 'unknown'; type: number }
  | { kind: 'oversize'; type: PduType; size: number };

/** Chunks smaller than this are copied into a shared tail buffer instead of being kept as views. */
const SMALL_CHUNK = 1024;
const TAIL_BYTES = 16 * 1024;

/**
 * Cuts a stream into PDUs. A PDU is returned as soon as its last byte is in; a PDU whose header
 * announces more than `maxPduBytes` (header included) is reported as oversize before any of its
 * body is buffered, and an unknown type as soon as its first byte is seen.
 *
 * Tiny chunks (a peer trickling one byte per segment) are copied into an append-only tail
 * buffer, so that the number of pieces a PDU is made of, and their overhead, stay bounded by its
 * size. Bytes already handed out are never written again.
 */
export class PduFramer {
  private chunks: Buffer[] = [];
  private head = 0;
  private bytes = 0;
  private tail: Buffer | null = null;
  private tailUsed = 0;
  /** The last entry of `chunks` is a view of `tail` ending at tailUsed, and can grow in place. */
  private tailOpen = false;

  constructor(private readonly maxPduBytes: number) {}

  get buffered(): number {
    return this.bytes;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.bytes += chunk.length;
    if (chunk.length >= SMALL_CHUNK) {
      this.chunks.push(chunk);
      this.tailOpen = false;
      return;
    }
    if (this.tail === null || TAIL_BYTES - this.tailUsed < chunk.length) {
      this.tail = Buffer.allocUnsafe(TAIL_BYTES);
      this.tailUsed = 0;
      this.tailOpen = false;
    }
    chunk.copy(this.tail, this.tailUsed);
    const start = this.tailOpen ? this.tailUsed - (this.chunks[this.chunks.length - 1]?.length ?? 0) : this.tailUsed;
    this.tailUsed += chunk.length;
    const view = this.tail.subarray(start, this.tailUsed);
    if (this.tailOpen) this.chunks[this.chunks.length - 1] = view;
    else this.chunks.push(view);
    this.tailOpen = true;
  }

  next(): Frame {
    if (this.bytes === 0) return { kind: 'more' };
    const type = this.byteAt(0);
    if (!isPduType(type)) return { kind: 'unknown', type };
    if (this.bytes < PDU_HEADER) return { kind: 'more' };
    const length = ((this.byteAt(2) << 24) >>> 0) + (this.byteAt(3) << 16) + (this.byteAt(4) << 8) + this.byteAt(5);
    const size = PDU_HEADER + length;
    if (size > this.maxPduBytes) return { kind: 'oversize', type, size };
    if (this.bytes < size) return { kind: 'more' };
    return { kind: 'pdu', pdu: { type, length, size, parts: this.take(size) } };
  }

  /** Everything buffered, as views, in order; the framer is empty afterwards. */
  drain(): Buffer[] {
    return this.take(this.bytes);
  }

  private byteAt(i: number): number {
    for (let c = this.head; c < this.chunks.length; c++) {
      const chunk = this.chunks[c]!;
      if (i < chunk.length) return chunk[i]!;
      i -= chunk.length;
    }
    throw new RangeError('byteAt past the buffered bytes');
  }

  private take(n: number): Buffer[] {
    const out: Buffer[] = [];
    while (n > 0) {
      const chunk = this.chunks[this.head]!;
      if (chunk.length <= n) {
        out.push(chunk);
        n -= chunk.length;
        this.bytes -= chunk.length;
        this.head++;
      } else {
        out.push(chunk.subarray(0, n));
        this.chunks[this.head] = chunk.subarray(n);
        this.bytes -= n;
        n = 0;
      }
    }
    if (this.head === this.chunks.length) {
      this.chunks = [];
      this.head = 0;
      this.tailOpen = false;
    } else if (this.head > 64) {
      this.chunks = this.chunks.slice(this.head);
      this.head = 0;
    }
    return out;
  }
}

/** One buffer with a PDU's bytes: the view itself when it came in one piece, else a copy. */
export function joined(parts: readonly Buffer[]): Buffer {
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
}

/**
 * Random reads into a PDU that is split across pieces, for walking P-DATA-TF items without
 * joining them. Reads move a cursor, so a forward walk costs one step per piece.
 */
export class PartsReader {
  private part = 0;
  private partStart = 0;
  readonly length: number;

  constructor(private readonly parts: readonly Buffer[]) {
    let n = 0;
    for (const p of parts) n += p.length;
    this.length = n;
  }

  u8(offset: number): number {
    const p = this.seek(offset);
    return p[offset - this.partStart]!;
  }

  u32be(offset: number): number {
    const p = this.seek(offset);
    const at = offset - this.partStart;
    if (at + 4 <= p.length) return p.readUInt32BE(at);
    return ((this.u8(offset) << 24) >>> 0) + (this.u8(offset + 1) << 16) + (this.u8(offset + 2) << 8) + this.u8(offset + 3);
  }

  /** A copy of [offset, offset + n): for the few bytes a parser keeps (a command set's fragments). */
  copy(offset: number, n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let written = 0;
    while (written < n) {
      const p = this.seek(offset + written);
      const at = offset + written - this.partStart;
      written += p.copy(out, written, at, Math.min(p.length, at + n - written));
    }
    return out;
  }

  private seek(offset: number): Buffer {
    if (offset < 0 || offset >= this.length) throw new RangeError(`offset ${offset} outside a PDU of ${this.length} bytes`);
    if (offset < this.partStart) {
      this.part = 0;
      this.partStart = 0;
    }
    for (;;) {
      const p = this.parts[this.part]!;
      if (offset < this.partStart + p.length) return p;
      this.partStart += p.length;
      this.part++;
    }
  }
}
