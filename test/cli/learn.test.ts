// `wardgate policy learn` and `policy diff --observed` on a temporary configuration (the
// integration site's groups, ct-01 and pump-01) with a flow log written by hand in its state
// directory: exit codes, the proposal written in place and accepted by `policy check`, and the
// differences before and after.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { main } from '../../agent/cli/main.js';
import type { FlowRecord } from '../../agent/traffic/flows.js';
import { pumpFlow } from '../traffic/fixtures/record.js';
import { CT, gatewayYaml, GROUPS, PUMP } from '../integration/site.js';

let dir = '';
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'wg-learn-cli-'));
  writeFileSync(join(dir, 'gateway.yaml'), gatewayYaml({ mode: 'router', stateDir: 'state' }));
  mkdirSync(join(dir, 'rules'));
  for (const [name, text] of Object.entries({ '00-groups.yaml': GROUPS, 'ct.yaml': CT, 'pump.yaml': PUMP })) writeFileSync(join(dir, 'rules', name), text);
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

async function wardgate(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await main([...args, '--gateway', join(dir, 'gateway.yaml'), '--backend', 'dry-run'], { out: (l) => out.push(l), err: (l) => err.push(l) });
  return { code, out: out.join('\n'), err: err.join('\n') };
}

const HOUR = 3_600_000;
const NOW = Date.now();
const at = (ms: number) => new Date(NOW + ms).toISOString();

/** A flow that lasted 2 s and ended at `o.time` (an hour ago by default), as a log line. */
const rec = (o: Partial<FlowRecord>): string => JSON.stringify({ kind: 'flow', ...pumpFlow(o.time ?? at(-HOUR), o) });

/** pump-01 in monitor mode for a day, then one connection of a stranger that enforce denied. */
function writeFlows(): void {
  const flows = join(dir, 'state', 'flows');
  mkdirSync(flows, { recursive: true });
  writeFileSync(
    join(flows, 'flows.ndjson.1'),
    [
      rec({ time: at(-24 * HOUR), verdict: 'allowed', entry: 'pump-01/allow[0]' }),
      rec({ peer: 'fd00:10::1:10', dport: 2575, app: 'HL7', time: at(-20 * HOUR) }),
      rec({ peer: '10.10.5.3', proto: 'icmp', sport: null, dport: null, app: null, time: at(-3 * HOUR) }),
      '{"kind":"flow","time":"2025-', // torn
    ].join('\n') + '\n',
  );
  writeFileSync(
    join(flows, 'flows.ndjson'),
    [
      rec({ peer: '10.10.9.66', dport: 8080, app: null }),
      rec({ device: 'ct-01', dport: 104, app: 'DICOM', verdict: 'allowed', entry: 'ct-01/allow[0]' }),
      rec({ peer: '10.10.9.66', dport: 22, app: 'SSH', verdict: 'denied', time: at(-10 * 60_000) }),
    ].join('\n') + '\n',
  );
}

