// Shared helpers for the integration tests: a closed network-namespace site (hardware/netns-site.ts),
// a temporary configuration directory with its own state directory, the built CLI run against the
// site's gateway namespace (--netns), real TCP/UDP/ICMP peers (hardware/netcheck.mjs, ping), and
// the kernel's counters read back from `nft -j`.
//
// Every process a test starts (CLI runs, agents, the commit-confirm watchers that `policy apply`
// leaves behind, the peers inside the namespaces) is killed by Lab.destroy(), and every namespace
// is removed. Nothing outside the namespaces is addressed or changed.
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NetnsSite, removeStaleSites, ROUTER, sh, type SiteHost } from '../../hardware/netns-site.js';
import type { MqttClient } from 'mqtt';
import type { PendingInfo } from '../../agent/policy/apply.js';
import { nftAvailable } from '../../agent/policy/backend.js';

export const ROOT = join(import.meta.dirname, '..', '..');
export const CLI = join(ROOT, 'bin', 'wardgate.js');
export const NETCHECK = join(ROOT, 'hardware', 'netcheck.mjs');
const PREFIX_ROOT = 'wgt';

/** Why the kernel tests cannot run here, or undefined when they can. */
export const skipReason: string | undefined = (() => {
  if (process.platform !== 'linux') return `network namespaces need Linux, this is ${process.platform}`;
  if (process.getuid?.() !== 0) return 'not root: network namespaces and nftables need root (run the suite with sudo)';
  const nft = nftAvailable();
  if (!nft.ok) return nft.reason ?? 'nft is unavailable';
  const ip = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  if (ip.status !== 0) return `iproute2 cannot list network namespaces: ${(ip.stderr || ip.error?.message || '').trim()}`;
  const ping = spawnSync('sh', ['-c', 'command -v ping'], { encoding: 'utf8' });
  if (ping.status !== 0) return 'ping is not installed';
  return undefined;
})();
export const canRoot = skipReason === undefined;

/**
 * Bridge mode needs br_netfilter, with its sysctls in each network namespace (they are per
 * namespace since Linux 5.3): they exist once the module is loaded. Looked at from a fresh
 * namespace when unshare(1) is there, else from this one.
 */
export const bridgeSkipReason: string | undefined = (() => {
  if (skipReason !== undefined) return skipReason;
  const sysctl = '/proc/sys/net/bridge/bridge-nf-call-iptables';
  if (!existsSync(sysctl)) return 'br_netfilter is not loaded (modprobe br_netfilter): bridged traffic cannot reach nftables';
  const fresh = spawnSync('unshare', ['--net', 'cat', sysctl], { encoding: 'utf8' });
  if (fresh.error === undefined && fresh.status !== 0) return `br_netfilter's sysctls are not per network namespace on this kernel: ${fresh.stderr.trim()}`;
  return undefined;
})();

/** Says once per test file why its kernel tests are skipped. */
export function warnSkip(suite: string, reason: string | undefined): void {
  if (reason !== undefined) console.warn(`[${suite}] skipped: ${reason}`);
}

let siteCount = 0;
/** A short prefix, unique per process and site; removeStaleSites() recognises it by the pid. */
export function uniquePrefix(): string {
  return `${PREFIX_ROOT}${process.pid}-${siteCount++}`;
}

/** Namespaces left behind by earlier runs that were killed (their pid is gone). */
export async function removeStale(): Promise<void> {
  await removeStaleSites(PREFIX_ROOT);
}

export function assertBuilt(): void {
  if (!existsSync(join(ROOT, 'dist', 'agent', 'cli', 'main.js'))) {
    throw new Error('dist/ is missing: run "npx tsc -p tsconfig.json" before the integration tests');
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `check` until it returns a value other than undefined/false; throws after `ms`. */
export async function until<T>(what: string, check: () => Promise<T | undefined | false> | T | undefined | false, ms = 10000, every = 100): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(every);
  }
}

/** True when the process is gone or a zombie (detached watchers are reaped by whoever adopts them). */
export function processGone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  } catch {
    return '';
  }
}

// ---------------------------------------------------------------------------------------------
// Configuration used by the tests. Hospital hosts live in 10.10.0.0/16 and fd00:10::/48, devices
// in 10.20.0.0/24 and fd00:20::/64: the subnets of ROUTER in hardware/netns-site.ts, which router
// mode needs (a host's gateway must be on-link); bridge mode uses the same addresses on one segment.

