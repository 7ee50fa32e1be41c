// Flow records per second: the agent's traffic pipeline (agent/traffic/module.ts: conntrack -E,
// the tracker, the rotating flow log, the summary, the detector, and tcpdump on the NFLOG group
// beside them) against `conntrack -E` alone, with the same arguments, reading the same kernel in
// the same run, rounds alternating.
//
// Each round: COUNT new UDP flows from the hospital host to the device (bench/flow-storm.mjs, one
// source port each, allowed by the policy), then `conntrack -D` of them all in the gateway
// namespace: the kernel reports COUNT NEW and COUNT DESTROY events as fast as the storm and the
// deletion make them. Counted:
// - loss: events the consumer did not get (conntrack -E alone: NEW and DESTROY lines of the
//   benchmark's flows; the pipeline: flow records, one per DESTROY);
// - rate: flows per second from the first DESTROY to the last one handled (the consumer's
//   drain rate when the kernel reports a burst), and the storm's own rate of new flows;
// - CPU: the agent process's user+system time, and its conntrack child's, per 1,000 flows.
// Target from the issue: the pipeline's rate at least 0.9x conntrack alone's, without loss.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { TrafficSchema } from '../agent/config/schema.js';
import { CONNTRACK_ARGS, parseConntrackLine } from '../agent/traffic/conntrack.js';
import { trafficModule } from '../agent/traffic/module.js';
import { envNumber, generatePolicy, median, ratio, sleep, stopChild, table, TARGET_DEVICE_V4 } from './lib.js';
import { withTrafficSite, type TrafficSite } from './site.js';

const STORM = join(import.meta.dirname, 'flow-storm.mjs');
const FIRST_PORT = 10000;

interface Round {
  consumer: 'conntrack' | 'pipeline';
  flows: number;
  /** Events (conntrack) or records (pipeline) of the benchmark's flows that arrived. */
  got: number;
  expected: number;
  /** Times the kernel said it dropped events (ENOBUFS). */
  overruns: number;
  stormPerS: number;
  drainPerS: number;
  cpuMsPer1k?: number;
  childCpuMsPer1k?: number;
}

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

/** Children of this process running `conntrack -E`. */
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

async function storm(t: TrafficSite, port: number, flows: number): Promise<number> {
  const r = await t.site.exec('peer', [process.execPath, STORM, TARGET_DEVICE_V4, String(port), String(flows), String(FIRST_PORT)], { timeoutMs: 120_000 });
  if (r.code !== 0) throw new Error(`flow-storm failed (exit ${r.code}): ${r.stderr.trim()}`);
  const out = JSON.parse(r.stdout) as { sent: number; errors: number; seconds: number };
  if (out.sent !== flows) throw new Error(`flow-storm sent ${out.sent} of ${flows} (${out.errors} errors)`);
  return flows / out.seconds;
}

async function deleteFlows(t: TrafficSite, port: number): Promise<void> {
  const r = await t.site.exec('gw', ['conntrack', '-D', '-p', 'udp', '--orig-port-dst', String(port)], { timeoutMs: 120_000 });
  // conntrack -D exits 1 when nothing matched; that would be a benchmark bug, said below by the counts.
  if (r.code !== 0 && !/flow entries have been deleted/.test(r.stderr)) throw new Error(`conntrack -D failed: ${r.stderr.trim()}`);
}

async function until(what: string, check: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (check()) return true;
    await sleep(10);
  }
  console.log(`  (gave up waiting for ${what} after ${ms} ms)`);
  return false;
}