describe('wardgate policy learn', () => {
  it('prints the proposal: the device file with the allow list from the observed flows', async () => {
    writeFlows();
    const r = await wardgate('policy', 'learn', '--device', 'pump-01');
    expect(r.code, r.err).toBe(0);
    expect(r.err).toContain('warning: skipped 1 line of the flow log that is not a well-formed record');
    expect(r.err).toMatch(/^not proposed \(denied by the ruleset\): inbound tcp 10\.10\.9\.66 port 22: 1 flow \(denied 1\)/m);
    expect(r.out).toMatch(/^ {4}# Proposed by wardgate policy learn at \S+ from 4 flows$/m);
    expect(r.out).toContain('      - peer: biomed\n        direction: inbound\n        proto: icmp\n');
    expect(r.out).toContain(`      # 2 flows (allowed 1, monitored 1), first seen ${at(-24 * HOUR - 2000)}, last seen ${at(-20 * HOUR)}; by port: 443: 1, 2575: 1\n      - peer: pacs\n        direction: inbound\n        proto: tcp\n        ports: [443, 2575]\n`);
    expect(r.out).toContain('      - peer: 10.10.9.66\n        direction: inbound\n        proto: tcp\n        ports: [8080]');
    expect(r.out).not.toContain(' 22 ]');
    // Nothing was written.
    expect(readFileSync(join(dir, 'rules', 'pump.yaml'), 'utf8')).toBe(PUMP);
  });

  it('--out writes it in place of the device file; policy check accepts it; diff --observed then shows only the denied flow', async () => {
    writeFlows();
    const pumpFile = join(dir, 'rules', 'pump.yaml');
    const r = await wardgate('policy', 'learn', '--device', 'pump-01', '--out', pumpFile);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toBe(`wrote a proposed allow-list for pump-01: 3 allow entries from 4 flows, to ${pumpFile} in place of rules/pump.yaml`);
    expect(readdirSync(join(dir, 'rules')).sort()).toEqual(['00-groups.yaml', 'ct.yaml', 'pump.yaml']);
    expect(readFileSync(pumpFile, 'utf8')).toContain('# Review every entry before setting mode: enforce.');

    const check = await wardgate('policy', 'check');
    expect(check.err).toBe('');
    expect(check).toMatchObject({ code: 0, out: expect.stringMatching(/^ok: 2 device\(s\), 7 allow entries/) as string });

    const diff = await wardgate('policy', 'diff', '--observed', '--device', 'pump-01');
    expect(diff.code).toBe(1);
    expect(diff.out.split('\n').slice(1)).toEqual([
      'pump-01 (monitor): observed traffic no allow entry covers, so enforce mode would deny it:',
      `+ inbound tcp 10.10.9.66 port 22: 1 flow (denied 1), ${at(-10 * 60_000 - 2000)} to ${at(-10 * 60_000)}`,
    ]);
  });

  it('--since narrows the flows learned from (a duration or an ISO time)', async () => {
    writeFlows();
    const r = await wardgate('policy', 'learn', '--device', 'pump-01', '--since', '4h');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/from 2 flows$/m);
    expect(r.out).not.toContain('peer: pacs');
    const iso = await wardgate('policy', 'learn', '--device', 'pump-01', '--since', at(-21 * HOUR));
    expect(iso.out).toMatch(/from 3 flows$/m);
    expect(iso.out).toContain(`since ${at(-21 * HOUR)}`);
  });

  it('exit 1 with a clear message when the device has no observed flows', async () => {
    const none = await wardgate('policy', 'learn', '--device', 'pump-01');
    expect(none.code).toBe(1);
    expect(none.err).toBe(`no observed flows for pump-01: there is no flow log in ${join(dir, 'state', 'flows')}; nothing to propose (flows are recorded by "wardgate run", docs/traffic.md)`);
    writeFlows();
    const late = await wardgate('policy', 'learn', '--device', 'ct-01', '--since', '30m');
    expect(late.code).toBe(1);
    expect(late.err).toMatch(/^no observed flows for ct-01 since \S+: 2 files in .* hold none; nothing to propose/m);
    // Only a denied flow: nothing can be proposed.
    const denied = await wardgate('policy', 'learn', '--device', 'pump-01', '--since', '30m');
    expect(denied.code).toBe(1);
    expect(denied.err).toMatch(/^no proposal for pump-01: none of its 1 observed flow since \S+ can be allowed \(above\)$/m);
  });

  it('usage errors exit 2, configuration errors 3, and nothing is written', async () => {
    writeFlows();
    expect(await wardgate('policy', 'learn')).toMatchObject({ code: 2, err: 'wardgate: policy learn needs --device ID' });
    expect(await wardgate('policy', 'learn', '--device', 'mri-01')).toMatchObject({ code: 2, err: 'wardgate: unknown device "mri-01" (devices: ct-01, pump-01)' });
    const since = 'wardgate: --since takes an age back from now (90m, 24h, 7d, 2w; units s, m, h, d, w) or an ISO 8601 time (2030-01-31, 2030-01-31T08:00Z), not "yesterday"';
    expect(await wardgate('policy', 'learn', '--device', 'pump-01', '--since', 'yesterday')).toMatchObject({ code: 2, err: since });
    expect(await wardgate('policy', 'diff', '--observed', '--since', 'yesterday')).toMatchObject({ code: 2, err: since, out: '' });
    expect((await wardgate('policy', 'diff', '--observed', '--device', 'mri-01')).code).toBe(2);
    writeFileSync(join(dir, 'rules', 'ct.yaml'), CT.replace('peer: pacs, direction: outbound', 'peer: pacs, direction: sideways'));
    const bad = await wardgate('policy', 'learn', '--device', 'pump-01', '--out', join(dir, 'rules', 'pump.yaml'));
    expect(bad.code).toBe(3);
    expect(bad.err).toMatch(/^rules\/ct\.yaml:14:\d+: error: devices\[0\]\.allow\[3\]\.direction:/m);
    expect(readFileSync(join(dir, 'rules', 'pump.yaml'), 'utf8')).toBe(PUMP);
  });
});

