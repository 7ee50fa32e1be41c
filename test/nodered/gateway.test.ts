// Node-RED on the gateway, through the real path: `wardgate run` with a nodeRed block starts
// Node-RED with flows/gateway.json behind a login; the flow polls a simulated lab analyzer over
// Modbus TCP and, when its alarm register is set, raises a wardgate event that reaches a console
// over MQTT; a Node-RED that dies is started again; and it stops with the agent.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLabAnalyzer, type LabAnalyzer } from '../../hardware/sim/lab-analyzer.js';
import { assertBuilt, CLI, processGone, ROOT, sleep, until } from '../integration/site.js';
import { freePort } from '../mqtt/brokers.js';

const HOST = '127.0.0.31';
const PASSWORD = 'biomed-pw-1';

// Node-RED's own bcrypt, as `node-red admin hash-pw` uses it.
const bcrypt = createRequire(createRequire(import.meta.url).resolve('node-red'))('bcryptjs') as { hashSync(pw: string, rounds: number): string };

interface Event {
  kind: string;
  severity: string;
  device?: string;
  message: string;
  data?: Record<string, unknown>;
}

let dir: string;
let analyzer: LabAnalyzer;
let agent: ChildProcess | undefined;
let agentExited: Promise<number | null>;
let agentOut = '';
let client: MqttClient | undefined;
let url: string;
const events: Event[] = [];
const shipped = readFileSync(join(ROOT, 'flows', 'gateway.json'));

const nodeRedPid = (): number | undefined => {
  const m = [...agentOut.matchAll(/"pid":(\d+),"msg":"Node-RED runs the gateway's flows"/g)].at(-1);
  return m ? Number(m[1]) : undefined;
};

async function login(password: string): Promise<Response> {
  return fetch(`${url}/admin/auth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_id: 'node-red-admin', grant_type: 'password', scope: '*', username: 'biomed', password }),
  });
}

beforeAll(async () => {
  assertBuilt();
  dir = mkdtempSync(join(tmpdir(), 'wg-nodered-'));
  const [brokerPort, modbusPort, nodeRedPort] = [await freePort(), await freePort(), await freePort()];
  analyzer = await startLabAnalyzer(modbusPort, 1, HOST);
  writeFileSync(join(dir, 'nodered-admin.hash'), `${bcrypt.hashSync(PASSWORD, 8)}\n`, { mode: 0o600 });
  writeFileSync(
    join(dir, 'gateway.yaml'),
    `apiVersion: wardgate/v1
kind: Gateway
site: st-flows
gateway: gw-lab-01
mode: router
interfaces: { uplink: lo, device: lo }
deviceSegments: [127.0.0.0/8]
management: { networks: [10.99.0.0/24] }
stateDir: state
policies: [lab.yaml]
mqtt:
  url: mqtt://127.0.0.1:${brokerPort}
  embeddedBroker: { port: ${brokerPort}, allowAnonymous: true }
nodeRed:
  port: ${nodeRedPort}
  adminAuth: { username: biomed, passwordHashFile: nodered-admin.hash }
  env: { LAB_ANALYZER_HOST: "${HOST}", LAB_ANALYZER_PORT: "${modbusPort}", LAB_ANALYZER_DEVICE: lab-analyzer-01 }
`,
  );
  writeFileSync(
    join(dir, 'lab.yaml'),
    `apiVersion: wardgate/v1
kind: Policy
devices:
  - { id: lab-analyzer-01, class: lab-analyzer, criticality: high, mode: monitor, ipv4: ${HOST} }
`,
  );
  url = `http://127.0.0.1:${nodeRedPort}`;
  agent = spawn(process.execPath, [CLI, 'run', '--gateway', join(dir, 'gateway.yaml'), '--backend', 'dry-run'], { stdio: ['ignore', 'pipe', 'pipe'] });
  agent.stdout!.on('data', (d: Buffer) => (agentOut += d.toString()));
  agent.stderr!.on('data', (d: Buffer) => (agentOut += d.toString()));
  agentExited = new Promise((r) => agent!.once('exit', (code) => r(code)));
  client = await until('the embedded broker', async () => mqtt.connectAsync(`mqtt://127.0.0.1:${brokerPort}`, { reconnectPeriod: 0 }).catch(() => undefined), 15000, 200);
  client.on('message', (_t, payload) => events.push(JSON.parse(payload.toString()) as Event));
  await client.subscribeAsync('wardgate/v1/st-flows/gw-lab-01/events', { qos: 1 });
  await until('Node-RED to run the flows', () => nodeRedPid(), 90000, 200).catch((err: Error) => {
    throw new Error(`${err.message}\n${agentOut}`);
  });
}, 120000);

