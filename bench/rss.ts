// Resident memory of the agent: a real `node bin/wardgate.js run` (the built agent in dist/,
// dry-run backend, its embedded MQTT broker, health every 5 s) probing 50 devices on loopback,
// against the same agent with no device and a bare idle `node`, side by side for the same time;
// for information also the 50-device agent under `node --max-semi-space-size=1` (a smaller
// young generation: what a flag in the service unit would buy). WARDGATE_BENCH_NODE_ARGS adds
// node flags to every process. Every device has a TCP probe (every 1 to 5 s) against a listener of its own on
// 127.0.1.<n>; every fifth also a Modbus probe (every 2 s, reading two holding registers)
// against a modbus-serial ServerTCP of its own. VmRSS is sampled from /proc/<pid>/status; VmHWM
// is the kernel's own peak. At the end the benchmark reads the retained device health from the
// agent's broker: every device must be up, or the probes were not doing their work.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import ModbusRTU from 'modbus-serial';
import mqtt from 'mqtt';
import { envNumber, freePort, freePorts, ratio, sleep, stopChild, table, waitForPort, withResource, withTempDir } from './lib.js';

const ROOT = join(import.meta.dirname, '..');
const CLI = join(ROOT, 'bin', 'wardgate.js');
const BUILT = join(ROOT, 'dist', 'agent', 'cli', 'main.js');
const DEVICES = 50;
const MODBUS_EVERY = 5;
const SAMPLE_MS = 250;
/** The issue's target: under 80 MB on Node 20 (decimal megabytes: 76.3 MiB). */
const TARGET_BYTES = 80e6;
const SITE = 'bench';
const GATEWAY = 'gw-rss';
const MiB = 1024 * 1024;

interface Device {
  id: string;
  address: string;
  tcpPort: number;
  tcpEvery: number;
  modbusPort?: number;
}

// ---------------------------------------------------------------------------------------------
// The devices: listeners in this process

interface Closable {
  close(cb: () => void): void;
}

function listen(host: string): Promise<{ server: Server; port: number }> {
  return new Promise((resolve, reject) => {
    const server = createServer((s) => {
      s.on('error', () => {});
      s.resume();
    });
    server.once('error', reject);
    server.listen(0, host, () => {
      const a = server.address();
      resolve({ server, port: typeof a === 'object' && a ? a.port : 0 });
    });
  });
}

/** modbus-serial's ServerTCP; with port 0 it would listen on 502, so the port is chosen first. */
async function modbusServer(host: string): Promise<{ server: Closable; port: number }> {
  const port = await freePort(host);
  const holding = [42, 7];
  return new Promise((resolve, reject) => {
    const server = new ModbusRTU.ServerTCP(
      { getHoldingRegister: (addr: number) => holding[addr] ?? 0, getInputRegister: () => 0, getCoil: () => false, setRegister: () => {}, setCoil: () => {} },
      { host, port, unitID: 1 },
    );
    // Not in modbus-serial's typings: serverError (listen failed), error and socketError (a
    // client gone mid-request: the probes destroy their socket at the deadline).
    const events = server as unknown as NodeJS.EventEmitter;
    events.on('serverError', (err: Error) => reject(err));
    events.on('error', () => {});
    events.on('socketError', () => {});
    server.on('initialized', () => resolve({ server, port }));
  });
}

async function startDevices(): Promise<{ devices: Device[]; servers: Closable[] }> {
  const servers: Closable[] = [];
  const devices: Device[] = [];
  try {
    for (let i = 0; i < DEVICES; i++) {
      const address = `127.0.1.${i + 1}`;
      const tcp = await listen(address);
      servers.push(tcp.server);
      const d: Device = { id: `dev-${String(i + 1).padStart(2, '0')}`, address, tcpPort: tcp.port, tcpEvery: 1 + (i % 5) };
      if (i % MODBUS_EVERY === 0) {
        const m = await modbusServer(address);
        servers.push(m.server);
        d.modbusPort = m.port;
      }
      devices.push(d);
    }
  } catch (err) {
    await closeAll(servers);
    throw err;
  }
  return { devices, servers };
}

