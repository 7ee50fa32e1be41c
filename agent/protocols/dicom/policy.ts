// The `dicom:` rules of the allow entries that match a peer, as the session asks them: may this
// association be opened (called and calling AE title), may this presentation context be accepted
// (its abstract syntax), may this command be sent (its name and SOP classes). An entry allows a
// command only with a SOP class it also allows: entries are not mixed.
import { REJECT } from './associate.js';
import { SOP_CLASSES, type DicomRules, type DimseCommand } from '../schema.js';

/** What an entry without `commands:` allows. */
export const DEFAULT_COMMANDS: readonly DimseCommand[] = ['C-ECHO', 'C-STORE', 'C-FIND', 'C-MOVE', 'C-GET'];

/** DIMSE request CommandField values (PS3.7 E.1) by the names the rules use. */
const REQUESTS: ReadonlyMap<number, DimseCommand> = new Map([
  [0x0001, 'C-STORE'],
  [0x0010, 'C-GET'],
  [0x0020, 'C-FIND'],
  [0x0021, 'C-MOVE'],
  [0x0030, 'C-ECHO'],
  [0x0100, 'N-EVENT-REPORT'],
  [0x0110, 'N-GET'],
  [0x0120, 'N-SET'],
  [0x0130, 'N-ACTION'],
  [0x0140, 'N-CREATE'],
  [0x0150, 'N-DELETE'],
]);

/** The rule name of a request's CommandField; 'C-CANCEL' for 0x0FFF; undefined for anything else. */
export function requestName(field: number): DimseCommand | 'C-CANCEL' | undefined {
  return field === 0x0fff ? 'C-CANCEL' : REQUESTS.get(field);
}

const SOP_NAMES: ReadonlyMap<string, string> = new Map(Object.entries(SOP_CLASSES).map(([name, u]) => [u, name]));

/** A SOP class as records name it: the UID, and its name when wardgate knows one. */
export function sopClass(uid: string): { uid: string; name?: string } {
  const name = SOP_NAMES.get(uid);
  return name === undefined ? { uid } : { uid, name };
}

interface Rule {
  called: string;
  calling?: ReadonlySet<string>;
  /** UIDs; undefined: any. */
  sopClasses?: ReadonlySet<string>;
  commands: ReadonlySet<DimseCommand>;
}

export type AssociateDecision = { ok: true; rules: DicomPolicy } | { ok: false; reason: number; text: string };

/**
 * The rules of one peer. `all` (an entry without `dicom:` rules matched the peer) lets
 * everything through; the session still frames and checks the protocol.
 */
export class DicomPolicy {
  private constructor(
    readonly all: boolean,
    private readonly rules: readonly Rule[],
  ) {}

  static of(entries: readonly (DicomRules | 'all')[]): DicomPolicy {
    if (entries.some((e) => e === 'all')) return new DicomPolicy(true, []);
    return new DicomPolicy(
      false,
      entries.flatMap((e) =>
        e === 'all'
          ? []
          : [
              {
                called: e.calledAeTitle.trim(),
                calling: e.callingAeTitles === undefined ? undefined : new Set(e.callingAeTitles.map((t) => t.trim())),
                sopClasses: e.sopClasses === undefined ? undefined : new Set(e.sopClasses.map((s) => (s in SOP_CLASSES ? SOP_CLASSES[s as keyof typeof SOP_CLASSES] : s))),
                commands: new Set(e.commands ?? DEFAULT_COMMANDS),
              },
            ],
      ),
    );
  }

  /**
   * PS3.8 9.3.4: the called AE title must be an entry's (else reason 7), the calling AE title one
   * the entry lists (else reason 3). Titles are compared without their padding spaces. The
   * returned policy holds only the entries that allowed the association.
   */
  associate(called: string, calling: string): AssociateDecision {
    if (this.all) return { ok: true, rules: this };
    const byCalled = this.rules.filter((r) => r.called === called.trim());
    if (byCalled.length === 0) return { ok: false, reason: REJECT.userReason.calledAeNotRecognized, text: 'called-AE-title-not-recognized' };
    const byCalling = byCalled.filter((r) => r.calling === undefined || r.calling.has(calling.trim()));
    if (byCalling.length === 0) return { ok: false, reason: REJECT.userReason.callingAeNotRecognized, text: 'calling-AE-title-not-recognized' };
    return { ok: true, rules: new DicomPolicy(false, byCalling) };
  }

  contextAllowed(abstractSyntax: string): boolean {
    return this.all || this.rules.some((r) => sopAllowed(r, abstractSyntax));
  }

  /**
   * Whether some entry allows the request with the context's abstract syntax and every SOP class
   * the command names. C-CANCEL (PS3.7 9.3.2.3) goes with C-FIND, C-MOVE and C-GET.
   */
  commandAllowed(name: DimseCommand | 'C-CANCEL', abstractSyntax: string, sopClasses: readonly string[]): boolean {
    if (this.all) return true;
    return this.rules.some(
      (r) =>
        (name === 'C-CANCEL' ? r.commands.has('C-FIND') || r.commands.has('C-MOVE') || r.commands.has('C-GET') : r.commands.has(name)) &&
        sopAllowed(r, abstractSyntax) &&
        sopClasses.every((s) => sopAllowed(r, s)),
    );
  }
}

const sopAllowed = (r: Rule, uid: string): boolean => r.sopClasses === undefined || r.sopClasses.has(uid);
