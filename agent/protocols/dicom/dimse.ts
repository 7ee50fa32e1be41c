// P-DATA-TF (PS3.8 9.3.5, annex E) and DIMSE command sets (PS3.7 6.3.1, 9.3, 10.3, annex E).
//
// A P-DATA-TF carries presentation data value items: item length (4, big endian; counts the
// context id, the control header and the fragment), presentation context id (1), message control
// header (1: bit 0 command/data set, bit 1 last fragment), fragment. Only command fragments are
// kept and decoded; data set fragments are looked at for their header and never copied.
import { malformed, PDU_HEADER, type PartsReader } from './pdu.js';

export interface Pdv {
  contextId: number;
  command: boolean;
  last: boolean;
  /** Offset of the fragment in the PDU, and its length. */
  at: number;
  length: number;
}

/** The PDVs of a P-DATA-TF whose bytes `r` reads (header included). Throws DicomProtocolError. */
export function pdvs(r: PartsReader): Pdv[] {
  const out: Pdv[] = [];
  let o = PDU_HEADER;
  if (r.length === PDU_HEADER) throw malformed('P-DATA-TF without a presentation data value item');
  while (o < r.length) {
    if (o + 6 > r.length) throw malformed(`P-DATA-TF: ${r.length - o} stray bytes after the last PDV item`);
    const length = r.u32be(o);
    // 9.3.5.1: the length covers the context id and the control header at least.
    if (length < 2) throw malformed(`P-DATA-TF: PDV item length ${length}`);
    if (o + 4 + length > r.length) throw malformed(`P-DATA-TF: PDV item of ${length} bytes runs past the PDU`);
    const contextId = r.u8(o + 4);
    const header = r.u8(o + 5);
    // Annex E.2: bits 2-7 are reserved (0); they are not looked at, as a receiver would not.
    out.push({ contextId, command: (header & 0x01) !== 0, last: (header & 0x02) !== 0, at: o + 6, length: length - 2 });
    o += 4 + length;
  }
  return out;
}

/** CommandField values (PS3.7 annex E.1; 9.3 for DIMSE-C, 10.3 for DIMSE-N). */
export const COMMAND_FIELDS: ReadonlyMap<number, string> = new Map([
  [0x0001, 'C-STORE-RQ'],
  [0x8001, 'C-STORE-RSP'],
  [0x0010, 'C-GET-RQ'],
  [0x8010, 'C-GET-RSP'],
  [0x0020, 'C-FIND-RQ'],
  [0x8020, 'C-FIND-RSP'],
  [0x0021, 'C-MOVE-RQ'],
  [0x8021, 'C-MOVE-RSP'],
  [0x0030, 'C-ECHO-RQ'],
  [0x8030, 'C-ECHO-RSP'],
  [0x0100, 'N-EVENT-REPORT-RQ'],
  [0x8100, 'N-EVENT-REPORT-RSP'],
  [0x0110, 'N-GET-RQ'],
  [0x8110, 'N-GET-RSP'],
  [0x0120, 'N-SET-RQ'],
  [0x8120, 'N-SET-RSP'],
  [0x0130, 'N-ACTION-RQ'],
  [0x8130, 'N-ACTION-RSP'],
  [0x0140, 'N-CREATE-RQ'],
  [0x8140, 'N-CREATE-RSP'],
  [0x0150, 'N-DELETE-RQ'],
  [0x8150, 'N-DELETE-RSP'],
  [0x0fff, 'C-CANCEL-RQ'],
]);

export const C_CANCEL_RQ = 0x0fff;

/** The command's name, "C-STORE-RQ", or its value in hex when PS3.7 has no such command. */
export function commandName(field: number): string {
  return COMMAND_FIELDS.get(field) ?? `0x${field.toString(16).padStart(4, '0')}`;
}

export const isResponse = (field: number): boolean => (field & 0x8000) !== 0;

/** CommandDataSetType (0000,0800): 0x0101 means no data set follows (PS3.7 E.1). */
export const NO_DATA_SET = 0x0101;

/** What the filter reads from a command set: no instance UIDs, nothing about the patient. */
export interface CommandSet {
  commandField: number;
  affectedSopClass?: string;
  requestedSopClass?: string;
  messageId?: number;
  messageIdBeingRespondedTo?: number;
  moveDestination?: string;
  /** Absent only in a command set that breaks PS3.7 E.1; see hasDataSet. */
  commandDataSetType?: number;
  status?: number;
}

/** Whether a data set follows the command: PS3.7 E.1, any value but 0x0101. */
export function hasDataSet(c: CommandSet): boolean {
  return c.commandDataSetType !== undefined && c.commandDataSetType !== NO_DATA_SET;
}

const TAG = {
  groupLength: 0x0000,
  affectedSopClassUid: 0x0002,
  requestedSopClassUid: 0x0003,
  commandField: 0x0100,
  messageId: 0x0110,
  messageIdBeingRespondedTo: 0x0120,
  moveDestination: 0x0600,
  commandDataSetType: 0x0800,
  status: 0x0900,
} as const;

