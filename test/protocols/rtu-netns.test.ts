// The Modbus RTU gateway end to end: the agent (`wardgate run`) in a namespace site (router
// mode), a device on a serial line only (a pseudo-terminal pair joined by socat, a pymodbus RTU
// device on the far end), and peers on the hospital side speaking Modbus TCP to the gateway's
// own address. The kernel lets only the entries' peers reach the port (management too is
// dropped there); the proxy passes what their rules allow; the device's registers, read on its
// TCP check path, show what reached it.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canRoot, GROUPS, GW4, GW6, Lab, rulePackets, skipReason, sleep, stopAgent, until, v4, warnSkip, type Agent, type HostName } from '../integration/site.js';
import { freePort } from '../fixtures/peers.js';
import { CLIENT, PYTHON, Procs, ptyPair, pyClient, rtuSkipReason, startDevice, type ClientResult, type Line } from './rtu-line.js';

const reason = skipReason ?? rtuSkipReason;
warnSkip('modbus rtu gateway netns', reason);

const PORT = 5020;

const policy = (serialPort: string) => `apiVersion: wardgate/v1
kind: Policy
devices:
  - id: sterilizer-01
    class: sterilizer
    criticality: medium
    mode: enforce
    rtu: { serialPort: ${serialPort}, parity: none, listenPort: ${PORT}, responseTimeoutMs: 500 }
    allow:
      - { peer: pacs, direction: inbound, proto: tcp, ports: [${PORT}], modbus: { profile: read-only, unitIds: [3] } }
      - peer: biomed
        direction: inbound
        proto: tcp
        ports: [${PORT}]
        modbus: { profile: read-write, unitIds: [3], write: { holdingRegisters: ["100-119"] } }
`;

describe.skipIf(!canRoot || reason !== undefined)('Modbus RTU gateway through the agent in a namespace site', () => {
  const procs = new Procs();
  const dir = mkdtempSync(join(tmpdir(), 'wg-rtu-ns-'));
  let lab: Lab;
  let agent: Agent | undefined;
  let line: Line;
  let check: string[];

  /** The pymodbus client in a host's namespace, to the gateway's port. */
  async function client(host: HostName, to: string, op: string, unit: number, ...args: number[]): Promise<ClientResult & { code: number }> {
    const r = await lab.site.exec(host, [PYTHON, CLIENT, 'tcp', to, String(PORT), op, String(unit), ...args.map(String)], { timeoutMs: 20000 });
    try {
      return { ...(JSON.parse(r.stdout.trim().split('\n').pop() ?? '') as ClientResult), code: r.code };
    } catch {
      return { error: `no JSON from the client (exit ${r.code}): ${r.stdout}${r.stderr}`, code: r.code };
    }
  }

  /** mbpoll in a host's namespace to the gateway's port, 0-based references. */
  async function mbpoll(host: HostName, args: string[]): Promise<{ code: number; out: string }> {
    const r = await lab.site.exec(host, ['mbpoll', '-m', 'tcp', '-1', '-0', '-o', '1', '-p', String(PORT), ...args], { timeoutMs: 15000 });
    return { code: r.code, out: r.stdout + r.stderr };
  }

  beforeAll(async () => {
    line = await ptyPair(procs, dir, 'line');
    const checkPort = await freePort();
    check = ['tcp', '127.0.0.1', String(checkPort)];
    await startDevice(procs, line.a, { tcpPort: checkPort });
    lab = await Lab.create({ mode: 'router', hosts: ['pacs', 'biomed', 'stranger', 'mgmt'], policies: { '00-groups.yaml': GROUPS, 'sterilizer.yaml': policy(line.b) } });
    await lab.commit();
    agent = lab.startAgent();
    const a = agent;
    await until(
      'the RTU gateway answers on the gateway\'s address',
      async () => {
        if (a.child.exitCode !== null) throw new Error(`agent exited: ${a.output()}`);
        return (await client('pacs', GW4, 'read-holding', 3, 0, 1)).registers !== undefined;
      },
      30000,
      500,
    );
  }, 90000);

  afterAll(async () => {
    await stopAgent(agent);
    await lab?.destroy();
    await procs.stopAll();
    rmSync(dir, { recursive: true, force: true });
  });

  it('passes an allowed read from the hospital side, over IPv4 and IPv6', async () => {
    const r = await mbpoll('pacs', ['-a', '3', '-r', '0', '-c', '4', GW4]);
    expect(r.code, r.out).toBe(0);
    expect([...r.out.matchAll(/^\[\d+\]:\s+(\d+)/gm)].map((m) => Number(m[1]))).toEqual([0, 1, 2, 3]);
    expect(await client('pacs', GW6, 'read-input', 3, 0, 2)).toMatchObject({ registers: [1000, 1001] });
  });

  it('answers a write from the read-only peer with exception 01, and the device is unchanged', async () => {
    const r = await mbpoll('pacs', ['-a', '3', '-r', '10', GW4, '555']);
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/Illegal function/i);
    expect(await pyClient(check, 'read-holding', 3, 10, 1)).toMatchObject({ registers: [10] });
  });

  it('passes a write of the read-write peer inside its range to the device, and logs it', async () => {
    expect(await client('biomed', GW4, 'write-register', 3, 105, 4242)).toMatchObject({ ok: true });
    expect(await pyClient(check, 'read-holding', 3, 105, 1)).toMatchObject({ registers: [4242] });
    const file = join(lab.stateDir, 'app', 'app.ndjson');
    const record = await until('the write in the application log', () => {
      if (!existsSync(file)) return undefined;
      return readFileSync(file, 'utf8').split('\n').find((l) => l.includes('"modbus.write"') && l.includes('4242'));
    });
    expect(JSON.parse(record)).toMatchObject({ kind: 'modbus.write', device: 'sterilizer-01', peer: v4('biomed'), unit: 3, address: 105, values: [4242] });
  });

  it('a unit id outside the entries is refused by the proxy with exception 02', async () => {
    expect(await client('biomed', GW4, 'read-holding', 4, 0, 1)).toMatchObject({ exception: 0x02 });
  });

  it('the kernel drops a peer on none of the entries, and management too, on the RTU port only', async () => {
    const stranger = await lab.connect('stranger', 'tcp', GW4, PORT, 1500);
    expect(stranger).toEqual({ ok: false, why: 'timeout' });
    await lab.listen('gw', 'tcp', [2222]);
    expect((await lab.connect('mgmt', 'tcp', GW4, 2222, 1500)).ok).toBe(true);
    expect(await lab.connect('mgmt', 'tcp', GW4, PORT, 1500)).toEqual({ ok: false, why: 'timeout' });
    expect(rulePackets(await lab.nftJson(), 'input', 'sterilizer-01 enforce: the RTU gateway port')).toBeGreaterThan(0);
    const a = agent as Agent;
    await until('flow.denied for the RTU port in the agent log', () => a.output().includes('flow.denied') && a.output().includes(`tcp/${PORT}`), 15000);
  });

  it('nothing answers on the port once the agent is stopped', async () => {
    await stopAgent(agent);
    agent = undefined;
    await sleep(500);
    expect(await lab.connect('pacs', 'tcp', GW4, PORT, 1500)).toEqual({ ok: false, why: 'ECONNREFUSED' });
  });
});
