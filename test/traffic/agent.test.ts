// The flow log in `wardgate run`: a router-mode namespace site, the agent started against its
// gateway namespace with an embedded broker (anonymous, on a free port) and 2-second summaries,
// a committed policy, real allowed connections, `conntrack -D` in the gateway namespace to end
// them, and then the NDJSON flow file in <stateDir>/flows/ and a `flows` summary over MQTT.
import { spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FlowsSummaryPayload } from '../../agent/mqtt/topics.js';
import type { FlowRecord } from '../../agent/traffic/flows.js';
import { freePort } from '../mqtt/brokers.js';
import { canRoot, childCommands, connectToAgent, destroyAll, Lab, removeStale, skipReason, sleep, stopAgent, until, v4, warnSkip } from '../integration/site.js';
import { FLOW_POLICIES } from './model.js';

const conntrackSkip: string | undefined = (() => {
  if (!canRoot) return skipReason;
  const which = spawnSync('sh', ['-c', 'command -v conntrack'], { encoding: 'utf8' });
  return which.status === 0 ? undefined : 'conntrack (conntrack-tools) is not installed';
})();

warnSkip('flow log in wardgate run', conntrackSkip);

describe.skipIf(conntrackSkip !== undefined)('the flow log and flows summaries in wardgate run', () => {
  const labs: Lab[] = [];
  let lab: Lab;
  let agent: ReturnType<Lab['startAgent']> | undefined;
  let client: MqttClient | undefined;
  const summaries: unknown[] = [];

  beforeAll(async () => {
    await removeStale();
    lab = await Lab.create({ mode: 'router', hosts: ['pacs', 'ct', 'pump'], policies: FLOW_POLICIES });
    labs.push(lab);
    const port = await freePort();
    appendFileSync(
      lab.gateway,
      `mqtt:
  url: mqtt://127.0.0.1:${port}
  protocolVersion: 4
  embeddedBroker: { port: ${port}, allowAnonymous: true }
  reconnect: { minSeconds: 1, maxSeconds: 2 }
traffic: { summaryIntervalSeconds: 2 }
`,
    );
    await lab.listen('ct', 'tcp', [104]);
    await lab.listen('pump', 'tcp', [443]);
    agent = lab.startAgent();
    client = await connectToAgent(agent, port);
    client.on('message', (topic, payload) => {
      if (topic === 'wardgate/v1/itest/gw-1/flows') summaries.push(JSON.parse(payload.toString()));
    });
    await client.subscribeAsync('wardgate/v1/itest/gw-1/flows', { qos: 1 });
    // The summary timer starts once conntrack runs: a first (empty) summary says the reader is up.
    await until('a first flows summary', () => summaries.length > 0, 15000).catch((err: unknown) => {
      throw new Error(`${(err as Error).message}; agent output:\n${agent?.output() ?? ''}`);
    });
    await lab.commit();
  }, 90000);

  afterAll(async () => {
    try {
      await client?.endAsync(true).catch(() => undefined);
      await stopAgent(agent);
    } finally {
      await destroyAll(labs);
    }
  }, 30000);

  it('writes the flows to <stateDir>/flows/ and publishes a summary with the device counts', async () => {
    const ok = { ok: true, why: 'echo' };
    expect(await lab.connect('pacs', 'tcp', v4('ct'), 104)).toEqual(ok);
    expect(await lab.connect('pacs', 'tcp', v4('ct'), 104)).toEqual(ok);
    expect(await lab.connect('pacs', 'tcp', v4('pump'), 443)).toEqual(ok);
    const flush = await lab.site.exec('gw', ['conntrack', '-D']);
    expect(flush.code, flush.stderr).toBe(0);

    const file = join(lab.stateDir, 'flows', 'flows.ndjson');
    const records = await until(
      'three flow records in the flow file',
      () => {
        if (!existsSync(file)) return undefined;
        const lines = readFileSync(file, 'utf8').trim().split('\n').filter(Boolean);
        const recs = lines.map((l) => JSON.parse(l) as FlowRecord & { kind: string });
        return recs.length >= 3 ? recs : undefined;
      },
      10000,
    );
    expect(records.filter((r) => r.device === 'ct-01' && r.dport === 104 && r.verdict === 'allowed' && r.kind === 'flow')).toHaveLength(2);
    expect(records.filter((r) => r.device === 'pump-01' && r.dport === 443 && r.app === 'HTTPS')).toHaveLength(1);
    for (const r of records) expect(r.bytes).toBeGreaterThan(0);

    // The three connections ended together, but an interval may end between two of their records.
    const ctSummaries = () => summaries.map((s) => FlowsSummaryPayload.parse(s)).flatMap((s) => s.devices.filter((d) => d.device === 'ct-01').map((d) => ({ s, d })));
    await until('flows summaries with both ct-01 flows', () => ctSummaries().reduce((n, x) => n + x.d.flows, 0) >= 2, 10000);
    const ct = ctSummaries();
    expect(ct.reduce((n, x) => n + x.d.flows, 0)).toBe(2);
    for (const { s, d } of ct) {
      expect(s.schema).toBe('wardgate/v1/flows');
      expect(s.gateway).toBe('gw-1');
      expect(Date.parse(s.intervalEnd)).toBeGreaterThan(Date.parse(s.intervalStart));
      expect(d.bytes).toBeGreaterThan(0);
      expect(d.packets).toBeGreaterThan(0);
      expect(d.byApp.DICOM?.flows).toBe(d.flows);
      expect(d.byVerdict.allowed?.flows).toBe(d.flows);
      expect(d.topPeers).toEqual([expect.objectContaining({ peer: v4('pacs'), peerGroup: 'pacs', flows: d.flows })]);
    }
  }, 60000);

  it('starts conntrack again when it exits', async () => {
    const pid = agent!.child.pid!;
    const conntrackPid = () => childCommands(pid).find((c) => c.includes('conntrack -E'))?.split(' ')[0];
    const first = await until('the agent\'s conntrack', () => conntrackPid(), 5000);
    process.kill(Number(first), 'SIGKILL');
    await until('a new conntrack', () => {
      const p = conntrackPid();
      return p !== undefined && p !== first ? p : undefined;
    }, 10000);
    await sleep(500); // conntrack subscribes within its settle time; the agent waits for it too
    expect(agent!.output()).toContain('conntrack exited; restarting it');
    const file = join(lab.stateDir, 'flows', 'flows.ndjson');
    const before = readFileSync(file, 'utf8').trim().split('\n').length;
    expect(await lab.connect('pacs', 'tcp', v4('pump'), 443)).toEqual({ ok: true, why: 'echo' });
    expect((await lab.site.exec('gw', ['conntrack', '-D'])).code).toBe(0);
    await until('a flow record from the new reader', () => readFileSync(file, 'utf8').trim().split('\n').length > before, 10000);
  }, 60000);
});
