// Association PDUs (PS3.8 9.3.2 - 9.3.4, 9.3.8): parse A-ASSOCIATE-RQ and -AC, refuse
// presentation contexts of an AC in place, build A-ASSOCIATE-RJ and A-ABORT.
import { malformed, PDU, PDU_HEADER } from './pdu.js';

/** Item types of the variable part of A-ASSOCIATE-RQ/AC (PS3.8 9.3.2, 9.3.3; annex D). */
export const ITEM = {
  APPLICATION_CONTEXT: 0x10,
  PRESENTATION_CONTEXT_RQ: 0x20,
  PRESENTATION_CONTEXT_AC: 0x21,
  ABSTRACT_SYNTAX: 0x30,
  TRANSFER_SYNTAX: 0x40,
  USER_INFORMATION: 0x50,
  MAX_LENGTH: 0x51,
  IMPLEMENTATION_CLASS_UID: 0x52,
  IMPLEMENTATION_VERSION_NAME: 0x55,
} as const;

/** A-ASSOCIATE-RJ fields (PS3.8 9.3.4, table 9-21). */
export const REJECT = {
  result: { permanent: 1, transient: 2 },
  source: { serviceUser: 1, providerAcse: 2, providerPresentation: 3 },
  /** Reasons when the source is the service user (1). */
  userReason: { noReasonGiven: 1, applicationContextNotSupported: 2, callingAeNotRecognized: 3, calledAeNotRecognized: 7 },
} as const;

/** Presentation context results in an A-ASSOCIATE-AC (PS3.8 9.3.3.2, table 9-18). */
export const CONTEXT_RESULT = {
  acceptance: 0,
  userRejection: 1,
  noReason: 2,
  abstractSyntaxNotSupported: 3,
  transferSyntaxesNotSupported: 4,
} as const;

/** A-ABORT sources (PS3.8 9.3.8). */
export const ABORT_SOURCE = { serviceUser: 0, serviceProvider: 2 } as const;

/** The offset of the first item: header, version (2), reserved (2), called AE (16), calling AE (16), reserved (32). */
const ITEMS_AT = PDU_HEADER + 68;

export interface ProposedContext {
  id: number;
  abstractSyntax: string;
  transferSyntaxes: string[];
}

export interface UserInformation {
  /** Maximum length of the variable field of P-DATA-TF PDUs the sender can receive; 0 = no limit (annex D.1). */
  maxLength?: number;
  /** Where the max length value sits in the PDU, for clamping it in place. */
  maxLengthOffset?: number;
  implementationClassUid?: string;
  implementationVersionName?: string;
}

export interface AssociateRq {
  protocolVersion: number;
  calledAeTitle: string;
  callingAeTitle: string;
  applicationContext: string;
  contexts: ProposedContext[];
  userInfo: UserInformation;
}

export interface AcceptedContext {
  id: number;
  result: number;
  /** Where the result byte sits in the PDU (PS3.8 9.3.3.2: the 7th byte of the item). */
  resultOffset: number;
}

export interface AssociateAc {
  protocolVersion: number;
  applicationContext: string;
  contexts: AcceptedContext[];
  userInfo: UserInformation;
}

/** AE titles are space padded to 16 bytes; leading and trailing spaces are not significant (PS3.5 6.2, VR AE). */
export function aeTitle(bytes: Buffer): string {
  return bytes.toString('latin1').trim();
}

/** UIDs in items are not padded (PS3.8 annex F), but a trailing NUL or space is common enough to forgive. */
export function uid(bytes: Buffer): string {
  return bytes.toString('latin1').replace(/[\0 ]+$/, '');
}

interface Item {
  type: number;
  /** Offset of the item's value (after its 4-byte header). */
  at: number;
  length: number;
}

/** The items in [start, end): type (1), reserved (1), length (2, big endian), value. Lengths must add up exactly. */
function items(pdu: Buffer, start: number, end: number, what: string): Item[] {
  const out: Item[] = [];
  let o = start;
  while (o < end) {
    if (o + 4 > end) throw malformed(`${what}: ${end - o} stray bytes after the last item`);
    const type = pdu[o]!;
    const length = pdu.readUInt16BE(o + 2);
    if (o + 4 + length > end) throw malformed(`${what}: item 0x${hex(type)} of ${length} bytes runs past its end`);
    out.push({ type, at: o + 4, length });
    o += 4 + length;
  }
  return out;
}

const hex = (n: number): string => n.toString(16).padStart(2, '0');

function fixedPart(pdu: Buffer, expected: number, what: string): number {
  if (pdu.length < ITEMS_AT) throw malformed(`${what} of ${pdu.length} bytes is shorter than its fixed part (${ITEMS_AT})`);
  if (pdu[0] !== expected) throw malformed(`${what}: PDU type 0x${hex(pdu[0] ?? 0)}`);
  const end = PDU_HEADER + pdu.readUInt32BE(2);
  if (end !== pdu.length) throw malformed(`${what}: length field says ${end} bytes, the PDU has ${pdu.length}`);
  return pdu.readUInt16BE(PDU_HEADER);
}

