// The data-flow map as Graphviz DOT, and DOT as SVG through Graphviz's own `dot`.
//
// Every name and label is a quoted DOT string built here, with its escapes: device classes,
// group descriptions and the flow log are text that DOT must not read as syntax.
import { spawn } from 'node:child_process';
import { VERDICTS, type FlowMap, type MapEdge, type MapNode } from './map.js';

/**
 * A DOT quoted string. Inside quotes DOT unescapes only \" , but labels and tooltips are escString:
 * a backslash starts \n, \l, \N, \G … there, so user text gets its backslashes doubled, its quotes
 * escaped and its line breaks turned into \n; other control characters become spaces.
 */
export function dotString(text: string): string {
  return `"${escapeDot(text)}"`;
}

function escapeDot(text: string): string {
  return text
    .replace(/\\/g, '\\\\')
    .replace(/"/g, '\\"')
    .replace(/\r\n|\r|\n/g, '\\n')
    // eslint-disable-next-line no-control-regex
    .replace(/[\u0000-\u001f\u007f]/g, ' ');
}

/** Text that is already DOT (a label built line by line), passed through as it is. */
class Raw {
  constructor(readonly text: string) {}
}

/** Label lines, each escaped, joined by DOT's centred line break. */
function label(lines: readonly string[]): Raw {
  return new Raw(`"${lines.map(escapeDot).join('\\n')}"`);
}

type AttrValue = string | number | Raw | undefined;

function attrs(a: Record<string, AttrValue>): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(a)) {
    if (v === undefined) continue;
    parts.push(`${k}=${v instanceof Raw ? v.text : typeof v === 'number' ? String(v) : dotString(v)}`);
  }
  return parts.length > 0 ? ` [${parts.join(', ')}]` : '';
}

