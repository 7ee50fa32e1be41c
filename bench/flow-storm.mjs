#!/usr/bin/env node
// New UDP flows for bench/flows.ts: COUNT datagrams to HOST:PORT, each from its own source port
// (FIRST, FIRST+1, ...), so that each is a new conntrack entry, at RATE flows per second (0: as
// fast as it can); at most 256 sockets open at once. Prints {"sent":N,"errors":M,"seconds":S}.
// With "wait", it prints "ready <pid>" and starts on SIGUSR1 (so that the benchmark's CPU window holds
// no process spawn).
//   node bench/flow-storm.mjs HOST PORT COUNT FIRST [RATE [wait]]
/* global setInterval, clearInterval, clearTimeout */
import dgram from 'node:dgram';

const [host, portText, countText, firstText, rateText = '0', wait] = process.argv.slice(2);
const port = Number(portText);
const count = Number(countText);
const first = Number(firstText);
const rate = Number(rateText);
const WINDOW = 256;
const payload = new Uint8Array(16).fill(0x77);
let start = Date.now();
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

function go() {
  start = Date.now();
  if (rate > 0) {
    const timer = setInterval(() => {
      pump();
      if (next >= count) clearInterval(timer);
    }, 5);
  }
  pump();
}

if (wait === 'wait') {
  // A signal listener alone does not keep node running; give up after a minute.
  const idle = setInterval(() => undefined, 1000);
  const giveUp = setTimeout(() => process.exit(3), 60_000);
  process.once('SIGUSR1', () => {
    clearInterval(idle);
    clearTimeout(giveUp);
    go();
  });
  process.stdout.write(`ready ${process.pid}\n`);
} else {
  go();
}
