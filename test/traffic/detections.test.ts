// Denied records and detections in `wardgate run`, end to end: a router-mode namespace site
// (pacs, stranger on the hospital side; ct-01 enforce, pump-01 monitor, and an unlisted host
// "monitor" with a Cisco MAC on the device side), the agent with an embedded broker and a SIEM
// export to a real rsyslogd (CEF over TCP, on loopback), real traffic, the events over MQTT and
// in rsyslog, and the records in the flow log. Then a restart of the agent:
// every flow the kernel reported while an agent ran is in the log, once.
import { spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EventPayload } from '../../agent/mqtt/topics.js';
import type { FlowRecord } from '../../agent/traffic/flows.js';
import { sh } from '../../hardware/netns-site.js';
import { freePort } from '../mqtt/brokers.js';
import { canRoot, childCommands, connectToAgent, destroyAll, Lab, NETCHECK, removeStale, skipReason, sleep, stopAgent, until, v4, warnSkip } from '../integration/site.js';
import { FLOW_POLICIES } from './model.js';
import { killAll, rsyslogMissing, startRsyslog, type Rsyslog } from '../export/rsyslog.js';

const tools = (() => {
  if (!canRoot) return skipReason;
  for (const tool of ['conntrack', 'tcpdump']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) return `${tool} is not installed`;
  }
  if (rsyslogMissing !== undefined) return rsyslogMissing;
  return existsSync('/usr/share/ieee-data/oui.csv') ? undefined : 'ieee-data is not installed (the MAC vendor registry)';
})();
warnSkip('detections in wardgate run', tools);

const CISCO_MAC = '00:00:0c:12:34:56';
type Rec = FlowRecord & { kind: string };

