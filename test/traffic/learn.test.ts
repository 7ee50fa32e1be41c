// Learning from hand-made flow records: the flow log read back (test/traffic/read.test.ts tests
// the reader) and aggregated (rotated files, what the reader skipped, device and time filters), ports and peers folded, the proposal rendered as
// the device's policy file and loaded back by the real configuration code, and the coverage that
// `policy diff --observed` reports. A property: whatever was observed, the proposal covers all of
// it (denied flows aside) and every proposed entry is used.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig, loadPolicyText, type LoadedConfig } from '../../agent/config/load.js';
import { buildModel, type Model } from '../../agent/policy/model.js';
import { coverage } from '../../agent/traffic/coverage.js';
import type { FlowRecord } from '../../agent/traffic/flows.js';
import { pumpFlow } from './fixtures/record.js';
import { foldPorts, groupFor, groupsOf, MANY_HIGH_PORTS, propose, renderProposal } from '../../agent/traffic/learn.js';
import { readObserved, type DeviceObservation, type ObservedFlow } from '../../agent/traffic/observed.js';
import { CT, gatewayYaml, GROUPS, PUMP } from '../integration/site.js';

const dirs: string[] = [];
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), 'wg-learn-'));
  dirs.push(d);
  return d;
};
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const T0 = Date.parse('2025-03-01T10:00:00.000Z');
const iso = (ms: number) => new Date(T0 + ms).toISOString();

const rec = (o: Partial<FlowRecord> = {}): FlowRecord => ({ ...pumpFlow(iso(2000)), start: iso(0), ...o });
const line = (r: FlowRecord) => JSON.stringify({ kind: 'flow', ...r });

function flowDir(files: Record<string, (FlowRecord | string)[]>): string {
  const dir = join(tmp(), 'flows');
  mkdirSync(dir);
  for (const [name, lines] of Object.entries(files)) {
    writeFileSync(join(dir, name), lines.map((l) => (typeof l === 'string' ? l : line(l))).join('\n') + '\n');
  }
  return dir;
}

/** The integration site's configuration (groups pacs and biomed, ct-01, pump-01), loaded. */
function siteConfig(policies: Record<string, string> = { '00-groups.yaml': GROUPS, 'ct.yaml': CT, 'pump.yaml': PUMP }): { dir: string; loaded: LoadedConfig; model: Model } {
  const dir = tmp();
  writeFileSync(join(dir, 'gateway.yaml'), gatewayYaml({ mode: 'router', stateDir: join(dir, 'state') }));
  mkdirSync(join(dir, 'rules'));
  for (const [name, text] of Object.entries(policies)) writeFileSync(join(dir, 'rules', name), text);
  const loaded = loadConfig(join(dir, 'gateway.yaml'));
  return { dir, loaded, model: buildModel(loaded) };
}

/** The proposal in place of the device's file, loaded and resolved again as `policy check` would. */
function applyProposal(loaded: LoadedConfig, text: string, path: string): Model {
  const p = loadPolicyText('proposal.yaml', path, text);
  expect(p.diagnostics).toEqual([]);
  const policy = p.policy!;
  return buildModel({ ...loaded, policies: loaded.policies.map((x) => (x.path === path ? policy : x)) });
}

function observed(traffic: Partial<ObservedFlow>[]): DeviceObservation {
  const flows = traffic.map(
    (t): ObservedFlow => ({
      direction: 'inbound',
      peer: '10.10.1.10',
      family: 'ipv4',
      proto: 'tcp',
      port: 443,
      flows: 1,
      packets: 1,
      bytes: 1,
      firstSeen: iso(0),
      lastSeen: iso(1000),
      verdicts: { monitored: t.flows ?? 1 },
      ...t,
    }),
  );
  return { device: 'pump-01', flows: flows.reduce((n, f) => n + f.flows, 0), firstSeen: iso(0), lastSeen: iso(1000), traffic: flows };
}