const ADDRESSES = {
  pacs: ['hospital', '10.10.1.10', 'fd00:10::1:10'],
  stranger: ['hospital', '10.10.9.66', 'fd00:10::9:66'],
  biomed: ['hospital', '10.10.5.3', 'fd00:10::5:3'],
  mgmt: ['hospital', '10.10.99.5', 'fd00:10::99:5'],
  ct: ['device', '10.20.0.11', 'fd00:20::11'],
  pump: ['device', '10.20.0.21', 'fd00:20::21'],
  monitor: ['device', '10.20.0.41', 'fd00:20::41'],
} as const;
export type HostName = keyof typeof ADDRESSES;

export const v4 = (h: HostName): string => ADDRESSES[h][1];
export const v6 = (h: HostName): string => ADDRESSES[h][2];
export const siteHost = (h: HostName): SiteHost => ({ name: h, side: ADDRESSES[h][0], ipv4: [v4(h)], ipv6: [v6(h)] });

/** The gateway's own addresses in router mode, on the hospital side. */
export const GW4 = ROUTER.hospital.gw4;
export const GW6 = ROUTER.hospital.gw6;

export function gatewayYaml(opts: { mode: 'bridge' | 'router'; stateDir: string }): string {
  const interfaces = opts.mode === 'bridge' ? '{ uplink: p0, device: p1, bridge: br0 }' : '{ uplink: up0, device: dev0 }';
  return `apiVersion: wardgate/v1
kind: Gateway
site: itest
gateway: gw-1
mode: ${opts.mode}
interfaces: ${interfaces}
deviceSegments: [10.20.0.0/24, "fd00:20::/64"]
management:
  networks: [10.10.99.0/24, "fd00:10::99:0/112"]
gatewayInput: drop
stateDir: ${opts.stateDir}
policies: [rules/*.yaml]
commitConfirm: { timeoutSeconds: 120 }
`;
}

export const GROUPS = `apiVersion: wardgate/v1
kind: Policy
groups:
  pacs:
    members: [10.10.1.10, "fd00:10::1:10"]
  biomed:
    members: [10.10.5.0/28, "fd00:10::5:0/112"]
`;

/** ct-01: enforce, failMode closed (criticality high). */
export const CT = `apiVersion: wardgate/v1
kind: Policy
devices:
  - id: ct-01
    class: ct-modality
    criticality: high
    mode: enforce
    ipv4: 10.20.0.11
    ipv6: "fd00:20::11"
    allow:
      - { peer: pacs, direction: inbound, proto: tcp, ports: [104] }
      - { peer: pacs, direction: inbound, proto: udp, ports: [4242] }
      - { peer: biomed, direction: inbound, proto: icmp }
      - { peer: pacs, direction: outbound, proto: tcp, ports: [11112] }
`;

/** pump-01: monitor mode, so what its allow-list does not cover is logged and passed. */
export const PUMP = `apiVersion: wardgate/v1
kind: Policy
devices:
  - id: pump-01
    class: infusion-pump-server
    criticality: medium
    mode: monitor
    ipv4: 10.20.0.21
    ipv6: "fd00:20::21"
    allow:
      - { peer: pacs, direction: inbound, proto: tcp, ports: [443] }
`;

/** monitor-gw-01: enforce, life-critical, so failMode open. */
export const MONITOR = `apiVersion: wardgate/v1
kind: Policy
devices:
  - id: monitor-gw-01
    class: hl7-monitor-gateway
    criticality: life-critical
    mode: enforce
    ipv4: 10.20.0.41
    ipv6: "fd00:20::41"
    allow:
      - { peer: pacs, direction: inbound, proto: tcp, ports: [2576] }
`;

export const POLICIES = { '00-groups.yaml': GROUPS, 'ct.yaml': CT, 'pump.yaml': PUMP, 'monitor.yaml': MONITOR };

// ---------------------------------------------------------------------------------------------
// nft -j

interface NftCounter {
  packets: number;
  bytes: number;
}
interface NftElem {
  elem?: { val: unknown; comment?: string; counter?: NftCounter };
}
interface NftObject {
  /** Elements without a counter or comment are bare values; ours all have both. */
  set?: { name: string; elem?: unknown[] };
  rule?: { chain: string; comment?: string; expr: Record<string, unknown>[] };
}
export interface NftJson {
  nftables: NftObject[];
}

function packetsOf(rule: NonNullable<NftObject['rule']>): number {
  const counter = rule.expr.find((e) => 'counter' in e)?.counter as NftCounter | undefined;
  if (!counter) throw new Error(`rule "${rule.comment ?? ''}" in chain ${rule.chain} has no counter`);
  return counter.packets;
}

