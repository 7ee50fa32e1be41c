// The whole system on one machine, without root: the agent (dry-run backend) with its embedded
// broker; simulated legacy devices speaking their real protocols on loopback addresses (a lab
// analyzer on Modbus TCP, a CT modality on DICOM), each probed by the agent; the inline proxies
// in front of them, tried with real clients; signed commands and a backup round trip; and the
// console (Node-RED with flows/console.json and its dashboard) following the site. Then it keeps
// running for a person to look and try (until Ctrl-C or q), or, with --once, ends after the
// script with the analyzer stopping and the alert reaching the console.
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import type { MqttClient } from 'mqtt';
import { pino } from 'pino';
import { startLabAnalyzer, type LabAnalyzer } from '../../hardware/sim/lab-analyzer.js';
import { startModality, type Modality } from '../../hardware/sim/modality.js';
import { createDataKeyFile, ensureGatewayKey } from '../backup/keys.js';
import { consoleBackup } from '../cli/console-backup.js';
import type { Io } from '../cli/io.js';
import { policyCommand } from '../cli/policy.js';
import { loadConfig } from '../config/load.js';
import { connectConsole, sendCommand } from '../console/client.js';
import { generateConsoleKey, loadConsoleKey } from '../console/keys.js';
import { Controller } from '../controller.js';
import { buildModel } from '../policy/model.js';
import { workerTargets } from '../protocols/module.js';
import { PACKAGE_ROOT } from '../version.js';
import { startDemoConsole, type DemoConsole } from './console.js';
import { listenKeys } from './keys.js';
import { tryProxies } from './tries.js';
import { freePair, freePort, indent, Stopped, until, type StopRequest } from './util.js';

export const SITE = 'demo';
export const GATEWAY = 'gw-demo-01';
const KEY_ID = 'demo-console';
/** The addresses mirror the namespace site's 10.20.0.31 and 10.20.0.11. */
export const ANALYZER = { id: 'lab-analyzer-01', host: '127.0.0.31' } as const;
export const MODALITY = { id: 'ct-01', host: '127.0.0.11', aeTitle: 'CT01' } as const;
const PACS_AE = 'PACS';
const OTHER_AE = 'STRANGER';
/** Node-RED's usual port; the next free one when it is taken. */
const CONSOLE_PORT = 1880;

export interface SystemOptions {
  keep: boolean;
  once: boolean;
}

interface Seen {
  topic: string;
  body: Record<string, unknown>;
}

function gatewayYaml(p: { broker: number; listen: [number, number]; consoleKey: string }): string {
  return `apiVersion: wardgate/v1
kind: Gateway
site: ${SITE}
gateway: ${GATEWAY}
mode: router
interfaces: { uplink: lo, device: lo }
# The devices are simulators on loopback addresses of this machine.
deviceSegments: [127.0.0.0/8]
management: { networks: [10.99.0.0/24] }
stateDir: state
policies: [devices.yaml]
mqtt:
  url: mqtt://127.0.0.1:${p.broker}
  # The demo's choice: consoles connect without credentials (console rights). A real gateway
  # keeps allowAnonymous off and gives consoles a usersFile (wardgate broker passwd).
  embeddedBroker: { port: ${p.broker}, allowAnonymous: true }
health: { intervalSeconds: 5 }
commands:
  publicKeys: [{ id: ${KEY_ID}, key: "${p.consoleKey}" }]
protocols:
  listenPorts: "${p.listen[0]}-${p.listen[1]}"
  # Without root there is no redirect in the kernel: this machine's clients connect to the
  # proxies directly, on loopback.
  listenHost: 127.0.0.1
`;
}