async function closeAll(servers: Closable[]): Promise<void> {
  await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
}

// ---------------------------------------------------------------------------------------------
// The agent's configuration

function writeAgent(dir: string, brokerPort: number, devices: Device[]): string {
  mkdirSync(join(dir, 'policies'), { recursive: true });
  writeFileSync(
    join(dir, 'gateway.yaml'),
    `apiVersion: wardgate/v1
kind: Gateway
site: ${SITE}
gateway: ${GATEWAY}
mode: router
interfaces: { uplink: lo, device: lo }
deviceSegments: [127.0.0.0/8]
management: { networks: [10.99.0.0/24] }
stateDir: state
policies: [policies/*.yaml]
mqtt:
  url: mqtt://127.0.0.1:${brokerPort}
  # anonymous clients in: the benchmark reads the retained device health without a users file
  embeddedBroker: { port: ${brokerPort}, allowAnonymous: true }
  reconnect: { minSeconds: 1, maxSeconds: 2 }
health: { intervalSeconds: 5 }
`,
  );
  // Two policy files, the devices split between them.
  const half = Math.ceil(devices.length / 2);
  for (const [n, part] of [devices.slice(0, half), devices.slice(half)].entries()) {
    const lines = [
      'apiVersion: wardgate/v1',
      'kind: Policy',
      ...(n === 0 ? ['groups:', '  pacs: { members: [10.10.0.0/24] }'] : []),
      part.length === 0 ? 'devices: []' : 'devices:',
    ];
    for (const d of part) {
      lines.push(
        `  - id: ${d.id}`,
        '    class: bench-device',
        '    criticality: medium',
        `    ipv4: ${d.address}`,
        '    allow:',
        `      - { peer: pacs, direction: inbound, proto: tcp, ports: [${d.tcpPort}] }`,
        '    probes:',
        `      - { type: tcp, port: ${d.tcpPort}, intervalSeconds: ${d.tcpEvery}, timeoutMs: 1000, failuresToDown: 2, successesToUp: 1 }`,
      );
      if (d.modbusPort !== undefined) {
        lines.push(`      - { type: modbus, port: ${d.modbusPort}, read: { address: 0, count: 2 }, intervalSeconds: 2, timeoutMs: 1000, failuresToDown: 2, successesToUp: 1 }`);
      }
    }
    writeFileSync(join(dir, 'policies', `part-${n}.yaml`), `${lines.join('\n')}\n`);
  }
  return join(dir, 'gateway.yaml');
}

// ---------------------------------------------------------------------------------------------
// Sampling

interface Memory {
  rss: number;
  hwm: number;
  anon: number;
  file: number;
}

function readStatus(pid: number): Memory | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN) * 1024;
  return { rss: kb('VmRSS'), hwm: kb('VmHWM'), anon: kb('RssAnon'), file: kb('RssFile') };
}

interface Subject {
  name: string;
  started: number;
  times: number[];
  child: ChildProcess;
  output: { text: string };
  samples: Memory[];
  brokerPort?: number;
  devices: number;
}

const NODE_ARGS = (process.env.WARDGATE_BENCH_NODE_ARGS ?? '').split(/\s+/).filter((a) => a !== '');

