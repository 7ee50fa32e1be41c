// Interop with a real site broker, as a console sees it: Mosquitto with TLS client certificates
// from a throwaway CA and the ACL shipped in deploy/mosquitto/wardgate.acl, real `wardgate run`
// processes (dry-run backend) with devices probed over TCP on loopback, and `mosquitto_sub`
// (the console) and `mosquitto_pub` as the other clients. Covers the birth and the last will
// after kill -9, a broker outage with the agent killed and restarted inside it, a full outbox
// dropping by priority, the per-gateway ACL, and every payload against its schema.
// WG_MOSQUITTO_LOG=/path/file keeps the broker's log (log_type all) for debugging.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { generateConsoleKey } from '../../agent/console/keys.js';
import { PRIORITIES, type Priority } from '../../agent/mqtt/outbox.js';
import { CommandRequest, CommandResponsePayload, DeviceHealthPayload, EventPayload, HealthPayload, StatusPayload, type Severity } from '../../agent/mqtt/topics.js';
import { freePort, haveMosquitto, makePki, removePki, startMosquitto, until, type Mosquitto, type Pki } from '../mqtt/brokers.js';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'bin', 'wardgate.js');
const ACL = join(ROOT, 'deploy', 'mosquitto', 'wardgate.acl');
const SITE = 'st-interop';
const CONSOLE = 'console-central'; // the console block of deploy/mosquitto/wardgate.acl
/** The controller's severity -> outbox priority (agent/controller.ts). */
const PRIORITY: Record<Severity, Priority> = { info: 'low', warning: 'normal', critical: 'high' };

function have(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
const missing = [...(haveMosquitto ? [] : ['mosquitto or openssl']), ...['mosquitto_sub', 'mosquitto_pub'].filter((c) => !have(c))];
if (missing.length > 0) console.warn(`test/interop/mosquitto.test.ts skipped: ${missing.join(', ')} not installed (apt-get install mosquitto mosquitto-clients openssl)`);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- processes, owned by a test or by the file; all killed (by their pid) however a test ends --

const perTest = new Set<ChildProcess>();
const perFile = new Set<ChildProcess>();

async function kill(c: ChildProcess): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  await new Promise<void>((resolve) => {
    const t = setTimeout(resolve, 5000);
    c.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    c.kill('SIGKILL');
  });
}

function own(c: ChildProcess, scope: 'test' | 'file'): ChildProcess {
  (scope === 'test' ? perTest : perFile).add(c);
  c.once('exit', () => {
    perTest.delete(c);
    perFile.delete(c);
  });
  return c;
}

/** Runs a command to its end, bounded: { code, out, err }. */
function run(cmd: string, args: string[], timeoutMs = 15000): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const c = own(spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }), 'test');
    let out = '';
    let err = '';
    c.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    const t = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    c.once('close', (code) => {
      clearTimeout(t);
      resolve({ code, out, err });
    });
  });
}

// ---- the broker side ------------------------------------------------------------------------

let pki: Pki;
let broker: Mosquitto | undefined;
let work = '';
let key = { privateKeyPath: '', id: '', publicKey: '' };

function tlsArgs(who: string): string[] {
  const c = pki.clients[who];
  if (!c) throw new Error(`no certificate for ${who}`);
  return ['-h', '127.0.0.1', '-p', String(broker?.port), '--cafile', pki.ca, '--cert', c.cert, '--key', c.key];
}

interface Message {
  retain: boolean;
  topic: string;
  payload: string;
  json: Record<string, unknown> | undefined;
}

/** mosquitto_sub as `who`, printing `%r %t %p` (retain flag, topic, payload) per line. */
class Sub {
  readonly messages: Message[] = [];
  readonly child: ChildProcess;
  stderr = '';
  private rest = '';