function userInformation(pdu: Buffer, item: Item, what: string): UserInformation {
  const info: UserInformation = {};
  for (const sub of items(pdu, item.at, item.at + item.length, `${what} user information`)) {
    switch (sub.type) {
      case ITEM.MAX_LENGTH:
        // Annex D.1: a four-byte value.
        if (sub.length !== 4) throw malformed(`${what}: maximum length sub-item of ${sub.length} bytes (4 expected)`);
        if (info.maxLength !== undefined) throw malformed(`${what}: two maximum length sub-items`);
        info.maxLength = pdu.readUInt32BE(sub.at);
        info.maxLengthOffset = sub.at;
        break;
      case ITEM.IMPLEMENTATION_CLASS_UID:
        info.implementationClassUid = uid(pdu.subarray(sub.at, sub.at + sub.length));
        break;
      case ITEM.IMPLEMENTATION_VERSION_NAME:
        info.implementationVersionName = pdu.toString('latin1', sub.at, sub.at + sub.length).trim();
        break;
      default:
        // Asynchronous operations, role selection, extended negotiation, user identity (annex
        // D.3.3): the device negotiates them; the filter only needs them to be well framed.
        break;
    }
  }
  return info;
}

function applicationContext(pdu: Buffer, item: Item, seen: string | undefined, what: string): string {
  if (seen !== undefined) throw malformed(`${what}: two application context items`);
  return uid(pdu.subarray(item.at, item.at + item.length));
}

/** A-ASSOCIATE-RQ (PS3.8 9.3.2), the whole PDU in one buffer. Throws DicomProtocolError. */
export function parseAssociateRq(pdu: Buffer): AssociateRq {
  const what = 'A-ASSOCIATE-RQ';
  const protocolVersion = fixedPart(pdu, PDU.ASSOCIATE_RQ, what);
  let app: string | undefined;
  let userInfo: UserInformation | undefined;
  const contexts: ProposedContext[] = [];
  const ids = new Set<number>();
  for (const item of items(pdu, ITEMS_AT, pdu.length, what)) {
    switch (item.type) {
      case ITEM.APPLICATION_CONTEXT:
        app = applicationContext(pdu, item, app, what);
        break;
      case ITEM.PRESENTATION_CONTEXT_RQ: {
        // 9.3.2.2: context id (1), reserved (3), then one abstract syntax and one or more
        // transfer syntax sub-items.
        if (item.length < 4) throw malformed(`${what}: presentation context item of ${item.length} bytes`);
        const id = pdu[item.at]!;
        // "odd integers between 1 and 255"; a repeated id would let the filter and the device
        // disagree about which abstract syntax a context carries.
        if (id % 2 === 0) throw malformed(`${what}: presentation context id ${id} is even`);
        if (ids.has(id)) throw malformed(`${what}: presentation context id ${id} proposed twice`);
        ids.add(id);
        let abstractSyntax: string | undefined;
        const transferSyntaxes: string[] = [];
        for (const sub of items(pdu, item.at + 4, item.at + item.length, `${what} presentation context ${id}`)) {
          const value = uid(pdu.subarray(sub.at, sub.at + sub.length));
          if (sub.type === ITEM.ABSTRACT_SYNTAX) {
            if (abstractSyntax !== undefined) throw malformed(`${what}: presentation context ${id} has two abstract syntaxes`);
            abstractSyntax = value;
          } else if (sub.type === ITEM.TRANSFER_SYNTAX) transferSyntaxes.push(value);
        }
        if (abstractSyntax === undefined || abstractSyntax === '') throw malformed(`${what}: presentation context ${id} has no abstract syntax`);
        if (transferSyntaxes.length === 0) throw malformed(`${what}: presentation context ${id} has no transfer syntax`);
        contexts.push({ id, abstractSyntax, transferSyntaxes });
        break;
      }
      case ITEM.USER_INFORMATION:
        if (userInfo !== undefined) throw malformed(`${what}: two user information items`);
        userInfo = userInformation(pdu, item, what);
        break;
      default:
        break;
    }
  }
  if (app === undefined) throw malformed(`${what}: no application context item`);
  if (contexts.length === 0) throw malformed(`${what}: no presentation context item`);
  return {
    protocolVersion,
    calledAeTitle: aeTitle(pdu.subarray(PDU_HEADER + 4, PDU_HEADER + 20)),
    callingAeTitle: aeTitle(pdu.subarray(PDU_HEADER + 20, PDU_HEADER + 36)),
    applicationContext: app,
    contexts,
    userInfo: userInfo ?? {},
  };
}

