// deploy/mosquitto/bridge.conf in two real Mosquitto processes on loopback: a site broker set up
// as deploy/mosquitto/README.md says (TLS client certificates, wardgate.acl) with the bridge, and
// a central broker (TLS client certificates, wardgate.acl + central.acl) that it bridges to over
// TLS. The clients are mqtt.js with certificates from a throwaway CA: a gateway at the site, a
// console centrally. The bridge file and the ACLs are used as shipped; only the site id, the
// central address and the certificate paths are replaced.
import { once } from 'node:events';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stopProcess } from '../../agent/util/process.js';
import { freePort, haveMosquitto, makePki, removePki, type Pki } from '../mqtt/brokers.js';

const ROOT = join(import.meta.dirname, '..', '..');
const DEPLOY = join(ROOT, 'deploy', 'mosquitto');
const SITE = 's';
const GW = 'g';
const BRIDGE = `bridge-${SITE}`;
const CONSOLE = 'console-central';

if (!haveMosquitto) console.warn('test/deploy/mosquitto-bridge.test.ts skipped: mosquitto or openssl not installed (apt-get install mosquitto openssl)');

interface Broker {
  port: number;
  child: ChildProcess;
  log: () => string;
}

async function listening(port: number, child: ChildProcess, log: () => string): Promise<void> {
  const end = Date.now() + 5000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`mosquitto exited: ${log()}`);
    const up = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (up) return;
    if (Date.now() > end) throw new Error(`mosquitto did not listen on ${port}: ${log()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Mosquitto with the README's site listener (TLS, client certificates, CN = username). */
async function startBroker(pki: Pki, name: string, acl: string, extra: string): Promise<Broker> {
  const port = await freePort();
  const aclFile = join(pki.dir, `${name}.acl`);
  writeFileSync(aclFile, acl);
  const conf = join(pki.dir, `${name}.conf`);
  writeFileSync(
    conf,
    [
      'per_listener_settings false',
      'allow_anonymous false',
      'persistence false',
      'log_dest stderr',
      'log_type error',
      'log_type warning',
      'log_type notice',
      `listener ${port} 127.0.0.1`,
      `cafile ${pki.ca}`,
      `certfile ${pki.serverCert}`,
      `keyfile ${pki.serverKey}`,
      'require_certificate true',
      'use_identity_as_username true',
      `acl_file ${aclFile}`,
      extra,
      '',
    ].join('\n'),
  );
  // Mosquitto started as root drops to its own user, which must read these.
  for (const f of [aclFile, conf]) chmodSync(f, 0o644);
  let log = '';
  const child = spawn('mosquitto', ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr?.on('data', (d: Buffer) => (log += d.toString()));
  await listening(port, child, () => log);
  return { port, child, log: () => log };
}

async function client(pki: Pki, broker: Broker, who: string, opts: IClientOptions = {}): Promise<MqttClient> {
  const c = pki.clients[who];
  if (!c) throw new Error(`no certificate for ${who}`);
  return mqtt.connectAsync(`mqtts://127.0.0.1:${broker.port}`, {
    protocolVersion: 5,
    reconnectPeriod: 0,
    ca: readFileSync(pki.ca),
    cert: readFileSync(c.cert),
    key: readFileSync(c.key),
    ...opts,
  });
}

interface Got {
  topic: string;
  payload: string;
  retain: boolean;
  responseTopic?: string;
  correlationData?: string;
}

async function subscriber(c: MqttClient, topic: string): Promise<Got[]> {
  const got: Got[] = [];
  c.on('message', (t, payload, packet) => {
    got.push({
      topic: t,
      payload: payload.toString(),
      retain: packet.retain,
      ...(packet.properties?.responseTopic !== undefined ? { responseTopic: packet.properties.responseTopic } : {}),
      ...(packet.properties?.correlationData !== undefined ? { correlationData: packet.properties.correlationData.toString() } : {}),
    });
  });
  const granted = await c.subscribeAsync(topic, { qos: 1 });
  expect(granted[0]?.qos).toBe(1);
  return got;
}

