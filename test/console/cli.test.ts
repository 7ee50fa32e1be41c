// `wardgate console keygen | cmd | watch` against the embedded broker and a stand-in gateway,
// called through consoleCommand with a test Io, as main calls it.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { consoleCommand, parseArgsList, type ConsoleOptions } from '../../agent/cli/console.js';
import { UsageError } from '../../agent/cli/context.js';
import type { Io } from '../../agent/cli/io.js';
import { startEmbeddedBroker, type EmbeddedBroker } from '../../agent/mqtt/broker.js';
import { DeviceHealthPayload, envelope, EventPayload, HealthPayload, StatusPayload, Topics } from '../../agent/mqtt/topics.js';
import { freePort, until } from '../mqtt/brokers.js';
import { FakeGateway, GATEWAY, SITE } from './gateway-fixture.js';

function testIo() {
  const out: string[] = [];
  const err: string[] = [];
  const io: Io = { out: (l) => out.push(l), err: (l) => err.push(l) };
  return { io, out, err, text: () => out.join('\n'), errText: () => err.join('\n') };
}

let broker: EmbeddedBroker;
let url = '';
let dir = '';
let gw: FakeGateway;
let keyFile = '';

beforeAll(async () => {
  broker = await startEmbeddedBroker({ host: '127.0.0.1', port: await freePort() });
  url = `mqtt://127.0.0.1:${broker.port}`;
  dir = mkdtempSync(join(tmpdir(), 'wg-console-'));
  const t = testIo();
  expect(await consoleCommand('keygen', [], { out: join(dir, 'keys'), id: 'ops' }, t.io)).toBe(0);
  const publicKey = /key: (\S+)$/m.exec(t.text())?.[1];
  expect(publicKey).toBeDefined();
  keyFile = join(dir, 'keys', 'ops.key');
  gw = new FakeGateway({ url, stateDir: join(dir, 'state'), publicKeys: [{ id: 'ops', key: publicKey ?? '' }], protocolVersion: 4 });
  await gw.start();
});

