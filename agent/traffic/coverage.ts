// Observed traffic against the current allow-list, by the compiler's matching (matchEntry): what
// the policy would deny, and which entries no observed flow used. `policy diff --observed`.
import type { ResolvedDevice, ResolvedEntry } from '../policy/model.js';
import { parseAddress } from '../policy/net.js';
import type { ConntrackEvent } from './conntrack.js';
import { matchEntry } from './flows.js';
import type { DeviceObservation, ObservedFlow } from './observed.js';

export interface DeviceCoverage {
  device: string;
  mode: ResolvedDevice['mode'];
  /** Observed traffic no entry covers: dropped in enforce mode (only logged in monitor mode). */
  uncovered: ObservedFlow[];
  /** Entries that no observed flow falls in. */
  unused: ResolvedEntry[];
  /** Observed flows of the device in the window. */
  flows: number;
}

/**
 * A flow record as the part of a conntrack event that matchEntry reads. A record does not keep
 * the ICMP type; conntrack tracks ICMP queries, nearly always echo, so an icmp flow is taken for
 * an echo request.
 */
function asEvent(f: ObservedFlow): Pick<ConntrackEvent, 'l4' | 'orig'> {
  const icmpType = f.proto === 'icmp' ? 8 : f.proto === 'icmpv6' ? 128 : undefined;
  return {
    l4: f.proto,
    orig: { src: '', dst: '', ...(f.port !== null ? { dport: f.port } : {}), ...(icmpType !== undefined ? { icmpType } : {}) },
  };
}

function matches(device: ResolvedDevice, entries: ResolvedEntry[], f: ObservedFlow): boolean {
  const peer = parseAddress(f.peer);
  if (!peer) return false;
  return matchEntry({ ...device, entries }, f.direction, peer.family, peer.value, asEvent(f)) !== undefined;
}

export function coverage(device: ResolvedDevice, observed: DeviceObservation | undefined): DeviceCoverage {
  const traffic = observed?.traffic ?? [];
  return {
    device: device.id,
    mode: device.mode,
    uncovered: traffic.filter((f) => !matches(device, device.entries, f)),
    // An entry is used when a flow falls in it, even where an earlier entry covers the flow too.
    unused: device.entries.filter((e) => !traffic.some((f) => matches(device, [e], f))),
    flows: observed?.flows ?? 0,
  };
}
