#!/usr/bin/env node
// New UDP flows for bench/flows.ts: COUNT datagrams to HOST:PORT, each from its own source port
// (FIRST, FIRST+1, ...), so that each is a new conntrack entry, at RATE flows per second (0: as
// fast as it can); at most 256 sockets open at once. Prints {"sent":N,"errors":M,"seconds":S}.
//   node bench/flow-storm.mjs HOST PORT COUNT FIRST [RATE]
import dgram from 'node:dgram';

const [host, portText, countText, firstText, rateText = '0'] = process.argv.slice(2);
const port = Number(portText);
const count = Number(countText);
const first = Number(firstText);
const rate = Number(rateText);
const WINDOW = 256;
const payload = new Uint8Array(16).fill(0x77);
const start = Date.now();
let next = 0;
let open = 0;
let sent = 0;
let errors = 0;

const finish = () => process.stdout.write(`${JSON.stringify({ sent, errors, seconds: (Date.now() - start) / 1000 })}\n`);

const one = () => {
  const i = next++;
  open++;
  const sock = dgram.createSocket('udp4');
  const done = (err) => {
    if (err) errors++;
    else sent++;
    sock.close();
    open--;
    if (next >= count && open === 0) finish();
    else pump();
  };
  sock.on('error', done);
  sock.bind(first + i, () => sock.send(payload, port, host, done));
};

/** Starts what the rate allows by now, within the window. */
function pump() {
  const allowed = rate > 0 ? Math.min(count, Math.floor(((Date.now() - start) / 1000) * rate) + 1) : count;
  while (next < allowed && open < WINDOW) one();
}

if (rate > 0) {
  const timer = setInterval(() => {
    pump();
    if (next >= count) clearInterval(timer);
  }, 5);
}
pump();
