// The DICOM filter: one association between a peer (the requestor: it opened the connection) and
// the device (the acceptor), PDU by PDU. It rejects associations the rules do not allow
// (A-ASSOCIATE-RJ, PS3.8 9.3.4), refuses presentation contexts in the device's A-ASSOCIATE-AC
// (9.3.3.2), and aborts the association (A-ABORT, 9.3.8) at a command the rules deny, before any
// of it reaches the device. It follows the association's states (PS3.8 9.2, table 9-10) closely
// enough that a PDU out of turn is an error, not something the device has to make sense of.
//
// Pure: bytes in, decisions out (types.ts). PDUs are forwarded as views of the input chunks
// they arrived in (a large data set is never copied); what is copied is small: command sets,
// chunks under 1 KiB (pdu.ts), and an AC the filter rewrites. Input chunks are never written to.
import type { DicomRules } from '../schema.js';
import { nothing, type ProtocolAlert, type ProtocolSession, type SessionContext, type SessionOutput } from '../types.js';
import {
  ABORT_SOURCE,
  abortReasonText,
  buildAbort,
  buildAssociateRj,
  checkReleasePdu,
  CONTEXT_RESULT,
  parseAssociateAc,
  parseAssociateRq,
  parseFourBytePdu,
  REJECT,
  rejectReasonText,
} from './associate.js';
import { CommandAssembler, commandName, decodeCommandSet, hasDataSet, isResponse, MAX_COMMAND_BYTES, pdvs, type CommandSet } from './dimse.js';
import { ABORT_REASON, DicomProtocolError, joined, PartsReader, PDU, PDU_HEADER, PDU_NAMES, PduFramer, type AbortReason, type Pdu, type PduType } from './pdu.js';
import { DicomPolicy, requestName, sopClass } from './policy.js';

export interface DicomSessionOptions {
  /** One per allow entry that matches the peer; 'all' for an entry without `dicom:` rules. */
  rules: readonly (DicomRules | 'all')[];
  ctx: SessionContext;
  /** The largest PDU, header included, either side may send (protocols.dicom.maxPduBytes). */
  maxPduBytes: number;
}

export type AssociationResult = 'accepted' | 'rejected' | 'aborted' | 'released';

type Side = 'peer' | 'device';

type Phase =
  /** Waiting for the peer's A-ASSOCIATE-RQ; the device has seen nothing. */
  | 'idle'
  /** The RQ went to the device; waiting for its AC or RJ. */
  | 'requested'
  | 'established'
  | 'closed';

interface ContextState {
  abstractSyntax: string;
  /** The rules allow its abstract syntax. */
  allowed: boolean;
  /** Accepted as the peer sees it: by the device, and not refused by the filter. */
  accepted: boolean;
}

/** What a data set fragment may belong to: the command before it announced one on this context. */
type Message = { kind: 'none' } | { kind: 'dataSet'; contextId: number };

/** At most this many would-be denials are listed in a monitor-mode record. */
const MAX_LISTED = 16;

const peerName = (ctx: SessionContext): string => `${ctx.peer.address}:${ctx.peer.port}`;

export function createDicomSession(opts: DicomSessionOptions): ProtocolSession {
  return new DicomSession(opts);
}

class DicomSession implements ProtocolSession {
  private readonly ctx: SessionContext;
  private readonly maxPduBytes: number;
  private policy: DicomPolicy;
  private readonly fromPeerFramer: PduFramer;
  private readonly fromDeviceFramer: PduFramer;
  private readonly started: number;

  private phase: Phase = 'idle';
  /** Monitor mode after a framing error: everything is forwarded as it comes, unread. */
  private transparent = false;
  private out: SessionOutput = nothing();

  private calling?: string;
  private called?: string;
  private readonly contexts = new Map<number, ContextState>();
  private readonly peerCommand = new CommandAssembler();
  private readonly deviceCommand = new CommandAssembler();
  /** Device command sets are decoded for counting only; one that does not decode stops that. */
  private countDeviceCommands = true;
  private message: Message = { kind: 'none' };
  /** P-DATA-TF PDUs from the peer holding a command whose last fragment has not come yet. */
  private held: Buffer[] = [];
  private heldBytes = 0;
  private releaseByPeer = false;
  private releaseByDevice = false;

