// The wardgate broker (agent/mqtt/broker.ts): who gets in (anonymous, passwords, TLS client
// certificates) and what each identity may do (the ACL of deploy/mosquitto/wardgate.acl).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { brokerCommand, loadBrokerConfig } from '../../agent/cli/broker.js';
import { mayPublish, maySubscribe, parseUsersFile, startBroker, startEmbeddedBroker, type BrokerOptions, type EmbeddedBroker } from '../../agent/mqtt/broker.js';
import { freePort, makePki, removePki, until, type Pki } from './brokers.js';

const CLI = join(import.meta.dirname, '..', '..', 'bin', 'wardgate.js');
const haveOpenssl = spawnSync('sh', ['-c', 'command -v openssl'], { stdio: 'ignore' }).status === 0;
const SITE = 'st-b';
const base = (gw: string) => `wardgate/v1/${SITE}/${gw}`;

let dir = '';
const cleanups: (() => unknown)[] = [];
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'wg-broker-'));
});
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()?.();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function broker(opts: Partial<BrokerOptions> = {}): Promise<EmbeddedBroker> {
  const b = await startBroker({ host: '127.0.0.1', port: await freePort(), allowAnonymous: false, consoles: ['console-central'], site: SITE, ...opts });
  cleanups.push(() => b.close());
  return b;
}

let clients = 0;
/** Connects as `opts.username` (or, with `as`, the certificate's CN) with a client id of that identity's own. */
async function connect(url: string, opts: IClientOptions & { as?: string } = {}): Promise<MqttClient> {
  const { as, ...rest } = opts;
  const who = as ?? rest.username;
  const clientId = rest.clientId ?? (who !== undefined ? `t${++clients}-${who}` : `t${++clients}`);
  const c = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000, clientId, ...rest });
  cleanups.push(() => c.endAsync(true));
  return c;
}

function refusal(p: Promise<unknown>): Promise<number | string> {
  return p.then(
    () => 'connected',
    (err: Error & { code?: number }) => err.code ?? err.message,
  );
}

/** A connection the TLS layer refuses: mqtt.connectAsync may never settle, so watch the events. */
function tlsRefusal(url: string, opts: IClientOptions): Promise<string> {
  const c = mqtt.connect(url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 3000, ...opts });
  cleanups.push(() => c.endAsync(true));
  return new Promise((resolve) => {
    c.once('connect', () => resolve('connected'));
    c.once('error', (e) => resolve(`error: ${e.message}`));
    c.once('close', () => resolve('closed'));
  });
}

const users = () => join(dir, `users-${Math.random().toString(36).slice(2)}`);
async function passwd(file: string, user: string, password: string): Promise<void> {
  const out: string[] = [];
  const code = await brokerCommand('passwd', [file, user], {}, { out: (l) => out.push(l), err: (l) => out.push(l) }, Readable.from([`${password}\n`]));
  expect(code, out.join('\n')).toBe(0);
}

