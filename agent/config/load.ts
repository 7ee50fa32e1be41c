// Reads the gateway file and the policy files it names, and validates each against its schema.
// Every mistake in every file is collected before anything is reported.
import { readdirSync, readFileSync } from 'node:fs';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { ConfigError, type Diagnostic } from './diagnostics.js';
import { GatewaySchema, PolicySchema, type GatewayConfig, type PolicyFile } from './schema.js';
import { locate as locateField, parseYaml, zodDiagnostics, type YamlSource } from './yaml-source.js';

export interface LoadedGateway {
  /** Absolute path of gateway.yaml. */
  path: string;
  /** The directory that file names in diagnostics and comments are relative to. */
  root: string;
  source: YamlSource;
  config: GatewayConfig;
}

export interface LoadedPolicy {
  path: string;
  source: YamlSource;
  policy: PolicyFile;
}

export interface LoadedConfig {
  gateway: LoadedGateway;
  policies: LoadedPolicy[];
  diagnostics: Diagnostic[];
}

function readText(path: string, shown: string): { text?: string; diagnostic?: Diagnostic } {
  try {
    return { text: readFileSync(path, 'utf8') };
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'file not found' : (err as Error).message;
    return { diagnostic: { file: shown, line: 1, col: 1, severity: 'error', field: '', message: reason } };
  }
}

/** Expands a policy path; a "*" may stand in the file name, not in directories. */
export function expandPolicyPath(root: string, pattern: string): string[] {
  const full = resolve(root, pattern);
  const name = basename(full);
  if (!name.includes('*')) return [full];
  const dir = dirname(full);
  const re = new RegExp(`^${name.split('*').map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch {
    return [];
  }
  return entries.filter((e) => re.test(e)).sort().map((e) => join(dir, e));
}

export function loadGatewayText(path: string, text: string, root = dirname(path)): { gateway?: LoadedGateway; diagnostics: Diagnostic[] } {
  const shown = relative(root, path) || basename(path);
  const { source, diagnostics } = parseYaml(shown, text);
  if (diagnostics.some((d) => d.severity === 'error')) return { diagnostics };
  const parsed = GatewaySchema.safeParse(source.doc.toJS());
  if (!parsed.success) return { diagnostics: [...diagnostics, ...zodDiagnostics(source, parsed.error)] };
  return { gateway: { path, root, source, config: parsed.data }, diagnostics };
}

export function loadPolicyText(shown: string, path: string, text: string): { policy?: LoadedPolicy; diagnostics: Diagnostic[] } {
  const { source, diagnostics } = parseYaml(shown, text);
  if (diagnostics.some((d) => d.severity === 'error')) return { diagnostics };
  const parsed = PolicySchema.safeParse(source.doc.toJS());
  if (!parsed.success) return { diagnostics: [...diagnostics, ...zodDiagnostics(source, parsed.error)] };
  return { policy: { path, source, policy: parsed.data }, diagnostics };
}

/**
 * Loads gateway.yaml and its policies. Throws ConfigError with every diagnostic when any file
 * fails its schema; cross-file checks (unknown groups, duplicate ids, ...) come in buildModel.
 */
export function loadConfig(gatewayPath: string, opts: { policyPaths?: string[] } = {}): LoadedConfig {
  const path = resolve(gatewayPath);
  const root = dirname(path);
  const read = readText(path, basename(path));
  if (read.diagnostic) throw new ConfigError([read.diagnostic]);
  const g = loadGatewayText(path, read.text ?? '', root);
  if (!g.gateway) throw new ConfigError(g.diagnostics);
  const diagnostics = [...g.diagnostics];
  const policies: LoadedPolicy[] = [];
  const patterns = opts.policyPaths ?? g.gateway.config.policies;
  for (const [i, pattern] of patterns.entries()) {
    const files = opts.policyPaths ? [resolve(pattern)] : expandPolicyPath(root, pattern);
    if (files.length === 0) {
      const at = g.gateway.source;
      diagnostics.push({
        ...locateField(at, ['policies', i]),
        severity: 'error',
        field: `policies[${i}]`,
        message: `"${pattern}" matches no policy file`,
      });
    }
    for (const file of files) {
      const rel = relative(root, file);
      const shown = rel.startsWith('..') ? file : rel;
      const text = readText(file, shown);
      if (text.diagnostic) {
        diagnostics.push(text.diagnostic);
        continue;
      }
      const p = loadPolicyText(shown, file, text.text ?? '');
      diagnostics.push(...p.diagnostics);
      if (p.policy) policies.push(p.policy);
    }
  }
  if (diagnostics.some((d) => d.severity === 'error')) throw new ConfigError(diagnostics);
  return { gateway: g.gateway, policies, diagnostics };
}
