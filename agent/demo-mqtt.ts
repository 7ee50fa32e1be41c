// The second half of `wardgate demo`: health over MQTT on this machine, without root. The agent
// runs with its embedded broker; a simulated lab analyzer (hardware/sim) speaks Modbus TCP on
// loopback and is probed; a console subscribes like mosquitto_sub and sends signed commands.
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { pino } from 'pino';
import { startLabAnalyzer } from '../hardware/sim/lab-analyzer.js';
import { connectConsole, sendCommand } from './console/client.js';
import { generateConsoleKey, loadConsoleKey } from './console/keys.js';
import type { Io } from './cli/io.js';
import { consoleBackup } from './cli/console-backup.js';
import { createDataKeyFile, ensureGatewayKey } from './backup/keys.js';
import { Controller } from './controller.js';

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

/** The same output, indented under the demo's step. */
const indent = (io: Io): Io => ({ out: (s) => io.out(s.replace(/^/gm, '    ')), err: (s) => io.err(s.replace(/^/gm, '    ')) });

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(check: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) return false;
    await sleep(50);
  }
  return true;
}

export async function runMqttDemo(work: string, opts: { keep: boolean }, io: Io): Promise<number> {
  const dir = join(work, 'mqtt');
  mkdirSync(dir, { recursive: true });
  const [brokerPort, modbusPort] = [await freePort(), await freePort()];
  const analyzer = await startLabAnalyzer(modbusPort);
  const key = generateConsoleKey(join(dir, 'keys'), 'demo-console');
  writeFileSync(
    join(dir, 'gateway.yaml'),
    `apiVersion: wardgate/v1
kind: Gateway
site: demo
gateway: gw-lab-01
mode: router
interfaces: { uplink: lo, device: lo }
deviceSegments: [127.0.0.0/8]
management: { networks: [10.99.0.0/24] }
stateDir: state
policies: [lab.yaml]
mqtt:
  url: mqtt://127.0.0.1:${brokerPort}
  # The demo's choice: its console side connects without credentials (console rights). A real
  # gateway keeps allowAnonymous off and gives consoles a usersFile (wardgate broker passwd).
  embeddedBroker: { port: ${brokerPort}, allowAnonymous: true }
health: { intervalSeconds: 5 }
commands:
  publicKeys: [{ id: demo-console, key: "${key.publicKey}" }]
`,
  );
  writeFileSync(
    join(dir, 'lab.yaml'),
    `apiVersion: wardgate/v1
kind: Policy
devices:
  - id: lab-analyzer-01
    class: lab-analyzer
    criticality: high
    mode: monitor
    ipv4: 127.0.0.1
    probes:
      - { type: modbus, port: ${modbusPort}, read: { address: 0, count: 4 }, intervalSeconds: 1, timeoutMs: 500, failuresToDown: 2, successesToUp: 1 }
      - { type: modbus, port: ${modbusPort}, intervalSeconds: 5, timeoutMs: 500 }
    backup:
      driver: { type: modbus-tcp, port: ${modbusPort}, unit: 1, ranges: [{ name: settings, kind: holding, address: 0, count: 4 }] }
      retries: 0
`,
  );
  // The backup store's keys, as the installer makes them (wardgate backup keygen).
  createDataKeyFile(join(dir, 'state', 'keys', 'backup-data.key'));
  const gatewayKey = ensureGatewayKey(join(dir, 'state'));

  io.out('\nhealth over MQTT: the agent with its embedded broker on 127.0.0.1:' + brokerPort + ', a simulated lab analyzer on Modbus TCP 127.0.0.1:' + modbusPort);
  const logFile = join(dir, 'agent.log');
  const agent = new Controller({ gateway: join(dir, 'gateway.yaml'), backend: 'dry-run' }, io, pino({ name: 'wardgate' }, pino.destination({ dest: logFile, sync: true })));
  await agent.start();
  const url = `mqtt://127.0.0.1:${brokerPort}`;
  const { client } = await connectConsole(url);
  const seen: { topic: string; body: Record<string, unknown> }[] = [];
  client.on('message', (topic, payload) => {
    const body = JSON.parse(payload.toString()) as Record<string, unknown>;
    seen.push({ topic, body });
    const short = topic.replace('wardgate/v1/demo/gw-lab-01/', '');
    const text = (v: unknown) => (typeof v === 'string' || typeof v === 'number' ? String(v) : '');
    if (short === 'status') io.out(`  ${short}: ${text(body.state)} (session ${text(body.seq)}${body.reason ? `, ${text(body.reason)}` : ''})`);
    else if (short === 'health') {
      const mem = body.memory as { availableBytes: number };
      const outbox = body.outbox as { depth: number };
      io.out(`  ${short}: uptime ${Math.round(Number(body.uptimeSeconds))} s, load ${(body.load as number[])[0]}, ${Math.round(mem.availableBytes / 2 ** 20)} MiB free, outbox ${outbox.depth}`);
    } else if (short.startsWith('devices/')) {
      const probes = (body.probes as { type: string; ok: boolean; detail?: Record<string, unknown> }[]).map((p) => `${p.type} ${p.ok ? 'ok' : 'failing'}${p.detail?.values ? ` registers ${JSON.stringify(p.detail.values)}` : ''}${p.detail?.ProductCode ? ` ${text(p.detail.VendorName)} ${text(p.detail.ProductCode)}` : ''}`);
      io.out(`  ${short}: ${String(body.state)}  (${probes.join('; ')})`);
    } else if (short === 'events') io.out(`  ${short}: [${String(body.severity)}] ${String(body.message)}`);
  });
  await client.subscribeAsync('wardgate/v1/demo/#', { qos: 1 });

  let failures = 0;
  const check = (ok: boolean, what: string) => {
    if (!ok) {
      failures++;
      io.out(`  <-- expected ${what}`);
    }
  };
  check(await until(() => seen.some((m) => m.topic.endsWith('/devices/lab-analyzer-01/health') && m.body.state === 'up'), 10000), 'the analyzer up');

  io.out('\na signed command from the console (wardgate console cmd demo/gw-lab-01 ping):');
  const answer = await sendCommand(url, 'demo', 'gw-lab-01', 'ping', {}, loadConsoleKey(key.privateKeyPath), 'demo-console');
  io.out(`  answer: ok=${String(answer.ok)} ${JSON.stringify(answer.result)}`);
  check(answer.ok, 'the ping answered');
  io.out('an unsigned command from anyone on the broker:');
  const refusals: Record<string, unknown>[] = [];
  client.on('message', (topic, payload) => {
    if (topic.includes('/cmd-response')) refusals.push(JSON.parse(payload.toString()) as Record<string, unknown>);
  });
  await client.subscribeAsync('wardgate/v1/demo/gw-lab-01/cmd-response/#');
  await client.publishAsync('wardgate/v1/demo/gw-lab-01/cmd/policy.apply', JSON.stringify({ name: 'policy.apply' }), { qos: 1 });
  check(await until(() => refusals.length > 0, 5000), 'a refusal');
  io.out(`  answer: ok=${String(refusals[0]?.ok)} ${JSON.stringify(refusals[0]?.error)} (refused, and recorded in the audit log)`);

  io.out('\nconfiguration backups (signed commands from the console):');
  const command = (name: string, args: Record<string, unknown>) => sendCommand(url, 'demo', 'gw-lab-01', name, args, loadConsoleKey(key.privateKeyPath), 'demo-console');
  const first = await command('backup.now', { device: 'lab-analyzer-01' });
  const r1 = first.result as { version?: number; baselineSet?: boolean } | undefined;
  io.out(`  backup.now: ok=${String(first.ok)}, version ${String(r1?.version)}${r1?.baselineSet ? ', the approved baseline' : ''}`);
  check(first.ok && r1?.version === 1, 'a first backup');
  analyzer.registers[1] = 4;
  io.out('  someone sets alarm register 1 to 4 on the analyzer\'s panel');
  const second = await command('backup.now', { device: 'lab-analyzer-01' });
  io.out(`  backup.now: ${String((second.result as { drift?: string } | undefined)?.drift)}`);
  check(await until(() => seen.some((m) => m.topic.endsWith('/events') && m.body.kind === 'config.drift'), 5000), 'a config.drift event');
  const restored = await command('backup.restore', { device: 'lab-analyzer-01', confirm: true });
  const rr = restored.result as { status?: string; version?: number; changes?: string[] } | undefined;
  io.out(`  backup.restore: ${String(rr?.status)} version ${String(rr?.version)} (${(rr?.changes ?? []).join('; ')}); register 1 reads ${analyzer.registers[1]} again`);
  check(rr?.status === 'restored' && analyzer.registers[1] === 0, 'the restore');
  const bundle = join(dir, 'lab-analyzer-01.wgb');
  io.out('  a responder pulls the signed bundle and verifies it with the gateway\'s public key:');
  const pulled = await consoleBackup(['pull', 'demo/gw-lab-01', 'lab-analyzer-01'], { url, key: key.privateKeyPath, keyId: 'demo-console', out: bundle, pubkey: gatewayKey.publicKeyPath }, indent(io));
  check(pulled === 0, 'a verified bundle');

  io.out('\nthe analyzer stops answering:');
  await analyzer.close();
  check(await until(() => seen.some((m) => m.topic.endsWith('/events') && m.body.kind === 'device.state'), 10000), 'a device.state event');

  if (opts.keep) {
    io.out(`\n--keep: the agent runs on. Try, in another terminal:`);
    io.out(`  mosquitto_sub -h 127.0.0.1 -p ${brokerPort} -t 'wardgate/v1/demo/#' -v`);
    io.out(`  node bin/wardgate.js console watch --url ${url} --site demo`);
    io.out(`  node bin/wardgate.js console cmd demo/gw-lab-01 health.now --url ${url} --key ${key.privateKeyPath}`);
    io.out('Ctrl-C stops it.');
    await new Promise<void>((resolve) => {
      process.once('SIGINT', () => resolve());
      process.once('SIGTERM', () => resolve());
    });
  }
  io.out('\nthe agent stops cleanly:');
  await agent.stop();
  await until(() => seen.some((m) => m.topic.endsWith('/status') && m.body.state === 'offline'), 3000);
  await client.endAsync();
  io.out(`agent log: ${logFile}`);
  return failures;
}