async function until<T>(what: string, check: () => T | undefined, ms = 10000, retry?: () => Promise<void>): Promise<T> {
  const end = Date.now() + ms;
  let next = 0;
  for (;;) {
    const v = check();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    if (retry && Date.now() >= next) {
      next = Date.now() + 500;
      await retry();
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('deploy/mosquitto/bridge.conf: what crosses', () => {
  it('sends out exactly what wardgate.acl lets a gateway write, and takes in only commands', () => {
    const lines = readFileSync(join(DEPLOY, 'bridge.conf'), 'utf8').split('\n');
    const topics = lines.filter((l) => l.startsWith('topic ')).map((l) => l.trim().split(/\s+/));
    const prefix = 'wardgate/v1/st-mary/';
    for (const t of topics) expect(t.slice(3), t.join(' ')).toEqual(['1', prefix, prefix]);
    const out = topics.filter((t) => t[2] === 'out').map((t) => `${prefix}${t[1]}`);
    const inbound = topics.filter((t) => t[2] === 'in').map((t) => `${prefix}${t[1]}`);
    expect(topics.every((t) => t[2] === 'out' || t[2] === 'in')).toBe(true);
    expect(inbound).toEqual([`${prefix}+/cmd/+`]);
    // The ACL's gateway patterns, with the site pinned and %u (the gateway) as one level.
    const acl = readFileSync(join(DEPLOY, 'wardgate.acl'), 'utf8').split('\n');
    const writes = acl.filter((l) => l.startsWith('pattern write ')).map((l) => l.slice('pattern write '.length).replace('wardgate/v1/+/%u/', `${prefix}+/`));
    expect(out.sort()).toEqual(writes.sort());
    const reads = acl.filter((l) => l.startsWith('pattern read ')).map((l) => l.slice('pattern read '.length).replace('wardgate/v1/+/%u/', `${prefix}+/`));
    expect(inbound).toEqual(reads);
  });
});

describe.skipIf(!haveMosquitto)('deploy/mosquitto/bridge.conf: a site broker bridged to a central one', () => {
  let pki: Pki;
  let central: Broker;
  let site: Broker;
  const clients: MqttClient[] = [];
  const open = async (broker: Broker, who: string, opts?: IClientOptions) => {
    const c = await client(pki, broker, who, opts);
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    pki = makePki({ clients: [GW, CONSOLE, BRIDGE] });
    const acl = await readFile(join(DEPLOY, 'wardgate.acl'), 'utf8');
    const centralAcl = (await readFile(join(DEPLOY, 'central.acl'), 'utf8')).replaceAll('st-mary', SITE);
    central = await startBroker(pki, 'central', `${acl}\n${centralAcl}`, '');
    const bridge = (await readFile(join(DEPLOY, 'bridge.conf'), 'utf8'))
      .replaceAll('st-mary', SITE)
      .replace('central.example.org:8883', `127.0.0.1:${central.port}`)
      .replace('/etc/mosquitto/wardgate/central-ca.crt', pki.ca)
      .replace(`/etc/mosquitto/wardgate/${BRIDGE}.crt`, pki.clients[BRIDGE]?.cert ?? '')
      .replace(`/etc/mosquitto/wardgate/${BRIDGE}.key`, pki.clients[BRIDGE]?.key ?? '')
      // Reconnect quickly in a test.
      .replace(/^restart_timeout .*$/m, 'restart_timeout 1');
    expect(bridge.split('\n').filter((l) => !l.startsWith('#') && l.includes('/etc/mosquitto'))).toEqual([]);
    site = await startBroker(pki, 'site', acl, bridge);
  });

  afterAll(async () => {
    await Promise.all(clients.map((c) => c.endAsync(true).catch(() => undefined)));
    for (const b of [site, central]) if (b) await stopProcess(b.child, once(b.child, 'exit'), 5000);
    if (pki) removePki(pki);
  });

  it("carries a gateway's retained status and its health out to a central console", async () => {
    const gw = await open(site, GW);
    const status = `wardgate/v1/${SITE}/${GW}/status`;
    const health = `wardgate/v1/${SITE}/${GW}/health`;
    // The bridge connects in its own time: publish until the first copy arrives centrally.
    const consoleLive = await open(central, CONSOLE);
    const live = await subscriber(consoleLive, health);
    const sent = await until(
      'the health message at the central broker',
      () => live.find((m) => m.topic === health),
      15000,
      async () => {
        await gw.publishAsync(health, JSON.stringify({ kind: 'health', at: Date.now() }), { qos: 1 });
      },
    );
    expect(JSON.parse(sent.payload)).toMatchObject({ kind: 'health' });

    // Retained on the site stays retained centrally: a console that comes later still sees it.
    await gw.publishAsync(status, JSON.stringify({ state: 'online' }), { qos: 1, retain: true });
    await sleep(300);
    const late = await open(central, CONSOLE, { clientId: 'late-console' });
    const seen = await subscriber(late, status);
    const got = await until('the retained status at the central broker', () => seen[0]);
    expect(got).toMatchObject({ topic: status, retain: true });
    expect(JSON.parse(got.payload)).toEqual({ state: 'online' });
  });

  it('carries a central command in, with its MQTT 5 response topic and correlation data', async () => {
    const gw = await open(site, GW, { clientId: 'gw-cmd' });
    const cmd = `wardgate/v1/${SITE}/${GW}/cmd/ping`;
    const got = await subscriber(gw, `wardgate/v1/${SITE}/${GW}/cmd/+`);
    const consoleC = await open(central, CONSOLE, { clientId: 'console-cmd' });
    const reply = `wardgate/v1/${SITE}/${GW}/cmd-response/console-cmd`;
    const answers = await subscriber(consoleC, reply);
    const m = await until(
      'the command at the site',
      () => got.find((x) => x.topic === cmd),
      15000,
      async () => {
        await consoleC.publishAsync(cmd, '{"name":"ping"}', { qos: 1, properties: { responseTopic: reply, correlationData: Buffer.from('c-1') } });
      },
    );
    expect(m).toMatchObject({ payload: '{"name":"ping"}', responseTopic: reply, correlationData: 'c-1' });

    // The gateway answers on the response topic, with the correlation data: it reaches the console.
    await gw.publishAsync(reply, '{"ok":true}', { qos: 1, properties: { correlationData: Buffer.from('c-1') } });
    const a = await until('the answer at the central console', () => answers[0]);
    expect(a).toMatchObject({ topic: reply, payload: '{"ok":true}', correlationData: 'c-1' });
  });

  it('carries nothing the other way: site commands stay at the site, central health stays central', async () => {
    // A console at the site publishes a command: "in" only, so it never reaches the central broker.
    const siteConsole = await open(site, CONSOLE, { clientId: 'site-console' });
    const centralWatch = await open(central, CONSOLE, { clientId: 'central-watch' });
    const atCentral = await subscriber(centralWatch, `wardgate/v1/${SITE}/#`);
    // A gateway connected straight to the central broker: its health must not come in to the site.
    const direct = await open(central, GW, { clientId: 'gw-direct' });
    const siteWatch = await open(site, CONSOLE, { clientId: 'site-watch' });
    const atSite = await subscriber(siteWatch, `wardgate/v1/${SITE}/#`);

    const siteCmd = `wardgate/v1/${SITE}/${GW}/cmd/local-only`;
    const centralHealth = `wardgate/v1/${SITE}/${GW}/health`;
    await siteConsole.publishAsync(siteCmd, 'x', { qos: 1 });
    await direct.publishAsync(centralHealth, '{"direct":true}', { qos: 1 });
    // A marker that does cross (out), published after both: once it is central, the command
    // would have been there too. The direct health is seen centrally (the subscription works).
    const gw = await open(site, GW, { clientId: 'gw-marker' });
    await gw.publishAsync(`wardgate/v1/${SITE}/${GW}/events`, '{"marker":1}', { qos: 1 });
    await until('the marker at the central broker', () => atCentral.find((m) => m.payload === '{"marker":1}'));
    await until('the direct health at the central broker', () => atCentral.find((m) => m.payload === '{"direct":true}'));
    await sleep(500);
    expect(atCentral.filter((m) => m.topic === siteCmd)).toEqual([]);
    expect(atSite.filter((m) => m.payload === '{"direct":true}')).toEqual([]);
    // The site watcher saw the site's own command: the check above is not vacuous.
    expect(atSite.some((m) => m.topic === siteCmd)).toBe(true);
  });
});
