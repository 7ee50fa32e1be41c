// What every policy command needs: the configuration loaded and checked, the ruleset compiled,
// and the backend chosen. Kept apart from the commands so that the agent's main can share it.
import { existsSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { loadConfig, loadGatewayText } from '../config/load.js';
import type { GatewayConfig } from '../config/schema.js';
import { ConfigError } from '../config/diagnostics.js';
import { readIfExists } from '../util/fsx.js';
import { openAuditLog } from '../audit/log.js';
import type { AuditSink } from '../audit/types.js';
import { userInfo } from 'node:os';
import { DryRunBackend, NftBackend, nftAvailable, type Backend } from '../policy/backend.js';
import { PolicyManager } from '../policy/apply.js';
import { compile, type CompiledRuleset } from '../policy/compile.js';
import { buildModel, type Model } from '../policy/model.js';
import { VERSION } from '../version.js';
import { assignListenPorts } from '../protocols/ports.js';

export interface GlobalOptions {
  gateway?: string;
  backend?: string;
  netns?: string;
  stateDir?: string;
}

export class UsageError extends Error {
  readonly code = 'E_USAGE';
}

export function gatewayPath(opts: GlobalOptions): string {
  const explicit = opts.gateway ?? process.env.WARDGATE_GATEWAY;
  if (explicit !== undefined && explicit !== '') return resolve(explicit);
  const found = ['gateway.yaml', '/etc/wardgate/gateway.yaml'].find((c) => existsSync(c));
  if (found) return resolve(found);
  throw new UsageError('no gateway file: pass --gateway PATH (or set WARDGATE_GATEWAY); see gateway.example.yaml');
}

export interface Loaded {
  path: string;
  model: Model;
  compiled: CompiledRuleset;
  failsafe: CompiledRuleset;
  stateDir: string;
}

/**
 * persistPorts: the caller is about to load the ruleset, so new proxy listen-port assignments
 * are written to the state directory first (protocols/ports.ts).
 */
export function loadAndCompile(opts: GlobalOptions, persistPorts = false): Loaded {
  const path = gatewayPath(opts);
  const loaded = loadConfig(path);
  const model = buildModel(loaded);
  const stateDir = stateDirOf(opts, model.gateway.stateDir, loaded.gateway.root);
  const keys = model.devices.flatMap((d) => d.proxies.filter((p) => p.rtu === undefined).map((p) => p.key));
  const listenPorts = keys.length > 0 ? assignListenPorts(model.gateway.protocols.listenPorts, stateDir, keys, { persist: persistPorts }) : undefined;
  return {
    path,
    model,
    compiled: compile(model, { version: VERSION, ...(listenPorts ? { listenPorts } : {}) }),
    failsafe: compile(model, { version: VERSION, failsafe: true }),
    stateDir,
  };
}

export function stateDirOf(opts: GlobalOptions, configured: string, root: string): string {
  const dir = opts.stateDir ?? process.env.WARDGATE_STATE_DIR ?? configured;
  return isAbsolute(dir) ? dir : join(root, dir);
}

/** The gateway file alone (policies are not read): a broken policy must not stop the agent. */
export function gatewayOnly(opts: GlobalOptions): { path: string; config: GatewayConfig; stateDir: string } {
  const path = gatewayPath(opts);
  const text = readIfExists(path);
  if (text === undefined) throw new UsageError(`${path}: file not found`);
  const g = loadGatewayText(path, text);
  if (!g.gateway) throw new ConfigError(g.diagnostics);
  return { path, config: g.gateway.config, stateDir: stateDirOf(opts, g.gateway.config.stateDir, g.gateway.root) };
}

/** The state directory, from --state-dir or the gateway file alone. */
export function stateDirOnly(opts: GlobalOptions): string {
  const explicit = opts.stateDir ?? process.env.WARDGATE_STATE_DIR;
  if (explicit !== undefined) return resolve(explicit);
  return gatewayOnly(opts).stateDir;
}

export function chooseBackend(opts: GlobalOptions, stateDir: string): { backend: Backend; notice?: string } {
  const kind = opts.backend ?? process.env.WARDGATE_BACKEND ?? 'auto';
  const netns = opts.netns ?? process.env.WARDGATE_NETNS;
  const dry = () => new DryRunBackend(join(stateDir, 'dry-run'));
  if (kind === 'dry-run') return { backend: dry() };
  if (kind === 'nft') return { backend: new NftBackend(netns) };
  if (kind !== 'auto') throw new UsageError(`--backend must be auto, nft or dry-run, not "${kind}"`);
  if (netns) return { backend: new NftBackend(netns) };
  const probe = nftAvailable();
  if (probe.ok) return { backend: new NftBackend() };
  const backend = dry();
  return { backend, notice: `DRY RUN: ${probe.reason ?? 'nft unavailable'}; ${backend.description}` };
}

/** The policy manager; changes are recorded in the audit log as `actor` (default: this user). */
export function manager(backend: Backend, stateDir: string, audit?: AuditSink, actor?: string): PolicyManager {
  return new PolicyManager({
    stateDir,
    backend,
    version: VERSION,
    audit: audit ?? openAuditLog(join(stateDir, 'audit')),
    actor: actor ?? `cli:${userInfo().username}`,
  });
}