  private result: AssociationResult | undefined;
  private by: Side | 'proxy' | undefined;
  private reason: string | undefined;
  private readonly commands: Record<string, number> = {};
  private readonly responses: Record<string, number> = {};
  private readonly moveDestinations = new Set<string>();
  private readonly wouldDeny: string[] = [];
  private wouldDenyCount = 0;
  private readonly bytes = { fromPeer: 0, fromDevice: 0 };
  private readonly pdus = { fromPeer: 0, fromDevice: 0 };
  private recorded = false;

  constructor(opts: DicomSessionOptions) {
    if (!Number.isInteger(opts.maxPduBytes) || opts.maxPduBytes < 4096) throw new RangeError(`maxPduBytes must be an integer of at least 4096, not ${opts.maxPduBytes}`);
    this.ctx = opts.ctx;
    this.maxPduBytes = opts.maxPduBytes;
    this.policy = DicomPolicy.of(opts.rules);
    this.fromPeerFramer = new PduFramer(opts.maxPduBytes);
    this.fromDeviceFramer = new PduFramer(opts.maxPduBytes);
    this.started = opts.ctx.now();
  }

  fromPeer(chunk: Buffer): SessionOutput {
    return this.feed('peer', chunk);
  }

  fromDevice(chunk: Buffer): SessionOutput {
    return this.feed('device', chunk);
  }

  end(reason: string): void {
    this.phase = 'closed';
    this.writeRecord(reason);
  }

  buffered(): number {
    return this.fromPeerFramer.buffered + this.fromDeviceFramer.buffered + this.heldBytes + this.peerCommand.buffered + this.deviceCommand.buffered;
  }

  // -------------------------------------------------------------------------------------------

  private feed(side: Side, chunk: Buffer): SessionOutput {
    if (this.phase === 'closed') return nothing();
    if (side === 'peer') this.bytes.fromPeer += chunk.length;
    else this.bytes.fromDevice += chunk.length;
    if (this.transparent) return side === 'peer' ? { toDevice: [chunk], toPeer: [] } : { toDevice: [], toPeer: [chunk] };
    const framer = side === 'peer' ? this.fromPeerFramer : this.fromDeviceFramer;
    framer.push(chunk);
    while (this.reading()) {
      const frame = framer.next();
      if (frame.kind === 'more') break;
      if (frame.kind === 'unknown') {
        this.protocolError(side, new DicomProtocolError(ABORT_REASON.unrecognizedPdu, `unknown PDU type 0x${frame.type.toString(16).padStart(2, '0')}`), null);
      } else if (frame.kind === 'oversize') {
        this.oversize(side, frame.type, frame.size);
      } else {
        if (side === 'peer') this.pdus.fromPeer++;
        else this.pdus.fromDevice++;
        try {
          if (side === 'peer') this.onPeerPdu(frame.pdu);
          else this.onDevicePdu(frame.pdu);
        } catch (err) {
          if (!(err instanceof DicomProtocolError)) throw err;
          this.protocolError(side, err, frame.pdu);
        }
      }
    }
    const out = this.out;
    this.out = nothing();
    return out;
  }

  /** A method, not an inline test: the handlers below change the phase under the loop. */
  private reading(): boolean {
    return this.phase !== 'closed' && !this.transparent;
  }