/** A-ASSOCIATE-AC (PS3.8 9.3.3), the whole PDU in one buffer. Throws DicomProtocolError. */
export function parseAssociateAc(pdu: Buffer): AssociateAc {
  const what = 'A-ASSOCIATE-AC';
  const protocolVersion = fixedPart(pdu, PDU.ASSOCIATE_AC, what);
  let app: string | undefined;
  let userInfo: UserInformation | undefined;
  const contexts: AcceptedContext[] = [];
  const ids = new Set<number>();
  for (const item of items(pdu, ITEMS_AT, pdu.length, what)) {
    switch (item.type) {
      case ITEM.APPLICATION_CONTEXT:
        app = applicationContext(pdu, item, app, what);
        break;
      case ITEM.PRESENTATION_CONTEXT_AC: {
        // 9.3.3.2: context id (1), reserved (1), result/reason (1), reserved (1), transfer syntax sub-item.
        if (item.length < 4) throw malformed(`${what}: presentation context item of ${item.length} bytes`);
        const id = pdu[item.at]!;
        if (ids.has(id)) throw malformed(`${what}: presentation context id ${id} answered twice`);
        ids.add(id);
        items(pdu, item.at + 4, item.at + item.length, `${what} presentation context ${id}`);
        contexts.push({ id, result: pdu[item.at + 2]!, resultOffset: item.at + 2 });
        break;
      }
      case ITEM.USER_INFORMATION:
        if (userInfo !== undefined) throw malformed(`${what}: two user information items`);
        userInfo = userInformation(pdu, item, what);
        break;
      default:
        break;
    }
  }
  if (app === undefined) throw malformed(`${what}: no application context item`);
  return { protocolVersion, applicationContext: app, contexts, userInfo: userInfo ?? {} };
}

export interface FourBytePdu {
  /** A-ASSOCIATE-RJ: result; A-ABORT: reserved. */
  result: number;
  source: number;
  reason: number;
}

/** A-ASSOCIATE-RJ (9.3.4) and A-ABORT (9.3.8) share a layout: header, reserved, result/reserved, source, reason. */
export function parseFourBytePdu(pdu: Buffer, what: string): FourBytePdu {
  if (pdu.length !== PDU_HEADER + 4) throw malformed(`${what} of ${pdu.length} bytes (${PDU_HEADER + 4} expected)`);
  return { result: pdu[7]!, source: pdu[8]!, reason: pdu[9]! };
}

function fourBytePdu(type: number, result: number, source: number, reason: number): Buffer {
  const b = Buffer.alloc(PDU_HEADER + 4);
  b[0] = type;
  b.writeUInt32BE(4, 2);
  b[7] = result;
  b[8] = source;
  b[9] = reason;
  return b;
}

/** A-ASSOCIATE-RJ (PS3.8 9.3.4). */
export function buildAssociateRj(result: number, source: number, reason: number): Buffer {
  return fourBytePdu(PDU.ASSOCIATE_RJ, result, source, reason);
}

/** A-ABORT (PS3.8 9.3.8); the reason is significant only when the source is the provider (2). */
export function buildAbort(source: number, reason: number): Buffer {
  return fourBytePdu(PDU.ABORT, 0, source, reason);
}

/** A-RELEASE-RQ and -RP (PS3.8 9.3.6, 9.3.7): four reserved bytes. */
export function checkReleasePdu(pdu: Buffer, what: string): void {
  if (pdu.length !== PDU_HEADER + 4) throw malformed(`${what} of ${pdu.length} bytes (${PDU_HEADER + 4} expected)`);
}

/** Text for an A-ASSOCIATE-RJ's source and reason (PS3.8 9.3.4). */
export function rejectReasonText(source: number, reason: number): string {
  const texts: Record<string, string> = {
    '1:1': 'no-reason-given',
    '1:2': 'application-context-name-not-supported',
    '1:3': 'calling-AE-title-not-recognized',
    '1:7': 'called-AE-title-not-recognized',
    '2:1': 'no-reason-given',
    '2:2': 'protocol-version-not-supported',
    '3:0': 'reserved',
    '3:1': 'temporary-congestion',
    '3:2': 'local-limit-exceeded',
  };
  return texts[`${source}:${reason}`] ?? `source ${source} reason ${reason}`;
}

/** Text for an A-ABORT's reason when the provider sent it (PS3.8 9.3.8). */
export function abortReasonText(source: number, reason: number): string {
  if (source !== ABORT_SOURCE.serviceProvider) return source === ABORT_SOURCE.serviceUser ? 'service-user' : `source ${source}`;
  const texts = ['reason-not-specified', 'unrecognized-PDU', 'unexpected-PDU', 'reserved', 'unrecognized-PDU-parameter', 'unexpected-PDU-parameter', 'invalid-PDU-parameter-value'];
  return texts[reason] ?? `reason ${reason}`;
}
