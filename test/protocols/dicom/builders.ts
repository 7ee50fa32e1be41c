// Small builders of DICOM PDUs for the tests (PS3.8 9.3), written apart from the parsers so that
// the two do not share a mistake, and the DCMTK conversations captured in fixtures/.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ProtocolAlert, ProtocolRecord, SessionContext, SessionOutput } from '../../../agent/protocols/types.js';

export const APP_CONTEXT = '1.2.840.10008.3.1.1.1';
export const IMPLICIT_LE = '1.2.840.10008.1.2';
export const EXPLICIT_LE = '1.2.840.10008.1.2.1';
export const UID = {
  verification: '1.2.840.10008.1.1',
  ct: '1.2.840.10008.5.1.4.1.1.2',
  mr: '1.2.840.10008.5.1.4.1.1.4',
  studyFind: '1.2.840.10008.5.1.4.1.2.2.1',
  studyMove: '1.2.840.10008.5.1.4.1.2.2.2',
  mpps: '1.2.840.10008.3.1.2.3.3',
} as const;

export function pdu(type: number, body: Buffer): Buffer {
  const h = Buffer.alloc(6);
  h[0] = type;
  h.writeUInt32BE(body.length, 2);
  return Buffer.concat([h, body]);
}

export function item(type: number, value: Buffer | string): Buffer {
  const v = typeof value === 'string' ? Buffer.from(value, 'latin1') : value;
  const h = Buffer.alloc(4);
  h[0] = type;
  h.writeUInt16BE(v.length, 2);
  return Buffer.concat([h, v]);
}

const ae = (t: string): Buffer => Buffer.from(t.padEnd(16, ' ').slice(0, 16), 'latin1');
const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};

export interface RqOptions {
  called?: string;
  calling?: string;
  contexts?: { id: number; abstract: string; transfer?: string[] }[];
  maxLength?: number;
  /** Extra items after the user information. */
  extra?: Buffer[];
}

export function userInfo(maxLength = 16384): Buffer {
  return item(0x50, Buffer.concat([item(0x51, u32(maxLength)), item(0x52, '1.2.826.0.1.3680043.9.7433.9'), item(0x55, 'WG_TEST')]));
}

export function rq(o: RqOptions = {}): Buffer {
  const fixed = Buffer.concat([Buffer.from([0x00, 0x01, 0x00, 0x00]), ae(o.called ?? 'CT01'), ae(o.calling ?? 'PACS'), Buffer.alloc(32)]);
  const contexts = (o.contexts ?? [{ id: 1, abstract: UID.ct }]).map((c) =>
    item(0x20, Buffer.concat([Buffer.from([c.id, 0, 0, 0]), item(0x30, c.abstract), ...(c.transfer ?? [IMPLICIT_LE]).map((t) => item(0x40, t))])),
  );
  return pdu(0x01, Buffer.concat([fixed, item(0x10, APP_CONTEXT), ...contexts, userInfo(o.maxLength), ...(o.extra ?? [])]));
}

export function ac(results: { id: number; result: number }[], maxLength = 16384): Buffer {
  const fixed = Buffer.concat([Buffer.from([0x00, 0x01, 0x00, 0x00]), ae('CT01'), ae('PACS'), Buffer.alloc(32)]);
  const contexts = results.map((c) => item(0x21, Buffer.concat([Buffer.from([c.id, 0, c.result, 0]), item(0x40, IMPLICIT_LE)])));
  return pdu(0x02, Buffer.concat([fixed, item(0x10, APP_CONTEXT), ...contexts, userInfo(maxLength)]));
}

const four = (type: number, a: number, b: number, c: number): Buffer => pdu(type, Buffer.from([0, a, b, c]));
export const rj = (result: number, source: number, reason: number): Buffer => four(0x03, result, source, reason);
export const abort = (source: number, reason: number): Buffer => four(0x07, 0, source, reason);
export const releaseRq = (): Buffer => four(0x05, 0, 0, 0);
export const releaseRp = (): Buffer => four(0x06, 0, 0, 0);

export interface PdvSpec {
  ctx: number;
  command: boolean;
  last: boolean;
  data: Buffer;
}

export function pdv(p: PdvSpec): Buffer {
  const h = Buffer.alloc(6);
  h.writeUInt32BE(p.data.length + 2, 0);
  h[4] = p.ctx;
  h[5] = (p.command ? 1 : 0) | (p.last ? 2 : 0);
  return Buffer.concat([h, p.data]);
}

export const pdata = (...pdvs: PdvSpec[]): Buffer => pdu(0x04, Buffer.concat(pdvs.map(pdv)));

function element(el: number, value: Buffer): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt16LE(0x0000, 0);
  h.writeUInt16LE(el, 2);
  h.writeUInt32LE(value.length, 4);
  return Buffer.concat([h, value]);
}
const us = (n: number): Buffer => {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(n);
  return b;
};
const ui = (s: string): Buffer => Buffer.from(s.length % 2 === 1 ? `${s}\0` : s, 'latin1');