  private onPeerPdu(pdu: Pdu): void {
    switch (pdu.type) {
      case PDU.ASSOCIATE_RQ:
        if (this.phase !== 'idle') throw this.unexpected('peer', pdu.type);
        return this.onAssociateRq(pdu);
      case PDU.P_DATA_TF:
        if (this.phase !== 'established' || this.releaseByPeer) throw this.unexpected('peer', pdu.type);
        return this.onPeerData(pdu);
      case PDU.RELEASE_RQ:
        if (this.phase !== 'established' || this.releaseByPeer || this.peerCommand.active || this.message.kind !== 'none') throw this.unexpected('peer', pdu.type);
        checkReleasePdu(joined(pdu.parts), 'A-RELEASE-RQ');
        this.releaseByPeer = true;
        this.out.toDevice.push(...pdu.parts);
        return;
      case PDU.RELEASE_RP:
        if (this.phase !== 'established' || !this.releaseByDevice) throw this.unexpected('peer', pdu.type);
        checkReleasePdu(joined(pdu.parts), 'A-RELEASE-RP');
        this.releaseByDevice = false;
        this.out.toDevice.push(...pdu.parts);
        return this.maybeReleased('device');
      case PDU.ABORT:
        return this.onAbort('peer', pdu);
      case PDU.ASSOCIATE_AC:
      case PDU.ASSOCIATE_RJ:
        throw this.unexpected('peer', pdu.type);
    }
  }

  private onDevicePdu(pdu: Pdu): void {
    switch (pdu.type) {
      case PDU.ASSOCIATE_AC:
        if (this.phase !== 'requested') throw this.unexpected('device', pdu.type);
        return this.onAssociateAc(pdu);
      case PDU.ASSOCIATE_RJ: {
        if (this.phase !== 'requested') throw this.unexpected('device', pdu.type);
        const rj = parseFourBytePdu(joined(pdu.parts), 'A-ASSOCIATE-RJ');
        this.out.toPeer.push(...pdu.parts);
        this.finish('rejected', 'device', `${rejectReasonText(rj.source, rj.reason)} (result ${rj.result}, source ${rj.source}, reason ${rj.reason})`);
        return;
      }
      case PDU.P_DATA_TF:
        if (this.phase !== 'established' || this.releaseByDevice) throw this.unexpected('device', pdu.type);
        this.countDevicePdvs(pdu);
        this.out.toPeer.push(...pdu.parts);
        return;
      case PDU.RELEASE_RQ:
        if (this.phase !== 'established' || this.releaseByDevice) throw this.unexpected('device', pdu.type);
        checkReleasePdu(joined(pdu.parts), 'A-RELEASE-RQ');
        this.releaseByDevice = true;
        this.out.toPeer.push(...pdu.parts);
        return;
      case PDU.RELEASE_RP:
        if (this.phase !== 'established' || !this.releaseByPeer) throw this.unexpected('device', pdu.type);
        checkReleasePdu(joined(pdu.parts), 'A-RELEASE-RP');
        this.releaseByPeer = false;
        this.out.toPeer.push(...pdu.parts);
        return this.maybeReleased('peer');
      case PDU.ABORT:
        return this.onAbort('device', pdu);
      case PDU.ASSOCIATE_RQ:
        throw this.unexpected('device', pdu.type);
    }
  }

  // --- association -----------------------------------------------------------------------------

  private onAssociateRq(pdu: Pdu): void {
    const rq = parseAssociateRq(joined(pdu.parts));
    this.calling = rq.callingAeTitle;
    this.called = rq.calledAeTitle;
    const decision = this.policy.associate(rq.calledAeTitle, rq.callingAeTitle);
    let rejection = decision.ok ? undefined : { reason: decision.reason, text: decision.text };
    if (decision.ok) this.policy = decision.rules;
    for (const c of rq.contexts) this.contexts.set(c.id, { abstractSyntax: c.abstractSyntax, allowed: decision.ok && this.policy.contextAllowed(c.abstractSyntax), accepted: false });
    if (rejection === undefined && ![...this.contexts.values()].some((c) => c.allowed)) {
      rejection = { reason: REJECT.userReason.noReasonGiven, text: 'no-reason-given' };
    }
    if (rejection !== undefined) {
      const why = rejection.reason === REJECT.userReason.noReasonGiven ? 'no proposed presentation context has an allowed SOP class' : rejection.text;
      const denial = `association rejected: ${why} (A-ASSOCIATE-RJ result 1, source 1, reason ${rejection.reason})`;
      this.alert('dicom.rejected', `${rejection.reason}`, denial, { reason: rejection.reason, reasonText: rejection.text }, 'rejected');
      if (this.ctx.enforce) {
        this.out.toPeer.push(buildAssociateRj(REJECT.result.permanent, REJECT.source.serviceUser, rejection.reason));
        this.finish('rejected', 'proxy', `${rejection.text} (reason ${rejection.reason})`);
        return;
      }
      this.noteWouldDeny(denial);
      // The rules have had their say for this association; the rest is monitored, not judged again.
      this.policy = DicomPolicy.of(['all']);
      for (const c of this.contexts.values()) c.allowed = true;
    }
    this.out.toDevice.push(...pdu.parts);
    this.phase = 'requested';
  }

