// Node-RED is optional and loaded only when asked for (DESIGN.md, "Small"): a plain `wardgate
// run` loads no Node-RED module and not even wardgate's Node-RED module; with a nodeRed block the
// agent loads its module, and Node-RED itself runs in a child process, never in the agent.
// Every module a process loads is recorded by a preload (fixtures/record-modules.mjs); the
// recorder is first shown to see node-red when a process does load it.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertBuilt, CLI, until } from '../integration/site.js';
import { freePort } from '../mqtt/brokers.js';

const RECORDER = join(import.meta.dirname, 'fixtures', 'record-modules.mjs');
const bcrypt = createRequire(createRequire(import.meta.url).resolve('node-red'))('bcryptjs') as { hashSync(pw: string, rounds: number): string };

let dir: string;
const isNodeRed = (line: string) => /\/node_modules\/(node-red|@node-red)\//.test(line);
const isOurs = (line: string) => /\/dist\/agent\/nodered\//.test(line);

beforeAll(() => {
  assertBuilt();
  dir = mkdtempSync(join(tmpdir(), 'wg-lazy-'));
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Runs `wardgate run` under the recorder until `ready` shows in its log, then stops it; the modules it loaded. */
async function modulesOfRun(name: string, nodeRed: string, ready: RegExp): Promise<string[]> {
  const port = await freePort();
  writeFileSync(
    join(dir, `${name}.yaml`),
    `apiVersion: wardgate/v1
kind: Gateway
site: st-lazy
gateway: gw-1
mode: router
interfaces: { uplink: lo, device: lo }
deviceSegments: [127.0.0.0/8]
management: { networks: [10.99.0.0/24] }
stateDir: state-${name}
policies: [lab.yaml]
mqtt: { url: "mqtt://127.0.0.1:${port}", embeddedBroker: { port: ${port}, allowAnonymous: true } }
${nodeRed}`,
  );
  writeFileSync(join(dir, 'lab.yaml'), 'apiVersion: wardgate/v1\nkind: Policy\ndevices: []\n');
  const file = join(dir, `${name}.modules`);
  const child = spawn(process.execPath, ['--import', RECORDER, CLI, 'run', '--gateway', join(dir, `${name}.yaml`), '--backend', 'dry-run'], {
    env: { ...process.env, WARDGATE_TEST_MODULES: file },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  try {
    await until(`${name}: ${ready.source}`, () => ready.test(out) || (child.exitCode !== null ? 'exited' : undefined), 90000, 100);
    expect(child.exitCode, out).toBeNull();
    child.kill('SIGTERM');
    expect(await exited, out).toBe(0);
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
  const lines = readFileSync(file, 'utf8').split('\n');
  expect(lines).toContain('exit'); // the recorder saw the whole life of the process
  return lines;
}

describe('Node-RED is loaded only when asked for', () => {
  it('the recorder sees node-red in a process that loads it', () => {
    const file = join(dir, 'control.modules');
    const r = spawnSync(process.execPath, ['--import', RECORDER, '--input-type=module', '-e', "import { createRequire } from 'node:module'; createRequire(process.cwd() + '/')('node-red');"], {
      env: { ...process.env, WARDGATE_TEST_MODULES: file },
      encoding: 'utf8',
      timeout: 60000,
    });
    expect(r.status, r.stderr).toBe(0);
    expect(readFileSync(file, 'utf8').split('\n').filter(isNodeRed).length).toBeGreaterThan(10);
  });

  it('a plain wardgate run loads none of Node-RED, nor wardgate\'s Node-RED module', async () => {
    const lines = await modulesOfRun('plain', '', /"msg":"agent started"/);
    expect(lines.filter((l) => /\/dist\/agent\/controller\.js$/.test(l))).not.toEqual([]); // it did record the agent
    expect(lines.filter(isNodeRed)).toEqual([]);
    // The block's schema is part of the gateway file's; nothing else of it.
    expect(lines.filter(isOurs).map((l) => l.replace(/^.*\/dist\/agent\//, ''))).toEqual(['nodered/schema.js']);
  });

  it('with a nodeRed block the agent loads its module, and Node-RED runs in a child process', async () => {
    writeFileSync(join(dir, 'admin.hash'), `${bcrypt.hashSync('pw', 8)}\n`, { mode: 0o600 });
    const lines = await modulesOfRun('flows', `nodeRed: { port: ${await freePort()}, adminAuth: { username: biomed, passwordHashFile: admin.hash } }\n`, /"msg":"Node-RED runs the gateway's flows"/);
    expect(lines.filter(isOurs)).toEqual(expect.arrayContaining([expect.stringMatching(/\/dist\/agent\/nodered\/module\.js$/)]));
    expect(lines.filter(isNodeRed)).toEqual([]);
  });
});
