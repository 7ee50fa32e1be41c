#!/usr/bin/env node
// The subscriber of bench/outbox.ts, in a process of its own: subscribes to wgbench/# at QoS 1
// and counts what arrives on each topic wgbench/<run>/<count>. Every payload starts with
// {"n":<index>; it counts duplicates and messages that came after a later one (reordered).
// Prints `ready` once subscribed, then one JSON line per topic when every index 0..count-1 has
// arrived: {"topic":...,"count":N,"duplicates":D,"reordered":R,"firstAt":ms,"lastAt":ms}
// (ms: performance.timeOrigin + performance.now(), comparable with the parent's clock).
//   node bench/mqtt-count.mjs URL PROTOCOL_VERSION
import { performance } from 'node:perf_hooks';
import mqtt from 'mqtt';

const [url, versionText = '5'] = process.argv.slice(2);
const now = () => performance.timeOrigin + performance.now();
const runs = new Map();

const client = await mqtt.connectAsync(url, {
  protocolVersion: Number(versionText),
  clientId: `wgbench-sub-${process.pid}`,
  clean: true,
  reconnectPeriod: 0,
});
client.on('message', (topic, payload) => {
  let r = runs.get(topic);
  if (!r) {
    const want = Number(topic.slice(topic.lastIndexOf('/') + 1));
    r = { want, seen: new Uint8Array(want), unique: 0, max: -1, duplicates: 0, reordered: 0, firstAt: now(), lastAt: 0 };
    runs.set(topic, r);
  }
  const m = /^\{"n":(\d+)/.exec(payload.toString('latin1', 0, 24));
  const n = m ? Number(m[1]) : -1;
  if (n < 0 || n >= r.want) return;
  if (r.seen[n] === 1) {
    r.duplicates++;
    return;
  }
  r.seen[n] = 1;
  r.unique++;
  if (n < r.max) r.reordered++;
  else r.max = n;
  if (r.unique === r.want) {
    r.lastAt = now();
    const { want, duplicates, reordered, firstAt, lastAt } = r;
    process.stdout.write(`${JSON.stringify({ topic, count: want, duplicates, reordered, firstAt, lastAt })}\n`);
  }
});
client.on('error', (err) => process.stderr.write(`mqtt-count: ${err.message}\n`));
let ending = false;
client.on('close', () => process.exit(ending ? 0 : 3));
await client.subscribeAsync('wgbench/#', { qos: 1 });
process.stdout.write('ready\n');
process.stdin.resume();
process.stdin.on('end', () => {
  ending = true;
  void client.endAsync().then(() => process.exit(0));
});
