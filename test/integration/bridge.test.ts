// Bridge mode in the kernel: the devices and the hospital hosts share one bridge in the gateway
// namespace, and br_netfilter hands the bridged packets to the wardgate table. Real TCP, UDP and
// ICMP from the hospital side, over IPv4 and IPv6; every verdict is read back from the counters.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bridgeSkipReason, destroyAll, elementPackets, Lab, removeStale, rulePackets, v4, v6, warnSkip } from './site.js';

warnSkip('bridge mode', bridgeSkipReason);

const CT_DROP = ['dev_ct_01_in', 'ct-01 enforce: default drop'] as const;

describe.skipIf(bridgeSkipReason !== undefined)('bridge mode: allow-lists on bridged traffic', () => {
  const labs: Lab[] = [];
  let lab: Lab;

  beforeAll(async () => {
    await removeStale();
    lab = await Lab.create({ mode: 'bridge', hosts: ['pacs', 'stranger', 'biomed', 'ct', 'pump'] });
    labs.push(lab);
    await lab.listen('ct', 'tcp', [104, 23]);
    await lab.listen('ct', 'udp', [4242, 5353]);
    await lab.listen('pump', 'tcp', [443, 23]);
    // Before any policy, the segment is open: the drops below are the policy's doing.
    expect(await lab.connect('stranger', 'tcp', v4('ct'), 104)).toEqual({ ok: true, why: 'echo' });
    await lab.commit();
  });
  afterAll(() => destroyAll(labs));

  it('apply turned on br_netfilter in the gateway namespace', async () => {
    for (const name of ['bridge-nf-call-iptables', 'bridge-nf-call-ip6tables']) {
      const r = await lab.site.exec('gw', ['cat', `/proc/sys/net/bridge/${name}`]);
      expect(r.stdout.trim(), name).toBe('1');
    }
  });

  it('TCP: an allowed connection passes and counts on its set element; denied ones are dropped and counted', async () => {
    const before = await lab.nftJson();
    expect(await lab.connect('pacs', 'tcp', v4('ct'), 104)).toEqual({ ok: true, why: 'echo' });
    const mid = await lab.nftJson();
    expect(elementPackets(mid, 'ct_01_in_v4', 'ct-01/allow[0]')).toBeGreaterThan(elementPackets(before, 'ct_01_in_v4', 'ct-01/allow[0]'));
    expect(rulePackets(mid, ...CT_DROP)).toBe(rulePackets(before, ...CT_DROP));

    expect(await lab.connect('stranger', 'tcp', v4('ct'), 104)).toEqual({ ok: false, why: 'timeout' }); // peer not listed
    const afterStranger = await lab.nftJson();
    expect(rulePackets(afterStranger, ...CT_DROP)).toBeGreaterThan(rulePackets(mid, ...CT_DROP));
    expect(rulePackets(afterStranger, 'dev_ct_01_in', 'ct-01 inbound: deny sent to NFLOG')).toBeGreaterThan(
      rulePackets(mid, 'dev_ct_01_in', 'ct-01 inbound: deny sent to NFLOG'),
    );

    expect(await lab.connect('pacs', 'tcp', v4('ct'), 23)).toEqual({ ok: false, why: 'timeout' }); // port not listed
    const after = await lab.nftJson();
    expect(rulePackets(after, ...CT_DROP)).toBeGreaterThan(rulePackets(afterStranger, ...CT_DROP));
    expect(elementPackets(after, 'ct_01_in_v4', 'ct-01/allow[0]')).toBe(elementPackets(mid, 'ct_01_in_v4', 'ct-01/allow[0]'));
  });

  it('UDP: an allowed datagram is echoed and counted; denied ones are dropped and counted', async () => {
    const before = await lab.nftJson();
    expect(await lab.connect('pacs', 'udp', v4('ct'), 4242)).toEqual({ ok: true, why: 'echo' });
    const mid = await lab.nftJson();
    expect(elementPackets(mid, 'ct_01_in_v4', 'ct-01/allow[1]')).toBeGreaterThan(elementPackets(before, 'ct_01_in_v4', 'ct-01/allow[1]'));

    expect(await lab.connect('stranger', 'udp', v4('ct'), 4242)).toEqual({ ok: false, why: 'timeout' });
    expect(await lab.connect('pacs', 'udp', v4('ct'), 5353)).toEqual({ ok: false, why: 'timeout' });
    const after = await lab.nftJson();
    expect(rulePackets(after, ...CT_DROP) - rulePackets(mid, ...CT_DROP)).toBeGreaterThanOrEqual(2);
  });

  it('ICMP: echo from the listed group passes (IPv4 and IPv6); from anyone else it is dropped and counted', async () => {
    const before = await lab.nftJson();
    expect(await lab.ping('biomed', v4('ct'))).toBe(true);
    expect(await lab.ping('biomed', v6('ct'))).toBe(true);
    const mid = await lab.nftJson();
    expect(elementPackets(mid, 'ct_01_in_icmp_v4', 'ct-01/allow[2]')).toBeGreaterThan(elementPackets(before, 'ct_01_in_icmp_v4', 'ct-01/allow[2]'));
    expect(elementPackets(mid, 'ct_01_in_icmp_v6', 'ct-01/allow[2]')).toBeGreaterThan(elementPackets(before, 'ct_01_in_icmp_v6', 'ct-01/allow[2]'));

    expect(await lab.ping('stranger', v4('ct'))).toBe(false);
    expect(await lab.ping('pacs', v4('ct'))).toBe(false); // pacs may use TCP and UDP, not echo
    expect(await lab.ping('stranger', v6('ct'))).toBe(false);
    const after = await lab.nftJson();
    expect(rulePackets(after, ...CT_DROP) - rulePackets(mid, ...CT_DROP)).toBeGreaterThanOrEqual(3);
  });

  it('IPv6: an allowed TCP connection passes and a denied one is dropped, both counted', async () => {
    const before = await lab.nftJson();
    expect(await lab.connect('pacs', 'tcp', v6('ct'), 104)).toEqual({ ok: true, why: 'echo' });
    const mid = await lab.nftJson();
    expect(elementPackets(mid, 'ct_01_in_v6', 'ct-01/allow[0]')).toBeGreaterThan(elementPackets(before, 'ct_01_in_v6', 'ct-01/allow[0]'));

    expect(await lab.connect('stranger', 'tcp', v6('ct'), 104)).toEqual({ ok: false, why: 'timeout' });
    expect(await lab.connect('pacs', 'tcp', v6('ct'), 23)).toEqual({ ok: false, why: 'timeout' });
    const after = await lab.nftJson();
    expect(rulePackets(after, ...CT_DROP) - rulePackets(mid, ...CT_DROP)).toBeGreaterThanOrEqual(2);
    expect(elementPackets(after, 'ct_01_in_v6', 'ct-01/allow[0]')).toBe(elementPackets(mid, 'ct_01_in_v6', 'ct-01/allow[0]'));
  });

  it('monitor mode: traffic the allow-list does not cover passes, and the monitor log rule counts it', async () => {
    const LOG = ['dev_pump_01_in', 'pump-01 inbound: monitor sent to NFLOG'] as const;
    const PASS = ['dev_pump_01_in', 'pump-01 monitor: log and allow'] as const;
    const before = await lab.nftJson();
    // Covered: passes on its set element and is not logged.
    expect(await lab.connect('pacs', 'tcp', v4('pump'), 443)).toEqual({ ok: true, why: 'echo' });
    const mid = await lab.nftJson();
    expect(elementPackets(mid, 'pump_01_in_v4', 'pump-01/allow[0]')).toBeGreaterThan(elementPackets(before, 'pump_01_in_v4', 'pump-01/allow[0]'));
    expect(rulePackets(mid, ...LOG)).toBe(rulePackets(before, ...LOG));

    // Not covered: an enforcing device would drop these; the monitored one passes and logs them.
    expect(await lab.connect('stranger', 'tcp', v4('pump'), 23)).toEqual({ ok: true, why: 'echo' });
    expect(await lab.connect('pacs', 'tcp', v4('pump'), 23)).toEqual({ ok: true, why: 'echo' });
    expect(await lab.connect('stranger', 'tcp', v6('pump'), 443)).toEqual({ ok: true, why: 'echo' });
    const after = await lab.nftJson();
    expect(rulePackets(after, ...LOG) - rulePackets(mid, ...LOG)).toBeGreaterThanOrEqual(3);
    expect(rulePackets(after, ...PASS) - rulePackets(mid, ...PASS)).toBeGreaterThanOrEqual(3);
  });
});
