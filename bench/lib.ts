// Shared pieces of the benchmarks: the root check, a generated policy model, the naive linear
// rendering that wardgate is compared with, timing and statistics, and cleanup that also runs
// on Ctrl-C. Nothing here is product code.
import { spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { GatewaySchema } from '../agent/config/schema.js';
import type { SourceRef } from '../agent/config/diagnostics.js';
import type { Model, ResolvedDevice, ResolvedEntry } from '../agent/policy/model.js';
import { formatAddress, formatRange, parseIPv4, type Family } from '../agent/policy/net.js';
import { nftAvailable } from '../agent/policy/backend.js';
import { deleteNamespace, removeStaleSites, sh } from '../hardware/netns-site.js';

export const VERSION = 'bench';

// ---------------------------------------------------------------------------------------------
// Can the benchmarks run here?

/** Why the kernel benchmarks cannot run here, or undefined when they can. */
export function rootSkipReason(): string | undefined {
  if (process.platform !== 'linux') return `network namespaces need Linux, this is ${process.platform}`;
  if (process.getuid?.() !== 0) return 'not root: the benchmarks create network namespaces and load nftables rulesets (run with sudo)';
  const nft = nftAvailable();
  if (!nft.ok) return nft.reason ?? 'nft is unavailable';
  const ip = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  if (ip.status !== 0) return `iproute2 cannot list network namespaces: ${(ip.stderr || ip.error?.message || '').trim()}`;
  return undefined;
}

/** A positive number from the environment, or `fallback` when unset. */
export function envNumber(name: string, fallback: number): number {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name}=${text} is not a positive number`);
  return n;
}

export function commandMissing(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' }).status !== 0;
}

// ---------------------------------------------------------------------------------------------
// Namespaces and cleanup

const PREFIX_ROOT = 'wgb';
let nsCount = 0;

/** A short namespace prefix, unique per process; removeStale() recognises it by the pid. */
export function uniquePrefix(): string {
  return `${PREFIX_ROOT}${process.pid}-${nsCount++}`;
}

/** Removes namespaces left by benchmark runs that were killed (their pid is gone). */
export async function removeStale(): Promise<void> {
  await removeStaleSites(PREFIX_ROOT);
}

export async function must(cmd: string, args: string[], input?: string): Promise<string> {
  const r = await sh(cmd, args, { timeoutMs: 120000, ...(input !== undefined ? { input } : {}) });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

type Cleanup = () => Promise<void>;
const cleanups = new Set<Cleanup>();
let signalsHooked = false;

function hookSignals(): void {
  if (signalsHooked) return;
  signalsHooked = true;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      console.error(`\n${sig}: cleaning up (namespaces, processes, temporary directories)`);
      void (async () => {
        for (const c of [...cleanups].reverse()) {
          try {
            await c();
          } catch {
            // best effort: keep removing the others
          }
        }
        process.exit(130);
      })();
    });
  }
}

/**
 * Runs `body` with `resource`, then `release(resource)`: after success, after an exception, and
 * (best effort) on SIGINT/SIGTERM.
 */
export async function withResource<R, T>(acquire: () => Promise<R>, release: (r: R) => Promise<void>, body: (r: R) => Promise<T>): Promise<T> {
  hookSignals();
  const resource = await acquire();
  // Once only: the signal handler and the body's own finally may both get here.
  let released: Promise<void> | undefined;
  const cleanup = () => (released ??= release(resource));
  cleanups.add(cleanup);
  try {
    return await body(resource);
  } finally {
    cleanups.delete(cleanup);
    await cleanup();
  }
}

/** A fresh, empty network namespace, deleted afterwards. */
export function withNetns<T>(body: (ns: string) => Promise<T>): Promise<T> {
  return withResource(
    async () => {
      const ns = `${uniquePrefix()}-apply`;
      await must('ip', ['netns', 'add', ns]);
      return ns;
    },
    deleteNamespace,
    body,
  );
}

// ---------------------------------------------------------------------------------------------
// A generated policy

/** Devices live in 10.20.0.0/16, peers in 10.10.0.0/16 (the hospital side of hardware/netns-site.ts). */
export const TARGET_DEVICE_V4 = '10.20.0.11';
const DEVICE_BASE = parseIPv4('10.20.1.1');
const PEER_BASE = parseIPv4('10.10.1.1');
const PORT_BASE = 20000;

export interface GeneratedPolicy {
  model: Model;
  entries: number;
  /** The last device: its address is TARGET_DEVICE_V4, the one a namespace host can have. */
  target: { device: ResolvedDevice; address: string };
  /** The very last entry of the last device: its peer address and port. */
  last: { peer: string; port: number; entry: ResolvedEntry };
}

const src = (line: number): SourceRef => ({ file: 'bench/generated.yaml', line, col: 1 });

export interface GenerateOptions {
  /**
   * Makes the last device's second-to-last entry UDP, with the peer and port of its last entry
   * (TCP), so that iperf3 -u (TCP control connection, UDP data, same port) is allowed too.
   */
  udpTwin?: boolean;
}

/**
 * `devices` enforce-mode devices with `perDevice` inbound TCP entries each. Every entry has its
 * own peer host and its own port, so no two set elements overlap or merge. The last device has
 * TARGET_DEVICE_V4 (the device host of a namespace site); the others 10.20.1.1 upwards.
 */
export function generatePolicy(devices: number, perDevice = 10, opts: GenerateOptions = {}): GeneratedPolicy {
  if (devices * perDevice > 40000) throw new Error('too many entries for the address and port plan');
  if (opts.udpTwin === true && perDevice < 2) throw new Error('udpTwin needs at least two entries per device');
  const gateway = GatewaySchema.parse({
    apiVersion: 'wardgate/v1',
    kind: 'Gateway',
    site: 'bench',
    gateway: 'gw-1',
    mode: 'router',
    interfaces: { uplink: 'up0', device: 'dev0' },
    deviceSegments: ['10.20.0.0/16'],
    management: { networks: ['10.10.99.0/24'] },
  });
  const list: ResolvedDevice[] = [];
  let k = 0;
  for (let i = 0; i < devices; i++) {
    const id = `dev-${String(i).padStart(5, '0')}`;
    const address = i === devices - 1 ? parseIPv4(TARGET_DEVICE_V4) : DEVICE_BASE + BigInt(i);
    const entries: ResolvedEntry[] = [];
    for (let j = 0; j < perDevice; j++, k++) {
      const peer = PEER_BASE + BigInt(k);
      const port = PORT_BASE + k;
      entries.push({
        id: `${id}/allow[${j}]`,
        src: src(1 + k * 4),
        direction: 'inbound',
        proto: 'tcp',
        ports: [[port, port]],
        peer: formatAddress('ipv4', peer),
        peers: [{ family: 'ipv4', lo: peer, hi: peer }],
      });
    }
    list.push({
      id,
      src: src(1 + i * perDevice * 4),
      class: 'bench-device',
      criticality: 'medium',
      mode: 'enforce',
      failMode: 'closed',
      addresses: { ipv4: address },
      entries,
      probes: [],
      proxies: [],
    });
  }
  const model: Model = {
    gateway,
    devices: list,
    management: [{ family: 'ipv4', lo: parseIPv4('10.10.99.0'), hi: parseIPv4('10.10.99.255') }],
    segments: [{ family: 'ipv4', lo: parseIPv4('10.20.0.0'), hi: parseIPv4('10.20.255.255') }],
    hash: `bench-${devices}x${perDevice}`.padEnd(64, '0'),
    warnings: [],
  };
  const device = list[list.length - 1] as ResolvedDevice;
  const entry = device.entries[device.entries.length - 1] as ResolvedEntry;
  if (opts.udpTwin === true) {
    const i = device.entries.length - 2;
    const twin = device.entries[i] as ResolvedEntry;
    device.entries[i] = { ...entry, id: twin.id, src: twin.src, proto: 'udp' };
  }
  return {
    model,
    entries: k,
    target: { device, address: TARGET_DEVICE_V4 },
    last: { peer: entry.peer, port: (entry.ports[0] as readonly [number, number])[0], entry },
  };
}

// ---------------------------------------------------------------------------------------------
// The baseline: a naive linear rendering of the same model

export const LINEAR_TABLE = 'wardlinear';
const IP = { ipv4: 'ip', ipv6: 'ip6' } as const;
const ECHO = { ipv4: 'icmp type echo-request', ipv6: 'icmpv6 type echo-request' } as const;

export interface LinearOptions {
  /**
   * Where `ct state established,related accept` goes: 'first' (as anyone would write it, and
   * as wardgate does) or 'last', just before the drop, so every packet walks the entry rules.
   */
  fastPath: 'first' | 'last';
}

/**
 * One rule per (entry, peer range, port range) in a single forward chain, in model order, then
 * the established/related accept when `fastPath` is 'last', then one drop. No sets, maps or
 * per-device chains; the same replace-the-table prelude as wardgate's text.
 */
export function renderLinear(model: Model, opts: LinearOptions = { fastPath: 'first' }): string {
  const out: string[] = [
    `table inet ${LINEAR_TABLE}`,
    `delete table inet ${LINEAR_TABLE}`,
    `table inet ${LINEAR_TABLE} {`,
    '\tchain forward {',
    '\t\ttype filter hook forward priority filter; policy accept;',
  ];
  const fast = '\t\tct state established,related accept';
  if (opts.fastPath === 'first') out.push(fast);
  for (const dev of model.devices) {
    for (const family of ['ipv4', 'ipv6'] as const satisfies Family[]) {
      const addr = dev.addresses[family];
      if (addr === undefined) continue;
      const device = formatAddress(family, addr);
      for (const e of dev.entries) {
        for (const p of e.peers.filter((x) => x.family === family)) {
          const peer = formatRange(p);
          const [saddr, daddr] = e.direction === 'inbound' ? [peer, device] : [device, peer];
          const hosts = `${IP[family]} saddr ${saddr} ${IP[family]} daddr ${daddr}`;
          if (e.proto === 'icmp') out.push(`\t\t${hosts} ${ECHO[family]} accept`);
          else for (const [lo, hi] of e.ports) out.push(`\t\t${hosts} ${e.proto} dport ${lo === hi ? lo : `${lo}-${hi}`} accept`);
        }
      }
    }
  }
  if (opts.fastPath === 'last') out.push(fast);
  out.push('\t\tdrop', '\t}', '}');
  return `${out.join('\n')}\n`;
}

// ---------------------------------------------------------------------------------------------
// Measuring and printing

export async function timed<T>(fn: () => T | Promise<T>): Promise<{ ms: number; value: T }> {
  const t0 = performance.now();
  const value = await fn();
  return { ms: performance.now() - t0, value };
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

export function ms(x: number): string {
  return x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2);
}

export function ratio(x: number): string {
  return `${x.toFixed(2)}x`;
}

/** A plain text table: columns right-aligned except the first. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const fmt = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ');
  return [fmt(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(fmt)].join('\n');
}

// ---------------------------------------------------------------------------------------------
// Processes, ports and temporary directories (outbox and rss)

/** A TCP port free on `host` right now (bound to port 0, then closed). */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  return (await freePorts(1, host))[0] as number;
}

/** `count` different TCP ports free on `host` right now: all bound at once, then closed. */
export async function freePorts(count: number, host = '127.0.0.1'): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: count }, () => {
      const s = createServer();
      return new Promise<Server>((resolve, reject) => {
        s.once('error', reject);
        s.listen(0, host, () => resolve(s));
      });
    }),
  );
  const ports = servers.map((s) => {
    const a = s.address();
    return typeof a === 'object' && a ? a.port : 0;
  });
  await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
  return ports;
}

/** Resolves once something accepts TCP connections on host:port, or rejects after `ms`. */
export async function waitForPort(host: string, port: number, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    const up = await new Promise<boolean>((resolve) => {
      const s = connect({ host, port });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (up) return;
    if (Date.now() > end) throw new Error(`${what} is not listening on ${host}:${port} after ${ms} ms`);
    await sleep(50);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** `p`, or a rejection with `message` after `ms` (the timer is cleared either way). */
export function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(message)), ms)));
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** A fresh directory under the system's temporary directory, removed afterwards. */
export function withTempDir<T>(prefix: string, body: (dir: string) => Promise<T>): Promise<T> {
  return withResource(
    () => Promise.resolve(mkdtempSync(join(tmpdir(), prefix))),
    (dir) => Promise.resolve(rmSync(dir, { recursive: true, force: true })),
    body,
  );
}

/** Kills a child process (SIGTERM, then SIGKILL after `graceMs`) and waits for it to exit. */
export async function stopChild(child: ChildProcess, graceMs = 3000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** A child process, killed afterwards (also on failure and, best effort, on Ctrl-C). */
export function withChild<T>(start: () => ChildProcess | Promise<ChildProcess>, body: (child: ChildProcess) => Promise<T>, graceMs = 3000): Promise<T> {
  return withResource(() => Promise.resolve(start()), (c) => stopChild(c, graceMs), body);
}
