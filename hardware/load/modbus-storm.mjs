#!/usr/bin/env node
// A storm of malformed Modbus TCP over many connections, and connection churn, from one peer:
// what a fuzzer, a broken integration or a worm on a hospital PC sends at a device's port 502.
//
//   modbus-storm.mjs HOST PORT [--seconds 10] [--frames 20000] [--parallel 6] [--churn 0]
//
// --parallel connections at a time each send a batch of 1-24 well-framed but malformed or denied
// requests (quantities out of range, byte counts that lie, values a function rules out, random
// function codes and unit ids, the inputs that crashed libmodbus servers) and, one time in two,
// a frame that breaks the MBAP framing itself (random bytes, a protocol id not 0, a length of 0,
// 1, 255 or 65535); then waits for the answers or the close, and opens the next.
// Every second, --churn more connections are opened at once and held for 300 ms: beyond the
// proxy's limit per peer they should be reset.
// Stops at --frames frames sent or --seconds, whichever is first, and prints one JSON line.
import { Buffer } from 'node:buffer';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { clearTimeout } from 'node:timers';
import { randomBytes, randomInt } from 'node:crypto';
import { adu, u16 } from './mbap.mjs';

const args = process.argv.slice(2);
const [host, portText] = args;
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const port = Number(portText);
const seconds = Math.min(opt('seconds', 10), 60);
const maxFrames = Math.min(opt('frames', 20000), 1_000_000);
const parallel = opt('parallel', 6);
const churn = opt('churn', 0);
if (!host || !(port > 0)) {
  process.stderr.write('usage: modbus-storm.mjs HOST PORT [--seconds S] [--frames N] [--parallel N] [--churn N]\n');
  process.exit(2);
}

const tid = () => randomInt(0, 0x10000);

/** Requests that are well framed but that their function's definition rules out (MAP 6.x). */
const malformed = [
  () => adu(tid(), 1, [0x03, ...u16(0), ...u16(0)]), // 6.3: quantity 0
  () => adu(tid(), 1, [0x03, ...u16(0), ...u16(126)]), // 6.3: quantity > 125
  () => adu(tid(), 1, [0x03, ...u16(65500), ...u16(100)]), // past address 65535
  () => adu(tid(), 1, [0x01, ...u16(0), ...u16(2001)]), // 6.1: > 2000 coils
  () => adu(tid(), 1, [0x04, 0, 0, 0]), // 6.4: 3 data bytes, not 4
  () => adu(tid(), 1, [0x05, ...u16(3), 0x12, 0x34]), // 6.5: neither 0x0000 nor 0xFF00
  () => adu(tid(), 1, [0x06, 0, 1, 2]), // 6.6: 3 data bytes
  () => adu(tid(), 1, [0x10, ...u16(100), ...u16(2), 3, 1, 2, 3]), // 6.12: byte count not 2 x quantity
  () => adu(tid(), 1, [0x0f, ...u16(0), ...u16(0), 0]), // 6.11: quantity 0
  () => adu(tid(), 1, [0x2b, 0x0e, 9, 0]), // 6.21: read device id code 9
  () => adu(tid(), 1, [0x00]), // function code 0
  // A random function code and unit id with a random PDU: denied or malformed, each with its own
  // dedup key, so the agent's limiter (not the dedup window) is what holds the events back.
  () => adu(tid(), randomInt(0, 256), [randomInt(0, 256), ...randomBytes(randomInt(0, 12))]),
  () => adu(tid(), 1, [randomInt(0x80, 0x100), ...randomBytes(4)]),
];

/** Inputs that crashed libmodbus servers (issues 612, 614, 837; CVE-2019-14462/14463, CVE-2022-0367). */
const crashers = [
  Buffer.from('A90AAAAN/xcBYgABAGoAAQLXEQ==', 'base64'),
  Buffer.from([0x03, 0xdd, 0, 0, 0, 5, 0xff, 0x17, 0x02, 0, 0]),
  adu(7, 1, [0x17, ...u16(0), ...u16(1), ...u16(10), ...u16(1), 0xff, 0, 1]), // byte count 0xff for 2 bytes
  adu(7, 1, [0x17, ...u16(0), ...u16(1), ...u16(10), ...u16(0x79), 0xf2, 0, 1]),
  adu(8, 0xff, [0x07]),
  adu(8, 0xff, [0x11]),
  adu(8, 1, [0x07, 0]),
  adu(8, 1, [0x11, 0, 0]),
  adu(9, 1, [0x10, ...u16(10), ...u16(0x7b), 0xf6, 0, 1]),
  adu(9, 1, [0x0f, ...u16(0), ...u16(0x7b0), 0xf6, 1]),
];

