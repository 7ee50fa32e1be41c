// The inline proxies in a namespace site (router mode), with real peers: mbpoll from the
// hospital side, pymodbus as the device. The ruleset steers allowed peers' connections to the
// device's Modbus port into the agent's proxy, which passes what the entry allows and answers
// the rest with a Modbus exception; the device's registers show what really reached it.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canRoot, GROUPS, GW4, Lab, processGone, skipReason, sleep, stopAgent, until, v4, warnSkip, type Agent } from '../integration/site.js';

warnSkip('protocols netns', skipReason);

const PLC = `apiVersion: wardgate/v1
kind: Policy
devices:
  - id: plc-01
    class: lab-analyzer
    criticality: medium
    mode: enforce
    ipv4: 10.20.0.21
    allow:
      - peer: pacs
        direction: inbound
        proto: tcp
        ports: [502]
        modbus: { profile: read-only, unitIds: [1] }
      - peer: biomed
        direction: inbound
        proto: tcp
        ports: [502]
        modbus:
          profile: read-write
          write: { holdingRegisters: ["100-119"] }
  - id: vent-gw-01
    class: ventilator-gateway
    criticality: life-critical
    mode: enforce
    ipv4: 10.20.0.41
    allow:
      - { peer: pacs, direction: inbound, proto: tcp, ports: [502], modbus: { profile: read-only } }
`;

/** Holding registers read straight from the device, from the gateway (not redirected). */
async function holding(lab: Lab, address: number, count = 1): Promise<number[]> {
  const r = await lab.mbpoll('gw', ['-a', '1', '-r', String(address), '-c', String(count), v4('pump')]);
  if (r.code !== 0) throw new Error(`direct read failed: ${r.out}`);
  return [...r.out.matchAll(/^\[\d+\]:\s+(-?\d+)/gm)].map((m) => Number(m[1]));
}

