#!/usr/bin/env node
// A Modbus TCP poller of the kind a lab middleware or a building system runs: one connection,
// and every EVERY ms a cycle that writes one holding register and reads back four, each answer
// checked. A cycle is missed when its two answers are not both back, correct, within EVERY ms
// (an exception, a wrong value, a dropped connection and a late answer all count).
//
//   modbus-loop.mjs HOST PORT [--unit 1] [--address 110] [--seconds 20] [--every 100]
//                   [--probe-every 1000] [--probe-timeout 3000]
//
// Cycle i writes value (i + 1) to register ADDRESS + i % 4 and reads ADDRESS..ADDRESS+3; the
// read must show that value (both requests go in one segment; the server answers in order).
// Every PROBE ms a separate, new connection reads one register and closes: that a new connection
// still gets through within PROBE-TIMEOUT ms (a SYN flood fills the listen queue, not the
// established connection; a lost SYN is sent again after 1 s, so the default allows two tries).
// Prints one JSON line at the end (see `report` below).
import { Buffer } from 'node:buffer';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { clearTimeout } from 'node:timers';
import { readHolding, takeFrames, writeRegister } from './mbap.mjs';

const args = process.argv.slice(2);
const [host, portText] = args;
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const port = Number(portText);
const unit = opt('unit', 1);
const address = opt('address', 110);
const seconds = opt('seconds', 20);
const every = opt('every', 100);
const probeEvery = opt('probe-every', 1000);
const probeTimeout = opt('probe-timeout', 3000);
if (!host || !(port > 0) || !(every > 0) || !(seconds > 0)) {
  process.stderr.write('usage: modbus-loop.mjs HOST PORT [--unit N] [--address N] [--seconds S] [--every MS] [--probe-every MS]\n');
  process.exit(2);
}

const cycles = [];
/** tid -> { cycle, kind, expect } */
const pending = new Map();
const problems = [];
const note = (i, what) => {
  if (problems.length < 20) problems.push({ cycle: i, what });
};
let tid = 0;
let socket;
let connected = false;
let reconnects = 0;
let inbox = Buffer.alloc(0);

function open() {
  const s = net.connect({ host, port });
  s.setNoDelay(true);
  socket = s;
  s.on('connect', () => (connected = true));
  s.on('data', (chunk) => {
    inbox = Buffer.concat([inbox, chunk]);
    let r;
    try {
      r = takeFrames(inbox);
    } catch (err) {
      note(-1, err.message);
      s.destroy();
      return;
    }
    inbox = Buffer.from(r.rest);
    for (const f of r.frames) answer(f);
  });
  const lost = (why) => () => {
    if (socket !== s) return;
    connected = false;
    socket = undefined;
    inbox = Buffer.alloc(0);
    for (const [, p] of pending) fail(p.cycle, `connection ${why}`);
    pending.clear();
  };
  s.on('error', (e) => lost(e.code ?? e.message)());
  s.on('close', lost('closed'));
}

function fail(i, what) {
  const c = cycles[i];
  if (!c || c.failed) return;
  c.failed = what;
  note(i, what);
}

function answer(frame) {
  const p = pending.get(frame.readUInt16BE(0));
  if (!p) return note(-1, `answer ${frame.readUInt16BE(0)} to no request`);
  pending.delete(frame.readUInt16BE(0));
  const c = cycles[p.cycle];
  const fc = frame[7];
  if (fc & 0x80) return fail(p.cycle, `${p.kind}: exception ${frame[8]}`);
  if (p.kind === 'write') {
    // MAP 6.6: the normal response is an echo of the request.
    if (!frame.subarray(7).equals(p.expect)) return fail(p.cycle, 'write: the answer is not the echo of the request');
  } else {
    // MAP 6.3: function, byte count, then the registers.
    if (fc !== 0x03 || frame[8] !== 8 || frame.length !== 17) return fail(p.cycle, `read: answer of ${frame.length} bytes`);
    const got = frame.readUInt16BE(9 + 2 * (p.cycle % 4));
    if (got !== p.expect) return fail(p.cycle, `read: register ${address + (p.cycle % 4)} is ${got}, not the ${p.expect} just written`);
  }
  c.answers++;
  if (c.answers === 2) c.latency = performance.now() - c.sent;
}

