// The agent end to end, as a console sees it: a real `wardgate run` process with its embedded
// broker, a Modbus device (modbus-serial's server) probed on loopback, and the console side
// (`wardgate console cmd`, a subscriber like mosquitto_sub). Dry-run backend: runs anywhere.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ModbusRTU from 'modbus-serial';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateConsoleKey } from '../../agent/console/keys.js';
import { DeviceHealthPayload, EventPayload, HealthPayload, StatusPayload } from '../../agent/mqtt/topics.js';
import { freePort, recorder, until } from '../mqtt/brokers.js';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'bin', 'wardgate.js');
const BASE = 'wardgate/v1/st-agent/gw-agent';

let dir = '';
let brokerPort = 0;
let modbusPort = 0;
let agent: ChildProcess | undefined;
let agentOut = '';
let modbus: { close(cb: () => void): void } | undefined;
let rec: Awaited<ReturnType<typeof recorder>> | undefined;
let key = { privateKeyPath: '', id: '' };

function startModbus(port: number): Promise<void> {
  return new Promise((resolve) => {
    const holding = [42, 7, 0, 0];
    const server = new ModbusRTU.ServerTCP(
      { getHoldingRegister: (addr: number) => holding[addr] ?? 0, getInputRegister: () => 0, getCoil: () => false, setRegister: () => {}, setCoil: () => {} },
      { host: '127.0.0.1', port, unitID: 1 },
    );
    server.on('initialized', () => resolve());
    modbus = server;
  });
}

function startAgent(): void {
  agentOut = '';
  agent = spawn(process.execPath, [CLI, 'run', '--gateway', join(dir, 'gateway.yaml'), '--backend', 'dry-run'], { stdio: ['ignore', 'pipe', 'pipe'] });
  agent.stdout?.on('data', (d: Buffer) => (agentOut += d.toString()));
  agent.stderr?.on('data', (d: Buffer) => (agentOut += d.toString()));
}

function consoleCmd(name: string, ...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(process.execPath, [CLI, 'console', 'cmd', 'st-agent/gw-agent', name, ...args, '--url', `mqtt://127.0.0.1:${brokerPort}`, '--key', key.privateKeyPath, '--key-id', key.id, '--json'], { encoding: 'utf8', timeout: 20000 });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

const byTopic = (suffix: string) => (rec?.messages ?? []).filter((m) => m.topic === `${BASE}/${suffix}`);

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'wg-agent-'));
  brokerPort = await freePort();
  modbusPort = await freePort();
  const k = generateConsoleKey(join(dir, 'keys'), 'biomed-console');
  key = { privateKeyPath: k.privateKeyPath, id: k.id };
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
  url: mqtt://127.0.0.1:${brokerPort}
  embeddedBroker: { port: ${brokerPort}, allowAnonymous: true } # the console side below connects anonymously
  reconnect: { minSeconds: 1, maxSeconds: 2 }
health: { intervalSeconds: 5 }
commands:
  publicKeys: [{ id: biomed-console, key: "${k.publicKey}" }]
`,
  );
  writeFileSync(
    join(dir, 'policy.yaml'),
    `apiVersion: wardgate/v1
kind: Policy
devices:
  - id: analyzer-01
    class: lab-analyzer
    criticality: high
    ipv4: 127.0.0.1
    probes:
      - { type: modbus, port: ${modbusPort}, read: { address: 0, count: 2 }, intervalSeconds: 1, timeoutMs: 500, failuresToDown: 2, successesToUp: 1 }
`,
  );
  await startModbus(modbusPort);
  startAgent();
  await until('the embedded broker', () => agentOut.includes('"online"') || agentOut.includes('online'), 15000);
  rec = await recorder(`mqtt://127.0.0.1:${brokerPort}`, [`${BASE}/#`], { protocolVersion: 4 });
}, 30000);

afterAll(async () => {
  await rec?.close().catch(() => undefined);
  agent?.kill('SIGKILL');
  await new Promise<void>((r) => (modbus ? modbus.close(() => r()) : r()));
  rmSync(dir, { recursive: true, force: true });
});

