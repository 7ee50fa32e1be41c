// Where a ruleset goes: the kernel through `nft` (optionally inside a named network namespace,
// as the tests and the demo use), or, on a machine without root or nft, a dry-run file.
import { execFile, spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { FAMILY, TABLE, type LineSource } from './compile.js';
import { readIfExists, writeFileAtomic } from '../util/fsx.js';

export interface NftFailure {
  line?: number;
  col?: number;
  message: string;
  /** The configuration the failing line came from, when known. */
  source?: LineSource;
}

/** nft refused a ruleset (or could not run); carries nft's own messages. */
export class NftError extends Error {
  readonly code = 'E_NFT';
  constructor(
    message: string,
    readonly failures: NftFailure[] = [],
  ) {
    super(message);
    this.name = 'NftError';
  }
}

export interface Backend {
  readonly kind: 'nft' | 'dry-run';
  /** One line for people: where rulesets go. */
  readonly description: string;
  /** Checks a ruleset without loading it. Throws NftError. */
  check(text: string): Promise<void>;
  /** Loads a ruleset atomically. Throws NftError and leaves the kernel as it was. */
  load(text: string): Promise<void>;
  /** Our table as the kernel has it, without counter values; undefined when absent. */
  listTable(opts?: { stateful?: boolean }): Promise<string | undefined>;
  /** Our table as `nft -j` lists it (with counters), for health; undefined when absent or dry run. */
  listJson(): Promise<string | undefined>;
  /** Removes our table if present. */
  deleteTable(): Promise<void>;
  /** Loads back, atomically, a table as listTable({ stateful: true }) returned it. */
  loadListing(listing: string): Promise<void>;
  /** Reads a sysctl in the enforcement namespace; undefined when it does not exist. */
  readSysctl(name: string): Promise<string | undefined>;
  writeSysctl(name: string, value: string): Promise<void>;
  /** The addresses of an interface in the enforcement namespace ("ipv4"/"ipv6" and text); undefined: not known (dry run, no such interface). */
  interfaceAddresses(ifname: string): Promise<{ family: 'ipv4' | 'ipv6'; address: string }[] | undefined>;
}

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], input?: string): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { maxBuffer: 256 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as NodeJS.ErrnoException & { code?: unknown }).code === 'number' ? Number(err.code) : 1) : 0;
      resolve({ code, stdout, stderr: err && !stderr ? err.message : stderr });
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

/** Parses nft's "file:LINE:COL-COL: Error: message" lines. */
export function parseNftErrors(stderr: string): NftFailure[] {
  const failures: NftFailure[] = [];
  for (const line of stderr.split('\n')) {
    const m = /^[^:]*:(\d+):(\d+)(?:-\d+)?: Error: (.*)$/.exec(line);
    if (m) failures.push({ line: Number(m[1]), col: Number(m[2]), message: m[3] ?? '' });
  }
  if (failures.length === 0 && stderr.trim() !== '') failures.push({ message: stderr.trim().split('\n')[0] ?? stderr });
  return failures;
}

export class NftBackend implements Backend {
  readonly kind = 'nft' as const;
  readonly description: string;
  constructor(
    readonly netns?: string,
    readonly nftPath = 'nft',
  ) {
    this.description = netns ? `nftables in network namespace "${netns}"` : 'nftables (this host)';
  }

  private nft(args: string[], input?: string): Promise<RunResult> {
    if (this.netns) return run('ip', ['netns', 'exec', this.netns, this.nftPath, ...args], input);
    return run(this.nftPath, args, input);
  }

  private async loadOrCheck(text: string, check: boolean): Promise<void> {
    const r = await this.nft([...(check ? ['-c'] : []), '-f', '-'], text);
    if (r.code !== 0) throw new NftError(`nft ${check ? 'check' : 'load'} failed: ${r.stderr.trim()}`, parseNftErrors(r.stderr));
  }

  check(text: string): Promise<void> {
    return this.loadOrCheck(text, true);
  }

  load(text: string): Promise<void> {
    return this.loadOrCheck(text, false);
  }

  async listTable(opts: { stateful?: boolean } = {}): Promise<string | undefined> {
    const r = await this.nft([...(opts.stateful ? [] : ['-s']), 'list', 'table', FAMILY, TABLE]);
    if (r.code === 0) return r.stdout;
    if (/No such file or directory/.test(r.stderr)) return undefined;
    throw new NftError(`nft list failed: ${r.stderr.trim()}`, parseNftErrors(r.stderr));
  }

