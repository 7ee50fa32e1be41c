// The gateway file's nodeRed block: Node-RED never starts without a login. A block without one,
// a hash file that is missing or holds no bcrypt hash, a flow file that is not there: `wardgate
// run` stops with exit 3, the file, line, column and field, before anything starts.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { GatewaySchema } from '../../agent/config/schema.js';
import { assertBuilt, CLI } from '../integration/site.js';

const HASH = '$2b$08$0ngi3RpFpV8o9xXl3K3wAOUV6V.k1e0Q6pZ8n0bVrC6bK7l4CqS5a';
const dirs: string[] = [];

afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function site(nodeRed: string, files: Record<string, string> = {}): string {
  const dir = mkdtempSync(join(tmpdir(), 'wg-nodered-config-'));
  dirs.push(dir);
  writeFileSync(
    join(dir, 'gateway.yaml'),
    `apiVersion: wardgate/v1
kind: Gateway
site: st-flows
gateway: gw-1
mode: router
interfaces: { uplink: lo, device: lo }
deviceSegments: [127.0.0.0/8]
management: { networks: [10.99.0.0/24] }
stateDir: state
policies: [lab.yaml]
${nodeRed}`,
  );
  writeFileSync(join(dir, 'lab.yaml'), 'apiVersion: wardgate/v1\nkind: Policy\ndevices: []\n');
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

const run = (dir: string) => spawnSync(process.execPath, [CLI, 'run', '--gateway', join(dir, 'gateway.yaml'), '--backend', 'dry-run'], { encoding: 'utf8', timeout: 20000 });

describe('the nodeRed block', () => {
  it('is optional, and off without it; its defaults', () => {
    const base = { apiVersion: 'wardgate/v1', kind: 'Gateway', site: 's', gateway: 'g', mode: 'router', interfaces: { uplink: 'lo', device: 'lo' }, deviceSegments: ['127.0.0.0/8'], management: { networks: ['10.99.0.0/24'] } };
    expect(GatewaySchema.parse(base).nodeRed).toBeUndefined();
    expect(GatewaySchema.parse({ ...base, nodeRed: { adminAuth: { username: 'biomed', passwordHashFile: 'h' } } }).nodeRed).toEqual({
      enabled: true,
      host: '127.0.0.1',
      port: 1880,
      flowFile: 'flows/gateway.json',
      adminAuth: { username: 'biomed', passwordHashFile: 'h' },
      env: {},
    });
    // Switched off, it needs no login.
    expect(GatewaySchema.safeParse({ ...base, nodeRed: { enabled: false } }).success).toBe(true);
  });

  it('without adminAuth: exit 3 naming nodeRed.adminAuth, and nothing started', () => {
    assertBuilt();
    const dir = site('nodeRed:\n  port: 41880\n');
    const r = run(dir);
    expect(r.status, r.stderr).toBe(3);
    expect(r.stderr).toMatch(/^gateway\.yaml:12:3: error: nodeRed\.adminAuth: required when Node-RED runs: its editor and admin API need a login/m);
    expect(existsSync(join(dir, 'state'))).toBe(false);
  });

  it('a hash file that is missing, or holds a password instead of a hash: exit 3 naming passwordHashFile', () => {
    assertBuilt();
    const missing = site('nodeRed:\n  adminAuth: { username: biomed, passwordHashFile: admin.hash }\n');
    const r1 = run(missing);
    expect(r1.status, r1.stderr).toBe(3);
    expect(r1.stderr).toMatch(/^gateway\.yaml:12:52: error: nodeRed\.adminAuth\.passwordHashFile: \S+admin\.hash: file not found; make it with: npx node-red admin hash-pw/m);
    expect(existsSync(join(missing, 'state'))).toBe(false);
    const plain = site('nodeRed:\n  adminAuth:\n    username: biomed\n    passwordHashFile: admin.hash\n', { 'admin.hash': 'hunter2\n' });
    const r2 = run(plain);
    expect(r2.status, r2.stderr).toBe(3);
    expect(r2.stderr).toMatch(/^gateway\.yaml:14:23: error: nodeRed\.adminAuth\.passwordHashFile: \S+admin\.hash holds no bcrypt hash/m);
    expect(r2.stderr).not.toContain('hunter2');
  });

  it('a flow file that is not there, or not a flow: exit 3 naming flowFile', () => {
    assertBuilt();
    const auth = '  adminAuth: { username: biomed, passwordHashFile: admin.hash }\n';
    const r1 = run(site(`nodeRed:\n  flowFile: flows/mine.json\n${auth}`, { 'admin.hash': `${HASH}\n` }));
    expect(r1.status, r1.stderr).toBe(3);
    expect(r1.stderr).toMatch(/^gateway\.yaml:12:13: error: nodeRed\.flowFile: flows\/mine\.json: not found beside the gateway file \(\S+\) nor in the wardgate installation/m);
    const r2 = run(site(`nodeRed:\n  flowFile: mine.json\n${auth}`, { 'admin.hash': `${HASH}\n`, 'mine.json': '{"not":"a flow"}' }));
    expect(r2.status, r2.stderr).toBe(3);
    expect(r2.stderr).toMatch(/nodeRed\.flowFile: \S+mine\.json is not a Node-RED flow file: not a JSON array of nodes/);
  });

  it('environment names of the agent\'s own, and bad ones: exit 3', () => {
    assertBuilt();
    const r = run(site('nodeRed:\n  adminAuth: { username: biomed, passwordHashFile: admin.hash }\n  env: { WARDGATE_EVENTS_TOKEN: x, lab-host: y }\n', { 'admin.hash': `${HASH}\n` }));
    expect(r.status, r.stderr).toBe(3);
    expect(r.stderr).toMatch(/nodeRed\.env\.WARDGATE_EVENTS_TOKEN: names that start with WARDGATE_ are the agent's/);
    expect(r.stderr).toMatch(/nodeRed\.env\.lab-host: an environment variable name/);
  });
});