  constructor(who: string, topics: string[], extra: string[], scope: 'test' | 'file') {
    const args = [...tlsArgs(who), '-q', '1', '-F', '%r %t %p', ...extra, ...topics.flatMap((t) => ['-t', t])];
    this.child = own(spawn('mosquitto_sub', args, { stdio: ['ignore', 'pipe', 'pipe'] }), scope);
    this.child.stdout?.on('data', (d: Buffer) => {
      const lines = (this.rest + d.toString()).split('\n');
      this.rest = lines.pop() ?? '';
      for (const line of lines) this.messages.push(parseLine(line));
    });
    this.child.stderr?.on('data', (d: Buffer) => (this.stderr += d.toString()));
  }

  on(topic: string): Message[] {
    return this.messages.filter((m) => m.topic === topic);
  }
}

function parseLine(line: string): Message {
  const a = line.indexOf(' ');
  const b = line.indexOf(' ', a + 1);
  const payload = line.slice(b + 1);
  let json: Record<string, unknown> | undefined;
  try {
    const v: unknown = JSON.parse(payload);
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) json = v as Record<string, unknown>;
  } catch {
    json = undefined;
  }
  return { retain: line.slice(0, a) === '1', topic: line.slice(a + 1, b), payload, json };
}

/** Publishes QoS 1 as `who`; returns once the broker has acknowledged (or refused in silence). */
async function pub(who: string, topic: string, message: string, opts: { retain?: boolean } = {}): Promise<void> {
  const r = await run('mosquitto_pub', [...tlsArgs(who), '-q', '1', '-t', topic, '-m', message, ...(opts.retain ? ['-r'] : [])]);
  if (r.code !== 0) throw new Error(`mosquitto_pub as ${who} to ${topic} failed (${r.code}): ${r.err}`);
}

/** What a console that subscribes now gets first: the retained message, if any (bounded). */
async function retained(topic: string, waitSeconds = 3): Promise<Message | undefined> {
  const r = await run('mosquitto_sub', [...tlsArgs(CONSOLE), '-q', '1', '-F', '%r %t %p', '-C', '1', '-W', String(waitSeconds), '-t', topic], 10000);
  const line = r.out.split('\n').find((l) => l.length > 0);
  return line === undefined ? undefined : parseLine(line);
}

/** Publishes as a console on a command topic of a made-up site until `sub` has seen one: subscribed. */
async function synced(sub: Sub, topic: string): Promise<void> {
  const end = Date.now() + 10000;
  for (let i = 0; ; i++) {
    await pub(CONSOLE, topic, `sync-${i}`);
    try {
      await until(`${topic} at the subscriber`, () => sub.on(topic).length > 0, 500);
      return;
    } catch (err) {
      if (Date.now() > end) throw new Error(`${(err as Error).message}; mosquitto_sub said: ${sub.stderr}`);
    }
  }
}

/** The console of the whole file: a persistent session (QoS 1, -c) so it misses nothing across broker restarts. */
let consoleSub: Sub;
const atConsole = (gateway: string, suffix: string) => consoleSub.on(`wardgate/v1/${SITE}/${gateway}/${suffix}`);
function eventIdsAtConsole(gateway: string): string[] {
  const seen: string[] = [];
  for (const m of atConsole(gateway, 'events')) {
    const id = m.json?.id;
    if (typeof id === 'string' && !seen.includes(id)) seen.push(id); // first arrival order
  }
  return seen;
}

// ---- devices: a TCP listener the test opens and closes; each device's probe connects to it ----

class Target {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  constructor(readonly port: number) {}

  async open(): Promise<void> {
    const s = createServer((sock) => {
      this.sockets.add(sock);
      sock.on('close', () => this.sockets.delete(sock));
      sock.on('error', () => undefined);
      sock.end();
    });
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.listen(this.port, '127.0.0.1', () => resolve());
    });
    this.server = s;
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    for (const sock of this.sockets) sock.destroy();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }
}
const targets: Target[] = [];
async function target(): Promise<Target> {
  const t = new Target(await freePort());
  targets.push(t);
  await t.open();
  return t;
}

// ---- the agent: `wardgate run` with its pino log (NDJSON on stdout) --------------------------

interface LogLine {
  msg?: string;
  event?: string;
  severity?: Severity;
  device?: string;
  id?: string;
  bootId?: string;
  [k: string]: unknown;
}

