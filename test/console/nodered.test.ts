// The console flow in a real Node-RED (flows/console.json, the wardgate nodes, Dashboard 2.0,
// the admin API behind a login), fed by a real agent with its embedded broker. What the flow
// knows is read back from Node-RED's own flow context through the admin API.
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { assertBuilt, until } from '../integration/site.js';
import { consoleLog, DASHBOARD_LOGIN, DEVICE, GW, ROGUE, SITE, startConsoleSite, type ConsoleSite } from './console-site.js';

interface GatewayRow {
  gateway: string;
  state: string;
  lastBirth: string | null;
  policyHash: string | null;
  lastHealth: string | null;
  reason: string | null;
}
interface DeviceRow {
  gateway: string;
  device: string;
  state: string;
  class: string;
}
interface BackupsRow {
  gateway: string;
  error: string | null;
  devices: { device: string; count: number }[];
}
interface PolicyRow {
  gateway: string;
  error: string | null;
  kernel: string | null;
}

let site: ConsoleSite | undefined;
const s = (): ConsoleSite => site!;

beforeAll(async () => {
  assertBuilt();
  site = await startConsoleSite();
}, 60000);

afterAll(async () => {
  await site?.stop();
});

const status = (gateway: string, state: 'online' | 'offline', extra: Record<string, unknown> = {}) =>
  JSON.stringify({ schema: 'wardgate/v1/status', schemaVersion: 1, site: SITE, gateway, ts: new Date().toISOString(), id: randomUUID(), state, bootId: 'boot-rogue', version: '0.0.0', policyHash: null, seq: 1, ...extra });