describe('who gets in', () => {
  it('refuses anonymous clients by default (not authorized), accepts them when configured', async () => {
    const closed = await broker();
    expect(await refusal(connect(`mqtt://127.0.0.1:${closed.port}`))).toBe(5);
    const open = await broker({ allowAnonymous: true });
    const c = await connect(`mqtt://127.0.0.1:${open.port}`);
    // With console rights: it may read everything.
    const granted = await c.subscribeAsync('wardgate/v1/#', { qos: 1 });
    expect(granted[0]?.qos).toBe(1);
  });

  it('checks passwords from the users file (scrypt) and in-memory users', async () => {
    const file = users();
    await passwd(file, 'console-central', 'right horse battery');
    const b = await broker({ usersFile: file, extraUsers: [{ username: 'gw-agent', password: 'in-memory' }] });
    const url = `mqtt://127.0.0.1:${b.port}`;
    await connect(url, { username: 'console-central', password: 'right horse battery' });
    expect(await refusal(connect(url, { username: 'console-central', password: 'wrong' }))).toBe(4);
    expect(await refusal(connect(url, { username: 'nobody', password: 'right horse battery' }))).toBe(4);
    expect(await refusal(connect(url, { username: 'console-central' }))).toBe(4);
    await connect(url, { username: 'gw-agent', password: 'in-memory' });
    expect(await refusal(connect(url, { username: 'gw-agent', password: 'in-memoryX' }))).toBe(4);
  });

  it('a client id belongs to its identity: no gateway can knock another offline by reusing its id', async () => {
    const b = await broker({ extraUsers: ['gw-1', 'gw-2', 'console-central'].map((u) => ({ username: u, password: `pw-${u}` })) });
    const url = `mqtt://127.0.0.1:${b.port}`;
    const as = (u: string, clientId: string) => connect(url, { username: u, password: `pw-${u}`, clientId });
    const gw2 = await as('gw-2', `wardgate-${SITE}-gw-2`);
    let kicked = false;
    gw2.on('close', () => (kicked = true));
    // gw-1 and a console try gw-2's own id: identifier rejected (2), and gw-2 stays connected.
    expect(await refusal(as('gw-1', `wardgate-${SITE}-gw-2`))).toBe(2);
    expect(await refusal(as('console-central', `wardgate-${SITE}-gw-2`))).toBe(2);
    // A gateway uses ids of its own form only; a console may not use the wardgate- prefix.
    expect(await refusal(as('gw-1', 'mqttjs_1234'))).toBe(2);
    expect(await refusal(as('console-central', 'wardgate-anything'))).toBe(2);
    await as('console-central', 'wardgate-console-7f3a');
    await new Promise((r) => setTimeout(r, 200));
    expect(kicked).toBe(false);
    expect(gw2.connected).toBe(true);
  });

  it('refuses to listen beyond loopback without TLS, and anonymous clients beyond loopback at all', async () => {
    await expect(startBroker({ host: '0.0.0.0', port: 0, allowAnonymous: false, consoles: [] })).rejects.toThrow(/without TLS/);
    await expect(startEmbeddedBroker({ host: '0.0.0.0', port: 0 })).rejects.toThrow(/loopback only/);
    await expect(startBroker({ host: '0.0.0.0', port: 0, allowAnonymous: true, consoles: [], tls: { ca: 'x', cert: 'x', key: 'x', requireClientCert: true } })).rejects.toThrow(/anonymous/);
  });
});

describe.skipIf(!haveOpenssl)('TLS client certificates', () => {
  let pki: Pki;
  beforeAll(() => {
    pki = makePki({ clients: ['gw-2', 'console-central'] });
  });
  afterAll(() => removePki(pki));

  it('takes the identity from the CN, and refuses a certificate from another CA', async () => {
    const b = await broker({ tls: { ca: pki.ca, cert: pki.serverCert, key: pki.serverKey, requireClientCert: false } });
    const url = `mqtts://127.0.0.1:${b.port}`;
    const tls = (cn: string) => ({ as: cn, ca: readFileSync(pki.ca), cert: readFileSync(pki.clients[cn]?.cert ?? ''), key: readFileSync(pki.clients[cn]?.key ?? '') });
    const con = await connect(url, tls('console-central'));
    const got: string[] = [];
    con.on('message', (t) => got.push(t));
    await con.subscribeAsync('wardgate/v1/#', { qos: 1 });
    // gw-1 by its certificate (the username is ignored): its own status passes, gw-2's would not.
    const gw1 = await connect(url, { ...tls('gw-1'), username: 'gw-2' });
    await gw1.publishAsync(`${base('gw-1')}/status`, '{}', { qos: 1 });
    await until('gw-1 status', () => got.includes(`${base('gw-1')}/status`));
    // The stranger's certificate is not signed by the site CA.
    const stranger = { ca: readFileSync(pki.ca), cert: readFileSync(pki.strangerCert), key: readFileSync(pki.strangerKey) };
    expect(await refusal(connect(url, stranger))).toBe(5);
    // Requiring certificates: the TLS handshake itself fails without one.
    const strict = await broker({ tls: { ca: pki.ca, cert: pki.serverCert, key: pki.serverKey, requireClientCert: true } });
    expect(await tlsRefusal(`mqtts://127.0.0.1:${strict.port}`, { ca: readFileSync(pki.ca) })).not.toBe('connected');
    expect(await tlsRefusal(`mqtts://127.0.0.1:${strict.port}`, stranger)).not.toBe('connected');
    await connect(`mqtts://127.0.0.1:${strict.port}`, tls('gw-2'));
  });
});

