// The data-flow map (`wardgate flows map`): the graph from the integration site's policies
// (test/integration/site.ts: ct-01 enforce, pump-01 monitor, groups pacs and biomed) and
// hand-made flow records; its DOT (edges, styles, PHI marks, escaping, determinism); the SVG that
// the real Graphviz `dot` makes of it; and the command with a temporary gateway and state dir.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, expectTypeOf, it } from 'vitest';
import { main } from '../../agent/cli/main.js';
import { loadConfig } from '../../agent/config/load.js';
import { APPS } from '../../agent/config/schema.js';
import { buildModel } from '../../agent/policy/model.js';
import { dotString, GraphvizMissingError, renderDot, renderSvg } from '../../agent/traffic/dot.js';
import { APP_PORTS, type App, type FlowRecord } from '../../agent/traffic/flows.js';
import { FlowMapBuilder, mapInput, type FlowMap, type MapEdge, type MapInput, type MapOptions } from '../../agent/traffic/map.js';
import type { LoggedFlow } from '../../agent/traffic/read.js';
import { CLI, gatewayYaml } from '../integration/site.js';
import { FLOW_POLICIES } from './model.js';

const dirs: string[] = [];
const tmp = (prefix = 'wg-map-') => {
  const d = mkdtempSync(join(tmpdir(), prefix));
  dirs.push(d);
  return d;
};
afterAll(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A gateway directory with the site's policies; `extra` adds or replaces policy files. */
function siteDir(extra: Record<string, string> = {}): { dir: string; gateway: string; flows: string } {
  const dir = tmp();
  writeFileSync(join(dir, 'gateway.yaml'), gatewayYaml({ mode: 'router', stateDir: 'state' }));
  mkdirSync(join(dir, 'rules'));
  for (const [name, text] of Object.entries({ ...FLOW_POLICIES, ...extra })) writeFileSync(join(dir, 'rules', name), text);
  return { dir, gateway: join(dir, 'gateway.yaml'), flows: join(dir, 'state', 'flows') };
}

let input: MapInput;
beforeAll(() => {
  const loaded = loadConfig(siteDir().gateway);
  input = mapInput(loaded, buildModel(loaded));
});

let n = 0;
/** A flow record as the tracker writes it; `over` sets what the case is about. */
function flow(over: Partial<FlowRecord> & Pick<FlowRecord, 'device' | 'peer' | 'direction'>): FlowRecord {
  n++;
  return {
    time: '2030-01-01T10:00:00.000Z',
    start: null,
    proto: 'tcp',
    sport: 40000 + n,
    dport: 104,
    packets: 10,
    bytes: 1000,
    toDevice: { packets: 6, bytes: 600 },
    fromDevice: { packets: 4, bytes: 400 },
    accounted: true,
    durationMs: 5,
    app: null,
    verdict: 'allowed',
    entry: null,
    ...over,
  };
}

function build(records: readonly LoggedFlow[], opts: MapOptions = {}, using: MapInput = input): FlowMap {
  const b = new FlowMapBuilder(using, opts);
  for (const r of records) b.add(r);
  return b.build();
}

const edge = (map: FlowMap, where: Partial<MapEdge>): MapEdge => {
  const found = map.edges.filter((e) => Object.entries(where).every(([k, v]) => e[k as keyof MapEdge] === v));
  expect(found, JSON.stringify(where)).toHaveLength(1);
  return found[0]!;
};

/** The DOT statement of the edge from `peer` to `device` whose label starts with `service`. */
function dotEdge(dot: string, peer: string, device: string, service: string): string {
  const head = `  ${dotString(peer)} -> ${dotString(device)} [label="${service}\\n`;
  const lines = dot.split('\n').filter((l) => l.startsWith(head));
  expect(lines, `${head} in\n${dot}`).toHaveLength(1);
  return lines[0]!;
}

const PACS = '10.10.1.10';
const STRANGER = '10.10.9.9';

/** The site's traffic of a day: allowed DICOM, a denied probe, monitored HL7 from the pump. */
const DAY: FlowRecord[] = [
  flow({ device: 'ct-01', peer: PACS, peerGroup: 'pacs', direction: 'inbound', dport: 104, app: 'DICOM', entry: 'ct-01/allow[0]', bytes: 3000 }),
  flow({ device: 'ct-01', peer: PACS, peerGroup: 'pacs', direction: 'inbound', dport: 104, app: 'DICOM', entry: 'ct-01/allow[0]', bytes: 2000, time: '2030-01-01T11:30:00.000Z' }),
  flow({ device: 'ct-01', peer: STRANGER, direction: 'inbound', dport: 23, verdict: 'denied', packets: 3, bytes: 180 }),
  flow({ device: 'pump-01', peer: PACS, peerGroup: 'pacs', direction: 'outbound', dport: 2575, app: 'HL7', verdict: 'monitored', bytes: 512 }),
  flow({ device: 'pump-01', peer: PACS, peerGroup: 'pacs', direction: 'inbound', dport: 443, app: 'HTTPS', entry: 'pump-01/allow[0]' }),
];

describe('the map graph', () => {
  it('knows the same applications as the flow records', () => {
    expectTypeOf<(typeof APPS)[number]>().toEqualTypeOf<App>();
    expect(APPS).toEqual([...new Set(APP_PORTS.values())]);
  });

  it('draws every allow entry, by port range, and judges observed flows against them', () => {
    const map = build(DAY);
    expect(map.nodes.map((x) => x.id)).toEqual(['device:ct-01', 'device:pump-01', 'group:biomed', 'group:pacs', `address:${STRANGER}`]);
    expect(map.edges).toHaveLength(7);
    // Allowed and observed: on the entry's edge, with the records summed.
    expect(edge(map, { device: 'ct-01', ports: '104' })).toMatchObject({
      peer: 'group:pacs', status: 'allowed-observed', entry: 'ct-01/allow[0]', flows: 2, bytes: 5000, packets: 20, phi: true, apps: ['DICOM'],
      first: '2030-01-01T10:00:00.000Z', last: '2030-01-01T11:30:00.000Z', peers: [PACS], verdicts: { allowed: 2 },
    });
    // Allowed, never observed.
    expect(edge(map, { device: 'ct-01', ports: '4242' })).toMatchObject({ status: 'allowed-unobserved', proto: 'udp', flows: 0, phi: false });
    expect(edge(map, { device: 'ct-01', proto: 'icmp' })).toMatchObject({ status: 'allowed-unobserved', peer: 'group:biomed', ports: '' });
    expect(edge(map, { device: 'ct-01', ports: '11112' })).toMatchObject({ status: 'allowed-unobserved', direction: 'outbound', phi: true, apps: ['DICOM'] });
    // Observed, not allowed: a lone address, and a group member on a port no entry has.
    expect(edge(map, { device: 'ct-01', ports: '23' })).toMatchObject({ status: 'not-allowed', peer: `address:${STRANGER}`, verdicts: { denied: 1 }, phi: false });
    expect(edge(map, { device: 'pump-01', ports: '2575' })).toMatchObject({ status: 'not-allowed', peer: 'group:pacs', direction: 'outbound', verdicts: { monitored: 1 }, phi: true, apps: ['HL7'] });
    expect(edge(map, { device: 'pump-01', ports: '443' })).toMatchObject({ status: 'allowed-observed', phi: false });
    expect(map.stats).toMatchObject({ records: 5, mapped: 5, before: 0, filtered: 0, unknownDevices: {} });
  });

  it('styles edges by status and marks PHI in the DOT', () => {
    const dot = renderDot(build(DAY));
    const dicom = dotEdge(dot, 'group:pacs', 'device:ct-01', 'tcp/104 DICOM [PHI]');
    expect(dicom).toContain('allow[0]: 2 flow(s), 4.9 KiB\\nlast 2030-01-01 11:30Z"');
    expect(dicom).toContain('style="solid"');
    expect(dicom).toContain('color="#222222", fontcolor="#1f5fbf"');
    expect(dicom).toContain('penwidth=2.5');
    expect(dicom).not.toContain('dir=');

    const unused = dotEdge(dot, 'group:pacs', 'device:ct-01', 'udp/4242');
    expect(unused).toContain('allow[1]: never seen"');
    expect(unused).toContain('style="dashed"');
    expect(unused).not.toContain('penwidth');
    // Outbound: drawn peer to device like the rest, the arrow turned round to point at the peer.
    expect(dotEdge(dot, 'group:pacs', 'device:ct-01', 'tcp/11112 DICOM [PHI]')).toMatch(/style="dashed", penwidth=2\.5, dir="back"\]/);

    const denied = dotEdge(dot, `address:${STRANGER}`, 'device:ct-01', 'tcp/23');
    expect(denied).toContain('NOT ALLOWED: 1 flow(s), 180 B\\nlogged as denied 1');
    expect(denied).toContain('color="#d62728", fontcolor="#d62728", style="bold"');
    const hl7 = dotEdge(dot, 'group:pacs', 'device:pump-01', 'tcp/2575 HL7 [PHI]');
    expect(hl7).toContain('logged as monitored 1');
    expect(hl7).toContain('color="#d62728", fontcolor="#1f5fbf", style="bold", penwidth=2.5, dir="back"');
    expect(dotEdge(dot, 'group:pacs', 'device:pump-01', 'tcp/443 HTTPS')).not.toContain('PHI');

    // Devices: id, class, criticality, mode; monitor mode filled apart from enforce.
    expect(dot).toContain('"device:ct-01" [label="ct-01\\nct-modality\\nhigh, enforce, fail closed\\n10.20.0.11, fd00:20::11", shape="box", style="rounded,filled", fillcolor="#e8f1fb"]');
    expect(dot).toContain('"device:pump-01" [label="pump-01\\ninfusion-pump-server\\nmedium, monitor, fail closed\\n10.20.0.21, fd00:20::21", shape="box", style="rounded,filled", fillcolor="#fff2d9"]');
    expect(dot).toContain('"group:pacs" [label="pacs\\n10.10.1.10, fd00:10::1:10", shape="folder"');
    expect(dot).toContain('cluster_legend');
  });

  it('judges by the policy as it is now; the verdict logged at the time rides along', () => {
    const map = build([
      // Logged denied, but ct-01/allow[1] covers it now (the allow-list grew since).
      flow({ device: 'ct-01', peer: PACS, direction: 'inbound', proto: 'udp', dport: 4242, verdict: 'denied', entry: null }),
      // Logged allowed by an entry that no longer covers it.
      flow({ device: 'ct-01', peer: PACS, direction: 'inbound', dport: 8443, verdict: 'allowed', entry: 'ct-01/allow[9]' }),
      // The wrong direction for ct-01/allow[0]: not covered.
      flow({ device: 'ct-01', peer: PACS, direction: 'outbound', dport: 104, app: 'DICOM', verdict: 'unmatched' }),
    ]);
    expect(edge(map, { device: 'ct-01', ports: '4242' })).toMatchObject({ status: 'allowed-observed', verdicts: { denied: 1 } });
    expect(edge(map, { device: 'ct-01', ports: '8443' })).toMatchObject({ status: 'not-allowed', verdicts: { allowed: 1 } });
    expect(edge(map, { device: 'ct-01', ports: '104', direction: 'outbound' })).toMatchObject({ status: 'not-allowed', peer: 'group:pacs', phi: true });
    const dot = renderDot(map);
    expect(dotEdge(dot, 'group:pacs', 'device:ct-01', 'udp/4242')).toContain('allow[1]: 1 flow(s), 1000 B\\nlogged as denied 1');
    expect(dotEdge(dot, 'group:pacs', 'device:ct-01', 'tcp/8443')).toContain('logged as allowed 1');
  });

  it('ICMP: covered when an icmp entry holds the peer and the log allowed it (the record keeps no type)', () => {
    const map = build([
      flow({ device: 'ct-01', peer: '10.10.5.3', peerGroup: 'biomed', direction: 'inbound', proto: 'icmp', dport: null, sport: null, verdict: 'allowed', entry: 'ct-01/allow[2]' }),
      flow({ device: 'pump-01', peer: '10.10.5.3', peerGroup: 'biomed', direction: 'inbound', proto: 'icmp', dport: null, sport: null, verdict: 'monitored' }),
    ]);
    expect(edge(map, { device: 'ct-01', proto: 'icmp' })).toMatchObject({ status: 'allowed-observed', peer: 'group:biomed', flows: 1 });
    expect(edge(map, { device: 'pump-01', proto: 'icmp' })).toMatchObject({ status: 'not-allowed', peer: 'group:biomed', ports: '' });
    expect(renderDot(map)).toContain('"group:biomed" -> "device:pump-01" [label="icmp\\nNOT ALLOWED');
  });

  it('--device shows one device; --since leaves older records out; records of unknown devices are counted', () => {
    const records = [
      ...DAY,
      flow({ device: 'old-02', peer: PACS, direction: 'inbound' }),
      flow({ device: 'old-02', peer: PACS, direction: 'inbound' }),
      // pump-01 talking to ct-01: ct-01 is drawn for context, without its own edges.
      flow({ device: 'pump-01', peer: '10.20.0.11', direction: 'outbound', dport: 104, app: 'DICOM', verdict: 'monitored' }),
    ];
    const pump = build(records, { device: 'pump-01' });
    expect(pump.nodes.map((x) => [x.id, x.context ?? false])).toEqual([['device:ct-01', true], ['device:pump-01', false], ['group:pacs', false]]);
    expect(new Set(pump.edges.map((e) => e.device))).toEqual(new Set(['pump-01']));
    expect(edge(pump, { ports: '104' })).toMatchObject({ peer: 'device:ct-01', status: 'not-allowed' });
    expect(pump.stats).toMatchObject({ records: 8, mapped: 3, filtered: 5, unknownDevices: {} });
    expect(renderDot(pump)).toContain('wardgate data-flow map: itest/gw-1, device pump-01\\n3 flow record(s)');

    const late = build(records, { since: new Date('2030-01-01T11:00:00Z') });
    expect(late.stats).toMatchObject({ records: 8, mapped: 1, before: 7, first: '2030-01-01T11:30:00.000Z' });
    expect(edge(late, { device: 'ct-01', ports: '104', direction: 'inbound' })).toMatchObject({ flows: 1, bytes: 2000 });
    expect(late.edges.filter((e) => e.status === 'not-allowed')).toEqual([]);

    expect(build(records).stats.unknownDevices).toEqual({ 'old-02': 2 });
    expect(() => build([], { device: 'nope' })).toThrow(/no device "nope"/);
  });

  it('CIDR and host peers: a network node holds its addresses, a host peer is the address itself', () => {
    const lab = `apiVersion: wardgate/v1
kind: Policy
devices:
  - id: lab-01
    class: lab-analyzer
    criticality: medium
    mode: enforce
    ipv4: 10.20.0.31
    allow:
      - { peer: 10.10.7.0/24, direction: inbound, proto: tcp, ports: ["5000-5100", "100-110"] }
      - { peer: 192.0.2.40, direction: outbound, proto: tcp, ports: [443] }
      - { peer: 192.0.2.40, direction: outbound, proto: tcp, ports: [2576], app: HL7 }
`;
    const loaded = loadConfig(siteDir({ 'lab.yaml': lab }).gateway);
    const using = mapInput(loaded, buildModel(loaded));
    const map = build(
      [
        flow({ device: 'lab-01', peer: '10.10.7.5', direction: 'inbound', dport: 5050, entry: 'lab-01/allow[0]' }),
        flow({ device: 'lab-01', peer: '10.10.7.6', direction: 'inbound', dport: 22, app: 'SSH', verdict: 'denied' }),
        flow({ device: 'lab-01', peer: '192.0.2.40', direction: 'outbound', dport: 80, verdict: 'unmatched' }),
        flow({ device: 'lab-01', peer: '192.0.2.40', direction: 'outbound', dport: 2576, entry: 'lab-01/allow[2]' }),
      ],
      { device: 'lab-01' },
      using,
    );
    expect(map.nodes.map((x) => x.id)).toEqual(['device:lab-01', 'network:10.10.7.0/24', 'address:192.0.2.40']);
    expect(edge(map, { ports: '5000-5100' })).toMatchObject({ peer: 'network:10.10.7.0/24', status: 'allowed-observed', apps: [], phi: false });
    // A range that holds a PHI port may carry PHI.
    expect(edge(map, { ports: '100-110' })).toMatchObject({ status: 'allowed-unobserved', apps: ['DICOM'], phi: true });
    expect(edge(map, { ports: '22' })).toMatchObject({ peer: 'network:10.10.7.0/24', status: 'not-allowed', apps: ['SSH'] });
    expect(edge(map, { ports: '443' })).toMatchObject({ peer: 'address:192.0.2.40', status: 'allowed-unobserved' });
    expect(edge(map, { ports: '80' })).toMatchObject({ peer: 'address:192.0.2.40', status: 'not-allowed', verdicts: { unmatched: 1 } });
    // HL7 off its well-known port: the entry names it, so its flows are marked.
    expect(edge(map, { ports: '2576' })).toMatchObject({ status: 'allowed-observed', apps: ['HL7'], phi: true, flows: 1 });
    expect(renderDot(map)).toContain('"network:10.10.7.0/24" [label="10.10.7.0/24", shape="ellipse", style="dashed"]');
  });

  it('a scan becomes one edge (many ports) and one node (many lone addresses)', () => {
    const ports = Array.from({ length: 12 }, (_, i) => flow({ device: 'ct-01', peer: STRANGER, direction: 'inbound', dport: 1000 + i, verdict: 'denied', bytes: 60 }));
    const hosts = Array.from({ length: 25 }, (_, i) => flow({ device: 'ct-01', peer: `10.10.200.${i + 1}`, direction: 'inbound', dport: 22, verdict: 'denied', bytes: 100 + i }));
    const map = build([...ports, ...hosts], { maxPorts: 8, maxAddresses: 20 });
    const scan = edge(map, { peer: `address:${STRANGER}` });
    expect(scan).toMatchObject({ ports: '12 ports', flows: 12, bytes: 720, status: 'not-allowed' });
    expect(scan.portList).toEqual(Array.from({ length: 12 }, (_, i) => 1000 + i));
    // The 20 lone addresses with the most bytes keep their nodes (and the stranger, with the most
    // flows, is one of them); the rest share one node.
    const lone = map.nodes.filter((x) => x.kind === 'address');
    expect(lone).toHaveLength(20);
    expect(lone.map((x) => x.id)).not.toContain('address:10.10.200.1');
    const others = edge(map, { peer: 'others:ct-01' });
    expect(others).toMatchObject({ ports: '22', flows: 6, peers: ['10.10.200.1', '10.10.200.2', '10.10.200.3', '10.10.200.4', '10.10.200.5', '10.10.200.6'] });
    expect(map.nodes.find((x) => x.id === 'others:ct-01')?.name).toBe('6 other address(es)');
    // Under the limits nothing is merged.
    expect(build(ports.slice(0, 8)).edges.filter((e) => e.status === 'not-allowed')).toHaveLength(8);
  });

  it('escapes what DOT would read as syntax: quotes, backslashes, line breaks, escString sequences', () => {
    expect(dotString('a"b\\c\nd')).toBe('"a\\"b\\\\c\\nd"');
    expect(dotString('tail\\')).toBe('"tail\\\\"');
    expect(dotString('x\u0007y\r\nz')).toBe('"x y\\nz"');

    const evil = 'CT "Somatom" \\N {a} -> b; <i>x</i> & \\';
    const devices = input.devices.map((d) => (d.id === 'ct-01' ? { ...d, class: evil } : d));
    const groups = input.groups.map((g) => (g.name === 'pacs' ? { ...g, description: 'PACS\n"main"\\l' } : g));
    const dot = renderDot(build([...DAY, flow({ device: 'ct-01', peer: 'fd00:10::99', direction: 'inbound', dport: 80, verdict: 'denied' })], {}, { ...input, devices, groups }));
    expect(dot).toContain('label="ct-01\\nCT \\"Somatom\\" \\\\N {a} -> b; <i>x</i> & \\\\\\nhigh, enforce');
    expect(dot).toContain('"group:pacs" [label="pacs\\nPACS\\n\\"main\\"\\\\l\\n');
    // An IPv6 peer: colons inside a quoted id are not DOT's node:port syntax.
    expect(dot).toContain('"address:fd00:10::99" -> "device:ct-01"');
  });

  it('is deterministic: any order of the same records gives the same DOT, byte for byte', () => {
    const records = [
      ...DAY,
      ...Array.from({ length: 14 }, (_, i) => flow({ device: 'ct-01', peer: `10.10.77.${i % 7}`, direction: 'inbound', dport: 3000 + (i % 10), verdict: 'denied', bytes: 50 })),
      flow({ device: 'pump-01', peer: 'fd00:10::1:10', peerGroup: 'pacs', direction: 'inbound', dport: 443, entry: 'pump-01/allow[0]', time: '2030-01-02T00:00:00.000Z' }),
    ];
    // With crowds merged and without: both orders must be the code's, not the records'.
    const options: MapOptions[] = [{}, { maxAddresses: 4, maxPorts: 3 }];
    const expected = options.map((o) => renderDot(build(records, o)));
    expect(expected[0]).not.toBe(expected[1]);
    fc.assert(
      fc.property(fc.shuffledSubarray(records, { minLength: records.length, maxLength: records.length }), (shuffled) => {
        options.forEach((o, i) => expect(renderDot(build(shuffled, o))).toBe(expected[i]));
      }),
      { numRuns: 50 },
    );
  });
});

