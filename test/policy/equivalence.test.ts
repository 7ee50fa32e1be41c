// The compiled ruleset means what the policy says. For random policies (devices with IPv4 and/or
// IPv6 addresses, groups, CIDRs, overlapping entries and port ranges, monitor/enforce, the
// fail-safe variant) and random packets biased to the edges of every CIDR and port range, a
// reference evaluator written from the policy agrees with an evaluation of the compiled text.
//
// As root with nft, a smaller sample is also loaded into a network namespace of its own, and the
// kernel's own set lookups (`nft get element`) agree with the text evaluator's.
//
// Reproduce a failure with the seed and path fast-check prints: FC_SEED=<seed> FC_PATH=<path>.
import { spawnSync } from 'node:child_process';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nftAvailable } from '../../agent/policy/backend.js';
import { addrText, canonicalV6, MAX, type Fam } from './helpers/addr.js';
import { evaluate, keyText, parseRuleset, setHas, type NftSet, type NftTable, type Packet } from './helpers/nft-eval.js';
import { compilePolicy, packetArb, packetText, policyArb, policyFiles, type GenPolicy } from './helpers/policy-gen.js';
import { referenceVerdict } from './helpers/reference.js';

const RUNS = Number(process.env.FC_RUNS ?? 400);
const PACKETS = 40;
const params = (numRuns: number): fc.Parameters<unknown> => ({
  numRuns,
  ...(process.env.FC_SEED ? { seed: Number(process.env.FC_SEED) } : {}),
  ...(process.env.FC_PATH ? { path: process.env.FC_PATH } : {}),
});

function tableOf(text: string): NftTable {
  const tables = parseRuleset(text);
  const table = tables.get('inet wardgate');
  if (!table || tables.size !== 1) throw new Error(`expected exactly table inet wardgate, got: ${[...tables.keys()].join(', ')}`);
  return table;
}

function describePolicy(p: GenPolicy, text: string): string {
  const files = policyFiles(p);
  const yaml = Object.entries(files.rules).map(([name, body]) => `--- rules/${name}\n${body}`).join('');
  return `failsafe: ${p.failsafe}\n--- gateway.yaml\n${files.gateway}${yaml}--- ruleset\n${text}`;
}

describe('compiled ruleset agrees with the reference evaluator', () => {
  it(`on ${RUNS} random policies x ${PACKETS} packets`, () => {
    let checked = 0;
    const verdicts = { accept: 0, drop: 0 };
    fc.assert(
      fc.property(
        policyArb.chain((p) => fc.tuple(fc.constant(p), fc.array(packetArb(p), { minLength: PACKETS, maxLength: PACKETS }))),
        ([policy, packets]) => {
          const { compiled } = compilePolicy(policy);
          const table = tableOf(compiled.text);
          for (const pkt of packets) {
            const trace: string[] = [];
            const got = evaluate(table, 'forward', pkt, trace);
            const want = referenceVerdict(policy, pkt);
            if (got !== want) {
              throw new Error(
                `packet ${packetText(pkt)}: the ruleset says ${got} (chains ${trace.join(' -> ')}), the policy says ${want}\n${describePolicy(policy, compiled.text)}`,
              );
            }
            verdicts[got]++;
            checked++;
          }
        },
      ),
      params(RUNS),
    );
    // The generators must produce both outcomes in quantity, or the agreement means little.
    expect(checked).toBe(RUNS * PACKETS);
    expect(verdicts.drop).toBeGreaterThan(checked / 20);
    expect(verdicts.accept).toBeGreaterThan(checked / 20);
  });

  it('established and related packets always pass, whatever the policy', () => {
    fc.assert(
      fc.property(
        policyArb.chain((p) => fc.tuple(fc.constant(p), packetArb(p), fc.constantFrom('established' as const, 'related' as const))),
        ([policy, pkt, ct]) => {
          const table = tableOf(compilePolicy(policy).compiled.text);
          expect(evaluate(table, 'forward', { ...pkt, ct })).toBe('accept');
        },
      ),
      params(50),
    );
  });
});

// ---- the kernel's own lookups ---------------------------------------------------------------

const skipReason = (() => {
  if (process.platform !== 'linux') return `network namespaces need Linux, this is ${process.platform}`;
  if (process.getuid?.() !== 0) return 'not root';
  const nft = nftAvailable();
  if (!nft.ok) return nft.reason ?? 'nft is unavailable';
  if (spawnSync('ip', ['netns', 'list']).status !== 0) return 'iproute2 cannot list network namespaces';
  return undefined;
})();
if (skipReason) console.warn(`skipping the kernel set-lookup comparison: ${skipReason}`);

