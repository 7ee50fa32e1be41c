// backup.list and backup.pull from a real `wardgate run` (dry-run backend, embedded broker), with
// the built CLI on both sides: the agent's own handlers, link and audit log, end to end.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileKeyProvider, loadGatewayKey } from '../../agent/backup/keys.js';
import { BackupStore } from '../../agent/backup/store.js';
import { generateConsoleKey } from '../../agent/console/keys.js';
import { freePort, until } from '../mqtt/brokers.js';

const CLI = join(import.meta.dirname, '..', '..', 'bin', 'wardgate.js');
let dir = '';
let port = 0;
let agent: ChildProcess | undefined;
let agentOut = '';
let keyFile = '';

const run = (args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 30000, cwd: dir });
const consoleArgs = () => ['--url', `mqtt://127.0.0.1:${port}`, '--key', keyFile];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'wg-agent-bpull-'));
  port = await freePort();
  const k = generateConsoleKey(join(dir, 'keys'), 'responder');
  keyFile = k.privateKeyPath;
  writeFileSync(
    join(dir, 'gateway.yaml'),
    `apiVersion: wardgate/v1
kind: Gateway
site: st-agent
gateway: gw-agent
mode: router
interfaces: { uplink: lo, device: lo }
deviceSegments: [127.0.0.0/8]
management: { networks: [10.99.0.0/24] }
stateDir: state
policies: [policy.yaml]
mqtt:
  url: mqtt://127.0.0.1:${port}
  embeddedBroker: { port: ${port}, allowAnonymous: true }
commands:
  publicKeys: [{ id: responder, key: "${k.publicKey}" }]
`,
  );
  // ct-1 is backed up on demand only (no schedule), by a command printing its configuration file.
  writeFileSync(
    join(dir, 'policy.yaml'),
    `apiVersion: wardgate/v1
kind: Policy
devices:
  - id: ct-1
    class: ct-modality
    criticality: high
    ipv4: 127.0.0.1
    backup:
      driver: { type: command, argv: [cat, ${join(dir, 'ct-1.conf')}] }
      retries: 0
`,
  );
  writeFileSync(join(dir, 'ct-1.conf'), 'ae_title=CT1\nport=104\n');
  const keygen = run(['backup', 'keygen', '--gateway', 'gateway.yaml']);
  expect(keygen.status).toBe(0);
  const stateDir = join(dir, 'state');
  const store = BackupStore.open({ stateDir, gateway: 'st-agent/gw-agent', key: loadGatewayKey(stateDir), keys: new FileKeyProvider(join(stateDir, 'keys', 'backup-data.key')) });
  await store.put('ct-1', 'sftp', { bytes: randomBytes(200_000), format: 'binary', source: 'sftp 127.0.0.1:/cfg' });
  await store.put('ct-1', 'sftp', { bytes: randomBytes(100_000), format: 'binary', source: 'sftp 127.0.0.1:/cfg' });

  agent = spawn(process.execPath, [CLI, 'run', '--gateway', join(dir, 'gateway.yaml'), '--backend', 'dry-run'], { stdio: ['ignore', 'pipe', 'pipe'] });
  agent.stdout?.on('data', (d: Buffer) => (agentOut += d.toString()));
  agent.stderr?.on('data', (d: Buffer) => (agentOut += d.toString()));
  await until('the agent online', () => agentOut.includes('online'), 15000);
}, 30000);

afterAll(() => {
  agent?.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

describe('wardgate run answers backup.list, backup.pull and backup.now', () => {
  it('lists, pulls several chunks, verifies with the .pub, and audits every request', () => {
    const l = run(['console', 'backup', 'list', 'st-agent/gw-agent', ...consoleArgs()]);
    expect(l.stderr).toBe('');
    expect(l.status).toBe(0);
    expect(l.stdout).toMatch(/^ct-1: 2 version\(s\)/m);

    const out = join(dir, 'ct-1.wgb');
    const p = run(['console', 'backup', 'pull', 'st-agent/gw-agent', 'ct-1', '--out', out, '--pubkey', join(dir, 'state', 'keys', 'gateway-ed25519.pub'), ...consoleArgs()]);
    expect(p.stderr).toBe('');
    expect(p.status).toBe(0);
    expect(p.stdout).toMatch(/ct-1 version\(s\) 1, 2, (\d+) bytes/);
    expect(p.stdout).toMatch(/^verified with .*: 2 version\(s\) of ct-1 from st-agent\/gw-agent/m);
    const size = readFileSync(out).length;
    expect(size).toBeGreaterThan(4 * 65536);

    const audit = run(['audit', 'show', '--json', '--gateway', 'gateway.yaml']);
    const records = JSON.parse(audit.stdout) as { action: string; actor: string; detail: { command?: string; args?: { offset?: number } } }[];
    const pulls = records.filter((r) => r.detail.command === 'backup.pull');
    expect(pulls.map((r) => [r.action, r.actor, r.detail.args?.offset])).toEqual(Array.from({ length: Math.ceil(size / 65536) }, (_, i) => ['command.executed', 'responder', i * 65536]));
    expect(records.some((r) => r.detail.command === 'backup.list' && r.action === 'command.executed')).toBe(true);
  });

  it('backup.now runs the device\'s driver through the agent\'s service; a changed configuration comes back as drift', async () => {
    const now = () => run(['console', 'cmd', 'st-agent/gw-agent', 'backup.now', 'device=ct-1', '--json', ...consoleArgs()]);
    const first = now();
    expect(first.status, first.stderr).toBe(0);
    const r1 = (JSON.parse(first.stdout) as { ok: boolean; result: { ok: boolean; version: number; baselineSet: boolean; drift: string | null } });
    expect(r1.ok).toBe(true);
    // Versions 1 and 2 came from the store directly; neither was approved, so this one is the baseline.
    expect(r1.result).toMatchObject({ ok: true, version: 3, baselineSet: true, drift: null });

    writeFileSync(join(dir, 'ct-1.conf'), 'ae_title=CT1\nport=4104\n');
    const second = now();
    expect(second.status, second.stderr).toBe(0);
    const r2 = (JSON.parse(second.stdout) as { result: { ok: boolean; version: number; drift: string | null } }).result;
    expect(r2).toMatchObject({ ok: true, version: 4 });
    expect(r2.drift).toMatch(/ct-1 version 4 differs from the approved baseline \(version 3\).*port=104.*port=4104/);
    // ... and the agent raised config.drift as an event (its log is written asynchronously).
    await until('config.drift in the agent\'s log', () => /"event":"config.drift"/.test(agentOut), 5000);

    const unknown = run(['console', 'cmd', 'st-agent/gw-agent', 'backup.now', 'device=nope', '--json', ...consoleArgs()]);
    expect(unknown.status).not.toBe(0);
    expect(unknown.stdout + unknown.stderr).toMatch(/nope/);
  });
});