describe('readObserved', () => {
  it('aggregates the current and rotated files per device and key, with counts, verdicts and first and last seen', async () => {
    const dir = flowDir({
      'flows.ndjson': [rec({ time: iso(9000), start: iso(8000), sport: 50001 }), rec({ device: 'ct-01', dport: 104, verdict: 'allowed', entry: 'ct-01/allow[0]' })],
      'flows.ndjson.1': [rec({ time: iso(5000), start: null, sport: 50002, verdict: 'allowed', entry: 'pump-01/allow[0]', bytes: 7 })],
      // IPv6 written in a longer form is the same peer.
      'flows.ndjson.2': [rec({ peer: 'fd00:10:0:0::1:10', dport: 2575 }), rec({ peer: 'fd00:10::1:10', dport: 2575, time: iso(3000) })],
      'other.log': ['not ours'],
    });
    const o = await readObserved(dir);
    expect(o).toMatchObject({ records: 5, read: { files: ['flows.ndjson.2', 'flows.ndjson.1', 'flows.ndjson'].map((f) => join(dir, f)), records: 5, bad: 0 } });
    expect([...o.devices.keys()]).toEqual(['ct-01', 'pump-01']);
    const pump = o.devices.get('pump-01')!;
    expect(pump).toMatchObject({ device: 'pump-01', flows: 4, firstSeen: iso(0), lastSeen: iso(9000) });
    expect(pump.traffic).toEqual([
      { direction: 'inbound', peer: '10.10.1.10', family: 'ipv4', proto: 'tcp', port: 443, flows: 2, packets: 20, bytes: 1007, firstSeen: iso(5000), lastSeen: iso(9000), verdicts: { monitored: 1, allowed: 1 } },
      { direction: 'inbound', peer: 'fd00:10::1:10', family: 'ipv6', proto: 'tcp', port: 2575, flows: 2, packets: 20, bytes: 2000, firstSeen: iso(0), lastSeen: iso(3000), verdicts: { monitored: 2 } },
    ]);
  });

  it('counts what the reader skipped apart from the records it aggregates, and goes on', async () => {
    const good = rec();
    const dir = flowDir({
      'flows.ndjson': [
        '{"kind":"flow","time":"2025-03-01T10:00:0', // torn by a power cut
        'plain text',
        line({ ...good, verdict: 'maybe' as FlowRecord['verdict'] }),
        JSON.stringify({ ...good, kind: 'event' }),
        line({ ...good, peer: 'pacs' }),
        '',
        good,
      ],
    });
    const o = await readObserved(dir);
    expect(o).toMatchObject({ records: 1, read: { lines: 6, records: 1, bad: 4, other: 1 } });
    expect(o.devices.get('pump-01')?.flows).toBe(1);
  });

  it('filters by device and by the end time of the flow', async () => {
    const dir = flowDir({
      'flows.ndjson': [rec({ time: iso(1000), start: iso(-5000) }), rec({ time: iso(60_000), dport: 8080 }), rec({ device: 'ct-01', time: iso(60_000) })],
    });
    const since = new Date(T0 + 30_000);
    const o = await readObserved(dir, { device: 'pump-01', since });
    expect(o.records).toBe(1);
    expect([...o.devices.keys()]).toEqual(['pump-01']);
    expect(o.devices.get('pump-01')!.traffic.map((t) => t.port)).toEqual([8080]);
    // A connection that started before --since and ended after it counts, from its start.
    const long = await readObserved(flowDir({ 'flows.ndjson': [rec({ time: iso(60_000), start: iso(0) })] }), { since });
    expect(long.devices.get('pump-01')).toMatchObject({ firstSeen: iso(0), lastSeen: iso(60_000) });
  });

  it('a missing flow directory is no traffic, not an error', async () => {
    const o = await readObserved(join(tmp(), 'nowhere'));
    expect(o).toEqual({ read: { files: [], lines: 0, records: 0, bad: 0, other: 0 }, records: 0, devices: new Map() });
  });

  it('streams a large file', async () => {
    const lines: string[] = [];
    for (let i = 0; i < 40_000; i++) lines.push(line(rec({ sport: 1024 + (i % 60000), dport: 443 + (i % 3), time: iso(i) })));
    const dir = flowDir({ 'flows.ndjson': lines });
    const o = await readObserved(dir);
    expect(o.records).toBe(40_000);
    expect(o.devices.get('pump-01')!.traffic.map((t) => [t.port, t.flows])).toEqual([
      [443, 13334],
      [444, 13333],
      [445, 13333],
    ]);
  });
});

