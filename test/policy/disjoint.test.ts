// Cutting overlapping (address, port) boxes into disjoint labelled ones (agent/policy/disjoint.ts).
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { disjointBoxes, type Box } from '../../agent/policy/disjoint.js';

const box = (lo: number | bigint, hi: number | bigint, plo: number, phi: number, ...labels: string[]): Box => ({
  lo: BigInt(lo),
  hi: BigInt(hi),
  plo,
  phi,
  labels,
});

const overlaps = (a: Box, b: Box) => a.lo <= b.hi && b.lo <= a.hi && a.plo <= b.phi && b.plo <= a.phi;
const holds = (b: Box, a: bigint, p: number) => b.lo <= a && a <= b.hi && b.plo <= p && p <= b.phi;
const labelsAt = (boxes: readonly Box[], a: bigint, p: number) => [...new Set(boxes.filter((b) => holds(b, a, p)).flatMap((b) => b.labels))].sort();

/** Boxes in a small space, so that they overlap often and every point can be checked. */
function boxesArb(addrMax: number, portMax: number): fc.Arbitrary<Box[]> {
  const one = fc
    .record({
      a: fc.integer({ min: 0, max: addrMax }),
      b: fc.integer({ min: 0, max: addrMax }),
      p: fc.integer({ min: 0, max: portMax }),
      q: fc.integer({ min: 0, max: portMax }),
      labels: fc.uniqueArray(fc.constantFrom('e0', 'e1', 'e2', 'e3', 'e4', 'e5', 'e6', 'e7'), { minLength: 1, maxLength: 2 }),
    })
    .map(({ a, b, p, q, labels }) => box(Math.min(a, b), Math.max(a, b), Math.min(p, q), Math.max(p, q), ...labels));
  return fc.array(one, { maxLength: 10 });
}

const same = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((x, i) => x === b[i]);
const show = (b: Box) => `[${b.lo}-${b.hi}]x[${b.plo}-${b.phi}] {${b.labels.join(',')}}`;

/**
 * Checks every property of the output against the input, on the given sample points. Plain
 * comparisons and one throw: this runs for every point of thousands of cases.
 */
function checkCut(input: readonly Box[], output: readonly Box[], points: Iterable<[bigint, number]>): void {
  const fail = (why: string) => {
    throw new Error(`${why}\ninput:  ${input.map(show).join(' ')}\noutput: ${output.map(show).join(' ')}`);
  };
  for (const b of output) {
    if (!(b.lo <= b.hi && b.plo <= b.phi) || b.labels.length === 0) fail(`ill-formed box ${show(b)}`);
  }
  // Pairwise disjoint.
  for (let i = 0; i < output.length; i++) {
    for (let j = i + 1; j < output.length; j++) {
      if (overlaps(output[i] as Box, output[j] as Box)) fail(`output boxes ${show(output[i] as Box)} and ${show(output[j] as Box)} overlap`);
    }
  }
  // Each output box has exactly the labels of the input boxes covering it: those of the input
  // boxes it meets, and (checked at the points below) the same labels at each of its points.
  // Pieces with the same labels may be merged, so one input box need not cover it whole.
  for (const o of output) {
    const want = [...new Set(input.filter((b) => overlaps(b, o)).flatMap((b) => b.labels))].sort();
    if (!same([...o.labels].sort(), want)) fail(`${show(o)} should have labels {${want.join(',')}}`);
    if (new Set(o.labels).size !== o.labels.length) fail(`${show(o)} has a label twice`);
    // Every label's input boxes together reach each corner of the output box.
    for (const label of o.labels) {
      const mine = input.filter((b) => b.labels.includes(label) && overlaps(b, o));
      for (const a of [o.lo, o.hi]) {
        for (const p of [o.plo, o.phi]) if (!mine.some((b) => holds(b, a, p))) fail(`label ${label} of ${show(o)} is missing at (${a}, ${p})`);
      }
    }
  }
  // The same union, with the same labels, at every sampled point.
  for (const [a, p] of points) {
    const inside = output.filter((b) => holds(b, a, p));
    if (inside.length > 1) fail(`(${a}, ${p}) is in ${inside.length} output boxes`);
    const got = [...(inside[0]?.labels ?? [])].sort();
    const want = labelsAt(input, a, p);
    if (!same(got, want)) fail(`at (${a}, ${p}) the output has {${got.join(',')}}, the input {${want.join(',')}}`);
  }
}