function policyYaml(p: { analyzer: number; modality: number }): string {
  return `apiVersion: wardgate/v1
kind: Policy
devices:
  - id: ${ANALYZER.id}
    description: a simulated lab analyzer (hardware/sim/lab-analyzer.ts)
    class: lab-analyzer
    criticality: high
    mode: enforce
    ipv4: ${ANALYZER.host}
    allow:
      - peer: 127.0.0.1
        direction: inbound
        proto: tcp
        ports: [${p.analyzer}]
        modbus: { profile: read-only }
        comment: the biomed console workstation (this machine) reads the analyzer, and may not write
    probes:
      - { type: modbus, port: ${p.analyzer}, read: { address: 0, count: 4 }, intervalSeconds: 1, timeoutMs: 500, failuresToDown: 2, successesToUp: 1 }
    backup:
      driver: { type: modbus-tcp, port: ${p.analyzer}, unit: 1, ranges: [{ name: settings, kind: holding, address: 0, count: 4 }] }
      retries: 0
  - id: ${MODALITY.id}
    description: a simulated CT modality (hardware/sim/modality.ts)
    class: ct-modality
    criticality: high
    mode: enforce
    ipv4: ${MODALITY.host}
    allow:
      - peer: 127.0.0.1
        direction: inbound
        proto: tcp
        ports: [${p.modality}]
        dicom: { calledAeTitle: ${MODALITY.aeTitle}, callingAeTitles: [${PACS_AE}] }
        comment: the PACS (this machine, AE title ${PACS_AE}) verifies and sends studies
    probes:
      - { type: dicom, port: ${p.modality}, calledAe: ${MODALITY.aeTitle}, intervalSeconds: 2, timeoutMs: 1500, failuresToDown: 2, successesToUp: 1 }
`;
}

/** The simulators, which a key press stops and starts again (the analyzer keeps its registers). */
class Simulators {
  analyzer: LabAnalyzer | undefined;
  modality: Modality | undefined;
  readonly registers = [1, 0, 87, 370];

  constructor(readonly ports: { analyzer: number; modality: number }) {}

  async startAnalyzer(): Promise<void> {
    this.analyzer ??= await startLabAnalyzer(this.ports.analyzer, 1, ANALYZER.host, this.registers);
  }

  async stopAnalyzer(): Promise<void> {
    const a = this.analyzer;
    this.analyzer = undefined;
    await a?.close();
  }

  async startModality(): Promise<void> {
    this.modality ??= await startModality({ port: this.ports.modality, host: MODALITY.host, aeTitle: MODALITY.aeTitle });
  }

  async stopModality(): Promise<void> {
    const m = this.modality;
    this.modality = undefined;
    await m?.close();
  }
}

const text = (v: unknown): string => (typeof v === 'string' || typeof v === 'number' ? String(v) : '');

