// A closed site of network namespaces: one gateway namespace and one namespace per host, each
// host joined to the gateway by a veth pair. Nothing is linked to the caller's namespace. Used
// by the integration tests and by `wardgate demo` when it runs as root.
//
// bridge mode: every host port is on bridge br0 in the gateway, hosts reach each other on-link
//              (the device and the hospital share one segment, as with a bump in the wire).
// router mode: hospital hosts sit on 10.10.0.0/16 and fd00:10::/48 behind the gateway's up0,
//              devices on 10.20.0.0/24 and fd00:20::/64 behind its dev0, and the gateway routes.
import { execFile, spawn, type ChildProcess } from 'node:child_process';

export interface SiteHost {
  name: string;
  side: 'hospital' | 'device';
  ipv4: string[];
  ipv6?: string[];
}

export interface SiteOptions {
  /** Short, unique prefix for namespace names. */
  prefix: string;
  mode: 'bridge' | 'router';
  hosts: SiteHost[];
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function sh(cmd: string, args: string[], opts: { timeoutMs?: number; input?: string } = {}): Promise<ExecResult> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { encoding: 'utf8', timeout: opts.timeoutMs ?? 30000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await sh(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** Subnets used by router mode; the gateway's own addresses on them. */
export const ROUTER = {
  hospital: { v4: '10.10.0.0/16', gw4: '10.10.255.254', v6: 'fd00:10::/48', gw6: 'fd00:10::fffe' },
  device: { v4: '10.20.0.0/24', gw4: '10.20.0.254', v6: 'fd00:20::/64', gw6: 'fd00:20::fffe' },
} as const;

export class NetnsSite {
  readonly gw: string;
  private readonly children = new Set<ChildProcess>();
  private constructor(
    readonly opts: SiteOptions,
    readonly namespaces: string[],
  ) {
    this.gw = `${opts.prefix}-gw`;
  }

  ns(host: string): string {
    return `${this.opts.prefix}-${host}`;
  }

  static async create(opts: SiteOptions): Promise<NetnsSite> {
    const gw = `${opts.prefix}-gw`;
    const site = new NetnsSite(opts, [gw, ...opts.hosts.map((h) => `${opts.prefix}-${h.name}`)]);
    try {
      await site.build();
    } catch (err) {
      await site.destroy();
      throw err;
    }
    return site;
  }

  private async build(): Promise<void> {
    const { mode, hosts } = this.opts;
    for (const ns of this.namespaces) await must('ip', ['netns', 'add', ns]);
    for (const ns of this.namespaces) await must('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    const gw = this.gw;
    if (mode === 'bridge') {
      await must('ip', ['-n', gw, 'link', 'add', 'br0', 'type', 'bridge']);
      await must('ip', ['-n', gw, 'link', 'set', 'br0', 'up']);
    } else {
      await must('ip', ['netns', 'exec', gw, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']);
      for (const [ifname, side] of [['up0', ROUTER.hospital], ['dev0', ROUTER.device]] as const) {
        await must('ip', ['-n', gw, 'link', 'add', ifname, 'type', 'bridge']);
        await must('ip', ['-n', gw, 'addr', 'add', `${side.gw4}/${side.v4.split('/')[1] ?? ''}`, 'dev', ifname]);
        await must('ip', ['-n', gw, 'addr', 'add', `${side.gw6}/${side.v6.split('/')[1] ?? ''}`, 'dev', ifname, 'nodad']);
        await must('ip', ['-n', gw, 'link', 'set', ifname, 'up']);
      }
    }
    for (const [i, h] of hosts.entries()) {
      const ns = this.ns(h.name);
      const port = `p${i}`;
      await must('ip', ['-n', gw, 'link', 'add', port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      const master = mode === 'bridge' ? 'br0' : h.side === 'hospital' ? 'up0' : 'dev0';
      await must('ip', ['-n', gw, 'link', 'set', port, 'master', master]);
      await must('ip', ['-n', gw, 'link', 'set', port, 'up']);
      await must('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
      const side = h.side === 'hospital' ? ROUTER.hospital : ROUTER.device;
      const other = h.side === 'hospital' ? ROUTER.device : ROUTER.hospital;
      for (const a of h.ipv4) {
        const len = mode === 'router' ? side.v4.split('/')[1] : '32';
        await must('ip', ['-n', ns, 'addr', 'add', `${a}/${len}`, 'dev', 'eth0']);
      }
      for (const a of h.ipv6 ?? []) {
        const len = mode === 'router' ? side.v6.split('/')[1] : '128';
        await must('ip', ['-n', ns, 'addr', 'add', `${a}/${len}`, 'dev', 'eth0', 'nodad']);
      }
      if (mode === 'bridge') {
        // One L2 segment: every other host is on-link.
        await must('ip', ['-n', ns, 'route', 'add', '10.0.0.0/8', 'dev', 'eth0']);
        await must('ip', ['-n', ns, '-6', 'route', 'add', 'fd00::/8', 'dev', 'eth0']);
      } else {
        await must('ip', ['-n', ns, 'route', 'add', other.v4, 'via', side.gw4]);
        await must('ip', ['-n', ns, '-6', 'route', 'add', other.v6, 'via', side.gw6]);
      }
    }
  }

  /** Runs a command inside a host's (or, with "gw", the gateway's) namespace. */
  exec(host: string, argv: string[], opts: { timeoutMs?: number; input?: string } = {}): Promise<ExecResult> {
    const ns = host === 'gw' ? this.gw : this.ns(host);
    return sh('ip', ['netns', 'exec', ns, ...argv], opts);
  }

  /** Starts a long-running command in a namespace; it is killed by destroy(). */
  spawn(host: string, argv: string[]): ChildProcess {
    const ns = host === 'gw' ? this.gw : this.ns(host);
    const child = spawn('ip', ['netns', 'exec', ns, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.children.add(child);
    child.on('exit', () => this.children.delete(child));
    return child;
  }

  async destroy(): Promise<void> {
    for (const c of this.children) c.kill('SIGKILL');
    for (const ns of this.namespaces) await deleteNamespace(ns);
  }
}

/** Kills what still runs in a namespace, then deletes it. */
export async function deleteNamespace(ns: string): Promise<void> {
  const pids = await sh('ip', ['netns', 'pids', ns]);
  for (const pid of pids.stdout.split('\n').filter(Boolean)) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      // gone already
    }
  }
  await sh('ip', ['netns', 'del', ns]);
}

/** Removes namespaces left by runs whose process died (kill -9 of a test runner). */
export async function removeStaleSites(prefixRoot: string): Promise<void> {
  const r = await sh('ip', ['netns', 'list']);
  for (const line of r.stdout.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const m = new RegExp(`^${prefixRoot}(\\d+)-`).exec(name);
    if (!m) continue;
    try {
      process.kill(Number(m[1]), 0);
    } catch {
      await sh('ip', ['netns', 'del', name]);
    }
  }
}
