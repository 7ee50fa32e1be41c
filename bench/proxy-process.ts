// The proxy process for the proxy benchmarks (modbus-proxy.ts, dicom-proxy.ts): the built
// dist/agent/protocols/worker.js, started as the agent starts it (module.ts: node with an IPC
// channel and advanced serialization, logs to our stdout and stderr), given targets that listen
// on 127.0.0.1. This process plays the agent's part: it keeps the alive messages (RSS and
// counters), counts alerts, and writes the records to an application log in a temporary
// directory as the agent does (RotatingFile, one write per event-loop turn), so that a record
// costs what it costs in production. WARDGATE_BENCH_NODE_ARGS adds node flags to the proxy
// process, for example `--cpu-prof --cpu-prof-dir=/tmp/prof`: the profile is written when it
// exits, which it does, as under the agent, when the channel closes.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { WorkerTarget, FromWorker, ToWorker } from '../agent/protocols/worker.js';
import { ProtocolsSchema } from '../agent/protocols/schema.js';
import { parseIPv4 } from '../agent/policy/net.js';
import type { AddrRange } from '../agent/policy/net.js';
import { RotatingFile } from '../agent/util/rotating-file.js';
import { sleep, stopChild, withResource, withTimeout } from './lib.js';

const WORKER = join(import.meta.dirname, '..', 'dist', 'agent', 'protocols', 'worker.js');
const NODE_ARGS = (process.env.WARDGATE_BENCH_NODE_ARGS ?? '').split(/\s+/).filter((a) => a !== '');

type Alive = Extract<FromWorker, { type: 'alive' }>;
type Alert = Extract<FromWorker, { type: 'alert' }>['alert'];

export interface ProxyProcess {
  readonly pid: number;
  readonly alerts: Alert[];
  /** Records by kind (each was also written to the application log). */
  readonly records: Map<string, number>;
  /** Every alive message so far, oldest first. */
  readonly alive: Alive[];
  /** The next alive message (it comes every second). */
  nextAlive(): Promise<Alive>;
}

/**
 * The CPU every process of a path runs on (WARDGATE_BENCH_CPU, default 0; "any" leaves them to
 * the scheduler). On this VM a wake-up across virtual CPUs costs some 45 us, so a request that
 * crosses three processes took 3x longer or not depending on where the scheduler had put them,
 * from one run to the next; on one CPU a path's rate is what its processes' work costs.
 */
export const CPU = process.env.WARDGATE_BENCH_CPU ?? '0';

/** `cmd args`, on CPU (taskset execs it: the pid is the command's). */
export function onCpu(cmd: string, args: string[]): [string, string[]] {
  return CPU === 'any' ? [cmd, args] : ['taskset', ['-c', CPU, cmd, ...args]];
}

/** 127.0.0.1 as the single-address range of an allow entry. */
export const LOCALHOST: AddrRange = { family: 'ipv4', lo: parseIPv4('127.0.0.1'), hi: parseIPv4('127.0.0.1') };

/** The worker script, or an error that says to build first. */
export function workerScript(): string {
  if (!existsSync(WORKER)) throw new Error(`${WORKER} is missing: run "npm run build" first (npm run bench does)`);
  return WORKER;
}

/**
 * Runs `body` with the proxy process listening for `targets` on 127.0.0.1; it is ended
 * afterwards. `worker` is another build's worker.js, to compare a change with what was before it.
 */
export function withProxyProcess<T>(dir: string, targets: WorkerTarget[], body: (p: ProxyProcess) => Promise<T>, worker = workerScript()): Promise<T> {
  return withResource(
    async () => {
      const appLog = new RotatingFile({ path: join(dir, `app-${targets[0]?.listenPort ?? 0}`, 'app.ndjson'), maxBytes: 4 * 1024 * 1024, files: 4, batch: true });
      const child = spawn(...onCpu(process.execPath, [...NODE_ARGS, worker]), { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'advanced' });
      const waiters: ((a: Alive) => void)[] = [];
      const p: ProxyProcess = {
        pid: child.pid ?? 0,
        alerts: [],
        records: new Map<string, number>(),
        alive: [],
        nextAlive: () => withTimeout(new Promise<Alive>((r) => waiters.push(r)), 5000, 'the proxy process sent no alive message for 5 s'),
      };
      let ready: ((m: Extract<FromWorker, { type: 'ready' }>) => void) | undefined;
      child.on('message', (m: FromWorker) => {
        switch (m.type) {
          case 'ready':
            ready?.(m);
            break;
          case 'alive':
            p.alive.push(m);
            for (const w of waiters.splice(0)) w(m);
            break;
          case 'record':
            p.records.set(m.record.kind, (p.records.get(m.record.kind) ?? 0) + 1);
            appLog.write(`${JSON.stringify({ time: new Date().toISOString(), ...m.record })}\n`);
            break;
          case 'alert':
            p.alerts.push(m.alert);
            break;
        }
      });
      const answered = new Promise<Extract<FromWorker, { type: 'ready' }>>((r) => (ready = r));
      const config = ProtocolsSchema.parse({ maxConnectionsPerPeer: 64, listenHost: '127.0.0.1' });
      const m: ToWorker = { type: 'targets', config, targets };
      child.send(m);
      try {
        const r = await withTimeout(answered, 10000, 'the proxy process did not answer its targets within 10 s');
        if (r.failed.length > 0) throw new Error(`the proxy process could not listen: ${r.failed.map((f) => `${f.key}: ${f.error}`).join('; ')}`);
      } catch (err) {
        await stop(child);
        appLog.close();
        throw err;
      }
      return { child, p, appLog };
    },
    async ({ child, appLog }) => {
      await stop(child);
      appLog.close();
    },
    ({ p }) => body(p),
  );
}

/** Closes the channel (the worker exits, writing a CPU profile if asked to), then kills it if it lingers. */
async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  if (child.connected) child.disconnect();
  await Promise.race([exited, sleep(5000)]);
  await stopChild(child);
}

/** USER_HZ, the unit of /proc/<pid>/stat's times: 100 on every Linux architecture node runs on. */
const USER_HZ = 100;

/**
 * CPU time of a process in milliseconds. Alone: the sum of its threads' run time from
 * /proc/<pid>/task/<tid>/schedstat (nanoseconds, so a run of a few hundred milliseconds is
 * measured exactly). With `children`: user and system time from /proc/<pid>/stat with that of
 * its children that have exited and been waited for (socat's forks), in 10-ms ticks.
 */
export function cpuMs(pid: number, children = false): number {
  if (!children) {
    let ns = 0;
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
      } catch {
        // the thread ended meanwhile
      }
    }
    return ns / 1e6;
  }
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name is in parentheses and may hold spaces; the fields after it are fixed.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const at = (i: number) => Number(f[i - 3]);
  return ((at(14) + at(15) + at(16) + at(17)) * 1000) / USER_HZ;
}
