// IP addresses and prefixes as integer ranges, so that the compiler can reason about overlap
// exactly (nftables rejects overlapping elements in concatenated interval sets).
import { isIPv4, isIPv6 } from 'node:net';

export type Family = 'ipv4' | 'ipv6';

/** An inclusive range of addresses of one family. */
export interface AddrRange {
  family: Family;
  lo: bigint;
  hi: bigint;
}

const BITS: Record<Family, number> = { ipv4: 32, ipv6: 128 };

export function parseIPv4(text: string): bigint {
  let value = 0n;
  for (const part of text.split('.')) value = (value << 8n) | BigInt(Number(part));
  return value;
}

export function parseIPv6(text: string): bigint {
  let head = text;
  let tail4: bigint | undefined;
  const lastColon = text.lastIndexOf(':');
  if (text.slice(lastColon + 1).includes('.')) {
    tail4 = parseIPv4(text.slice(lastColon + 1));
    head = `${text.slice(0, lastColon + 1)}0:0`;
  }
  const [left = '', right] = head.split('::');
  const leftGroups = left === '' ? [] : left.split(':');
  const rightGroups = right === undefined || right === '' ? [] : right.split(':');
  const missing = 8 - leftGroups.length - rightGroups.length;
  const groups = [...leftGroups, ...Array<string>(right === undefined ? 0 : missing).fill('0'), ...rightGroups];
  let value = 0n;
  for (const g of groups) value = (value << 16n) | BigInt(parseInt(g, 16));
  if (tail4 !== undefined) value = (value & ~0xffffffffn) | tail4;
  return value;
}

export function familyOf(address: string): Family | undefined {
  // node:net accepts an IPv6 zone index ("fe80::1%eth0"); an allow-list cannot express one.
  if (address.includes('%')) return undefined;
  if (isIPv4(address)) return 'ipv4';
  if (isIPv6(address)) return 'ipv6';
  return undefined;
}

export function parseAddress(address: string): { family: Family; value: bigint } | undefined {
  const family = familyOf(address);
  if (family === undefined) return undefined;
  return { family, value: family === 'ipv4' ? parseIPv4(address) : parseIPv6(address) };
}

export type PrefixResult =
  | { ok: true; range: AddrRange; prefix: number }
  | { ok: false; reason: string };

/** Parses "a.b.c.d", "a.b.c.d/n", "x::y" or "x::y/n". Host bits must be zero. */
export function parsePrefix(text: string): PrefixResult {
  const slash = text.indexOf('/');
  const addrText = slash === -1 ? text : text.slice(0, slash);
  const parsed = parseAddress(addrText);
  if (parsed === undefined) return { ok: false, reason: `"${addrText}" is not an IPv4 or IPv6 address` };
  const bits = BITS[parsed.family];
  let prefix = bits;
  if (slash !== -1) {
    const lenText = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(lenText) || Number(lenText) > bits) {
      return { ok: false, reason: `prefix length "/${lenText}" is not between /0 and /${bits}` };
    }
    prefix = Number(lenText);
  }
  const hostBits = BigInt(bits - prefix);
  const hostMask = (1n << hostBits) - 1n;
  if ((parsed.value & hostMask) !== 0n) {
    const net = formatAddress(parsed.family, parsed.value & ~hostMask);
    return { ok: false, reason: `host bits are set in "${text}"; the network is ${net}/${prefix}` };
  }
  return { ok: true, prefix, range: { family: parsed.family, lo: parsed.value, hi: parsed.value | hostMask } };
}

export function formatAddress(family: Family, value: bigint): string {
  if (family === 'ipv4') {
    return [24n, 16n, 8n, 0n].map((s) => ((value >> s) & 0xffn).toString()).join('.');
  }
  const groups: string[] = [];
  for (let s = 112n; s >= 0n; s -= 16n) groups.push(((value >> s) & 0xffffn).toString(16));
  // Compress the longest run of zero groups (RFC 5952 section 4.2).
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen && j - i > 1) { bestStart = i; bestLen = j - i; }
    i = j;
  }
  if (bestStart === -1) return groups.join(':');
  const left = groups.slice(0, bestStart).join(':');
  const right = groups.slice(bestStart + bestLen).join(':');
  return `${left}::${right}`;
}

/** Renders a range as nftables element text: a host, a prefix, or a from-to range. */
export function formatRange(r: AddrRange): string {
  if (r.lo === r.hi) return formatAddress(r.family, r.lo);
  const size = r.hi - r.lo + 1n;
  const isPow2 = (size & (size - 1n)) === 0n;
  if (isPow2 && (r.lo & (size - 1n)) === 0n) {
    const prefix = BITS[r.family] - (size.toString(2).length - 1);
    return `${formatAddress(r.family, r.lo)}/${prefix}`;
  }
  return `${formatAddress(r.family, r.lo)}-${formatAddress(r.family, r.hi)}`;
}

export function contains(outer: AddrRange, inner: AddrRange): boolean {
  return outer.family === inner.family && outer.lo <= inner.lo && inner.hi <= outer.hi;
}

export function inRange(r: AddrRange, family: Family, value: bigint): boolean {
  return r.family === family && r.lo <= value && value <= r.hi;
}