interface DeviceSpec {
  id: string;
  criticality: 'life-critical' | 'high' | 'medium' | 'low';
  /** One TCP probe for each. */
  targets: Target[];
}

/** A gateway directory (gateway.yaml, policy.yaml); its certificate is the one whose CN is its id unless `cert` names another. */
function writeGateway(gateway: string, devices: DeviceSpec[], extra = '', cert = gateway): string {
  const dir = join(work, gateway);
  mkdirSync(dir, { recursive: true });
  const c = pki.clients[cert];
  if (!c) throw new Error(`no certificate for ${cert}`);
  writeFileSync(
    join(dir, 'gateway.yaml'),
    `apiVersion: wardgate/v1
kind: Gateway
site: ${SITE}
gateway: ${gateway}
mode: router
interfaces: { uplink: lo, device: lo }
deviceSegments: [127.0.0.0/8]
management: { networks: [10.99.0.0/24] }
stateDir: state
policies: [policy.yaml]
mqtt:
  url: mqtts://127.0.0.1:${broker?.port}
  tls: { ca: ${pki.ca}, cert: ${c.cert}, key: ${c.key} }
  keepaliveSeconds: 5
  reconnect: { minSeconds: 1, maxSeconds: 2 }
health: { intervalSeconds: 3600 }
commands:
  publicKeys: [{ id: ${key.id}, key: "${key.publicKey}" }]
${extra}`,
  );
  const probe = (t: Target) => `{ type: tcp, port: ${t.port}, intervalSeconds: 1, timeoutMs: 500, failuresToDown: 1, successesToUp: 1 }`;
  writeFileSync(
    join(dir, 'policy.yaml'),
    `apiVersion: wardgate/v1
kind: Policy
devices:${devices.length === 0 ? ' []' : ''}
${devices.map((d) => `  - { id: ${d.id}, class: infusion-pump-server, criticality: ${d.criticality}, ipv4: 127.0.0.1, probes: [${d.targets.map(probe).join(', ')}] }`).join('\n')}
`,
  );
  return join(dir, 'gateway.yaml');
}

class Agent {
  readonly logs: LogLine[] = [];
  readonly child: ChildProcess;
  output = '';
  private rest = '';

  constructor(readonly gatewayFile: string) {
    const env = { ...process.env };
    delete env.WARDGATE_STATE_DIR;
    this.child = own(spawn(process.execPath, [CLI, 'run', '--gateway', gatewayFile, '--backend', 'dry-run'], { stdio: ['ignore', 'pipe', 'pipe'], env }), 'test');
    this.child.stdout?.on('data', (d: Buffer) => {
      this.output += d.toString();
      const lines = (this.rest + d.toString()).split('\n');
      this.rest = lines.pop() ?? '';
      for (const line of lines) {
        try {
          this.logs.push(JSON.parse(line) as LogLine);
        } catch {
          // not pino: kept in output
        }
      }
    });
    this.child.stderr?.on('data', (d: Buffer) => (this.output += d.toString()));
  }

  get bootId(): string | undefined {
    return this.logs.find((l) => l.msg === 'agent started')?.bootId;
  }

  /** The events it raised, in order, each with the payload id it logged. */
  events(): (LogLine & { id: string; severity: Severity })[] {
    const events = this.logs.filter((l) => typeof l.event === 'string');
    for (const e of events) {
      if (typeof e.id !== 'string') throw new Error(`the agent logs events without their payload id: dist/ predates agent/controller.ts; run npx tsc -p tsconfig.json\n${JSON.stringify(e)}`);
    }
    return events as (LogLine & { id: string; severity: Severity })[];
  }

  async online(): Promise<void> {
    await this.wait('online', () => this.logs.some((l) => l.msg === 'online'), 15000);
  }

  async waitEvents(n: number): Promise<void> {
    await this.wait(`${n} event(s)`, () => this.events().length >= n, 10000);
  }

