// A sandbox in which an installer may run as on a real box, as root, without touching this
// machine: a private mount namespace with overlays on the directories it writes (/etc, /opt,
// /usr/bin, /var/lib: useradd really edits /etc/passwd, but the overlay's), and a private
// network namespace (modprobe aside, sysctl and nft change only the sandbox's). Both namespaces
// are pinned to files, so each command enters them with nsenter and the test can check, between
// commands, what happened inside. close() kills what is left running inside, unmounts, removes.
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { mkdirSync, readdirSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface RunResult {
  code: number | null;
  out: string;
  err: string;
}

export function run(cmd: string, args: string[], opts: SpawnSyncOptions = {}): RunResult {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 120_000, maxBuffer: 256 * 1024 * 1024, ...opts });
  return { code: r.status, out: String(r.stdout ?? ''), err: `${String(r.stderr ?? '')}${r.error ? r.error.message : ''}` };
}

function must(cmd: string, args: string[]): void {
  const r = run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.err.trim()}`);
}

/** Why the sandbox cannot be made here, or undefined. */
export const sandboxSkipReason: string | undefined = (() => {
  if (process.platform !== 'linux') return `namespaces need Linux, this is ${process.platform}`;
  if (process.getuid?.() !== 0) return 'not root: the sandbox needs mount and network namespaces and overlayfs';
  for (const tool of ['unshare', 'nsenter', 'setpriv', 'useradd']) {
    if (run('sh', ['-c', `command -v ${tool}`]).code !== 0) return `${tool} is not installed`;
  }
  const probe = run('unshare', ['--mount', '--propagation', 'private', '--net', 'true']);
  if (probe.code !== 0) return `unshare --mount --net failed: ${probe.err.trim()}`;
  return undefined;
})();

export class Sandbox {
  private readonly ns: string;
  private readonly mounted: string[] = [];
  private netIno = '';

  private constructor(readonly work: string) {
    this.ns = join(work, 'ns');
  }

  /** overlays: absolute directories that get a writable overlay (their content stays visible). */
  static open(work: string, overlays: readonly string[]): Sandbox {
    const s = new Sandbox(work);
    try {
      s.setup(overlays);
    } catch (err) {
      s.close();
      throw err;
    }
    return s;
  }

  private setup(overlays: readonly string[]): void {
    mkdirSync(this.ns, { recursive: true });
    // unshare can pin a namespace only on a file below a private mount.
    must('mount', ['--bind', this.ns, this.ns]);
    this.mounted.push(this.ns);
    must('mount', ['--make-private', this.ns]);
    for (const f of ['mnt', 'net']) writeFileSync(join(this.ns, f), '');
    must('unshare', [`--mount=${join(this.ns, 'mnt')}`, `--net=${join(this.ns, 'net')}`, '--propagation', 'private', 'true']);
    this.mounted.unshift(join(this.ns, 'mnt'), join(this.ns, 'net'));
    this.netIno = String(statSync(join(this.ns, 'net')).ino);
    for (const dir of overlays) {
      const name = dir.replace(/\//g, '_');
      const upper = join(this.work, 'overlay', name, 'upper');
      const scratch = join(this.work, 'overlay', name, 'work');
      mkdirSync(upper, { recursive: true });
      mkdirSync(scratch, { recursive: true });
      const r = this.run('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${dir},upperdir=${upper},workdir=${scratch}`, dir]);
      if (r.code !== 0) throw new Error(`overlay on ${dir}: ${r.err.trim()}`);
    }
    const lo = this.run('ip', ['link', 'set', 'lo', 'up']);
    if (lo.code !== 0) throw new Error(`ip link set lo up: ${lo.err.trim()}`);
  }

  /** Runs a command inside both namespaces. */
  run(cmd: string, args: string[], opts: SpawnSyncOptions = {}): RunResult {
    return run('nsenter', [`--mount=${join(this.ns, 'mnt')}`, `--net=${join(this.ns, 'net')}`, '--', cmd, ...args], opts);
  }

  sh(script: string, opts: SpawnSyncOptions = {}): RunResult {
    return this.run('sh', ['-c', script], opts);
  }

  /** Processes whose network namespace is the sandbox's (a detached commit-confirm watcher). */
  private inside(): number[] {
    if (this.netIno === '') return [];
    const pids: number[] = [];
    for (const d of readdirSync('/proc')) {
      if (!/^\d+$/.test(d)) continue;
      try {
        if (readlinkSync(`/proc/${d}/ns/net`) === `net:[${this.netIno}]`) pids.push(Number(d));
      } catch {
        // gone, or not ours to look at
      }
    }
    return pids;
  }

  close(): void {
    for (const pid of this.inside()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    for (const m of this.mounted.splice(0)) run('umount', ['-l', m]);
    rmSync(this.work, { recursive: true, force: true });
  }
}