/** A small XML well-formedness check: every tag closed in order, no stray "<" or "&". */
function checkXml(xml: string): string[] {
  const body = xml.replace(/<\?[\s\S]*?\?>/g, '').replace(/<!--[\s\S]*?-->/g, '').replace(/<!DOCTYPE[^>[]*(\[[\s\S]*?\])?\s*>/g, '');
  const stack: string[] = [];
  const problems: string[] = [];
  const tag = /<(\/?)([A-Za-z_][\w:.-]*)((?:\s+[\w:.-]+\s*=\s*(?:"[^"<]*"|'[^'<]*'))*)\s*(\/?)>/g;
  let at = 0;
  for (let m = tag.exec(body); m; m = tag.exec(body)) {
    const text = body.slice(at, m.index);
    if (/[<>]/.test(text) || /&(?!(?:amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);)/.test(text)) problems.push(`bad text before offset ${m.index}: ${text.slice(0, 60)}`);
    at = m.index + m[0].length;
    const [, close, name, , selfClose] = m;
    if (selfClose) continue;
    if (!close) stack.push(name!);
    else if (stack.pop() !== name) problems.push(`</${name!}> closes the wrong element at offset ${m.index}`);
  }
  if (/[<>]/.test(body.slice(at))) problems.push('bad text at the end');
  if (stack.length > 0) problems.push(`unclosed: ${stack.join(', ')}`);
  return problems;
}

const decodeXml = (s: string) => s.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&#45;/g, '-').replace(/&amp;/g, '&');

const dotSkip = spawnSync('dot', ['-V'], { encoding: 'utf8' }).error ? 'Graphviz `dot` is not installed (Debian package graphviz)' : undefined;
if (dotSkip) console.warn(`[flows map SVG] skipped: ${dotSkip}`);

describe.skipIf(dotSkip !== undefined)('the map as SVG, by the real dot', () => {
  it('lays out the map: well-formed SVG with every node and the escaped labels intact', async () => {
    const devices = input.devices.map((d) => (d.id === 'ct-01' ? { ...d, class: 'CT "Somatom" \\N <b> & {x}' } : d));
    const map = build([...DAY, flow({ device: 'ct-01', peer: 'fd00:10::99', direction: 'inbound', dport: 80, verdict: 'denied' })], {}, { ...input, devices });
    const svg = await renderSvg(renderDot(map));
    expect(svg).toMatch(/^<\?xml/);
    expect(svg).toContain('<svg');
    expect(checkXml(svg)).toEqual([]);
    const titles = [...svg.matchAll(/<g id="node\d+" class="node">\s*<title>([^<]*)<\/title>/g)].map((m) => decodeXml(m[1]!));
    expect(titles).toEqual(expect.arrayContaining(['device:ct-01', 'device:pump-01', 'group:pacs', 'group:biomed', `address:${STRANGER}`, 'address:fd00:10::99']));
    const texts = [...svg.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((m) => decodeXml(m[1]!));
    expect(texts).toContain('CT "Somatom" \\N <b> & {x}');
    expect(texts).toContain('tcp/104 DICOM [PHI]');
    expect(texts).toContain('NOT ALLOWED: 1 flow(s), 180 B');
    // One edge per map edge (the legend is a table, not edges).
    expect(svg.match(/class="edge"/g)).toHaveLength(map.edges.length);
  });

  it('without dot, says which package to install', async () => {
    await expect(renderSvg('digraph { a }', { command: join(tmp(), 'no-such-dot') })).rejects.toBeInstanceOf(GraphvizMissingError);
    await expect(renderSvg('digraph { a }', { command: join(tmp(), 'no-such-dot') })).rejects.toThrow(/Debian package graphviz/);
  });

  it('reports dot\'s own error on DOT it cannot read', async () => {
    await expect(renderSvg('digraph { a -> }')).rejects.toThrow(/dot -Tsvg failed \(exit 1\): .*syntax error/s);
  });
});

// ---------------------------------------------------------------------------------------------
// The command

function capture(): { io: { out: (l: string) => void; err: (l: string) => void }; out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { out: (l) => out.push(l), err: (l) => err.push(l) }, out, err };
}

async function wardgate(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const c = capture();
  const code = await main(args, c.io);
  return { code, out: c.out.join('\n'), err: c.err.join('\n') };
}

const line = (r: FlowRecord) => `${JSON.stringify({ kind: 'flow', ...r })}\n`;

describe('wardgate flows map', () => {
  let site: ReturnType<typeof siteDir>;
  beforeAll(() => {
    site = siteDir();
    mkdirSync(site.flows, { recursive: true });
    // The rotated file holds the older records; a torn line and another kind of line are skipped.
    writeFileSync(join(site.flows, 'flows.ndjson.1'), DAY.slice(0, 2).map(line).join('') + '{"kind":"flow","time":"2030-01-0\n');
    writeFileSync(join(site.flows, 'flows.ndjson'), DAY.slice(2).map(line).join('') + '{"kind":"event","name":"x"}\n');
  });

  it('prints the map as DOT from the policy files and every file of the flow log', async () => {
    const r = await wardgate('flows', 'map', '--gateway', site.gateway);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^digraph "wardgate_flows" \{/);
    expect(`${r.out}\n`).toBe(renderDot(build(DAY)));
    expect(r.err).toContain('map: 2 device(s), 7 edge(s): 2 allowed and observed, 3 allowed never observed, 2 observed NOT allowed; 3 carry PHI');
    expect(r.err).toContain(`5 of 5 flow record(s) from 2 file(s) in ${site.flows}`);
    expect(r.err).toContain('warning: skipped 1 line of the flow log that is not a well-formed record');
  });

  it.skipIf(dotSkip !== undefined)('--device, --since and --out FILE.svg', async () => {
    const out = join(tmp(), 'pump.svg');
    const r = await wardgate('flows', 'map', '--gateway', site.gateway, '--device', 'pump-01', '--since', '2030-01-01T09:00Z', '--out', out);
    expect(r).toMatchObject({ code: 0, out: '' });
    expect(r.err).toContain(`wrote ${out}`);
    const svg = readFileSync(out, 'utf8');
    expect(svg).toMatch(/^<\?xml/);
    expect(svg).toContain('<title>device:pump&#45;01</title>');
    expect(svg).not.toContain('<title>device:ct&#45;01</title>');

    const dot = await wardgate('flows', 'map', '--gateway', site.gateway, '--since', '2030-01-01T11:00:00Z');
    expect(dot.out).toContain('1 flow(s), 2.0 KiB');
    expect(dot.err).toContain('1 of 5 flow record(s)');
  });

  it('with no flow log yet, shows the allow-lists alone', async () => {
    const empty = siteDir();
    const r = await wardgate('flows', 'map', '--gateway', empty.gateway, '--format', 'dot');
    expect(r.code).toBe(0);
    expect(r.out).not.toContain('NOT ALLOWED');
    expect(r.out.match(/never seen/g)).toHaveLength(5);
    expect(r.err).toContain(`no flow log in ${empty.flows}: the map shows the allow-lists alone`);
  });

  it('usage mistakes exit 2, configuration errors 3, each with a clear message', async () => {
    const usage = async (args: string[], message: RegExp) => {
      const r = await wardgate('flows', ...args, '--gateway', site.gateway);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.err).toMatch(message);
    };
    await usage([], /flows needs a subcommand: map/);
    await usage(['draw'], /unknown flows command "draw"/);
    await usage(['map', '--format', 'png'], /--format must be dot or svg, not "png"/);
    await usage(['map', '--device', 'nope'], /no device "nope" in the policy files \(devices: ct-01, pump-01\)/);
    await usage(['map', '--since', 'yesterday'], /--since takes an age/);

    const broken = siteDir({ 'ct.yaml': FLOW_POLICIES['ct.yaml'].replace('peer: pacs, direction: inbound, proto: tcp', 'peer: pacz, direction: inbound, proto: tcp') });
    const r = await wardgate('flows', 'map', '--gateway', broken.gateway);
    expect(r.code).toBe(3);
    expect(r.err).toMatch(/rules\/ct\.yaml:\d+:\d+: error: devices\[0\]\.allow\[0\]\.peer: unknown peer group "pacz"/);
    const badApp = siteDir({ 'pump.yaml': FLOW_POLICIES['pump.yaml'].replace('ports: [443] }', 'ports: [443], app: FTP }') });
    const a = await wardgate('flows', 'map', '--gateway', badApp.gateway);
    expect(a.code).toBe(3);
    expect(a.err).toMatch(/rules\/pump\.yaml:\d+:\d+: error: devices\[0\]\.allow\[0\]\.app: /);
  });

  it('the built command: --format svg without dot on PATH fails naming the package, and DOT still works', () => {
    const bin = tmp('wg-map-path-');
    const env = { ...process.env, PATH: bin };
    // Promptly: nothing may hold the process open once dot failed to start.
    const svg = spawnSync(process.execPath, [CLI, 'flows', 'map', '--gateway', site.gateway, '--format', 'svg'], { encoding: 'utf8', env, timeout: 15000 });
    expect(svg.signal).toBeNull();
    expect(svg.stderr).toContain('install the Debian package graphviz');
    expect(svg.status).toBe(1);
    expect(svg.stdout).toBe('');
    const dot = spawnSync(process.execPath, [CLI, 'flows', 'map', '--gateway', site.gateway], { encoding: 'utf8', env, timeout: 15000 });
    expect(dot.status).toBe(0);
    expect(dot.stdout).toContain('"device:ct-01"');
    const help = spawnSync(process.execPath, [CLI, 'help'], { encoding: 'utf8', timeout: 15000 });
    expect(help.stdout).toContain('flows map');
  });
});