const text = (b: Buffer, at: number, n: number): string => b.toString('latin1', at, at + n).replace(/[\0 ]+$/, '').replace(/^ +/, '');

function us(b: Buffer, at: number, n: number, name: string): number {
  if (n !== 2) throw malformed(`command set: ${name} is ${n} bytes (US: 2)`);
  return b.readUInt16LE(at);
}

/**
 * Decodes a command set: always Implicit VR Little Endian (PS3.7 6.3.1), elements of group 0000
 * only, tag (4) length (4) value (PS3.5 7.1.3). Elements must ascend strictly (PS3.5 7.1): a
 * repeated CommandField would let the filter and the device read different commands. A
 * CommandGroupLength, when present, must match the bytes after it, for the same reason.
 * Throws DicomProtocolError.
 */
export function decodeCommandSet(b: Buffer): CommandSet {
  let o = 0;
  let previous = -1;
  const c: Partial<CommandSet> = {};
  while (o < b.length) {
    if (o + 8 > b.length) throw malformed(`command set: ${b.length - o} stray bytes after the last element`);
    const group = b.readUInt16LE(o);
    const element = b.readUInt16LE(o + 2);
    const length = b.readUInt32LE(o + 4);
    const at = o + 8;
    if (group !== 0x0000) throw malformed(`command set: element (${hex4(group)},${hex4(element)}) outside group 0000`);
    if (element <= previous) throw malformed(`command set: element (0000,${hex4(element)}) out of order or repeated`);
    previous = element;
    // An undefined length (0xFFFFFFFF) also lands here: nothing in a command set may use it.
    if (length > b.length - at) throw malformed(`command set: element (0000,${hex4(element)}) of ${length} bytes runs past the end`);
    switch (element) {
      case TAG.groupLength:
        if (length !== 4) throw malformed(`command set: CommandGroupLength is ${length} bytes (UL: 4)`);
        if (b.readUInt32LE(at) !== b.length - at - 4) throw malformed(`command set: CommandGroupLength ${b.readUInt32LE(at)}, ${b.length - at - 4} bytes follow`);
        break;
      case TAG.affectedSopClassUid:
        c.affectedSopClass = text(b, at, length);
        break;
      case TAG.requestedSopClassUid:
        c.requestedSopClass = text(b, at, length);
        break;
      case TAG.commandField:
        c.commandField = us(b, at, length, 'CommandField');
        break;
      case TAG.messageId:
        c.messageId = us(b, at, length, 'MessageID');
        break;
      case TAG.messageIdBeingRespondedTo:
        c.messageIdBeingRespondedTo = us(b, at, length, 'MessageIDBeingRespondedTo');
        break;
      case TAG.moveDestination:
        c.moveDestination = text(b, at, length);
        break;
      case TAG.commandDataSetType:
        c.commandDataSetType = us(b, at, length, 'CommandDataSetType');
        break;
      case TAG.status:
        c.status = us(b, at, length, 'Status');
        break;
      default:
        break;
    }
    o = at + length;
  }
  if (c.commandField === undefined) throw malformed('command set without a CommandField (0000,0100)');
  return c as CommandSet;
}

const hex4 = (n: number): string => n.toString(16).padStart(4, '0');

/** The largest command set the filter assembles: real ones are a few hundred bytes. */
export const MAX_COMMAND_BYTES = 64 * 1024;

/**
 * Collects a command's fragments (PS3.8 annex E: a command may span PDVs and PDUs) up to
 * MAX_COMMAND_BYTES; the fragments are copies, as they are small and the PDUs move on.
 */
export class CommandAssembler {
  private fragments: Buffer[] = [];
  private bytes = 0;
  /** The presentation context of the command being assembled, or null between commands. */
  contextId: number | null = null;

  get buffered(): number {
    return this.bytes;
  }

  get active(): boolean {
    return this.contextId !== null;
  }

  /** Adds a fragment; returns the whole command set after the last one. Throws DicomProtocolError. */
  add(r: PartsReader, pdv: Pdv): Buffer | null {
    if (this.contextId !== null && this.contextId !== pdv.contextId) {
      throw malformed(`command fragment on presentation context ${pdv.contextId} inside a command on ${this.contextId}`);
    }
    if (this.bytes + pdv.length > MAX_COMMAND_BYTES) throw malformed(`command set larger than ${MAX_COMMAND_BYTES} bytes`);
    this.contextId = pdv.contextId;
    if (pdv.length > 0) {
      this.fragments.push(r.copy(pdv.at, pdv.length));
      this.bytes += pdv.length;
    }
    if (!pdv.last) return null;
    const whole = this.fragments.length === 1 ? this.fragments[0]! : Buffer.concat(this.fragments);
    this.reset();
    return whole;
  }

  reset(): void {
    this.fragments = [];
    this.bytes = 0;
    this.contextId = null;
  }
}
