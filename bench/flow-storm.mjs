#!/usr/bin/env node
// New UDP flows for bench/flows.ts: COUNT datagrams to HOST:PORT, each from its own source port
// (FIRST, FIRST+1, ...), so that each is a new conntrack entry; at most WINDOW sockets open at
// once. Prints {"sent":N,"errors":M,"seconds":S}.
//   node bench/flow-storm.mjs HOST PORT COUNT FIRST [WINDOW]
import dgram from 'node:dgram';

const [host, portText, countText, firstText, windowText = '256'] = process.argv.slice(2);
const port = Number(portText);
const count = Number(countText);
const first = Number(firstText);
const window = Number(windowText);
const payload = new Uint8Array(16).fill(0x77);
const start = Date.now();
let next = 0;
let open = 0;
let sent = 0;
let errors = 0;

const one = () => {
  const i = next++;
  open++;
  const sock = dgram.createSocket('udp4');
  const done = (err) => {
    if (err) errors++;
    else sent++;
    sock.close();
    open--;
    if (next < count) one();
    else if (open === 0) process.stdout.write(`${JSON.stringify({ sent, errors, seconds: (Date.now() - start) / 1000 })}\n`);
  };
  sock.on('error', done);
  sock.bind(first + i, () => sock.send(payload, port, host, done));
};
for (let k = 0; k < Math.min(window, count); k++) one();