describe('the ACL (deploy/mosquitto/wardgate.acl)', () => {
  async function site() {
    const file = users();
    for (const u of ['gw-1', 'gw-2', 'console-central']) await passwd(file, u, `pw-${u}`);
    const b = await broker({ usersFile: file });
    const url = `mqtt://127.0.0.1:${b.port}`;
    const as = (u: string) => connect(url, { username: u, password: `pw-${u}` });
    const con = await as('console-central');
    const seen: { topic: string; payload: string }[] = [];
    con.on('message', (topic, p) => seen.push({ topic, payload: p.toString() }));
    await con.subscribeAsync('wardgate/v1/#', { qos: 1 });
    return { url, as, con, seen };
  }
  const closedSoon = (c: MqttClient) => new Promise<boolean>((resolve) => {
    const t = setTimeout(() => resolve(false), 2000);
    c.once('close', () => {
      clearTimeout(t);
      resolve(true);
    });
  });

  it('a gateway publishes its own topics; not under another gateway, and not its own cmd/ (the connection is closed)', async () => {
    const { as, seen } = await site();
    const gw1 = await as('gw-1');
    await gw1.publishAsync(`${base('gw-1')}/status`, 'own', { qos: 1, retain: true });
    await gw1.publishAsync(`${base('gw-1')}/devices/ct-01/health`, 'dev', { qos: 1 });
    await gw1.publishAsync(`${base('gw-1')}/cmd-response/abc`, 'answer', { qos: 1 });
    await until('own topics', () => seen.length === 3);

    for (const topic of [`${base('gw-2')}/status`, `${base('gw-1')}/cmd/reboot`, 'wardgate/v1/other-site/gw-1/status', 'elsewhere/x']) {
      const c = await as('gw-1');
      const closed = closedSoon(c);
      c.publish(topic, 'forged', { qos: 0 });
      expect(await closed, topic).toBe(true);
    }
    // A console subscribed to everything saw none of them.
    await new Promise((r) => setTimeout(r, 200));
    expect(seen.map((m) => m.payload)).toEqual(['own', 'dev', 'answer']);
  });

  it('a gateway subscribes only to its own commands (0x80 otherwise); a console commands it', async () => {
    const { as, con } = await site();
    const gw1 = await as('gw-1');
    const got: string[] = [];
    gw1.on('message', (t) => got.push(t));
    // mqtt.js reports a 0x80 grant as an error; the SUBACK itself has the codes.
    const granted = await new Promise<number[]>((resolve) => {
      gw1.on('packetreceive', (p) => {
        if (p.cmd === 'suback') resolve(p.granted.map((g) => (typeof g === 'number' ? g : (g as { qos: number }).qos)));
      });
      gw1.subscribe([`${base('gw-1')}/cmd/+`, `${base('gw-2')}/cmd/+`, 'wardgate/v1/#', `${base('gw-1')}/cmd/#`], { qos: 1 }, () => undefined);
    });
    expect(granted).toEqual([1, 128, 128, 128]);
    expect(gw1.connected).toBe(true);
    await con.publishAsync(`${base('gw-2')}/cmd/ping`, 'for gw-2', { qos: 1 });
    await con.publishAsync(`${base('gw-1')}/cmd/ping`, 'for gw-1', { qos: 1 });
    await until('gw-1 command', () => got.length > 0);
    await new Promise((r) => setTimeout(r, 200));
    expect(got).toEqual([`${base('gw-1')}/cmd/ping`]);
    // A console publishes commands only.
    const closed = closedSoon(con);
    con.publish(`${base('gw-1')}/status`, 'forged');
    expect(await closed).toBe(true);
  });

  it('matches topics level by level', () => {
    const gw = { id: 'gw-1', console: false };
    const console_ = { id: 'console-central', console: true };
    expect(mayPublish(gw, 'wardgate/v1/any/gw-1/events')).toBe(true);
    expect(mayPublish(gw, 'wardgate/v1/any/gw-1/events', 'st-b')).toBe(false);
    expect(mayPublish(gw, 'wardgate/v1/st-b/gw-1/cmd-response')).toBe(true);
    expect(mayPublish(gw, 'wardgate/v1/st-b/gw-1/devices/x/health/more')).toBe(false);
    expect(mayPublish(gw, 'wardgate/v1/st-b/gw-1')).toBe(false);
    expect(mayPublish(gw, 'wardgate/v1//gw-1/status')).toBe(false);
    expect(mayPublish(console_, 'wardgate/v1/st-b/gw-1/cmd/ping')).toBe(true);
    expect(mayPublish(console_, 'wardgate/v1/st-b/gw-1/cmd/ping/x')).toBe(false);
    expect(maySubscribe(gw, 'wardgate/v1/+/gw-1/cmd/+')).toBe(true);
    expect(maySubscribe(gw, 'wardgate/v1/+/gw-1/cmd/+', 'st-b')).toBe(false);
    expect(maySubscribe(gw, 'wardgate/v1/st-b/gw-1/cmd/ping', 'st-b')).toBe(true);
    expect(maySubscribe(console_, 'wardgate/#')).toBe(false);
    expect(maySubscribe(console_, '$SYS/#')).toBe(false);
  });
});

