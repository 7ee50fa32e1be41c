// Addresses and prefixes as integer ranges (agent/policy/net.ts), against independent oracles:
// the WHATWG URL serializer for RFC 5952 text, node:net for what is an address.
import { isIPv6 } from 'node:net';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  contains,
  familyOf,
  formatAddress,
  formatRange,
  inRange,
  parseAddress,
  parseIPv4,
  parseIPv6,
  parsePrefix,
  type AddrRange,
} from '../../agent/policy/net.js';
import { addrText, canonicalV6 } from './helpers/addr.js';

const V4_MAX = (1n << 32n) - 1n;
const V6_MAX = (1n << 128n) - 1n;

const v4Arb = fc.bigInt({ min: 0n, max: V4_MAX });
/** IPv6 values with many zero groups, where compression has choices to make. */
const v6Arb = fc
  .array(fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) }), { minLength: 8, maxLength: 8 })
  .map((groups) => groups.reduce((acc, g) => (acc << 16n) | BigInt(g), 0n));

function prefixOf(family: 'ipv4' | 'ipv6', value: bigint, len: number): AddrRange {
  const width = family === 'ipv4' ? 32 : 128;
  const host = (1n << BigInt(width - len)) - 1n;
  return { family, lo: value & ~host, hi: (value & ~host) | host };
}

describe('IPv4', () => {
  it('parses and formats', () => {
    expect(parseIPv4('0.0.0.0')).toBe(0n);
    expect(parseIPv4('255.255.255.255')).toBe(V4_MAX);
    expect(parseIPv4('10.20.0.11')).toBe(0x0a14000bn);
    expect(formatAddress('ipv4', 0x0a14000bn)).toBe('10.20.0.11');
    expect(formatAddress('ipv4', 0n)).toBe('0.0.0.0');
  });

  it('round-trips every value through text', () => {
    fc.assert(
      fc.property(v4Arb, (v) => {
        const text = formatAddress('ipv4', v);
        expect(text).toBe(addrText('ipv4', v));
        expect(familyOf(text)).toBe('ipv4');
        expect(parseIPv4(text)).toBe(v);
        expect(parseAddress(text)).toEqual({ family: 'ipv4', value: v });
      }),
    );
  });

  it('does not take what node:net does not call an address', () => {
    for (const bad of ['1.2.3', '1.2.3.4.5', '256.1.1.1', '01.2.3.4', '1.2.3.4 ', '']) {
      expect(familyOf(bad), bad).toBeUndefined();
      expect(parseAddress(bad), bad).toBeUndefined();
    }
  });
});