describe.skipIf(!canRoot)('Modbus proxy in a namespace site', () => {
  let lab: Lab;
  let agent: Agent | undefined;

  beforeAll(async () => {
    lab = await Lab.create({ mode: 'router', hosts: ['pacs', 'biomed', 'stranger', 'mgmt', 'pump', 'monitor'], policies: { '00-groups.yaml': GROUPS, 'plc.yaml': PLC } });
    await lab.modbusDevice('pump');
    await lab.modbusDevice('monitor');
    await lab.commit();
    agent = lab.startAgent();
    const a = agent;
    await until('the proxy answers through the gateway', async () => {
      if (a.child.exitCode !== null) throw new Error(`agent exited: ${a.output()}`);
      const r = await lab.mbpoll('pacs', ['-a', '1', '-r', '0', '-c', '1', v4('pump')]);
      return r.code === 0;
    }, 30000, 500);
  }, 90000);

  afterAll(async () => {
    await stopAgent(agent);
    await lab?.destroy();
  });

  it('passes an allowed read whole', async () => {
    const r = await lab.mbpoll('pacs', ['-a', '1', '-r', '0', '-c', '4', v4('pump')]);
    expect(r.code, r.out).toBe(0);
    expect([...r.out.matchAll(/^\[\d+\]:\s+(\d+)/gm)].map((m) => Number(m[1]))).toEqual([0, 1, 2, 3]);
  });

  it('answers a write from a read-only peer with exception 01, and the device is unchanged', async () => {
    const r = await lab.mbpoll('pacs', ['-a', '1', '-r', '10', v4('pump'), '555']);
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/Illegal function/i);
    expect(await holding(lab, 10)).toEqual([10]);
  });

  it('a unit id outside the entry is refused (exception, not a timeout)', async () => {
    const r = await lab.mbpoll('pacs', ['-a', '2', '-r', '0', '-c', '1', v4('pump')]);
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/Illegal data address|Gateway path/i);
  });

  it('passes a write inside the allowed range and refuses one outside it with exception 02', async () => {
    const ok = await lab.mbpoll('biomed', ['-a', '1', '-r', '105', v4('pump'), '4242']);
    expect(ok.code, ok.out).toBe(0);
    expect(await holding(lab, 105)).toEqual([4242]);
    const denied = await lab.mbpoll('biomed', ['-a', '1', '-r', '150', v4('pump'), '4242']);
    expect(denied.code).not.toBe(0);
    expect(denied.out).toMatch(/Illegal data address/i);
    expect(await holding(lab, 150)).toEqual([150]);
  });

  it('logs the write that passed with unit, address, values and the original addresses', async () => {
    const file = join(lab.stateDir, 'app', 'app.ndjson');
    const line = await until('the write in the application log', () => {
      if (!existsSync(file)) return undefined;
      return readFileSync(file, 'utf8').split('\n').find((l) => l.includes('"modbus.write"') && l.includes('4242'));
    });
    const rec = JSON.parse(line) as Record<string, unknown>;
    expect(rec).toMatchObject({ kind: 'modbus.write', device: 'plc-01', unit: 1 });
    expect(JSON.stringify(rec)).toContain(v4('biomed'));
    expect(JSON.stringify(rec)).toContain('105');
  });

  it('raises modbus.denied events for the refusals', async () => {
    const a = agent as Agent;
    await until('modbus.denied in the agent log', () => a.output().includes('modbus.denied'));
  });

  it('a peer on no entry never reaches the proxy: the kernel drops it', async () => {
    const r = await lab.mbpoll('stranger', ['-a', '1', '-r', '0', '-c', '1', v4('pump')]);
    expect(r.code).not.toBe(0);
    expect(r.out, r.out).toMatch(/Connection failed|timed out|in progress/i);
    expect(r.out).not.toMatch(/refused/i);
  });

  it('the proxies\' listen ports take no connection that was not redirected, even from management', async () => {
    // Management networks reach the gateway on every other port (the ssh of the same host does).
    await lab.listen('gw', 'tcp', [2222]);
    expect((await lab.connect('mgmt', 'tcp', GW4, 2222, 1500)).ok).toBe(true);
    const r = await lab.connect('mgmt', 'tcp', GW4, 40100, 1500);
    expect(r).toEqual({ ok: false, why: 'timeout' });
  });

  it('the fail-open device is filtered while the proxies run', async () => {
    const r = await lab.mbpoll('pacs', ['-a', '1', '-r', '7', v4('monitor'), '31']);
    expect(r.out).toMatch(/Illegal function/i);
    const j = await lab.nftJson();
    const alive = j.nftables.find((o) => o.set?.name === 'proxy_alive_v4')?.set;
    expect(JSON.stringify(alive?.elem ?? [])).toContain('10.20.0.41');
    // The alive set's elements are the agent's state, not policy: the kernel is not "drifted".
    const status = await lab.wardgate('policy', 'status');
    expect(status.stdout, status.stdout).toMatch(/kernel:\s+the committed ruleset/);
    expect((agent as Agent).output()).not.toContain('policy.drift');
  });

  it('when the proxies stop, a fail-closed device refuses connections and a fail-open one is reached past them', async () => {
    await stopAgent(agent);
    agent = undefined;
    await sleep(500);
    const closed = await lab.mbpoll('pacs', ['-a', '1', '-r', '0', '-c', '1', v4('pump')]);
    expect(closed.code).not.toBe(0);
    expect(closed.out).toMatch(/refused/i);
    // A stopping agent empties the alive set (a killed one lets it expire within 8 s): the kernel's
    // allow-list alone then stands for the device, so the first try passes.
    const open = await lab.mbpoll('pacs', ['-a', '1', '-r', '7', v4('monitor'), '31']);
    expect(open.code, open.out).toBe(0);
    expect((await lab.site.exec('gw', ['mbpoll', '-m', 'tcp', '-1', '-0', '-a', '1', '-r', '7', '-c', '1', v4('monitor')])).stdout).toMatch(/\[7\]:\s+31/);
    // Only the proxy is bypassed: a peer on no entry is still dropped by the kernel.
    const stranger = await lab.mbpoll('stranger', ['-a', '1', '-r', '0', '-c', '1', v4('monitor')]);
    expect(stranger.code).not.toBe(0);
    expect(stranger.out).not.toMatch(/refused/i);
  });

  it('a killed agent: its proxy process goes with it, and the fail-open port is reached once the alive element expires', async () => {
    await stopAgent(agent);
    const a = lab.startAgent();
    agent = a;
    await until('the proxy filters again', async () => (await lab.mbpoll('pacs', ['-a', '1', '-r', '7', v4('monitor'), '32'])).out.includes('Illegal function'), 30000, 500);
    await until('the alive element', async () => JSON.stringify((await lab.nftJson()).nftables.find((o) => o.set?.name === 'proxy_alive_v4')?.set?.elem ?? []).includes('10.20.0.41'), 10000, 250);
    const worker = Number((await lab.site.exec('gw', ['pgrep', '-P', String(a.child.pid), '-f', 'protocols/worker.js'])).stdout.trim().split('\n')[0]);
    expect(worker).toBeGreaterThan(0);
    a.child.kill('SIGKILL');
    await a.exited;
    agent = undefined;
    const t0 = Date.now();
    await until('the fail-open device past the dead proxy', async () => (await lab.mbpoll('pacs', ['-a', '1', '-r', '7', v4('monitor'), '32'])).code === 0, 20000, 500);
    const waited = Date.now() - t0;
    expect(waited).toBeLessThan(12000);
    // The proxy process did not outlive its agent.
    await until('the proxy process to exit', () => processGone(worker), 5000);
  }, 60000);
});
