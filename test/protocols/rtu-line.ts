// Test helpers for the Modbus RTU gateway: a serial line that is real to both ends (a
// pseudo-terminal pair joined by socat), a pymodbus RTU device on one end
// (hardware/sim/modbus_rtu_device.py), the pymodbus client (test/fixtures/pymodbus_client.py),
// and the proxy process itself (dist/agent/protocols/worker.js) driven over its IPC channel as
// the agent drives it. Every process is registered with a Procs set that stops them all, also
// after a failure.
//
// Lines run without parity: this kernel's pseudo-terminals refuse PARENB (tcsetattr fails with
// EINVAL when nothing else changes), and the line's bytes are the same either way.
import { execFile, fork, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import type { FromWorker, ToWorker, WorkerTarget } from '../../agent/protocols/worker.js';
import type { ProtocolsConfig } from '../../agent/protocols/schema.js';
import type { RtuStatus } from '../../agent/protocols/modbus/rtu.js';
import { ROOT } from '../integration/site.js';

export const PYTHON = '/usr/bin/python3';
export const DEVICE = join(ROOT, 'hardware', 'sim', 'modbus_rtu_device.py');
export const CLIENT = join(ROOT, 'test', 'fixtures', 'pymodbus_client.py');
export const WORKER = join(ROOT, 'dist', 'agent', 'protocols', 'worker.js');

/** Why the RTU tests with real peers cannot run here, or undefined. */
export const rtuSkipReason: string | undefined = (() => {
  if (process.platform !== 'linux') return `pseudo-terminals as serial lines need Linux, this is ${process.platform}`;
  if (spawnSync('socat', ['-V']).error !== undefined) return 'socat is not installed (apt-get install socat)';
  if (spawnSync('mbpoll', ['-V']).error !== undefined) return 'mbpoll is not installed (apt-get install mbpoll)';
  const py = spawnSync(PYTHON, ['-c', 'import pymodbus, serial, serial_asyncio'], { encoding: 'utf8' });
  if (py.error !== undefined || py.status !== 0) return 'pymodbus with pyserial is not installed (apt-get install python3-pymodbus python3-serial python3-serial-asyncio)';
  return undefined;
})();

/** Children that stopAll() ends, each with SIGTERM and, 2 s later, SIGKILL. */
export class Procs {
  private readonly live = new Set<ChildProcess>();

  add(child: ChildProcess): ChildProcess {
    this.live.add(child);
    child.once('exit', () => this.live.delete(child));
    return child;
  }

  async stop(child: ChildProcess): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
    await exited;
    clearTimeout(timer);
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.live].map((c) => this.stop(c)));
  }
}

/** Output of a child so far, and a wait for a line of it. */
function watch(child: ChildProcess, what: string, ready: string, timeoutMs = 10000): Promise<void> {
  let out = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} did not start within ${timeoutMs} ms: ${out}`)), timeoutMs);
    const onData = (d: Buffer) => {
      out += d.toString();
      if (out.includes(ready)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited ${code}: ${out}`));
    });
  });
}

export interface Line {
  /** The device's end. */
  a: string;
  /** The gateway's end. */
  b: string;
  socat: ChildProcess;
}

/** Two pseudo-terminals joined by socat: a serial line, as raw bytes, between `<dir>/<name>-a` and `-b`. */
export async function ptyPair(procs: Procs, dir: string, name: string): Promise<Line> {
  const a = join(dir, `${name}-a`);
  const b = join(dir, `${name}-b`);
  const socat = procs.add(spawn('socat', ['-d', '-d', `pty,raw,echo=0,link=${a}`, `pty,raw,echo=0,link=${b}`], { stdio: ['ignore', 'pipe', 'pipe'] }));
  await watch(socat, `socat for ${name}`, 'starting data transfer loop');
  if (!existsSync(a) || !existsSync(b)) throw new Error(`socat started without ${a} and ${b}`);
  return { a, b, socat };
}