/** Packets counted by all the rules of `chain` whose comment contains `comment`. */
export function sumRulePackets(j: NftJson, chain: string, comment: string): number {
  const rules = j.nftables.flatMap((o) => (o.rule?.chain === chain && (o.rule.comment ?? '').includes(comment) ? [o.rule] : []));
  if (rules.length === 0) throw new Error(`no rule in chain ${chain} with comment "${comment}"`);
  return rules.reduce((n, r) => n + packetsOf(r), 0);
}

/** Packets counted by the rule of `chain` whose comment is `comment`, or else the one that contains it. */
export function rulePackets(j: NftJson, chain: string, comment: string): number {
  const inChain = j.nftables.flatMap((o) => (o.rule?.chain === chain ? [o.rule] : []));
  const exact = inChain.filter((r) => r.comment === comment);
  const rules = exact.length > 0 ? exact : inChain.filter((r) => (r.comment ?? '').includes(comment));
  const [rule, ...more] = rules;
  if (!rule || more.length > 0) throw new Error(`expected one rule in chain ${chain} with comment "${comment}", found ${rules.length}`);
  return packetsOf(rule);
}

/** Packets counted by the elements of set `set` that belong to allow entry `entry` ("ct-01/allow[0]"). */
export function elementPackets(j: NftJson, set: string, entry: string): number {
  const s = j.nftables.find((o) => o.set?.name === set)?.set;
  if (!s) throw new Error(`no set ${set} in the table`);
  const elems = (s.elem ?? []).flatMap((e) => {
    const el = (e as NftElem).elem;
    return el && (el.comment ?? '').split(', ').includes(entry) ? [el] : [];
  });
  if (elems.length === 0) throw new Error(`set ${set} has no element of ${entry}`);
  return elems.reduce((n, el) => n + (el.counter?.packets ?? 0), 0);
}

// ---------------------------------------------------------------------------------------------

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface LabOptions {
  mode: 'bridge' | 'router';
  hosts: HostName[];
  /** File name -> text, under rules/; POLICIES when not given. */
  policies?: Record<string, string>;
}

/** A namespace site plus a configuration directory, and everything started against them. */
export class Lab {
  readonly gateway: string;
  readonly stateDir: string;
  private readonly agents = new Set<ChildProcess>();
  private readonly watchers = new Set<number>();

  private constructor(
    readonly site: NetnsSite,
    readonly dir: string,
  ) {
    this.gateway = join(dir, 'gateway.yaml');
    this.stateDir = join(dir, 'state');
  }

  static async create(opts: LabOptions): Promise<Lab> {
    assertBuilt();
    const dir = mkdtempSync(join(tmpdir(), 'wg-it-'));
    let site: NetnsSite;
    try {
      site = await NetnsSite.create({ prefix: uniquePrefix(), mode: opts.mode, hosts: opts.hosts.map(siteHost) });
    } catch (err) {
      rmSync(dir, { recursive: true, force: true });
      throw err;
    }
    const lab = new Lab(site, dir);
    try {
      writeFileSync(lab.gateway, gatewayYaml({ mode: opts.mode, stateDir: lab.stateDir }));
      mkdirSync(join(dir, 'rules'));
      for (const [name, text] of Object.entries(opts.policies ?? POLICIES)) lab.writePolicy(name, text);
      if (opts.hosts.length > 0) await lab.settle();
    } catch (err) {
      await lab.destroy();
      throw err;
    }
    return lab;
  }

  /**
   * Waits for IPv6 duplicate address detection to finish in every namespace. Until then the
   * gateway's link-local addresses are tentative, and a router that cannot yet send neighbour
   * solicitations loses the first IPv6 packets it forwards (about two seconds after creation).
   */
  async settle(ms = 10000): Promise<void> {
    await until(
      'IPv6 duplicate address detection in the site',
      async () => {
        for (const ns of this.site.namespaces) {
          const r = await sh('ip', ['-n', ns, '-6', 'addr', 'show', 'tentative']);
          if (r.code !== 0 || r.stdout.trim() !== '') return false;
        }
        return true;
      },
      ms,
    );
  }

  writePolicy(name: string, text: string): void {
    writeFileSync(join(this.dir, 'rules', name), text);
  }

  ruleset(name: string): string {
    return join(this.stateDir, 'ruleset', name);
  }

