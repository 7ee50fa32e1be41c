// Helpers for the backup drivers' tests: real peer processes (pymodbus, in.tftpd) started with a
// bounded wait for their readiness line and ended by pid, and temp directories removed after.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const PYTHON = '/usr/bin/python3';
export const FIXTURES = join(import.meta.dirname, '..', 'fixtures');

/** Why a tool-backed test cannot run, or undefined when it can. */
export function missing(what: string, argv: string[]): string | undefined {
  const r = spawnSync(argv[0] ?? '', argv.slice(1), { encoding: 'utf8', timeout: 10000 });
  if (r.error !== undefined) return `${what} is not installed (${r.error.message})`;
  if (r.status !== 0) return `${what} is not usable: ${(r.stderr || r.stdout).trim()}`;
  return undefined;
}

export interface Proc {
  child: ChildProcess;
  output(): string;
  stop(): Promise<void>;
}

/** Starts a process and waits (bounded) until `ready` matches its output; ends it on failure. */
export async function startProcess(argv: string[], ready: RegExp, timeoutMs = 10000): Promise<Proc & { match: RegExpExecArray }> {
  const child = spawn(argv[0] ?? '', argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  child.on('error', (e) => (out += `\n[spawn error] ${e.message}`));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(t);
  };
  const end = Date.now() + timeoutMs;
  for (;;) {
    const m = ready.exec(out);
    if (m) return { child, output: () => out, stop, match: m };
    if (child.exitCode !== null || Date.now() > end) {
      await stop();
      throw new Error(`${argv.join(' ')} did not get ready: ${out.trim() || 'no output'}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

export function tempDir(prefix: string): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** A signal that never fires, for calls that must finish on their own. */
export const never = new AbortController().signal;