afterAll(async () => {
  await client?.endAsync();
  if (agent && agent.exitCode === null) {
    agent.kill('SIGKILL');
    await agentExited;
  }
  const pid = nodeRedPid();
  if (pid !== undefined && !processGone(pid)) process.kill(pid, 'SIGKILL');
  await analyzer?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('Node-RED on the gateway', () => {
  it('runs a copy of flows/gateway.json, its editor and admin API behind the login', async () => {
    expect((await fetch(`${url}/admin/flows`)).status).toBe(401);
    expect([401, 403]).toContain((await login('not-it')).status);
    const ok = await login(PASSWORD);
    expect(ok.status).toBe(200);
    const token = ((await ok.json()) as { access_token: string }).access_token;
    const flows = await fetch(`${url}/admin/flows`, { headers: { authorization: `Bearer ${token}` } });
    expect(flows.status).toBe(200);
    const ids = ((await flows.json()) as { id: string }[]).map((n) => n.id);
    expect(ids).toEqual(expect.arrayContaining(['gwf-poll', 'gwf-read', 'gwf-edge', 'gwf-raise']));
    // The flows' own HTTP endpoints want the same login.
    const basic = (p: string) => ({ authorization: `Basic ${Buffer.from(`biomed:${p}`).toString('base64')}` });
    expect((await fetch(`${url}/anything`)).status).toBe(401);
    expect((await fetch(`${url}/anything`, { headers: basic('not-it') })).status).toBe(401);
    expect((await fetch(`${url}/anything`, { headers: basic(PASSWORD) })).status).toBe(404); // in, and nothing there
    // The editor deploys to the copy in the state directory, never to the installation.
    expect(readFileSync(join(dir, 'state', 'node-red', 'flows.json'))).toEqual(shipped);
    // The agent's WARDGATE_* settings are not Node-RED's; the events' URL and token are.
    const environ = readFileSync(`/proc/${nodeRedPid()}/environ`, 'utf8').split('\0');
    expect(environ).toEqual(expect.arrayContaining([expect.stringMatching(/^WARDGATE_EVENTS_URL=http:\/\/127\.0\.0\.1:\d+\/v1\/events$/), expect.stringMatching(/^WARDGATE_EVENTS_TOKEN=.{43}$/), 'LAB_ANALYZER_DEVICE=lab-analyzer-01']));
    expect(environ.some((v) => v.startsWith('WARDGATE_NODERED_ADMIN_HASH='))).toBe(false);
  });

  it('raises a wardgate event when the analyzer\'s alarm register is set, and another when it clears', async () => {
    // Polling a quiet analyzer raises nothing.
    await sleep(3000);
    expect(events.filter((e) => e.kind.startsWith('gateway-flow.'))).toEqual([]);
    analyzer.registers[1] = 4;
    const raised = await until('the alarm event', () => events.find((e) => e.kind === 'gateway-flow.analyzer-alarm'), 15000, 100);
    expect(raised).toMatchObject({ severity: 'warning', device: 'lab-analyzer-01', message: 'lab-analyzer-01 reports an alarm: register 1 reads 4 (bit(s) 2)', data: { register: 1, value: 4, bits: [2] } });
    analyzer.registers[1] = 0;
    const cleared = await until('the cleared event', () => events.find((e) => e.kind === 'gateway-flow.analyzer-alarm-cleared'), 15000, 100);
    expect(cleared).toMatchObject({ severity: 'info', device: 'lab-analyzer-01' });
    expect(events.filter((e) => e.kind === 'gateway-flow.analyzer-alarm')).toHaveLength(1);
  });

  it('starts Node-RED again when it dies, and says so', async () => {
    const first = nodeRedPid()!;
    process.kill(first, 'SIGKILL');
    const said = await until('the node-red.exited event', () => events.find((e) => e.kind === 'node-red.exited'), 10000, 100);
    expect(said.message).toMatch(/^Node-RED exited \(SIGKILL\); starting it again in 1 s/);
    await until('Node-RED again', () => (nodeRedPid() !== first ? nodeRedPid() : undefined), 90000, 200);
    expect((await fetch(`${url}/admin/flows`)).status).toBe(401);
  }, 120000);

  it('stops with the agent: no Node-RED left, nothing listening', async () => {
    const pid = nodeRedPid()!;
    agent!.kill('SIGTERM');
    expect(await agentExited).toBe(0);
    expect(processGone(pid)).toBe(true);
    await expect(fetch(`${url}/admin/flows`)).rejects.toThrow();
    expect(readFileSync(join(ROOT, 'flows', 'gateway.json'))).toEqual(shipped);
  });
});