  private onAssociateAc(pdu: Pdu): void {
    const view = joined(pdu.parts);
    const ac = parseAssociateAc(view);
    const refused: number[] = [];
    for (const c of ac.contexts) {
      const state = this.contexts.get(c.id);
      if (c.result !== CONTEXT_RESULT.acceptance) continue;
      // An id the peer never proposed is refused as well: nothing can be said about its syntax.
      if (state === undefined || !state.allowed) refused.push(c.id);
      if (state !== undefined) state.accepted = state.allowed || !this.ctx.enforce;
    }
    const maxLength = this.maxPduBytes - PDU_HEADER;
    const { maxLength: deviceMax, maxLengthOffset } = ac.userInfo;
    const clampAt = maxLengthOffset !== undefined && deviceMax !== undefined && (deviceMax === 0 || deviceMax > maxLength) ? maxLengthOffset : undefined;
    if (refused.length > 0) {
      // Peers propose a class once per transfer syntax, and storescu every class it knows: say each once, and not all.
      const classes = unique(refused.map((id) => this.contexts.get(id)?.abstractSyntax ?? `context ${id}`));
      const shown = classes.slice(0, 4).map((uid) => sopClass(uid).name ?? uid);
      const denial = `${refused.length} presentation contexts refused (abstract-syntax-not-supported): ${shown.join(', ')}${classes.length > shown.length ? ` and ${classes.length - shown.length} more SOP classes` : ''}`;
      this.alert('dicom.refused', 'contexts', denial, { refused: refused.length, sopClasses: classes.slice(0, MAX_LISTED).map(sopClass) }, 'refused', 'info');
      if (!this.ctx.enforce) this.noteWouldDeny(denial);
    }
    if (this.ctx.enforce && (refused.length > 0 || clampAt !== undefined)) {
      // A copy: the input chunk is the caller's. Same length, only result bytes (9.3.3.2) and
      // the maximum length (D.1) change, so the PDU needs no re-encoding.
      const ac2 = Buffer.from(view);
      for (const c of ac.contexts) if (refused.includes(c.id)) ac2[c.resultOffset] = CONTEXT_RESULT.abstractSyntaxNotSupported;
      // The peer sizes its P-DATA-TF PDUs by the device's maximum length; clamped to the
      // filter's, a conforming peer never sends a PDU the filter would abort as oversize.
      if (clampAt !== undefined) ac2.writeUInt32BE(maxLength, clampAt);
      this.out.toPeer.push(ac2);
    } else {
      this.out.toPeer.push(...pdu.parts);
    }
    this.phase = 'established';
    this.result = 'accepted';
  }

  private onAbort(side: Side, pdu: Pdu): void {
    const abort = parseFourBytePdu(joined(pdu.parts), 'A-ABORT');
    if (side === 'device') this.out.toPeer.push(...pdu.parts);
    // Before the RQ was forwarded the device has no association to abort.
    else if (this.phase !== 'idle') this.out.toDevice.push(...pdu.parts);
    this.finish('aborted', side, `A-ABORT from the ${side}: ${abortReasonText(abort.source, abort.reason)}`);
  }

  private maybeReleased(answered: Side): void {
    if (this.releaseByPeer || this.releaseByDevice) return;
    this.finish('released', answered === 'device' ? 'device' : 'peer', 'A-RELEASE');
  }

