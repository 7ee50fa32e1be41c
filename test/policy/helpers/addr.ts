// Address parsing for the test-side evaluators, written independently of agent/policy/net.ts so
// that the reference evaluator and the ruleset evaluator do not share the code under test.

export type Fam = 'ipv4' | 'ipv6';

export const MAX: Record<Fam, bigint> = { ipv4: (1n << 32n) - 1n, ipv6: (1n << 128n) - 1n };
export const WIDTH: Record<Fam, number> = { ipv4: 32, ipv6: 128 };

export interface Interval {
  lo: bigint;
  hi: bigint;
}

function v4(text: string): bigint {
  const parts = text.split('.');
  if (parts.length !== 4 || parts.some((p) => !/^(0|[1-9]\d{0,2})$/.test(p) || Number(p) > 255)) {
    throw new Error(`bad IPv4 address "${text}"`);
  }
  return parts.reduce((acc, p) => acc * 256n + BigInt(p), 0n);
}

function v6(text: string): bigint {
  let body = text;
  const words: number[] = [];
  // An embedded IPv4 tail ("::ffff:1.2.3.4") is two 16-bit words.
  const tail = /(^|:)(\d+\.\d+\.\d+\.\d+)$/.exec(body);
  let tailWords: number[] = [];
  if (tail) {
    const n = v4(tail[2] as string);
    tailWords = [Number(n >> 16n), Number(n & 0xffffn)];
    body = body.slice(0, body.length - (tail[2] as string).length);
    if (body.endsWith(':') && !body.endsWith('::')) body = body.slice(0, -1);
  }
  const halves = body.split('::');
  if (halves.length > 2) throw new Error(`bad IPv6 address "${text}"`);
  const group = (s: string) => (s === '' ? [] : s.split(':'));
  const head = group(halves[0] ?? '');
  const rest = halves.length === 2 ? group(halves[1] ?? '') : [];
  for (const g of [...head, ...rest]) {
    if (!/^[0-9a-fA-F]{1,4}$/.test(g)) throw new Error(`bad IPv6 group "${g}" in "${text}"`);
  }
  const given = head.length + rest.length + tailWords.length;
  if (halves.length === 1 ? given !== 8 : given > 7) throw new Error(`bad IPv6 address "${text}"`);
  words.push(...head.map((g) => parseInt(g, 16)));
  if (halves.length === 2) for (let i = given; i < 8; i++) words.push(0);
  words.push(...rest.map((g) => parseInt(g, 16)), ...tailWords);
  return words.reduce((acc, w) => (acc << 16n) | BigInt(w), 0n);
}

export function familyOfText(text: string): Fam {
  return text.includes(':') ? 'ipv6' : 'ipv4';
}

export function addr(text: string): { family: Fam; value: bigint } {
  const family = familyOfText(text);
  return { family, value: family === 'ipv4' ? v4(text) : v6(text) };
}

/** "a", "a/n" (host bits must be zero) or "a-b". */
export function addrInterval(text: string): { family: Fam } & Interval {
  const dash = text.indexOf('-');
  if (dash !== -1) {
    const lo = addr(text.slice(0, dash));
    const hi = addr(text.slice(dash + 1));
    if (lo.family !== hi.family || lo.value > hi.value) throw new Error(`bad address range "${text}"`);
    return { family: lo.family, lo: lo.value, hi: hi.value };
  }
  const slash = text.indexOf('/');
  const a = addr(slash === -1 ? text : text.slice(0, slash));
  if (slash === -1) return { family: a.family, lo: a.value, hi: a.value };
  const len = Number(text.slice(slash + 1));
  const width = WIDTH[a.family];
  if (!Number.isInteger(len) || len < 0 || len > width) throw new Error(`bad prefix length in "${text}"`);
  const host = (1n << BigInt(width - len)) - 1n;
  if ((a.value & host) !== 0n) throw new Error(`host bits set in "${text}"`);
  return { family: a.family, lo: a.value, hi: a.value | host };
}

/** Text of an address: dotted quad, or all eight IPv6 groups uncompressed. */
export function addrText(family: Fam, value: bigint): string {
  if (family === 'ipv4') return [24n, 16n, 8n, 0n].map((s) => String((value >> s) & 0xffn)).join('.');
  const groups: string[] = [];
  for (let s = 112n; s >= 0n; s -= 16n) groups.push(((value >> s) & 0xffffn).toString(16));
  return groups.join(':');
}

/** RFC 5952 text through the WHATWG URL serializer, an implementation independent of ours. */
export function canonicalV6(value: bigint): string {
  return new URL(`http://[${addrText('ipv6', value)}]/`).hostname.slice(1, -1);
}