function spawnCaptured(args: string[], cwd: string): { child: ChildProcess; output: { text: string }; started: number; times: number[] } {
  const child = spawn(process.execPath, [...NODE_ARGS, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  const output = { text: '' };
  const keep = (d: Buffer) => {
    output.text = (output.text + d.toString()).slice(-20000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  return { child, output, started: Date.now(), times: [] };
}

/** The retained device health on the agent's broker: how many devices are up. */
async function devicesUp(port: number): Promise<{ up: number; states: Record<string, number> }> {
  const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000 });
  const last = new Map<string, string>();
  try {
    client.on('message', (topic, payload) => {
      const state = (JSON.parse(payload.toString()) as { state?: string }).state ?? '?';
      last.set(topic, state);
    });
    await client.subscribeAsync(`wardgate/v1/${SITE}/${GATEWAY}/devices/+/health`, { qos: 1 });
    await sleep(1000);
  } finally {
    await client.endAsync();
  }
  const states: Record<string, number> = {};
  for (const s of last.values()) states[s] = (states[s] ?? 0) + 1;
  return { up: states.up ?? 0, states };
}

const mib = (bytes: number) => (bytes / MiB).toFixed(1);

// ---------------------------------------------------------------------------------------------

export async function rss(): Promise<string[]> {
  if (!existsSync(BUILT)) throw new Error(`${BUILT} is missing: build the agent first (npx tsc -p tsconfig.json; npm run bench does)`);
  const seconds = envNumber('WARDGATE_BENCH_RSS_SECONDS', 25);
  console.log(
    `node ${process.version}${NODE_ARGS.length > 0 ? ` ${NODE_ARGS.join(' ')}` : ''}; four processes side by side for ${seconds} s, VmRSS sampled every ${SAMPLE_MS} ms: ` +
      `\`wardgate run\` (dry-run backend, embedded broker, health every 5 s) with ${DEVICES} probed devices, the same with none, ` +
      `the first again under --max-semi-space-size=1, and a bare idle node`,
  );
  return withTempDir('wgbench-rss-', (dir) =>
    withResource(startDevices, ({ servers }) => closeAll(servers), async ({ devices }) => {
      const modbus = devices.filter((d) => d.modbusPort !== undefined).length;
      console.log(
        `devices: ${DEVICES} on 127.0.1.1-${DEVICES}, each a TCP listener (probed every 1-5 s); ${modbus} also a Modbus ServerTCP (probed every 2 s); ` +
          `probes per second about ${devices.reduce((n, d) => n + 1 / d.tcpEvery + (d.modbusPort !== undefined ? 0.5 : 0), 0).toFixed(1)}`,
      );
      const subjects: Subject[] = [];
      const stopAll = () => Promise.all(subjects.map((s) => stopChild(s.child, 5000))).then(() => undefined);
      return withResource(
        () => Promise.resolve(subjects),
        stopAll,
        async () => {
          const agents: [string, Device[], string[]][] = [
            [`agent, ${DEVICES} devices`, devices, []],
            ['agent, 0 devices', [], []],
            [`agent, ${DEVICES} devices, semi-space 1 MiB`, devices, ['--max-semi-space-size=1']],
          ];
          const ports = await freePorts(agents.length);
          for (const [i, [name, list, flags]] of agents.entries()) {
            const sub = join(dir, `agent-${i}`);
            mkdirSync(sub);
            const brokerPort = ports[i] as number;
            const gw = writeAgent(sub, brokerPort, list);
            const p = spawnCaptured([...flags, CLI, 'run', '--gateway', gw, '--backend', 'dry-run'], sub);
            subjects.push({ name, ...p, samples: [], brokerPort, devices: list.length });
          }
          const bare = spawnCaptured(['-e', 'setInterval(() => {}, 1000)'], dir);
          subjects.push({ name: 'bare node -e (idle)', ...bare, samples: [], devices: 0 });

          const end = Date.now() + seconds * 1000;
          const ready = Promise.all(
            subjects.map((s) => (s.brokerPort !== undefined ? waitForPort('127.0.0.1', s.brokerPort, 15000, `the embedded broker of "${s.name}"`) : Promise.resolve())),
          );
          let startError: Error | undefined;
          ready.catch((err: unknown) => (startError = err instanceof Error ? err : new Error(String(err))));
          while (Date.now() < end) {
            for (const s of subjects) {
              if (s.child.exitCode !== null || s.child.signalCode !== null) {
                throw new Error(`"${s.name}" exited (${s.child.exitCode ?? s.child.signalCode}) after ${s.samples.length} samples:\n${s.output.text.slice(-3000)}`);
              }
              const m = s.child.pid !== undefined ? readStatus(s.child.pid) : undefined;
              if (m) {
                s.samples.push(m);
                s.times.push((Date.now() - s.started) / 1000);
              }
            }
            if (startError !== undefined) throw startError;
            await sleep(SAMPLE_MS);
          }
          await ready;

          const full = subjects[0] as Subject;
          const ups = await Promise.all(
            subjects
              .filter((s) => s.devices > 0)
              .map((s) =>
                devicesUp(s.brokerPort as number).catch((err: unknown) => {
                  throw new Error(`"${s.name}": reading device health from its broker: ${(err as Error).message}\n${s.output.text.slice(-3000)}`);
                }),
              ),
          );
          for (const [i, up] of ups.entries()) {
            if (up.up !== DEVICES) {
              throw new Error(`only ${up.up} of ${DEVICES} devices are up (${JSON.stringify(up.states)}): the probes did not all work\n${full.output.text.slice(-3000)}`);
            }
            if (i > 0 && up.up !== (ups[0]?.up ?? 0)) throw new Error('the two 50-device agents disagree');
          }
          const up = ups[0] as { up: number };
          // The agents are stopped as systemd would (SIGTERM) and must exit cleanly.
          const exits = await Promise.all(
            subjects.map(async (s) => {
              const exited = new Promise<number | string | null>((r) => s.child.once('exit', (code, sig) => r(code ?? sig)));
              await stopChild(s.child, 5000);
              return exited;
            }),
          );

          const stat = (s: Subject) => {
            const last = s.samples.at(-1);
            return {
              max: Math.max(...s.samples.map((m) => m.rss)),
              final: last?.rss ?? NaN,
              hwm: Math.max(...s.samples.map((m) => m.hwm)),
              anon: last?.anon ?? NaN,
              file: last?.file ?? NaN,
            };
          };
          type Stat = ReturnType<typeof stat>;
          const [f, e, small, b] = subjects.map(stat) as [Stat, Stat, Stat, Stat];
          console.log('');
          console.log(
            table(
              ['process', 'samples', 'max VmRSS MiB', 'final VmRSS', 'VmHWM', 'final RssAnon', 'final RssFile', 'vs 0 devices (max)'],
              subjects.map((s, i) => {
                const x = stat(s);
                return [s.name, String(s.samples.length), mib(x.max), mib(x.final), mib(x.hwm), mib(x.anon), mib(x.file), i === 3 ? '' : ratio(x.max / e.max)];
              }),
            ),
          );
          console.log('');
          console.log('VmRSS (MiB) over time:');
          const marks = [1, 2, 5, 10, 15, 20, 25, 30, 45, 60].filter((t) => t < seconds);
          for (const s of subjects) {
            const at = (t: number) => {
              const i = s.times.findIndex((x) => x >= t);
              return i < 0 ? '-' : mib(s.samples[i]?.rss ?? NaN);
            };
            console.log(`  ${s.name.padEnd(38)} ${marks.map((t) => `${t}s ${at(t)}`).join('  ')}  end ${mib(s.samples.at(-1)?.rss ?? NaN)}`);
          }
          console.log('');
          console.log(`devices up at the end (retained devices/+/health on the agent's broker): ${up.up}/${DEVICES}`);
          console.log(`exit after SIGTERM: ${subjects.map((s, i) => `${s.name}: ${String(exits[i])}`).join(', ')}`);
          const peak = Math.max(f.max, f.hwm);
          const verdict = peak < TARGET_BYTES ? 'PASS' : 'MISS';
          const summary = [
            `rss: ${DEVICES} devices max ${mib(f.max)} MiB (VmHWM ${mib(f.hwm)}, final ${mib(f.final)}), 0 devices max ${mib(e.max)} MiB, bare node ${mib(b.max)} MiB; ` +
              `max 50/0 devices = ${ratio(f.max / e.max)}, 50 devices/bare node = ${ratio(f.max / b.max)}; ` +
              `peak ${mib(peak)} MiB = ${(peak / 1e6).toFixed(1)} MB (target < 80 MB: ${verdict}); ` +
              `with --max-semi-space-size=1: max ${mib(small.max)} MiB, final ${mib(small.final)} MiB`,
          ];
          console.log('');
          for (const line of summary) console.log(line);
          return summary;
        },
      );
    }),
  );
}