export interface CommandOptions {
  field: number;
  affected?: string;
  requested?: string;
  messageId?: number;
  respondingTo?: number;
  moveDestination?: string;
  /** 0x0101: no data set; anything else: one follows. */
  dataSetType?: number;
  status?: number;
  groupLength?: boolean;
}

/** A command set in Implicit VR Little Endian (PS3.7 6.3.1), elements in ascending order. */
export function command(o: CommandOptions): Buffer {
  const els: Buffer[] = [];
  if (o.affected !== undefined) els.push(element(0x0002, ui(o.affected)));
  if (o.requested !== undefined) els.push(element(0x0003, ui(o.requested)));
  els.push(element(0x0100, us(o.field)));
  if (o.messageId !== undefined) els.push(element(0x0110, us(o.messageId)));
  if (o.respondingTo !== undefined) els.push(element(0x0120, us(o.respondingTo)));
  if (o.moveDestination !== undefined) els.push(element(0x0600, Buffer.from(o.moveDestination.padEnd(16, ' '), 'latin1')));
  els.push(element(0x0800, us(o.dataSetType ?? 0x0101)));
  if (o.status !== undefined) els.push(element(0x0900, us(o.status)));
  const body = Buffer.concat(els);
  if (o.groupLength === false) return body;
  const gl = Buffer.alloc(4);
  gl.writeUInt32LE(body.length);
  return Buffer.concat([element(0x0000, gl), body]);
}

export const echoRq = (ctx = 1, messageId = 1): Buffer =>
  pdata({ ctx, command: true, last: true, data: command({ field: 0x0030, affected: UID.verification, messageId }) });

export const storeRq = (ctx: number, sop: string, messageId = 1): Buffer =>
  pdata({ ctx, command: true, last: true, data: command({ field: 0x0001, affected: sop, messageId, dataSetType: 0x0000 }) });

export const dataSet = (ctx: number, bytes: number | Buffer, last = true): Buffer =>
  pdata({ ctx, command: false, last, data: typeof bytes === 'number' ? Buffer.alloc(bytes, 0x42) : bytes });

export const response = (ctx: number, field: number, respondingTo = 1): Buffer =>
  pdata({ ctx, command: true, last: true, data: command({ field, respondingTo, status: 0 }) });

// --- the captured conversations ------------------------------------------------------------------

export interface Conversation {
  name: string;
  pdus: { from: 'peer' | 'device'; bytes: Buffer }[];
}

export const FIXTURES = ['echoscu', 'echoscu-abort', 'storescu-required', 'storescu-all', 'storescu-fragmented', 'findscu'] as const;

export function conversation(name: (typeof FIXTURES)[number]): Conversation {
  const raw = JSON.parse(readFileSync(join(import.meta.dirname, 'fixtures', `${name}.json`), 'utf8')) as { pdus: { from: 'peer' | 'device'; hex: string }[] };
  return { name, pdus: raw.pdus.map((p) => ({ from: p.from, bytes: Buffer.from(p.hex, 'hex') })) };
}

// --- a context that keeps what the session says ----------------------------------------------------

export interface Recorder {
  ctx: SessionContext;
  alerts: ProtocolAlert[];
  records: ProtocolRecord[];
}

export function recorder(enforce = true, device = 'ct-01'): Recorder {
  const alerts: ProtocolAlert[] = [];
  const records: ProtocolRecord[] = [];
  let clock = 1_000;
  return {
    alerts,
    records,
    ctx: {
      device,
      peer: { address: '10.20.0.5', port: 40123 },
      target: { address: '10.30.0.11', port: 104 },
      enforce,
      alert: (a) => alerts.push(a),
      record: (r) => records.push(r),
      now: () => (clock += 5),
    },
  };
}

/** Everything a series of outputs sent each way, joined, and whether and why it closed. */
export interface Sent {
  toDevice: Buffer;
  toPeer: Buffer;
  close?: string;
}

export function collect(outs: SessionOutput[]): Sent {
  const close = outs.find((o) => o.close !== undefined)?.close;
  return {
    toDevice: Buffer.concat(outs.flatMap((o) => o.toDevice)),
    toPeer: Buffer.concat(outs.flatMap((o) => o.toPeer)),
    ...(close !== undefined ? { close } : {}),
  };
}

/** Splits a byte stream into PDUs (whole ones only), independently of the code under test. */
export function split(stream: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let o = 0;
  while (o + 6 <= stream.length) {
    const size = 6 + stream.readUInt32BE(o + 2);
    if (o + size > stream.length) break;
    out.push(stream.subarray(o, o + size));
    o += size;
  }
  if (o !== stream.length) throw new Error(`${stream.length - o} bytes after the last whole PDU`);
  return out;
}
