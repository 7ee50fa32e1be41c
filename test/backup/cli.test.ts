// `wardgate backup keygen | list | export | verify` through the built CLI: exit codes, and a
// bundle verified in another directory with only the public key (a responder's laptop).
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileKeyProvider, loadGatewayKey } from '../../agent/backup/keys.js';
import { BackupStore } from '../../agent/backup/store.js';
import { flip, text } from './store-helpers.js';

const CLI = join(import.meta.dirname, '..', '..', 'bin', 'wardgate.js');
let dir = '';
let gw = '';

function run(args: string[], opts: { cwd?: string; gateway?: boolean } = {}): { code: number | null; out: string; err: string } {
  const full = opts.gateway === false ? args : [...args, '--gateway', gw];
  const env = { ...process.env };
  delete env.WARDGATE_GATEWAY;
  delete env.WARDGATE_STATE_DIR;
  const r = spawnSync(process.execPath, [CLI, ...full], { encoding: 'utf8', cwd: opts.cwd ?? dir, env });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'wg-bcli-'));
  gw = join(dir, 'gateway.yaml');
  writeFileSync(
    gw,
    [
      'apiVersion: wardgate/v1',
      'kind: Gateway',
      'site: st-a',
      'gateway: gw-1',
      'mode: router',
      'interfaces: { uplink: eth0, device: eth1 }',
      'deviceSegments: [10.20.0.0/24]',
      'management: { networks: [10.99.0.0/24] }',
      'stateDir: state',
      'backup:',
      '  keyFile: secrets/backup.key',
      '  retention: { last: 5, dailyDays: 7 }',
      '',
    ].join('\n'),
  );
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('wardgate backup', () => {
  it('keygen makes both keys once and never overwrites them', () => {
    const r = run(['backup', 'keygen']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/data key +.*secrets\/backup.key \(made; id [0-9a-f]{16}\)/);
    expect(r.out).toMatch(/gateway key +.*state\/keys\/gateway-ed25519.pem \(made\)/);
    const keyFile = join(dir, 'secrets', 'backup.key');
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    const before = readFileSync(keyFile);
    const again = run(['backup', 'keygen']);
    expect(again.code).toBe(0);
    expect(again.out).toMatch(/already there, kept/);
    expect(readFileSync(keyFile)).toEqual(before);
  });

  it('list, export, and verify elsewhere with the public key only', async () => {
    const stateDir = join(dir, 'state');
    const store = BackupStore.open({ stateDir, gateway: 'st-a/gw-1', key: loadGatewayKey(stateDir), keys: new FileKeyProvider(join(dir, 'secrets', 'backup.key')) });
    await store.put('ct-1', 'http', text('ae CT1\n', 'https://10.20.0.31/config'));
    await store.put('ct-1', 'http', text('ae CT2\n', 'https://10.20.0.31/config'));

    const l = run(['backup', 'list']);
    expect(l.code).toBe(0);
    expect(l.out.trim().split('\n')).toEqual([expect.stringMatching(/^ct-1 +1 .* http .*https:\/\/10.20.0.31\/config$/), expect.stringMatching(/^ct-1 +2 /)]);
    const lj = JSON.parse(run(['backup', 'list', 'ct-1', '--json']).out) as { versions: { version: number }[]; problems: unknown[] };
    expect(lj.versions.map((v) => v.version)).toEqual([1, 2]);

    const bundle = join(dir, 'ct-1.wgb');
    const e = run(['backup', 'export', 'ct-1', '--out', bundle]);
    expect(e.err).toBe('');
    expect(e.code).toBe(0);
    expect(e.out).toMatch(/ct-1 version\(s\) 1, 2/);
    expect(run(['backup', 'export', 'ct-1', '--version', '1', '--out', join(dir, 'v1.wgb')]).code).toBe(0);

    // Another machine: a directory with the bundle and the public key, no gateway file, no state.
    const laptop = mkdtempSync(join(tmpdir(), 'wg-bcli-laptop-'));
    try {
      copyFileSync(bundle, join(laptop, 'ct-1.wgb'));
      copyFileSync(join(stateDir, 'keys', 'gateway-ed25519.pub'), join(laptop, 'gw-1.pub'));
      const v = run(['backup', 'verify', 'ct-1.wgb', '--pubkey', 'gw-1.pub'], { cwd: laptop, gateway: false });
      expect(v.err).toBe('');
      expect(v.code).toBe(0);
      expect(v.out).toMatch(/ok: ct-1.wgb: 2 version\(s\) of ct-1 from st-a\/gw-1 verified \(signatures and ciphertext hashes; pass --key/);

      // The data key from a FAT stick: readable by all, used with a warning.
      copyFileSync(join(dir, 'secrets', 'backup.key'), join(laptop, 'data.key'));
      chmodSync(join(laptop, 'data.key'), 0o755);
      const vk = run(['backup', 'verify', 'ct-1.wgb', '--pubkey', 'gw-1.pub', '--key', 'data.key'], { cwd: laptop, gateway: false });
      expect(vk.code).toBe(0);
      expect(vk.err).toMatch(/warning: data.key is readable by others/);
      expect(vk.out).toMatch(/signatures, ciphertext and plaintext hashes/);

      const data = readFileSync(join(laptop, 'ct-1.wgb'));
      writeFileSync(join(laptop, 'bad.wgb'), flip(data, data.length - 20));
      const bad = run(['backup', 'verify', 'bad.wgb', '--pubkey', 'gw-1.pub'], { cwd: laptop, gateway: false });
      expect(bad.code).toBe(1);
      expect(bad.err).toMatch(/FAILED bad.wgb \(blob 1, sha256 [0-9a-f]{16}…\): blob-hash: ciphertext sha256 [0-9a-f]{64} differs/);
      expect(bad.out).toMatch(/^ok +ct-1 version 1/m);
      expect(bad.out).toMatch(/^FAILED ct-1 version 2/m);

      mkdirSync(join(laptop, 'other'));
      const otherGw = join(laptop, 'other');
      const { ensureGatewayKey } = await import('../../agent/backup/keys.js');
      const otherPub = ensureGatewayKey(otherGw).publicKeyPath;
      const wrong = run(['backup', 'verify', 'ct-1.wgb', '--pubkey', otherPub], { cwd: laptop, gateway: false });
      expect(wrong.code).toBe(1);
      expect(wrong.err).toMatch(/\(index\): public-key: signed by the key with fingerprint [0-9a-f]{64}, not by the public key given/);

      expect(run(['backup', 'verify', 'ct-1.wgb'], { cwd: laptop, gateway: false }).code).toBe(2);
      expect(run(['backup', 'verify', 'nope.wgb', '--pubkey', 'gw-1.pub'], { cwd: laptop, gateway: false }).code).toBe(2);
      expect(run(['backup', 'verify', 'ct-1.wgb', '--pubkey', 'ct-1.wgb'], { cwd: laptop, gateway: false }).code).toBe(2);
    } finally {
      rmSync(laptop, { recursive: true, force: true });
    }
  });

  it('usage errors exit 2, unknown versions 1, key and configuration problems 3', () => {
    expect(run(['backup']).code).toBe(2);
    expect(run(['backup', 'export', 'ct-1']).code).toBe(2);
    expect(run(['backup', 'export', 'ct-1', '--version', 'x', '--out', join(dir, 'x.wgb')]).code).toBe(2);
    const missing = run(['backup', 'export', 'ct-1', '--version', '9', '--out', join(dir, 'x.wgb')]);
    expect(missing.code).toBe(1);
    expect(missing.err).toMatch(/0000000009.json: missing: no version 9 of ct-1/);

    const keyFile = join(dir, 'secrets', 'backup.key');
    chmodSync(keyFile, 0o644);
    const k = run(['backup', 'keygen']);
    expect(k.code).toBe(3);
    expect(k.err).toMatch(/mode 0644 lets others read the data key; chmod 600 it/);
    chmodSync(keyFile, 0o600);

    writeFileSync(gw, readFileSync(gw, 'utf8').replace('last: 5', 'last: 0'));
    const c = run(['backup', 'list']);
    expect(c.code).toBe(3);
    expect(c.err).toMatch(/gateway.yaml:\d+:\d+.*backup.retention.last/);
  });
});
