// Runs the benchmarks: `node --import tsx bench/run.ts [name...]` (npm run bench builds first).
// Each prints its own table and ratios, measured in this run; a full run ends with a summary.
// apply, throughput and udp need root (network namespaces, nftables); without it they say why
// and are skipped. outbox and rss run as any user (rss runs the built agent: dist/).
//
// Environment: WARDGATE_BENCH_REPS (apply repetitions, default 5), WARDGATE_BENCH_ROUNDS
// (rounds, default 5 for throughput and outbox, 3 for udp), WARDGATE_BENCH_SECONDS (seconds per
// traffic run, default 3), WARDGATE_BENCH_EVENTS (outbox events per run, default 5000),
// WARDGATE_BENCH_BROKER (outbox: mosquitto or aedes; default mosquitto when installed),
// WARDGATE_BENCH_RSS_SECONDS (rss: seconds each agent runs, default 25),
// WARDGATE_BENCH_RATES (flows: the ladder of new flows/s, default 1000,2000,4000,8000,16000),
// WARDGATE_BENCH_CONFIGS (backup: 1 MiB configurations per run, default 30),
// WARDGATE_BENCH_NODE_ARGS (node flags for rss's processes and for the modbus and dicom
// benchmarks' proxy process, e.g. --cpu-prof --cpu-prof-dir=DIR).
import { apply } from './apply.js';
import { backup } from './backup.js';
import { flows } from './flows.js';
import { dicomProxy } from './dicom-proxy.js';
import { commandMissing, removeStale, rootSkipReason } from './lib.js';
import { modbusProxy } from './modbus-proxy.js';
import { outbox } from './outbox.js';
import { rss } from './rss.js';
import { throughput } from './throughput.js';
import { udp } from './udp.js';

interface Bench {
  name: string;
  what: string;
  /** Needs root, nft and iproute2 (network namespaces). */
  root: boolean;
  needs?: string[];
  run: () => Promise<string[]>;
}

const BENCHES: Bench[] = [
  { name: 'apply', what: 'compile + nft -f load time, wardgate against a linear rendering, 10 to 10,000 entries', root: true, run: apply },
  { name: 'throughput', what: 'TCP forwarding throughput through 10,000 entries against no table (iperf3)', root: true, needs: ['iperf3'], run: throughput },
  { name: 'udp', what: 'packet rate of one-way UDP, every packet classified, through 10,000 entries', root: true, run: udp },
  { name: 'flows', what: 'flow records/s of the agent\'s traffic pipeline against conntrack -E alone, and its CPU per 1,000 flows', root: true, needs: ['conntrack', 'tcpdump'], run: flows },
  { name: 'outbox', what: 'events/s persisted in the outbox and delivered at QoS 1 by the link, against plain mqtt.js QoS 1', root: false, run: outbox },
  { name: 'backup', what: 'backup store throughput for 1 MB configurations (encrypt, sign, write) against a plain copy plus SHA-256', root: false, run: backup },
  { name: 'modbus', what: 'Modbus TCP requests/s and latency through the inline proxy process, against socat', root: false, needs: ['socat'], run: modbusProxy },
  { name: 'dicom', what: 'DICOM C-STOREs/s (1,000 small objects, one association) through the inline proxy process, against storescu straight to storescp', root: false, needs: ['storescu', 'storescp', 'dump2dcm', 'socat'], run: dicomProxy },
  { name: 'rss', what: 'resident memory of `wardgate run` probing 50 devices, against the same agent with none', root: false, run: rss },
];

function usage(): string {
  return [
    'usage: node --import tsx bench/run.ts [name...]',
    ...BENCHES.map((b) => `  ${b.name.padEnd(11)} ${b.what}`),
  ].join('\n');
}

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  if (args.includes('-h') || args.includes('--help')) {
    console.log(usage());
    return 0;
  }
  const unknown = args.filter((a) => !BENCHES.some((b) => b.name === a));
  if (unknown.length > 0) {
    console.error(`unknown benchmark: ${unknown.join(', ')}\n${usage()}`);
    return 2;
  }
  const chosen = args.length === 0 ? BENCHES : BENCHES.filter((b) => args.includes(b.name));

  const skip = chosen.some((b) => b.root) ? rootSkipReason() : undefined;
  if (skip === undefined && chosen.some((b) => b.root)) await removeStale();

  const summary: string[] = [];
  let failed = false;
  for (const b of chosen) {
    console.log(`\n=== ${b.name}: ${b.what}\n`);
    if (b.root && skip !== undefined) {
      const line = `${b.name}: skipped: ${skip}`;
      console.log(line);
      summary.push(line);
      continue;
    }
    const missing = (b.needs ?? []).filter(commandMissing);
    if (missing.length > 0) {
      const line = `${b.name}: skipped: ${missing.join(', ')} not installed (scripts/install-deps.sh installs it)`;
      console.log(line);
      summary.push(line);
      continue;
    }
    const t0 = Date.now();
    try {
      summary.push(...(await b.run()));
    } catch (err) {
      failed = true;
      const line = `${b.name}: FAILED: ${err instanceof Error ? err.message : String(err)}`;
      console.error(err);
      summary.push(line);
    }
    console.log(`(${b.name}: ${((Date.now() - t0) / 1000).toFixed(0)} s)`);
  }
  if (chosen.length > 1) {
    console.log('\n=== summary\n');
    for (const line of summary) console.log(line);
  }
  return failed ? 1 : 0;
}

process.exitCode = await main();