const NS = `wgqeq${process.pid}`;
const fmt = (f: Fam, v: bigint) => (f === 'ipv4' ? addrText(f, v) : canonicalV6(v));

/** Keys at the corners of each element and just outside them, and a few keys from packets. */
function probeKeys(set: NftSet, extra: bigint[][]): bigint[][] {
  const keys: bigint[][] = [];
  const max = (i: number) => (set.key[i] === 'ipv4_addr' ? MAX.ipv4 : set.key[i] === 'ipv6_addr' ? MAX.ipv6 : set.key[i] === 'inet_service' ? 65535n : 255n);
  for (const el of set.elements.slice(0, 3)) {
    keys.push(el.parts.map((p) => p.lo), el.parts.map((p) => p.hi));
    el.parts.forEach((p, i) => {
      if (set.key[i] === 'inet_proto') return;
      for (const v of [p.lo - 1n, p.hi + 1n]) {
        if (v < 0n || v > max(i)) continue;
        keys.push(el.parts.map((q, k) => (k === i ? v : q.lo)));
      }
    });
  }
  return [...keys.slice(0, 8), ...extra.slice(0, 4)];
}

describe.skipIf(skipReason !== undefined)('the kernel agrees with the text evaluator', () => {
  beforeAll(() => {
    const r = spawnSync('ip', ['netns', 'add', NS], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
  });
  afterAll(() => {
    spawnSync('ip', ['netns', 'del', NS]);
  });

  const nft = (args: string[], input?: string) =>
    spawnSync('ip', ['netns', 'exec', NS, 'nft', ...args], { encoding: 'utf8', ...(input !== undefined ? { input } : {}) });

  it('loads random rulesets and answers set lookups the same way', () => {
    const seed = process.env.FC_SEED ? Number(process.env.FC_SEED) : Date.now() % 2 ** 31;
    const samples = fc.sample(
      policyArb.map((p) => ({ ...p, failsafe: false })).chain((p) => fc.tuple(fc.constant(p), fc.array(packetArb(p), { minLength: 8, maxLength: 8 }))),
      { numRuns: 8, seed },
    );
    let queries = 0;
    let found = 0;
    for (const [policy, packets] of samples) {
      const where = `(seed ${seed}) policy:\n${describePolicy(policy, '')}`;
      for (const failsafe of [true, false]) {
        const { compiled } = compilePolicy(policy, failsafe);
        const load = nft(['-f', '-'], compiled.text);
        expect(load.status, `nft -f refused the ${failsafe ? 'fail-safe ' : ''}ruleset: ${load.stderr}\n${where}\n${compiled.text}`).toBe(0);
      }
      // The last one loaded is the ruleset itself.
      const table = tableOf(compilePolicy(policy, false).compiled.text);
      for (const set of table.sets.values()) {
        const fromPackets = packets
          .filter((p: Packet) => (set.key[0] === 'ipv4_addr') === (p.family === 'ipv4'))
          .map((p) => (set.key.length === 1 ? [p.src] : [p.src, p.proto === 'udp' ? 17n : 6n, BigInt(p.dport)]));
        for (const key of probeKeys(set, fromPackets)) {
          const text = keyText(set, key, fmt);
          const r = nft(['get', 'element', 'inet', 'wardgate', set.name, `{ ${text} }`]);
          const kernel = r.status === 0;
          if (!kernel && !/No such file or directory/.test(r.stderr)) throw new Error(`nft get element failed: ${r.stderr}`);
          expect(kernel, `set ${set.name}, key { ${text} }: the kernel says ${kernel}, the text evaluator ${!kernel} ${where}`).toBe(setHas(set, key));
          queries++;
          if (kernel) found++;
        }
      }
      for (const map of table.maps.values()) {
        const family: Fam = map.key === 'ipv4_addr' ? 'ipv4' : 'ipv6';
        for (const key of [...map.elements.keys(), ...[...map.elements.keys()].map((k) => k + 1n)].slice(0, 6)) {
          const r = nft(['get', 'element', 'inet', 'wardgate', map.name, `{ ${fmt(family, key)} }`]);
          expect(r.status === 0, `map ${map.name}, key ${fmt(family, key)} ${where}`).toBe(map.elements.has(key));
          queries++;
          if (r.status === 0) found++;
        }
      }
    }
    console.log(`kernel set lookups: ${queries} queries (${found} found) on ${samples.length} rulesets (seed ${seed})`);
    expect(queries).toBeGreaterThan(50);
    expect(found).toBeGreaterThan(queries / 10);
    expect(queries - found).toBeGreaterThan(queries / 10);
  });
});
