// A real syslog collector for tests: Debian's rsyslogd in the foreground (-n) with its own
// configuration, listening on loopback only (imudp, imtcp, and imtcp with the gtls driver for
// RFC 5425), writing every message it receives as one JSON line: the raw message and the
// properties rsyslog parsed out of it, including the structured data as mmpstrucdata reads it.
import { once } from 'node:events';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { stopProcess } from '../../agent/util/process.js';
import { freePort } from '../mqtt/brokers.js';

const MODULE_DIRS = ['/usr/lib/x86_64-linux-gnu/rsyslog', '/usr/lib/aarch64-linux-gnu/rsyslog', '/usr/lib/arm-linux-gnueabihf/rsyslog', '/usr/lib/rsyslog'];
const hasModule = (name: string) => MODULE_DIRS.some((d) => existsSync(join(d, `${name}.so`)));

/** Why rsyslog tests cannot run here, or undefined. */
export const rsyslogMissing: string | undefined = (() => {
  try {
    execFileSync('sh', ['-c', 'command -v rsyslogd'], { stdio: 'ignore' });
  } catch {
    return 'rsyslogd is not installed (apt-get install rsyslog)';
  }
  const lacking = ['imudp', 'imtcp', 'mmpstrucdata'].filter((m) => !hasModule(m));
  return lacking.length > 0 ? `rsyslog lacks the modules ${lacking.join(', ')}` : undefined;
})();

/** Why the TLS collector cannot run here, or undefined. */
export const gtlsMissing: string | undefined =
  rsyslogMissing ?? (hasModule('lmnsd_gtls') ? undefined : "rsyslog's TLS driver is not installed (apt-get install rsyslog-gnutls)");

export async function freeUdpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createSocket('udp4');
    s.once('error', reject);
    s.bind(0, '127.0.0.1', () => {
      const port = s.address().port;
      s.close(() => resolve(port));
    });
  });
}

/** One message as rsyslog saw it. */
export interface Received {
  input: string;
  raw: string;
  pri: string;
  facility: string;
  severity: string;
  version: string;
  timereported: string;
  hostname: string;
  app: string;
  procid: string;
  msgid: string;
  sd: string;
  /** The structured data parsed by mmpstrucdata: SD-ID -> param -> value (names as sent). */
  parsed: Record<string, Record<string, string>>;
  msg: string;
}

export interface RsyslogOptions {
  dir: string;
  tcp?: number;
  udp?: number;
  /** A TLS input: gtls, server certificate, and client certificates required from permittedPeer. */
  tls?: { port?: number; ca: string; cert: string; key: string; permittedPeer: string };
}

export interface Rsyslog {
  udpPort: number;
  tcpPort: number;
  tlsPort: number | undefined;
  /** Every message received so far, probes left out. */
  received(): Received[];
  /** Stops rsyslogd (SIGKILL by default: a crash), bounded at 5 s. */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Starts it again on the same ports. */
  start(): Promise<void>;
  pid(): number | undefined;
}

const PROBE_APP = 'wgprobe';

/** Every rsyslogd these helpers started and has not seen exit: for an afterAll that must not leak one. */
export const running = new Set<ChildProcess>();