  pending(): PendingInfo | undefined {
    const p = this.ruleset('pending.json');
    return existsSync(p) ? (JSON.parse(readFileSync(p, 'utf8')) as PendingInfo) : undefined;
  }

  private rememberWatcher(): void {
    const pid = this.pending()?.watcherPid;
    if (pid !== undefined) this.watchers.add(pid);
  }

  private childEnv(): NodeJS.ProcessEnv {
    const env = { ...process.env };
    for (const k of Object.keys(env)) if (k.startsWith('WARDGATE_')) delete env[k];
    return env;
  }

  private cliArgs(args: string[]): string[] {
    return [CLI, ...args, '--gateway', this.gateway, '--netns', this.site.gw];
  }

  /** Runs the built CLI against this lab's gateway file and gateway namespace. */
  wardgate(...args: string[]): Promise<CliResult> {
    return new Promise((resolve) => {
      execFile(process.execPath, this.cliArgs(args), { encoding: 'utf8', timeout: 30000, env: this.childEnv() }, (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
        this.rememberWatcher();
        resolve({ code, stdout, stderr });
      });
    });
  }

  /** `policy apply`, failing the test with the CLI's own words when it does not succeed. */
  async apply(timeoutSeconds: number): Promise<PendingInfo> {
    const r = await this.wardgate('policy', 'apply', '--timeout', String(timeoutSeconds));
    if (r.code !== 0) throw new Error(`policy apply exited ${r.code}: ${r.stderr}${r.stdout}`);
    const pending = this.pending();
    if (!pending) throw new Error('policy apply succeeded but left no pending.json');
    return pending;
  }

  async confirm(): Promise<void> {
    const r = await this.wardgate('policy', 'confirm');
    if (r.code !== 0) throw new Error(`policy confirm exited ${r.code}: ${r.stderr}${r.stdout}`);
  }

  /** Applies and confirms the lab's policies. */
  async commit(): Promise<void> {
    await this.apply(30);
    await this.confirm();
  }

  /** Starts `wardgate run`; it is stopped by destroy() if the test does not stop it. */
  startAgent(): { child: ChildProcess; output: () => string; exited: Promise<number | null> } {
    const child = spawn(process.execPath, this.cliArgs(['run']), { stdio: ['ignore', 'pipe', 'pipe'], env: this.childEnv() });
    this.agents.add(child);
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const exited = new Promise<number | null>((resolve) => {
      child.on('exit', (code) => {
        this.agents.delete(child);
        resolve(code);
      });
    });
    return { child, output: () => output, exited };
  }

  // --- the kernel -----------------------------------------------------------------------------

  /** `nft list table inet wardgate` in the gateway namespace (-s: without counters); undefined when absent. */
  async listTable(opts: { stateless?: boolean } = {}): Promise<string | undefined> {
    const r = await this.site.exec('gw', ['nft', ...(opts.stateless ? ['-s'] : []), 'list', 'table', 'inet', 'wardgate']);
    if (r.code === 0) return r.stdout;
    if (/No such file or directory/.test(r.stderr)) return undefined;
    throw new Error(`nft list table failed (${r.code}): ${r.stderr}`);
  }

  async nftJson(): Promise<NftJson> {
    const r = await this.site.exec('gw', ['nft', '-j', 'list', 'table', 'inet', 'wardgate']);
    if (r.code !== 0) throw new Error(`nft -j list table failed (${r.code}): ${r.stderr}`);
    return JSON.parse(r.stdout) as NftJson;
  }

