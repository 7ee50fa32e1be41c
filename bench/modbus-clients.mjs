#!/usr/bin/env node
// Modbus TCP clients for bench/modbus-proxy.ts: CONNECTIONS connections to 127.0.0.1:PORT, each
// sending one request at a time (the next as soon as the answer is in) for SECONDS. Requests read
// 10 holding registers (03) at addresses 0-99; with WRITE_EVERY = n, every n-th request of a
// connection writes one register (06) at 100-119 instead. Every answer is checked (function,
// transaction id, byte count, the first register's value, the write's echo); a wrong one counts
// as an error. TCP_NODELAY is on. When done it prints one JSON line: requests, writes, errors,
// seconds, latency percentiles in microseconds, and its own CPU time in microseconds.
//   node bench/modbus-clients.mjs PORT CONNECTIONS SECONDS [WRITE_EVERY]
import { Buffer } from 'node:buffer';
import { connect } from 'node:net';
import { performance } from 'node:perf_hooks';

const [portText, connText, secondsText, writeEveryText = '0'] = process.argv.slice(2);
const port = Number(portText);
const connections = Number(connText);
const seconds = Number(secondsText);
const writeEvery = Number(writeEveryText);

/** Latencies of every request, in microseconds; grown when full. */
let lat = new Float64Array(1 << 20);
let count = 0;
let writes = 0;
let errors = 0;
let firstError = '';

function note(us) {
  if (count === lat.length) {
    const bigger = new Float64Array(lat.length * 2);
    bigger.set(lat);
    lat = bigger;
  }
  lat[count++] = us;
}

function fail(why) {
  errors++;
  if (firstError === '') firstError = why;
}

function run(endAt) {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1', noDelay: true });
    s.setNoDelay(true);
    const req = Buffer.alloc(12);
    req.writeUInt16BE(0, 2);
    req.writeUInt16BE(6, 4);
    req[6] = 1;
    let tid = 0;
    let n = 0;
    let sentAt = 0;
    let isWrite = false;
    let address = 0;
    let value = 0;
    let rest = Buffer.alloc(0);
    const send = () => {
      n++;
      tid = (tid + 1) & 0xffff;
      isWrite = writeEvery > 0 && n % writeEvery === 0;
      req.writeUInt16BE(tid, 0);
      if (isWrite) {
        address = 100 + (n % 20);
        value = n & 0xffff;
        req[7] = 0x06;
        req.writeUInt16BE(address, 8);
        req.writeUInt16BE(value, 10);
      } else {
        address = n % 100;
        req[7] = 0x03;
        req.writeUInt16BE(address, 8);
        req.writeUInt16BE(10, 10);
      }
      sentAt = performance.now();
      s.write(req);
    };
    const check = (adu) => {
      if (adu.readUInt16BE(0) !== tid) return fail(`transaction ${adu.readUInt16BE(0)} answers ${tid}`);
      if (isWrite) {
        if (adu.length !== 12 || adu[7] !== 0x06 || adu.readUInt16BE(8) !== address || adu.readUInt16BE(10) !== value) fail(`write ${address}=${value} answered ${adu.toString('hex')}`);
        else writes++;
      } else if (adu.length !== 29 || adu[7] !== 0x03 || adu[8] !== 20 || adu.readUInt16BE(9) !== address) fail(`read ${address} answered ${adu.toString('hex')}`);
    };
    s.on('connect', send);
    s.on('data', (chunk) => {
      const buf = rest.length > 0 ? Buffer.concat([rest, chunk]) : chunk;
      if (buf.length < 6 || buf.length < 6 + buf.readUInt16BE(4)) {
        rest = Buffer.from(buf);
        return;
      }
      const size = 6 + buf.readUInt16BE(4);
      if (buf.length > size) fail(`${buf.length - size} bytes after an answer, with one request outstanding`);
      rest = Buffer.alloc(0);
      note((performance.now() - sentAt) * 1000);
      check(buf.subarray(0, size));
      if (performance.now() < endAt) send();
      else s.end();
    });
    s.on('close', () => resolve());
    s.on('error', reject);
  });
}

const cpu0 = process.cpuUsage();
const t0 = performance.now();
const endAt = t0 + seconds * 1000;
try {
  await Promise.all(Array.from({ length: connections }, () => run(endAt)));
} catch (err) {
  fail(`connection: ${err.message}`);
}
const elapsed = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
const sorted = lat.subarray(0, count).sort();
const pct = (p) => (count === 0 ? NaN : sorted[Math.min(count - 1, Math.floor((p / 100) * count))]);
process.stdout.write(
  `${JSON.stringify({ requests: count, writes, errors, firstError, seconds: elapsed, p50us: pct(50), p99us: pct(99), maxUs: count === 0 ? NaN : sorted[count - 1], cpuUs: cpu.user + cpu.system })}\n`,
);
