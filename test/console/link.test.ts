// The console's reading of a site (parseSiteMessage: every kind taken, every kind of junk
// dropped with its reason) and its long-lived link (ConsoleLink) against the embedded broker and
// a stand-in gateway running the real command verifier and the real backup.list/.pull handlers.
import { randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureGatewayKey, gatewayKeyPaths } from '../../agent/backup/keys.js';
import { backupPullHandlers } from '../../agent/backup/pull.js';
import { BackupStoreSchema } from '../../agent/backup/schema-store.js';
import { generateConsoleKey } from '../../agent/console/keys.js';
import { ConsoleLink, type LinkState } from '../../agent/console/link.js';
import { MAX_SITE_PAYLOAD, parseSiteMessage, type SiteMessage } from '../../agent/console/site.js';
import { startEmbeddedBroker, type EmbeddedBroker } from '../../agent/mqtt/broker.js';
import { envelope } from '../../agent/mqtt/topics.js';
import { makeStore, text, type TestStore } from '../backup/store-helpers.js';
import { freePort, until } from '../mqtt/brokers.js';
import { FakeGateway, GATEWAY, SITE } from './gateway-fixture.js';

const T = `wardgate/v1/${SITE}/${GATEWAY}`;
const status = (over: Record<string, unknown> = {}) => ({ ...envelope('status', SITE, GATEWAY), state: 'online', bootId: 'b1', version: '0.1.0', policyHash: null, seq: 1, ...over });
const health = () => ({
  ...envelope('health', SITE, GATEWAY),
  board: 'generic',
  uptimeSeconds: 10,
  load: [0.1, 0.2, 0.3],
  cpuCount: 2,
  memory: { totalBytes: 1, availableBytes: 1 },
  disk: { path: '/', totalBytes: 1, freeBytes: 1 },
  temperatureC: null,
  interfaces: [],
  ruleset: { kernel: 'committed', policyHash: 'abc', accepted: 0, dropped: 0, monitored: 0 },
  agent: { version: '0.1.0', rssBytes: 1, pid: 1 },
  outbox: { depth: 0, bytes: 0, dropped: 0 },
});
const deviceHealth = (device = 'ct-1') => ({ ...envelope('device-health', SITE, GATEWAY), device, class: 'ct', criticality: 'high', state: 'up', since: new Date().toISOString(), probes: [{ type: 'tcp', ok: true, latencyMs: 1 }] });
const event = () => ({ ...envelope('event', SITE, GATEWAY), severity: 'warning', kind: 'flow.denied', dedupKey: 'flow.denied/ct-1/10.0.0.9', message: 'denied', device: 'ct-1' });
const js = (o: unknown) => JSON.stringify(o);

describe('parseSiteMessage', () => {
  it('takes each kind of message, naming the gateway and device from the topic', () => {
    const cases: [string, unknown, SiteMessage['kind']][] = [
      [`${T}/status`, status(), 'status'],
      [`${T}/health`, health(), 'health'],
      [`${T}/devices/ct-1/health`, deviceHealth(), 'device-health'],
      [`${T}/events`, event(), 'event'],
    ];
    for (const [topic, payload, kind] of cases) {
      const r = parseSiteMessage(SITE, topic, Buffer.from(js(payload)));
      expect(r, topic).toMatchObject({ ok: true, message: { kind, gateway: GATEWAY } });
    }
    expect(parseSiteMessage(SITE, `${T}/devices/ct-1/health`, js(deviceHealth()))).toMatchObject({ ok: true, message: { device: 'ct-1' } });
    // Members the schema does not know yet (a newer agent) are no reason to drop a message.
    expect(parseSiteMessage(SITE, `${T}/status`, js({ ...status(), future: 1 })).ok).toBe(true);
  });

  it('drops junk, each time with the reason', () => {
    const bad: [string, string | Buffer, RegExp][] = [
      [`wardgate/v1/other-site/${GATEWAY}/status`, js(status()), /not a status, health, device health or events topic of this site/],
      [`${T}/flows`, '{}', /not a status, health/],
      [`${T}/cmd/ping`, '{}', /not a status, health/],
      [`${T}/devices/ct-1/health/x`, js(deviceHealth()), /not a status, health/],
      [`wardgate/v1/${SITE}//status`, js(status()), /not a status, health/],
      [`${T}/status`, '', /empty payload/],
      [`${T}/status`, Buffer.alloc(MAX_SITE_PAYLOAD + 1, 0x20), /more than/],
      [`${T}/status`, Buffer.from([0xc3, 0x28]), /not UTF-8 JSON/],
      [`${T}/status`, 'online', /not UTF-8 JSON/],
      [`${T}/health`, '[1,2,3]', /not a health payload: \(root\)/],
      [`${T}/status`, js({ ...status(), state: 'sleepy' }), /not a status payload: state/],
      [`${T}/status`, js({ ...status(), ts: 'yesterday' }), /not a status payload: ts/],
      [`${T}/health`, js({ ...status(), schema: 'wardgate/v1/health' }), /not a health payload/],
      [`${T}/events`, js({ ...event(), schema: 'wardgate/v1/status' }), /schema "wardgate\/v1\/status" on a event topic/],
      [`${T}/status`, js(status({ gateway: 'gw-9' })), /the payload names st-test\/gw-9, the topic st-test\/gw-1/],
      [`${T}/status`, js(status({ site: 'other' })), /the payload names other\/gw-1/],
      [`${T}/devices/ct-2/health`, js(deviceHealth('ct-1')), /the payload names device ct-1, the topic ct-2/],
    ];
    for (const [topic, payload, reason] of bad) {
      const r = parseSiteMessage(SITE, topic, payload);
      expect(r.ok, `${topic}: ${String(payload).slice(0, 40)}`).toBe(false);
      if (!r.ok) expect(r.reason).toMatch(reason);
    }
  });
});