  async nft(...args: string[]): Promise<void> {
    const r = await this.site.exec('gw', ['nft', ...args]);
    if (r.code !== 0) throw new Error(`nft ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  }

  // --- traffic --------------------------------------------------------------------------------

  /** Echo servers in a host's namespace (or "gw"); resolves once they listen. */
  async listen(host: HostName | 'gw', proto: 'tcp' | 'udp', ports: number[]): Promise<void> {
    const child = this.site.spawn(host, [process.execPath, NETCHECK, 'listen', proto, ...ports.map(String)]);
    let out = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`netcheck listen in ${host} did not start: ${out}`)), 10000);
      const onData = (d: Buffer) => {
        out += d.toString();
        if (out.includes('listening')) {
          clearTimeout(timer);
          resolve();
        }
      };
      child.stdout?.on('data', onData);
      child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
      child.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`netcheck listen in ${host} exited ${code}: ${out}`));
      });
    });
    // netcheck says "listening" as it asks for its sockets; give the binds a moment to finish.
    await sleep(50);
  }

  /**
   * The Modbus TCP device of the protocol tests (hardware/sim/modbus_device.py, pymodbus) on
   * port 502 of a host; resolves once it listens.
   */
  async modbusDevice(host: HostName): Promise<void> {
    const device = this.site.spawn(host, ['/usr/bin/python3', join(ROOT, 'hardware', 'sim', 'modbus_device.py'), v4(host), '502']);
    let out = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the Modbus device in ${host} did not start: ${out}`)), 10000);
      device.stdout?.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('listening')) {
          clearTimeout(timer);
          resolve();
        }
      });
      device.stderr?.on('data', (d: Buffer) => (out += d.toString()));
      device.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`the Modbus device in ${host} exited ${code}: ${out}`));
      });
    });
  }

  /** One mbpoll run in a host's namespace (or "gw"): Modbus TCP, one poll, 1 s timeout, 0-based addresses. */
  async mbpoll(host: HostName | 'gw', args: string[]): Promise<{ code: number; out: string }> {
    const r = await this.site.exec(host, ['mbpoll', '-m', 'tcp', '-1', '-0', '-o', '1', ...args], { timeoutMs: 15000 });
    return { code: r.code, out: r.stdout + r.stderr };
  }

  /**
   * One connection (TCP) or datagram (UDP) from a host to an address, echoed back or not.
   * "timeout" is what a dropped packet looks like; a refusal would mean a missing listener.
   */
  async connect(from: HostName, proto: 'tcp' | 'udp', to: string, port: number, ms = 1000): Promise<{ ok: boolean; why: string }> {
    const r = await this.site.exec(from, [process.execPath, NETCHECK, 'connect', proto, to, String(port), String(ms)], { timeoutMs: ms + 10000 });
    const [verdict, why = r.stderr.trim()] = r.stdout.trim().split(' ');
    return { ok: r.code === 0 && verdict === 'ok', why };
  }

  /** One echo request; true when the reply came back. */
  async ping(from: HostName, to: string, seconds = 1): Promise<boolean> {
    const r = await this.site.exec(from, ['ping', '-n', '-q', '-c', '1', '-W', String(seconds), to], { timeoutMs: seconds * 1000 + 10000 });
    return r.code === 0;
  }

  // --- cleanup --------------------------------------------------------------------------------

  /** Kills every process started for this lab, removes its namespaces and its directory. */
  async destroy(): Promise<void> {
    for (const a of this.agents) a.kill('SIGKILL');
    this.rememberWatcher();
    for (const pid of this.watchers) {
      // Only the watcher of this lab: its command line names this lab's gateway file.
      if (!processGone(pid) && cmdline(pid).includes(this.gateway)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone already
        }
      }
    }
    await this.site.destroy();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** For afterEach/afterAll: destroys every lab in the list, even when one of them fails to. */
export type Agent = ReturnType<Lab['startAgent']>;

/**
 * An MQTT client of the agent's embedded broker on `port`, once it listens. Fails with the
 * agent's output if the agent exits first.
 */
export async function connectToAgent(agent: Agent, port: number, opts: { reconnectPeriod?: number } = {}): Promise<MqttClient> {
  const { default: mqtt } = await import('mqtt');
  return until(
    'the embedded broker',
    async () => {
      if (agent.child.exitCode !== null) throw new Error(`the agent exited: ${agent.output()}`);
      try {
        return await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, { protocolVersion: 4, reconnectPeriod: opts.reconnectPeriod ?? 0, connectTimeout: 2000 });
      } catch {
        return undefined;
      }
    },
    15000,
    250,
  );
}

/** SIGTERM to a running agent, and at most 5 s for it to exit (destroy() kills what is left). */
export async function stopAgent(agent: Agent | undefined): Promise<void> {
  if (!agent || agent.child.exitCode !== null) return;
  agent.child.kill('SIGTERM');
  await Promise.race([agent.exited, sleep(5000)]);
}

/** The command lines of a process's children (the agent's conntrack, tcpdump, ...). */
export function childCommands(pid: number): string[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .flatMap((d) => {
      try {
        const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
        const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
        return ppid === pid ? [`${d} ${readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0').join(' ')}`] : [];
      } catch {
        return [];
      }
    });
}

export async function destroyAll(labs: Lab[]): Promise<void> {
  const errors: unknown[] = [];
  for (const lab of labs.splice(0)) {
    try {
      await lab.destroy();
    } catch (err) {
      errors.push(err);
    }
  }
  if (errors.length > 0) throw errors[0];
}