describe('IPv6', () => {
  it.each([
    ['::', '::'],
    ['::1', '::1'],
    ['1::', '1::'],
    ['2001:DB8::1', '2001:db8::1'],
    ['2001:0db8:0000:0000:0000:0000:0000:0001', '2001:db8::1'],
    // The longest run of zero groups is compressed; the first of equal runs.
    ['2001:0:0:1:0:0:0:1', '2001:0:0:1::1'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
    // One zero group alone is not compressed (RFC 5952 section 4.2.2).
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'],
    ['1:2:3:4:5:6:7::', '1:2:3:4:5:6:7:0'],
    ['::2:3:4:5:6:7:8', '0:2:3:4:5:6:7:8'],
    // An embedded IPv4 tail is parsed; the output is always in hex groups.
    ['::ffff:10.20.0.11', '::ffff:a14:b'],
    ['64:ff9b::192.0.2.1', '64:ff9b::c000:201'],
    ['1:2:3:4:5:6:1.2.3.4', '1:2:3:4:5:6:102:304'],
    ['fd00:20::21', 'fd00:20::21'],
  ])('%s is %s', (input, canonical) => {
    const parsed = parseAddress(input);
    expect(parsed?.family).toBe('ipv6');
    expect(formatAddress('ipv6', parsed?.value ?? -1n)).toBe(canonical);
    expect(parseIPv6(canonical)).toBe(parsed?.value);
  });

  it('formats as RFC 5952 says (checked against the WHATWG URL serializer)', () => {
    fc.assert(
      fc.property(v6Arb, (v) => {
        const text = formatAddress('ipv6', v);
        expect(text).toBe(canonicalV6(v));
        expect(isIPv6(text)).toBe(true);
        expect(parseIPv6(text)).toBe(v);
      }),
      { numRuns: 2000 },
    );
  });

  it('parses every spelling of a value: full, compressed, upper case, leading zeros', () => {
    fc.assert(
      fc.property(v6Arb, fc.boolean(), (v, upper) => {
        const full = addrText('ipv6', v)
          .split(':')
          .map((g) => g.padStart(4, '0'))
          .join(':');
        for (const text of [full, addrText('ipv6', v), canonicalV6(v)]) {
          const t = upper ? text.toUpperCase() : text;
          expect(parseAddress(t)).toEqual({ family: 'ipv6', value: v });
        }
      }),
    );
  });

  it('refuses zone indexes, which no allow-list can express', () => {
    for (const zoned of ['fe80::1%eth0', 'fe80::%eth0', '::%1']) {
      expect(familyOf(zoned), zoned).toBeUndefined();
      expect(parsePrefix(zoned).ok, zoned).toBe(false);
      expect(parsePrefix(`${zoned}/64`).ok, zoned).toBe(false);
    }
  });
});

describe('parsePrefix', () => {
  it.each([
    ['10.20.0.0/24', 'ipv4', 0x0a140000n, 0x0a1400ffn, 24],
    ['10.20.0.11', 'ipv4', 0x0a14000bn, 0x0a14000bn, 32],
    ['10.20.0.11/32', 'ipv4', 0x0a14000bn, 0x0a14000bn, 32],
    ['0.0.0.0/0', 'ipv4', 0n, V4_MAX, 0],
    ['::/0', 'ipv6', 0n, V6_MAX, 0],
    ['fd00:20::/64', 'ipv6', 0xfd000020n << 96n, (0xfd000020n << 96n) | ((1n << 64n) - 1n), 64],
    ['fd00:20::21', 'ipv6', (0xfd000020n << 96n) | 0x21n, (0xfd000020n << 96n) | 0x21n, 128],
  ] as const)('%s', (text, family, lo, hi, prefix) => {
    expect(parsePrefix(text)).toEqual({ ok: true, prefix, range: { family, lo, hi } });
  });

  it('refuses host bits and names the network', () => {
    expect(parsePrefix('10.20.0.1/24')).toEqual({ ok: false, reason: 'host bits are set in "10.20.0.1/24"; the network is 10.20.0.0/24' });
    expect(parsePrefix('fd00:20::1/64')).toEqual({ ok: false, reason: 'host bits are set in "fd00:20::1/64"; the network is fd00:20::/64' });
    expect(parsePrefix('0.0.0.1/0')).toMatchObject({ ok: false, reason: expect.stringContaining('the network is 0.0.0.0/0') as unknown });
  });

  it.each(['10.20.0.0/33', 'fd00::/129', '10.20.0.0/', '10.20.0.0/-1', '10.20.0.0/ab', '10.20.0.0/24/1'])('refuses the length in %s', (text) => {
    const r = parsePrefix(text);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason).toMatch(/prefix length|not an IPv4 or IPv6 address/);
  });

  it.each(['pacs', '10.20.0', '10.20.0.0.0/8', 'fd00:::1/64', ''])('refuses %j as an address', (text) => {
    const r = parsePrefix(text);
    expect(r).toMatchObject({ ok: false, reason: expect.stringMatching(/is not an IPv4 or IPv6 address/) as unknown });
  });

  it('round-trips every prefix through formatRange', () => {
    fc.assert(
      fc.property(fc.oneof(fc.tuple(fc.constant('ipv4' as const), v4Arb, fc.integer({ min: 0, max: 32 })), fc.tuple(fc.constant('ipv6' as const), v6Arb, fc.integer({ min: 0, max: 128 }))), ([family, v, len]) => {
        const range = prefixOf(family, v, len);
        const width = family === 'ipv4' ? 32 : 128;
        const text = formatRange(range);
        expect(text).toBe(len === width ? formatAddress(family, range.lo) : `${formatAddress(family, range.lo)}/${len}`);
        expect(parsePrefix(text)).toEqual({ ok: true, prefix: len, range });
      }),
      { numRuns: 500 },
    );
  });
});

