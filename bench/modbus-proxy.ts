// Requests per second and latency of Modbus TCP through the inline proxy, against socat as a
// plain TCP relay in the same place, in one run, on 127.0.0.1.
//
// The device is bench/modbus-device.mjs, a raw responder in its own process (not pymodbus, which
// would be the bottleneck on both paths and hide the hop). The clients are
// bench/modbus-clients.mjs in a child process: N connections (1 and 8), one request outstanding
// on each, for a fixed time. Paths, alternating within each round (median of the rounds):
//   direct  the clients straight to the device (for information: no hop at all)
//   socat   `socat TCP-LISTEN:p,fork,reuseaddr,nodelay TCP:127.0.0.1:device,nodelay`
//   proxy   the proxy process (dist/agent/protocols/worker.js, started as the agent starts it,
//           proxy-process.ts) with one target on 127.0.0.1: for reads an entry for 127.0.0.1
//           with `modbus: { profile: read-only }`; for the write mix a second target whose entry
//           is read-write with holding registers 100-119 writable.
// Every socket on every path has TCP_NODELAY (the proxy sets it on both of its sockets; the
// device, the clients and socat are told to), so no path waits on Nagle. Every process of a
// path runs on one CPU (proxy-process.ts says why; WARDGATE_BENCH_CPU=any lets them float), so
// a path's rate is what its processes' CPU costs per request.
// Rows: reads only, and a write mix (every 10th request writes one register, allowed: each
// such write is a `modbus.write` record sent to this process and written to an application log
// as the agent does) to see the cost of logging. CPU time of the clients, the relay (socat with
// its forked children, or the proxy process), the device and this process (the agent's part) is
// taken per run from /proc, per request. The clients cost the same on every path, so the
// difference between two paths is their relays'; and the clients' share of a CPU says whether
// they could have gone faster (on one CPU they take about a quarter of it).
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import type { WorkerTarget } from '../agent/protocols/worker.js';
import { ModbusRulesSchema } from '../agent/protocols/schema.js';
import { envNumber, freePorts, median, ratio, sleep, table, waitForPort, withChild, withTempDir, withTimeout } from './lib.js';
import { cpuMs, CPU, LOCALHOST, onCpu, withProxyProcess, type ProxyProcess } from './proxy-process.js';

const DEVICE = join(import.meta.dirname, 'modbus-device.mjs');
const CLIENTS = join(import.meta.dirname, 'modbus-clients.mjs');
const TARGET = 0.8;
const MiB = 1024 * 1024;

type Path = 'direct' | 'socat' | 'proxy';
const PATHS: Path[] = ['direct', 'socat', 'proxy'];

interface Row {
  name: string;
  connections: number;
  /** Every n-th request a write; 0: reads only. */
  writeEvery: number;
}
const ROWS: Row[] = [
  { name: 'reads, 1 conn', connections: 1, writeEvery: 0 },
  { name: 'reads, 8 conns', connections: 8, writeEvery: 0 },
  { name: '10% writes, 1 conn', connections: 1, writeEvery: 10 },
  { name: '10% writes, 8 conns', connections: 8, writeEvery: 10 },
];

interface ClientResult {
  requests: number;
  writes: number;
  errors: number;
  firstError: string;
  seconds: number;
  p50us: number;
  p99us: number;
  maxUs: number;
  cpuUs: number;
}

interface Run extends ClientResult {
  rate: number;
  /** CPU microseconds per request. */
  cpu: { clients: number; relay: number; device: number; agent: number };
}

function modbusTarget(key: string, devicePort: number, listenPort: number, rules: unknown): WorkerTarget {
  return {
    key,
    device: key.split(':')[0] as string,
    port: 502,
    devicePort,
    app: 'modbus',
    entries: [{ id: `${key}/allow[0]`, peers: [LOCALHOST], rules: ModbusRulesSchema.parse(rules) }],
    listenPort,
    addresses: { ipv4: '127.0.0.1' },
    enforce: true,
  };
}

/** Runs the clients once against `port` and returns what they measured. */
function clients(port: number, connections: number, seconds: number, writeEvery: number): Promise<ClientResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(...onCpu(process.execPath, [CLIENTS, String(port), String(connections), String(seconds), String(writeEvery)]), { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), (seconds + 30) * 1000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code !== 0) return reject(new Error(`modbus-clients exited ${code}: ${err.trim()}`));
      try {
        resolve(JSON.parse(out) as ClientResult);
      } catch {
        reject(new Error(`modbus-clients printed no result: ${out}${err}`));
      }
    });
  });
}