function cycle(i) {
  const c = { sent: performance.now(), answers: 0, latency: undefined, failed: undefined };
  cycles[i] = c;
  if (!connected) {
    fail(i, 'not connected');
    if (!socket) {
      reconnects++;
      open();
    }
    return;
  }
  const value = (i + 1) & 0xffff;
  const w = writeRegister(++tid, unit, address + (i % 4), value);
  pending.set(tid & 0xffff, { cycle: i, kind: 'write', expect: w.subarray(7) });
  const r = readHolding(++tid, unit, address, 4);
  pending.set(tid & 0xffff, { cycle: i, kind: 'read', expect: value });
  socket.write(Buffer.concat([w, r]));
}

let loopStart = 0;
const probes = { sent: 0, ok: 0, failed: 0, worstMs: 0, problems: [] };
function probe() {
  probes.sent++;
  const t0 = performance.now();
  const s = net.connect({ host, port });
  let buf = Buffer.alloc(0);
  const done = (ok, why) => {
    if (s.destroyed) return;
    s.destroy();
    clearTimeout(timer);
    if (ok) {
      probes.ok++;
      probes.worstMs = Math.max(probes.worstMs, performance.now() - t0);
    } else {
      probes.failed++;
      if (probes.problems.length < 10) probes.problems.push(`${why} at ${Math.round(t0 - loopStart)} ms`);
    }
  };
  let connectedAt;
  // Which leg stalled: the handshake with the gateway's listener, or the answer (the proxy's own
  // connection to the device, then the device).
  const timer = setTimeout(() => done(false, connectedAt === undefined ? 'no handshake' : `connected in ${Math.round(connectedAt)} ms, no answer`), probeTimeout);
  s.on('connect', () => {
    connectedAt = performance.now() - t0;
    s.write(readHolding(1, unit, address, 1));
  });
  s.on('data', (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    if (buf.length >= 11) done(buf[7] === 0x03, `answer fc ${buf[7]}`);
  });
  s.on('error', (e) => done(false, e.code ?? e.message));
  s.on('end', () => done(false, `closed after ${Math.round(performance.now() - t0)} ms with ${buf.length} bytes`));
}

function percentile(sorted, q) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
}

const total = Math.round((seconds * 1000) / every);
const start = performance.now();
open();
await new Promise((resolve) => {
  const t = setTimeout(() => resolve(), 3000);
  socket.once('connect', () => {
    clearTimeout(t);
    resolve();
  });
});
const t0 = performance.now();
loopStart = t0;
let nextProbe = t0 + probeEvery;
for (let i = 0; i < total; i++) {
  // Drift-free schedule: cycle i starts at t0 + i * every, whatever the last one took.
  const wait = t0 + i * every - performance.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  cycle(i);
  if (probeEvery > 0 && performance.now() >= nextProbe) {
    nextProbe += probeEvery;
    probe();
  }
}
// The last cycle's answers, and the last probe's.
await new Promise((r) => setTimeout(r, Math.max(every, probeTimeout) + 50));
socket?.destroy();

const missedAt = [];
const lat = [];
for (const [i, c] of cycles.entries()) {
  if (c.latency !== undefined) lat.push(c.latency);
  if (c.failed !== undefined || c.latency === undefined || c.latency > every) missedAt.push(i);
}
lat.sort((a, b) => a - b);
const round = (x) => (x === null ? null : Math.round(x * 100) / 100);
const report = {
  cycles: cycles.length,
  missed: missedAt.length,
  /** Start of each missed cycle, in ms from the first cycle. */
  missedAtMs: missedAt.map((i) => i * every),
  late: cycles.filter((c) => c.failed === undefined && c.latency !== undefined && c.latency > every).length,
  unanswered: cycles.filter((c) => c.failed === undefined && c.latency === undefined).length,
  failed: cycles.filter((c) => c.failed !== undefined).length,
  p50Ms: round(percentile(lat, 0.5)),
  p99Ms: round(percentile(lat, 0.99)),
  maxMs: round(lat.length ? lat[lat.length - 1] : null),
  reconnects,
  connectMs: round(t0 - start),
  probes,
  problems,
};
process.stdout.write(`${JSON.stringify(report)}\n`);
process.exit(0);