  // --- data ------------------------------------------------------------------------------------

  private onPeerData(pdu: Pdu): void {
    const r = new PartsReader(pdu.parts);
    for (const pdv of pdvs(r)) {
      if (pdv.command) {
        if (this.message.kind === 'dataSet') throw new DicomProtocolError(ABORT_REASON.invalidParameter, `command fragment on context ${pdv.contextId} before the data set on context ${this.message.contextId} ended`);
        const whole = this.peerCommand.add(r, pdv);
        if (whole === null) continue;
        const command = decodeCommandSet(whole);
        // PS3.7 E.1: required in every command; without it the device and the filter could
        // disagree on whether a data set follows.
        if (command.commandDataSetType === undefined) throw new DicomProtocolError(ABORT_REASON.invalidParameter, `${commandName(command.commandField)} without CommandDataSetType (0000,0800)`);
        if (!this.checkCommand(command, pdv.contextId)) return;
        this.message = hasDataSet(command) ? { kind: 'dataSet', contextId: pdv.contextId } : { kind: 'none' };
      } else {
        // PS3.7 6.3.1, PS3.8 annex E: a data set follows the command that announced it, on its context.
        if (this.peerCommand.active) throw new DicomProtocolError(ABORT_REASON.invalidParameter, `data set fragment on context ${pdv.contextId} inside a command`);
        if (this.message.kind !== 'dataSet') throw new DicomProtocolError(ABORT_REASON.invalidParameter, `data set fragment on context ${pdv.contextId} without a command that announced one`);
        if (pdv.contextId !== this.message.contextId) throw new DicomProtocolError(ABORT_REASON.invalidParameter, `data set fragment on context ${pdv.contextId}, its command on ${this.message.contextId}`);
        if (pdv.last) this.message = { kind: 'none' };
      }
    }
    if (this.peerCommand.active && this.ctx.enforce) {
      // The command is not whole yet: nothing of it goes to the device before it is checked.
      // (Monitor mode denies nothing, so it holds nothing: the bytes go on as they came.)
      if (this.heldBytes + pdu.size > this.maxPduBytes + MAX_COMMAND_BYTES) {
        throw new DicomProtocolError(ABORT_REASON.invalidParameter, `a command spread over more than ${this.maxPduBytes + MAX_COMMAND_BYTES} bytes of PDUs`);
      }
      this.held.push(...pdu.parts);
      this.heldBytes += pdu.size;
      return;
    }
    this.releaseHeld();
    this.out.toDevice.push(...pdu.parts);
  }

  private releaseHeld(): void {
    if (this.held.length === 0) return;
    this.out.toDevice.push(...this.held);
    this.held = [];
    this.heldBytes = 0;
  }

  /** Checks a whole command from the peer; false when it ended the association. */
  private checkCommand(command: CommandSet, contextId: number): boolean {
    const name = commandName(command.commandField);
    this.commands[name] = (this.commands[name] ?? 0) + 1;
    if (command.moveDestination !== undefined && this.moveDestinations.size < MAX_LISTED) this.moveDestinations.add(command.moveDestination);
    const context = this.contexts.get(contextId);
    let why: string | undefined;
    if (context === undefined || !context.accepted) why = `presentation context ${contextId} was not accepted`;
    else if (isResponse(command.commandField)) {
      // A response to the device's own request (a C-STORE sub-operation of a C-GET, an
      // N-EVENT-REPORT of storage commitment): the peer answers, it does not ask.
    } else {
      const request = requestName(command.commandField);
      const sopClasses = [command.affectedSopClass, command.requestedSopClass].filter((s): s is string => s !== undefined && s !== '');
      if (request === undefined) why = `${name} is not a DIMSE request`;
      else if (!this.policy.commandAllowed(request, context.abstractSyntax, sopClasses)) {
        why = `${request} with ${[context.abstractSyntax, ...sopClasses.filter((s) => s !== context.abstractSyntax)].join(', ')} is not allowed`;
      }
    }
    if (why === undefined) return true;
    const data = {
      command: name,
      contextId,
      sopClass: context === undefined ? null : sopClass(context.abstractSyntax),
      messageId: command.messageId ?? null,
      ...(command.moveDestination !== undefined ? { moveDestination: command.moveDestination } : {}),
    };
    const denial = `${name} denied: ${why}`;
    this.alert('dicom.aborted', `${name}/${context?.abstractSyntax ?? contextId}`, this.ctx.enforce ? `${denial}; association aborted (A-ABORT source 2, reason 0)` : denial, data, 'aborted');
    if (!this.ctx.enforce) {
      this.noteWouldDeny(denial);
      return true;
    }
    this.abortBoth(ABORT_REASON.notSpecified);
    this.finish('aborted', 'proxy', denial);
    return false;
  }