export async function modbusProxy(): Promise<string[]> {
  const seconds = envNumber('WARDGATE_BENCH_SECONDS', 3);
  const rounds = envNumber('WARDGATE_BENCH_ROUNDS', 3);
  console.log(
    `Modbus TCP on 127.0.0.1: clients -> [socat | proxy process] -> raw device; 1 and 8 connections, one request outstanding each, ` +
      `${seconds} s per run, ${rounds} rounds, paths alternating, median; TCP_NODELAY everywhere; ${CPU === 'any' ? 'processes where the scheduler puts them' : `every process on CPU ${CPU}`}`,
  );
  return withTempDir('wgbench-modbus-', async (dir) => {
    const [devicePort, socatPort, readPort, writePort] = (await freePorts(4)) as [number, number, number, number];
    return withChild(
      () => spawn(...onCpu(process.execPath, [DEVICE, String(devicePort)]), { stdio: ['ignore', 'ignore', 'inherit'] }),
      (device) =>
        withChild(
          () => spawn(...onCpu('socat', [`TCP-LISTEN:${socatPort},bind=127.0.0.1,fork,reuseaddr,nodelay`, `TCP:127.0.0.1:${devicePort},nodelay`]), { stdio: ['ignore', 'ignore', 'inherit'] }),
          async (socat) => {
            await waitForPort('127.0.0.1', devicePort, 5000, 'the modbus device');
            await waitForPort('127.0.0.1', socatPort, 5000, 'socat');
            const targets = [
              modbusTarget('plc-ro:502', devicePort, readPort, { profile: 'read-only' }),
              modbusTarget('plc-rw:502', devicePort, writePort, { profile: 'read-write', write: { holdingRegisters: ['100-119'] } }),
            ];
            return withProxyProcess(dir, targets, (proxy) => measure(proxy, { device: device.pid ?? 0, socat: socat.pid ?? 0 }, { devicePort, socatPort, readPort, writePort }, seconds, rounds));
          },
        ),
    );
  });
}

