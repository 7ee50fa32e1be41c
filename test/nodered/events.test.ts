// The agent's listener for the gateway flows' events (agent/nodered/events.ts), over real HTTP on
// loopback: only the token's holder is heard, only a well-formed event of a known device is
// raised, as gateway-flow.<name>, and repeats are held back by the dedup window.
import { afterEach, describe, expect, it } from 'vitest';
import { MAX_BODY_BYTES, startFlowEvents, type FlowEvents } from '../../agent/nodered/events.js';

interface Raised {
  severity: string;
  kind: string;
  message: string;
  extra: { device?: string; dedupKey: string; data: Record<string, unknown> };
}

let events: FlowEvents | undefined;
let raised: Raised[] = [];
let refused: [number, string][] = [];

/** devices null: the policy does not load. */
async function start(devices: string[] | null = ['lab-analyzer-01'], maxPerMinute = 60): Promise<FlowEvents> {
  raised = [];
  refused = [];
  events = await startFlowEvents({
    devices: () => devices ?? undefined,
    dedupWindowSeconds: 300,
    maxPerMinute,
    raise: (severity, kind, message, extra) => raised.push({ severity, kind, message, extra }),
    refused: (status, reason) => refused.push([status, reason]),
  });
  return events;
}

afterEach(async () => {
  await events?.close();
  events = undefined;
});

const post = (e: FlowEvents, body: unknown, headers: Record<string, string> = {}) =>
  fetch(e.url, {
    method: 'POST',
    headers: { authorization: `Bearer ${e.token}`, 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });

const alarm = { name: 'analyzer-alarm', severity: 'warning', message: 'alarm bit 2', device: 'lab-analyzer-01', data: { register: 1, value: 4 } };

describe('the flow events listener', () => {
  it('listens on loopback only, with a fresh token each start', async () => {
    const a = await start();
    expect(a.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v1\/events$/);
    expect(a.token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const first = a.token;
    await a.close();
    const b = await start();
    expect(b.token).not.toBe(first);
  });

  it('raises a well-formed event as gateway-flow.<name>, with its device, data and severity', async () => {
    const e = await start();
    const r = await post(e, alarm);
    expect(r.status).toBe(202);
    expect(await r.json()).toEqual({ ok: true, kind: 'gateway-flow.analyzer-alarm', raised: true });
    expect(raised).toEqual([
      { severity: 'warning', kind: 'gateway-flow.analyzer-alarm', message: 'alarm bit 2', extra: { device: 'lab-analyzer-01', dedupKey: 'gateway-flow.analyzer-alarm:lab-analyzer-01', data: { register: 1, value: 4 } } },
    ]);
    // Severity defaults to warning; an event may name no device.
    expect((await post(e, { name: 'door-open', message: 'the cabinet door is open' })).status).toBe(202);
    expect(raised[1]).toMatchObject({ severity: 'warning', kind: 'gateway-flow.door-open', extra: { dedupKey: 'gateway-flow.door-open:gateway', data: {} } });
  });

  it('holds back a repeat within the dedup window, and says so', async () => {
    const e = await start();
    expect(await (await post(e, alarm)).json()).toMatchObject({ raised: true });
    expect(await (await post(e, alarm)).json()).toMatchObject({ ok: true, raised: false });
    expect(await (await post(e, { ...alarm, dedupKey: 'another' })).json()).toMatchObject({ raised: true });
    expect(raised).toHaveLength(2);
  });

  it('holds back what goes past the limit per minute', async () => {
    const e = await start(['lab-analyzer-01'], 2);
    for (let i = 0; i < 4; i++) await post(e, { ...alarm, dedupKey: `k${i}` });
    expect(raised).toHaveLength(2);
  });

  it('refuses a request without the token, or with another', async () => {
    const e = await start();
    expect((await post(e, alarm, { authorization: '' })).status).toBe(401);
    expect((await post(e, alarm, { authorization: `Bearer ${e.token}x` })).status).toBe(401);
    expect((await post(e, alarm, { authorization: e.token })).status).toBe(401);
    expect(raised).toEqual([]);
    expect(refused.map(([s]) => s)).toEqual([401, 401, 401]);
  });

  it('refuses what is not a well-formed event, naming the field', async () => {
    const e = await start();
    const cases: [unknown, number, RegExp][] = [
      ['not json', 400, /not JSON/],
      [[1, 2], 400, /expected object/],
      [{ ...alarm, name: 'Analyzer Alarm' }, 400, /^name: /],
      [{ ...alarm, name: undefined }, 400, /^name: /],
      [{ ...alarm, severity: 'panic' }, 400, /^severity: /],
      [{ ...alarm, message: '' }, 400, /^message: /],
      [{ ...alarm, message: 'x'.repeat(501) }, 400, /^message: /],
      [{ ...alarm, device: 'ct-99' }, 400, /^device: no device "ct-99"/],
      [{ ...alarm, kind: 'policy.drift' }, 400, /unknown field\(s\) kind/],
      [{ ...alarm, data: { blob: 'x'.repeat(5000) } }, 400, /^data: at most 4096 bytes/],
      [{ ...alarm, data: 'text' }, 400, /^data: /],
    ];
    for (const [body, status, error] of cases) {
      const r = await post(e, body);
      expect(r.status, JSON.stringify(body).slice(0, 80)).toBe(status);
      expect(((await r.json()) as { error: string }).error).toMatch(error);
    }
    expect(raised).toEqual([]);
  });

  it('refuses a body too large, another content type, another method or path', async () => {
    const e = await start();
    const big = await post(e, { ...alarm, message: 'x'.repeat(MAX_BODY_BYTES) });
    expect(big.status).toBe(413);
    expect((await post(e, alarm, { 'content-type': 'text/plain' })).status).toBe(415);
    expect((await fetch(e.url, { headers: { authorization: `Bearer ${e.token}` } })).status).toBe(405);
    expect((await fetch(e.url.replace('/v1/events', '/v1/other'), { method: 'POST', headers: { authorization: `Bearer ${e.token}` } })).status).toBe(404);
    expect(raised).toEqual([]);
  });

  it('takes any device id while the policy does not load', async () => {
    const e = await start(null);
    expect((await post(e, { ...alarm, device: 'ct-99' })).status).toBe(202);
    expect(raised[0]?.extra.device).toBe('ct-99');
  });
});