describe('folding', () => {
  it('joins consecutive ports into ranges, which allows nothing more', () => {
    expect(foldPorts([104, 443, 105, 106, 2575, 443, 22])).toEqual({ specs: [22, '104-106', 443, 2575] });
  });

  it(`keeps up to ${MANY_HIGH_PORTS} distinct high ports as they are`, () => {
    const ports = [1024, 2000, 3000, 4000, 5000, 6000, 7000, 8000];
    expect(foldPorts([21, ...ports])).toEqual({ specs: [21, ...ports] });
  });

  it(`folds more than ${MANY_HIGH_PORTS} distinct high ports into one range, and keeps the low ones`, () => {
    const high = [40000, 40100, 40007, 41000, 45000, 50000, 50001, 60000, 65535];
    expect(foldPorts([21, 80, 1023, ...high])).toEqual({ specs: [21, 80, 1023, '40000-65535'], widened: { lo: 40000, hi: 65535, ports: 9 } });
    expect(foldPorts([21, ...high]).specs).toEqual([21, '40000-65535']);
  });

  it('peers: the smallest group that holds the address, else none', () => {
    const groups = groupsOf(siteConfig({ 'g.yaml': `apiVersion: wardgate/v1
kind: Policy
groups:
  hospital: { members: [10.10.0.0/16, "fd00:10::/48"] }
  biomed: { members: [10.10.5.0/28, "fd00:10::5:0/112"] }
  biomed-too: { members: [10.10.5.0/28] }
  pacs: { members: [10.10.1.10, "fd00:10::1:10"] }
` }).loaded);
    expect(groupFor(groups, '10.10.1.10')).toBe('pacs');
    expect(groupFor(groups, 'fd00:10::1:10')).toBe('pacs');
    expect(groupFor(groups, '10.10.1.11')).toBe('hospital');
    // Equal size in IPv4: by name. In IPv6 only biomed has the address.
    expect(groupFor(groups, '10.10.5.3')).toBe('biomed');
    expect(groupFor(groups, 'fd00:10::5:3')).toBe('biomed');
    expect(groupFor(groups, '10.11.0.1')).toBeUndefined();
    expect(groupFor(groups, 'fd00:11::1')).toBeUndefined();
  });
});