  private countDevicePdvs(pdu: Pdu): void {
    if (!this.countDeviceCommands) return;
    try {
      const r = new PartsReader(pdu.parts);
      for (const pdv of pdvs(r)) {
        if (!pdv.command) continue;
        const whole = this.deviceCommand.add(r, pdv);
        if (whole === null) continue;
        const name = commandName(decodeCommandSet(whole).commandField);
        this.responses[name] = (this.responses[name] ?? 0) + 1;
      }
    } catch (err) {
      if (!(err instanceof DicomProtocolError)) throw err;
      // The device's answers are its own business and the peer's; the filter only counts them.
      this.countDeviceCommands = false;
      this.deviceCommand.reset();
    }
  }

  // --- errors and endings ------------------------------------------------------------------------

  private unexpected(side: Side, type: PduType): DicomProtocolError {
    return new DicomProtocolError(ABORT_REASON.unexpectedPdu, `${PDU_NAMES[type]} from the ${side} ${this.phaseText()}`);
  }

  private phaseText(): string {
    if (this.phase === 'idle') return 'before an A-ASSOCIATE-RQ';
    if (this.phase === 'requested') return 'while the A-ASSOCIATE-RQ waits for an answer';
    if (this.releaseByPeer || this.releaseByDevice) return 'during a release';
    return 'during the association';
  }

  /** A PDU that breaks PS3.8: abort (enforce), or stop reading and pass everything (monitor). */
  private protocolError(side: Side, err: DicomProtocolError, pdu: Pdu | null): void {
    const text = `malformed ${pdu === null ? 'PDU' : PDU_NAMES[pdu.type]} from the ${side}: ${err.message}`;
    this.alert('dicom.malformed', `${side}/${err.reason}`, text, { from: side, abortReason: err.reason, abortReasonText: abortReasonText(ABORT_SOURCE.serviceProvider, err.reason) }, 'aborted');
    if (!this.ctx.enforce) {
      this.noteWouldDeny(text);
      this.becomeTransparent(side, pdu);
      return;
    }
    this.abortBoth(err.reason);
    this.finish('aborted', 'proxy', text);
  }

  private oversize(side: Side, type: PduType, size: number): void {
    const text = `${PDU_NAMES[type]} of ${size} bytes from the ${side} is larger than ${this.maxPduBytes}`;
    this.alert('dicom.oversize', side, text, { from: side, pdu: PDU_NAMES[type], size, maxPduBytes: this.maxPduBytes }, 'aborted');
    if (!this.ctx.enforce) {
      this.noteWouldDeny(text);
      this.becomeTransparent(side, null);
      return;
    }
    // 9.3.8 reason 6: the length field is more than the maximum length negotiated (the AC's is clamped to it).
    this.abortBoth(ABORT_REASON.invalidParameter);
    this.finish('aborted', 'proxy', text);
  }

  private becomeTransparent(side: Side, pdu: Pdu | null): void {
    this.releaseHeld();
    if (pdu !== null) (side === 'peer' ? this.out.toDevice : this.out.toPeer).push(...pdu.parts);
    this.out.toDevice.push(...this.fromPeerFramer.drain());
    this.out.toPeer.push(...this.fromDeviceFramer.drain());
    this.peerCommand.reset();
    this.deviceCommand.reset();
    this.transparent = true;
  }