describe.skipIf(tools !== undefined)('denied records and detections in wardgate run', () => {
  const labs: Lab[] = [];
  let lab: Lab;
  let agent: ReturnType<Lab['startAgent']> | undefined;
  let client: MqttClient | undefined;
  let rsyslog: Rsyslog | undefined;
  const events: EventPayload[] = [];
  const file = () => join(lab.stateDir, 'flows', 'flows.ndjson');
  const records = (): Rec[] =>
    existsSync(file())
      ? readFileSync(file(), 'utf8')
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l) as Rec)
      : [];

  /** The agent's conntrack and tcpdump children both run (the agent does not wait for them). */
  const readersUp = async () => {
    await until('the agent\'s conntrack and tcpdump', () => {
      const children = childCommands(agent!.child.pid!);
      return children.some((c) => c.includes('conntrack -E')) && children.some((c) => c.includes('tcpdump -i nflog'));
    }, 15000);
    // conntrack says nothing once subscribed, tcpdump does: give both a moment.
    await sleep(1000);
  };

  beforeAll(async () => {
    await removeStale();
    lab = await Lab.create({ mode: 'router', hosts: ['pacs', 'stranger', 'ct', 'pump', 'monitor'], policies: FLOW_POLICIES });
    labs.push(lab);
    // "monitor" (10.20.0.41) is in no policy here: an unlisted host, with a MAC IEEE gave Cisco.
    const ns = lab.site.ns('monitor');
    // veth takes a new MAC while up (taking the link down would remove the host's routes).
    const r = await sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'address', CISCO_MAC]);
    if (r.code !== 0) throw new Error(`ip link set eth0 address: ${r.stderr}`);
    // The gateway forgets the old MAC (a neighbour entry that would otherwise linger as stale).
    await sh('ip', ['-n', lab.site.gw, 'neigh', 'flush', 'dev', 'dev0']);
    await lab.settle();
    const port = await freePort();
    rsyslog = await startRsyslog({ dir: lab.dir });
    appendFileSync(
      lab.gateway,
      `siem:
  syslog: { host: 127.0.0.1, port: ${rsyslog.tcpPort}, transport: tcp, format: cef }
mqtt:
  url: mqtt://127.0.0.1:${port}
  protocolVersion: 4
  embeddedBroker: { port: ${port}, allowAnonymous: true }
  reconnect: { minSeconds: 1, maxSeconds: 2 }
traffic:
  summaryIntervalSeconds: 2
  detections: { neighbourIntervalSeconds: 1 }
`,
    );
    await lab.listen('ct', 'tcp', [104]);
    await lab.listen('ct', 'udp', [4242]);
    await lab.listen('pacs', 'tcp', [104]);
    await lab.commit();
    agent = lab.startAgent();
    client = await connectToAgent(agent, port, { reconnectPeriod: 500 });
    client.on('message', (_topic, payload) => events.push(EventPayload.parse(JSON.parse(payload.toString()))));
    await client.subscribeAsync('wardgate/v1/itest/gw-1/events', { qos: 1 });
    await readersUp();
  }, 90000);

  afterAll(async () => {
    try {
      await client?.endAsync(true).catch(() => undefined);
      await stopAgent(agent);
    } finally {
      await killAll();
      await destroyAll(labs);
    }
  }, 30000);

  it('an allowed flow is recorded with its entry; a denied one raises flow.denied and is recorded as denied once over', async () => {
    expect(await lab.connect('pacs', 'tcp', v4('ct'), 104)).toEqual({ ok: true, why: 'echo' });
    expect((await lab.connect('stranger', 'tcp', v4('ct'), 104, 500)).ok).toBe(false);
    expect((await lab.site.exec('gw', ['conntrack', '-D', '-p', 'tcp', '--orig-port-dst', '104'])).code).toBe(0);

    const denied = await until('a flow.denied event', () => events.find((e) => e.kind === 'flow.denied'), 10000);
    expect(denied).toMatchObject({
      severity: 'warning',
      device: 'ct-01',
      dedupKey: `flow.denied/ct-01/${v4('stranger')}`,
      data: { direction: 'inbound', peer: v4('stranger'), proto: 'tcp', port: 104, app: 'DICOM' },
    });
    // A denied attempt is written once quiet for 10 s (TCP retransmits its SYN meanwhile).
    const recs = await until(
      'the allowed and the denied records',
      () => {
        const r = records();
        const allowed = r.find((x) => x.peer === v4('pacs') && x.device === 'ct-01' && x.dport === 104);
        const refused = r.find((x) => x.peer === v4('stranger') && x.device === 'ct-01' && x.dport === 104);
        return allowed && refused ? { allowed, refused } : undefined;
      },
      25000,
      500,
    );
    expect(recs.allowed).toMatchObject({ kind: 'flow', verdict: 'allowed', entry: 'ct-01/allow[0]', peerGroup: 'pacs', app: 'DICOM' });
    expect(recs.refused).toMatchObject({ kind: 'flow', verdict: 'denied', entry: null, direction: 'inbound', proto: 'tcp', app: 'DICOM' });
    expect(recs.refused.packets).toBeGreaterThanOrEqual(1);
    expect(recs.refused.toDevice.packets).toBe(recs.refused.packets);

    // The same event reached the SIEM, as CEF over TCP.
    const cef = await until('flow.denied in rsyslog', () => rsyslog!.received().find((m) => m.msgid === 'flow.denied'), 10000);
    expect(cef.app).toBe('wardgate');
    expect(cef.msg).toMatch(/^CEF:0\|wardgate\|wardgate\|[^|]+\|flow\.denied\|denied tcp\/104 from 10\.10\.9\.66 to device ct-01\|6\|/);
    expect(cef.msg).toContain(`src=${v4('stranger')}`);
    expect(cef.msg).toContain('dpt=104');
  }, 60000);

  it('a port scan from the hospital side yields a bounded number of events', async () => {
    const before = events.length;
    const r = await lab.site.exec('stranger', [process.execPath, NETCHECK, 'scan', 'tcp', v4('ct'), '1-1000', '300'], { timeoutMs: 60000 });
    expect(r.stdout.trim(), r.stderr).toBe('open 0 closed 0 filtered 1000');
    await until('a traffic.fanout event', () => events.slice(before).find((e) => e.kind === 'traffic.fanout'), 10000);
    await sleep(2000);
    const scanEvents = events.slice(before);
    // flow.denied for ct-01 and this peer was raised in the test before: deduplicated now.
    expect(scanEvents.map((e) => e.kind)).toEqual(['traffic.fanout']);
    expect(scanEvents[0]).toMatchObject({ severity: 'warning', dedupKey: `traffic.fanout/${v4('stranger')}`, data: { source: v4('stranger'), ports: 20 } });
  }, 90000);

  it('a new MAC on the device segment is device.new, with its vendor, once', async () => {
    // The unlisted host talks through the gateway: the gateway resolves its MAC to answer.
    expect(await lab.ping('monitor', v4('pacs'))).toBe(true);
    expect(await lab.connect('monitor', 'tcp', v4('pacs'), 104)).toEqual({ ok: true, why: 'echo' });
    const found = await until('a device.new event', () => events.find((e) => e.kind === 'device.new'), 15000);
    expect(found).toMatchObject({
      severity: 'warning',
      data: { mac: CISCO_MAC, address: v4('monitor'), vendor: 'Cisco Systems, Inc', registry: 'MA-L' },
    });
    expect(found.message).toContain('Cisco Systems, Inc');
    // The conntrack sighting of its address (held for the neighbour read) is not a second event.
    await sleep(4000);
    expect(events.filter((e) => e.kind === 'device.new')).toHaveLength(1);
    // The neighbour table has the gateway's own view: the listed devices it talked to are known.
    expect(events.filter((e) => e.kind === 'device.new' && e.data?.address === v4('ct'))).toEqual([]);
  }, 60000);

  it('a restart of the agent loses no flow the kernel reported while an agent ran', async () => {
    const mark = Date.now();
    // Ten TCP connections to ct-01 (closed, left in TIME_WAIT) and ten UDP flows (still open).
    for (let i = 0; i < 10; i++) expect((await lab.connect('pacs', 'tcp', v4('ct'), 104)).ok).toBe(true);
    for (let i = 0; i < 10; i++) expect((await lab.connect('pacs', 'udp', v4('ct'), 4242)).ok).toBe(true);
    // A denied attempt, still open (quiet for less than 10 s) when the agent stops.
    expect((await lab.connect('stranger', 'udp', v4('ct'), 9999, 300)).ok).toBe(false);
    await sleep(300);
    // The kernel reports the ten TCP flows ended, and the agent is stopped at once.
    const del = await lab.site.exec('gw', ['conntrack', '-D', '-p', 'tcp', '--orig-port-dst', '104']);
    expect(del.code, del.stderr).toBe(0);
    agent!.child.kill('SIGTERM');
    expect(await agent!.exited).toBe(0);
    const firstOutput = agent!.output();

    const since = (r: Rec) => Date.parse(r.time) >= mark;
    const tcp = records().filter((r) => since(r) && r.device === 'ct-01' && r.peer === v4('pacs') && r.dport === 104);
    expect(tcp).toHaveLength(10);
    expect(new Set(tcp.map((r) => r.conntrackId)).size).toBe(10);
    expect(records().filter((r) => since(r) && r.verdict === 'denied' && r.dport === 9999), firstOutput).toHaveLength(1);

    // The UDP flows outlive the first agent; the second records them when the kernel ends them.
    agent = lab.startAgent();
    await readersUp();
    const del2 = await lab.site.exec('gw', ['conntrack', '-D', '-p', 'udp', '--orig-port-dst', '4242']);
    expect(del2.code, del2.stderr).toBe(0);
    const udp = await until(
      'ten UDP records from the second agent',
      () => {
        const r = records().filter((x) => since(x) && x.device === 'ct-01' && x.dport === 4242);
        return r.length >= 10 ? r : undefined;
      },
      10000,
    );
    expect(udp).toHaveLength(10);
    for (const r of udp) {
      expect(r).toMatchObject({ verdict: 'allowed', entry: 'ct-01/allow[1]' });
      // The start is the kernel's (nf_conntrack_timestamp), from before this agent started.
      expect(r.start).not.toBeNull();
      expect(Date.parse(r.start!)).toBeLessThan(Date.parse(r.time));
      expect(Date.parse(r.start!)).toBeGreaterThanOrEqual(mark - 1000);
    }
  }, 90000);
});
