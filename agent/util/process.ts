// Long-running tools the agent reads from (conntrack -E, tcpdump): spawned, optionally inside a
// network namespace, with their exit tracked and a bounded tail of stderr kept for the error.
import { spawn, type ChildProcess, type ChildProcessByStdio } from 'node:child_process';
import type { Readable } from 'node:stream';

export const inNetns = (netns: string | undefined, argv: string[]): string[] => (netns ? ['ip', 'netns', 'exec', netns, ...argv] : argv);

/** Ends a child process: `signal` (SIGTERM), then SIGKILL after `ms`; resolves once it has exited. */
export async function stopProcess(child: ChildProcess, exited: Promise<unknown>, ms: number, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), ms);
  await exited;
  clearTimeout(timer);
}

export class ToolProcess {
  readonly child: ChildProcessByStdio<null, Readable, Readable>;
  /**
   * Resolves with the exit code (-1 when it could not be spawned), once the process has exited
   * and its output is closed: every line it wrote has been delivered by then.
   */
  readonly exited: Promise<number | null>;
  /** Set once the process has exited. */
  exitCode: number | null | undefined;
  /** The first 4 KiB of stderr. */
  stderr = '';
  private stopping = false;
  private lastOutput = 0;

  constructor(readonly argv: string[]) {
    this.child = spawn(argv[0] ?? '', argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = new Promise((resolve) => {
      this.child.on('error', () => resolve((this.exitCode = -1)));
      this.child.on('close', (code) => resolve((this.exitCode = code)));
    });
    this.child.stderr.on('data', (d: Buffer) => {
      if (this.stderr.length < 4096) this.stderr += d.toString();
    });
    this.child.stdout.on('data', () => (this.lastOutput = Date.now()));
  }

  /** An error naming the command, why it failed, and what it said. */
  failure(why: string): Error {
    return new Error(`${this.argv.join(' ')} ${why}: ${this.stderr.trim() || 'no output'}`);
  }

  /** Calls `cb` if the process exits other than through stop(). */
  onUnexpectedExit(cb: ((code: number | null, stderr: string) => void) | undefined): void {
    void this.exited.then((code) => {
      if (!this.stopping) cb?.(code, this.stderr);
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /**
   * Stops the tool. With `quietMs`, first waits (at most `ms`) until it has written nothing for
   * that long, counted from the call at the earliest: what the kernel had already queued for it
   * (events in its netlink socket) is read and written out, not lost with the process.
   */
  async stop(ms: number, quietMs = 0): Promise<void> {
    this.stopping = true;
    const called = Date.now();
    const deadline = called + ms;
    while (quietMs > 0 && this.exitCode === undefined && Date.now() < deadline && Date.now() - Math.max(called, this.lastOutput) < quietMs) {
      await new Promise((r) => setTimeout(r, 25));
    }
    await stopProcess(this.child, this.exited, ms);
  }
}
