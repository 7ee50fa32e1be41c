// The MQTT link against real brokers: the embedded aedes (MQTT 3.1.1 only, so the link falls
// back from 5) and Mosquitto with TLS client certificates (MQTT 5).
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { startEmbeddedBroker, type EmbeddedBroker } from '../../agent/mqtt/broker.js';
import { backoffMs, MqttLink, type OutboxQueue } from '../../agent/mqtt/link.js';
import { MqttSchema, type MqttConfig } from '../../agent/config/schema.js';
import { StatusPayload } from '../../agent/mqtt/topics.js';
import { freePort, haveMosquitto, makePki, recorder, removePki, startMosquitto, until, type Mosquitto, type Pki } from './brokers.js';

/** An in-memory stand-in for the on-disk outbox (tested on its own in outbox.test.ts). */
class MemoryQueue implements OutboxQueue {
  private next = 1;
  items: { seq: number; topic: string; payload: string; retain: boolean }[] = [];
  push(topic: string, payload: object, retain = false): void {
    this.items.push({ seq: this.next++, topic, payload: JSON.stringify(payload), retain });
  }
  peek(max: number) {
    return this.items.slice(0, max);
  }
  ack(seq: number): void {
    this.items = this.items.filter((m) => m.seq !== seq);
  }
}

const quiet = { info: () => {}, warn: () => {}, error: () => {} };
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function link(config: Partial<MqttConfig> & { url: string }, queue = new MemoryQueue()) {
  const l = new MqttLink({
    config: MqttSchema.parse({ reconnect: { minSeconds: 1, maxSeconds: 2 }, ...config }),
    site: 'st-test',
    gateway: 'gw-1',
    bootId: 'boot-1',
    version: '0.0.0-test',
    policyHash: () => 'abc',
    outbox: queue,
    log: quiet,
  });
  cleanups.push(() => l.stop());
  return { link: l, queue };
}

describe('MQTT link, embedded broker', () => {
  async function broker(): Promise<EmbeddedBroker> {
    const b = await startEmbeddedBroker({ host: '127.0.0.1', port: await freePort() });
    cleanups.push(() => b.close());
    return b;
  }

  it('falls back to 3.1.1, births before anything else, drains the outbox in order, publishes offline on stop', async () => {
    const b = await broker();
    const url = `mqtt://127.0.0.1:${b.port}`;
    const rec = await recorder(url, ['wardgate/v1/st-test/gw-1/#'], { protocolVersion: 4 });
    cleanups.push(() => rec.close());
    const { link: l, queue } = link({ url });
    for (let i = 0; i < 5; i++) queue.push('wardgate/v1/st-test/gw-1/events', { n: i });
    l.start();
    await until('the outbox to drain', () => queue.items.length === 0 && rec.messages.length >= 6);
    expect(l.version).toBe(4);
    const [first, ...rest] = rec.messages;
    expect(first?.topic).toBe('wardgate/v1/st-test/gw-1/status');
    const birth = StatusPayload.parse(first?.payload);
    expect(birth).toMatchObject({ state: 'online', bootId: 'boot-1', policyHash: 'abc', seq: 1, gateway: 'gw-1', schema: 'wardgate/v1/status' });
    expect(rest.map((m) => m.payload.n)).toEqual([0, 1, 2, 3, 4]);
    await l.stop('maintenance');
    await until('offline', () => rec.messages.some((m) => m.payload.state === 'offline'));
    expect(rec.messages.at(-1)?.payload).toMatchObject({ state: 'offline', reason: 'maintenance' });
    // The retained status a console finds later is the offline one.
    const late = await recorder(url, ['wardgate/v1/st-test/gw-1/status'], { protocolVersion: 4 });
    cleanups.push(() => late.close());
    await until('the retained status', () => late.messages.length > 0);
    expect(late.messages[0]).toMatchObject({ retain: true, payload: { state: 'offline' } });
  });

  it('a lost connection fires the retained last will, and the link comes back with a new session number', async () => {
    const b = await broker();
    const url = `mqtt://127.0.0.1:${b.port}`;
    const rec = await recorder(url, ['wardgate/v1/st-test/gw-1/status'], { protocolVersion: 4 });
    cleanups.push(() => rec.close());
    const { link: l } = link({ url });
    l.start();
    await until('online', () => l.isOnline);
    // Cut the TCP connection under the client, as a pulled cable would.
    const stream = (l as unknown as { client: { stream: { destroy(): void } } }).client.stream;
    stream.destroy();
    await until('the will', () => rec.messages.some((m) => m.payload.state === 'offline'));
    expect(rec.messages.find((m) => m.payload.state === 'offline')?.payload).toMatchObject({ reason: 'connection lost (last will)', seq: 1 });
    await until('the second birth', () => rec.messages.some((m) => m.payload.state === 'online' && m.payload.seq === 2), 8000);
  });

  it('refuses to expose the embedded broker beyond loopback', async () => {
    await expect(startEmbeddedBroker({ host: '0.0.0.0', port: 1883 })).rejects.toThrow(/binds loopback only/);
  });

  it('backoff grows exponentially with full jitter inside its bounds', () => {
    expect(backoffMs(0, 1, 60, () => 1)).toBe(1000);
    expect(backoffMs(3, 1, 60, () => 1)).toBe(8000);
    expect(backoffMs(20, 1, 60, () => 1)).toBe(60000);
    expect(backoffMs(5, 1, 60, () => 0)).toBe(500);
  });
});