/** Returns the number of surprises. */
export async function runSystem(work: string, opts: SystemOptions, stop: StopRequest, io: Io): Promise<number> {
  const dir = join(work, 'site');
  mkdirSync(dir, { recursive: true });
  // What runs, stopped in this order whatever happens: the console, the agent (its offline
  // status reaches the watching client), the client, the simulators.
  const parts: { console?: Promise<DemoConsole>; agent?: Controller; client?: MqttClient; keys?: () => void; sims?: Simulators } = {};
  const shutdown = async (): Promise<void> => {
    // Taken out first: a second call (the finally after a normal end) finds nothing to stop.
    const p = { ...parts };
    for (const k of Object.keys(parts) as (keyof typeof parts)[]) delete parts[k];
    const steps = [
      () => p.keys?.(),
      async () => (await p.console?.catch(() => undefined))?.running.stop(),
      () => p.agent?.stop(),
      async () => {
        if (!p.client) return;
        if (p.agent) await until(() => offline(), 3000).catch(() => false);
        await p.client.endAsync();
      },
      () => p.sims?.stopAnalyzer(),
      () => p.sims?.stopModality(),
    ];
    for (const step of steps) {
      try {
        await step();
      } catch {
        // keep stopping the rest
      }
    }
  };
  const seen: Seen[] = [];
  const offline = () => seen.some((m) => m.topic.endsWith('/status') && m.body.state === 'offline');
  let failures = 0;
  const check = (ok: boolean, what: string): boolean => {
    if (!ok) {
      failures++;
      io.out(`  <-- expected ${what}`);
    }
    return ok;
  };
  const wait = (cond: () => boolean | Promise<boolean>, ms: number) => until(cond, ms, stop);

  try {
    const ports = { broker: await freePort(), analyzer: await freePort(ANALYZER.host), modality: await freePort(MODALITY.host), listen: await freePair() };
    const sims = new Simulators(ports);
    parts.sims = sims;
    await sims.startAnalyzer();
    await sims.startModality();

    const key = generateConsoleKey(join(dir, 'keys'), KEY_ID);
    const gateway = join(dir, 'gateway.yaml');
    writeFileSync(gateway, gatewayYaml({ broker: ports.broker, listen: ports.listen, consoleKey: key.publicKey }));
    writeFileSync(join(dir, 'devices.yaml'), policyYaml(ports));
    // The backup store's keys, as the installer makes them (wardgate backup keygen), and the
    // console's trusted copy of the gateway's public key, which verifies pulled bundles.
    createDataKeyFile(join(dir, 'state', 'keys', 'backup-data.key'));
    const gatewayKey = ensureGatewayKey(join(dir, 'state'));
    mkdirSync(join(dir, 'gateway-keys'));
    copyFileSync(gatewayKey.publicKeyPath, join(dir, 'gateway-keys', `${GATEWAY}.pub`));
    const targets = workerTargets(buildModel(loadConfig(gateway)), join(dir, 'state'));
    const modbusProxy = targets.find((t) => t.device === ANALYZER.id);
    const dicomProxy = targets.find((t) => t.device === MODALITY.id);
    if (!modbusProxy || !dicomProxy) throw new Error('the demo policy proxies nothing: a bug in the demo');

    io.out('\nthe whole system on this machine, on loopback:');
    io.out(`  ${ANALYZER.id}: a simulated lab analyzer (hardware/sim/lab-analyzer.ts), Modbus TCP on ${ANALYZER.host}:${ports.analyzer}`);
    io.out(`  ${MODALITY.id}: a simulated CT modality (hardware/sim/modality.ts), DICOM on ${MODALITY.host}:${ports.modality}, AE title ${MODALITY.aeTitle}`);
    io.out(`  ${GATEWAY}: the agent, with its embedded MQTT broker on 127.0.0.1:${ports.broker}, and the inline proxies`);
    io.out(`    127.0.0.1:${modbusProxy.listenPort} -> ${ANALYZER.id} (Modbus: read-only for this workstation)`);
    io.out(`    127.0.0.1:${dicomProxy.listenPort} -> ${MODALITY.id} (DICOM: AE title ${PACS_AE} only)`);
    io.out(`  the gateway file and its policy: ${gateway}, ${join(dir, 'devices.yaml')}`);

    io.out('\nthe policy, applied with commit-confirm and confirmed:');
    const dry = { gateway, backend: 'dry-run' };
    const applied = (await policyCommand('apply', dry, indent(io))) === 0 && (await policyCommand('confirm', dry, indent(io))) === 0;
    check(applied, 'the policy applied and confirmed');
    io.out(`  the dry-run backend: the ruleset is written to ${join(dir, 'state', 'dry-run', 'ruleset.nft')} and nothing is enforced in the kernel${process.getuid?.() === 0 ? ' (the namespace site above showed the kernel)' : '; run as root (sudo npm start) to see the kernel enforce it in a network-namespace site first'}`);

    io.out(`\nthe agent starts (log: ${join(dir, 'agent.log')}); what it publishes, as mosquitto_sub would show it:`);
    const agent = new Controller({ gateway, backend: 'dry-run' }, indent(io), pino({ name: 'wardgate' }, pino.destination({ dest: join(dir, 'agent.log'), sync: true })));
    await agent.start();
    parts.agent = agent;
    const url = `mqtt://127.0.0.1:${ports.broker}`;

    // Node-RED takes seconds to start: it starts now, beside the script.
    const consoleStart = startDemoConsole({
      site: SITE,
      brokerUrl: url,
      keyFile: key.privateKeyPath,
      keyId: KEY_ID,
      userDir: join(dir, 'node-red'),
      gatewayKeys: join(dir, 'gateway-keys'),
      backupDir: join(dir, 'bundles'),
      preferredPort: CONSOLE_PORT,
    });
    consoleStart.catch(() => undefined);
    parts.console = consoleStart;

    const { client } = await connectConsole(url);
    parts.client = client;
    let verbose = true;
    const lastState = new Map<string, string>();
    client.on('message', (topic, payload) => {
      let body: Record<string, unknown>;
      try {
        body = JSON.parse(payload.toString()) as Record<string, unknown>;
      } catch {
        return;
      }
      seen.push({ topic, body });
      const short = topic.replace(`wardgate/v1/${SITE}/${GATEWAY}/`, '');
      if (short === 'status') io.out(`  ${short}: ${text(body.state)} (session ${text(body.seq)}${body.reason ? `, ${text(body.reason)}` : ''})`);
      else if (short === 'health') {
        if (!verbose) return;
        verbose = seen.filter((m) => m.topic.endsWith('/health')).length < 1;
        const mem = body.memory as { availableBytes: number };
        const outbox = body.outbox as { depth: number };
        const proxies = body.proxies as { listening: string[] } | undefined;
        io.out(`  ${short}: uptime ${Math.round(Number(body.uptimeSeconds))} s, load ${(body.load as number[])[0]}, ${Math.round(mem.availableBytes / 2 ** 20)} MiB free, outbox ${outbox.depth}${proxies ? `, proxies ${proxies.listening.join(' ')}` : ''}`);
      } else if (short.startsWith('devices/')) {
        const state = text(body.state);
        if (lastState.get(short) === state) return;
        lastState.set(short, state);
        const probes = (body.probes as { type: string; ok: boolean; error?: string; detail?: Record<string, unknown> }[]).map(
          (p) => `${p.type} ${p.ok ? 'ok' : `failing: ${p.error ?? ''}`}${p.detail?.values ? ` registers ${JSON.stringify(p.detail.values)}` : ''}`,
        );
        io.out(`  ${short}: ${state}  (${probes.join('; ')})`);
      } else if (short === 'events') io.out(`  ${short}: [${text(body.severity)}] ${text(body.kind)}: ${text(body.message)}`);
    });
    await client.subscribeAsync(`wardgate/v1/${SITE}/#`, { qos: 1 });
    const up = (device: string) => seen.some((m) => m.topic.endsWith(`/devices/${device}/health`) && m.body.state === 'up');
    const event = (kind: string, device?: string) => seen.some((m) => m.topic.endsWith('/events') && m.body.kind === kind && (device === undefined || m.body.device === device));
    check(await wait(() => up(ANALYZER.id) && up(MODALITY.id), 20000), 'both devices up');

    io.out(`\nthe inline proxies, tried with real clients from this machine (modbus-serial, dcmjs-dimse):`);
    const tries = await tryProxies(
      {
        host: '127.0.0.1',
        modbus: { listenPort: modbusProxy.listenPort, device: ANALYZER.id, readRegisters: () => sims.registers },
        dicom: { listenPort: dicomProxy.listenPort, device: MODALITY.id, calledAe: MODALITY.aeTitle, allowedAe: PACS_AE, otherAe: OTHER_AE },
      },
      io,
    );
    failures += tries.surprises;
    check(await wait(() => event('modbus.denied', ANALYZER.id) && event('dicom.rejected', MODALITY.id), 5000), 'the modbus.denied and dicom.rejected alerts');

    io.out(`\na signed command from the console (wardgate console cmd ${SITE}/${GATEWAY} ping):`);
    const command = (name: string, args: Record<string, unknown>) => sendCommand(url, SITE, GATEWAY, name, args, loadConsoleKey(key.privateKeyPath), KEY_ID);
    const answer = await command('ping', {});
    io.out(`  answer: ok=${String(answer.ok)} ${JSON.stringify(answer.result)}`);
    check(answer.ok, 'the ping answered');
    io.out('an unsigned command from anyone on the broker:');
    const refusals: Record<string, unknown>[] = [];
    client.on('message', (topic, payload) => {
      if (topic.includes('/cmd-response')) refusals.push(JSON.parse(payload.toString()) as Record<string, unknown>);
    });
    await client.subscribeAsync(`wardgate/v1/${SITE}/${GATEWAY}/cmd-response/#`);
    await client.publishAsync(`wardgate/v1/${SITE}/${GATEWAY}/cmd/policy.apply`, JSON.stringify({ name: 'policy.apply' }), { qos: 1 });
    check(await wait(() => refusals.length > 0, 5000), 'a refusal');
    io.out(`  answer: ok=${String(refusals[0]?.ok)} ${JSON.stringify(refusals[0]?.error)} (refused, and recorded in the audit log)`);

    io.out('\nconfiguration backups (signed commands from the console):');
    const first = await command('backup.now', { device: ANALYZER.id });
    const r1 = first.result as { version?: number; baselineSet?: boolean } | undefined;
    io.out(`  backup.now: ok=${String(first.ok)}, version ${String(r1?.version)}${r1?.baselineSet ? ', the approved baseline' : ''}`);
    check(first.ok && r1?.version === 1, 'a first backup');
    sims.registers[1] = 4;
    io.out('  someone sets alarm register 1 to 4 on the analyzer\'s panel');
    const second = await command('backup.now', { device: ANALYZER.id });
    io.out(`  backup.now: ${String((second.result as { drift?: string } | undefined)?.drift)}`);
    check(await wait(() => event('config.drift'), 5000), 'a config.drift event');
    const restored = await command('backup.restore', { device: ANALYZER.id, confirm: true });
    const rr = restored.result as { status?: string; version?: number; changes?: string[] } | undefined;
    io.out(`  backup.restore: ${String(rr?.status)} version ${String(rr?.version)} (${(rr?.changes ?? []).join('; ')}); register 1 reads ${sims.registers[1]} again`);
    check(rr?.status === 'restored' && sims.registers[1] === 0, 'the restore');
    const bundle = join(dir, `${ANALYZER.id}.wgb`);
    io.out('  a responder pulls the signed bundle and verifies it with the gateway\'s public key:');
    const pulled = await consoleBackup(['pull', `${SITE}/${GATEWAY}`, ANALYZER.id], { url, key: key.privateKeyPath, keyId: KEY_ID, out: bundle, pubkey: gatewayKey.publicKeyPath }, indent(io));
    check(pulled === 0, 'a verified bundle');

    io.out('\nthe console: Node-RED with flows/console.json, following the site over MQTT');
    let demoConsole: DemoConsole | undefined;
    try {
      demoConsole = await consoleStart;
    } catch (err) {
      check(false, `the console to start: ${(err as Error).message}`);
    }
    if (demoConsole) {
      const c = demoConsole;
      // The console asked for the backups when the gateway came online, before there were any.
      await c.refresh();
      const shown = await wait(async () => (await consoleShows(c)).ready, 30000);
      const s = await consoleShows(c);
      io.out(`  the console shows: ${s.summary}`);
      check(shown, `the console to show ${GATEWAY} online, both devices up and the analyzer's backups (log: ${c.running.logFile})`);
    }
    verbose = false;

    if (opts.once) {
      io.out('\nthe analyzer stops answering:');
      await sims.stopAnalyzer();
      check(await wait(() => event('device.state', ANALYZER.id), 10000), 'a device.state event');
      if (demoConsole) {
        const c = demoConsole;
        const alerted = await wait(async () => (await consoleAlert(c, ANALYZER.id)) !== undefined, 10000);
        io.out(`  the console's alerts: ${(await consoleAlert(c, ANALYZER.id)) ?? 'none'}`);
        check(alerted, 'the alert on the console');
      }
    } else {
      whatToTry(io, { demoConsole, url, keyFile: key.privateKeyPath, modbus: modbusProxy.listenPort, dicom: dicomProxy.listenPort, work });
      const keys = listenKeys(stop, async (k) => {
        if (k === 'a') {
          if (sims.analyzer) {
            io.out(`\n[a] the analyzer is switched off: watch ${ANALYZER.id} go down and the alert appear`);
            await sims.stopAnalyzer();
          } else {
            io.out(`\n[a] the analyzer is switched on again`);
            await sims.startAnalyzer();
          }
        } else if (k === 'm') {
          if (sims.modality) {
            io.out(`\n[m] the CT modality is switched off: watch ${MODALITY.id} go down and the alert appear`);
            await sims.stopModality();
          } else {
            io.out(`\n[m] the CT modality is switched on again`);
            await sims.startModality();
          }
        } else if (k === 'l') {
          sims.registers[1] = sims.registers[1] === 0 ? 4 : 0;
          io.out(`\n[l] alarm register 1 of the analyzer is now ${sims.registers[1]} (a backup now shows drift, a restore puts it back)`);
        }
      });
      parts.keys = keys;
      await stop.wait();
    }

    io.out('\nstopping: the console, the agent (offline status before it disconnects), the simulators');
    await shutdown();
    check(offline(), 'the offline status');
    return failures;
  } catch (err) {
    if (!(err instanceof Stopped)) throw err;
    io.out('\nstopped (Ctrl-C)');
    return failures;
  } finally {
    await shutdown();
  }
}