  async wait(what: string, check: () => boolean, ms: number): Promise<void> {
    try {
      await until(what, () => {
        if (this.child.exitCode !== null) throw new Error(`the agent exited (${this.child.exitCode})`);
        return check();
      }, ms);
    } catch (err) {
      throw new Error(`${(err as Error).message}\nagent output:\n${this.output.slice(-4000)}`);
    }
  }

  async kill9(): Promise<void> {
    await kill(this.child);
  }
}

/** `wardgate console cmd` as the console certificate. */
async function consoleCmd(gateway: string, name: string): Promise<CommandResponsePayload> {
  const c = pki.clients[CONSOLE];
  if (!c) throw new Error('no console certificate');
  const r = await run(process.execPath, [CLI, 'console', 'cmd', `${SITE}/${gateway}`, name, '--url', `mqtts://127.0.0.1:${broker?.port}`, '--ca', pki.ca, '--cert', c.cert, '--cert-key', c.key, '--key', key.privateKeyPath, '--key-id', key.id, '--json'], 20000);
  expect(r.err).toBe('');
  expect(r.code).toBe(0);
  return CommandResponsePayload.parse(JSON.parse(r.out));
}

// ---- payload validation ------------------------------------------------------------------------

const responses: CommandResponsePayload[] = [];

/** Which zod schema a topic's payload must satisfy; undefined for topics no agent writes. */
function schemaFor(topic: string): { name: string; parse: (v: unknown) => unknown } | undefined {
  const rest = topic.split('/').slice(4).join('/');
  if (rest === 'status') return { name: 'status', parse: (v) => StatusPayload.parse(v) };
  if (rest === 'health') return { name: 'health', parse: (v) => HealthPayload.parse(v) };
  if (/^devices\/[^/]+\/health$/.test(rest)) return { name: 'device-health', parse: (v) => DeviceHealthPayload.parse(v) };
  if (rest === 'events') return { name: 'event', parse: (v) => EventPayload.parse(v) };
  if (rest === 'cmd-response' || rest.startsWith('cmd-response/')) return { name: 'command-response', parse: (v) => CommandResponsePayload.parse(v) };
  if (rest.startsWith('cmd/')) return { name: 'command-request', parse: (v) => CommandRequest.parse(v) };
  return undefined;
}

/** Validates every payload the console saw from `gateway` (or the whole site); returns counts by schema. */
function expectValid(gateway?: string): Record<string, number> {
  const counts: Record<string, number> = {};
  const prefix = `wardgate/v1/${SITE}/${gateway ?? ''}`;
  for (const m of consoleSub.messages.filter((x) => x.topic.startsWith(prefix))) {
    const schema = schemaFor(m.topic);
    expect(schema, `a topic no agent writes: ${m.topic}`).toBeDefined();
    if (!schema) continue;
    expect(m.json, `not JSON on ${m.topic}: ${m.payload}`).toBeDefined();
    try {
      schema.parse(m.json);
    } catch (err) {
      throw new Error(`${m.topic}: the payload does not match the ${schema.name} schema: ${(err as Error).message}\n${m.payload}`);
    }
    if (schema.name !== 'command-request') expect(m.json).toMatchObject({ site: SITE, gateway: m.topic.split('/')[3] });
    counts[schema.name] = (counts[schema.name] ?? 0) + 1;
  }
  return counts;
}

// ---- the outbox's documented drop policy (docs/outbox.md), as a reference --------------------

interface Pushed {
  priority: Priority;
  id: string | undefined; // event payload id; undefined for device health
}

/** Bound on the count only (maxBytes is far away): the oldest low first, then normal, then high, never above the newcomer; else the newcomer. */
function expectedOutbox(pushes: Pushed[], maxMessages: number): { kept: Pushed[]; dropped: Pushed[] } {
  const kept: Pushed[] = [];
  const dropped: Pushed[] = [];
  for (const m of pushes) {
    if (kept.length < maxMessages) {
      kept.push(m);
      continue;
    }
    const levels = PRIORITIES.slice(0, PRIORITIES.indexOf(m.priority) + 1);
    const level = levels.find((p) => kept.some((k) => k.priority === p));
    if (level === undefined) {
      dropped.push(m);
      continue;
    }
    const i = kept.findIndex((k) => k.priority === level);
    dropped.push(...kept.splice(i, 1));
    kept.push(m);
  }
  return { kept, dropped };
}

