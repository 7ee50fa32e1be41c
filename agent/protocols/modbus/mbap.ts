// An incremental MBAP framer ([TCP] 3.1.3): TCP chunks in, whole ADUs out, in order.
//
// Whole frames inside a chunk are handed out as views of the chunk (no copy); only the tail of a
// frame that the chunk cuts is copied, into one fixed buffer of a maximal ADU. So the framer
// never holds more than 259 bytes, whatever the peer sends, and allocates nothing per byte.
//
// The length field is the only way to find the next frame on a stream. Once a header is broken
// (protocol id not 0, length outside 2..254) nothing after it can be trusted to be a frame
// boundary, so the framer stops for good: the caller closes the connection.
import { MAX_ADU_BYTES, MAX_MBAP_LENGTH, MIN_MBAP_LENGTH } from './spec.js';

/** The 6 bytes of the header that say where the frame ends: transaction id, protocol id, length. */
const LENGTH_END = 6;

export type FramingErrorCode = 'protocol-id' | 'length';

export interface FramingError {
  code: FramingErrorCode;
  message: string;
  /** The transaction id of the broken header, for the log. */
  tid: number;
}

/** Called with each whole ADU: a view valid only during the call. Return false to stop framing. */
export type FrameHandler = (adu: Buffer) => boolean | void;

export class MbapFramer {
  private readonly partial = Buffer.allocUnsafe(MAX_ADU_BYTES);
  /** Bytes of a cut frame held in `partial`. */
  private held = 0;
  /** The cut frame's whole size, once its header is complete (else 0). */
  private expected = 0;
  private error: FramingError | undefined;
  private stopped = false;

  /** Bytes held now: the start of a frame the last chunk cut, less than one ADU. */
  buffered(): number {
    return this.held;
  }

  /** Why framing was lost, if it was. */
  broken(): FramingError | undefined {
    return this.error;
  }

  /**
   * Frames a chunk. Returns the framing error that stopped it (the frames before the broken
   * header were handed out), or undefined. After an error, or after the handler returned false,
   * every later push returns at once (with the error, if any).
   */
  push(chunk: Buffer, onFrame: FrameHandler): FramingError | undefined {
    if (this.error !== undefined || this.stopped) return this.error;
    let off = 0;
    const end = chunk.length;

    if (this.held > 0) {
      if (this.expected === 0) {
        const take = Math.min(LENGTH_END - this.held, end);
        chunk.copy(this.partial, this.held, 0, take);
        this.held += take;
        off = take;
        if (this.held < LENGTH_END) return undefined;
        const size = this.frameSize(this.partial, 0);
        if (size === 0) return this.fail();
        this.expected = size;
      }
      const take = Math.min(this.expected - this.held, end - off);
      chunk.copy(this.partial, this.held, off, off + take);
      this.held += take;
      off += take;
      if (this.held < this.expected) return undefined;
      const size = this.expected;
      this.held = 0;
      this.expected = 0;
      if (onFrame(this.partial.subarray(0, size)) === false) return this.stop();
    }

    while (end - off >= LENGTH_END) {
      const size = this.frameSize(chunk, off);
      if (size === 0) return this.fail();
      if (end - off < size) {
        chunk.copy(this.partial, 0, off, end);
        this.held = end - off;
        this.expected = size;
        return undefined;
      }
      const frame = chunk.subarray(off, off + size);
      off += size;
      if (onFrame(frame) === false) return this.stop();
    }
    if (off < end) {
      chunk.copy(this.partial, 0, off, end);
      this.held = end - off;
    }
    return undefined;
  }

  /** The whole ADU's size from the header at `at`, or 0 (with the error set) when the header is broken. */
  private frameSize(buf: Buffer, at: number): number {
    const tid = buf.readUInt16BE(at);
    const protocol = buf.readUInt16BE(at + 2);
    const length = buf.readUInt16BE(at + 4);
    // [TCP] 3.1.3: the protocol identifier is 0 for Modbus.
    if (protocol !== 0) {
      this.error = { code: 'protocol-id', tid, message: `MBAP protocol id is ${protocol}, not 0 (Modbus TCP 3.1.3)` };
      return 0;
    }
    // [TCP] 3.1.3 and [MAP] 4.1: unit id + PDU, 2..254 bytes.
    if (length < MIN_MBAP_LENGTH || length > MAX_MBAP_LENGTH) {
      this.error = { code: 'length', tid, message: `MBAP length ${length} is outside ${MIN_MBAP_LENGTH}-${MAX_MBAP_LENGTH} (a PDU is at most 253 bytes, Modbus Application Protocol 4.1)` };
      return 0;
    }
    return LENGTH_END + length;
  }

  private fail(): FramingError | undefined {
    this.held = 0;
    this.expected = 0;
    return this.error;
  }

  private stop(): undefined {
    this.stopped = true;
    this.held = 0;
    this.expected = 0;
    return undefined;
  }
}