interface Shown {
  ready: boolean;
  summary: string;
}

async function consoleShows(c: DemoConsole): Promise<Shown> {
  try {
    const gateways = (await c.context<Record<string, { state: string }>>('gateways')) ?? {};
    const devices = (await c.context<Record<string, { state: string }>>('devices')) ?? {};
    const backups = (await c.context<Record<string, { error: string | null; devices: { device: string; count: number }[] }>>('backups')) ?? {};
    const gw = gateways[GATEWAY]?.state ?? 'not seen';
    const dev = (id: string) => devices[`${GATEWAY}/${id}`]?.state ?? 'not seen';
    const count = backups[GATEWAY]?.devices.find((d) => d.device === ANALYZER.id)?.count ?? 0;
    return {
      ready: gw === 'online' && dev(ANALYZER.id) === 'up' && dev(MODALITY.id) === 'up' && count >= 2,
      summary: `${GATEWAY} ${gw}; ${ANALYZER.id} ${dev(ANALYZER.id)}, ${MODALITY.id} ${dev(MODALITY.id)}; ${count} backup version(s) of ${ANALYZER.id}`,
    };
  } catch (err) {
    return { ready: false, summary: (err as Error).message };
  }
}

async function consoleAlert(c: DemoConsole, device: string): Promise<string | undefined> {
  try {
    const alerts = (await c.context<{ kind: string; device?: string; severity: string; message: string }[]>('alerts')) ?? [];
    const a = alerts.find((x) => x.kind === 'device.state' && x.device === device && /is (down|degraded)/.test(x.message));
    return a ? `[${a.severity}] ${a.message}` : undefined;
  } catch {
    return undefined;
  }
}