  /** PS3.8 9.3.8, source 2 (service provider): to the peer, and to the device once it has the RQ. */
  private abortBoth(reason: AbortReason): void {
    this.held = [];
    this.heldBytes = 0;
    this.out.toPeer.push(buildAbort(ABORT_SOURCE.serviceProvider, reason));
    if (this.phase !== 'idle') this.out.toDevice.push(buildAbort(ABORT_SOURCE.serviceProvider, reason));
  }

  private finish(result: AssociationResult, by: Side | 'proxy', reason: string): void {
    this.result = result;
    this.by = by;
    this.reason = reason;
    this.phase = 'closed';
    this.out.close = `dicom: ${result} by the ${by}: ${reason}`;
    this.held = [];
    this.heldBytes = 0;
    this.peerCommand.reset();
    this.deviceCommand.reset();
  }

  private noteWouldDeny(text: string): void {
    this.wouldDenyCount++;
    if (this.wouldDeny.length < MAX_LISTED) this.wouldDeny.push(text);
  }

  /**
   * A denial (or, in monitor mode, what would have been one): an alert for the console, and the
   * same as a record in the application log. `action` is what the filter did in enforce mode.
   */
  private alert(kind: string, key: string, text: string, data: Record<string, unknown>, action: 'rejected' | 'refused' | 'aborted', severity: ProtocolAlert['severity'] = 'warning'): void {
    const ctx = this.ctx;
    const who = {
      device: ctx.device,
      peer: ctx.peer.address,
      peerPort: ctx.peer.port,
      calling: this.calling ?? null,
      called: this.called ?? null,
    };
    const wouldDeny = !ctx.enforce;
    ctx.alert({
      severity,
      kind,
      dedupKey: `${kind}/${ctx.device}/${ctx.peer.address}/${this.calling ?? ''}/${this.called ?? ''}/${key}`,
      message: `${ctx.device}: DICOM from ${peerName(ctx)} (${this.calling ?? '?'} -> ${this.called ?? '?'}): ${wouldDeny ? 'monitor mode, forwarded: ' : ''}${text}`,
      data: { ...who, ...data, wouldDeny },
    });
    ctx.record({ kind, ...who, detail: text, ...data, action: wouldDeny ? 'forwarded' : action, wouldDeny });
  }

  private writeRecord(endReason: string): void {
    if (this.recorded) return;
    this.recorded = true;
    // A connection that never carried a byte (a port check) is the flow log's, not an association.
    if (this.bytes.fromPeer === 0 && this.bytes.fromDevice === 0) return;
    const proposed = [...this.contexts.values()].map((c) => c.abstractSyntax);
    const accepted = [...this.contexts.values()].filter((c) => c.accepted).map((c) => c.abstractSyntax);
    // Ended before the device answered the RQ (or before an RQ): no association came of it.
    const result = this.result ?? 'aborted';
    this.ctx.record({
      kind: 'dicom.association',
      device: this.ctx.device,
      peer: this.ctx.peer.address,
      peerPort: this.ctx.peer.port,
      mode: this.ctx.enforce ? 'enforce' : 'monitor',
      calling: this.calling ?? null,
      called: this.called ?? null,
      proposed: unique(proposed).map(sopClass),
      accepted: unique(accepted).map(sopClass),
      commands: this.commands,
      responses: this.responses,
      ...(this.moveDestinations.size > 0 ? { moveDestinations: [...this.moveDestinations] } : {}),
      bytes: { ...this.bytes },
      pdus: { ...this.pdus },
      durationMs: Math.max(0, this.ctx.now() - this.started),
      result,
      by: this.by ?? (this.result === 'accepted' ? null : 'connection'),
      reason: this.reason ?? endReason,
      endReason,
      ...(this.wouldDenyCount > 0 ? { wouldDeny: true, wouldDenials: this.wouldDenyCount, wouldDenyReasons: this.wouldDeny } : {}),
    });
  }
}

function unique(xs: readonly string[]): string[] {
  return [...new Set(xs)];
}
