// Events per second through the outbox and the MQTT link (agent/mqtt/outbox.ts, link.ts), as the
// controller sends them: push to the outbox (fsync 'always', then 'batch'), kick the link, which
// publishes at QoS 1 and acks each message after its PUBACK. Counted where it matters: at a
// subscriber in a process of its own (bench/mqtt-count.mjs), which also checks that nothing is
// lost, duplicated or reordered. The baseline is plain mqtt.js QoS 1 publishing to the same
// broker, without persistence: publishAsync awaited one by one ('plain'), and with a window of
// in-flight publishes ('plain-w32'). Same payload (a 500-byte event), same count, rounds with
// the variants alternating, median.
//
// The broker is Mosquitto in a process of its own when it is installed (so that it does not
// share the publisher's event loop), otherwise the embedded aedes in-process;
// WARDGATE_BENCH_BROKER=aedes|mosquitto chooses. The journal lives in a fresh directory under
// the system's temporary directory (TMPDIR): its file system decides what an fsync costs.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmodSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import mqtt from 'mqtt';
import { MqttSchema, OutboxSchema } from '../agent/config/schema.js';
import { startEmbeddedBroker } from '../agent/mqtt/broker.js';
import { MqttLink } from '../agent/mqtt/link.js';
import { Outbox } from '../agent/mqtt/outbox.js';
import { commandMissing, envNumber, freePort, median, ratio, sleep, table, waitForPort, withChild, withResource, withTempDir, withTimeout } from './lib.js';

const PAYLOAD_BYTES = 500;
const WINDOW = 32;
const HOST = '127.0.0.1';
const TARGET = 0.5;

type Variant = 'plain' | 'plain-w32' | 'always' | 'batch';
const VARIANTS: Variant[] = ['plain', 'plain-w32', 'always', 'batch'];
type BrokerKind = 'mosquitto' | 'aedes';

const now = () => performance.timeOrigin + performance.now();
const nextTurn = () => new Promise<void>((r) => setImmediate(r));

/** An event-like payload of exactly PAYLOAD_BYTES, starting with {"n":<index> for the counter. */
function payload(n: number): string {
  const head = {
    n,
    schema: 'wardgate/v1/event',
    schemaVersion: 1,
    site: 'bench',
    gateway: 'gw-1',
    ts: new Date().toISOString(),
    id: randomUUID(),
    severity: 'warning',
    kind: 'device.state',
    dedupKey: `device.state:dev-${n % 50}`,
    message: `device dev-${n % 50} is down (was up)`,
    device: `dev-${n % 50}`,
    data: { from: 'up', to: 'down', pad: '' },
  };
  const text = JSON.stringify(head);
  head.data.pad = 'x'.repeat(Math.max(0, PAYLOAD_BYTES - text.length));
  return JSON.stringify(head);
}

// ---------------------------------------------------------------------------------------------
// The broker and the subscriber

interface Broker {
  kind: BrokerKind;
  url: string;
  protocolVersion: 4 | 5;
  describe: string;
  pid?: number;
}

function chooseBroker(): BrokerKind {
  const want = process.env.WARDGATE_BENCH_BROKER;
  if (want === 'aedes' || want === 'mosquitto') return want;
  if (want !== undefined && want !== '') throw new Error(`WARDGATE_BENCH_BROKER=${want}: aedes or mosquitto`);
  return commandMissing('mosquitto') ? 'aedes' : 'mosquitto';
}

function mosquittoVersion(): string {
  const r = spawnSync('mosquitto', ['-h'], { encoding: 'utf8' });
  return /mosquitto version (\S+)/.exec(`${r.stdout}${r.stderr}`)?.[1] ?? '?';
}