describe('the agent\'s embedded broker', () => {
  it('keeps its legacy open mode only without auth, and enforces the ACL with it', async () => {
    const port = await freePort();
    const b = await startEmbeddedBroker({ host: '127.0.0.1', port, auth: { site: SITE, extraUsers: [{ username: 'gw-1', password: 'p' }] } });
    cleanups.push(() => b.close());
    expect(await refusal(connect(`mqtt://127.0.0.1:${port}`))).toBe(5);
    await connect(`mqtt://127.0.0.1:${port}`, { username: 'gw-1', password: 'p' });
  });
});

describe('wardgate broker passwd / --config', () => {
  it('writes a verifiable scrypt line, mode 0600, and replaces an existing user', async () => {
    const file = users();
    writeFileSync(file, '# site users\n', { mode: 0o600 });
    await passwd(file, 'console-a', 'one');
    await passwd(file, 'console-b', 'two');
    const first = readFileSync(file, 'utf8');
    expect(first).toMatch(/^console-a:scrypt:16384:8:1:[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$/m);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    await passwd(file, 'console-a', 'three');
    const text = readFileSync(file, 'utf8');
    expect(text.split('\n').filter((l) => l.startsWith('console-a:'))).toHaveLength(1);
    expect(text).toContain('# site users');
    expect(parseUsersFile(text).size).toBe(2);
    const b = await broker({ usersFile: file, consoles: ['console-a'] });
    const url = `mqtt://127.0.0.1:${b.port}`;
    expect(await refusal(connect(url, { username: 'console-a', password: 'one' }))).toBe(4);
    await connect(url, { username: 'console-a', password: 'three' });
    await connect(url, { username: 'console-b', password: 'two' });
  });

  it('the command line: passwd reads stdin; the broker runs from broker.yaml until SIGTERM', async () => {
    const file = join(dir, 'cli-users');
    const r = spawnSync(process.execPath, [CLI, 'broker', 'passwd', file, 'console-cli'], { input: 'from-stdin\n', encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('added console-cli');
    const port = await freePort();
    const yamlPath = join(dir, 'broker.yaml');
    writeFileSync(yamlPath, `listen: { host: 127.0.0.1, port: ${port} }\nusersFile: cli-users\nsite: ${SITE}\nconsoles: [console-cli]\n`);
    expect(loadBrokerConfig(yamlPath)).toMatchObject({ host: '127.0.0.1', port, usersFile: file, allowAnonymous: false, consoles: ['console-cli'] });
    const { spawn } = await import('node:child_process');
    const child = spawn(process.execPath, [CLI, 'broker', '--config', yamlPath], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    cleanups.push(() => child.kill('SIGKILL'));
    await until('listening', () => out.includes('listening'), 10000);
    const c = await connect(`mqtt://127.0.0.1:${port}`, { username: 'console-cli', password: 'from-stdin' });
    await c.endAsync();
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(out).toContain('stopped (SIGTERM)');
    writeFileSync(yamlPath, `listen: { host: 0.0.0.0, port: ${port} }\n`);
    const bad = spawnSync(process.execPath, [CLI, 'broker', '--config', yamlPath], { encoding: 'utf8', timeout: 10000 });
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toMatch(/without TLS/);
  });
});