describe('propose and render', () => {
  it('folds peers into groups, merges icmp and icmpv6, leaves out denied and inexpressible traffic', () => {
    const { loaded } = siteConfig();
    const p = propose({ id: 'pump-01' }, observed([
      { peer: '10.10.1.10', port: 443, flows: 3, verdicts: { allowed: 2, monitored: 1 } },
      { peer: 'fd00:10::1:10', family: 'ipv6', port: 2575, firstSeen: iso(-1000) },
      { peer: '10.10.1.10', port: 8443, flows: 2, verdicts: { monitored: 1, denied: 1 } },
      { peer: '10.10.5.3', proto: 'icmp', port: null },
      { peer: 'fd00:10::5:3', family: 'ipv6', proto: 'icmpv6', port: null, lastSeen: iso(5000) },
      { peer: '10.10.9.66', port: 8080 },
      { peer: '10.10.9.66', port: 9999, verdicts: { denied: 1 } },
      { peer: '10.10.9.66', proto: 'sctp', port: 3868 },
      { peer: '10.10.9.66', proto: 'udp', port: null },
      { peer: '10.10.5.3', direction: 'outbound', proto: 'udp', port: 123 },
      { peer: 'fd00:10::9:66', family: 'ipv6', direction: 'outbound', port: 11112 },
    ]), groupsOf(loaded));
    expect(p.entries.map((e) => [e.direction, e.peer, e.proto, e.ports, e.flows])).toEqual([
      ['inbound', 'biomed', 'icmp', [], 2],
      ['inbound', 'pacs', 'tcp', [443, 2575, 8443], 5],
      ['inbound', '10.10.9.66', 'tcp', [8080], 1],
      ['outbound', 'biomed', 'udp', [123], 1],
      ['outbound', 'fd00:10::9:66', 'tcp', [11112], 1],
    ]);
    expect(p.entries[1]).toMatchObject({ verdicts: { allowed: 2, monitored: 3 }, byPort: [[443, 3], [2575, 1], [8443, 1]], firstSeen: iso(-1000), lastSeen: iso(1000) });
    expect(p.entries[0]).toMatchObject({ firstSeen: iso(0), lastSeen: iso(5000) });
    expect(p.flows).toBe(10);
    expect(p.left.map((l) => [l.flow.peer, l.flow.port, l.flow.flows, l.why])).toEqual([
      ['10.10.1.10', 8443, 1, 'denied by the ruleset'],
      ['10.10.9.66', 9999, 1, 'denied by the ruleset'],
      ['10.10.9.66', 3868, 1, 'the policy format has no protocol "sctp"'],
      ['10.10.9.66', null, 1, 'udp without a port'],
    ]);
  });

  it('renders the device file with the allow list replaced, and it loads as a policy that covers the traffic', () => {
    const { loaded } = siteConfig();
    const seen = observed([
      { peer: '10.10.1.10', port: 443, flows: 3 },
      { peer: 'fd00:10::9:66', family: 'ipv6', port: 8080 },
      { peer: '10.10.5.3', proto: 'icmp', port: null },
      ...[40000, 40001, 40010, 40020, 40030, 40040, 40050, 40060, 40070].map((port) => ({ peer: '10.10.1.10', direction: 'outbound' as const, port })),
    ]);
    const p = propose({ id: 'pump-01' }, seen, groupsOf(loaded));
    const { path, text } = renderProposal(loaded, p, { generatedAt: new Date(T0), since: new Date(T0 - 3_600_000), from: '/var/lib/wardgate/flows' });
    expect(path).toBe(loaded.policies.find((x) => x.path.endsWith('pump.yaml'))!.path);
    expect(text).toContain(`# Proposed by wardgate policy learn at ${iso(0)} from 14 flows\n`);
    expect(text).toContain(`# in /var/lib/wardgate/flows since ${iso(-3_600_000)}, seen ${iso(0)} to ${iso(1000)}.\n`);
    expect(text).toContain(`      # 3 flows (monitored 3), first seen ${iso(0)}, last seen ${iso(1000)}\n      - peer: pacs\n`);
    expect(text).toContain('      - peer: "fd00:10::9:66"\n');
    expect(text).toContain('9 ports from 40000 to 40070 folded into one range');
    // The device record is kept as it was: mode, addresses, class.
    expect(text).toMatch(/^ {4}mode: monitor$/m);
    expect(text).toContain('    ipv6: "fd00:20::21"\n');

    const model = applyProposal(loaded, text, path);
    expect(model.warnings).toEqual([]);
    const pump = model.devices.find((d) => d.id === 'pump-01')!;
    expect(pump.entries.map((e) => [e.direction, e.peer, e.proto, e.ports])).toEqual([
      ['inbound', 'biomed', 'icmp', []],
      ['inbound', 'pacs', 'tcp', [[443, 443]]],
      ['inbound', 'fd00:10::9:66', 'tcp', [[8080, 8080]]],
      ['outbound', 'pacs', 'tcp', [[40000, 40070]]],
    ]);
    expect(coverage(pump, seen)).toMatchObject({ uncovered: [], unused: [] });
  });

  it('keeps the groups, comments and other devices of a file that holds several', () => {
    const file = `# yaml-language-server: $schema=./schema/policy.schema.json
# Both devices of the ward, and its own group.
apiVersion: wardgate/v1
kind: Policy
groups:
  ward-pcs: { members: [10.10.7.0/24] }
devices:
  - id: ct-01
    class: ct-modality
    criticality: high
    mode: enforce
    ipv4: 10.20.0.11
    allow:
      - { peer: ward-pcs, direction: inbound, proto: tcp, ports: [104] } # viewers
  - id: pump-01
    class: infusion-pump-server
    criticality: medium
    ipv4: 10.20.0.21
    probes:
      - { type: tcp, port: 443 }
`;
    const { loaded } = siteConfig({ 'ward.yaml': file });
    const p = propose({ id: 'pump-01' }, observed([{ peer: '10.10.7.9', port: 443 }]), groupsOf(loaded));
    const { path, text } = renderProposal(loaded, p, { generatedAt: new Date(T0), from: 'the flow log' });
    // pump-01 had no allow list: it is added after its last field, and every byte of the file stays.
    expect(text.startsWith(file.slice(0, -1))).toBe(true);
    expect(text.slice(file.length - 1)).toBe(`
    # Proposed by wardgate policy learn at ${iso(0)} from 1 flow
    # in the flow log, seen ${iso(0)} to ${iso(1000)}.
    # Review every entry before setting mode: enforce.
    allow:
      # 1 flow (monitored 1), first seen ${iso(0)}, last seen ${iso(1000)}
      - peer: ward-pcs
        direction: inbound
        proto: tcp
        ports: [443]
`);
    const model = applyProposal(loaded, text, path);
    expect(model.devices.map((d) => [d.id, d.mode, d.entries.map((e) => `${e.peer} ${e.proto} ${e.ports.join()}`)])).toEqual([
      ['ct-01', 'enforce', ['ward-pcs tcp 104,104']],
      ['pump-01', 'monitor', ['ward-pcs tcp 443,443']],
    ]);
    expect(model.devices[1]!.probes).toEqual([expect.objectContaining({ type: 'tcp', port: 443 })]);
  });
});