describe('disjointBoxes', () => {
  it('leaves boxes that overlap nothing as they are', () => {
    const input = [box(10, 20, 80, 80, 'a'), box(21, 30, 80, 80, 'b'), box(10, 20, 81, 90, 'c')];
    expect(disjointBoxes(input)).toEqual(expect.arrayContaining(input));
    expect(disjointBoxes(input)).toHaveLength(3);
    expect(disjointBoxes([])).toEqual([]);
  });

  it('cuts a host out of a network with the same port', () => {
    expect(disjointBoxes([box(0, 255, 443, 443, 'net'), box(10, 10, 443, 443, 'host')])).toEqual([
      box(0, 9, 443, 443, 'net'),
      box(10, 10, 443, 443, 'host', 'net'),
      box(11, 255, 443, 443, 'net'),
    ]);
  });

  it('cuts crossing port ranges on one address range', () => {
    expect(disjointBoxes([box(0, 15, 8000, 8100, 'a'), box(0, 15, 8050, 8200, 'b')])).toEqual([
      box(0, 15, 8000, 8049, 'a'),
      box(0, 15, 8050, 8100, 'a', 'b'),
      box(0, 15, 8101, 8200, 'b'),
    ]);
  });

  it('merges the pieces back when they carry the same labels', () => {
    // A group holding a network and a host inside it: one entry, one box.
    expect(disjointBoxes([box(0, 255, 161, 161, 'e'), box(7, 7, 161, 161, 'e')])).toEqual([box(0, 255, 161, 161, 'e')]);
    // The same box twice, with different labels.
    expect(disjointBoxes([box(5, 9, 1, 2, 'x'), box(5, 9, 1, 2, 'y')])).toEqual([box(5, 9, 1, 2, 'x', 'y')]);
  });

  it('handles the extremes of the IPv6 space', () => {
    const max = (1n << 128n) - 1n;
    const out = disjointBoxes([box(0n, max, 1, 65535, 'any'), box(max, max, 65535, 65535, 'last')]);
    checkCut([box(0n, max, 1, 65535, 'any'), box(max, max, 65535, 65535, 'last')], out, [
      [0n, 1],
      [max, 65535],
      [max, 65534],
      [max - 1n, 65535],
    ]);
    expect(out).toContainEqual(box(max, max, 65535, 65535, 'any', 'last'));
  });

  it('gives disjoint boxes with the union and the labels of the input (every point of a small space)', () => {
    const ADDR = 20;
    const PORT = 20;
    const grid: [bigint, number][] = [];
    for (let a = 0; a <= ADDR + 1; a++) for (let p = 0; p <= PORT + 1; p++) grid.push([BigInt(a), p]);
    fc.assert(
      fc.property(boxesArb(ADDR, PORT), (input) => {
        const snapshot = structuredClone(input);
        const output = disjointBoxes(input);
        expect(input, 'the input is not modified').toEqual(snapshot);
        checkCut(input, output, grid);
      }),
      { numRuns: 1000 },
    );
  });

  it('does the same over wide address ranges, sampled at every edge and next to it', () => {
    const wide = boxesArb(1000, 65535).map((boxes) =>
      boxes.map((b) => ({ ...b, lo: b.lo * 2n ** 100n, hi: b.hi * 2n ** 100n + 2n ** 100n - 1n })),
    );
    fc.assert(
      fc.property(wide, (input) => {
        const output = disjointBoxes(input);
        const as = new Set<bigint>();
        const ps = new Set<number>();
        for (const b of input) {
          for (const a of [b.lo - 1n, b.lo, b.hi, b.hi + 1n]) as.add(a);
          for (const p of [b.plo - 1, b.plo, b.phi, b.phi + 1]) ps.add(p);
        }
        const points: [bigint, number][] = [];
        for (const a of as) for (const p of ps) points.push([a, p]);
        checkCut(input, output, points);
      }),
      { numRuns: 300 },
    );
  });

  it('gives back unchanged a box whose addresses no other box shares', () => {
    // (Boxes that share addresses but not ports are one cluster: adjacent ones with the same
    // labels may come back merged, which is as good.)
    fc.assert(
      fc.property(boxesArb(40, 40), (input) => {
        const separate = input.filter((b, i) => input.every((o, j) => i === j || b.hi < o.lo || o.hi < b.lo));
        const output = disjointBoxes(input);
        for (const b of separate) expect(output).toContainEqual({ ...b, labels: [...b.labels] });
      }),
      { numRuns: 500 },
    );
  });
});
