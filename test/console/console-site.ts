// A site for the console's tests, on loopback, without root: a real agent (Controller, dry-run
// backend) with its embedded broker (a users file: the console identity, a second gateway and a
// rogue one), a simulated lab analyzer on Modbus TCP that the agent probes and backs up, and the
// console itself: Node-RED with flows/console.json (startConsole). A second gateway can run as
// a child process (`wardgate run`) to be killed, so that its last will reaches the console.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, copyFileSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { pino } from 'pino';
import { startLabAnalyzer, type LabAnalyzer } from '../../hardware/sim/lab-analyzer.js';
import { createDataKeyFile, ensureGatewayKey } from '../../agent/backup/keys.js';
import { sendCommand } from '../../agent/console/client.js';
import { generateConsoleKey, loadConsoleKey } from '../../agent/console/keys.js';
import { startConsole, type RunningConsole } from '../../agent/console/nodered.js';
import { Controller } from '../../agent/controller.js';
import { hashPasswordLine } from '../../agent/mqtt/broker.js';
import type { CommandResponsePayload } from '../../agent/mqtt/topics.js';
import { stopProcess } from '../../agent/util/process.js';
import { freePort } from '../mqtt/brokers.js';
import { CLI, sleep } from '../integration/site.js';

export const SITE = 'st-console';
export const GW = 'gw-lab-01';
export const GW2 = 'gw-ward-02';
export const ROGUE = 'gw-rogue';
export const DEVICE = 'lab-analyzer-01';
const CONSOLE_USER = 'console-central';
export const DASHBOARD_LOGIN = { username: 'biomed', password: 'dashboard-pw-1' };
const quiet = { out: () => {}, err: () => {} };

export interface ConsoleSite {
  dir: string;
  brokerUrl: string;
  agent: Controller;
  analyzer: LabAnalyzer;
  console: RunningConsole;
  keyFile: string;
  /** Every password of the users file, by user. */
  passwords: Record<string, string>;
  /** A signed command from the test's own console identity (not the flow's). */
  command(gateway: string, name: string, args?: Record<string, unknown>): Promise<CommandResponsePayload>;
  /** An MQTT client logged in as `user` (a gateway identity may publish only under its own id). */
  client(user: string): Promise<MqttClient>;
  /** Starts the second gateway as a child process; resolves when it is running. */
  startSecond(): Promise<ChildProcess>;
  second: ChildProcess | undefined;
  /** The admin API's bearer token. */
  token(): Promise<string>;
  /** A flow-context value of the console flow, through Node-RED's admin API. */
  context<T>(key: string): Promise<T | undefined>;
  /** Stops everything this fixture started; safe to call twice. */
  stop(): Promise<void>;
}

const FLOW_TAB = 'wg-tab';