describe('the rendered file changes only the allow list', () => {
  const DEVICE = (allow: string) => `apiVersion: wardgate/v1
kind: Policy
devices:
  - id: pump-01
    class: infusion-pump-server   # the server, not the pumps
    criticality: medium
    ipv4: 10.20.0.21
${allow}    probes:
      - { type: tcp, port: 443 }
`;
  const render = (file: string) => {
    const { loaded } = siteConfig({ '00-groups.yaml': GROUPS, 'pump.yaml': file });
    const p = propose({ id: 'pump-01' }, observed([{ peer: '10.10.1.10', port: 443 }, { peer: '10.10.9.66', port: 8080 }]), groupsOf(loaded));
    const r = renderProposal(loaded, p, { generatedAt: new Date(T0), from: 'x' });
    const model = applyProposal(loaded, r.text, r.path);
    expect(model.devices[0]!.entries.map((e) => `${e.peer} ${e.ports.join()}`)).toEqual(['pacs 443,443', '10.10.9.66 8080,8080']);
    return r.text;
  };
  const BLOCK = `    # Proposed by wardgate policy learn at ${iso(0)} from 2 flows
    # in x, seen ${iso(0)} to ${iso(1000)}.
    # Review every entry before setting mode: enforce.
    allow:
      # 1 flow (monitored 1), first seen ${iso(0)}, last seen ${iso(1000)}
      - peer: pacs
        direction: inbound
        proto: tcp
        ports: [443]
      # 1 flow (monitored 1), first seen ${iso(0)}, last seen ${iso(1000)}
      - peer: 10.10.9.66
        direction: inbound
        proto: tcp
        ports: [8080]
`;

  it('a block list in the middle of the device, with a comment after its last entry; an entry keeps the comment field of its peer and protocol', () => {
    const file = DEVICE(`    allow:
      - peer: pacs
        direction: inbound
        proto: tcp
        ports: [22, 443]
        comment: drug library
      - { peer: pacs, direction: inbound, proto: udp, ports: [443], comment: not this one }
      # - { peer: biomed, direction: inbound, proto: icmp }
`);
    const kept = BLOCK.replace('        ports: [443]\n', '        ports: [443]\n        comment: drug library\n');
    expect(kept).not.toBe(BLOCK);
    expect(render(file)).toBe(DEVICE(`${kept}      # - { peer: biomed, direction: inbound, proto: icmp }
`));
  });

  it('a flow list, and the comment on its line', () => {
    expect(render(DEVICE('    allow: [] # nothing yet\n'))).toBe(DEVICE(BLOCK));
    expect(render(DEVICE('    allow: []\n'))).toBe(DEVICE(BLOCK));
  });

  it('a device written as a flow mapping goes through the YAML library whole', () => {
    const file = `apiVersion: wardgate/v1
kind: Policy
devices:
  - { id: pump-01, class: infusion-pump-server, criticality: medium, ipv4: 10.20.0.21, allow: [] }
`;
    const text = render(file);
    expect(text).toContain('ports: [ 443 ]');
  });

  it('refuses a file that changed since it was loaded', () => {
    const { loaded } = siteConfig();
    const p = propose({ id: 'pump-01' }, observed([{ port: 443 }]), groupsOf(loaded));
    expect(() => renderProposal(loaded, p, { generatedAt: new Date(T0), from: 'x', text: PUMP.replace('10.20.0.21', '10.20.0.22') })).toThrow(
      'rules/pump.yaml changed while learning; run learn again',
    );
  });
});