  async listJson(): Promise<string | undefined> {
    const r = await this.nft(['-j', 'list', 'table', FAMILY, TABLE]);
    return r.code === 0 ? r.stdout : undefined;
  }

  async deleteTable(): Promise<void> {
    // "add" first so that deleting an absent table is not an error; both in one transaction.
    await this.load(`table ${FAMILY} ${TABLE}\ndelete table ${FAMILY} ${TABLE}\n`);
  }

  loadListing(listing: string): Promise<void> {
    return this.load(`table ${FAMILY} ${TABLE}\ndelete table ${FAMILY} ${TABLE}\n${listing}`);
  }

  private procPath(name: string): string {
    return `/proc/sys/${name.replace(/\./g, '/')}`;
  }

  async readSysctl(name: string): Promise<string | undefined> {
    const path = this.procPath(name);
    const r = this.netns ? await run('ip', ['netns', 'exec', this.netns, 'cat', path]) : await run('cat', [path]);
    return r.code === 0 ? r.stdout.trim() : undefined;
  }

  async writeSysctl(name: string, value: string): Promise<void> {
    const args = ['-q', '-w', `${name}=${value}`];
    const r = this.netns ? await run('ip', ['netns', 'exec', this.netns, 'sysctl', ...args]) : await run('sysctl', args);
    if (r.code !== 0) throw new NftError(`cannot set ${name}=${value}: ${r.stderr.trim()}`);
  }

  async interfaceAddresses(ifname: string): Promise<{ family: 'ipv4' | 'ipv6'; address: string }[] | undefined> {
    const r = await run('ip', [...(this.netns ? ['-n', this.netns] : []), '-j', 'addr', 'show', 'dev', ifname]);
    if (r.code !== 0) return undefined;
    const links = JSON.parse(r.stdout) as { addr_info?: { family: string; local: string; scope: string }[] }[];
    return links.flatMap((l) => l.addr_info ?? []).filter((a) => a.scope !== 'link' && a.scope !== 'host').map((a) => ({ family: a.family === 'inet' ? 'ipv4' : 'ipv6', address: a.local }));
  }
}

/**
 * For machines without root or nft: rulesets are written to a file instead of the kernel, and
 * every message says so. Nothing is enforced.
 */
export class DryRunBackend implements Backend {
  readonly kind = 'dry-run' as const;
  readonly description: string;
  private readonly file: string;
  constructor(readonly dir: string) {
    this.file = join(dir, 'ruleset.nft');
    this.description = `dry run: rulesets are written to ${this.file}, nothing is enforced`;
  }

  async check(text: string): Promise<void> {
    if (!text.includes(`table ${FAMILY} ${TABLE} {`)) throw new NftError(`dry run: not a ruleset for table ${FAMILY} ${TABLE}`);
    await Promise.resolve();
  }

  async load(text: string): Promise<void> {
    await this.check(text);
    mkdirSync(this.dir, { recursive: true });
    writeFileAtomic(this.file, text);
  }

  async listTable(): Promise<string | undefined> {
    const text = readIfExists(this.file);
    return Promise.resolve(text === undefined || text.trim() === '' ? undefined : text);
  }

  listJson(): Promise<string | undefined> {
    return Promise.resolve(undefined);
  }

  async deleteTable(): Promise<void> {
    writeFileAtomic(this.file, '');
    await Promise.resolve();
  }

  loadListing(listing: string): Promise<void> {
    return this.load(listing);
  }

  async readSysctl(): Promise<string | undefined> {
    return Promise.resolve('1');
  }

  async writeSysctl(): Promise<void> {
    await Promise.resolve();
  }

  interfaceAddresses(): Promise<undefined> {
    return Promise.resolve(undefined);
  }
}

/** True when this process can drive nftables: root (or CAP_NET_ADMIN) and an nft binary. */
export function nftAvailable(nftPath = 'nft'): { ok: boolean; reason?: string } {
  const which = spawnSync('sh', ['-c', `command -v ${nftPath}`], { encoding: 'utf8' });
  if (which.status !== 0) return { ok: false, reason: 'nft is not installed (apt-get install nftables)' };
  const probe = spawnSync(nftPath, ['list', 'tables'], { encoding: 'utf8' });
  if (probe.status !== 0) return { ok: false, reason: `nft cannot reach the kernel: ${(probe.stderr || '').trim() || 'permission denied (run as root or with CAP_NET_ADMIN)'}` };
  return { ok: true };
}