describe('wardgate run, seen from a console', () => {
  it('publishes a retained online birth, periodic health, and the device up, each valid against its schema', async () => {
    await until('status, health and device health', () => byTopic('status').length > 0 && byTopic('health').length > 0 && byTopic('devices/analyzer-01/health').length > 0, 15000);
    const status = StatusPayload.parse(byTopic('status')[0]?.payload);
    expect(status).toMatchObject({ state: 'online', site: 'st-agent', gateway: 'gw-agent', seq: 1 });
    expect(byTopic('status')[0]?.retain).toBe(true); // delivered as retained: it was published before we subscribed
    const health = HealthPayload.parse(byTopic('health')[0]?.payload);
    expect(health.memory.totalBytes).toBeGreaterThan(0);
    expect(health.interfaces.find((i) => i.role === 'uplink')).toMatchObject({ name: 'lo', present: true });
    const device = DeviceHealthPayload.parse(byTopic('devices/analyzer-01/health').at(-1)?.payload);
    expect(device).toMatchObject({ device: 'analyzer-01', state: 'up' });
    expect(device.probes[0]).toMatchObject({ type: 'modbus', ok: true, detail: { values: [42, 7] } });
  });

  it('answers a signed ping from `wardgate console cmd`, and refuses an unsigned command with its reason', async () => {
    const r = consoleCmd('ping');
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toMatchObject({ ok: true, command: 'ping', result: { pong: true } });

    // An unsigned command published by anyone who can reach the broker.
    const { default: mqtt } = await import('mqtt');
    const c = await mqtt.connectAsync(`mqtt://127.0.0.1:${brokerPort}`, { protocolVersion: 4 });
    const answers: Record<string, unknown>[] = [];
    c.on('message', (_t, p) => answers.push(JSON.parse(p.toString()) as Record<string, unknown>));
    await c.subscribeAsync(`${BASE}/cmd-response/#`);
    await c.publishAsync(`${BASE}/cmd/policy.apply`, JSON.stringify({ name: 'policy.apply', args: {} }), { qos: 1 });
    await until('the refusal', () => answers.some((a) => a.command === 'policy.apply'));
    expect(answers.find((a) => a.command === 'policy.apply')).toMatchObject({ ok: false, error: { code: 'E_MALFORMED' } });
    await c.endAsync();

    // Both are in the audit log, and the chain verifies.
    const audit = spawnSync(process.execPath, [CLI, 'audit', 'show', '--json', '--gateway', join(dir, 'gateway.yaml')], { encoding: 'utf8' });
    const records = JSON.parse(audit.stdout) as { action: string; actor: string; outcome: string }[];
    expect(records.map((x) => [x.action, x.actor, x.outcome])).toEqual(
      expect.arrayContaining([
        ['command.executed', 'biomed-console', 'ok'],
        ['command.refused', 'unknown', 'refused'],
      ]),
    );
    const verify = spawnSync(process.execPath, [CLI, 'audit', 'verify', '--gateway', join(dir, 'gateway.yaml')], { encoding: 'utf8' });
    expect(verify.status).toBe(0);
  });

  it('a device that stops answering goes down with a critical event (high criticality), and comes back up', async () => {
    await new Promise<void>((r) => modbus?.close(() => r()));
    modbus = undefined;
    await until('the down event', () => byTopic('events').some((m) => m.payload.kind === 'device.state' && (m.payload.data as { to?: string }).to === 'down'), 15000);
    const down = EventPayload.parse(byTopic('events').find((m) => m.payload.kind === 'device.state')?.payload);
    expect(down).toMatchObject({ severity: 'critical', device: 'analyzer-01', dedupKey: 'device.state:analyzer-01' });
    expect(byTopic('devices/analyzer-01/health').at(-1)?.payload).toMatchObject({ state: 'down' });
    await startModbus(modbusPort);
    await until('up again', () => byTopic('devices/analyzer-01/health').at(-1)?.payload.state === 'up', 15000);
  });

  it('SIGTERM publishes offline itself before it disconnects, and exits 0', async () => {
    const exited = new Promise<number | null>((r) => agent?.once('exit', (code) => r(code)));
    agent?.kill('SIGTERM');
    await until('offline', () => byTopic('status').some((m) => m.payload.state === 'offline'), 10000);
    expect(StatusPayload.parse(byTopic('status').at(-1)?.payload)).toMatchObject({ state: 'offline', reason: 'shutdown', seq: 1 });
    expect(await exited).toBe(0);
  });
});
