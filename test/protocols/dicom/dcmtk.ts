// DCMTK for the DICOM tests: small test objects made with dump2dcm, storescp as the device, and
// runs of echoscu/storescu/findscu as peers. Everything on 127.0.0.1, in temporary directories the
// callers remove; every child is ended by its pid, and every wait is bounded.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { accepts, waitFor, type Peer, type Peers } from '../../fixtures/peers.js';

/** Why the DCMTK tests cannot run here, or undefined. */
export const dcmtkSkipReason: string | undefined = (() => {
  for (const tool of ['storescp', 'storescu', 'echoscu', 'findscu', 'dump2dcm']) {
    const r = spawnSync(tool, ['--version'], { encoding: 'utf8' });
    if (r.error !== undefined) return `${tool} is not installed (apt-get install dcmtk; scripts/install-deps.sh installs it)`;
  }
  return undefined;
})();

export const SOP = {
  ct: '1.2.840.10008.5.1.4.1.1.2',
  mr: '1.2.840.10008.5.1.4.1.1.4',
} as const;

/** The instance UID of the template object; its last four digits are replaced per copy. */
const TEMPLATE_UID = '1.2.826.0.1.3680043.9.7433.1.1000';

/** A small synthetic image (side x side pixels, 2 by default; a made-up patient) of the given storage SOP class. */
export function makeObject(dir: string, name: string, sopClass: string, modality: string, side = 2): string {
  const dump = join(dir, `${name}.dump`);
  const file = join(dir, `${name}.dcm`);
  writeFileSync(
    dump,
    [
      '(0002,0001) OB 00\\01',
      `(0002,0002) UI [${sopClass}]`,
      `(0002,0003) UI [${TEMPLATE_UID}]`,
      '(0002,0010) UI =LittleEndianExplicit',
      `(0008,0016) UI [${sopClass}]`,
      `(0008,0018) UI [${TEMPLATE_UID}]`,
      `(0008,0060) CS [${modality}]`,
      '(0010,0010) PN [Synthetic^Test]',
      '(0010,0020) LO [WG-0001]',
      '(0020,000d) UI [1.2.826.0.1.3680043.9.7433.2]',
      '(0020,000e) UI [1.2.826.0.1.3680043.9.7433.3]',
      '(0028,0002) US 1',
      '(0028,0004) CS [MONOCHROME2]',
      `(0028,0010) US ${side}`,
      `(0028,0011) US ${side}`,
      '(0028,0100) US 16',
      '(0028,0101) US 16',
      '(0028,0102) US 15',
      '(0028,0103) US 0',
      `(7fe0,0010) OW ${Array.from({ length: side * side }, (_, i) => (i % 4096).toString(16).padStart(4, '0')).join('\\')}`,
      '',
    ].join('\n'),
  );
  const r = spawnSync('dump2dcm', ['+l', String(16 * side * side + 4096), dump, file], { encoding: 'utf8', timeout: 10000 });
  if (r.status !== 0) throw new Error(`dump2dcm failed: ${r.stderr}${r.error?.message ?? ''}`);
  return file;
}

/** `count` copies of an object, each with its own SOP instance UID (same length, patched in place). */
export function copies(template: string, dir: string, count: number): string[] {
  const bytes = readFileSync(template);
  const uid = Buffer.from(TEMPLATE_UID, 'latin1');
  const at: number[] = [];
  for (let i = bytes.indexOf(uid); i >= 0; i = bytes.indexOf(uid, i + 1)) at.push(i);
  if (at.length !== 2) throw new Error(`expected the instance UID twice in ${template}, found it ${at.length} times`);
  const files: string[] = [];
  for (let n = 0; n < count; n++) {
    const copy = Buffer.from(bytes);
    const suffix = Buffer.from(String(1000 + (n % 9000)).padStart(4, '0'), 'latin1');
    for (const i of at) suffix.copy(copy, i + uid.length - 4);
    const file = join(dir, `obj${String(n).padStart(5, '0')}.dcm`);
    writeFileSync(file, copy);
    files.push(file);
  }
  return files;
}

/**
 * DCMTK 3.6.2 and later leave Nagle's algorithm on unless TCP_NODELAY=1 (dcmnet's envvars.txt; 3.6.7 reads that name):
 * with it, each small C-STORE waits for a delayed ACK (about 40 ms on Linux). Timings run both
 * ends with it off, which is DCMTK at its fastest, the baseline the proxy is measured against.
 */
export const NO_NAGLE = { ...process.env, TCP_NODELAY: '1' };

export interface Storescp extends Peer {
  readonly dir: string;
  output(): string;
}

/** Ends a child by its pid: TERM, then KILL after a while. */
async function endChild(child: ChildProcess, timeoutMs = 3000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const late = await Promise.race([exited.then(() => false), new Promise<boolean>((r) => setTimeout(() => r(true), timeoutMs))]);
  if (late) {
    child.kill('SIGKILL');
    await Promise.race([exited, new Promise((r) => setTimeout(r, timeoutMs))]);
  }
}

/** storescp as the device: stores into its own directory (`-od`), or drops what it gets (`ignore`). */
export async function startStorescp(peers: Peers, port: number, aeTitle: string, opts: { ignore?: boolean; args?: string[]; env?: NodeJS.ProcessEnv } = {}): Promise<Storescp> {
  const dir = mkdtempSync(join(tmpdir(), 'wg-dicom-scp-'));
  const args = ['--aetitle', aeTitle, ...(opts.ignore === true ? ['--ignore'] : ['-od', dir]), '-ta', '10', '-td', '10', ...(opts.args ?? []), String(port)];
  const child = spawn('storescp', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  child.on('error', (err) => (output += `\n[spawn error] ${err.message}`));
  const peer = peers.add<Storescp>({
    name: 'storescp',
    port,
    dir,
    output: () => output,
    stop: async () => {
      await endChild(child);
      rmSync(dir, { recursive: true, force: true });
    },
  });
  await waitFor(`storescp to listen on ${port}`, async () => {
    if (child.exitCode !== null) throw new Error(`storescp exited with ${child.exitCode}: ${output}`);
    return accepts(port);
  });
  return peer;
}

export interface RunResult {
  code: number | null;
  output: string;
  ms: number;
}

/** Runs a DCMTK client to completion (killed after `timeoutMs`). */
export function run(tool: string, args: string[], timeoutMs = 30000, env: NodeJS.ProcessEnv = process.env): Promise<RunResult> {
  return new Promise((resolve) => {
    const started = performance.now();
    const child = spawn(tool, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (err) => (output += `\n[spawn error] ${err.message}`));
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output, ms: performance.now() - started });
    });
  });
}
