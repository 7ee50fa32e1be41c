#!/usr/bin/env node
// A tiny real peer for closed test sites: echo servers and one-shot clients over TCP and UDP.
//   netcheck.mjs listen tcp|udp PORT [PORT...]   echo whatever arrives, until killed
//   netcheck.mjs connect tcp|udp HOST PORT [MS]  exit 0 when an echo comes back, 1 otherwise
//   netcheck.mjs scan tcp HOST FROM-TO [MS]       a connect scan: one attempt per port, 50 at a
//                                                time; prints "open N closed N filtered N"
import net from 'node:net';
import dgram from 'node:dgram';

const [mode, proto, ...rest] = process.argv.slice(2);

if (mode === 'listen') {
  for (const port of rest.map(Number)) {
    if (proto === 'tcp') {
      for (const host of ['0.0.0.0', '::']) {
        net.createServer((s) => s.pipe(s).on('error', () => {})).listen({ port, host, ipv6Only: host === '::' });
      }
    } else {
      for (const type of ['udp4', 'udp6']) {
        const sock = dgram.createSocket({ type, ipv6Only: type === 'udp6' });
        sock.on('message', (msg, rinfo) => sock.send(msg, rinfo.port, rinfo.address));
        sock.bind(port);
      }
    }
  }
  process.stdout.write('listening\n');
} else if (mode === 'connect') {
  const [host, portText, msText] = rest;
  const port = Number(portText);
  const ms = Number(msText ?? 1500);
  const done = (ok, why) => {
    process.stdout.write(`${ok ? 'ok' : 'fail'} ${why}\n`);
    process.exit(ok ? 0 : 1);
  };
  setTimeout(() => done(false, 'timeout'), ms);
  if (proto === 'tcp') {
    const s = net.connect({ host, port }, () => s.write('wardgate'));
    s.on('data', () => done(true, 'echo'));
    s.on('error', (e) => done(false, e.code));
  } else {
    const sock = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
    sock.on('message', () => done(true, 'echo'));
    sock.on('error', (e) => done(false, e.code));
    sock.send('wardgate', port, host);
  }
} else if (mode === 'scan' && proto === 'tcp') {
  const [host, range, msText] = rest;
  const [from, to] = range.split('-').map(Number);
  const ms = Number(msText ?? 500);
  const counts = { open: 0, closed: 0, filtered: 0 };
  const attempt = (port) =>
    new Promise((resolve) => {
      const s = net.connect({ host, port });
      const end = (what) => {
        counts[what]++;
        s.destroy();
        resolve();
      };
      s.setTimeout(ms, () => end('filtered'));
      s.on('connect', () => end('open'));
      s.on('error', (e) => end(e.code === 'ECONNREFUSED' ? 'closed' : 'filtered'));
    });
  let next = from;
  const worker = async () => {
    while (next <= to) await attempt(next++);
  };
  await Promise.all(Array.from({ length: 50 }, worker));
  process.stdout.write(`open ${counts.open} closed ${counts.closed} filtered ${counts.filtered}\n`);
} else {
  process.stderr.write('usage: netcheck.mjs listen tcp|udp PORT... | connect tcp|udp HOST PORT [MS] | scan tcp HOST FROM-TO [MS]\n');
  process.exit(2);
}
