// Packet rate of a one-way UDP stream through the 10,000-entry allow-list (bench/site.ts). A UDP
// flow that is never answered stays `ct state new`, so unlike a TCP transfer every packet misses
// the established fast path and is classified in full: wardgate's verdict-map lookups and one
// set lookup against the naive rendering's walk down its rules (the matching UDP rule is the
// 9,999th of 10,000). The sender is bench/udp-blast.mjs (64-byte datagrams, as fast as Node
// sends them, no reply ever); what counts is the packets per second that reach the device's
// interface.
import { join } from 'node:path';
import { envNumber, generatePolicy, median, ratio, table, TARGET_DEVICE_V4 } from './lib.js';
import { withTrafficSite, type TrafficSite, type Variant } from './site.js';

const DEVICES = 1000;
const PER_DEVICE = 10;
const LEN = 64;
const VARIANTS: Variant[] = ['none', 'wardgate', 'linear'];
const BLAST = join(import.meta.dirname, 'udp-blast.mjs');

async function rxPackets(t: TrafficSite): Promise<number> {
  const r = await t.site.exec('dev', ['ip', '-s', '-j', 'link', 'show', 'eth0']);
  if (r.code !== 0) throw new Error(`ip -s link show eth0 failed: ${r.stderr.trim()}`);
  const links = JSON.parse(r.stdout) as { stats64?: { rx?: { packets?: number } } }[];
  const n = links[0]?.stats64?.rx?.packets;
  if (n === undefined) throw new Error('ip -s -j link gave no stats64.rx.packets');
  return n;
}

async function blast(t: TrafficSite, seconds: number): Promise<{ kpps: number; sentKpps: number }> {
  const before = await rxPackets(t);
  const r = await t.site.exec('peer', [process.execPath, BLAST, TARGET_DEVICE_V4, String(t.g.last.port), String(seconds), String(LEN)], {
    timeoutMs: (seconds + 30) * 1000,
  });
  if (r.code !== 0) throw new Error(`udp-blast failed (exit ${r.code}): ${r.stderr.trim()}`);
  const out = JSON.parse(r.stdout) as { sent: number; seconds: number };
  const delivered = (await rxPackets(t)) - before;
  return { kpps: delivered / out.seconds / 1000, sentKpps: out.sent / out.seconds / 1000 };
}

export async function udp(): Promise<string[]> {
  const seconds = envNumber('WARDGATE_BENCH_SECONDS', 3);
  const rounds = envNumber('WARDGATE_BENCH_ROUNDS', 3);
  const g = generatePolicy(DEVICES, PER_DEVICE, { udpTwin: true });
  console.log(
    `one-way UDP, ${LEN}-byte datagrams: ${g.last.peer} -> ${TARGET_DEVICE_V4}:${g.last.port} through the gateway namespace (router mode), ` +
      `${g.entries} allow entries; ${seconds} s, ${rounds} rounds, variants alternating, median of packets/s reaching the device`,
  );
  return withTrafficSite(g, async (t) => {
    const runs = new Map<Variant, { kpps: number; sentKpps: number }[]>(VARIANTS.map((v) => [v, []]));
    let check = '';
    for (let round = 0; round < rounds; round++) {
      for (const v of VARIANTS) {
        await t.use(v);
        const r = await blast(t, seconds);
        runs.get(v)?.push(r);
        console.log(`  round ${round + 1}  ${v.padEnd(8)} ${r.kpps.toFixed(1).padStart(6)} kpps delivered of ${r.sentKpps.toFixed(1)} kpps sent`);
        if (v === 'wardgate' && round === 0) check = await t.checkWardgate('udp');
      }
    }
    await t.use('none');
    console.log(`  ${check}`);

    const med = (v: Variant) => median((runs.get(v) ?? []).map((r) => r.kpps));
    const base = med('none');
    console.log('');
    console.log(
      table(
        ['variant', 'runs (kpps delivered)', 'median kpps', 'vs none'],
        VARIANTS.map((v) => [v, (runs.get(v) ?? []).map((r) => r.kpps.toFixed(1)).join(' '), med(v).toFixed(1), ratio(med(v) / base)]),
      ),
    );
    const summary = [
      `udp: one-way 64-byte datagrams (every packet classified), wardgate/none = ${ratio(med('wardgate') / base)}, ` +
        `linear/none = ${ratio(med('linear') / base)}, wardgate/linear = ${ratio(med('wardgate') / med('linear'))}`,
    ];
    console.log('');
    for (const line of summary) console.log(line);
    return summary;
  });
}
