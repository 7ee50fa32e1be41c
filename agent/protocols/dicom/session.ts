// TEMPORARY stub (not committed): pass-through until the dicom branch lands.
import type { ProtocolSession, SessionContext } from '../types.js';
export function createDicomSession(o: { rules: unknown[]; ctx: SessionContext; [k: string]: unknown }): ProtocolSession {
  void o;
  return { fromPeer: (c) => ({ toDevice: [Buffer.from(c)], toPeer: [] }), fromDevice: (c) => ({ toDevice: [], toPeer: [Buffer.from(c)] }), end: () => {}, buffered: () => 0 };
}