async function measure(
  proxy: ProxyProcess,
  pids: { device: number; socat: number },
  ports: { devicePort: number; socatPort: number; readPort: number; writePort: number },
  seconds: number,
  rounds: number,
): Promise<string[]> {
  const rssBefore = (await proxy.nextAlive()).rssBytes;
  const portOf = (path: Path, row: Row) => (path === 'direct' ? ports.devicePort : path === 'socat' ? ports.socatPort : row.writeEvery > 0 ? ports.writePort : ports.readPort);
  const relayCpu = (path: Path) => (path === 'direct' ? 0 : path === 'socat' ? cpuMs(pids.socat, true) : cpuMs(proxy.pid));
  let proxyWrites = 0;

  const once = async (path: Path, row: Row, secs: number): Promise<Run> => {
    const before = { relay: relayCpu(path), device: cpuMs(pids.device), agent: process.cpuUsage() };
    const r = await clients(portOf(path, row), row.connections, secs, row.writeEvery);
    // socat's forks end with their connections; their CPU time reaches the parent when it has waited for them.
    await sleep(path === 'socat' ? 300 : 50);
    if (r.errors > 0) throw new Error(`${path}, ${row.name}: ${r.errors} wrong answers, the first: ${r.firstError}`);
    if (path === 'proxy') proxyWrites += r.writes;
    const per = (msDelta: number) => (msDelta * 1000) / r.requests;
    return {
      ...r,
      rate: r.requests / r.seconds,
      cpu: {
        clients: r.cpuUs / r.requests,
        relay: per(relayCpu(path) - before.relay),
        device: per(cpuMs(pids.device) - before.device),
        agent: (({ user, system }) => (user + system) / r.requests)(process.cpuUsage(before.agent)),
      },
    };
  };

  // Warm-up, not counted: the JIT's first pass over each path and row.
  for (const row of ROWS) for (const path of PATHS) await once(path, row, 0.5);
  const warmWrites = proxyWrites;

  const runs = new Map<string, Run[]>();
  const key = (row: Row, path: Path) => `${row.name}/${path}`;
  for (let round = 0; round < rounds; round++) {
    for (const row of ROWS) {
      for (const path of PATHS) {
        const r = await once(path, row, seconds);
        const list = runs.get(key(row, path)) ?? [];
        list.push(r);
        runs.set(key(row, path), list);
        console.log(
          `  round ${round + 1}  ${row.name.padEnd(20)} ${path.padEnd(6)} ${Math.round(r.rate).toString().padStart(7)} req/s  ` +
            `p50 ${r.p50us.toFixed(0).padStart(4)} us  p99 ${r.p99us.toFixed(0).padStart(5)} us  ` +
            `CPU us/req: clients ${r.cpu.clients.toFixed(1)}, relay ${r.cpu.relay.toFixed(1)}, device ${r.cpu.device.toFixed(1)}; clients ${((r.cpuUs / 1e6 / r.seconds) * 100).toFixed(0)}% of a CPU`,
        );
      }
    }
  }
  const rssAfter = (await proxy.nextAlive()).rssBytes;
  const rssMax = Math.max(...proxy.alive.map((a) => a.rssBytes));

  // Each write that passed is one record, and every record reached this process.
  await withTimeout(
    (async () => {
      while ((proxy.records.get('modbus.write') ?? 0) < proxyWrites) await sleep(50);
    })(),
    5000,
    `the proxy passed ${proxyWrites} writes but sent ${proxy.records.get('modbus.write') ?? 0} modbus.write records`,
  );
  if (proxy.alerts.length > 0) throw new Error(`the proxy raised ${proxy.alerts.length} alerts, the first: ${proxy.alerts[0]?.message}`);
  const stats = proxy.alive.at(-1)?.stats;
  if ((stats?.sessionErrors ?? 0) > 0) throw new Error(`the proxy had ${stats?.sessionErrors} session errors`);

  const med = (row: Row, path: Path, f: (r: Run) => number) => median((runs.get(key(row, path)) ?? []).map(f));
  const rows: string[][] = [];
  for (const row of ROWS) {
    for (const path of PATHS) {
      const rs = runs.get(key(row, path)) ?? [];
      rows.push([
        path === 'direct' ? row.name : '',
        path,
        rs.map((r) => Math.round(r.rate).toString()).join(' '),
        Math.round(med(row, path, (r) => r.rate)).toString(),
        med(row, path, (r) => r.p50us).toFixed(0),
        med(row, path, (r) => r.p99us).toFixed(0),
        med(row, path, (r) => r.cpu.clients).toFixed(1),
        path === 'direct' ? '-' : med(row, path, (r) => r.cpu.relay).toFixed(1),
        med(row, path, (r) => r.cpu.device).toFixed(1),
        `${med(row, path, (r) => (r.cpuUs / 1e6 / r.seconds) * 100).toFixed(0)}%`,
        path === 'direct' ? '' : ratio(med(row, path, (r) => r.rate) / med(row, 'socat', (r) => r.rate)),
      ]);
    }
  }
  console.log('');
  console.log(table(['row', 'path', 'runs (req/s)', 'req/s', 'p50 us', 'p99 us', 'CPU us/req clients', 'relay', 'device', 'clients CPU', 'vs socat'], rows));
  console.log('');
  console.log(
    `proxy process: RSS ${(rssBefore / MiB).toFixed(1)} MiB before the runs, ${(rssAfter / MiB).toFixed(1)} MiB after, at most ${(rssMax / MiB).toFixed(1)} MiB; ` +
      `${stats?.accepted ?? 0} connections accepted, ${proxyWrites - warmWrites} writes recorded in the measured runs (${proxyWrites} in all, every one logged)`,
  );

  const summary: string[] = [];
  for (const row of ROWS) {
    const r = med(row, 'proxy', (x) => x.rate) / med(row, 'socat', (x) => x.rate);
    const addP50 = med(row, 'proxy', (x) => x.p50us) - med(row, 'socat', (x) => x.p50us);
    const addP99 = med(row, 'proxy', (x) => x.p99us) - med(row, 'socat', (x) => x.p99us);
    summary.push(
      `modbus ${row.name}: proxy/socat = ${ratio(r)} (target >= ${TARGET}x): ${r >= TARGET ? 'PASS' : 'MISS'}; ` +
        `added over socat p50 ${addP50 >= 0 ? '+' : ''}${addP50.toFixed(0)} us, p99 ${addP99 >= 0 ? '+' : ''}${addP99.toFixed(0)} us`,
    );
  }
  // What a write's record costs: the proxy's CPU per request over the same row without writes,
  // and this process's (the agent's part: receiving the record, writing the log line).
  for (const row of ROWS.filter((r) => r.writeEvery > 0)) {
    const reads = ROWS.find((r) => r.writeEvery === 0 && r.connections === row.connections) as Row;
    const perWrite = (f: (r: Run) => number) => (med(row, 'proxy', f) - med(reads, 'proxy', f)) * row.writeEvery;
    summary.push(
      `modbus ${row.name}: a write's record costs the proxy ${perWrite((r) => r.cpu.relay).toFixed(0)} us of CPU and the agent ${perWrite((r) => r.cpu.agent).toFixed(0)} us ` +
        `(proxy CPU per request ${med(reads, 'proxy', (r) => r.cpu.relay).toFixed(1)} us reads only, ${med(row, 'proxy', (r) => r.cpu.relay).toFixed(1)} us with writes)`,
    );
  }
  summary.push(`modbus: proxy RSS ${(rssBefore / MiB).toFixed(1)} -> ${(rssAfter / MiB).toFixed(1)} MiB (max ${(rssMax / MiB).toFixed(1)})`);
  console.log('');
  for (const line of summary) console.log(line);
  return summary;
}
