// The backup module inside a real `wardgate run` (dry-run backend: runs anywhere): without keys
// it reports what to run and the agent goes on; with keys the first scheduled backup is stored
// within seconds of the start and a failing device raises backup.failed through the agent's events.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';

const CLI = join(import.meta.dirname, '..', '..', 'bin', 'wardgate.js');

let dir: ReturnType<typeof tempDir> | undefined;
let agent: ChildProcess | undefined;
let out = '';

afterEach(async () => {
  if (agent && agent.exitCode === null && agent.signalCode === null) {
    const exited = new Promise((r) => agent!.once('exit', r));
    agent.kill('SIGTERM');
    const t = setTimeout(() => agent?.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  }
  agent = undefined;
  dir?.remove();
  dir = undefined;
});

function site(): string {
  dir = tempDir('wg-bagent-');
  const gw = join(dir.path, 'gateway.yaml');
  writeFileSync(gw, ['apiVersion: wardgate/v1', 'kind: Gateway', 'site: st-a', 'gateway: gw-1', 'mode: router', 'interfaces: { uplink: lo, device: lo }', 'deviceSegments: [127.0.0.0/8]', 'management: { networks: [10.99.0.0/24] }', 'stateDir: state', 'policies: [policy.yaml]', ''].join('\n'));
  writeFileSync(
    join(dir.path, 'policy.yaml'),
    `apiVersion: wardgate/v1
kind: Policy
devices:
  - id: monitor
    class: monitor
    criticality: medium
    ipv4: 127.0.0.2
    backup:
      driver: { type: command, argv: [cat, monitor.conf] }
      schedule: { everyHours: 1 }
  - id: ct
    class: ct
    criticality: high
    ipv4: 127.0.0.3
    backup:
      driver: { type: command, argv: [sh, -c, "echo no route to ct >&2; exit 2"] }
      schedule: { everyHours: 1 }
      retries: 0
`,
  );
  writeFileSync(join(dir.path, 'monitor.conf'), 'alarm.volume=7\n');
  return gw;
}

function start(gw: string): void {
  out = '';
  const env = { ...process.env };
  delete env.WARDGATE_GATEWAY;
  delete env.WARDGATE_STATE_DIR;
  agent = spawn(process.execPath, [CLI, 'run', '--gateway', gw, '--backend', 'dry-run'], { stdio: ['ignore', 'pipe', 'pipe'], env });
  agent.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  agent.stderr?.on('data', (d: Buffer) => (out += d.toString()));
}

const lines = () => out.split('\n').flatMap((l) => {
  try {
    return [JSON.parse(l) as Record<string, unknown>];
  } catch {
    return [];
  }
});

async function until(what: string, cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; agent output:\n${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('wardgate run with devices that have backup: blocks', () => {
  it('without keys: the backup module says to run keygen, and the agent runs on', async () => {
    start(site());
    await until('the backup module\'s failure', () => lines().some((l) => l.module === 'backup'), 15000);
    const failed = lines().find((l) => l.module === 'backup')!;
    expect(failed.msg).toBe('module failed to start; running without it');
    expect(failed.err).toMatch(/backup-data\.key.*\(make the keys with: wardgate backup keygen\)|gateway-ed25519.*\(make the keys with: wardgate backup keygen\)/);
    // The agent runs on, and stops cleanly through its modules.
    await new Promise((r) => setTimeout(r, 500));
    expect(agent?.exitCode).toBe(null);
    const exited = new Promise((r) => agent!.once('exit', r));
    agent!.kill('SIGTERM');
    await exited;
    expect(lines().filter((l) => l.msg === 'module failed to start; running without it').map((l) => l.module)).toEqual(['backup']);
    expect(lines().some((l) => l.msg === 'agent stopped')).toBe(true);
  });

  it('with keys: stores the first scheduled backup within seconds, and raises backup.failed for a failing device', async () => {
    const gw = site();
    expect(spawnSync(process.execPath, [CLI, 'backup', 'keygen', '--gateway', gw], { encoding: 'utf8' }).status).toBe(0);
    start(gw);
    // Two scheduled devices: the first runs are spread over 10 s.
    await until('backup.failed for ct', () => lines().some((l) => l.event === 'backup.failed' && l.device === 'ct'), 20000);
    expect(lines().find((l) => l.event === 'backup.failed')?.msg).toMatch(/backup of ct \(command\) failed: .*no route to ct/);
    await until('a version of monitor', () => lines().some((l) => l.device === 'monitor' && l.msg === 'backup stored'), 20000);
    const list = spawnSync(process.execPath, [CLI, 'backup', 'list', 'monitor', '--gateway', gw], { encoding: 'utf8' });
    expect(list.status).toBe(0);
    expect(list.stdout).toMatch(/^monitor +1 .* command +text /m);
  }, 30000);
});
