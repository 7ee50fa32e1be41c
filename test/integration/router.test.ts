// Router mode in the kernel: the devices sit on their own subnet behind the gateway, which routes
// between them and the hospital. Both directions of the allow-lists, and the gateway's own input
// chain: management networks always reach it, other hosts are dropped (gatewayInput: drop).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canRoot, destroyAll, elementPackets, GW4, GW6, Lab, removeStale, rulePackets, skipReason, sumRulePackets, v4, v6, warnSkip } from './site.js';

warnSkip('router mode', skipReason);

describe.skipIf(!canRoot)('router mode: allow-lists on routed traffic', () => {
  const labs: Lab[] = [];
  let lab: Lab;

  beforeAll(async () => {
    await removeStale();
    lab = await Lab.create({ mode: 'router', hosts: ['pacs', 'stranger', 'mgmt', 'ct'] });
    labs.push(lab);
    await lab.listen('ct', 'tcp', [104, 23]);
    await lab.listen('pacs', 'tcp', [11112, 2000]);
    await lab.listen('stranger', 'tcp', [11112]);
    await lab.listen('gw', 'tcp', [2222]);
    // Before any policy everything is routed, and the gateway answers everyone.
    expect(await lab.connect('stranger', 'tcp', v4('ct'), 104)).toEqual({ ok: true, why: 'echo' });
    expect(await lab.connect('stranger', 'tcp', GW4, 2222)).toEqual({ ok: true, why: 'echo' });
    await lab.commit();
  });
  afterAll(() => destroyAll(labs));

  const DROP_IN = ['dev_ct_01_in', 'ct-01 enforce: default drop'] as const;
  const DROP_OUT = ['dev_ct_01_out', 'ct-01 enforce: default drop'] as const;

  it('inbound: the listed peer reaches the listed port; others are dropped and counted', async () => {
    const before = await lab.nftJson();
    expect(await lab.connect('pacs', 'tcp', v4('ct'), 104)).toEqual({ ok: true, why: 'echo' });
    expect(await lab.connect('pacs', 'tcp', v6('ct'), 104)).toEqual({ ok: true, why: 'echo' });
    const mid = await lab.nftJson();
    expect(elementPackets(mid, 'ct_01_in_v4', 'ct-01/allow[0]')).toBeGreaterThan(elementPackets(before, 'ct_01_in_v4', 'ct-01/allow[0]'));
    expect(elementPackets(mid, 'ct_01_in_v6', 'ct-01/allow[0]')).toBeGreaterThan(elementPackets(before, 'ct_01_in_v6', 'ct-01/allow[0]'));

    const denied = await Promise.all([
      lab.connect('stranger', 'tcp', v4('ct'), 104),
      lab.connect('pacs', 'tcp', v4('ct'), 23),
      lab.connect('stranger', 'tcp', v6('ct'), 104),
    ]);
    expect(denied).toEqual(Array(3).fill({ ok: false, why: 'timeout' }));
    const after = await lab.nftJson();
    expect(rulePackets(after, ...DROP_IN) - rulePackets(mid, ...DROP_IN)).toBeGreaterThanOrEqual(3);
  });

  it('outbound: the device reaches the listed peer and port; other destinations are dropped and counted', async () => {
    const before = await lab.nftJson();
    expect(await lab.connect('ct', 'tcp', v4('pacs'), 11112)).toEqual({ ok: true, why: 'echo' });
    expect(await lab.connect('ct', 'tcp', v6('pacs'), 11112)).toEqual({ ok: true, why: 'echo' });
    const mid = await lab.nftJson();
    expect(elementPackets(mid, 'ct_01_out_v4', 'ct-01/allow[3]')).toBeGreaterThan(elementPackets(before, 'ct_01_out_v4', 'ct-01/allow[3]'));
    expect(elementPackets(mid, 'ct_01_out_v6', 'ct-01/allow[3]')).toBeGreaterThan(elementPackets(before, 'ct_01_out_v6', 'ct-01/allow[3]'));
    // Outbound allow entries do not open the same port inbound.
    expect(await lab.connect('pacs', 'tcp', v4('ct'), 11112)).toMatchObject({ ok: false });

    const denied = await Promise.all([
      lab.connect('ct', 'tcp', v4('stranger'), 11112), // peer not listed
      lab.connect('ct', 'tcp', v4('pacs'), 2000), // port not listed
    ]);
    expect(denied).toEqual(Array(2).fill({ ok: false, why: 'timeout' }));
    const after = await lab.nftJson();
    expect(rulePackets(after, ...DROP_OUT) - rulePackets(mid, ...DROP_OUT)).toBeGreaterThanOrEqual(2);
  });

  it('management networks always reach the gateway itself; other hosts are dropped on gatewayInput: drop', async () => {
    const MGMT = ['input', 'management networks always reach the gateway'] as const;
    const DROP = ['input', 'gatewayInput: drop'] as const;
    const before = await lab.nftJson();
    expect(before.nftables.filter((o) => o.rule?.chain === 'input' && o.rule.comment === MGMT[1])).toHaveLength(2); // IPv4 and IPv6
    expect(await lab.connect('mgmt', 'tcp', GW4, 2222)).toEqual({ ok: true, why: 'echo' });
    expect(await lab.connect('mgmt', 'tcp', GW6, 2222)).toEqual({ ok: true, why: 'echo' });
    expect(await lab.ping('mgmt', GW4)).toBe(true);
    const mid = await lab.nftJson();
    expect(sumRulePackets(mid, ...MGMT) - sumRulePackets(before, ...MGMT)).toBeGreaterThanOrEqual(3);
    expect(rulePackets(mid, ...DROP)).toBe(rulePackets(before, ...DROP));

    const denied = await Promise.all([lab.connect('stranger', 'tcp', GW4, 2222), lab.connect('pacs', 'tcp', GW6, 2222), lab.ping('stranger', GW4)]);
    expect(denied).toEqual([{ ok: false, why: 'timeout' }, { ok: false, why: 'timeout' }, false]);
    const after = await lab.nftJson();
    expect(rulePackets(after, ...DROP) - rulePackets(mid, ...DROP)).toBeGreaterThanOrEqual(3);
  });
});
