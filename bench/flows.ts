// Flow records per second: the agent's traffic pipeline (agent/traffic/module.ts: conntrack -E,
// the tracker, the rotating flow log, the summary, the detector, and tcpdump on the NFLOG group
// beside them) against `conntrack -E` alone, with the same arguments, listening to the same
// kernel events at the same time.
//
// New UDP flows from the hospital host to the device (bench/flow-storm.mjs, one source port each,
// allowed by the policy) at a fixed rate for a few seconds. The gateway namespace's UDP timeout
// is 1 s and a dump every 200 ms reaps expired entries (conntrack's garbage collector alone can
// take a minute), so each flow's DESTROY follows its NEW about a second later, at the same rate.
//
// conntrack -E alone writes to a file (no work in this process while the round runs); the
// pipeline runs in this process. A flow counts for conntrack alone when both its NEW and its
// DESTROY line arrived, for the pipeline when its flow record was written. On this machine even
// conntrack -E alone misses events from about 2,000 new flows/s (it reports ENOBUFS whatever its
// buffer size, 400 KB to 512 MB), so what compares is, per rate, on the same events:
//   ratio     flows the pipeline recorded / flows conntrack alone reported in full
// and the share of conntrack alone's flows the pipeline also recorded (kept; the kernel drops
// events per socket, so the two miss different ones). Also the agent's CPU time (user + system
// of this process) and its conntrack child's, per 1,000 flows.
// Target from the issue: the pipeline's rate at least 0.9x conntrack alone's, at every rate.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TrafficSchema } from '../agent/config/schema.js';
import { CONNTRACK_ARGS, parseConntrackLine } from '../agent/traffic/conntrack.js';
import { trafficModule } from '../agent/traffic/module.js';
import { envNumber, generatePolicy, ratio, sleep, stopChild, table, TARGET_DEVICE_V4 } from './lib.js';
import { withTrafficSite, type TrafficSite } from './site.js';

const STORM = join(import.meta.dirname, 'flow-storm.mjs');
const FIRST_PORT = 10000;
const RATES = (process.env.WARDGATE_BENCH_RATES ?? '1000,2000,4000,8000,16000').split(',').map(Number);

/** utime + stime of a process, in ms (from /proc/<pid>/stat; clock ticks of 10 ms). */
function procCpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) * 10;
  } catch {
    return 0;
  }
}

/** This process's children running `conntrack -E` (the pipeline's reader). */
function conntrackChildren(): number[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
        const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
        return ppid === process.pid && readFileSync(`/proc/${d}/cmdline`, 'utf8').includes('conntrack');
      } catch {
        return false;
      }
    })
    .map(Number);
}

async function until(check: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (check()) return true;
    await sleep(20);
  }
  return false;
}

interface Result {
  rate: number;
  sent: number;
  stormPerS: number;
  /** Flows conntrack alone reported in full (NEW and DESTROY). */
  alone: number;
  aloneOverruns: number;
  /** Flows the pipeline recorded. */
  recorded: number;
  pipelineOverruns: number;
  /** Of the flows conntrack alone reported in full, those the pipeline recorded. */
  kept: number;
  cpuMsPer1k: number;
  childCpuMsPer1k: number;
}