// ---------------------------------------------------------------------------------------------

describe.skipIf(missing.length > 0)('interop with Mosquitto (TLS client certificates, deploy/mosquitto ACL) and mosquitto_sub as the console', () => {
  beforeAll(async () => {
    if (!existsSync(join(ROOT, 'dist', 'agent', 'cli', 'main.js'))) throw new Error('dist/ is missing: run npx tsc -p tsconfig.json first');
    work = mkdtempSync(join(tmpdir(), 'wg-interop-'));
    pki = makePki({ clients: ['gw-2', 'gw-3', CONSOLE] });
    const k = generateConsoleKey(join(work, 'keys'), 'biomed-console');
    key = { privateKeyPath: k.privateKeyPath, id: k.id, publicKey: k.publicKey };
    broker = await startMosquitto(pki, undefined, { aclFile: ACL, persistence: true, ...(process.env.WG_MOSQUITTO_LOG ? { logFile: process.env.WG_MOSQUITTO_LOG } : {}) });
    consoleSub = new Sub(CONSOLE, ['wardgate/v1/#'], ['-c', '-i', `console-interop-${process.pid}`], 'file');
    await synced(consoleSub, 'wardgate/v1/st-sync/none/cmd/sync');
  }, 30000);

  afterEach(async () => {
    await Promise.all([...perTest].map(kill));
    // A test that failed inside an outage leaves the broker down: the next one needs it
    // (start() does nothing when it runs).
    await broker?.start();
  });

  afterAll(async () => {
    await Promise.all([...perTest, ...perFile].map(kill));
    await broker?.stop();
    await Promise.all(targets.map((t) => t.close()));
    if (pki) removePki(pki);
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('the birth is a retained online status (bootId, seq); after kill -9 the retained last will says offline, connection lost', async () => {
    const dev = await target();
    const agent = new Agent(writeGateway('gw-1', [{ id: 'monitor-1', criticality: 'medium', targets: [dev] }]));
    await agent.online();
    const bootId = agent.bootId;
    expect(bootId).toMatch(/^[0-9a-f-]{36}$/);

    // A console that subscribes after the birth gets it as a retained message.
    const birth = await retained(`wardgate/v1/${SITE}/gw-1/status`);
    expect(birth?.retain).toBe(true);
    expect(StatusPayload.parse(birth?.json)).toMatchObject({ state: 'online', site: SITE, gateway: 'gw-1', bootId, seq: 1 });
    await until('the device up at the console', () => atConsole('gw-1', 'devices/monitor-1/health').some((m) => m.json?.state === 'up'));

    await agent.kill9();
    await until('the will at the console', () => atConsole('gw-1', 'status').some((m) => m.json?.state === 'offline'));
    const will = await retained(`wardgate/v1/${SITE}/gw-1/status`);
    expect(will?.retain).toBe(true);
    expect(StatusPayload.parse(will?.json)).toMatchObject({ state: 'offline', reason: 'connection lost (last will)', bootId, seq: 1 });
    expect(atConsole('gw-1', 'status').map((m) => m.json?.state)).toEqual(['online', 'offline']);
    const counts = expectValid('gw-1');
    expect(counts).toMatchObject({ status: 2, 'device-health': 1 });
  });

  it('outage: the broker stops, events queue, the agent is killed -9 and restarted; every event id arrives, in order', async () => {
    const dev = await target();
    const file = writeGateway('gw-2', [{ id: 'monitor-2', criticality: 'medium', targets: [dev] }]);
    const a = new Agent(file);
    await a.online();
    await until('the device up at the console', () => atConsole('gw-2', 'devices/monitor-2/health').some((m) => m.json?.state === 'up'));

    // Before the outage: down, up, delivered at once.
    await dev.close();
    await a.waitEvents(1);
    await dev.open();
    await a.waitEvents(2);
    await until('the first events at the console', () => a.events().every((e) => eventIdsAtConsole('gw-2').includes(e.id)));

    // The broker goes away (a clean stop: it keeps the console's session); the agent queues.
    await broker?.stop('SIGTERM');
    await sleep(300);
    await dev.close();
    await a.waitEvents(3);
    await dev.open();
    await a.waitEvents(4);

    // kill -9 in the outage, and a new process on the same state directory (and outbox).
    await a.kill9();
    await dev.close();
    const b = new Agent(file);
    await b.waitEvents(1); // unknown -> down
    await dev.open();
    await b.waitEvents(2);
    await dev.close();
    await b.waitEvents(3);
    expect(b.bootId).not.toBe(a.bootId);

    await broker?.start();
    await b.online();
    const produced = [...a.events(), ...b.events()].map((e) => e.id);
    expect(new Set(produced).size).toBe(7);
    await until('every event id at the console', () => produced.every((id) => eventIdsAtConsole('gw-2').includes(id)), 20000);
    // At least once, in order of production by first arrival, none missing, nothing else.
    expect(eventIdsAtConsole('gw-2')).toEqual(produced);
    const events = atConsole('gw-2', 'events').map((m) => EventPayload.parse(m.json));
    expect(events.find((e) => e.id === b.events()[0]?.id)).toMatchObject({ kind: 'device.state', device: 'monitor-2', data: { from: 'unknown', to: 'down' } });

    // The new process's birth: a new boot id, its first session; and what the killed process
    // had queued came after it, from the outbox that B took over.
    const births = atConsole('gw-2', 'status').filter((m) => m.json?.state === 'online').map((m) => StatusPayload.parse(m.json));
    expect(births.at(-1)).toMatchObject({ bootId: b.bootId, seq: 1 });
    const at = (pred: (m: Message) => boolean) => consoleSub.messages.findIndex(pred);
    const bBirth = at((m) => m.topic === `wardgate/v1/${SITE}/gw-2/status` && m.json?.state === 'online' && m.json.bootId === b.bootId);
    for (const e of a.events().slice(2)) expect(at((m) => m.json?.id === e.id)).toBeGreaterThan(bBirth);
    expectValid('gw-2');
  });

  it('a full outbox drops as documented (priority, then age) and says how many in health outbox.dropped; the newest are delivered', async () => {
    // One high-criticality device with two probes: one failing is degraded (a warning: normal
    // priority), both down (critical: high), both passing up (info: low).
    const [a, b] = [await target(), await target()];
    const maxMessages = 10;
    const agent = new Agent(writeGateway('gw-3', [{ id: 'pump-1', criticality: 'high', targets: [a, b] }], `outbox: { maxMessages: ${maxMessages} }\n`));
    await agent.online();
    // Everything queued so far (the first health, the device up) is delivered: the queue is empty.
    await until('the first messages at the console', () => atConsole('gw-3', 'health').length === 1 && atConsole('gw-3', 'devices/pump-1/health').length === 1);
    await sleep(300); // the agent processes the PUBACKs

    await broker?.stop('SIGTERM');
    await sleep(300);
    const outageStart = Date.now();
    // Twice degraded, down, degraded, up: 8 transitions, each a device health message (normal)
    // and an event, so 16 messages for 10 places.
    const steps = [() => a.close(), () => b.close(), () => a.open(), () => b.open()];
    for (let i = 0; i < 8; i++) {
      await steps[i % 4]?.();
      await agent.waitEvents(i + 1);
    }
    const outageEnd = Date.now();
    const events = agent.events();
    expect(events.map((e) => `${e.severity}:${String(e.msg).replace(/ \(was .*/, '')}`)).toEqual(
      Array<string[]>(2).fill(['warning:device pump-1 is degraded', 'critical:device pump-1 is down', 'warning:device pump-1 is degraded', 'info:device pump-1 is up']).flat(),
    );
    // In the controller, each transition pushes the device health, then the event.
    const pushes: Pushed[] = events.flatMap((e) => [
      { priority: 'normal' as const, id: undefined },
      { priority: PRIORITY[e.severity], id: e.id },
    ]);
    const expected = expectedOutbox(pushes, maxMessages);
    expect(expected.dropped).toHaveLength(pushes.length - maxMessages);

    await broker?.start();
    await agent.online();
    const keptEvents = expected.kept.flatMap((k) => k.id ?? []);
    await until('the kept events at the console', () => keptEvents.every((id) => eventIdsAtConsole('gw-3').includes(id)), 20000);

    // The console asks for health now (a signed command through the ACL): the drop count.
    const response = await consoleCmd('gw-3', 'health.now');
    responses.push(response);
    expect(response).toMatchObject({ ok: true, command: 'health.now' });
    const health = HealthPayload.parse(response.result);
    expect(health.outbox.dropped).toBeGreaterThan(0);
    expect(health.outbox.dropped).toBe(expected.dropped.length);
    await until('the health message at the console', () => atConsole('gw-3', 'health').some((m) => m.json?.id === health.id));
    expect(HealthPayload.parse(atConsole('gw-3', 'health').find((m) => m.json?.id === health.id)?.json).outbox.dropped).toBe(expected.dropped.length);

    // Delivered: exactly what the documented policy keeps, in order; the rest never arrives.
    const outageIds = new Set(events.map((e) => e.id));
    const delivered = eventIdsAtConsole('gw-3').filter((id) => outageIds.has(id));
    expect(delivered).toEqual(keptEvents);
    // Of what was produced during the outage, as many messages as the outbox holds arrived.
    const fromOutage = consoleSub.messages.filter((m) => m.topic.startsWith(`wardgate/v1/${SITE}/gw-3/`) && !m.topic.endsWith('/status') && typeof m.json?.ts === 'string' && Date.parse(m.json.ts) >= outageStart && Date.parse(m.json.ts) <= outageEnd);
    expect(new Set(fromOutage.map((m) => m.json?.id)).size).toBe(maxMessages);

    // What that means here: every low (info) event is dropped, even the newest, which met a
    // queue with no low message left and was refused; no critical one is; of the warnings,
    // the oldest went and the newest stayed.
    const ids = (severity: Severity) => events.filter((e) => e.severity === severity).map((e) => e.id);
    expect(ids('info').filter((id) => delivered.includes(id))).toEqual([]);
    expect(ids('critical').filter((id) => delivered.includes(id))).toEqual(ids('critical'));
    const warnings = ids('warning');
    const keptWarnings = warnings.filter((id) => delivered.includes(id));
    expect(keptWarnings.length).toBeGreaterThan(0);
    expect(keptWarnings.length).toBeLessThan(warnings.length);
    expect(keptWarnings).toEqual(warnings.slice(warnings.length - keptWarnings.length));
    expectValid('gw-3');
  });

  it('ACL: a gateway publishes only under its own prefix (not cmd/), reads only its own commands; a console reads all and publishes commands', async () => {
    const base = 'wardgate/v1/st-acl';
    const consoleView = new Sub(CONSOLE, [`${base}/#`], [], 'test');
    // gw-1 tries to read everything, gw-2's commands in particular.
    const gw1 = new Sub('gw-1', [`${base}/gw-1/cmd/+`, `${base}/gw-2/cmd/#`, 'wardgate/v1/#'], [], 'test');
    const gw2 = new Sub('gw-2', [`${base}/gw-2/cmd/+`], [], 'test');
    await synced(consoleView, `${base}/sync/cmd/sync`);
    await synced(gw1, `${base}/gw-1/cmd/sync`);
    await synced(gw2, `${base}/gw-2/cmd/sync`);
    const mark = { console: consoleView.messages.length, gw1: gw1.messages.length, gw2: gw2.messages.length };

    // Refused (mosquitto acknowledges and drops them): in order, each acknowledged before the next.
    await pub('gw-1', `${base}/gw-2/status`, '{"state":"online","spoofed":true}', { retain: true });
    await pub('gw-1', `${base}/gw-2/events`, 'spoofed event');
    await pub('gw-1', `${base}/gw-2/cmd/policy.apply`, 'gw-1 commands gw-2');
    await pub('gw-1', `${base}/gw-1/cmd/policy.apply`, 'gw-1 commands itself');
    await pub(CONSOLE, `${base}/gw-1/status`, 'a console is no gateway');
    // Allowed.
    await pub(CONSOLE, `${base}/gw-2/cmd/ping`, 'console to gw-2');
    await pub('gw-1', `${base}/gw-1/status`, 'gw-1 status', { retain: true });
    await pub('gw-1', `${base}/gw-1/events`, 'gw-1 event');
    await pub('gw-1', `${base}/gw-1/cmd-response/abc`, 'gw-1 answer');
    await pub(CONSOLE, `${base}/gw-1/cmd/ping`, 'console to gw-1');

    await until('the allowed messages', () => consoleView.messages.some((m) => m.payload === 'console to gw-1') && gw1.messages.some((m) => m.payload === 'console to gw-1') && gw2.messages.some((m) => m.payload === 'console to gw-2'));
    // (A sync message may still be on its way to a subscriber that did not wait for it.)
    const seen = (s: Sub, from: number) => s.messages.slice(from).filter((m) => !m.topic.endsWith('/cmd/sync')).map((m) => `${m.topic} ${m.payload}`);
    expect(seen(consoleView, mark.console)).toEqual([
      `${base}/gw-2/cmd/ping console to gw-2`,
      `${base}/gw-1/status gw-1 status`,
      `${base}/gw-1/events gw-1 event`,
      `${base}/gw-1/cmd-response/abc gw-1 answer`,
      `${base}/gw-1/cmd/ping console to gw-1`,
    ]);
    // gw-1 got its own command and nothing else: not gw-2's, not its own status (no read right).
    expect(new Set(seen(gw1, mark.gw1))).toEqual(new Set([`${base}/gw-1/cmd/ping console to gw-1`]));
    expect(seen(gw2, mark.gw2)).toEqual([`${base}/gw-2/cmd/ping console to gw-2`]);
    // The site level is a `+` in the ACL: gw-1 may write under its own id in another site too
    // (deploy/mosquitto/README.md: pin the site where gateway ids are not unique across sites).
    await pub('gw-1', 'wardgate/v1/st-other/gw-1/status', 'gw-1 in another site', { retain: true });
    expect(await retained('wardgate/v1/st-other/gw-1/status')).toMatchObject({ payload: 'gw-1 in another site' });
    // The spoofed retained status was never stored; gw-1's own was.
    expect(await retained(`${base}/gw-2/status`, 1)).toBeUndefined();
    expect(await retained(`${base}/gw-1/status`)).toMatchObject({ retain: true, payload: 'gw-1 status' });
    // And a real agent lives with this ACL: the tests above ran under it (birth, will, health,
    // device health, events, commands and their answers).
  });

  it('a gateway whose certificate CN is not its gateway id is refused its birth (MQTT 5) and never goes online', async () => {
    const file = writeGateway('gw-9', [], '', 'gw-1');
    const agent = new Agent(file);
    await agent.wait('the refused birth', () => agent.logs.some((l) => l.msg === 'birth failed' && String(l.err).includes('Not authorized')), 10000);
    expect(agent.logs.some((l) => l.msg === 'online')).toBe(false);
    expect(atConsole('gw-9', 'status')).toEqual([]);
    expect(await retained(`wardgate/v1/${SITE}/gw-9/status`, 1)).toBeUndefined();
  });

  it('every payload the agents emitted validates against its schema in agent/mqtt/topics.ts', () => {
    const counts = expectValid();
    for (const name of ['status', 'health', 'device-health', 'event', 'command-response']) expect(counts[name], `${name} messages seen`).toBeGreaterThan(0);
    for (const r of responses) CommandResponsePayload.parse(r);
    expect(responses.length).toBeGreaterThan(0);
  });
});
