// The Modbus proxy in bridge mode (bump in the wire). The ruleset redirects a bridged connection
// to the bridge's own address (br_netfilter names the bridge as the packet's interface), so the
// bridge needs an address: without one, apply refuses rather than cut the device off.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bridgeSkipReason, GROUPS, Lab, stopAgent, until, v4, warnSkip, type Agent } from '../integration/site.js';

warnSkip('protocols bridge netns', bridgeSkipReason);

const PLC = `apiVersion: wardgate/v1
kind: Policy
devices:
  - id: plc-01
    class: lab-analyzer
    criticality: medium
    mode: enforce
    ipv4: 10.20.0.21
    allow:
      - { peer: pacs, direction: inbound, proto: tcp, ports: [502], modbus: { profile: read-only } }
`;

describe.skipIf(bridgeSkipReason !== undefined)('Modbus proxy in bridge mode', () => {
  let lab: Lab;
  let agent: Agent | undefined;

  beforeAll(async () => {
    lab = await Lab.create({ mode: 'bridge', hosts: ['pacs', 'pump'], policies: { '00-groups.yaml': GROUPS, 'plc.yaml': PLC } });
    await lab.modbusDevice('pump');
  }, 60000);

  afterAll(async () => {
    await stopAgent(agent);
    await lab?.destroy();
  });

  it('apply refuses while the bridge has no address, and nothing is loaded', async () => {
    const r = await lab.wardgate('policy', 'apply', '--timeout', '30');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('bridge br0 has no IPv4 address');
    expect(await lab.listTable()).toBeUndefined();
    const check = await lab.wardgate('policy', 'check');
    expect(check.stderr).toContain('warning: bridge br0 has no IPv4 address');
  });

  it('with an address on the bridge, the proxy filters the bridged connection', async () => {
    await lab.site.exec('gw', ['ip', 'addr', 'add', '10.20.0.250/32', 'dev', 'br0']);
    await lab.site.exec('gw', ['ip', 'route', 'add', '10.0.0.0/8', 'dev', 'br0']);
    await lab.commit();
    agent = lab.startAgent();
    const a = agent;
    await until('a read through the bridge', async () => {
      if (a.child.exitCode !== null) throw new Error(`agent exited: ${a.output()}`);
      return (await lab.mbpoll('pacs', ['-a', '1', '-r', '3', '-c', '2', v4('pump')])).code === 0;
    }, 30000, 500);
    const denied = await lab.mbpoll('pacs', ['-a', '1', '-r', '3', v4('pump'), '77']);
    expect(denied.out).toMatch(/Illegal function/i);
    const direct = await lab.mbpoll('gw', ['-a', '1', '-r', '3', '-c', '1', v4('pump')]);
    expect(direct.out).toMatch(/\[3\]:\s+3\b/);
    // The redirect is what carried it: its counter moved.
    const j = await lab.nftJson();
    const rule = j.nftables.find((o) => o.rule?.chain === 'proxy')?.rule;
    expect(JSON.stringify(rule)).toMatch(/"packets": ?[1-9]/);
  });
});