describe.skipIf(!haveMosquitto)('MQTT link, Mosquitto with TLS client certificates', () => {
  let pki: Pki;
  let broker: Mosquitto;

  async function setup() {
    pki = makePki();
    cleanups.push(() => removePki(pki));
    broker = await startMosquitto(pki);
    cleanups.push(() => broker.stop());
    return {
      url: `mqtts://127.0.0.1:${broker.port}`,
      tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey },
      console: { ca: readFileSync(pki.ca), cert: readFileSync(pki.clientCert), key: readFileSync(pki.clientKey), protocolVersion: 5 as const },
    };
  }

  it('connects over TLS with MQTT 5; a client with a certificate from another CA is refused', async () => {
    const s = await setup();
    const rec = await recorder(s.url, ['wardgate/v1/st-test/gw-1/#'], s.console);
    cleanups.push(() => rec.close());
    const { link: l } = link({ url: s.url, tls: s.tls });
    l.start();
    await until('online', () => l.isOnline);
    expect(l.version).toBe(5);
    await until('the birth', () => rec.messages.length > 0);
    expect(rec.messages[0]?.payload).toMatchObject({ state: 'online' });
    const { default: mqtt } = await import('mqtt');
    await expect(
      mqtt.connectAsync(s.url, { reconnectPeriod: 0, connectTimeout: 3000, ca: readFileSync(pki.ca), cert: readFileSync(pki.strangerCert), key: readFileSync(pki.strangerKey) }),
    ).rejects.toThrow();
  });

  it('survives a broker outage: reconnects with backoff and delivers what queued meanwhile, in order', async () => {
    const s = await setup();
    const { link: l, queue } = link({ url: s.url, tls: s.tls });
    l.start();
    await until('online', () => l.isOnline);
    await broker.stop();
    await until('offline', () => !l.isOnline);
    for (let i = 0; i < 20; i++) queue.push('wardgate/v1/st-test/gw-1/events', { n: i });
    await broker.start();
    const rec = await recorder(s.url, ['wardgate/v1/st-test/gw-1/events'], s.console);
    cleanups.push(() => rec.close());
    await until('the queue to drain', () => queue.items.length === 0 && rec.messages.length === 20, 15000);
    expect(rec.messages.map((m) => m.payload.n)).toEqual([...Array(20).keys()]);
    expect(l.sessionSeq).toBeGreaterThanOrEqual(2);
  });
});
