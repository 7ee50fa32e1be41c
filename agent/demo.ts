// `wardgate demo` (what `npm start` runs): the whole system on this machine. As root with
// nftables it first shows the kernel enforcing the example policies in a network-namespace site
// (demo/namespace.ts); then, root or not, the agent with its broker, simulated devices on
// loopback, the inline proxies, signed commands, backups and the Node-RED console
// (demo/system.ts), running until Ctrl-C, or once through with --once. The exit code is the
// verdict: 0 when everything went as the policies say.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Io } from './cli/io.js';
import { runNamespaceSite } from './demo/namespace.js';
import { runSystem } from './demo/system.js';
import { StopRequest } from './demo/util.js';
import { nftAvailable } from './policy/backend.js';

export interface DemoOptions {
  /** Keep the work directory (and, as root, the namespace site) after the demo ends. */
  keep: boolean;
  /** Run the script and end, instead of running until Ctrl-C. */
  once: boolean;
}

export async function runDemo(opts: DemoOptions, io: Io): Promise<number> {
  const work = mkdtempSync(join(tmpdir(), 'wardgate-demo-'));
  const stop = new StopRequest();
  stop.install();
  const root = process.getuid?.() === 0 && nftAvailable().ok;
  io.out(`wardgate demo: the whole system on this machine; work directory ${work}`);
  let surprises = 0;
  try {
    if (root) surprises += await runNamespaceSite(work, opts, io);
    else io.out('not root (or no nftables): no network-namespace site; the rest runs on loopback with the dry-run backend');
    if (!stop.requested) surprises += await runSystem(work, opts, stop, io);
  } finally {
    stop.uninstall();
    if (opts.keep) io.out(`\n--keep: the work directory stays: ${work}`);
    else rmSync(work, { recursive: true, force: true });
  }
  io.out(surprises === 0 ? '\ndemo: everything went as the policies say' : `\ndemo: ${surprises} surprise(s), marked "<-- expected" above`);
  return surprises === 0 ? 0 : 1;
}