export const COLORS = {
  observed: '#222222',
  unobserved: '#8c8c8c',
  notAllowed: '#d62728',
  phi: '#1f5fbf',
  enforce: '#e8f1fb',
  monitor: '#fff2d9',
  context: '#f2f2f2',
  peer: '#ffffff',
} as const;

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]!}`;
}

function service(e: MapEdge): string {
  const port = e.ports === '' ? e.proto : `${e.proto}/${e.ports}`;
  const apps = e.apps.length > 0 ? ` ${e.apps.join(', ')}` : '';
  return `${port}${apps}${e.phi ? ' [PHI]' : ''}`;
}

function minute(iso: string): string {
  return `${iso.slice(0, 16).replace('T', ' ')}Z`;
}

function edgeLabel(e: MapEdge): string[] {
  const lines = [service(e)];
  const entry = e.entry !== undefined ? e.entry.slice(e.entry.indexOf('/') + 1) : undefined;
  const verdicts = VERDICTS.filter((v) => v !== 'allowed' && e.verdicts[v] !== undefined).map((v) => `${v} ${e.verdicts[v]}`);
  switch (e.status) {
    case 'allowed-unobserved':
      lines.push(`${entry ?? 'allowed'}: never seen`);
      return lines;
    case 'allowed-observed':
      lines.push(`${entry ?? 'allowed'}: ${e.flows} flow(s), ${formatBytes(e.bytes)}`);
      // The policy covers now what it did not when these were logged.
      if (verdicts.length > 0) lines.push(`logged as ${verdicts.join(', ')}`);
      break;
    case 'not-allowed': {
      lines.push(`NOT ALLOWED: ${e.flows} flow(s), ${formatBytes(e.bytes)}`);
      // "allowed" here: by an entry of an older policy that no longer covers it.
      const logged = e.verdicts.allowed !== undefined ? [...verdicts, `allowed ${e.verdicts.allowed}`] : verdicts;
      lines.push(`logged as ${logged.join(', ')}`);
      break;
    }
  }
  if (e.last !== undefined) lines.push(`last ${minute(e.last)}`);
  return lines;
}

function edgeTooltip(e: MapEdge): string {
  const lines = [`${e.device} ${e.direction} ${service(e)}`];
  if (e.entry !== undefined) lines.push(`${e.entry}${e.comment !== undefined ? `: ${e.comment}` : ''}`);
  if (e.first !== undefined && e.last !== undefined) lines.push(`seen ${e.first} to ${e.last}, ${e.packets} packet(s)`);
  if (e.portList && e.portList.length > 1) lines.push(`ports ${e.portList.slice(0, 30).join(', ')}${e.portList.length > 30 ? ', …' : ''}`);
  if (e.peers.length > 0) lines.push(`peers ${e.peers.slice(0, 10).join(', ')}${e.peers.length > 10 ? `, +${e.peers.length - 10}` : ''}`);
  return lines.join('\n');
}

function nodeAttrs(n: MapNode): string {
  const lines = [n.name, ...n.detail];
  switch (n.kind) {
    case 'device': {
      const fill = n.context ? COLORS.context : n.device?.mode === 'monitor' ? COLORS.monitor : COLORS.enforce;
      const life = n.device?.criticality === 'life-critical';
      return attrs({ label: label(lines), shape: 'box', style: 'rounded,filled', fillcolor: fill, peripheries: life ? 2 : undefined, penwidth: life ? 1.5 : undefined });
    }
    case 'group':
      return attrs({ label: label(lines), shape: 'folder', style: 'filled', fillcolor: COLORS.peer });
    case 'network':
      return attrs({ label: label(lines), shape: 'ellipse', style: 'dashed' });
    case 'address':
      return attrs({ label: label(lines), shape: 'ellipse' });
    case 'others':
      return attrs({ label: label(lines), shape: 'ellipse', style: 'dashed', color: COLORS.notAllowed });
  }
}

function edgeAttrs(e: MapEdge): Record<string, AttrValue> {
  const color = { 'allowed-observed': COLORS.observed, 'allowed-unobserved': COLORS.unobserved, 'not-allowed': COLORS.notAllowed }[e.status];
  return {
    label: label(edgeLabel(e)),
    tooltip: edgeTooltip(e),
    color,
    fontcolor: e.phi ? COLORS.phi : color,
    style: e.status === 'allowed-unobserved' ? 'dashed' : e.status === 'not-allowed' ? 'bold' : 'solid',
    penwidth: e.phi ? 2.5 : undefined,
    // Peers on the left, devices on the right: an outbound edge is drawn peer to device and
    // its arrow turned round, so the arrow always points from the opener to the answerer.
    dir: e.direction === 'outbound' ? 'back' : undefined,
  };
}

// Constant text, so the HTML-like label needs no escaping of its own.
const LEGEND = `  subgraph "cluster_legend" {
    graph [label="legend", fontsize=10, color="#bbbbbb", style=rounded];
    "legend" [shape=plaintext, fontsize=9, label=<<table border="0" cellborder="0" cellspacing="1">
      <tr><td align="left"><font color="${COLORS.observed}">━━━━▶</font></td><td align="left">allowed, observed: flows, bytes, last seen</td></tr>
      <tr><td align="left"><font color="${COLORS.unobserved}">╺ ╺ ╺ ▶</font></td><td align="left">allowed, never observed</td></tr>
      <tr><td align="left"><font color="${COLORS.notAllowed}"><b>━━━━▶</b></font></td><td align="left"><font color="${COLORS.notAllowed}">observed, NOT allowed</font></td></tr>
      <tr><td align="left"><font color="${COLORS.phi}">[PHI]</font></td><td align="left"><font color="${COLORS.phi}">DICOM or HL7: patient data (thick line)</font></td></tr>
      <tr><td align="left">▶</td><td align="left">points at the side that answers</td></tr>
      <tr><td align="left" bgcolor="${COLORS.enforce}">device</td><td align="left">enforce mode</td></tr>
      <tr><td align="left" bgcolor="${COLORS.monitor}">device</td><td align="left">monitor mode (allows and logs all)</td></tr>
      <tr><td align="left" border="1" style="rounded">device</td><td align="left">double border: life-critical</td></tr>
    </table>>];
  }