async function withBroker<T>(kind: BrokerKind, dir: string, body: (b: Broker) => Promise<T>): Promise<T> {
  const port = await freePort(HOST);
  const url = `mqtt://${HOST}:${port}`;
  if (kind === 'aedes') {
    return withResource(
      () => startEmbeddedBroker({ host: HOST, port }),
      (b) => b.close(),
      () => body({ kind, url, protocolVersion: 4, describe: `aedes (agent/mqtt/broker.ts) in this process, MQTT 3.1.1, ${url}` }),
    );
  }
  // Mosquitto started as root drops to its own user: the directory and the file must be readable.
  const confDir = join(dir, 'mosquitto');
  mkdirSync(confDir, { mode: 0o755 });
  chmodSync(dir, 0o755);
  const conf = join(confDir, 'mosquitto.conf');
  writeFileSync(
    conf,
    [
      `listener ${port} ${HOST}`,
      'allow_anonymous true',
      'persistence false',
      // The default (1000) drops QoS 1 messages queued for a subscriber that falls behind.
      'max_queued_messages 0',
      'log_dest none',
      '',
    ].join('\n'),
    { mode: 0o644 },
  );
  return withChild(
    () => spawn('mosquitto', ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] }),
    async (child) => {
      let stderr = '';
      child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
      const failed = new Promise<never>((_, reject) => child.once('exit', (code) => reject(new Error(`mosquitto exited (${code}): ${stderr.trim()}`))));
      await Promise.race([waitForPort(HOST, port, 5000, 'mosquitto'), failed]);
      failed.catch(() => undefined);
      const b: Broker = { kind, url, protocolVersion: 5, describe: `Mosquitto ${mosquittoVersion()} in its own process, MQTT 5, ${url}` };
      if (child.pid !== undefined) b.pid = child.pid;
      return body(b);
    },
  );
}

interface Delivery {
  topic: string;
  count: number;
  duplicates: number;
  reordered: number;
  firstAt: number;
  lastAt: number;
}

interface Subscriber {
  expect(topic: string, timeoutMs: number): Promise<Delivery>;
}

const COUNTER = join(import.meta.dirname, 'mqtt-count.mjs');

async function withSubscriber<T>(b: Broker, body: (s: Subscriber) => Promise<T>): Promise<T> {
  return withChild(
    () => spawn(process.execPath, [COUNTER, b.url, String(b.protocolVersion)], { stdio: ['pipe', 'pipe', 'pipe'] }),
    async (child: ChildProcess) => {
      const waiting = new Map<string, (d: Delivery) => void>();
      const early = new Map<string, Delivery>();
      let stderr = '';
      child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
      let ready: () => void = () => {};
      const isReady = new Promise<void>((r) => (ready = r));
      const exited = new Promise<never>((_, reject) => child.once('exit', (code) => reject(new Error(`the subscriber exited (${code}): ${stderr.trim()}`))));
      exited.catch(() => undefined);
      createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
        if (line === 'ready') return ready();
        const d = JSON.parse(line) as Delivery;
        const w = waiting.get(d.topic);
        if (w) w(d);
        else early.set(d.topic, d);
      });
      await withTimeout(Promise.race([isReady, exited]), 10000, 'the subscriber did not subscribe within 10 s');
      const sub: Subscriber = {
        expect: (topic, timeoutMs) => {
          const got = early.get(topic);
          if (got) return Promise.resolve(got);
          const arrived = Promise.race([new Promise<Delivery>((resolve) => waiting.set(topic, resolve)), exited]);
          return withTimeout(arrived, timeoutMs, `${topic}: not every message reached the subscriber within ${timeoutMs} ms`).finally(() => waiting.delete(topic));
        },
      };
      try {
        return await body(sub);
      } finally {
        child.stdin?.end();
      }
    },
  );
}

// ---------------------------------------------------------------------------------------------
// The variants

interface Run {
  variant: Variant;
  perSecond: number;
  /** Publisher CPU (user + system) per event, microseconds. */
  cpuUs: number;
  /** How many were still in the outbox when the producer had pushed the last one. */
  backlog: number;
  duplicates: number;
  reordered: number;
}

const quiet = { info: () => {}, warn: () => {}, error: () => {} };

function linkFor(b: Broker, box: Outbox, warnings: string[]): MqttLink {
  return new MqttLink({
    config: MqttSchema.parse({ url: b.url, protocolVersion: b.protocolVersion, clientId: `wgbench-link-${process.pid}`, reconnect: { minSeconds: 1, maxSeconds: 2 } }),
    site: 'bench',
    gateway: 'gw-1',
    bootId: randomUUID(),
    version: 'bench',
    policyHash: () => null,
    outbox: box,
    log: { ...quiet, warn: (o: object, msg?: string) => warnings.push(`${msg ?? ''} ${JSON.stringify(o)}`) },
  });
}

