// What a protocol filter is to the relay that carries its connection. A session is pure: bytes
// in, decisions out, no sockets and no timers, so the same code runs under the TCP relay, the
// Modbus RTU gateway and the fuzzers. The relay (relay.ts) owns sockets, backpressure, limits
// and timeouts; the session owns framing and the allow-list.
import type { Severity } from '../mqtt/topics.js';

export interface Endpoint {
  address: string;
  port: number;
}

/**
 * What one call into a session decided. Buffers are sent in order. They may be views of the
 * input chunk (a PDU forwarded as it came): the relay never reuses a buffer it was given, and
 * sessions never write into input.
 */
export interface SessionOutput {
  /** Bytes for the device: the peer's requests that passed, whole frames only. */
  toDevice: Buffer[];
  /** Bytes for the peer: the device's answers, and the proxy's own (exceptions, rejects, aborts). */
  toPeer: Buffer[];
  /** End the connection once the bytes above are written; the reason is logged. */
  close?: string;
}

/** An alert: a denied request, a malformed frame, an oversize PDU. The caller rate-limits them. */
export interface ProtocolAlert {
  severity: Severity;
  /** For example modbus.denied, modbus.malformed, dicom.rejected, dicom.aborted, dicom.oversize. */
  kind: string;
  /** Repeats with the same key are folded by the caller's dedup window. */
  dedupKey: string;
  message: string;
  data: Record<string, unknown>;
}

/** A line of the application log: a write that passed, an association's summary. Never patient data. */
export interface ProtocolRecord {
  kind: string;
  [field: string]: unknown;
}

export interface SessionContext {
  /** The device's id in the policy. */
  device: string;
  /** Who opened the connection (the original source). */
  peer: Endpoint;
  /** The device address and port the peer asked for (the original destination). */
  target: Endpoint;
  /** false: the device is in monitor mode; would-be denials are alerted and recorded, then forwarded. */
  enforce: boolean;
  alert(a: ProtocolAlert): void;
  record(r: ProtocolRecord): void;
  now(): number;
}

export interface ProtocolSession {
  fromPeer(chunk: Buffer): SessionOutput;
  fromDevice(chunk: Buffer): SessionOutput;
  /** The connection ended (either side, a timeout, a limit): write the last records. */
  end(reason: string): void;
  /** Bytes the session holds in its buffers now; bounded by the protocol's largest frame. */
  buffered(): number;
}

export const nothing = (): SessionOutput => ({ toDevice: [], toPeer: [] });