function whatToTry(io: Io, p: { demoConsole: DemoConsole | undefined; url: string; keyFile: string; modbus: number; dicom: number; work: string }): void {
  const cli = `node ${relative(process.cwd(), join(PACKAGE_ROOT, 'bin', 'wardgate.js')) || 'bin/wardgate.js'}`;
  const c = p.demoConsole?.running;
  io.out('\n==========================================================================================');
  if (c) {
    io.out(`OPEN the console's dashboard:  ${c.dashboardUrl}   (no login on loopback)`);
    io.out(`     the Node-RED editor:      ${c.adminUrl}   user ${c.admin.username}, password ${c.admin.password}`);
  } else {
    io.out('the console did not start (above); everything else runs');
  }
  io.out('\nWHAT TO TRY');
  io.out(`  - Backups panel: press Pull on ${ANALYZER.id}; the bundle comes over MQTT and is verified with the gateway's public key`);
  io.out(`  - press a in this terminal to switch the analyzer off: within seconds it is down on the`);
  io.out('    dashboard and an alert appears to acknowledge; a again switches it on. m does the same for the CT modality,');
  io.out('    l toggles the analyzer\'s alarm register (a backup then shows drift)');
  io.out(`  - everything the gateway publishes:  mosquitto_sub -h 127.0.0.1 -p ${new URL(p.url).port} -t 'wardgate/v1/#' -v`);
  io.out(`  - the site in a terminal:            ${cli} console watch --url ${p.url} --site ${SITE}`);
  io.out(`  - a signed command:                  ${cli} console cmd ${SITE}/${GATEWAY} health.now --url ${p.url} --key ${p.keyFile}`);
  io.out(`                                       (also: ping, probe device=${MODALITY.id}, backup.now device=${ANALYZER.id}, policy.status)`);
  io.out(`  - Modbus through the proxy: mbpoll -m tcp -a 1 -t 4 -r 1 -c 4 -1 -p ${p.modbus} 127.0.0.1      (a read: passes)`);
  io.out(`                              mbpoll -m tcp -a 1 -t 4 -r 2 -1 -p ${p.modbus} 127.0.0.1 9       (a write: exception 01)`);
  io.out(`  - DICOM through the proxy:  echoscu -aet ${PACS_AE} -aec ${MODALITY.aeTitle} 127.0.0.1 ${p.dicom}           (passes)`);
  io.out(`                              echoscu -aet ${OTHER_AE} -aec ${MODALITY.aeTitle} 127.0.0.1 ${p.dicom}       (rejected: calling AE title)`);
  io.out(`  - the files: ${p.work} (the gateway file, state, logs, keys, pulled bundles)`);
  io.out('\nCtrl-C (or q) stops everything.');
  io.out('==========================================================================================');
}