function online(link: MqttLink, ms = 10000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the link did not come online in ${ms} ms`)), ms);
    link.once('online', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

function cpuSince(start: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(start);
  return d.user + d.system;
}

async function runPlain(b: Broker, sub: Subscriber, topic: string, events: number, window: number): Promise<Omit<Run, 'variant'>> {
  const client = await mqtt.connectAsync(b.url, { protocolVersion: b.protocolVersion, clientId: `wgbench-plain-${process.pid}`, clean: true, reconnectPeriod: 0 });
  try {
    const delivered = sub.expect(topic, 60000);
    delivered.catch(() => undefined); // awaited below; a failure meanwhile is not unhandled
    const cpu = process.cpuUsage();
    const t0 = now();
    const inflight: Promise<unknown>[] = [];
    for (let i = 0; i < events; i++) {
      inflight.push(client.publishAsync(topic, payload(i), { qos: 1 }));
      if (inflight.length >= window) await inflight.shift();
    }
    await Promise.all(inflight);
    const d = await delivered;
    const cpuUs = cpuSince(cpu) / events;
    return { perSecond: (events / (d.lastAt - t0)) * 1000, cpuUs, backlog: 0, duplicates: d.duplicates, reordered: d.reordered };
  } finally {
    await client.endAsync();
  }
}

async function runOutbox(b: Broker, sub: Subscriber, dir: string, topic: string, events: number, fsync: 'always' | 'batch'): Promise<Omit<Run, 'variant'>> {
  const box = Outbox.open(dir, OutboxSchema.parse({ fsync })); // the agent's defaults: 16 MiB, 10,000 messages
  const warnings: string[] = [];
  const link = linkFor(b, box, warnings);
  try {
    const up = online(link);
    link.start();
    await up;
    const delivered = sub.expect(topic, 60000);
    delivered.catch(() => undefined); // awaited below; a failure meanwhile is not unhandled
    const cpu = process.cpuUsage();
    const t0 = now();
    // The producer hands over one event at a time and lets the event loop turn in between, as
    // events arriving from probes and the kernel would; the link drains meanwhile.
    for (let i = 0; i < events; i++) {
      box.push({ topic, payload: payload(i), retain: false, priority: 'normal' });
      link.kick();
      await nextTurn();
    }
    const backlog = box.stats().depth;
    const d = await delivered;
    const cpuUs = cpuSince(cpu) / events;
    // Every PUBACK acks its message in the outbox: nothing may be left.
    for (let i = 0; i < 100 && box.stats().depth > 0; i++) await sleep(10);
    if (box.stats().depth > 0) throw new Error(`${box.stats().depth} messages left in the outbox after delivery`);
    if (warnings.length > 0) throw new Error(`the link warned: ${warnings.join('; ')}`);
    return { perSecond: (events / (d.lastAt - t0)) * 1000, cpuUs, backlog, duplicates: d.duplicates, reordered: d.reordered };
  } finally {
    await link.stop().catch(() => undefined);
    box.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// Where the time goes: the outbox alone, and the link draining a full outbox

/** Pushes per second into the outbox alone (no link), the producer never yielding. */
function pushOnly(dir: string, events: number, fsync: 'always' | 'batch'): number {
  const box = Outbox.open(dir, OutboxSchema.parse({ fsync }));
  try {
    const t0 = now();
    for (let i = 0; i < events; i++) box.push({ topic: 'wgbench/push-only/0', payload: payload(i), retain: false, priority: 'normal' });
    box.flush();
    return (events / (now() - t0)) * 1000;
  } finally {
    box.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Messages per second the link delivers from an outbox already holding `events` (no producer). */
async function drainOnly(b: Broker, sub: Subscriber, dir: string, topic: string, events: number): Promise<number> {
  const box = Outbox.open(dir, OutboxSchema.parse({ fsync: 'batch' }));
  const warnings: string[] = [];
  const link = linkFor(b, box, warnings);
  try {
    for (let i = 0; i < events; i++) box.push({ topic, payload: payload(i), retain: false, priority: 'normal' });
    box.flush();
    const delivered = sub.expect(topic, 60000);
    delivered.catch(() => undefined); // awaited below
    let t0 = 0;
    link.once('online', () => (t0 = now())); // the link starts draining right after this
    link.start();
    const d = await delivered;
    if (warnings.length > 0) throw new Error(`the link warned: ${warnings.join('; ')}`);
    return (events / (d.lastAt - t0)) * 1000;
  } finally {
    await link.stop().catch(() => undefined);
    box.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

function fsType(dir: string): string {
  const r = spawnSync('stat', ['-f', '-c', '%T', dir], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : '?';
}

// ---------------------------------------------------------------------------------------------

export async function outbox(): Promise<string[]> {
  const events = envNumber('WARDGATE_BENCH_EVENTS', 5000);
  const rounds = envNumber('WARDGATE_BENCH_ROUNDS', 5);
  const kind = chooseBroker();
  return withTempDir('wgbench-outbox-', async (dir) => {
    return withBroker(kind, dir, async (b) => {
      console.log(`broker: ${b.describe}`);
      console.log(`subscriber: bench/mqtt-count.mjs in its own process, QoS 1; outbox journal in ${dir} (${fsType(dir)})`);
      console.log(
        `${events} events of ${PAYLOAD_BYTES} bytes per run, QoS 1, a warm-up run of each, then ${rounds} rounds with the variants alternating; ` +
          'events/s = events / (first publish or push .. last one at the subscriber)',
      );
      return withSubscriber(b, async (sub) => {
        const run = (v: Variant, round: number | 'warm-up', n: number) => {
          const topic = `wgbench/${v}-${round}/${n}`;
          return v === 'plain'
            ? runPlain(b, sub, topic, n, 1)
            : v === 'plain-w32'
              ? runPlain(b, sub, topic, n, WINDOW)
              : runOutbox(b, sub, join(dir, `${v}-${round}`), topic, n, v);
        };
        // A first run is slower for all of them (JIT, page cache, the broker's allocations).
        for (const v of VARIANTS) await run(v, 'warm-up', Math.min(events, 1000));
        const runs = new Map<Variant, Run[]>(VARIANTS.map((v) => [v, []]));
        for (let round = 0; round < rounds; round++) {
          for (const v of VARIANTS) {
            const r = await run(v, round, events);
            runs.get(v)?.push({ variant: v, ...r });
            console.log(
              `  round ${round + 1}  ${v.padEnd(9)} ${r.perSecond.toFixed(0).padStart(6)} events/s  ${r.cpuUs.toFixed(0).padStart(4)} us CPU/event` +
                (v === 'always' || v === 'batch' ? `  backlog ${r.backlog}` : '') +
                (r.duplicates + r.reordered > 0 ? `  duplicates ${r.duplicates} reordered ${r.reordered}` : ''),
            );
          }
        }
        const med = (v: Variant, f: (r: Run) => number = (r) => r.perSecond) => median((runs.get(v) ?? []).map(f));
        const lost = [...runs.values()].flat().reduce((n, r) => n + r.duplicates + r.reordered, 0);

        // Where the time goes (one run each).
        const pushAlways = pushOnly(join(dir, 'push-always'), events, 'always');
        const pushBatch = pushOnly(join(dir, 'push-batch'), events, 'batch');
        const drain = await drainOnly(b, sub, join(dir, 'drain'), `wgbench/drain-only/${events}`, events);

        const plain = med('plain');
        console.log('');
        console.log(
          table(
            ['variant', 'runs (events/s)', 'median', 'CPU us/event', 'vs plain', 'vs plain-w32'],
            VARIANTS.map((v) => [
              v,
              (runs.get(v) ?? []).map((r) => r.perSecond.toFixed(0)).join(' '),
              med(v).toFixed(0),
              med(v, (r) => r.cpuUs).toFixed(0),
              ratio(med(v) / plain),
              ratio(med(v) / med('plain-w32')),
            ]),
          ),
        );
        console.log('');
        console.log(`where the time goes (one run each): outbox.push alone ${pushAlways.toFixed(0)}/s (always), ${pushBatch.toFixed(0)}/s (batch);`);
        console.log(`  the link draining an outbox already holding ${events}: ${drain.toFixed(0)}/s`);
        console.log(`  duplicates and reordered messages at the subscriber, all runs: ${lost}`);

        const verdict = (x: number) => `${ratio(x)} (target >= ${TARGET}x: ${x >= TARGET ? 'PASS' : 'MISS'})`;
        const summary = [
          `outbox: ${kind}, ${events} x ${PAYLOAD_BYTES} B, QoS 1; always/plain = ${verdict(med('always') / plain)}, batch/plain = ${verdict(med('batch') / plain)}; ` +
            `against plain-w32: always ${ratio(med('always') / med('plain-w32'))}, batch ${ratio(med('batch') / med('plain-w32'))}`,
        ];
        console.log('');
        for (const line of summary) console.log(line);
        return summary;
      });
    });
  });
}
