// Real brokers for tests: the embedded aedes broker in-process, and Mosquitto as a separate
// process with TLS and client certificates from a throwaway CA made with openssl.
import { once } from 'node:events';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, chmodSync, copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { stopProcess } from '../../agent/util/process.js';

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export const haveMosquitto = (() => {
  try {
    execFileSync('sh', ['-c', 'command -v mosquitto && command -v openssl'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

export interface Pki {
  dir: string;
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** A client certificate from another CA: must be refused. */
  strangerCert: string;
  strangerKey: string;
  /** Every client certificate signed by the CA, by CN: gw-1 and those asked for in makePki. */
  clients: Record<string, { cert: string; key: string }>;
}

export interface PkiOptions {
  /** More client certificates signed by the site CA, by common name (e.g. gw-2, console-central). */
  clients?: string[];
}

function openssl(dir: string, args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
}

/** A CA, a server certificate for 127.0.0.1, and client certificates. */
export function makePki(opts: PkiOptions = {}): Pki {
  const dir = mkdtempSync(join(tmpdir(), 'wg-pki-'));
  const ca = (name: string) => {
    openssl(dir, ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.crt`]);
  };
  const leaf = (name: string, caName: string, ext?: string) => {
    openssl(dir, ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.csr`]);
    const args = ['x509', '-req', '-in', `${name}.csr`, '-CA', `${caName}.crt`, '-CAkey', `${caName}.key`, '-CAcreateserial', '-days', '2', '-out', `${name}.crt`];
    if (ext) {
      writeFileSync(join(dir, `${name}.ext`), ext);
      args.push('-extfile', `${name}.ext`);
    }
    openssl(dir, args);
  };
  ca('site-ca');
  ca('other-ca');
  leaf('broker', 'site-ca', 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  const cns = ['gw-1', ...(opts.clients ?? []).filter((cn) => cn !== 'gw-1')];
  for (const cn of cns) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(cn) || ['site-ca', 'other-ca', 'broker', 'stranger'].includes(cn)) throw new Error(`makePki: unusable client name "${cn}"`);
    leaf(cn, 'site-ca');
  }
  leaf('stranger', 'other-ca');
  // Mosquitto started as root drops to its own user, which must read these (test keys only).
  chmodSync(dir, 0o755);
  for (const f of readdirSync(dir)) chmodSync(join(dir, f), 0o644);
  const p = (f: string) => join(dir, f);
  return {
    dir,
    ca: p('site-ca.crt'),
    serverCert: p('broker.crt'),
    serverKey: p('broker.key'),
    clientCert: p('gw-1.crt'),
    clientKey: p('gw-1.key'),
    strangerCert: p('stranger.crt'),
    strangerKey: p('stranger.key'),
    clients: Object.fromEntries(cns.map((cn) => [cn, { cert: p(`${cn}.crt`), key: p(`${cn}.key`) }])),
  };
}

export interface Mosquitto {
  port: number;
  /**
   * Stops the broker: SIGKILL by default (a crash: nothing saved); SIGTERM is a clean shutdown,
   * which saves the persistence file (sessions, queued and retained messages) when persistence
   * is on. Bounded: SIGKILL after 5 s.
   */
  stop(signal?: 'SIGKILL' | 'SIGTERM'): Promise<void>;
  start(): Promise<void>;
}

export interface MosquittoOptions {
  /** An ACL file (copied next to the PKI, where the mosquitto user can read it). */
  aclFile?: string;
  /** Keep sessions, queued QoS 1 messages and retained messages across a clean stop and start. */
  persistence?: boolean;
  /** Where mosquitto logs (everything), for debugging; off by default. */
  logFile?: string;
}

/** Mosquitto on loopback requiring TLS client certificates signed by the PKI's CA. */
export async function startMosquitto(pki: Pki, port?: number, opts: MosquittoOptions = {}): Promise<Mosquitto> {
  const p = port ?? (await freePort());
  const conf = join(pki.dir, `mosquitto-${p}.conf`);
  const lines = [
    'per_listener_settings false',
    'allow_anonymous true',
    'persistence false',
    `listener ${p} 127.0.0.1`,
    `cafile ${pki.ca}`,
    `certfile ${pki.serverCert}`,
    `keyfile ${pki.serverKey}`,
    'require_certificate true',
    'use_identity_as_username true',
  ];
  if (opts.aclFile !== undefined) {
    const acl = join(pki.dir, `mosquitto-${p}.acl`);
    copyFileSync(opts.aclFile, acl);
    chmodSync(acl, 0o644);
    lines.push(`acl_file ${acl}`);
  }
  if (opts.persistence) {
    // Mosquitto started as root drops to its own user, which must write here.
    const data = join(pki.dir, `mosquitto-${p}-data`);
    mkdirSync(data, { recursive: true });
    chmodSync(data, 0o777);
    lines[2] = 'persistence true';
    lines.push(`persistence_location ${data}/`, 'autosave_interval 0');
  }
  if (opts.logFile !== undefined) lines.push('log_dest stderr', 'log_type all');
  writeFileSync(conf, [...lines, ''].join('\n'));
  let child: ChildProcess | undefined;
  const m: Mosquitto = {
    port: p,
    start: async () => {
      if (child && child.exitCode === null && child.signalCode === null) return; // running
      const launch = () => {
        const c = spawn('mosquitto', ['-c', conf], { stdio: ['ignore', 'ignore', opts.logFile !== undefined ? 'pipe' : 'ignore'] });
        if (opts.logFile !== undefined) {
          const log = opts.logFile;
          c.stderr?.on('data', (d: Buffer) => appendFileSync(log, d));
        }
        return c;
      };
      child = launch();
      const end = Date.now() + 5000;
      for (;;) {
        const up = await new Promise<boolean>((resolve) => {
          const s = createServer();
          s.once('error', () => resolve(true)); // the port is taken: mosquitto listens
          s.listen(p, '127.0.0.1', () => s.close(() => resolve(false)));
        });
        if (up) return;
        // It lost the port to the probe above (a restart on the same port): once more.
        if (child.exitCode !== null) child = launch();
        if (Date.now() > end) throw new Error('mosquitto did not start');
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    stop: async (signal = 'SIGKILL') => {
      const c = child;
      child = undefined;
      if (c) await stopProcess(c, once(c, 'exit'), 5000, signal);
    },
  };
  await m.start();
  return m;
}

export function removePki(pki: Pki): void {
  rmSync(pki.dir, { recursive: true, force: true });
}

/** A subscriber that records every message (topic, parsed payload, retain flag). */
export async function recorder(url: string, topics: string[], opts: mqtt.IClientOptions = {}): Promise<{
  client: MqttClient;
  messages: { topic: string; payload: Record<string, unknown>; retain: boolean }[];
  close(): Promise<void>;
}> {
  const client = await mqtt.connectAsync(url, { reconnectPeriod: 0, ...opts });
  const messages: { topic: string; payload: Record<string, unknown>; retain: boolean }[] = [];
  client.on('message', (topic, payload, packet) => {
    messages.push({ topic, payload: JSON.parse(payload.toString()) as Record<string, unknown>, retain: packet.retain });
  });
  await client.subscribeAsync(topics, { qos: 1 });
  return { client, messages, close: () => client.endAsync() };
}

export async function until(what: string, check: () => boolean, ms = 10000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