async function conntrackAlone(t: TrafficSite, port: number, flows: number): Promise<Round> {
  const child = spawn('ip', ['netns', 'exec', t.site.gw, 'conntrack', ...CONNTRACK_ARGS], { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    let news = 0;
    let destroys = 0;
    let firstDestroy = 0;
    let lastDestroy = 0;
    createInterface({ input: child.stdout }).on('line', (line) => {
      const ev = parseConntrackLine(line);
      if (!ev || ev.l4 !== 'udp' || ev.orig.dport !== port) return;
      if (ev.type === 'new') news++;
      else {
        destroys++;
        lastDestroy = Date.now();
        if (firstDestroy === 0) firstDestroy = lastDestroy;
      }
    });
    let overruns = 0;
    createInterface({ input: child.stderr }).on('line', (line) => {
      if (line.includes('ENOBUFS')) overruns++;
    });
    await sleep(1000);
    const stormPerS = await storm(t, port, flows);
    await until('the NEW events', () => news >= flows, 5_000);
    await deleteFlows(t, port);
    await until('the DESTROY events', () => destroys >= flows, 10_000);
    return { consumer: 'conntrack', flows, got: news + destroys, expected: 2 * flows, overruns, stormPerS, drainPerS: destroys / Math.max(0.001, (lastDestroy - firstDestroy) / 1000) };
  } finally {
    await stopChild(child);
  }
}

async function pipeline(t: TrafficSite, port: number, flows: number): Promise<Round> {
  const dir = mkdtempSync(join(tmpdir(), 'wgbench-flows-'));
  let records = 0;
  let firstRecord = 0;
  let lastRecord = 0;
  let detections = 0;
  let overruns = 0;
  const quiet = {
    info() {},
    warn(_obj: object, msg?: string) {
      if (msg?.includes('ENOBUFS')) overruns++;
    },
    error(obj: object, msg?: string) { console.log(`  pipeline error: ${msg ?? ''} ${JSON.stringify(obj)}`); } };
  const mod = trafficModule({
    config: TrafficSchema.parse({ diskBudgetBytes: 256 * 1024 * 1024, summaryIntervalSeconds: 3600, detections: { neighbourIntervalSeconds: 0 } }),
    model: () => t.g.model,
    stateDir: dir,
    netns: t.site.gw,
    log: quiet,
    publish: () => undefined,
    detection: () => detections++,
    onRecord: (rec) => {
      if (rec.proto !== 'udp' || rec.dport !== port) return;
      records++;
      lastRecord = Date.now();
      if (firstRecord === 0) firstRecord = lastRecord;
    },
    site: 'bench',
    gateway: 'gw',
  });
  try {
    await mod.start();
    await until('the pipeline\'s conntrack', () => conntrackChildren().length > 0, 10_000);
    await sleep(1000);
    const child = conntrackChildren()[0]!;
    const cpu0 = process.cpuUsage();
    const child0 = procCpuMs(child);
    const stormPerS = await storm(t, port, flows);
    await sleep(200);
    await deleteFlows(t, port);
    await until('the flow records', () => records >= flows, 10_000);
    const cpu = process.cpuUsage(cpu0);
    const childMs = procCpuMs(child) - child0;
    return {
      consumer: 'pipeline',
      flows,
      got: records,
      expected: flows,
      overruns,
      stormPerS,
      drainPerS: records / Math.max(0.001, (lastRecord - firstRecord) / 1000),
      cpuMsPer1k: ((cpu.user + cpu.system) / 1000 / flows) * 1000,
      childCpuMsPer1k: (childMs / flows) * 1000,
    };
  } finally {
    await mod.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function flows(): Promise<string[]> {
  const count = envNumber('WARDGATE_BENCH_FLOWS', 20000);
  const rounds = envNumber('WARDGATE_BENCH_ROUNDS', 3);
  // The UDP twin: the last device allows the peer's UDP to the port of its last entry.
  const g = generatePolicy(10, 10, { udpTwin: true });
  const port = g.last.port;
  console.log(
    `${count} new UDP flows ${g.last.peer} -> ${TARGET_DEVICE_V4}:${port} per round, then conntrack -D of them all; ` +
      `${rounds} rounds, conntrack -E alone and the agent's traffic pipeline alternating; medians`,
  );
  return withTrafficSite(g, async (t) => {
    await t.use('wardgate');
    const runs: Round[] = [];
    for (let round = 0; round < rounds; round++) {
      for (const consumer of ['conntrack', 'pipeline'] as const) {
        await t.site.exec('gw', ['conntrack', '-F']);
        await sleep(500);
        const r = consumer === 'conntrack' ? await conntrackAlone(t, port, count) : await pipeline(t, port, count);
        runs.push(r);
        console.log(
          `  round ${round + 1} ${consumer.padEnd(9)} got ${r.got}/${r.expected} (${r.overruns} overruns), storm ${Math.round(r.stormPerS)} flows/s, drain ${Math.round(r.drainPerS)} flows/s` +
            (r.cpuMsPer1k !== undefined ? `, cpu ${r.cpuMsPer1k.toFixed(1)} ms/1k (agent) + ${r.childCpuMsPer1k!.toFixed(1)} ms/1k (its conntrack)` : ''),
        );
      }
    }
    const of = (c: Round['consumer']) => runs.filter((r) => r.consumer === c);
    const med = (c: Round['consumer'], f: (r: Round) => number) => median(of(c).map(f));
    const lost = (c: Round['consumer']) => of(c).reduce((n, r) => n + (r.expected - r.got), 0);
    const rows = (['conntrack', 'pipeline'] as const).map((c) => [
      c === 'conntrack' ? 'conntrack -E alone' : 'wardgate pipeline',
      String(Math.round(med(c, (r) => r.drainPerS))),
      String(Math.round(med(c, (r) => r.stormPerS))),
      String(lost(c)),
      c === 'pipeline' ? med(c, (r) => r.cpuMsPer1k!).toFixed(1) : '-',
      c === 'pipeline' ? med(c, (r) => r.childCpuMsPer1k!).toFixed(1) : '-',
    ]);
    console.log(`\n${table(['consumer', 'drain flows/s', 'storm flows/s', 'lost', 'agent CPU ms/1k', 'conntrack CPU ms/1k'], rows)}`);
    const r = med('pipeline', (x) => x.drainPerS) / med('conntrack', (x) => x.drainPerS);
    const lossFree = lost('pipeline') === 0;
    const line = `flows: pipeline drain rate ${ratio(r)} of conntrack -E alone (target >= 0.9x: ${r >= 0.9 && lossFree ? 'PASS' : 'MISS'}), ${lost('pipeline')} records lost, agent CPU ${med('pipeline', (x) => x.cpuMsPer1k!).toFixed(1)} ms per 1,000 flows`;
    console.log(line);
    return [line];
  });
}