`;

function title(map: FlowMap): string[] {
  const { meta, stats } = map;
  const where = meta.site !== undefined ? `: ${meta.site}/${meta.gateway ?? ''}` : '';
  const span = stats.first !== undefined && stats.last !== undefined ? ` from ${minute(stats.first)} to ${minute(stats.last)}` : '';
  return [
    `wardgate data-flow map${where}${meta.device !== undefined ? `, device ${meta.device}` : ''}`,
    `${stats.mapped} flow record(s)${span}${meta.since !== undefined ? ` (since ${minute(meta.since)})` : ''}`,
    ...(meta.policyHash !== undefined ? [`against the allow-lists of policy ${meta.policyHash.slice(0, 16)}`] : []),
  ];
}

/** The map as Graphviz DOT. */
export function renderDot(map: FlowMap, opts: { legend?: boolean } = {}): string {
  const out: string[] = [];
  out.push('digraph "wardgate_flows" {');
  out.push(`  graph${attrs({ label: label(title(map)), labelloc: 't', labeljust: 'l', rankdir: 'LR', ranksep: 1.4, nodesep: 0.25, fontname: 'Helvetica', fontsize: 12, charset: 'UTF-8' })};`);
  out.push(`  node${attrs({ fontname: 'Helvetica', fontsize: 10 })};`);
  out.push(`  edge${attrs({ fontname: 'Helvetica', fontsize: 9, arrowsize: 0.7 })};`);
  const devices = map.nodes.filter((n) => n.kind === 'device');
  const peers = map.nodes.filter((n) => n.kind !== 'device');
  if (peers.length > 0) {
    out.push(`  subgraph "cluster_peers" {`);
    out.push(`    graph${attrs({ label: 'peers (hospital side)', color: '#bbbbbb', style: 'rounded' })};`);
    for (const n of peers) out.push(`    ${dotString(n.id)}${nodeAttrs(n)};`);
    out.push('  }');
  }
  out.push(`  subgraph "cluster_devices" {`);
  out.push(`    graph${attrs({ label: 'protected devices', color: '#bbbbbb', style: 'rounded' })};`);
  for (const n of devices) out.push(`    ${dotString(n.id)}${nodeAttrs(n)};`);
  out.push('  }');
  for (const e of map.edges) {
    const device = dotString(`device:${e.device}`);
    const peer = dotString(e.peer);
    out.push(`  ${peer} -> ${device}${attrs(edgeAttrs(e))};`);
  }
  if (opts.legend !== false) out.push(LEGEND.trimEnd());
  out.push('}');
  return `${out.join('\n')}\n`;
}

/** `dot` is not on PATH. */
export class GraphvizMissingError extends Error {
  readonly code = 'E_NO_GRAPHVIZ';
  constructor() {
    super('SVG needs Graphviz\'s "dot" program, which is not installed: install the Debian package graphviz (apt-get install graphviz), or use --format dot, which needs nothing');
    this.name = 'GraphvizMissingError';
  }
}

export interface SvgOptions {
  /** The dot program (default: "dot" on PATH). */
  command?: string;
  /** A map of a whole site lays out in seconds; this bounds a runaway layout. */
  timeoutMs?: number;
}

/** Lays out DOT with `dot -Tsvg` and returns the SVG. */
export function renderSvg(dotText: string, opts: SvgOptions = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    // Not spawn's own timeout option: its timer outlives a spawn that failed (no dot), holding
    // the process open for the whole timeout.
    const child = spawn(opts.command ?? 'dot', ['-Tsvg'], { stdio: ['pipe', 'pipe', 'pipe'] });
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => {
      if (err.length < 4096) err += b.toString('utf8');
    });
    child.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(e.code === 'ENOENT' ? new GraphvizMissingError() : e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(Buffer.concat(out).toString('utf8'));
      else reject(new Error(`dot -Tsvg failed (${signal ?? `exit ${code ?? '?'}`}): ${err.trim() || 'no message'}`));
    });
    // dot may exit before reading everything (a syntax error); its exit status says why, not EPIPE.
    child.stdin.on('error', () => undefined);
    child.stdin.end(dotText);
  });
}
