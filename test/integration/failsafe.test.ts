// What the kernel runs when things go wrong. A broken policy is refused before anything reaches the
// kernel; `policy restore` (boot time) loads the committed ruleset, or, when that file is damaged,
// the fail-safe ruleset: devices with failMode open pass everything, devices with failMode closed
// pass nothing new.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { canRoot, CT, destroyAll, Lab, removeStale, rulePackets, skipReason, sleep, until, v4, warnSkip } from './site.js';

warnSkip('fail-safe', skipReason);

describe.skipIf(!canRoot)('failures leave the network in a known state', () => {
  const labs: Lab[] = [];
  const newLab = async (hosts: Parameters<typeof Lab.create>[0]['hosts'] = []) => {
    if (labs.length === 0) await removeStale();
    const lab = await Lab.create({ mode: 'router', hosts });
    labs.push(lab);
    return lab;
  };
  afterEach(() => destroyAll(labs));

  const BROKEN = [
    {
      what: 'an unknown peer group',
      text: CT.replace('{ peer: pacs, direction: inbound, proto: tcp, ports: [104] }', '{ peer: pacz, direction: inbound, proto: tcp, ports: [104] }'),
      token: 'pacz',
      field: 'devices[0].allow[0].peer',
      message: 'unknown peer group "pacz"',
    },
    {
      what: 'port 70000',
      text: CT.replace('proto: tcp, ports: [104] }', 'proto: tcp, ports: [70000] }'),
      token: '70000',
      field: 'devices[0].allow[0].ports[0]',
      message: 'port must be 1-65535',
    },
  ];

  it.each(BROKEN)('a policy with $what is refused (exit 3, file:line:col and field) and the running ruleset stays byte-identical', async (b) => {
    const lab = await newLab();
    await lab.commit();
    const before = await lab.listTable();
    const committedFile = readFileSync(lab.ruleset('committed.nft'), 'utf8');
    expect(before).toContain('table inet wardgate');

    lab.writePolicy('ct.yaml', b.text);
    const r = await lab.wardgate('policy', 'apply', '--timeout', '3');
    expect(r.code, r.stderr).toBe(3);
    const lines = b.text.split('\n');
    const line = lines.findIndex((l) => l.includes(b.token));
    const col = (lines[line] ?? '').indexOf(b.token) + 1;
    expect(r.stderr).toContain(`rules/ct.yaml:${line + 1}:${col}: error: ${b.field}: ${b.message}`);
    expect(r.stderr).toContain('nothing was applied');

    expect(await lab.listTable()).toBe(before); // with counters: byte for byte the same table
    expect(lab.pending()).toBeUndefined();
    expect(readFileSync(lab.ruleset('committed.nft'), 'utf8')).toBe(committedFile);
  });

  it('policy restore after the table was deleted brings the committed ruleset back', async () => {
    const lab = await newLab(['pacs', 'stranger', 'ct']);
    await lab.listen('ct', 'tcp', [104]);
    await lab.commit();
    const committed = await lab.listTable({ stateless: true });

    await lab.nft('delete', 'table', 'inet', 'wardgate');
    expect(await lab.listTable()).toBeUndefined();
    expect(await lab.connect('stranger', 'tcp', v4('ct'), 104)).toEqual({ ok: true, why: 'echo' }); // unprotected

    const r = await lab.wardgate('policy', 'restore');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('restored the committed ruleset');
    expect(await lab.listTable({ stateless: true })).toBe(committed);
    expect(await lab.connect('pacs', 'tcp', v4('ct'), 104)).toEqual({ ok: true, why: 'echo' });
    expect(await lab.connect('stranger', 'tcp', v4('ct'), 104)).toEqual({ ok: false, why: 'timeout' });
  });

  it('a damaged committed.nft makes restore load the fail-safe ruleset: failMode open passes, failMode closed does not', async () => {
    const lab = await newLab(['pacs', 'stranger', 'ct', 'monitor']);
    await lab.listen('ct', 'tcp', [104, 23]);
    await lab.listen('monitor', 'tcp', [2576, 23]);
    await lab.commit();
    // Under the committed ruleset both devices enforce their allow-lists.
    expect(await lab.connect('pacs', 'tcp', v4('ct'), 104)).toEqual({ ok: true, why: 'echo' });
    expect(await lab.connect('stranger', 'tcp', v4('monitor'), 23)).toEqual({ ok: false, why: 'timeout' });

    // Flip one byte of the committed ruleset.
    const file = lab.ruleset('committed.nft');
    const bytes = readFileSync(file);
    const at = Math.floor(bytes.length / 2);
    bytes[at] = (bytes[at] ?? 0) ^ 0x01;
    writeFileSync(file, bytes);

    const r = await lab.wardgate('policy', 'restore');
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('DEGRADED');
    expect(r.stderr).toContain('does not match its recorded sha256');
    expect(await lab.listTable()).toContain('FAIL-SAFE');
    const status = await lab.wardgate('policy', 'status', '--json');
    expect(JSON.parse(status.stdout)).toMatchObject({ kernel: 'failsafe' });

    const OPEN = ['dev_monitor_gw_01_in', 'monitor-gw-01 fail-safe: failMode open'] as const;
    const CLOSED = ['dev_ct_01_in', 'ct-01 fail-safe: failMode closed'] as const;
    const before = await lab.nftJson();
    // monitor-gw-01 (life-critical, failMode open): what its allow-list does not cover now passes.
    expect(await lab.connect('stranger', 'tcp', v4('monitor'), 23)).toEqual({ ok: true, why: 'echo' });
    expect(await lab.connect('pacs', 'tcp', v4('monitor'), 2576)).toEqual({ ok: true, why: 'echo' });
    // ct-01 (failMode closed): nothing new passes, not even what its allow-list allowed.
    const closed = await Promise.all([lab.connect('pacs', 'tcp', v4('ct'), 104), lab.connect('stranger', 'tcp', v4('ct'), 23)]);
    expect(closed).toEqual(Array(2).fill({ ok: false, why: 'timeout' }));
    const after = await lab.nftJson();
    expect(rulePackets(after, ...OPEN) - rulePackets(before, ...OPEN)).toBeGreaterThanOrEqual(2);
    expect(rulePackets(after, ...CLOSED) - rulePackets(before, ...CLOSED)).toBeGreaterThanOrEqual(2);

    // The agent leaves the fail-safe ruleset in place (loading it again would change nothing
    // and reset its counters), and says DEGRADED once.
    const history = () => readFileSync(join(lab.stateDir, 'ruleset', 'history.ndjson'), 'utf8').trim().split('\n').length;
    const lines = history();
    const agent = lab.startAgent();
    await until('the agent to report the degraded state', () => agent.output().includes('DEGRADED'));
    await sleep(2500);
    expect(history()).toBe(lines);
    expect(agent.output().match(/DEGRADED/g)).toHaveLength(1);
    expect(rulePackets(await lab.nftJson(), ...OPEN)).toBe(rulePackets(after, ...OPEN));

    // Applying and confirming a policy leaves the degraded state.
    await lab.commit();
    expect(JSON.parse((await lab.wardgate('policy', 'status', '--json')).stdout)).toMatchObject({ kernel: 'committed' });
  });
});
