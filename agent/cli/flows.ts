// `wardgate flows map`: the data-flow map per device, allowed against observed flows, as DOT or
// SVG (docs/flows-map.md). Reads only: the policy files and the flow log in <stateDir>/flows/.
import { join } from 'node:path';
import { loadConfig } from '../config/load.js';
import { buildModel } from '../policy/model.js';
import { renderDot, renderSvg, GraphvizMissingError } from '../traffic/dot.js';
import { FlowMapBuilder, mapInput, type FlowMap } from '../traffic/map.js';
import { FLOW_LOG_DIR, readFlowLog, type ReadStats } from '../traffic/read.js';
import { writeFileAtomic } from '../util/fsx.js';
import { gatewayPath, stateDirOf, UsageError, type GlobalOptions } from './context.js';
import { parseSince, readingFlowLog, skippedWarning } from './flowlog.js';
import type { Io } from './io.js';

export interface FlowsOptions extends GlobalOptions {
  device?: string;
  since?: string;
  format?: string;
  out?: string;
}

export async function flowsCommand(sub: string | undefined, opts: FlowsOptions, io: Io, now = new Date()): Promise<number> {
  if (sub !== 'map') throw new UsageError(sub === undefined ? 'flows needs a subcommand: map' : `unknown flows command "${sub}" (map)`);
  // Without --format, an --out file ending in .svg asks for SVG.
  const format = opts.format ?? (opts.out?.toLowerCase().endsWith('.svg') ? 'svg' : 'dot');
  if (format !== 'dot' && format !== 'svg') throw new UsageError(`--format must be dot or svg, not "${format}"`);
  const since = opts.since !== undefined ? parseSince(opts.since, now) : undefined;

  const loaded = loadConfig(gatewayPath(opts));
  const model = buildModel(loaded);
  if (opts.device !== undefined && !model.devices.some((d) => d.id === opts.device)) {
    const known = model.devices.map((d) => d.id).sort().join(', ') || 'none';
    throw new UsageError(`--device: no device "${opts.device}" in the policy files (devices: ${known})`);
  }
  const stateDir = stateDirOf(opts, model.gateway.stateDir, loaded.gateway.root);
  const builder = new FlowMapBuilder(mapInput(loaded, model), {
    ...(opts.device !== undefined ? { device: opts.device } : {}),
    ...(since !== undefined ? { since } : {}),
  });
  const logDir = join(stateDir, FLOW_LOG_DIR);
  const read = await readingFlowLog(io, () => readFlowLog(logDir, (flow) => builder.add(flow)));
  if (read === undefined) return 1;
  const map = builder.build();
  const dotText = renderDot(map);
  let text: string;
  try {
    text = format === 'svg' ? await renderSvg(dotText) : dotText;
  } catch (err) {
    if (!(err instanceof GraphvizMissingError)) throw err;
    io.err(`wardgate: ${err.message}`);
    return 1;
  }

  if (opts.out !== undefined) writeFileAtomic(opts.out, text);
  else io.out(text.trimEnd());
  for (const line of notes(map, read, logDir)) io.err(line);
  if (opts.out !== undefined) io.err(`wrote ${opts.out}`);
  return 0;
}

function notes(map: FlowMap, read: ReadStats, logDir: string): string[] {
  const lines: string[] = [];
  const count = (s: string) => map.edges.filter((e) => e.status === s).length;
  const phi = map.edges.filter((e) => e.phi).length;
  const devices = map.nodes.filter((n) => n.kind === 'device' && !n.context).length;
  lines.push(
    `map: ${devices} device(s), ${map.edges.length} edge(s): ${count('allowed-observed')} allowed and observed, ` +
      `${count('allowed-unobserved')} allowed never observed, ${count('not-allowed')} observed NOT allowed; ${phi} carry PHI`,
  );
  if (read.files.length === 0) lines.push(`no flow log in ${logDir}: the map shows the allow-lists alone`);
  else lines.push(`${map.stats.mapped} of ${read.records} flow record(s) from ${read.files.length} file(s) in ${logDir}`);
  const skipped = skippedWarning(read);
  if (skipped !== undefined) lines.push(skipped);
  const unknown = Object.entries(map.stats.unknownDevices).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  if (unknown.length > 0) {
    const n = unknown.reduce((s, [, c]) => s + c, 0);
    const names = unknown.slice(0, 10).map(([d]) => d).join(', ') + (unknown.length > 10 ? `, +${unknown.length - 10}` : '');
    lines.push(`left out ${n} record(s) of devices not in the policy files: ${names}`);
  }
  return lines;
}
