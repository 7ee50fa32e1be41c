// The policy's meaning, written down directly from the raw (generated) policy and the documented
// semantics, without the model or the compiler:
//
// - replies and related packets (ct established/related) pass; so does IPv6 neighbour discovery;
// - a new packet from A to B meets A's outbound allow-list if A is a listed device, then B's
//   inbound allow-list if B is a listed device;
// - an allow-list covers the packet when some entry of that direction has the packet's protocol,
//   a peer (group member or CIDR) holding the other end's address, and a port range holding the
//   destination port (icmp entries: the packet is an echo request);
// - not covered: enforce drops, monitor passes. In the fail-safe variant no allow-list covers
//   anything: failMode closed drops, open passes (failMode defaults to open for life-critical
//   devices, closed otherwise);
// - anything else passes.
import { addr, addrInterval, type Fam } from './addr.js';
import type { Packet, Verdict } from './nft-eval.js';
import { parsePort, type GenDevice, type GenEntry, type GenPolicy } from './policy-gen.js';

const ND = ['nd-neighbor-solicit', 'nd-neighbor-advert', 'nd-router-solicit', 'nd-router-advert'];

function deviceAt(p: GenPolicy, family: Fam, value: bigint): GenDevice | undefined {
  return p.devices.find((d) => {
    const text = family === 'ipv4' ? d.ipv4 : d.ipv6;
    return text !== undefined && addr(text).value === value;
  });
}

function peerHolds(p: GenPolicy, e: GenEntry, family: Fam, value: bigint): boolean {
  const cidrs = p.groups[e.peer] ?? [e.peer];
  return cidrs.some((c) => {
    const r = addrInterval(c);
    return r.family === family && r.lo <= value && value <= r.hi;
  });
}

function covers(p: GenPolicy, d: GenDevice, direction: 'inbound' | 'outbound', peer: bigint, pkt: Packet): boolean {
  if (p.failsafe) return false;
  return d.allow.some((e) => {
    if (e.direction !== direction) return false;
    if (e.proto === 'icmp') {
      if (pkt.proto !== 'icmp' || pkt.icmpType !== 'echo-request') return false;
    } else {
      if (pkt.proto !== e.proto) return false;
      if (!(e.ports ?? []).some((s) => {
        const [lo, hi] = parsePort(s);
        return lo <= pkt.dport && pkt.dport <= hi;
      })) return false;
    }
    return peerHolds(p, e, pkt.family, peer);
  });
}

function uncovered(p: GenPolicy, d: GenDevice): Verdict {
  if (p.failsafe) {
    const failMode = d.failMode ?? (d.criticality === 'life-critical' ? 'open' : 'closed');
    return failMode === 'closed' ? 'drop' : 'accept';
  }
  return d.mode === 'enforce' ? 'drop' : 'accept';
}

export function referenceVerdict(p: GenPolicy, pkt: Packet): Verdict {
  if (pkt.ct !== 'new') return 'accept';
  if (pkt.family === 'ipv6' && pkt.proto === 'icmp' && ND.includes(pkt.icmpType)) return 'accept';
  const sender = deviceAt(p, pkt.family, pkt.src);
  if (sender && !covers(p, sender, 'outbound', pkt.dst, pkt) && uncovered(p, sender) === 'drop') return 'drop';
  const receiver = deviceAt(p, pkt.family, pkt.dst);
  if (receiver && !covers(p, receiver, 'inbound', pkt.src, pkt) && uncovered(p, receiver) === 'drop') return 'drop';
  return 'accept';
}
