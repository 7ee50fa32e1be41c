// Compile and apply time of the wardgate ruleset for 10, 100 and 1,000 devices with 10 allow
// entries each, against a naive linear rendering of the same policy (bench/lib.ts: one rule per
// entry in one forward chain, then a drop). Both are loaded with `nft -f -` (NftBackend, through
// `ip netns exec`, as the agent does) into one fresh network namespace made for the benchmark.
//
// Per size and repetition, alternating the two renderings:
//   compile  the rendering in this process (compile() / renderLinear()), from a ready model
//   load     nft -f into an empty namespace (the ruleset is flushed, untimed, before it)
//   total    compile + load, timed as one span
//   replace  nft -f again on top of the loaded table (what a re-apply does), for information
// Medians of WARDGATE_BENCH_REPS repetitions (default 5; three times as many for the two small
// sizes), after one untimed warm-up.
import { compile } from '../agent/policy/compile.js';
import { NftBackend } from '../agent/policy/backend.js';
import { envNumber, generatePolicy, median, ms, must, ratio, renderLinear, table, timed, VERSION, withNetns } from './lib.js';

const SIZES = [10, 100, 1000];
const PER_DEVICE = 10;
const TARGET = 0.3;

type Variant = 'wardgate' | 'linear';
const VARIANTS: Variant[] = ['wardgate', 'linear'];

interface Sample {
  compile: number;
  load: number;
  total: number;
  replace: number;
}

function shape(text: string): string {
  const count = (re: RegExp) => (text.match(re) ?? []).length;
  const sets = count(/^\tset /gm);
  const maps = count(/^\tmap /gm);
  const chains = count(/^\tchain /gm);
  const rules = count(/^\t\t(?!type |elements|\}|\t)/gm);
  const elements = count(/^\t\t\t/gm);
  return `${chains} chains, ${rules} rules, ${sets + maps} sets and maps, ${elements} set and map elements`;
}

export async function apply(): Promise<string[]> {
  const reps = envNumber('WARDGATE_BENCH_REPS', 5);
  console.log(
    `compile + nft -f load in a fresh network namespace; ${PER_DEVICE} allow entries per device; ` +
      `median of ${reps * 3} (10 and 100 devices) or ${reps} (1,000 devices) repetitions`,
  );
  return withNetns(async (ns) => {
    const nft = new NftBackend(ns);
    const flush = () => must('ip', ['netns', 'exec', ns, 'nft', 'flush', 'ruleset']);
    const render = (v: Variant, g: ReturnType<typeof generatePolicy>) => (v === 'wardgate' ? compile(g.model, { version: VERSION }).text : renderLinear(g.model));

    const rows: string[][] = [];
    const ratios: string[][] = [];
    const summary: string[] = [];
    const shapes: string[] = [];
    for (const devices of SIZES) {
      const g = generatePolicy(devices, PER_DEVICE);
      const samples = new Map<Variant, Sample[]>(VARIANTS.map((v) => [v, []]));
      const sizes = new Map<Variant, number>();
      for (const v of VARIANTS) {
        // Warm-up: JIT for compile, the nft binary and libraries in the page cache.
        const text = render(v, g);
        sizes.set(v, text.length);
        if (devices === SIZES[SIZES.length - 1]) shapes.push(`  ${v.padEnd(8)} ${devices} devices: ${shape(text)}`);
        await flush();
        await nft.load(text);
      }
      // Small loads are quick and noisy: repeat them more.
      const n = devices >= 1000 ? reps : reps * 3;
      for (let rep = 0; rep < n; rep++) {
        for (const v of VARIANTS) {
          await flush();
          const t0 = performance.now();
          const c = await timed(() => render(v, g));
          const l = await timed(() => nft.load(c.value));
          const total = performance.now() - t0;
          const r = await timed(() => nft.load(c.value));
          samples.get(v)?.push({ compile: c.ms, load: l.ms, total, replace: r.ms });
        }
      }
      await flush();
      const med = (v: Variant, k: keyof Sample) => median((samples.get(v) ?? []).map((s) => s[k]));
      for (const v of VARIANTS) {
        rows.push([
          String(devices),
          String(g.entries),
          v,
          `${((sizes.get(v) ?? 0) / 1024).toFixed(0)}`,
          ms(med(v, 'compile')),
          ms(med(v, 'load')),
          ms(med(v, 'total')),
          ms(med(v, 'replace')),
        ]);
      }
      const q = (k: keyof Sample) => med('wardgate', k) / med('linear', k);
      ratios.push([String(devices), String(g.entries), ratio(q('compile')), ratio(q('load')), ratio(q('total')), ratio(q('replace'))]);
      if (devices === SIZES[SIZES.length - 1]) {
        const r = q('total');
        summary.push(
          `apply: ${g.entries} entries, wardgate/linear total (compile + load) = ${ratio(r)} (target < ${TARGET}x): ${r < TARGET ? 'PASS' : 'MISS'}`,
          `apply: ${g.entries} entries, wardgate/linear load only = ${ratio(q('load'))}, compile only = ${ratio(q('compile'))}, replace = ${ratio(q('replace'))}`,
        );
      }
    }
    console.log('');
    console.log(table(['devices', 'entries', 'ruleset', 'KiB', 'compile ms', 'load ms', 'total ms', 'replace ms'], rows));
    console.log('');
    console.log(table(['devices', 'entries', 'wardgate/linear: compile', 'load', 'total', 'replace'], ratios));
    console.log('');
    for (const line of shapes) console.log(line);
    const empty: number[] = [];
    for (let rep = 0; rep < reps; rep++) {
      await flush();
      empty.push((await timed(() => nft.load('table inet wardbench_empty {}\n'))).ms);
    }
    await flush();
    console.log(`  every load includes starting ip netns exec + nft: an empty table loads in ${ms(median(empty))} ms`);
    console.log('');
    for (const line of summary) console.log(line);
    return summary;
  });
}