describe('wardgate policy diff --observed', () => {
  it('lists, per device, traffic no entry covers and entries nothing used; exit 1', async () => {
    writeFlows();
    const r = await wardgate('policy', 'diff', '--observed');
    expect(r.code).toBe(1);
    expect(r.err).toBe('warning: skipped 1 line of the flow log that is not a well-formed record');
    expect(r.out.split('\n')).toEqual([
      `observed: 6 flows in ${join(dir, 'state', 'flows')} (2 files)`,
      'ct-01 (enforce): allow entries no observed flow used:',
      '- ct-01/allow[1] rules/ct.yaml:12:9 inbound udp pacs ports 4242',
      '- ct-01/allow[2] rules/ct.yaml:13:9 inbound icmp biomed',
      '- ct-01/allow[3] rules/ct.yaml:14:9 outbound tcp pacs ports 11112',
      'pump-01 (monitor): observed traffic no allow entry covers, so enforce mode would deny it:',
      `+ inbound icmp 10.10.5.3: 1 flow (monitored 1), ${at(-3 * HOUR - 2000)} to ${at(-3 * HOUR)}`,
      `+ inbound tcp 10.10.9.66 port 22: 1 flow (denied 1), ${at(-10 * 60_000 - 2000)} to ${at(-10 * 60_000)}`,
      `+ inbound tcp 10.10.9.66 port 8080: 1 flow (monitored 1), ${at(-HOUR - 2000)} to ${at(-HOUR)}`,
      `+ inbound tcp fd00:10::1:10 port 2575: 1 flow (monitored 1), ${at(-20 * HOUR - 2000)} to ${at(-20 * HOUR)}`,
    ]);
  });

  it('--json for machines', async () => {
    writeFlows();
    const r = await wardgate('policy', 'diff', '--observed', '--json', '--since', '2h');
    expect(r.code).toBe(1);
    const j = JSON.parse(r.out) as { since: string; records: number; skippedLines: number; files: string[]; unlisted: string[]; devices: { device: string; mode: string; flows: number; uncovered: { peer: string; port: number; verdicts: object }[]; unused: { id: string; file: string; line: number; ports: string[] }[] }[] };
    expect(j).toMatchObject({ records: 3, skippedLines: 1, unlisted: [] });
    expect(Math.abs(Date.parse(j.since) - (NOW - 2 * HOUR))).toBeLessThan(60_000);
    expect(j.files.map((f) => f.slice(dir.length + 1))).toEqual(['state/flows/flows.ndjson.1', 'state/flows/flows.ndjson']);
    expect(j.devices.map((d) => [d.device, d.mode, d.flows])).toEqual([['ct-01', 'enforce', 1], ['pump-01', 'monitor', 2]]);
    expect(j.devices[0]!.unused.map((e) => [e.id, e.file, e.line, e.ports])).toEqual([
      ['ct-01/allow[1]', 'rules/ct.yaml', 12, ['4242']],
      ['ct-01/allow[2]', 'rules/ct.yaml', 13, []],
      ['ct-01/allow[3]', 'rules/ct.yaml', 14, ['11112']],
    ]);
    expect(j.devices[1]!.uncovered.map((f) => [f.peer, f.port, f.verdicts])).toEqual([
      ['10.10.9.66', 22, { denied: 1 }],
      ['10.10.9.66', 8080, { monitored: 1 }],
    ]);
    expect(j.devices[1]!.unused.map((e) => e.id)).toEqual(['pump-01/allow[0]']);
  });

  it('exit 0 when the allow-list covers exactly what was observed', async () => {
    writeFlows();
    const flowFile = join(dir, 'state', 'flows', 'flows.ndjson');
    writeFileSync(flowFile, readFileSync(flowFile, 'utf8').split('\n').filter((l) => !l.includes('"verdict":"denied"')).join('\n'));
    expect((await wardgate('policy', 'learn', '--device', 'pump-01', '--out', join(dir, 'rules', 'pump.yaml'))).code).toBe(0);
    const pump = await wardgate('policy', 'diff', '--observed', '--device', 'pump-01');
    expect(pump).toMatchObject({ code: 0, out: expect.stringMatching(/\npump-01 \(monitor\): no difference \(4 flows\)$/) as string });
    // ct-01 still has entries nothing used.
    expect((await wardgate('policy', 'diff', '--observed')).code).toBe(1);
  });
});