/** Frames after which no frame boundary can be trusted: the proxy closes the connection. */
const breakers = [
  () => randomBytes(randomInt(1, 300)),
  () => Buffer.from([...u16(tid()), ...u16(randomInt(1, 0x10000)), 0, 6, 1, 3, 0, 0, 0, 1]), // protocol id not 0
  () => Buffer.from([...u16(tid()), 0, 0, 0, 0, 1]), // length 0
  () => Buffer.from([...u16(tid()), 0, 0, 0, 1, 1]), // length 1: a unit id and no function
  () => Buffer.concat([Buffer.from([...u16(tid()), 0, 0, 0, 255, 1, 3]), randomBytes(253)]), // length 255: one past MAP 4.1
  () => Buffer.concat([Buffer.from([...u16(tid()), 0, 0, 0xff, 0xff, 1, 0x10]), randomBytes(1000)]), // length 65535
];

const pick = (list) => list[randomInt(0, list.length)];
const stats = {
  frames: 0,
  malformed: 0,
  crashers: 0,
  breakers: 0,
  connections: 0,
  /** Connections reset after they were open (a refusal by the proxy shows as a reset). */
  resets: 0,
  exceptions: 0,
  answers: 0,
  /** Connections that failed before they were open, by error code (ECONNRESET: the proxy's refusal). */
  connectErrors: {},
  churn: { opened: 0, held: 0, reset: 0 },
  seconds: 0,
};
const t0 = performance.now();
const deadline = t0 + seconds * 1000;
const more = () => stats.frames < maxFrames && performance.now() < deadline;

function oneConnection() {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    stats.connections++;
    let settled = false;
    let connected = false;
    const finish = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s.destroy();
      resolve();
    };
    // The connect may take a while under a SYN flood; the answers get 300 ms once all is sent.
    const timer = setTimeout(finish, 1500);
    let inbox = Buffer.alloc(0);
    s.on('data', (chunk) => {
      inbox = Buffer.concat([inbox, chunk]);
      while (inbox.length >= 9) {
        const size = 6 + inbox.readUInt16BE(4);
        if (inbox.length < size) break;
        stats.answers++;
        if (inbox[7] & 0x80) stats.exceptions++;
        inbox = inbox.subarray(size);
      }
    });
    s.on('error', (e) => {
      if (!connected) stats.connectErrors[e.code] = (stats.connectErrors[e.code] ?? 0) + 1;
      else stats.resets++;
      finish();
    });
    s.on('end', finish);
    s.on('connect', () => {
      connected = true;
      const parts = [];
      const n = randomInt(1, 25);
      for (let i = 0; i < n && stats.frames < maxFrames; i++) {
        if (randomInt(0, 5) === 0) {
          parts.push(pick(crashers));
          stats.crashers++;
        } else {
          parts.push(pick(malformed)());
          stats.malformed++;
        }
        stats.frames++;
      }
      if (randomInt(0, 2) === 0 && stats.frames < maxFrames) {
        parts.push(pick(breakers)());
        stats.breakers++;
        stats.frames++;
      }
      s.end(Buffer.concat(parts));
      clearTimeout(timer);
      setTimeout(finish, 300);
    });
  });
}

async function worker() {
  while (more()) await oneConnection();
}

async function churner() {
  while (churn > 0 && more()) {
    const sockets = Array.from({ length: churn }, () => {
      const s = net.connect({ host, port });
      const st = { reset: false };
      stats.churn.opened++;
      s.on('error', () => (st.reset = true));
      s.on('close', () => (st.reset = true));
      return { s, st };
    });
    await new Promise((r) => setTimeout(r, 300));
    for (const { s, st } of sockets) {
      if (st.reset) stats.churn.reset++;
      else stats.churn.held++;
      s.destroy();
    }
    await new Promise((r) => setTimeout(r, 700));
  }
}

await Promise.all([...Array.from({ length: parallel }, worker), churner()]);
stats.seconds = Math.round(performance.now() - t0) / 1000;
process.stdout.write(`${JSON.stringify(stats)}\n`);
process.exit(0);