export async function startRsyslog(opts: RsyslogOptions): Promise<Rsyslog> {
  const udpPort = opts.udp ?? (await freeUdpPort());
  const tcpPort = opts.tcp ?? (await freePort());
  const tlsPort = opts.tls ? (opts.tls.port ?? (await freePort())) : undefined;
  const out = join(opts.dir, `received-${tcpPort}.json`);
  const conf = join(opts.dir, `rsyslog-${tcpPort}.conf`);
  const pidFile = join(opts.dir, `rsyslog-${tcpPort}.pid`);
  const workDir = opts.dir;
  const tls = opts.tls;
  const lines = [
    // Control characters are kept as sent (rsyslog would write a line feed as #012).
    `global(workDirectory="${workDir}" maxMessageSize="64k" parser.escapeControlCharactersOnReceive="off"${
      tls ? ` defaultNetstreamDriverCAFile="${tls.ca}" defaultNetstreamDriverCertFile="${tls.cert}" defaultNetstreamDriverKeyFile="${tls.key}"` : ''
    })`,
    'module(load="imudp")',
    'module(load="imtcp" maxSessions="50")',
    'module(load="mmpstrucdata")',
    'template(name="wgjson" type="list" option.jsonf="on") {',
    ...[
      ['input', 'inputname'],
      ['raw', 'rawmsg'],
      ['pri', 'pri'],
      ['facility', 'syslogfacility-text'],
      ['severity', 'syslogseverity-text'],
      ['version', 'protocol-version'],
      ['hostname', 'hostname'],
      ['app', 'app-name'],
      ['procid', 'procid'],
      ['msgid', 'msgid'],
      ['sd', 'structured-data'],
      ['parsed', '$!rfc5424-sd'],
      ['msg', 'msg'],
    ].map(([out, name]) => `  property(outname="${out}" name="${name}" format="jsonf")`),
    '  property(outname="timereported" name="timereported" dateFormat="rfc3339" format="jsonf")',
    '}',
    `ruleset(name="wg") { action(type="mmpstrucdata" sd_name.lowercase="off") action(type="omfile" file="${out}" template="wgjson") }`,
    `input(type="imudp" address="127.0.0.1" port="${udpPort}" ruleset="wg" name="udp")`,
    `input(type="imtcp" address="127.0.0.1" port="${tcpPort}" ruleset="wg" name="tcp")`,
    ...(tls
      ? [`input(type="imtcp" address="127.0.0.1" port="${tlsPort}" ruleset="wg" name="tls" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/name" permittedPeer=["${tls.permittedPeer}"])`]
      : []),
    '',
  ];
  writeFileSync(conf, lines.join('\n'));

  let child: ChildProcess | undefined;
  let stderr = '';
  const listening = (port: number) =>
    new Promise<boolean>((resolve) => {
      const s = createServer();
      s.once('error', () => resolve(true)); // taken: rsyslog listens there
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(false)));
    });
  const read = (): Received[] => {
    if (!existsSync(out)) return [];
    const lines = readFileSync(out, 'utf8').split('\n');
    // rsyslog may be writing the last line as we read: only whole lines count.
    lines.pop();
    return lines
      .filter((l) => l !== '')
      .map((l) => {
        const r = JSON.parse(l) as Omit<Received, 'parsed'> & { parsed: string };
        // mmpstrucdata leaves $!rfc5424-sd unset ("") when there is no structured data.
        return { ...r, parsed: r.parsed === '' ? {} : (JSON.parse(r.parsed) as Received['parsed']) };
      });
  };
  const r: Rsyslog = {
    udpPort,
    tcpPort,
    tlsPort,
    received: () => read().filter((m) => m.app !== PROBE_APP),
    pid: () => child?.pid,
    start: async () => {
      if (child && child.exitCode === null && child.signalCode === null) return;
      rmSync(pidFile, { force: true }); // a SIGKILL leaves it behind
      stderr = '';
      const c = spawn('rsyslogd', ['-n', '-f', conf, '-i', pidFile], { stdio: ['ignore', 'ignore', 'pipe'] });
      running.add(c);
      c.once('exit', () => running.delete(c));
      c.stderr?.on('data', (d: Buffer) => {
        if (stderr.length < 8192) stderr += d.toString();
      });
      child = c;
      // Up when the TCP ports are taken and a UDP probe has come out the other end.
      const probe = createSocket('udp4');
      const tag = `probe-${process.pid}-${Date.now()}`;
      try {
        const end = Date.now() + 10000;
        for (;;) {
          if (c.exitCode !== null || c.signalCode !== null) throw new Error(`rsyslogd exited (${c.exitCode ?? c.signalCode}): ${stderr.trim()}`);
          const tcpUp = (await listening(tcpPort)) && (tlsPort === undefined || (await listening(tlsPort)));
          if (tcpUp) {
            probe.send(`<14>1 - - ${PROBE_APP} - - - ${tag}`, udpPort, '127.0.0.1');
            if (read().some((m) => m.app === PROBE_APP && m.msg.includes(tag))) return;
          }
          if (Date.now() > end) throw new Error(`rsyslogd did not come up: ${stderr.trim()}`);
          await new Promise((res) => setTimeout(res, 100));
        }
      } finally {
        probe.close();
      }
    },
    stop: async (signal = 'SIGKILL') => {
      const c = child;
      child = undefined;
      if (c) await stopProcess(c, once(c, 'exit'), 5000, signal);
    },
  };
  await r.start();
  return r;
}

/** Kills (SIGKILL, by pid) every rsyslogd still running from these helpers; resolves when all have exited. */
export async function killAll(): Promise<void> {
  await Promise.all(
    [...running].map(
      (c) =>
        new Promise<void>((resolve) => {
          if (c.exitCode !== null || c.signalCode !== null) return resolve();
          const t = setTimeout(resolve, 5000);
          c.once('exit', () => {
            clearTimeout(t);
            resolve();
          });
          c.kill('SIGKILL');
        }),
    ),
  );
}