async function round(t: TrafficSite, port: number, rate: number, seconds: number): Promise<Result> {
  const dir = mkdtempSync(join(tmpdir(), 'wgbench-flows-'));
  const aloneFile = join(dir, 'conntrack-alone.txt');
  const recorded = new Set<number>();
  let pipelineOverruns = 0;
  const log = {
    info() {},
    warn(_obj: object, msg?: string) {
      if (msg?.includes('ENOBUFS')) pipelineOverruns++;
    },
    error(obj: object, msg?: string) {
      console.log(`  pipeline error: ${msg ?? ''} ${JSON.stringify(obj)}`);
    },
  };
  const mod = trafficModule({
    config: TrafficSchema.parse({ diskBudgetBytes: 256 * 1024 * 1024, summaryIntervalSeconds: 3600, detections: { neighbourIntervalSeconds: 0 } }),
    model: () => t.g.model,
    stateDir: join(dir, 'state'),
    netns: t.site.gw,
    log,
    publish: () => undefined,
    detection: () => undefined,
    onRecord: (rec) => {
      if (rec.proto === 'udp' && rec.dport === port && rec.sport !== null) recorded.add(rec.sport);
    },
    site: 'bench',
    gateway: 'gw',
  });
  const alone = spawn('ip', ['netns', 'exec', t.site.gw, 'sh', '-c', `exec conntrack ${CONNTRACK_ARGS.join(' ')} > ${aloneFile} 2> ${aloneFile}.err`], { stdio: 'ignore' });
  const reaper = t.site.spawn('gw', ['sh', '-c', 'while :; do conntrack -L -p udp >/dev/null 2>&1; sleep 0.2; done']);
  try {
    await mod.start();
    if (!(await until(() => conntrackChildren().length > 0, 10_000))) throw new Error('the pipeline\'s conntrack did not start');
    await sleep(1000);
    const child = conntrackChildren()[0]!;
    const sent = Math.min(50_000, rate * seconds);
    const stormer = t.site.spawn('peer', [process.execPath, STORM, TARGET_DEVICE_V4, String(port), String(sent), String(FIRST_PORT), String(rate), 'wait']);
    let out = '';
    let err = '';
    stormer.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    stormer.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    const finished = new Promise<void>((resolve) => stormer.once('exit', () => resolve()));
    if (!(await until(() => out.includes('ready'), 10_000))) throw new Error(`flow-storm did not start: ${err}`);
    // The CPU window: from the storm's start to the last record, with no process spawned in it.
    const cpu0 = process.cpuUsage();
    const child0 = procCpuMs(child);
    // `ip netns exec` may fork: the storm names its own pid.
    process.kill(Number(/ready (\d+)/.exec(out)?.[1]), 'SIGUSR1');
    await finished;
    const result = out.split('\n').find((l) => l.startsWith('{'));
    if (!result) throw new Error(`flow-storm failed (exit ${stormer.exitCode}): ${err.trim()}`);
    const storm = JSON.parse(result) as { sent: number; errors: number; seconds: number };
    if (storm.sent !== sent) throw new Error(`flow-storm sent ${storm.sent} of ${sent} (${storm.errors} errors)`);
    await until(() => recorded.size >= sent, 15_000);
    const cpu = process.cpuUsage(cpu0);
    const childMs = procCpuMs(child) - child0;
    alone.kill('SIGINT');
    await until(() => alone.exitCode !== null || alone.signalCode !== null, 3000);

    const news = new Set<number>();
    const full = new Set<number>();
    for (const line of readFileSync(aloneFile, 'utf8').split('\n')) {
      const ev = parseConntrackLine(line);
      if (!ev || ev.l4 !== 'udp' || ev.orig.dport !== port || ev.orig.sport === undefined) continue;
      if (ev.type === 'new') news.add(ev.orig.sport);
      else if (news.has(ev.orig.sport)) full.add(ev.orig.sport);
    }
    const aloneOverruns = (readFileSync(`${aloneFile}.err`, 'utf8').match(/ENOBUFS/g) ?? []).length;
    let kept = 0;
    for (const sport of full) if (recorded.has(sport)) kept++;
    return {
      rate,
      sent,
      stormPerS: sent / storm.seconds,
      alone: full.size,
      aloneOverruns,
      recorded: recorded.size,
      pipelineOverruns,
      kept,
      cpuMsPer1k: ((cpu.user + cpu.system) / 1000 / sent) * 1000,
      childCpuMsPer1k: (childMs / sent) * 1000,
    };
  } finally {
    await stopChild(reaper);
    await stopChild(alone);
    await mod.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

const pct = (x: number) => `${(100 * x).toFixed(2)}%`;

export async function flows(): Promise<string[]> {
  const seconds = envNumber('WARDGATE_BENCH_SECONDS', 3);
  // The UDP twin: the last device allows the peer's UDP to the port of its last entry.
  const g = generatePolicy(10, 10, { udpTwin: true });
  const port = g.last.port;
  console.log(
    `new UDP flows ${g.last.peer} -> ${TARGET_DEVICE_V4}:${port} at each rate for ${seconds} s (at most 50,000 flows); ` +
      'conntrack -E alone and the agent\'s traffic pipeline listening to the same events',
  );
  return withTrafficSite(g, async (t) => {
    await t.use('wardgate');
    const sysctl = await t.site.exec('gw', ['sysctl', '-q', '-w', 'net.netfilter.nf_conntrack_udp_timeout=1']);
    if (sysctl.code !== 0) throw new Error(`sysctl nf_conntrack_udp_timeout: ${sysctl.stderr.trim()}`);
    const results: Result[] = [];
    for (const rate of RATES) {
      await t.site.exec('gw', ['conntrack', '-F']);
      await sleep(500);
      const r = await round(t, port, rate, seconds);
      results.push(r);
      console.log(`  ${rate}/s: conntrack alone ${r.alone}/${r.sent} (${r.aloneOverruns} overruns), pipeline ${r.recorded}/${r.sent} (${r.pipelineOverruns} overruns), kept ${pct(r.kept / Math.max(1, r.alone))}`);
    }
    const ratioOf = (r: Result) => r.recorded / Math.max(1, r.alone);
    const rows = results.map((r) => [
      String(r.rate),
      String(Math.round(r.stormPerS)),
      `${pct(r.alone / r.sent)} (${r.aloneOverruns})`,
      `${pct(r.recorded / r.sent)} (${r.pipelineOverruns})`,
      ratio(ratioOf(r)),
      pct(r.kept / Math.max(1, r.alone)),
      r.cpuMsPer1k.toFixed(1),
      r.childCpuMsPer1k.toFixed(1),
    ]);
    console.log(`\n${table(['rate', 'storm flows/s', 'conntrack alone (overruns)', 'pipeline (overruns)', 'ratio', 'kept', 'agent CPU ms/1k', 'its conntrack ms/1k'], rows)}`);
    const worst = results.reduce((a, b) => (ratioOf(b) < ratioOf(a) ? b : a));
    const top = results.at(-1)!;
    const lossless = results.filter((r) => r.alone === r.sent && r.recorded === r.sent).at(-1);
    const line =
      `flows: records per flow conntrack -E alone reported, lowest over ${RATES[0]}-${top.rate} new flows/s: ${ratio(ratioOf(worst))} at ${worst.rate}/s ` +
      `(target >= 0.9x: ${ratioOf(worst) >= 0.9 ? 'PASS' : 'MISS'}); both lossless up to ${lossless ? `${lossless.rate}/s` : 'none'}; ` +
      `at ${top.rate}/s conntrack alone ${pct(top.alone / top.sent)}, pipeline ${pct(top.recorded / top.sent)}; agent CPU ${top.cpuMsPer1k.toFixed(1)} ms + its conntrack ${top.childCpuMsPer1k.toFixed(1)} ms per 1,000 flows at ${top.rate}/s`;
    console.log(line);
    return [line];
  });
}