describe('formatRange', () => {
  const r = (family: 'ipv4' | 'ipv6', lo: string, hi: string): AddrRange => ({
    family,
    lo: parseAddress(lo)?.value ?? -1n,
    hi: parseAddress(hi)?.value ?? -1n,
  });

  it.each([
    [r('ipv4', '10.0.0.5', '10.0.0.5'), '10.0.0.5'],
    [r('ipv4', '10.0.0.0', '10.0.0.255'), '10.0.0.0/24'],
    [r('ipv4', '10.0.0.4', '10.0.0.7'), '10.0.0.4/30'],
    [r('ipv4', '0.0.0.0', '255.255.255.255'), '0.0.0.0/0'],
    // A power-of-two size that is not aligned is a range, not a prefix.
    [r('ipv4', '10.0.0.2', '10.0.0.5'), '10.0.0.2-10.0.0.5'],
    [r('ipv4', '10.0.0.1', '10.0.0.2'), '10.0.0.1-10.0.0.2'],
    // Sizes that are not powers of two.
    [r('ipv4', '10.0.0.0', '10.0.0.4'), '10.0.0.0-10.0.0.4'],
    [r('ipv4', '10.10.1.11', '10.10.1.255'), '10.10.1.11-10.10.1.255'],
    [r('ipv6', 'fd00::', 'fd00::ffff'), 'fd00::/112'],
    [r('ipv6', '::', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'), '::/0'],
    [r('ipv6', 'fd00:10::6', 'fd00:10::ffff:ffff:ffff:ffff'), 'fd00:10::6-fd00:10::ffff:ffff:ffff:ffff'],
    [r('ipv6', 'fd00::1', 'fd00::2'), 'fd00::1-fd00::2'],
  ])('%o is %s', (range, text) => {
    expect(formatRange(range)).toBe(text);
  });

  it('writes a prefix exactly when the range is an aligned power of two, else lo-hi', () => {
    const rangeArb = fc.oneof(
      fc.tuple(fc.constant('ipv4' as const), v4Arb, v4Arb),
      fc.tuple(fc.constant('ipv4' as const), fc.bigInt({ min: 0n, max: 64n }), fc.bigInt({ min: 0n, max: 64n })),
      fc.tuple(fc.constant('ipv6' as const), v6Arb, v6Arb),
    );
    fc.assert(
      fc.property(rangeArb, ([family, a, b]) => {
        const range: AddrRange = { family, lo: a < b ? a : b, hi: a < b ? b : a };
        const text = formatRange(range);
        const size = range.hi - range.lo + 1n;
        const aligned = (size & (size - 1n)) === 0n && range.lo % size === 0n;
        if (range.lo === range.hi) {
          expect(text).toBe(formatAddress(family, range.lo));
        } else if (aligned) {
          expect(text).toMatch(/\/\d+$/);
          expect(parsePrefix(text)).toMatchObject({ ok: true, range });
        } else {
          const [lo, hi, more] = text.split('-');
          expect(more).toBeUndefined();
          expect(parseAddress(lo ?? '')).toEqual({ family, value: range.lo });
          expect(parseAddress(hi ?? '')).toEqual({ family, value: range.hi });
        }
      }),
      { numRuns: 1000 },
    );
  });
});

describe('contains and inRange', () => {
  const net = (t: string) => {
    const p = parsePrefix(t);
    if (!p.ok) throw new Error(p.reason);
    return p.range;
  };

  it('compare within one family only', () => {
    expect(contains(net('10.0.0.0/8'), net('10.20.0.0/24'))).toBe(true);
    expect(contains(net('10.20.0.0/24'), net('10.0.0.0/8'))).toBe(false);
    expect(contains(net('10.20.0.0/24'), net('10.20.0.0/24'))).toBe(true);
    expect(contains(net('::/0'), net('10.20.0.0/24'))).toBe(false);
    expect(contains(net('0.0.0.0/0'), { family: 'ipv6', lo: 1n, hi: 1n })).toBe(false);
    expect(inRange(net('10.20.0.0/24'), 'ipv4', parseIPv4('10.20.0.255'))).toBe(true);
    expect(inRange(net('10.20.0.0/24'), 'ipv4', parseIPv4('10.20.1.0'))).toBe(false);
    expect(inRange(net('10.20.0.0/24'), 'ipv6', parseIPv4('10.20.0.1'))).toBe(false);
  });
});
