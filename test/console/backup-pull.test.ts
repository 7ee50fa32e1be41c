// `wardgate console backup list | pull` against the embedded broker and a stand-in gateway that
// runs the real backup.list / backup.pull handlers on a real store, through the real verifier,
// dispatcher and audit. The pulled bundle is verified elsewhere by the built CLI with only the
// gateway's .pub; interruptions (a killed console, lost answers), bad chunks and a lying
// gateway are each shown to be caught.
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { gatewayKeyPaths } from '../../agent/backup/keys.js';
import { backupPullHandlers, type PullResult } from '../../agent/backup/pull.js';
import { BackupStoreSchema } from '../../agent/backup/schema-store.js';
import { consoleCommand, type ConsoleOptions } from '../../agent/cli/console.js';
import { UsageError } from '../../agent/cli/context.js';
import type { Io } from '../../agent/cli/io.js';
import { CommandClient } from '../../agent/console/client.js';
import { generateConsoleKey, loadConsoleKey } from '../../agent/console/keys.js';
import { buildRequest, signRequest } from '../../agent/console/sign.js';
import type { CommandHandler } from '../../agent/mqtt/commands.js';
import { startEmbeddedBroker, type EmbeddedBroker } from '../../agent/mqtt/broker.js';
import { Topics } from '../../agent/mqtt/topics.js';
import { makeStore, text, type TestStore } from '../backup/store-helpers.js';
import { freePort, until } from '../mqtt/brokers.js';
import { FakeGateway, GATEWAY, SITE } from './gateway-fixture.js';

const CLI = join(import.meta.dirname, '..', '..', 'bin', 'wardgate.js');
const TARGET = `${SITE}/${GATEWAY}`;
const CHUNK = 16384;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function testIo() {
  const out: string[] = [];
  const err: string[] = [];
  const io: Io = { out: (l) => out.push(l), err: (l) => err.push(l) };
  return { io, text: () => out.join('\n'), errText: () => err.join('\n') };
}

let broker: EmbeddedBroker;
let url = '';
let dir = '';
let keyFile = '';
let pubFile = '';
let t: TestStore;
let gw: FakeGateway;
/** What the stand-in gateway's backup.pull does instead of answering plainly, when set. */
let intercept: ((args: Record<string, unknown>, run: () => Promise<PullResult>, n: number) => Promise<unknown>) | undefined;
let pulls = 0;
/** Added to the gateway's clock for its bundle cache: moves time past the cache's 15 minutes. */
let skewMs = 0;

beforeAll(async () => {
  broker = await startEmbeddedBroker({ host: '127.0.0.1', port: await freePort() });
  url = `mqtt://127.0.0.1:${broker.port}`;
  dir = mkdtempSync(join(tmpdir(), 'wg-bpull-'));
  const key = generateConsoleKey(join(dir, 'keys'), 'ops');
  keyFile = key.privateKeyPath;
  t = makeStore({ gateway: TARGET });
  pubFile = gatewayKeyPaths(t.stateDir).publicKeyPath;
  await t.store.put('ct-1', 'file', { bytes: randomBytes(120_000), format: 'binary', source: 'sftp 10.20.0.31:/etc/ct.cfg' });
  await t.store.put('ct-1', 'file', { bytes: randomBytes(60_000), format: 'binary', source: 'sftp 10.20.0.31:/etc/ct.cfg' });
  await t.store.put('pump-1', 'command', text('rate 5\n', 'command pump-dump'));
  await t.store.put('mri-1', 'file', { bytes: randomBytes(50_000), format: 'binary', source: 'tftp 10.20.0.40:mri.cfg' });
  const real = backupPullHandlers({ store: t.store, stateDir: t.stateDir, gateway: TARGET, config: BackupStoreSchema.parse({}), cache: { now: () => Date.now() + skewMs } });
  const pull: CommandHandler = (args, ctx) => {
    const n = ++pulls;
    const run = () => real['backup.pull']!(args, ctx) as Promise<PullResult>;
    return intercept ? intercept(args, run, n) : run();
  };
  gw = new FakeGateway({ url, stateDir: join(dir, 'gw-state'), publicKeys: [{ id: 'ops', key: key.publicKey }], protocolVersion: 4, handlers: { 'backup.list': real['backup.list']!, 'backup.pull': pull } });
  await gw.start();
});