afterAll(async () => {
  await gw.stop();
  await broker.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('wardgate console keygen', () => {
  it('prints the gateway.yaml snippet; refuses to overwrite; needs --out', async () => {
    const t = testIo();
    expect(await consoleCommand('keygen', [], { out: join(dir, 'k2') }, t.io)).toBe(0);
    expect(t.text()).toMatch(/wrote .*k2\/console\.key \(private key, mode 0600/);
    expect(t.text()).toMatch(/commands:\n {2}publicKeys:\n {4}- id: console\n {6}key: [A-Za-z0-9+/]{43}=$/);
    const again = testIo();
    expect(await consoleCommand('keygen', [], { out: join(dir, 'k2') }, again.io)).toBe(1);
    expect(again.errText()).toMatch(/E_CONSOLE_KEY: .*never overwritten/);
    await expect(consoleCommand('keygen', [], {}, testIo().io)).rejects.toThrow(UsageError);
  });
});

describe('wardgate console cmd', () => {
  const cmd = async (positionals: string[], opts: ConsoleOptions = {}) => {
    const t = testIo();
    const code = await consoleCommand('cmd', positionals, { url, key: keyFile, protocol: '4', timeout: '5', ...opts }, t.io);
    return { code, out: t.text(), err: t.errText() };
  };

  it('ping: exit 0 and the result', async () => {
    const r = await cmd([`${SITE}/${GATEWAY}`, 'ping']);
    expect(r).toMatchObject({ code: 0, err: '' });
    expect(r.out).toBe('ok: ping on st-test/gw-1\n{\n  "pong": true\n}');
    expect(gw.lastAudit()).toMatchObject({ actor: 'ops', outcome: 'ok' }); // the key id from the file name
  });

  it('MQTT 5 by default falls back to 3.1.1 on a broker without it', async () => {
    expect((await cmd([`${SITE}/${GATEWAY}`, 'ping'], { protocol: undefined })).code).toBe(0);
  });

  it('key=value arguments are strings, key:=json are JSON; --json prints the whole answer', async () => {
    const r = await cmd([`${SITE}/${GATEWAY}`, 'echo', 'device=ct-1', 'count:=3', 'opts:={"dry":true}', 'eq=a=b'], { json: true });
    expect(r.code).toBe(0);
    const answer = JSON.parse(r.out) as Record<string, unknown>;
    expect(answer).toMatchObject({ schema: 'wardgate/v1/command-response', ok: true, result: { device: 'ct-1', count: 3, opts: { dry: true }, eq: 'a=b' } });
    expect(() => parseArgsList(['novalue'])).toThrow(UsageError);
    expect(() => parseArgsList(['a=1', 'a=2'])).toThrow(/twice/);
    expect(() => parseArgsList(['a:={'])).toThrow(/not JSON/);
  });

  it('refused or failed: exit 1 with the error code', async () => {
    const unknownKey = await cmd([`${SITE}/${GATEWAY}`, 'ping'], { keyId: 'nobody' });
    expect(unknownKey).toMatchObject({ code: 1, out: '' });
    expect(unknownKey.err).toMatch(/^refused: ping on st-test\/gw-1: E_UNKNOWN_KEY: key "nobody"/);
    expect((await cmd([`${SITE}/${GATEWAY}`, 'reboot'])).err).toMatch(/^refused: .*E_UNKNOWN_COMMAND/);
    expect((await cmd([`${SITE}/${GATEWAY}`, 'ping'], { ttl: '3600' })).err).toMatch(/E_LIFETIME/);
    const failed = await cmd([`${SITE}/${GATEWAY}`, 'fail']);
    expect(failed).toMatchObject({ code: 1, err: 'failed: fail on st-test/gw-1: E_HANDLER_FAILED: the device did not answer' });
    const json = await cmd([`${SITE}/${GATEWAY}`, 'reboot'], { json: true });
    expect(json.code).toBe(1);
    expect(JSON.parse(json.out)).toMatchObject({ ok: false, error: { code: 'E_UNKNOWN_COMMAND' } });
  });

  it('no answer, no broker: exit 1 with E_TIMEOUT or E_CONNECT', async () => {
    expect(await cmd([`${SITE}/gw-9`, 'ping'], { timeout: '0.5' })).toMatchObject({ code: 1, err: expect.stringMatching(/E_TIMEOUT: no answer from st-test\/gw-9/) as unknown });
    const closed = await freePort();
    expect(await cmd([`${SITE}/${GATEWAY}`, 'ping'], { url: `mqtt://127.0.0.1:${closed}` })).toMatchObject({ code: 1, err: expect.stringMatching(/E_CONNECT: cannot connect/) as unknown });
  });

  it('usage errors', async () => {
    await expect(cmd(['gw-1', 'ping'])).rejects.toThrow(/<site>\/<gateway>/);
    await expect(cmd([`${SITE}/${GATEWAY}`])).rejects.toThrow(/command name/);
    await expect(cmd([`${SITE}/${GATEWAY}`, 'ping'], { url: undefined })).rejects.toThrow(/--url/);
    await expect(cmd([`${SITE}/${GATEWAY}`, 'ping'], { protocol: '3' })).rejects.toThrow(/--protocol/);
    await expect(consoleCommand('frobnicate', [], {}, testIo().io)).rejects.toThrow(UsageError);
  });
});

describe('wardgate console watch', () => {
  const t0 = new Date(Date.now() - 90_000);
  const at = (s: number) => new Date(t0.getTime() + s * 1000);
  const status = (gateway: string, state: 'online' | 'offline', ts: Date, extra: Partial<StatusPayload> = {}) =>
    StatusPayload.parse({ ...envelope('status', SITE, gateway, ts), state, bootId: 'b1', version: '0.1.0', policyHash: 'a1b2c3d4e5f6a7b8c9d0', seq: 1, ...extra });
  const health = (gateway: string, ts: Date) =>
    HealthPayload.parse({
      ...envelope('health', SITE, gateway, ts),
      board: 'generic-x86',
      uptimeSeconds: 100,
      load: [0.1, 0.1, 0.1],
      cpuCount: 4,
      memory: { totalBytes: 1e9, availableBytes: 5e8 },
      disk: { path: '/', totalBytes: 1e10, freeBytes: 5e9 },
      temperatureC: null,
      interfaces: [],
      ruleset: { kernel: 'committed', policyHash: 'a1b2c3d4e5f6a7b8c9d0', accepted: 0, dropped: 0, monitored: 0 },
      agent: { version: '0.1.0', rssBytes: 1, pid: 1 },
      outbox: { depth: 0, bytes: 0, dropped: 0 },
    });
  const device = (gateway: string, id: string, state: DeviceHealthPayload['state'], since: Date) =>
    DeviceHealthPayload.parse({ ...envelope('device-health', SITE, gateway, since), device: id, class: 'ct-modality', criticality: 'high', state, since: since.toISOString(), probes: [] });

  let pub: MqttClient;
  beforeAll(async () => {
    pub = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0 });
    const site = new Topics(SITE, 'gw-a');
    const other = new Topics(SITE, 'gw-b');
    const retained = { qos: 1, retain: true } as const;
    await pub.publishAsync(site.status(), JSON.stringify(status('gw-a', 'online', at(0))), retained);
    await pub.publishAsync(site.health(), JSON.stringify(health('gw-a', at(60))), retained);
    await pub.publishAsync(site.deviceHealth('ct-1'), JSON.stringify(device('gw-a', 'ct-1', 'up', at(5))), retained);
    await pub.publishAsync(site.deviceHealth('pump-7'), JSON.stringify(device('gw-a', 'pump-7', 'down', at(30))), retained);
    await pub.publishAsync(other.status(), JSON.stringify(status('gw-b', 'offline', at(10), { policyHash: null, reason: 'connection lost (last will)' })), retained);
    await pub.publishAsync(new Topics('st-other', 'gw-z').status(), JSON.stringify({ ...status('gw-z', 'online', at(0)), site: 'st-other' }), retained);
    await pub.publishAsync(`wardgate/v1/${SITE}/gw-c/devices/x/health`, '{"not":"a device health"}', retained);
  });
  afterAll(async () => {
    await pub.endAsync();
  });

  it('--once prints the table of retained state and exits', async () => {
    const t = testIo();
    expect(await consoleCommand('watch', [], { url, site: SITE, once: true, onceMs: 500 }, t.io)).toBe(0);
    const lines = t.text().split('\n');
    expect(lines[0]).toMatch(/^wardgate site st-test: 2 gateway\(s\), 1 online, 2 device\(s\) {3}\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$/);
    const row = (first: string) => lines.find((l) => l.startsWith(`${first} `))?.split(/\s{2,}/);
    expect(lines).toContainEqual(expect.stringMatching(/^GATEWAY +STATE +LAST BIRTH +POLICY +LAST HEALTH +NOTE$/));
    expect(row('gw-a')).toEqual(['gw-a', 'online', expect.stringMatching(/Z \(9\ds ago\)$/), 'a1b2c3d4e5f6', expect.stringMatching(/Z \(3\ds ago\)$/)]);
    expect(row('gw-b')).toEqual(['gw-b', 'offline', '-', 'none', '-', 'connection lost (last will)']);
    expect(lines).toContainEqual(expect.stringMatching(/^DEVICE +GATEWAY +STATE +SINCE$/));
    expect(row('ct-1')).toEqual(['ct-1', 'gw-a', 'up', expect.stringMatching(/Z \(8\ds ago\)$/)]);
    expect(row('pump-7')).toEqual(['pump-7', 'gw-a', 'down', expect.stringMatching(/Z \(6\ds ago\)$/)]);
    expect(t.text()).not.toContain('gw-z'); // another site
    expect(t.text()).toContain('1 message(s) did not match their schema');
    expect(t.text()).not.toContain('\x1b['); // plain text
  });

  it('live: redraws on each message and stops when told (SIGINT in the CLI)', async () => {
    const t = testIo();
    const stop = new AbortController();
    const running = consoleCommand('watch', [], { url, site: SITE, signal: stop.signal }, t.io);
    await until('the first table', () => t.out.some((o) => o.includes('pump-7')));
    await pub.publishAsync(new Topics(SITE, 'gw-a').events(), JSON.stringify(EventPayload.parse({ ...envelope('event', SITE, 'gw-a'), severity: 'critical', kind: 'device.state', dedupKey: 'k', message: 'pump-7 is down', device: 'pump-7' })), { qos: 1 });
    await until('the event', () => t.out.at(-1)?.includes('pump-7 is down') === true);
    expect(t.out.at(-1)).toMatch(/EVENT +GATEWAY +SEVERITY +KIND +MESSAGE\n.*gw-a +critical +device\.state +pump-7 is down/);
    stop.abort();
    expect(await running).toBe(0);
  });

  it('needs --url and --site', async () => {
    await expect(consoleCommand('watch', [], { url }, testIo().io)).rejects.toThrow(/--site/);
    await expect(consoleCommand('watch', [], { site: SITE }, testIo().io)).rejects.toThrow(/--url/);
  });
});