export async function startConsoleSite(): Promise<ConsoleSite> {
  const dir = mkdtempSync(join(tmpdir(), 'wg-console-'));
  const cleanups: (() => Promise<void> | void)[] = [() => rmSync(dir, { recursive: true, force: true })];
  const stop = async () => {
    for (const c of cleanups.splice(0).reverse()) {
      try {
        await c();
      } catch {
        // keep cleaning up
      }
    }
  };
  try {
    const [brokerPort, modbusPort] = [await freePort(), await freePort()];
    const analyzer = await startLabAnalyzer(modbusPort);
    let analyzerOpen = true;
    cleanups.push(async () => {
      if (analyzerOpen) await analyzer.close();
    });
    const origClose = analyzer.close.bind(analyzer);
    analyzer.close = async () => {
      analyzerOpen = false;
      await origClose();
    };

    const key = generateConsoleKey(join(dir, 'keys'), CONSOLE_USER);
    const passwords: Record<string, string> = { [CONSOLE_USER]: 'console-pw-1', [GW2]: 'gw2-pw-1', [ROGUE]: 'rogue-pw-1' };
    const lines = await Promise.all(Object.entries(passwords).map(([u, p]) => hashPasswordLine(u, p)));
    writeFileSync(join(dir, 'broker-users'), `${lines.join('\n')}\n`, { mode: 0o600 });
    const brokerUrl = `mqtt://127.0.0.1:${brokerPort}`;
    writeFileSync(
      join(dir, 'gateway.yaml'),
      `apiVersion: wardgate/v1
kind: Gateway
site: ${SITE}
gateway: ${GW}
mode: router
interfaces: { uplink: lo, device: lo }
deviceSegments: [127.0.0.0/8]
management: { networks: [10.99.0.0/24] }
stateDir: state
policies: [lab.yaml]
mqtt:
  url: ${brokerUrl}
  embeddedBroker: { port: ${brokerPort}, usersFile: broker-users, consoles: [${CONSOLE_USER}] }
health: { intervalSeconds: 5 }
commands:
  publicKeys: [{ id: ${CONSOLE_USER}, key: "${key.publicKey}" }]
`,
    );
    writeFileSync(
      join(dir, 'lab.yaml'),
      `apiVersion: wardgate/v1
kind: Policy
devices:
  - id: ${DEVICE}
    class: lab-analyzer
    criticality: high
    mode: monitor
    ipv4: 127.0.0.1
    probes:
      - { type: modbus, port: ${modbusPort}, read: { address: 0, count: 4 }, intervalSeconds: 1, timeoutMs: 500, failuresToDown: 2, successesToUp: 1 }
    backup:
      driver: { type: modbus-tcp, port: ${modbusPort}, unit: 1, ranges: [{ name: settings, kind: holding, address: 0, count: 4 }] }
      retries: 0
`,
    );
    createDataKeyFile(join(dir, 'state', 'keys', 'backup-data.key'));
    const gatewayKey = ensureGatewayKey(join(dir, 'state'));
    // The console's trusted copies of the gateways' public keys.
    mkdirSync(join(dir, 'gateway-keys'));
    copyFileSync(gatewayKey.publicKeyPath, join(dir, 'gateway-keys', `${GW}.pub`));

    const agent = new Controller({ gateway: join(dir, 'gateway.yaml'), backend: 'dry-run' }, quiet, pino({ level: 'warn' }, pino.destination({ dest: join(dir, 'agent.log'), sync: true })));
    await agent.start();
    let agentRunning = true;
    cleanups.push(async () => {
      if (agentRunning) await agent.stop();
    });
    const origStop = agent.stop.bind(agent);
    agent.stop = async () => {
      agentRunning = false;
      await origStop();
    };

    const command = async (gateway: string, name: string, args: Record<string, unknown> = {}) =>
      sendCommand(brokerUrl, SITE, gateway, name, args, loadConsoleKey(key.privateKeyPath), CONSOLE_USER, { username: CONSOLE_USER, password: passwords[CONSOLE_USER]! });

    const consoleRun = await startConsole({
      site: SITE,
      brokerUrl,
      keyFile: key.privateKeyPath,
      keyId: CONSOLE_USER,
      username: CONSOLE_USER,
      password: passwords[CONSOLE_USER]!,
      userDir: join(dir, 'node-red'),
      gatewayKeys: join(dir, 'gateway-keys'),
      backupDir: join(dir, 'bundles'),
      dashboard: DASHBOARD_LOGIN,
    });
    cleanups.push(() => consoleRun.stop());

    let token: string | undefined;
    const site: ConsoleSite = {
      dir,
      brokerUrl,
      agent,
      analyzer,
      console: consoleRun,
      keyFile: key.privateKeyPath,
      passwords,
      command,
      second: undefined,
      client: async (user) => {
        // A gateway identity's client id must end in -<its id> (docs/mqtt.md).
        const c = await mqtt.connectAsync(brokerUrl, { protocolVersion: 4, reconnectPeriod: 0, clientId: `test-${SITE}-${user}`, username: user, password: passwords[user] ?? '' });
        cleanups.push(() => c.endAsync(true));
        return c;
      },
      startSecond: async () => {
        writeFileSync(join(dir, 'gw2-password'), `${passwords[GW2]}\n`, { mode: 0o600 });
        writeFileSync(
          join(dir, 'gateway2.yaml'),
          `apiVersion: wardgate/v1
kind: Gateway
site: ${SITE}
gateway: ${GW2}
mode: router
interfaces: { uplink: lo, device: lo }
deviceSegments: [127.0.0.0/8]
management: { networks: [10.99.0.0/24] }
stateDir: state2
policies: [ward.yaml]
mqtt: { url: ${brokerUrl}, protocolVersion: 4, username: ${GW2}, passwordFile: ${join(dir, 'gw2-password')}, keepaliveSeconds: 5 }
health: { intervalSeconds: 30 }
commands:
  publicKeys: [{ id: ${CONSOLE_USER}, key: "${key.publicKey}" }]
`,
        );
        writeFileSync(
          join(dir, 'ward.yaml'),
          `apiVersion: wardgate/v1
kind: Policy
devices:
  - { id: pump-07, class: infusion-pump, criticality: life-critical, failMode: open, mode: monitor, ipv4: 127.0.0.7 }
`,
        );
        const logFd = openSync(join(dir, 'gw2.log'), 'a');
        const child = spawn(process.execPath, [CLI, 'run', '--gateway', join(dir, 'gateway2.yaml'), '--backend', 'dry-run'], { stdio: ['ignore', logFd, logFd] });
        closeSync(logFd);
        const gone = new Promise((r) => child.once('exit', r));
        cleanups.push(() => stopProcess(child, gone, 5000, 'SIGKILL'));
        site.second = child;
        await sleep(300);
        if (child.exitCode !== null) throw new Error(`wardgate run exited at once: ${readFileSync(join(dir, 'gw2.log'), 'utf8')}`);
        return child;
      },
      token: async () => {
        if (token !== undefined) return token;
        const r = await fetch(`${consoleRun.adminUrl}/auth/token`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ client_id: 'node-red-admin', grant_type: 'password', scope: '*', username: consoleRun.admin.username, password: consoleRun.admin.password }),
        });
        if (!r.ok) throw new Error(`admin login: HTTP ${r.status}`);
        token = ((await r.json()) as { access_token: string }).access_token;
        return token;
      },
      context: async <T>(k: string): Promise<T | undefined> => {
        const r = await fetch(`${consoleRun.adminUrl}/context/flow/${FLOW_TAB}/${encodeURIComponent(k)}?store=default`, { headers: { authorization: `Bearer ${await site.token()}` } });
        if (!r.ok) throw new Error(`context ${k}: HTTP ${r.status}`);
        const body = (await r.json()) as { msg?: string; format?: string };
        if (body.msg === undefined || body.format === 'undefined') return undefined;
        return (body.format?.startsWith('Object') || body.format?.startsWith('array') ? JSON.parse(body.msg) : body.msg) as T;
      },
      stop,
    };
    return site;
  } catch (err) {
    await stop();
    throw err;
  }
}

/** The last lines of Node-RED's log, for a failure message. */
export function consoleLog(site: ConsoleSite | undefined): string {
  if (!site) return '';
  try {
    return readFileSync(site.console.logFile, 'utf8').split('\n').slice(-40).join('\n');
  } catch {
    return '';
  }
}