afterEach(() => {
  intercept = undefined;
  skewMs = 0;
});

afterAll(async () => {
  await gw.stop();
  await broker.close();
  t.cleanup();
  rmSync(dir, { recursive: true, force: true });
});

async function consoleBackup(positionals: string[], opts: ConsoleOptions = {}) {
  const io = testIo();
  const code = await consoleCommand('backup', positionals, { url, key: keyFile, protocol: '4', timeout: '5', ...opts }, io.io);
  return { code, out: io.text(), err: io.errText() };
}

/** The built CLI, asynchronously: the stand-in gateway answers from this process. */
function cli(args: string[], cwd = dir): { done: Promise<{ code: number | null; out: string; err: string }>; kill: () => void } {
  const child = spawn(process.execPath, [CLI, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const done = new Promise<{ code: number | null; out: string; err: string }>((resolve) => child.on('close', (code) => resolve({ code, out, err })));
  return { done, kill: () => child.kill('SIGKILL') };
}

const pullArgs = (out: string, more: string[] = []) => ['console', 'backup', 'pull', TARGET, 'ct-1', '--out', out, '--url', url, '--key', keyFile, '--protocol', '4', '--chunk-size', String(CHUNK), ...more];

let reference: Buffer; // the bundle pulled in the first test: what every later pull must equal

describe('wardgate console backup list', () => {
  it('lists every device and version from the gateway', async () => {
    const r = await consoleBackup(['list', TARGET]);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^backups on st-test\/gw-1/);
    expect(r.out).toMatch(/^ct-1: 2 version\(s\), last successful fetch \d{4}-/m);
    expect(r.out).toMatch(/^ +2 {2}\S+Z {2}file +binary +60000 B {2}sha256 [0-9a-f]{16} {2}sftp 10.20.0.31:\/etc\/ct.cfg$/m);
    expect(r.out).toMatch(/^pump-1: 1 version\(s\)/m);
    const j = await consoleBackup(['list', TARGET, 'pump-1'], { json: true });
    const parsed = JSON.parse(j.out) as { devices: { device: string; versions: { driver: string; size: number }[] }[] };
    expect(parsed.devices).toEqual([expect.objectContaining({ device: 'pump-1', versions: [expect.objectContaining({ driver: 'command', size: 7 })] })]);
  });
});

describe('wardgate console backup pull', () => {
  it('pulls a bundle of many chunks, checks it and verifies it with the .pub; the built CLI verifies it again elsewhere with only the .pub', async () => {
    const out = join(dir, 'ct-1.wgb');
    const before = pulls;
    const r = await consoleBackup(['pull', TARGET, 'ct-1'], { out, chunkSize: String(CHUNK), pubkey: pubFile });
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    reference = readFileSync(out);
    expect(reference.length).toBeGreaterThan(CHUNK * 8);
    expect(pulls - before).toBe(Math.ceil(reference.length / CHUNK));
    expect(r.out).toContain(`wrote ${out}: ct-1 version(s) 1, 2, ${reference.length} bytes, sha256 ${sha(reference)}`);
    expect(r.out).toMatch(/verified with .*gateway-ed25519.pub \(sha256 [0-9a-f]{64}\): 2 version\(s\) of ct-1 from st-test\/gw-1: the index and every manifest signed by that key/);
    expect(existsSync(`${out}.part`)).toBe(false);

    // Every pull request was verified and audited, with its arguments.
    const audited = gw.audit.records.filter((a) => a.detail?.command === 'backup.pull');
    expect(audited.length).toBeGreaterThanOrEqual(pulls - before);
    expect(audited.at(-1)).toMatchObject({ actor: 'ops', action: 'command.executed', outcome: 'ok', detail: { args: { device: 'ct-1', chunkSize: CHUNK, offset: CHUNK * (pulls - before - 1) } } });

    const laptop = mkdtempSync(join(tmpdir(), 'wg-bpull-laptop-'));
    try {
      copyFileSync(out, join(laptop, 'ct-1.wgb'));
      copyFileSync(pubFile, join(laptop, 'gw-1.pub'));
      const v = await cli(['backup', 'verify', 'ct-1.wgb', '--pubkey', 'gw-1.pub'], laptop).done;
      expect(v.err).toBe('');
      expect(v.code).toBe(0);
      expect(v.out).toMatch(/ok: ct-1.wgb: 2 version\(s\) of ct-1 from st-test\/gw-1 verified/);
      const bad = Buffer.from(reference);
      bad[bad.length - 1000]! ^= 0x01;
      writeFileSync(join(laptop, 'bad.wgb'), bad);
      const b = await cli(['backup', 'verify', 'bad.wgb', '--pubkey', 'gw-1.pub'], laptop).done;
      expect(b.code).toBe(1);
      expect(b.err).toMatch(/FAILED bad.wgb \(blob \d, sha256 [0-9a-f]{16}…\): blob-hash: ciphertext sha256 [0-9a-f]{64} differs/);
    } finally {
      rmSync(laptop, { recursive: true, force: true });
    }
  });

  it('a console killed mid-pull resumes from its .part file and ends with the same bytes', async () => {
    const out = join(dir, 'killed.wgb');
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let seen = 0;
    intercept = async (_args, run) => {
      if (++seen === 6) await gate; // the sixth answer never reaches the console: it is killed first
      return run();
    };
    const first = cli(pullArgs(out));
    await until('the sixth request', () => seen >= 6, 10_000);
    first.kill();
    await first.done;
    release();
    expect(statSync(`${out}.part`).size).toBe(5 * CHUNK);
    expect(existsSync(out)).toBe(false);

    intercept = undefined;
    const before = pulls;
    const second = await cli(pullArgs(out, ['--pubkey', pubFile])).done;
    expect(second.code).toBe(0);
    expect(second.err).toContain(`resuming ${out}.part at byte ${5 * CHUNK} of ${reference.length}`);
    expect(second.out).toContain(`(resumed at byte ${5 * CHUNK})`);
    expect(second.out).toMatch(/^verified with /m);
    expect(pulls - before).toBe(Math.ceil(reference.length / CHUNK) - 5);
    expect(readFileSync(out)).toEqual(reference);
  });

  it('a .part that is not the start of the bundle is thrown away and the pull starts again', async () => {
    const out = join(dir, 'stale.wgb');
    writeFileSync(`${out}.part`, randomBytes(20_000));
    const r = await consoleBackup(['pull', TARGET, 'ct-1'], { out, chunkSize: String(CHUNK) });
    expect(r.code).toBe(0);
    expect(r.err).toMatch(/stale.wgb.part \(20000 bytes\) is not the start of the gateway's bundle [0-9a-f]{16}… .*; starting again from byte 0/);
    expect(readFileSync(out)).toEqual(reference);
    expect(r.out).toMatch(/^not verified: .*--pubkey/m);
  });

  it('a chunk whose hash does not match is refused and asked again; one that never matches fails the pull', async () => {
    const corrupt = async (run: () => Promise<PullResult>) => {
      const r = await run();
      const b = Buffer.from(r.bytes, 'base64');
      b[10]! ^= 0xff;
      return { ...r, bytes: b.toString('base64') };
    };
    let count = 0;
    intercept = (_a, run) => (++count === 3 ? corrupt(run) : run());
    const out = join(dir, 'once.wgb');
    const r = await consoleBackup(['pull', TARGET, 'ct-1'], { out, chunkSize: String(CHUNK) });
    expect(r.err).toMatch(new RegExp(`the chunk at offset ${2 * CHUNK} has sha256 [0-9a-f]{64}, the gateway says [0-9a-f]{64}: refused; asking again`));
    expect(r.code).toBe(0);
    expect(readFileSync(out)).toEqual(reference);

    count = 0;
    intercept = (_a, run) => (++count >= 3 ? corrupt(run) : run());
    const never = join(dir, 'never.wgb');
    const f = await consoleBackup(['pull', TARGET, 'ct-1'], { out: never, chunkSize: String(CHUNK) });
    expect(f.code).toBe(1);
    expect(f.err).toMatch(/E_PULL: the chunk at offset 32768 .*refused; gave up after 4 tries \(what was kept is in .*never.wgb.part/);
    expect(existsSync(never)).toBe(false);
    expect(readFileSync(`${never}.part`)).toEqual(reference.subarray(0, 2 * CHUNK)); // only the good chunks
  });

  it('a whole bundle whose hash is not the one announced is refused and its .part removed', async () => {
    intercept = async (_a, run) => ({ ...(await run()), bundleSha256: 'ab'.repeat(32) });
    const out = join(dir, 'lie.wgb');
    const r = await consoleBackup(['pull', TARGET, 'ct-1'], { out, chunkSize: String(CHUNK) });
    expect(r.code).toBe(1);
    expect(r.err).toContain(`E_PULL: the bundle's sha256 is ${sha(reference)}, the gateway announced ${'ab'.repeat(32)}: refused`);
    expect(existsSync(out)).toBe(false);
    expect(existsSync(`${out}.part`)).toBe(false);
  });

  it('a lost answer is asked for again', async () => {
    let count = 0;
    intercept = async (_a, run) => {
      if (++count === 2) await new Promise((r) => setTimeout(r, 1500)); // later than the console waits
      return run();
    };
    const out = join(dir, 'lost.wgb');
    const r = await consoleBackup(['pull', TARGET, 'ct-1'], { out, chunkSize: String(CHUNK), timeout: '1' });
    expect(r.err).toContain(`no answer for offset ${CHUNK} within 1 s; asking again`);
    expect(r.code).toBe(0);
    expect(readFileSync(out)).toEqual(reference);
  });

  it('a bundle the gateway no longer keeps (a new version came, the old bundle expired) makes the pull start again', async () => {
    let count = 0;
    intercept = async (_a, run) => {
      if (++count === 3) {
        await t.store.put('mri-1', 'file', { bytes: randomBytes(20_000), format: 'binary', source: 'tftp 10.20.0.40:mri.cfg' });
        skewMs = 16 * 60_000;
      }
      return run();
    };
    const out = join(dir, 'mri-1.wgb');
    const r = await consoleBackup(['pull', TARGET, 'mri-1'], { out, chunkSize: String(CHUNK), pubkey: pubFile });
    expect(r.err).toMatch(/the gateway no longer has bundle [0-9a-f]{16}… \(it keeps one for a while after the last request\); starting again from byte 0/);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/mri-1 version\(s\) 1, 2, /);
    expect(r.out).toMatch(/^verified with .*: 2 version\(s\) of mri-1/m);
  });

  it('a bundle signed by the right key but from another gateway is not trusted', async () => {
    const other = makeStore({ gateway: 'st-other/gw-9' });
    try {
      await other.store.put('ct-1', 'file', text('ae CT9\n'));
      const theirs = backupPullHandlers({ store: other.store, stateDir: other.stateDir, gateway: 'st-other/gw-9', config: BackupStoreSchema.parse({}) });
      intercept = (args) => theirs['backup.pull']!(args, {} as never);
      const out = join(dir, 'other.wgb');
      const r = await consoleBackup(['pull', TARGET, 'ct-1'], { out, pubkey: gatewayKeyPaths(other.stateDir).publicKeyPath });
      expect(r.code).toBe(1);
      expect(r.err).toContain('FAILED the bundle is from st-other/gw-9, not st-test/gw-1');
      expect(r.err).toMatch(/do not trust it: 1 problem\(s\)/);
    } finally {
      other.cleanup();
    }
  });

  it('one version', async () => {
    const out = join(dir, 'v2.wgb');
    const r = await consoleBackup(['pull', TARGET, 'ct-1'], { out, version: '2', pubkey: pubFile });
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/ct-1 version\(s\) 2, \d+ bytes/);
    expect(r.out).toMatch(/verified with .*: 1 version\(s\) of ct-1/);
  });

  it('unsigned, wrongly signed or unknown-key pulls are refused and audited, and run nothing', async () => {
    const before = pulls;
    const unknown = await consoleBackup(['pull', TARGET, 'ct-1'], { out: join(dir, 'x.wgb'), keyId: 'nobody' });
    expect(unknown.code).toBe(1);
    expect(unknown.err).toMatch(/refused: backup.pull on st-test\/gw-1: E_UNKNOWN_KEY/);
    expect(gw.lastAudit()).toMatchObject({ actor: 'unknown', action: 'command.refused', outcome: 'refused', detail: { command: 'backup.pull', code: 'E_UNKNOWN_KEY', claimedKeyId: 'nobody' } });

    const client = await CommandClient.connect(url, { protocolVersion: 4 });
    try {
      const to = { site: SITE, gateway: GATEWAY };
      const unsigned = buildRequest({ ...to, name: 'backup.pull', args: { device: 'ct-1' }, keyId: 'ops', replyTo: client.responseTopic(SITE, GATEWAY) });
      const r1 = await client.sendRaw(new Topics(SITE, GATEWAY).command('backup.pull'), JSON.stringify(unsigned), { ...to, nonce: unsigned.nonce }, { timeoutMs: 5000 });
      expect(r1).toMatchObject({ ok: false, error: { code: 'E_MALFORMED' } });
      // Signed by another key than the one "ops" names: a stolen key id is not enough.
      const other = generateConsoleKey(join(dir, 'keys2'), 'ops');
      const forged = signRequest(buildRequest({ ...to, name: 'backup.pull', args: { device: 'ct-1' }, keyId: 'ops', replyTo: client.responseTopic(SITE, GATEWAY) }), loadConsoleKey(other.privateKeyPath));
      const r2 = await client.send(forged, { timeoutMs: 5000 });
      expect(r2).toMatchObject({ ok: false, error: { code: 'E_BAD_SIGNATURE' } });
      expect(gw.lastAudit()).toMatchObject({ actor: 'unknown', outcome: 'refused', detail: { command: 'backup.pull', code: 'E_BAD_SIGNATURE' } });
    } finally {
      await client.end();
    }
    expect(pulls).toBe(before);
  });

  it('usage errors', async () => {
    await expect(consoleBackup(['pull', TARGET, 'ct-1'])).rejects.toThrow(/--out/);
    await expect(consoleBackup(['pull', TARGET], { out: 'x' })).rejects.toThrow(UsageError);
    await expect(consoleBackup(['pull', 'gw-1', 'ct-1'], { out: 'x' })).rejects.toThrow(/<site>\/<gateway>/);
    await expect(consoleBackup(['pull', TARGET, 'ct-1'], { out: 'x', chunkSize: '100' })).rejects.toThrow(/--chunk-size takes a whole number from 1024 to 262144/);
    await expect(consoleBackup(['pull', TARGET, 'ct-1'], { out: 'x', version: 'latest' })).rejects.toThrow(/--version/);
    await expect(consoleBackup(['pull', TARGET, 'ct-1'], { out: 'x', pubkey: join(dir, 'nope.pub') })).rejects.toThrow(/--pubkey/);
    await expect(consoleBackup(['frob'])).rejects.toThrow(/list or pull/);
    const e = await consoleBackup(['pull', TARGET, 'ct-9'], { out: join(dir, 'nine.wgb') });
    expect(e).toMatchObject({ code: 1, err: expect.stringMatching(/failed: backup.pull on st-test\/gw-1: E_HANDLER_FAILED: no backup of ct-9/) as unknown });
  });
});
