// `wardgate policy learn --device ID [--since T] [--out FILE]` and
// `wardgate policy diff --observed [--device ID] [--since T] [--json]`: the flow log read back
// against the policy files. Neither needs nft or the kernel; both read only.
import { join, resolve } from 'node:path';
import { ConfigError, formatDiagnostic } from '../config/diagnostics.js';
import { loadConfig, loadPolicyText, type LoadedConfig } from '../config/load.js';
import { buildModel, type Model, type ResolvedDevice, type ResolvedEntry } from '../policy/model.js';
import { coverage, type DeviceCoverage } from '../traffic/coverage.js';
import { fileOf, groupsOf, propose, renderProposal } from '../traffic/learn.js';
import { readObserved, type ObservedFlow } from '../traffic/observed.js';
import { FLOW_LOG_DIR } from '../traffic/read.js';
import { writeFileAtomic } from '../util/fsx.js';
import { gatewayPath, stateDirOf, UsageError, type GlobalOptions } from './context.js';
import { parseSince, readingFlowLog, skippedWarning } from './flowlog.js';
import type { Io } from './io.js';

export interface ObservedOptions extends GlobalOptions {
  device?: string;
  since?: string;
  out?: string;
  json?: boolean;
}

function load(opts: GlobalOptions): { loaded: LoadedConfig; model: Model; flowDir: string } {
  const loaded = loadConfig(gatewayPath(opts));
  const model = buildModel(loaded);
  const stateDir = stateDirOf(opts, model.gateway.stateDir, loaded.gateway.root);
  return { loaded, model, flowDir: join(stateDir, FLOW_LOG_DIR) };
}

const unknownDevice = (model: Model, id: string) => `unknown device "${id}" (devices: ${model.devices.map((x) => x.id).join(', ') || 'none'})`;

function deviceOf(model: Model, id: string): ResolvedDevice {
  const d = model.devices.find((x) => x.id === id);
  if (!d) throw new UsageError(unknownDevice(model, id));
  return d;
}

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

function describeFlow(f: ObservedFlow): string {
  const port = f.port !== null ? ` port ${f.port}` : '';
  const verdicts = Object.entries(f.verdicts)
    .map(([v, n]) => `${v} ${n}`)
    .join(', ');
  return `${f.direction} ${f.proto} ${f.peer}${port}: ${plural(f.flows, 'flow')} (${verdicts}), ${f.firstSeen} to ${f.lastSeen}`;
}

function describeEntry(e: ResolvedEntry): string {
  const ports = e.ports.length > 0 ? ` ports ${e.ports.map(([lo, hi]) => (lo === hi ? `${lo}` : `${lo}-${hi}`)).join(', ')}` : '';
  return `${e.id} ${e.src.file}:${e.src.line}:${e.src.col} ${e.direction} ${e.proto} ${e.peer}${ports}`;
}

/** Why no proposal came out; the codes are the `policy.learn` command's error codes too. */
export type LearnFailureCode = 'E_UNKNOWN_DEVICE' | 'E_FLOW_LOG_UNREADABLE' | 'E_NO_FLOWS' | 'E_NOTHING_TO_PROPOSE' | 'E_PROPOSAL_INVALID';

/** What learning found, with or without a proposal: the CLI and `policy.learn` both show it. */
interface LearnReport {
  device: string;
  since: Date | undefined;
  flowDir: string;
  /** Lines of the flow log that are not well-formed records. */
  skippedLines: number;
  /** Observed traffic not proposed, and why, as one line each. */
  left: string[];
}

export type LearnOutcome =
  | (LearnReport & {
      ok: true;
      entries: number;
      flows: number;
      /** The proposal: the device's policy file with its allow list replaced. */
      text: string;
      /** The file it goes in place of: its full path, and as the diagnostics name it. */
      path: string;
      shown: string;
    })
  | (LearnReport & { ok: false; code: LearnFailureCode; message: string; diagnostics: string[] });

/**
 * The proposal for one device, read-only: `wardgate policy learn` prints or writes it and the
 * agent's `policy.learn` command returns it, so both say the same for the same state.
 */
export async function learnProposal(opts: GlobalOptions, deviceId: string, since: Date | undefined, now = new Date()): Promise<LearnOutcome> {
  const { loaded, model, flowDir } = load(opts);
  const report: LearnReport = { device: deviceId, since, flowDir, skippedLines: 0, left: [] };
  const fail = (code: LearnFailureCode, message: string, diagnostics: string[] = []): LearnOutcome => ({ ...report, ok: false, code, message, diagnostics });
  const device = model.devices.find((x) => x.id === deviceId);
  if (!device) return fail('E_UNKNOWN_DEVICE', unknownDevice(model, deviceId));
  let observed: Awaited<ReturnType<typeof readObserved>>;
  try {
    observed = await readObserved(flowDir, { device: device.id, ...(since ? { since } : {}) });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code !== 'EACCES' && e.code !== 'EPERM') throw err;
    return fail('E_FLOW_LOG_UNREADABLE', `cannot read the flow log: ${e.message} (run as the wardgate user or root)`);
  }
  report.skippedLines = observed.read.bad;
  const seen = observed.devices.get(device.id);
  const window = since ? ` since ${since.toISOString()}` : '';
  if (!seen) {
    const where = observed.read.files.length === 0 ? `there is no flow log in ${flowDir}` : `${plural(observed.read.files.length, 'file')} in ${flowDir} hold none`;
    return fail('E_NO_FLOWS', `no observed flows for ${device.id}${window}: ${where}; nothing to propose (flows are recorded by "wardgate run", docs/traffic.md)`);
  }
  const proposal = propose(device, seen, groupsOf(loaded));
  report.left = proposal.left.map((l) => `not proposed (${l.why}): ${describeFlow(l.flow)}`);
  if (proposal.entries.length === 0) {
    return fail('E_NOTHING_TO_PROPOSE', `no proposal for ${device.id}: none of its ${plural(seen.flows, 'observed flow')}${window} can be allowed (above)`);
  }
  const { path, text } = renderProposal(loaded, proposal, { generatedAt: now, ...(since ? { since } : {}), from: flowDir });
  // The proposal must pass the same checks as any policy, in place of the device's file.
  const shown = fileOf(loaded, device.id)?.policy.source.file ?? path;
  const reparsed = loadPolicyText(shown, path, text);
  try {
    if (!reparsed.policy) throw new ConfigError(reparsed.diagnostics);
    const policy = reparsed.policy;
    buildModel({ ...loaded, policies: loaded.policies.map((p) => (p.path === path ? policy : p)) });
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return fail('E_PROPOSAL_INVALID', 'the proposal does not pass the policy checks (a bug in learning); nothing was written', err.diagnostics.map(formatDiagnostic));
  }
  return { ...report, ok: true, entries: proposal.entries.length, flows: proposal.flows, text, path, shown };
}