describe('coverage (policy diff --observed)', () => {
  it('lists what no entry covers and the entries nothing used, by the compiler\'s matching', () => {
    const { model } = siteConfig();
    const ct = model.devices.find((d) => d.id === 'ct-01')!;
    const seen = observed([
      { peer: '10.10.1.10', port: 104 }, // allow[0]
      { peer: 'fd00:10::1:10', family: 'ipv6', port: 104 }, // allow[0], the group's IPv6 member
      { peer: '10.10.1.10', proto: 'udp', port: 104 }, // wrong protocol
      { peer: '10.10.5.3', proto: 'icmp', port: null }, // allow[2], taken for an echo request
      { peer: '10.10.5.99', port: 104 }, // not in the group
      { peer: '10.10.1.10', direction: 'outbound', port: 104 }, // wrong direction
      { peer: '10.10.9.66', port: 104, verdicts: { denied: 4 }, flows: 4 },
    ]);
    const c = coverage(ct, seen);
    expect(c.uncovered.map((f) => `${f.direction} ${f.proto} ${f.peer} ${f.port}`)).toEqual([
      'inbound udp 10.10.1.10 104',
      'inbound tcp 10.10.5.99 104',
      'outbound tcp 10.10.1.10 104',
      'inbound tcp 10.10.9.66 104',
    ]);
    expect(c.unused.map((e) => e.id)).toEqual(['ct-01/allow[1]', 'ct-01/allow[3]']);
    expect(coverage(ct, undefined)).toMatchObject({ uncovered: [], unused: ct.entries, flows: 0 });
  });

  it('an entry that an earlier one shadows is still used', () => {
    const { model } = siteConfig({
      '00-groups.yaml': GROUPS,
      'pump.yaml': PUMP.replace('ports: [443] }', 'ports: [443] }\n      - { peer: 10.10.1.10, direction: inbound, proto: tcp, ports: [440-450] }'),
    });
    const pump = model.devices.find((d) => d.id === 'pump-01')!;
    expect(coverage(pump, observed([{ port: 443 }])).unused).toEqual([]);
    expect(coverage(pump, observed([{ port: 444 }])).unused.map((e) => e.id)).toEqual(['pump-01/allow[0]']);
  });
});

describe('property: the proposal covers what was observed, and nothing it proposes is unused', () => {
  const HOSTS = ['10.10.1.10', 'fd00:10::1:10', '10.10.5.3', '10.10.5.14', 'fd00:10::5:9', '10.10.9.66', '10.10.200.1', 'fd00:10::9:66'];
  const flowArb = fc.record({
    direction: fc.constantFrom('inbound' as const, 'outbound' as const),
    peer: fc.constantFrom(...HOSTS),
    proto: fc.constantFrom('tcp', 'udp', 'icmp'),
    port: fc.oneof(fc.integer({ min: 1, max: 1023 }), fc.integer({ min: 1024, max: 65535 }), fc.constantFrom(104, 443, 2575, 11112)),
    flows: fc.integer({ min: 1, max: 5 }),
  });

  it('for random traffic', () => {
    const { loaded, model } = siteConfig();
    const groups = groupsOf(loaded);
    fc.assert(
      fc.property(fc.array(flowArb, { minLength: 1, maxLength: 40 }), (gen) => {
        const seen = observed(
          gen.map((g) => {
            const v6 = g.peer.includes(':');
            const proto = g.proto === 'icmp' && v6 ? 'icmpv6' : g.proto;
            return { ...g, family: v6 ? 'ipv6' : 'ipv4', proto, port: g.proto === 'icmp' ? null : g.port, verdicts: { monitored: g.flows } };
          }),
        );
        const p = propose({ id: 'pump-01' }, seen, groups);
        const { path, text } = renderProposal(loaded, p, { generatedAt: new Date(T0), from: 'generated' });
        const pump = applyProposal(loaded, text, path).devices.find((d) => d.id === 'pump-01')!;
        const c = coverage(pump, seen);
        expect(c.uncovered).toEqual([]);
        expect(c.unused).toEqual([]);
        // The device record is otherwise the one of the policy.
        const before = model.devices.find((d) => d.id === 'pump-01')!;
        expect({ ...pump, entries: [], src: null }).toEqual({ ...before, entries: [], src: null });
      }),
      { numRuns: 60 },
    );
  });
});