/** The pymodbus RTU device (units 3 and 4) on a line's end, no parity; `tcpPort` adds its TCP check path. */
export async function startDevice(procs: Procs, port: string, opts: { tcpPort?: number; badCrc?: boolean } = {}): Promise<ChildProcess> {
  const args = [DEVICE, port, '--parity', 'N', ...(opts.tcpPort !== undefined ? ['--tcp', `127.0.0.1:${opts.tcpPort}`] : []), ...(opts.badCrc ? ['--bad-crc'] : [])];
  const device = procs.add(spawn(PYTHON, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
  await watch(device, `the RTU device on ${port}`, 'listening');
  return device;
}

export type ClientResult = { registers?: number[]; ok?: boolean; exception?: number; error?: string; ms?: number };

/** The pymodbus client, once: over TCP ["tcp", host, port] or straight on a line ["serial", path, "N"]. */
export function pyClient(via: string[], op: string, unit: number, ...args: number[]): Promise<ClientResult & { code: number }> {
  return new Promise((resolve) => {
    execFile(PYTHON, [CLIENT, ...via, op, String(unit), ...args.map(String)], { timeout: 30000, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1;
      const line = stdout.trim().split('\n').pop() ?? '';
      try {
        resolve({ ...(JSON.parse(line) as ClientResult), code });
      } catch {
        resolve({ error: `no JSON from the client (exit ${code}): ${stdout}${stderr}`, code });
      }
    });
  });
}

/** mbpoll once against 127.0.0.1:port, 0-based references; its exit code and output. */
export function mbpoll(port: number, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile('mbpoll', ['-m', 'tcp', '-1', '-0', '-o', '1', '-p', String(port), ...args], { timeout: 15000, encoding: 'utf8' }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : -1, out: stdout + stderr });
    });
  });
}

/** The "[ref]: value" lines of mbpoll's output. */
export const polled = (out: string): number[] => [...out.matchAll(/^\[\d+\]:\s+(-?\d+)/gm)].map((m) => Number(m[1]));

/**
 * Raw Modbus TCP on one connection: writes the frames at once, and collects the MBAP answers
 * that come within `ms` (stopping early once `want` have come).
 */
export function exchange(port: number, frames: Buffer[], opts: { want: number; ms: number }): Promise<Buffer[]> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1' });
    let buf = Buffer.alloc(0);
    const answers: Buffer[] = [];
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(answers);
    };
    const timer = setTimeout(done, opts.ms);
    socket.on('connect', () => socket.write(Buffer.concat(frames)));
    socket.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 6 && buf.length >= 6 + buf.readUInt16BE(4)) {
        const n = 6 + buf.readUInt16BE(4);
        answers.push(buf.subarray(0, n));
        buf = buf.subarray(n);
      }
      if (answers.length >= opts.want) done();
    });
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** The proxy process, started from dist/ as the agent starts it, and what it sends back. */
export class ProxyWorker {
  readonly messages: FromWorker[] = [];
  private output = '';

  private constructor(readonly child: ChildProcess) {
    child.on('message', (m: FromWorker) => this.messages.push(m));
    child.stdout?.on('data', (d: Buffer) => (this.output += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (this.output += d.toString()));
  }

  static start(procs: Procs): ProxyWorker {
    if (!existsSync(WORKER)) throw new Error(`${WORKER} is missing: run "npm run build" before these tests`);
    return new ProxyWorker(procs.add(fork(WORKER, [], { serialization: 'advanced', silent: true })));
  }

  /** Gives it targets and waits for its answer. */
  async targets(config: ProtocolsConfig, targets: WorkerTarget[]): Promise<Extract<FromWorker, { type: 'ready' }>> {
    const before = this.messages.length;
    const m: ToWorker = { type: 'targets', config: { ...config, listenHost: '127.0.0.1' }, targets };
    this.child.send(m);
    return this.until('ready', () => this.messages.slice(before).find((x): x is Extract<FromWorker, { type: 'ready' }> => x.type === 'ready'));
  }

  alerts(kind: string): Extract<FromWorker, { type: 'alert' }>['alert'][] {
    return this.messages.flatMap((m) => (m.type === 'alert' && m.alert.kind === kind ? [m.alert] : []));
  }

  records(kind: string): Extract<FromWorker, { type: 'record' }>['record'][] {
    return this.messages.flatMap((m) => (m.type === 'record' && m.record.kind === kind ? [m.record] : []));
  }

  /** The latest counters of a serial line (the worker reports them every second). */
  line(serialPort: string): RtuStatus | undefined {
    for (let i = this.messages.length - 1; i >= 0; i--) {
      const m = this.messages[i];
      if (m?.type === 'alive' && m.rtu?.[serialPort] !== undefined) return m.rtu[serialPort];
    }
    return undefined;
  }

  /** The line's counters once they are newer than now (the next alive message). */
  async freshLine(serialPort: string): Promise<RtuStatus> {
    const before = this.messages.length;
    return this.until(`counters of ${serialPort}`, () => {
      const later = this.messages.slice(before).filter((m) => m.type === 'alive');
      return later.length > 0 ? this.line(serialPort) : undefined;
    });
  }

  log(): string {
    return this.output;
  }

  async until<T>(what: string, check: () => T | undefined, ms = 10000): Promise<T> {
    const end = Date.now() + ms;
    for (;;) {
      const v = check();
      if (v !== undefined) return v;
      if (this.child.exitCode !== null) throw new Error(`the proxy process exited ${this.child.exitCode} waiting for ${what}: ${this.output}`);
      if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}; proxy output: ${this.output}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