describe('the console flow in Node-RED', () => {
  it('the admin API wants a login', async () => {
    const r = await fetch(`${s().console.adminUrl}/flows`);
    expect(r.status).toBe(401);
    const bad = await fetch(`${s().console.adminUrl}/auth/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ client_id: 'node-red-admin', grant_type: 'password', scope: '*', username: 'admin', password: 'not-it' }),
    });
    expect([401, 403]).toContain(bad.status);
    const flows = await fetch(`${s().console.adminUrl}/flows`, { headers: { authorization: `Bearer ${await s().token()}` } });
    expect(flows.status).toBe(200);
    const types = ((await flows.json()) as { type: string }[]).map((n) => n.type);
    expect(types).toEqual(expect.arrayContaining(['wardgate-console', 'wardgate-site', 'wardgate-command', 'wardgate-backup-pull', 'ui-base', 'ui-template']));
  });

  it('the dashboard wants its own login, for the page and its socket.io channel', async () => {
    const url = s().console.dashboardUrl;
    expect((await fetch(url)).status).toBe(401);
    const basic = (u: string, p: string) => ({ authorization: `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}` });
    expect((await fetch(url, { headers: basic(DASHBOARD_LOGIN.username, 'wrong') })).status).toBe(401);
    expect((await fetch(url, { headers: basic(DASHBOARD_LOGIN.username, DASHBOARD_LOGIN.password) })).status).toBe(200);
    // socket.io's handshake (engine.io polling, then the namespace's CONNECT packet "40").
    const io = `${s().console.url}/dashboard/socket.io/?EIO=4&transport=polling`;
    const handshake = async (headers: Record<string, string>) => {
      const open = await (await fetch(io, { headers })).text();
      const sid = (JSON.parse(open.slice(1)) as { sid: string }).sid;
      await fetch(`${io}&sid=${sid}`, { method: 'POST', headers: { ...headers, 'content-type': 'text/plain;charset=UTF-8' }, body: '40' });
      return (await fetch(`${io}&sid=${sid}`, { headers })).text();
    };
    expect(await handshake({})).toMatch(/^44\{"message":"login needed"\}/);
    expect(await handshake(basic(DASHBOARD_LOGIN.username, DASHBOARD_LOGIN.password))).toMatch(/^40\{"sid":/);
  });

  it('sees the gateway online, with its birth and policy hash, and its device up', async () => {
    const gw = await until(
      'the gateway online in the flow context',
      async () => {
        const g = (await s().context<Record<string, GatewayRow>>('gateways'))?.[GW];
        return g?.state === 'online' ? g : undefined;
      },
      20000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n${consoleLog(site)}`);
    });
    expect(gw.lastBirth).toMatch(/^\d{4}-\d\d-\d\dT/);
    expect(Date.parse(gw.lastBirth!)).toBeGreaterThan(Date.now() - 120000);
    const dev = await until('the device up', async () => {
      const d = (await s().context<Record<string, DeviceRow>>('devices'))?.[`${GW}/${DEVICE}`];
      return d?.state === 'up' ? d : undefined;
    });
    expect(dev).toMatchObject({ gateway: GW, device: DEVICE, class: 'lab-analyzer' });
    expect((await s().command(GW, 'health.now')).ok).toBe(true);
    await until('a health message', async () => (await s().context<Record<string, GatewayRow>>('gateways'))?.[GW]?.lastHealth ?? undefined);
    // A policy committed now shows in the next health message.
    expect(gw.policyHash).toBeNull();
    const applied = await s().command(GW, 'policy.apply', { timeoutSeconds: 60 });
    expect(applied.ok, JSON.stringify(applied.error)).toBe(true);
    expect((await s().command(GW, 'policy.confirm')).ok).toBe(true);
    expect((await s().command(GW, 'health.now')).ok).toBe(true);
    const hash = (applied.result as { policyHash: string }).policyHash;
    await until('the committed policy hash', async () => (await s().context<Record<string, GatewayRow>>('gateways'))?.[GW]?.policyHash === hash || undefined);
  });

  it('asks the gateway for its backups and policy state with signed commands', async () => {
    // A backup to list: the agent's own backup.now.
    const now = await s().command(GW, 'backup.now', { device: DEVICE });
    expect(now.ok).toBe(true);
    // The refresh button's message, through the flow's own nodes: inject it at the ask node by
    // having the gateway come online again is slow; the periodic inject is 5 minutes. Use the
    // admin API to trigger the inject node "every 5 minutes".
    const r = await fetch(`${s().console.adminUrl}/inject/wg-every`, { method: 'POST', headers: { authorization: `Bearer ${await s().token()}` } });
    expect(r.status).toBe(200);
    const b = await until('backup.list answered', async () => {
      const row = (await s().context<Record<string, BackupsRow>>('backups'))?.[GW];
      return row && row.devices.some((d) => d.device === DEVICE && d.count >= 1) ? row : undefined;
    });
    expect(b.error).toBeNull();
    const p = await until('policy.status answered', async () => (await s().context<Record<string, PolicyRow>>('policy'))?.[GW]);
    expect(p.error).toBeNull();
    expect(p.kernel).toEqual(expect.any(String));
  });

  it('drops malformed and lying payloads, keeps going, and shows a gateway that sends nothing else', async () => {
    const rogue = await s().client(ROGUE);
    const base = `wardgate/v1/${SITE}/${ROGUE}`;
    const before = (await s().context<Record<string, GatewayRow>>('gateways'))?.[GW];
    // Not JSON, not an object, the wrong schema, a missing field, a lie about who sent it, binary.
    await rogue.publishAsync(`${base}/status`, 'not json at all', { qos: 1 });
    await rogue.publishAsync(`${base}/health`, '[1,2,3]', { qos: 1 });
    await rogue.publishAsync(`${base}/events`, JSON.stringify({ severity: 'critical', message: 'no envelope' }), { qos: 1 });
    await rogue.publishAsync(`${base}/devices/x-ray-1/health`, Buffer.from([0xff, 0xfe, 0x00, 0x7b]), { qos: 1 });
    await rogue.publishAsync(`${base}/status`, status(GW, 'offline', { reason: 'forged' }), { qos: 1 }); // names gw-lab-01 on gw-rogue's topic
    await rogue.publishAsync(`${base}/events`, JSON.stringify({ schema: 'wardgate/v1/event', schemaVersion: 1, site: SITE, gateway: ROGUE, ts: 'yesterday', id: randomUUID(), severity: 'critical', kind: 'x', dedupKey: 'x', message: 'bad time' }), { qos: 1 });
    // Then a valid, retained online status and nothing more: a gateway that never answers.
    await rogue.publishAsync(`${base}/status`, status(ROGUE, 'online'), { qos: 1, retain: true });
    const silent = await until('the silent gateway listed', async () => (await s().context<Record<string, GatewayRow>>('gateways'))?.[ROGUE]);
    expect(silent).toMatchObject({ state: 'online', lastHealth: null });
    // It came online, so the flow asked it for its backups: no answer, said as much.
    const b = await until('the silent gateway\'s backup.list timed out', async () => (await s().context<Record<string, BackupsRow>>('backups'))?.[ROGUE], 15000);
    expect(b.error).toMatch(/^E_TIMEOUT: /);
    // Nothing of the junk was taken: no alert, no device, and the real gateway still online.
    const alerts = (await s().context<{ gateway: string }[]>('alerts')) ?? [];
    expect(alerts.filter((a) => a.gateway === ROGUE)).toEqual([]);
    const devices = (await s().context<Record<string, DeviceRow>>('devices')) ?? {};
    expect(Object.keys(devices)).toEqual([`${GW}/${DEVICE}`]);
    const gw = (await s().context<Record<string, GatewayRow>>('gateways'))?.[GW];
    expect(gw?.state).toBe('online');
    expect(gw?.lastBirth).toBe(before?.lastBirth);
    // The flow keeps taking the real gateway's messages.
    const h1 = gw?.lastHealth;
    expect((await s().command(GW, 'health.now')).ok).toBe(true);
    await until('a newer health message', async () => ((await s().context<Record<string, GatewayRow>>('gateways'))?.[GW]?.lastHealth ?? '') > (h1 ?? '') || undefined);
    // Each dropped message was logged, with the reason.
    const log = readFileSync(s().console.logFile, 'utf8');
    expect(log).toMatch(/dropped message \d+ on wardgate\/v1\/st-console\/gw-rogue\/status: not UTF-8 JSON/);
    expect(log).toMatch(/the payload names st-console\/gw-lab-01, the topic st-console\/gw-rogue/);
    expect(log).toMatch(/dropped message \d+ on wardgate\/v1\/st-console\/gw-rogue\/devices\/x-ray-1\/health: not UTF-8 JSON/);
    await rogue.publishAsync(`${base}/status`, '', { qos: 1, retain: true }); // clear the retained status
  });

  it('stopping Node-RED leaves no process behind', async () => {
    const pid = s().console.pid;
    await s().console.stop();
    expect(() => process.kill(pid, 0)).toThrow();
  });
});