describe('ConsoleLink', () => {
  let broker: EmbeddedBroker | undefined;
  let port = 0;
  let url = '';
  let dir = '';
  let keyFile = '';
  let t: TestStore;
  let gw: FakeGateway;

  beforeAll(async () => {
    port = await freePort();
    url = `mqtt://127.0.0.1:${port}`;
    dir = mkdtempSync(join(tmpdir(), 'wg-link-'));
    const key = generateConsoleKey(join(dir, 'keys'), 'ops');
    keyFile = key.privateKeyPath;
    t = makeStore({ gateway: `${SITE}/${GATEWAY}` });
    await t.store.put('ct-1', 'file', { bytes: randomBytes(5000), format: 'binary', source: 'sftp 10.20.0.31:/etc/ct.cfg' });
    await t.store.put('ct-1', 'command', text('rate 5\n', 'command ct-dump'));
    const handlers = backupPullHandlers({ store: t.store, stateDir: t.stateDir, gateway: `${SITE}/${GATEWAY}`, config: BackupStoreSchema.parse({}) });
    gw = new FakeGateway({ url, stateDir: join(dir, 'gw-state'), publicKeys: [{ id: 'ops', key: key.publicKey }], protocolVersion: 4, handlers: { ping: () => Promise.resolve({ pong: true }), ...handlers } });
  });

  afterAll(async () => {
    await gw?.stop();
    await broker?.close();
    t?.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('waits for a broker that is not up yet, then follows the site and drops junk', async () => {
    const link = new ConsoleLink({ url, site: SITE, keyFile, retryMs: { min: 100, max: 400 } });
    const states: LinkState[] = [];
    const got: SiteMessage[] = [];
    const dropped: string[] = [];
    link.on('state', (st) => states.push(st));
    link.on('message', (m) => got.push(m));
    link.on('malformed', (topic, reason) => dropped.push(`${topic}: ${reason}`));
    link.start();
    try {
      await until('two failed attempts', () => states.filter((st) => st === 'disconnected').length >= 2, 5000);
      broker = await startEmbeddedBroker({ host: '127.0.0.1', port });
      await until('connected', () => link.state === 'connected', 5000);
      await gw.start();
      const pub = await mqtt.connectAsync(url, { reconnectPeriod: 0 });
      await pub.publishAsync(`${T}/status`, js(status()), { qos: 1 });
      await pub.publishAsync(`${T}/status`, 'garbage', { qos: 1 });
      await pub.publishAsync(`${T}/events`, js(event()), { qos: 1 });
      await pub.endAsync();
      await until('the messages', () => got.length >= 2 && dropped.length >= 1, 5000);
      expect(got.map((m) => m.kind)).toEqual(['status', 'event']);
      expect(dropped).toEqual([`${T}/status: not UTF-8 JSON (Unexpected token 'g', "garbage" is not valid JSON)`]);
    } finally {
      await link.stop();
    }
    expect(link.state).toBe('stopped');
  });

  it('sends signed commands, and says when no answer comes or there is no key', async () => {
    const link = new ConsoleLink({ url, site: SITE, keyFile });
    link.start();
    try {
      const a = await link.command(GATEWAY, 'ping', {}, 5000);
      expect(a).toMatchObject({ ok: true, result: { pong: true }, command: 'ping' });
      expect(gw.lastAudit()).toMatchObject({ action: 'command.executed', actor: 'ops' });
      await expect(link.command('gw-nobody', 'ping', {}, 300)).rejects.toMatchObject({ code: 'E_TIMEOUT' });
      await expect(link.command('a/b', 'ping')).rejects.toMatchObject({ code: 'E_USAGE' });
      const keyless = new ConsoleLink({ url, site: SITE });
      await expect(keyless.command(GATEWAY, 'ping')).rejects.toMatchObject({ code: 'E_CONSOLE_KEY' });
    } finally {
      await link.stop();
    }
    await expect(link.command(GATEWAY, 'ping')).rejects.toMatchObject({ code: 'E_STOPPED' });
  });

  it('pulls a bundle and verifies it with the gateway\'s public key, or says why not', async () => {
    const link = new ConsoleLink({ url, site: SITE, keyFile, keyId: 'ops' });
    link.start();
    try {
      const pub = join(dir, `${GATEWAY}.pub`);
      copyFileSync(gatewayKeyPaths(t.stateDir).publicKeyPath, pub);
      const ok = await link.pull({ gateway: GATEWAY, device: 'ct-1', dir: join(dir, 'bundles'), pubkeyFile: pub, chunkSize: 4096 });
      expect(ok).toMatchObject({ verified: true, problems: [], gateway: GATEWAY, device: 'ct-1' });
      expect(ok.versions.map((v) => [v.version, v.driver, v.format])).toEqual([
        [1, 'file', 'binary'],
        [2, 'command', 'text'],
      ]);
      expect(existsSync(ok.file)).toBe(true);
      expect(ok.file).toMatch(new RegExp(`/bundles/${SITE}_${GATEWAY}_ct-1_\\d{8}T\\d{6}Z\\.wgb$`));

      // Another gateway's key: the signatures fail.
      const other = ensureGatewayKey(join(dir, 'other-gw'));
      const wrong = await link.pull({ gateway: GATEWAY, device: 'ct-1', version: 2, dir: join(dir, 'bundles'), pubkeyFile: other.publicKeyPath });
      expect(wrong.verified).toBe(false);
      expect(wrong.problems.join('\n')).toMatch(/public-key: signed by the key with fingerprint [0-9a-f]{64}, not by the public key given/);
      expect(wrong.versions).toEqual([]);

      // No key for this gateway: pulled, not verified, and said so.
      const none = await link.pull({ gateway: GATEWAY, device: 'ct-1', dir: join(dir, 'bundles'), pubkeyFile: join(dir, 'absent.pub') });
      expect(none).toMatchObject({ verified: false, problems: [`no public key of ${SITE}/${GATEWAY} at ${join(dir, 'absent.pub')}`] });
      expect(existsSync(none.file)).toBe(true);

      // A key file that is not a key: refused before anything is pulled.
      writeFileSync(join(dir, 'junk.pub'), 'not a key\n');
      await expect(link.pull({ gateway: GATEWAY, device: 'ct-1', dir: join(dir, 'bundles'), pubkeyFile: join(dir, 'junk.pub') })).rejects.toMatchObject({ code: 'E_BACKUP_KEY' });

      // A device the gateway has no backup of: the gateway's refusal.
      await expect(link.pull({ gateway: GATEWAY, device: 'mri-9', dir: join(dir, 'bundles') })).rejects.toMatchObject({ code: 'E_HANDLER_FAILED' });
    } finally {
      await link.stop();
    }
  });

  it('refuses a configuration it cannot use', () => {
    expect(() => new ConsoleLink({ url: 'http://x', site: SITE })).toThrow(/broker URL/);
    expect(() => new ConsoleLink({ url, site: 'a/b' })).toThrow(/site "a\/b"/);
  });
});
