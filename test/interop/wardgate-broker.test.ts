// The whole chain on wardgate's own parts, over TLS with client certificates: `wardgate broker`
// (from broker.yaml) as the site broker, `wardgate run` as the gateway, and the console side
// (a subscriber with a console certificate, `wardgate console cmd`). Each a separate process.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateConsoleKey } from '../../agent/console/keys.js';
import { CommandResponsePayload, StatusPayload } from '../../agent/mqtt/topics.js';
import { freePort, makePki, recorder, removePki, until, type Pki } from '../mqtt/brokers.js';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'bin', 'wardgate.js');
const BASE = 'wardgate/v1/st-i/gw-1';

let pki: Pki;
let port = 0;
const children: ChildProcess[] = [];
let agentOut = '';
let rec: Awaited<ReturnType<typeof recorder>> | undefined;
let key = { privateKeyPath: '', id: '' };

function start(args: string[], sink?: (s: string) => void): ChildProcess {
  const c = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  c.stdout?.on('data', (d: Buffer) => sink?.(d.toString()));
  c.stderr?.on('data', (d: Buffer) => sink?.(d.toString()));
  children.push(c);
  return c;
}

beforeAll(async () => {
  pki = makePki({ clients: ['gw-1', 'console-central'] });
  port = await freePort();
  const k = generateConsoleKey(join(pki.dir, 'keys'), 'central');
  key = { privateKeyPath: k.privateKeyPath, id: k.id };
  writeFileSync(
    join(pki.dir, 'broker.yaml'),
    `listen: { host: 127.0.0.1, port: ${port} }
tls: { ca: ${pki.ca}, cert: ${pki.serverCert}, key: ${pki.serverKey}, requireClientCert: true }
site: st-i
consoles: [console-central]
`,
  );
  let brokerOut = '';
  start(['broker', '--config', join(pki.dir, 'broker.yaml')], (s) => (brokerOut += s));
  await until('the broker to listen', () => /listen/i.test(brokerOut), 10000);
  writeFileSync(
    join(pki.dir, 'gateway.yaml'),
    `apiVersion: wardgate/v1
kind: Gateway
site: st-i
gateway: gw-1
mode: router
interfaces: { uplink: lo, device: lo }
deviceSegments: [127.0.0.0/8]
management: { networks: [10.99.0.0/24] }
stateDir: state
policies: [policy.yaml]
mqtt:
  url: mqtts://127.0.0.1:${port}
  tls: { ca: ${pki.ca}, cert: ${pki.clients['gw-1']?.cert ?? ''}, key: ${pki.clients['gw-1']?.key ?? ''} }
  reconnect: { minSeconds: 1, maxSeconds: 2 }
commands:
  publicKeys: [{ id: central, key: "${k.publicKey}" }]
`,
  );
  writeFileSync(join(pki.dir, 'policy.yaml'), 'apiVersion: wardgate/v1\nkind: Policy\n');
  const console = pki.clients['console-central'];
  rec = await recorder(`mqtts://127.0.0.1:${port}`, [`${BASE}/#`], {
    protocolVersion: 4,
    clientId: 'wardgate-console-test',
    ca: readFileSync(pki.ca),
    cert: readFileSync(console?.cert ?? ''),
    key: readFileSync(console?.key ?? ''),
  });
  start(['run', '--gateway', join(pki.dir, 'gateway.yaml'), '--backend', 'dry-run'], (s) => (agentOut += s));
}, 30000);

afterAll(async () => {
  await rec?.close().catch(() => undefined);
  for (const c of children) c.kill('SIGKILL');
  removePki(pki);
});

describe('wardgate run -> wardgate broker (TLS, client certificates, ACL) -> console', () => {
  it('the gateway comes online under its certificate identity, and answers a signed command', async () => {
    await until('the birth', () => (rec?.messages ?? []).some((m) => m.topic === `${BASE}/status` && m.payload.state === 'online'), 15000);
    expect(StatusPayload.parse(rec?.messages.find((m) => m.topic === `${BASE}/status`)?.payload)).toMatchObject({ state: 'online', gateway: 'gw-1', seq: 1 });
    const c = pki.clients['console-central'];
    const r = spawnSync(
      process.execPath,
      [CLI, 'console', 'cmd', 'st-i/gw-1', 'ping', '--url', `mqtts://127.0.0.1:${port}`, '--key', key.privateKeyPath, '--key-id', key.id, '--ca', pki.ca, '--cert', c?.cert ?? '', '--cert-key', c?.key ?? '', '--json'],
      { encoding: 'utf8', timeout: 20000 },
    );
    expect(r.status, r.stderr + agentOut).toBe(0);
    expect(CommandResponsePayload.parse(JSON.parse(r.stdout))).toMatchObject({ ok: true, command: 'ping', gateway: 'gw-1' });
  });

  it('a clean stop of the gateway publishes offline through the broker', async () => {
    const agent = children[1];
    agent?.kill('SIGTERM');
    await until('offline', () => (rec?.messages ?? []).some((m) => m.topic === `${BASE}/status` && m.payload.state === 'offline'), 10000);
    expect(rec?.messages.filter((m) => m.topic === `${BASE}/status`).at(-1)?.payload).toMatchObject({ state: 'offline', reason: 'shutdown' });
  });
});
