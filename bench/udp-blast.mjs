#!/usr/bin/env node
// A one-way UDP sender for bench/udp.ts: sends LEN-byte datagrams to HOST:PORT as fast as it can
// for SECONDS, never reads a reply, then prints {"sent":N,"errors":M,"seconds":S}.
//   node bench/udp-blast.mjs HOST PORT SECONDS [LEN]
import dgram from 'node:dgram';

const [host, portText, secondsText, lenText = '64'] = process.argv.slice(2);
const port = Number(portText);
const sock = dgram.createSocket('udp4');
const payload = new Uint8Array(Number(lenText)).fill(0x77);
const start = Date.now();
const end = start + Number(secondsText) * 1000;
const WINDOW = 64; // sends in flight in libuv
let sent = 0;
let errors = 0;
let inflight = 0;
let done = false;

const finish = () => {
  done = true;
  process.stdout.write(`${JSON.stringify({ sent, errors, seconds: (Date.now() - start) / 1000 })}\n`);
  sock.close();
};

const pump = () => {
  while (!done && inflight < WINDOW) {
    if (Date.now() >= end) {
      if (inflight === 0) finish();
      return;
    }
    inflight++;
    // Not connected: an ICMP error coming back does not turn later sends into errors.
    sock.send(payload, port, host, (err) => {
      inflight--;
      if (err) errors++;
      else sent++;
      if (inflight <= WINDOW / 2) pump();
    });
  }
};

pump();
