// TCP forwarding throughput through a 10,000-entry allow-list (1,000 devices x 10 entries),
// against the same closed namespace site with no table, in one run (bench/site.ts). The iperf3
// server is the last device (10.20.0.11); the client's address and the server's port are the
// last allow entry, so in the naive linear rendering the matching rule is the last one.
//
// Variants, run alternately (A B C D, A B C D, ...), medians reported. Five rounds by default, not
// three: on a 2-core machine where iperf3's two ends and the forwarding share the CPUs, single
// runs of the same variant spread over +-15%, more than the effect being looked for.
//   none            no table in the gateway namespace (no nftables hook, no conntrack)
//   wardgate        the compiled ruleset, enforce mode (a miss would be dropped, not passed)
//   linear          the naive rendering, `ct state established,related accept` first
//   linear-no-fast  the naive rendering with that accept after the 10,000 entry rules, so that
//                   every packet, both directions, walks them
import { envNumber, generatePolicy, median, ratio, table } from './lib.js';
import { withTrafficSite, type Variant } from './site.js';

const DEVICES = 1000;
const PER_DEVICE = 10;
const TARGET = 0.9;
const VARIANTS: Variant[] = ['none', 'wardgate', 'linear', 'linear-no-fast'];

export async function throughput(): Promise<string[]> {
  const seconds = envNumber('WARDGATE_BENCH_SECONDS', 3);
  const rounds = envNumber('WARDGATE_BENCH_ROUNDS', 5);
  const g = generatePolicy(DEVICES, PER_DEVICE, { udpTwin: true });
  console.log(
    `iperf3 TCP ${g.last.peer} -> 10.20.0.11:${g.last.port} through the gateway namespace (router mode), ` +
      `${g.entries} allow entries (${DEVICES} devices x ${PER_DEVICE}); -t ${seconds} -O 1, ${rounds} rounds, variants alternating, median`,
  );
  return withTrafficSite(g, async (t) => {
    const runs = new Map<Variant, { gbps: number; retr: number }[]>(VARIANTS.map((v) => [v, []]));
    let check = '';
    for (let round = 0; round < rounds; round++) {
      for (const v of VARIANTS) {
        await t.use(v);
        const j = await t.iperf(['-O', '1'], seconds);
        const bps = j.end?.sum_received?.bits_per_second;
        if (bps === undefined) throw new Error('iperf3 JSON has no end.sum_received.bits_per_second');
        const r = { gbps: bps / 1e9, retr: j.end?.sum_sent?.retransmits ?? 0 };
        runs.get(v)?.push(r);
        console.log(`  round ${round + 1}  ${v.padEnd(14)} ${r.gbps.toFixed(2).padStart(6)} Gbit/s  (${r.retr} retransmits)`);
        if (v === 'wardgate' && round === 0) check = await t.checkWardgate('tcp');
      }
    }
    await t.use('none');
    console.log(`  ${check}`);

    const med = (v: Variant) => median((runs.get(v) ?? []).map((r) => r.gbps));
    const base = med('none');
    console.log('');
    console.log(
      table(
        ['variant', 'runs (Gbit/s)', 'median Gbit/s', 'vs none'],
        VARIANTS.map((v) => [v, (runs.get(v) ?? []).map((r) => r.gbps.toFixed(2)).join(' '), med(v).toFixed(2), ratio(med(v) / base)]),
      ),
    );
    const r = med('wardgate') / base;
    const summary = [
      `throughput: wardgate/none = ${ratio(r)} (target >= ${TARGET}x): ${r >= TARGET ? 'PASS' : 'MISS'}`,
      `throughput: wardgate/linear = ${ratio(med('wardgate') / med('linear'))}, wardgate/linear-no-fast = ${ratio(med('wardgate') / med('linear-no-fast'))}`,
    ];
    console.log('');
    for (const line of summary) console.log(line);
    return summary;
  });
}
