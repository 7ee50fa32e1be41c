// Small helpers the parts of `wardgate demo` share: ports, waiting, indented output, and the
// demo's stop request (Ctrl-C, q), which every wait gives way to.
import { createServer } from 'node:net';
import type { Io } from '../cli/io.js';

/** A port that is free on `host` now (the OS picks it). */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const a = s.address();
      s.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

/** Whether `port` can be listened on at `host` now. */
export function portFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, host, () => s.close(() => resolve(true)));
  });
}

/** Two consecutive free ports: the proxies' listen range (protocols.listenPorts). */
export async function freePair(host = '127.0.0.1'): Promise<[number, number]> {
  for (let i = 0; i < 50; i++) {
    const p = await freePort(host);
    if (p < 65535 && (await portFree(p + 1, host))) return [p, p + 1];
  }
  throw new Error('no two consecutive free ports on ' + host);
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The same output, indented under the demo's step. */
export const indent = (io: Io, by = '    '): Io => ({ out: (s) => io.out(s.replace(/^/gm, by)), err: (s) => io.err(s.replace(/^/gm, by)) });

/** An Io that keeps what it is given (for commands whose output the demo reports its own way). */
export function capture(): Io & { text(): string } {
  const lines: string[] = [];
  return { out: (s) => lines.push(s), err: (s) => lines.push(s), text: () => lines.join('\n') };
}

/**
 * Ctrl-C (SIGINT), SIGTERM or q: the demo winds down through its own clean-up, which removes the
 * namespace site too. A third Ctrl-C exits at once: Node-RED and the proxy process end with this
 * process through their IPC channel; a namespace site may stay (ip netns list: wgdemo<pid>-*).
 */
export class StopRequest {
  requested = false;
  private signals = 0;
  private waiters: (() => void)[] = [];
  private readonly onSignal = (): void => {
    this.signals++;
    if (this.signals === 2) process.stderr.write('wardgate demo: stopping; Ctrl-C once more quits at once and may leave the namespace site\n');
    if (this.signals >= 3) process.exit(130);
    this.request();
  };

  install(): void {
    process.on('SIGINT', this.onSignal);
    process.on('SIGTERM', this.onSignal);
  }

  uninstall(): void {
    process.off('SIGINT', this.onSignal);
    process.off('SIGTERM', this.onSignal);
  }

  request(): void {
    this.requested = true;
    for (const w of this.waiters.splice(0)) w();
  }

  /** Resolves when a stop is requested. */
  wait(): Promise<void> {
    return this.requested ? Promise.resolve() : new Promise((r) => this.waiters.push(r));
  }
}

export class Stopped extends Error {
  constructor() {
    super('stopped (Ctrl-C)');
  }
}

/** Waits until check() holds (true) or ms pass (false); a stop request ends the wait with Stopped. */
export async function until(check: () => boolean | Promise<boolean>, ms: number, stop?: StopRequest): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    if (stop?.requested) throw new Stopped();
    if (await check()) return true;
    if (Date.now() > end) return false;
    await sleep(100);
  }
}