export async function learnCommand(opts: ObservedOptions, io: Io): Promise<number> {
  if (opts.device === undefined) throw new UsageError('policy learn needs --device ID');
  const since = opts.since !== undefined ? parseSince(opts.since) : undefined;
  const r = await learnProposal(opts, opts.device, since);
  if (!r.ok && r.code === 'E_UNKNOWN_DEVICE') throw new UsageError(r.message);
  const skipped = skippedWarning({ bad: r.skippedLines });
  if (skipped !== undefined) io.err(skipped);
  for (const l of r.left) io.err(l);
  if (!r.ok) {
    for (const d of r.diagnostics) io.err(d);
    io.err(r.code === 'E_NO_FLOWS' || r.code === 'E_NOTHING_TO_PROPOSE' ? r.message : `wardgate: ${r.message}`);
    return 1;
  }
  const summary = `${r.entries} allow entr${r.entries === 1 ? 'y' : 'ies'}`;
  if (opts.out !== undefined) {
    const out = resolve(opts.out);
    writeFileAtomic(out, r.text);
    const place = out === r.path ? `in place of ${r.shown}` : `(it goes in place of ${r.shown})`;
    io.out(`wrote a proposed allow-list for ${r.device}: ${summary} from ${plural(r.flows, 'flow')}, to ${out} ${place}`);
  } else {
    io.out(r.text.trimEnd());
  }
  return 0;
}

interface DiffReport {
  since: string | null;
  files: string[];
  records: number;
  skippedLines: number;
  devices: (Omit<DeviceCoverage, 'unused'> & { unused: { id: string; file: string; line: number; direction: string; proto: string; peer: string; ports: string[] }[] })[];
  /** Devices in the flow log that no policy file lists. */
  unlisted: string[];
}

export async function observedDiffCommand(opts: ObservedOptions, io: Io): Promise<number> {
  const since = opts.since !== undefined ? parseSince(opts.since) : undefined;
  const { model, flowDir } = load(opts);
  const devices = opts.device !== undefined ? [deviceOf(model, opts.device)] : model.devices;
  const observed = await readingFlowLog(io, () => readObserved(flowDir, { ...(opts.device !== undefined ? { device: opts.device } : {}), ...(since ? { since } : {}) }));
  if (observed === undefined) return 1;
  const results = devices.map((d) => coverage(d, observed.devices.get(d.id)));
  const listed = new Set(model.devices.map((d) => d.id));
  const unlisted = [...observed.devices.keys()].filter((id) => !listed.has(id));
  const differ = results.some((r) => r.uncovered.length > 0 || r.unused.length > 0);

  if (opts.json) {
    const report: DiffReport = {
      since: since?.toISOString() ?? null,
      files: observed.read.files,
      records: observed.records,
      skippedLines: observed.read.bad,
      devices: results.map((r) => ({
        ...r,
        unused: r.unused.map((e) => ({
          id: e.id,
          file: e.src.file,
          line: e.src.line,
          direction: e.direction,
          proto: e.proto,
          peer: e.peer,
          ports: e.ports.map(([lo, hi]) => (lo === hi ? `${lo}` : `${lo}-${hi}`)),
        })),
      })),
      unlisted,
    };
    io.out(JSON.stringify(report, null, 2));
    return differ ? 1 : 0;
  }

  const skipped = skippedWarning(observed.read);
  if (skipped !== undefined) io.err(skipped);
  const window = since ? ` since ${since.toISOString()}` : '';
  io.out(`observed: ${plural(observed.records, 'flow')}${window} in ${flowDir} (${plural(observed.read.files.length, 'file')})`);
  for (const r of results) {
    if (r.uncovered.length === 0 && r.unused.length === 0) {
      io.out(`${r.device} (${r.mode}): no difference (${plural(r.flows, 'flow')})`);
      continue;
    }
    if (r.uncovered.length > 0) {
      const fate = r.mode === 'enforce' ? 'so the policy denies it' : 'so enforce mode would deny it';
      io.out(`${r.device} (${r.mode}): observed traffic no allow entry covers, ${fate}:`);
      for (const f of r.uncovered) io.out(`+ ${describeFlow(f)}`);
    }
    if (r.unused.length > 0) {
      io.out(`${r.device} (${r.mode}): allow entries no observed flow used:`);
      for (const e of r.unused) io.out(`- ${describeEntry(e)}`);
    }
  }
  if (unlisted.length > 0) io.out(`not in the policy files (not compared): ${unlisted.join(', ')}`);
  return differ ? 1 : 0;
}
