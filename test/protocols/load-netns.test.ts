// The Modbus proxy under load and under attack, in a namespace site (router mode) with a
// pymodbus device behind the gateway. For 20 s an allowed peer (biomed) runs a write-and-read-back
// cycle every 100 ms through the proxy, while
//   - a stranger (on no allow entry) SYN-floods the device's port 502: the kernel drops it in the
//     forward chain, it never reaches the proxy;
//   - an allowed peer (pacs) sends a storm of malformed and denied Modbus frames over many
//     connections, the libmodbus crash inputs, frames that break the MBAP framing, and bursts of
//     connections beyond maxConnectionsPerPeer;
//   - another allowed peer (mgmt) SYN-floods port 502 and drops the SYN-ACKs it gets, as a real
//     flooder does: the ruleset redirects every SYN to the proxy's listener, whose queue fills,
//     and the kernel answers with SYN cookies.
// Then: the loop missed (almost) no cycle, the agent and its proxy process are alive and still
// enforce, the proxy events stayed under the limiter's cap, and the proxy's memory stayed bounded.
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canRoot, childCommands, Lab, ROOT, skipReason, sleep, stopAgent, sumRulePackets, until, v4, warnSkip, type Agent } from '../integration/site.js';

warnSkip('protocols load netns', skipReason);

const GROUPS = `apiVersion: wardgate/v1
kind: Policy
groups:
  pacs:
    members: [10.10.1.10]
  biomed:
    members: [10.10.5.3]
  flood-lab:
    members: [10.10.99.5]
`;

const PLC = `apiVersion: wardgate/v1
kind: Policy
devices:
  - id: plc-01
    class: lab-analyzer
    criticality: medium
    mode: enforce
    ipv4: 10.20.0.21
    allow:
      - peer: pacs
        direction: inbound
        proto: tcp
        ports: [502]
        modbus: { profile: read-only, unitIds: [1] }
      - peer: flood-lab
        direction: inbound
        proto: tcp
        ports: [502]
        modbus: { profile: read-only, unitIds: [1] }
      - peer: biomed
        direction: inbound
        proto: tcp
        ports: [502]
        modbus:
          profile: read-write
          unitIds: [1]
          write: { holdingRegisters: ["100-119"] }
`;

/** Small on purpose: the storm must run into both. */
const MAX_EVENTS_PER_MINUTE = 30;
const MAX_CONNECTIONS_PER_PEER = 8;
const GATEWAY_EXTRA = `traffic:
  detections:
    maxEventsPerMinute: ${MAX_EVENTS_PER_MINUTE}
protocols:
  maxConnectionsPerPeer: ${MAX_CONNECTIONS_PER_PEER}
`;

const LOOP = join(ROOT, 'hardware', 'load', 'modbus-loop.mjs');
const STORM = join(ROOT, 'hardware', 'load', 'modbus-storm.mjs');
const FLOODER = join(ROOT, 'hardware', 'load', 'syn-flood.py');

/**
 * The attackers would be other machines; here they share the gateway's two CPUs. At the lowest
 * priority their own work does not count as the gateway's: what the proxy and the agent must do
 * for their packets still does.
 */
const NICE = ['nice', '-n', '19'];

const LOOP_SECONDS = 20;
const EVERY_MS = 100;
/**
 * Each flood: at most this long and this many SYNs, at this rate. 8000 a second leaves the
 * shared machine's other CPU to the rest; 64,000 is what fits in the source ports without one
 * repeating (a repeat is a retransmission to conntrack, not a new connection).
 */
const FLOOD = { seconds: 8, count: 64_000, rate: 8_000 };

interface LoopReport {
  cycles: number;
  missed: number;
  missedAtMs: number[];
  late: number;
  unanswered: number;
  failed: number;
  p50Ms: number | null;
  p99Ms: number | null;
  maxMs: number | null;
  reconnects: number;
  probes: { sent: number; ok: number; failed: number; worstMs: number; problems: string[] };
  problems: { cycle: number; what: string }[];
}
interface StormReport {
  frames: number;
  malformed: number;
  crashers: number;
  breakers: number;
  connections: number;
  resets: number;
  exceptions: number;
  answers: number;
  connectErrors: Record<string, number>;
  churn: { opened: number; held: number; reset: number };
  seconds: number;
}
interface FloodReport {
  sent: number;
  seconds: number;
  errors: number;
}

