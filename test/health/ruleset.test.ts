// rulesetCounters: the allow-list, enforce, monitor and fail-safe counters of the wardgate table,
// from `nft -j list table inet wardgate`. First on two listings that nft itself printed (the
// example policy loaded with preset counter values, test/health/fixtures/), then, as root, on a
// live table in a namespace site that real pings cross.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rulesetCounters, rulesetHealth } from '../../agent/health/vitals.js';
import { loadConfig } from '../../agent/config/load.js';
import { nftAvailable } from '../../agent/policy/backend.js';
import { compile } from '../../agent/policy/compile.js';
import { buildModel } from '../../agent/policy/model.js';
import { NetnsSite, removeStaleSites } from '../../hardware/netns-site.js';

const ROOT = join(import.meta.dirname, '..', '..');
const listing = (name: string) => readFileSync(join(import.meta.dirname, 'fixtures', name), 'utf8');

describe('rulesetCounters on listings printed by nft', () => {
  it('sums allow-list elements, enforce drops, monitor passes and gateway input drops', () => {
    // Preset in the ruleset text: ct-01 elements 11 + 4 and a pump-server-01 element 6; ct-01 and
    // lab-analyzer-01 enforce drops 7 + 2; pump-server-01 monitor 5; gatewayInput drop 3; and
    // 1000 on the established fast path, which counts nowhere.
    expect(rulesetCounters(listing('nft-example.json'))).toEqual({ accepted: 21, dropped: 9, monitored: 5, failOpen: 0, gatewayDropped: 3, problems: [] });
  });

  it('the fail-safe ruleset: fail-closed drops count as dropped, fail-open passes apart', () => {
    expect(rulesetCounters(listing('nft-example-failsafe.json'))).toEqual({ accepted: 0, dropped: 8, monitored: 0, failOpen: 10, gatewayDropped: 0, problems: [] });
  });

  it('no table gives zeros; a damaged listing gives zeros and says why', () => {
    const zeros = { accepted: 0, dropped: 0, monitored: 0, failOpen: 0, gatewayDropped: 0 };
    expect(rulesetCounters(undefined)).toEqual({ ...zeros, problems: [] });
    expect(rulesetCounters('')).toEqual({ ...zeros, problems: [] });
    expect(rulesetCounters('{"nftables": [')).toMatchObject({ ...zeros, problems: [expect.stringMatching(/^ruleset: nft -j output is not JSON/) as string] });
    expect(rulesetCounters('{"tables": []}')).toEqual({ ...zeros, problems: ['ruleset: nft -j output has no "nftables" array'] });
    // Odd items are skipped, not fatal.
    expect(rulesetCounters('{"nftables": [null, 3, {"rule": {"chain": "dev_x_in", "expr": [{"counter": {"packets": "7"}}, {"drop": null}]}}]}')).toEqual({ ...zeros, problems: [] });
  });

  it('fills the health payload\'s ruleset with the policy status', () => {
    const c = rulesetCounters(listing('nft-example.json'));
    expect(rulesetHealth({ kernel: 'committed', committed: { policyHash: 'abc' } }, c)).toEqual({ kernel: 'committed', policyHash: 'abc', accepted: 21, dropped: 9, monitored: 5 });
    expect(rulesetHealth({ kernel: 'absent' }, rulesetCounters(undefined))).toEqual({ kernel: 'absent', policyHash: null, accepted: 0, dropped: 0, monitored: 0 });
  });
});

const skipReason = (() => {
  if (process.getuid?.() !== 0) return 'not root: network namespaces and nftables need root';
  const nft = nftAvailable();
  if (!nft.ok) return nft.reason ?? 'nft is unavailable';
  if (spawnSync('sh', ['-c', 'command -v ping']).status !== 0) return 'ping is not installed';
  return undefined;
})();
if (skipReason !== undefined) console.warn(`[ruleset counters in the kernel] skipped: ${skipReason}`);

describe.skipIf(skipReason !== undefined)('rulesetCounters on a live table', () => {
  let site: NetnsSite;
  const model = buildModel(loadConfig(join(ROOT, 'gateway.example.yaml')));
  const load = async (failsafe: boolean) => {
    const r = await site.exec('gw', ['nft', '-f', '-'], { input: compile(model, { version: 'test', failsafe }).text });
    expect(r.stderr).toBe('');
  };
  const counters = async () => {
    const r = await site.exec('gw', ['nft', '-j', 'list', 'table', 'inet', 'wardgate']);
    expect(r.code).toBe(0);
    return rulesetCounters(r.stdout);
  };
  const ping = async (from: string, to: string) => (await site.exec(from, ['ping', '-n', '-q', '-c', '1', '-W', '1', to])).code === 0;

  beforeAll(async () => {
    await removeStaleSites('wgh');
    // Router mode: hospital hosts on 10.10.0.0/16 behind the gateway, devices on 10.20.0.0/24
    // (router mode gives every host an IPv6 route too; the pings below are IPv4).
    site = await NetnsSite.create({
      prefix: `wgh${process.pid}`,
      mode: 'router',
      hosts: [
        { name: 'biomed', side: 'hospital', ipv4: ['10.10.5.3'], ipv6: ['fd00:10::5:3'] }, // clinical-engineering: may ping ct-01
        { name: 'stranger', side: 'hospital', ipv4: ['10.10.9.66'], ipv6: ['fd00:10::9:66'] },
        { name: 'ct', side: 'device', ipv4: ['10.20.0.11'], ipv6: ['fd00:20::11'] }, // ct-01, enforce, failMode closed
        { name: 'pump', side: 'device', ipv4: ['10.20.0.21'], ipv6: ['fd00:20::21'] }, // pump-server-01, monitor, failMode open
      ],
    });
  });
  afterAll(async () => {
    await site?.destroy();
  });

  it('a freshly loaded table counts nothing; real pings move the right counters', async () => {
    await load(false);
    const fresh = await counters();
    expect(fresh).toMatchObject({ accepted: 0, dropped: 0, monitored: 0, failOpen: 0, problems: [] });

    expect(await ping('biomed', '10.20.0.11')).toBe(true);
    const a = await counters();
    expect(a.accepted - fresh.accepted).toBe(1); // the echo request; the reply takes the fast path

    expect(await ping('stranger', '10.20.0.11')).toBe(false);
    const b = await counters();
    expect(b.dropped - a.dropped).toBe(1);
    expect(b.accepted).toBe(a.accepted);

    expect(await ping('stranger', '10.20.0.21')).toBe(true);
    const c = await counters();
    expect(c.monitored - b.monitored).toBe(1);
    expect(c.dropped).toBe(b.dropped);

    expect(await ping('stranger', '10.10.255.254')).toBe(false); // the gateway itself
    expect((await counters()).gatewayDropped).toBeGreaterThan(c.gatewayDropped);
  });

  it('the fail-safe table: ct-01 fails closed, pump-server-01 fails open', async () => {
    await load(true);
    const before = await counters();
    expect(await ping('stranger', '10.20.0.11')).toBe(false);
    expect(await ping('biomed', '10.20.0.21')).toBe(true);
    const after = await counters();
    expect(after.dropped - before.dropped).toBe(1);
    expect(after.failOpen - before.failOpen).toBe(1);
    expect(after.accepted).toBe(0); // the fail-safe ruleset has no allow-lists
  });
});