/** Runs a tool in a host's namespace and parses the JSON line it prints. */
async function tool<T>(lab: Lab, host: string, argv: string[], timeoutMs: number): Promise<T> {
  const r = await lab.site.exec(host, argv, { timeoutMs });
  const line = r.stdout.trim().split('\n').pop() ?? '';
  if (r.code !== 0 || !line.startsWith('{')) throw new Error(`${argv.slice(0, 2).join(' ')} in ${host} exited ${r.code}: ${r.stdout}${r.stderr}`);
  return JSON.parse(line) as T;
}


/** A line of /proc/<pid>/status in bytes (VmRSS, VmHWM: the peak). */
function procKb(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

/** The proxy process: the agent's child running worker.js (nsenter execs node in place). */
function workerPid(agent: Agent): number | undefined {
  const line = childCommands(agent.child.pid as number).find((l) => l.includes('worker.js') && !l.includes('nsenter'));
  return line === undefined ? undefined : Number(line.split(' ')[0]);
}

/** The events the agent raised (its NDJSON log lines with an `event` field). */
function events(agent: Agent): { event: string; msg: string; time: number }[] {
  return agent.output().split('\n').flatMap((l) => {
    if (!l.startsWith('{')) return [];
    try {
      const o = JSON.parse(l) as { event?: unknown; msg?: string; time?: number };
      return typeof o.event === 'string' ? [{ event: o.event, msg: o.msg ?? '', time: o.time ?? 0 }] : [];
    } catch {
      return [];
    }
  });
}

/** The kernel's counters of the drop for plc-01 and of the redirect to its proxy. */
async function counters(lab: Lab): Promise<{ dropped: number; redirected: number }> {
  const j = await lab.nftJson();
  return { dropped: sumRulePackets(j, 'dev_plc_01_in', 'plc-01 enforce: default drop'), redirected: sumRulePackets(j, 'proxy', 'plc-01:502') };
}

/** The gateway namespace's TCP listen-queue counters (nstat: absolute, history untouched). */
async function listenCounters(lab: Lab): Promise<Record<string, number>> {
  const names = ['TcpExtSyncookiesSent', 'TcpExtSyncookiesRecv', 'TcpExtTCPReqQFullDoCookies', 'TcpExtListenOverflows', 'TcpExtListenDrops'];
  const r = await lab.site.exec('gw', ['nstat', '-asz', ...names]);
  return Object.fromEntries(names.map((n) => [n.replace(/^TcpExt(TCP)?/, ''), Number(new RegExp(`^${n}\\s+(\\d+)`, 'm').exec(r.stdout)?.[1] ?? NaN)]));
}

/** The application log's records (app.ndjson and its rotated files), by kind, and the loop's writes still in it. */
function appLog(lab: Lab): { bytes: number; byKind: Record<string, number>; loopWrites: number } {
  const base = join(lab.stateDir, 'app', 'app.ndjson');
  const files = [base, ...[1, 2, 3].map((i) => `${base}.${i}`)].filter((f) => existsSync(f));
  const byKind: Record<string, number> = {};
  let bytes = 0;
  let loopWrites = 0;
  for (const f of files) {
    const text = readFileSync(f, 'utf8');
    bytes += text.length;
    for (const l of text.split('\n')) {
      if (l === '') continue;
      const r = JSON.parse(l) as { kind: string; peer?: string };
      byKind[r.kind] = (byKind[r.kind] ?? 0) + 1;
      if (r.kind === 'modbus.write' && r.peer === v4('biomed')) loopWrites++;
    }
  }
  return { bytes, byKind, loopWrites };
}

const mb = (bytes: number) => Math.round(bytes / 1024 / 102.4) / 10;

describe.skipIf(!canRoot)('Modbus proxy under load and attack', () => {
  let lab: Lab;
  let agent: Agent | undefined;
  let agentStartedAt = 0;
  let pid = 0;
  let rssBefore = 0;
  let loop: LoopReport;
  let storm: StormReport;
  let strangerFlood: FloodReport;
  let allowedFlood: FloodReport;
  let rssMid = 0;
  let rssAfter = 0;
  let rssPeak = 0;
  let before: { dropped: number; redirected: number };
  let afterStranger: { dropped: number; redirected: number };
  let afterAllowed: { dropped: number; redirected: number };
  let listenBefore: Record<string, number>;
  let listen: Record<string, number>;

  beforeAll(async () => {
    lab = await Lab.create({ mode: 'router', hosts: ['pacs', 'biomed', 'stranger', 'mgmt', 'pump'], policies: { '00-groups.yaml': GROUPS, 'plc.yaml': PLC } });
    appendFileSync(lab.gateway, GATEWAY_EXTRA);
    await lab.modbusDevice('pump');
    // A flooder ignores what comes back: without this its own kernel would reset every SYN-ACK
    // and empty the gateway's SYN queue for it.
    const dropSynAck = 'table inet flooder {\n chain input {\n  type filter hook input priority filter; policy accept;\n  tcp flags & (syn | ack) == syn | ack drop\n }\n}\n';
    for (const h of ['mgmt', 'stranger']) {
      const r = await lab.site.exec(h, ['nft', '-f', '-'], { input: dropSynAck });
      if (r.code !== 0) throw new Error(`nft in ${h}: ${r.stderr}`);
    }
    await lab.commit();
    agentStartedAt = Date.now();
    agent = lab.startAgent();
    const a = agent;
    await until('the proxy answers through the gateway', async () => {
      if (a.child.exitCode !== null) throw new Error(`agent exited: ${a.output()}`);
      const r = await lab.mbpoll('biomed', ['-a', '1', '-r', '0', '-c', '1', v4('pump')]);
      return r.code === 0;
    }, 30000, 500);
    pid = await until('the proxy process', () => workerPid(a), 5000);
    rssBefore = procKb(pid, 'VmRSS');

    before = await counters(lab);

    const started = Date.now();
    const loopRun = tool<LoopReport>(lab, 'biomed', [process.execPath, LOOP, v4('pump'), '502', '--seconds', String(LOOP_SECONDS), '--every', String(EVERY_MS), '--address', '110'], 60000);
    await sleep(1000);
    const stormRun = tool<StormReport>(lab, 'pacs', [...NICE, process.execPath, STORM, v4('pump'), '502', '--seconds', String(LOOP_SECONDS - 3), '--frames', '300000', '--parallel', '6', '--churn', String(3 * MAX_CONNECTIONS_PER_PEER)], 60000);
    // Awaited below; if a flood fails first, these must not end the run as unhandled rejections.
    loopRun.catch(() => undefined);
    stormRun.catch(() => undefined);
    const floodArgs = [v4('pump'), '502', '--seconds', String(FLOOD.seconds), '--count', String(FLOOD.count), '--rate', String(FLOOD.rate)];
    strangerFlood = await tool<FloodReport>(lab, 'stranger', [...NICE, '/usr/bin/python3', FLOODER, ...floodArgs], 30000);
    afterStranger = await counters(lab);
    listenBefore = await listenCounters(lab);
    rssMid = procKb(pid, 'VmRSS');
    await sleep(Math.max(0, started + 10_000 - Date.now()));
    allowedFlood = await tool<FloodReport>(lab, 'mgmt', [...NICE, '/usr/bin/python3', FLOODER, ...floodArgs], 30000);
    afterAllowed = await counters(lab);
    listen = await listenCounters(lab);
    [loop, storm] = await Promise.all([loopRun, stormRun]);
    rssPeak = procKb(pid, 'VmHWM');
    rssAfter = procKb(pid, 'VmRSS');

    const proxyEvents = events(a).filter((e) => /^(modbus|proxy)\./.test(e.event));
    const phase = (from: number, to: number) => loop.missedAtMs.filter((t) => t >= from && t < to).length;
    console.log(
      `[load] loop: ${loop.cycles} cycles every ${EVERY_MS} ms, missed ${loop.missed} (${((100 * loop.missed) / loop.cycles).toFixed(1)}%: ${phase(0, 1000)} before the attacks, ${phase(1000, 10_000)} in the stranger's flood, ${phase(10_000, 20_000)} in the allowed peer's), ` +
        `latency p50 ${loop.p50Ms} ms p99 ${loop.p99Ms} ms max ${loop.maxMs} ms; new connections ${loop.probes.ok}/${loop.probes.sent} (worst ${Math.round(loop.probes.worstMs)} ms) | ` +
        `SYNs: stranger ${strangerFlood.sent} in ${strangerFlood.seconds} s (${afterStranger.dropped - before.dropped} dropped by the kernel), allowed peer ${allowedFlood.sent} in ${allowedFlood.seconds} s (${afterAllowed.redirected - afterStranger.redirected} redirected to the proxy's listener, ${(listen.SyncookiesSent ?? 0) - (listenBefore.SyncookiesSent ?? 0)} SYN cookies sent, ${(listen.ListenDrops ?? 0) - (listenBefore.ListenDrops ?? 0)} listen drops) | ` +
        `storm: ${storm.frames} frames in ${storm.seconds} s (${storm.crashers} libmodbus crash inputs, ${storm.breakers} framing breakers) on ${storm.connections} connections, ${storm.exceptions} exceptions back; churn ${storm.churn.opened} opened, ${storm.churn.reset} reset | ` +
        `proxy events raised ${proxyEvents.length} (cap ${MAX_EVENTS_PER_MINUTE}/min) | proxy RSS ${mb(rssBefore)} MB before, ${mb(rssMid)} MB halfway, peak ${mb(rssPeak)} MB, ${mb(rssAfter)} MB after`,
    );
    const app = appLog(lab);
    console.log(`[load] application log: ${mb(app.bytes)} MB, ${app.loopWrites} of the loop's ${loop.cycles} writes still in it; records ${JSON.stringify(app.byKind)}`);
    if (loop.problems.length + loop.probes.problems.length > 0) console.log(`[load] loop problems: ${JSON.stringify(loop.problems)} probes: ${JSON.stringify(loop.probes.problems)}`);
  }, 120000);

  afterAll(async () => {
    await stopAgent(agent);
    await lab?.destroy();
  });

  it('the loop through the proxy missed at most 2% of its 100 ms cycles, and every answer it got was right', () => {
    // Target 0. The bound leaves room for the shared 2-CPU VM: the floods, the storm, the proxy,
    // the agent, the device and the loop itself all run on the same two CPUs, and a scheduler
    // stall of 100 ms on any one of them is a miss.
    expect(loop.cycles).toBe((LOOP_SECONDS * 1000) / EVERY_MS);
    expect(loop.missed, JSON.stringify(loop.problems)).toBeLessThanOrEqual(Math.floor(loop.cycles * 0.02));
    // A wrong answer or a broken connection is not load: it is a bug.
    expect(loop.failed, JSON.stringify(loop.problems)).toBe(0);
    expect(loop.reconnects).toBe(0);
  });

  it('new connections from an allowed peer still get through during the floods (SYN cookies)', () => {
    expect(loop.probes.sent).toBeGreaterThanOrEqual(LOOP_SECONDS - 2);
    expect(loop.probes.failed, JSON.stringify(loop.probes.problems)).toBe(0);
  });

  it('the stranger\'s SYN flood was dropped by the kernel, the allowed peer\'s redirected to the proxy, which answered with SYN cookies', () => {
    expect(strangerFlood.sent).toBeGreaterThan(FLOOD.rate * FLOOD.seconds * 0.5);
    expect(allowedFlood.sent).toBeGreaterThan(FLOOD.rate * FLOOD.seconds * 0.5);
    // Every SYN of the stranger hit plc-01's default drop in the forward chain.
    expect(afterStranger.dropped - before.dropped).toBeGreaterThanOrEqual(strangerFlood.sent);
    // Every SYN of the allowed peer was a new connection redirected to the listener (the storm's
    // connections are counted there too).
    expect(afterAllowed.redirected - afterStranger.redirected).toBeGreaterThanOrEqual(allowedFlood.sent);
    expect(afterAllowed.dropped - afterStranger.dropped).toBeLessThan(allowedFlood.sent / 10);
    // The listener's SYN queue overflowed in the allowed peer's flood, and the kernel went on
    // answering with SYN cookies (net.ipv4.tcp_syncookies=1, the default), not dropping.
    expect((listen.SyncookiesSent ?? 0) - (listenBefore.SyncookiesSent ?? 0)).toBeGreaterThan(allowedFlood.sent / 2);
    expect(listen.ListenDrops).toBe(listenBefore.ListenDrops);
  });

  it('the storm really ran', () => {
    expect(storm.frames).toBeGreaterThan(1000);
    expect(storm.crashers).toBeGreaterThan(0);
    expect(storm.breakers).toBeGreaterThan(0);
    // The malformed requests were answered with exceptions, as a device would. (Most frames
    // went to connections that the proxy then refused: the storm counts what it wrote.)
    expect(storm.exceptions).toBeGreaterThan(1000);
    // Bursts beyond maxConnectionsPerPeer were refused by the proxy.
    expect(storm.churn.reset).toBeGreaterThan(0);
  });

  it('the agent and its proxy process are alive, and the proxy was never restarted', () => {
    const a = agent as Agent;
    expect(a.child.exitCode).toBeNull();
    expect(workerPid(a)).toBe(pid);
    expect(a.output()).not.toContain('the proxy process exited');
    // A session that throws is a bug in the filter, not an attack handled.
    expect(a.output()).not.toContain('proxy session failed');
  });

  it('the proxy still enforces: an allowed read passes, a write outside the range gets exception 02', async () => {
    const ok = await lab.mbpoll('biomed', ['-a', '1', '-r', '0', '-c', '4', v4('pump')]);
    expect(ok.code, ok.out).toBe(0);
    const denied = await lab.mbpoll('biomed', ['-a', '1', '-r', '150', v4('pump'), '4242']);
    expect(denied.code).not.toBe(0);
    expect(denied.out).toMatch(/Illegal data address/i);
    const direct = await lab.mbpoll('gw', ['-a', '1', '-r', '150', '-c', '1', v4('pump')]);
    expect(direct.out).toMatch(/^\[150\]:\s+150$/m);
  });

  it('proxy events stay within the limiter: at most maxEventsPerMinute a minute, plus one summary', () => {
    const a = agent as Agent;
    const proxy = events(a).filter((e) => /^(modbus|proxy)\./.test(e.event));
    const minutes = Math.ceil((Date.now() - agentStartedAt) / 60_000);
    expect(proxy.length).toBeGreaterThan(0);
    expect(proxy.length).toBeLessThanOrEqual(minutes * (MAX_EVENTS_PER_MINUTE + 1));
    // The storm alone had more distinct keys than the cap: the cap, not the dedup window, held it.
    expect(proxy.filter((e) => e.event !== 'proxy.suppressed').length).toBeGreaterThanOrEqual(MAX_EVENTS_PER_MINUTE);
  });

  it('the proxy process\'s memory stays bounded, and no connection is left open', async () => {
    // The relay holds at most 2 x 259 + 260 x maxPendingRequests bytes per connection, for
    // maxConnections connections. What grows under a storm is V8's heap: allocation pressure
    // grows the young generation to its limit (16 MB semi-spaces) and the old space with it, and
    // V8 keeps what it has grown; about +100 MB measured, flat once grown. A leak would keep
    // growing with the frames: the second half of the storm (as many frames again) may not add.
    expect(rssPeak - rssBefore).toBeLessThan(160 * 1024 * 1024);
    expect(rssAfter - rssMid).toBeLessThan(24 * 1024 * 1024);
    await until('no established connection left in the gateway', async () => {
      const r = await lab.site.exec('gw', ['ss', '-Htn', 'state', 'established']);
      return r.stdout.trim() === '' ? true : undefined;
    }, 6000, 250);
  });

  it('stops cleanly after all that', async () => {
    const a = agent as Agent;
    await stopAgent(a);
    expect(a.child.exitCode ?? a.child.signalCode).toBe(0);
    agent = undefined;
  });
});
