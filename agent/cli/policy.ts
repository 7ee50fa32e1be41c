// `wardgate policy check | print | diff | apply | confirm | rollback | status | restore | schema`
import { spawn } from 'node:child_process';
import { mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { createTwoFilesPatch } from 'diff';
import { formatDiagnostic } from '../config/diagnostics.js';
import { jsonSchemas } from '../config/schema.js';
import { type PolicyManager, type PolicyStatus } from '../policy/apply.js';
import { bridgeProxyProblems, ensureBridgeNetfilter } from '../policy/bridge.js';
import { NftError } from '../policy/backend.js';
import { writeFileAtomic } from '../util/fsx.js';
import { chooseBackend, loadAndCompile, manager, stateDirOnly, UsageError, type GlobalOptions, type Loaded } from './context.js';
import type { Io } from './io.js';
import { PACKAGE_ROOT } from '../version.js';

export interface PolicyOptions extends GlobalOptions {
  json?: boolean;
  failsafe?: boolean;
  timeout?: string;
  id?: string;
  outDir?: string;
  device?: string;
  since?: string;
  observed?: boolean;
  out?: string;
}

function printWarnings(l: Loaded, io: Io): void {
  for (const w of l.model.warnings) io.err(formatDiagnostic(w));
}

function summary(l: Loaded): string {
  const s = l.compiled.stats;
  return `${s.devices} device(s), ${s.entries} allow entr${s.entries === 1 ? 'y' : 'ies'}, ${s.elements} set element(s)`;
}

function spawnWatcher(argv: readonly string[], stateDir: string): number | undefined {
  const logDir = join(stateDir, 'ruleset');
  mkdirSync(logDir, { recursive: true });
  const log = openSync(join(logDir, 'watcher.log'), 'a');
  const cli = join(PACKAGE_ROOT, 'bin', 'wardgate.js');
  const child = spawn(process.execPath, [cli, 'policy', '_watch', ...argv], { detached: true, stdio: ['ignore', log, log] });
  child.unref();
  return child.pid;
}

function globalArgv(opts: GlobalOptions, path: string, stateDir: string): string[] {
  const argv = ['--gateway', path, '--state-dir', stateDir];
  if (opts.backend) argv.push('--backend', opts.backend);
  if (opts.netns) argv.push('--netns', opts.netns);
  return argv;
}

function formatStatus(s: PolicyStatus): string {
  const lines = [`backend:   ${s.backend}`];
  const kernel = {
    absent: 'no wardgate table is loaded',
    committed: 'the committed ruleset',
    pending: 'a pending ruleset, not yet confirmed',
    failsafe: 'DEGRADED: the fail-safe ruleset (the committed one could not be loaded; see docs/fail-modes.md)',
    drifted: 'DRIFTED: the loaded table differs from the committed and pending rulesets',
  }[s.kernel];
  lines.push(`kernel:    ${kernel}`);
  if (s.committed) lines.push(`committed: ${s.committed.committedAt}, policy ${s.committed.policyHash.slice(0, 16)}, wardgate ${s.committed.version}`);
  else lines.push('committed: nothing committed yet');
  if (s.pending) {
    lines.push(`pending:   change ${s.pending.id}, policy ${s.pending.policyHash.slice(0, 16)}, ${s.pending.secondsLeft} s left to confirm`);
  }
  return lines.join('\n');
}

export async function policyCommand(sub: string | undefined, opts: PolicyOptions, io: Io): Promise<number> {
  if (sub === 'schema') {
    const schemas = jsonSchemas();
    if (opts.outDir) {
      writeFileAtomic(join(opts.outDir, 'gateway.schema.json'), `${JSON.stringify(schemas.gateway, null, 2)}\n`);
      writeFileAtomic(join(opts.outDir, 'policy.schema.json'), `${JSON.stringify(schemas.policy, null, 2)}\n`);
      io.out(`wrote gateway.schema.json and policy.schema.json to ${opts.outDir}`);
    } else io.out(JSON.stringify(schemas.policy, null, 2));
    return 0;
  }

  if (sub === 'learn' || (sub === 'diff' && opts.observed)) {
    const { learnCommand, observedDiffCommand } = await import('./learn.js');
    return sub === 'learn' ? learnCommand(opts, io) : observedDiffCommand(opts, io);
  }
  if (sub === undefined || !COMMANDS.has(sub)) {
    throw new UsageError(`unknown policy command "${sub ?? ''}": use check, print, diff, apply, confirm, rollback, status, restore, learn or schema`);
  }
  if (STATE_ONLY.has(sub)) return stateCommand(sub, opts, io);
  const l = loadAndCompile(opts, sub === 'apply');
  printWarnings(l, io);
  const { backend, notice } = chooseBackend(opts, l.stateDir);
  if (notice) io.err(notice);
  const m: PolicyManager = manager(backend, l.stateDir);

  switch (sub) {
    case 'check': {
      await m.check(l.compiled);
      await m.check(l.failsafe);
      if (l.model.gateway.mode === 'bridge') for (const note of await ensureBridgeNetfilter(backend, false)) io.err(note);
      for (const problem of await bridgeProxyProblems(backend, l.model)) io.err(`warning: ${problem}`);
      const by = backend.kind === 'nft' ? 'nft -c accepted it' : 'not checked by nft (dry run)';
      io.out(`ok: ${summary(l)}; ${by}`);
      return 0;
    }
    case 'print':
      io.out((opts.failsafe ? l.failsafe : l.compiled).text.trimEnd());
      return 0;
    case 'diff': {
      let before = '';
      try {
        before = m.committedText() ?? '';
      } catch (err) {
        io.err(`warning: ${(err as Error).message}`);
      }
      if (before === l.compiled.text) {
        io.out('no difference from the committed ruleset');
        return 0;
      }
      io.out(createTwoFilesPatch('committed', 'compiled', before, l.compiled.text, '', '', { context: 2 }).trimEnd());
      return 1;
    }
    case 'apply': {
      const timeout = opts.timeout === undefined ? l.model.gateway.commitConfirm.timeoutSeconds : Number(opts.timeout);
      if (!Number.isInteger(timeout) || timeout < 1 || timeout > 3600) throw new UsageError('--timeout takes whole seconds from 1 to 3600');
      if (l.model.gateway.mode === 'bridge') for (const note of await ensureBridgeNetfilter(backend, true)) io.out(note);
      const problems = await bridgeProxyProblems(backend, l.model);
      if (problems.length > 0) throw new NftError(`not applied: ${problems.join('; ')}`);
      const pending = await m.apply(l.compiled, l.failsafe, l.model.hash, timeout);
      const pid = spawnWatcher(globalArgv(opts, l.path, l.stateDir), l.stateDir);
      if (pid !== undefined) m.setWatcher(pending.id, pid);
      io.out(`applied change ${pending.id} (${summary(l)}) to ${backend.description}`);
      io.out(`confirm within ${timeout} s with "wardgate policy confirm", or it is rolled back at ${new Date(pending.deadline).toISOString()}`);
      return 0;
    }
    default:
      throw new UsageError(`unknown policy command "${sub}"`);
  }
}

/**
 * Commands that work on the state directory and the kernel alone. They never read the policy
 * files: a broken policy must not stop a rollback, a confirmation or the boot-time restore.
 */
const STATE_ONLY = new Set(['confirm', 'rollback', 'status', 'restore', '_watch']);
const COMMANDS = new Set(['check', 'print', 'diff', 'apply', ...STATE_ONLY]);

async function stateCommand(sub: string, opts: PolicyOptions, io: Io): Promise<number> {
  const stateDir = stateDirOnly(opts);
  const { backend, notice } = chooseBackend(opts, stateDir);
  if (notice) io.err(notice);
  const m: PolicyManager = manager(backend, stateDir);
  switch (sub) {
    case 'confirm': {
      const info = await m.confirm();
      io.out(`committed: policy ${info.policyHash.slice(0, 16)} is now the ruleset restored at boot`);
      return 0;
    }
    case 'rollback': {
      const rolled = await m.rollback('rolled back by hand');
      if (!rolled) {
        io.err('nothing to roll back: no change is waiting for confirmation');
        return 1;
      }
      io.out(`rolled back change ${rolled.id}: ${rolled.previous === 'table' ? 'the previous table is back' : 'the table is removed, as before'}`);
      return 0;
    }
    case 'status': {
      await m.expireIfDue();
      const s = await m.status();
      io.out(opts.json ? JSON.stringify(s, null, 2) : formatStatus(s));
      return 0;
    }
    case 'restore': {
      const r = await m.restore();
      if (r.source === 'committed') io.out('restored the committed ruleset');
      else if (r.source === 'failsafe') io.err(`DEGRADED: loaded the fail-safe ruleset because ${r.reason ?? 'the committed ruleset could not be loaded'}`);
      else io.err(`nothing restored: ${r.reason ?? 'no committed ruleset'}`);
      return r.source === 'committed' ? 0 : 1;
    }
    case '_watch': {
      // The commit-confirm timer: sleeps until the window closes, then rolls back.
      for (;;) {
        const r = await m.expireIfDue();
        if (r.rolledBack) {
          io.out(`${new Date().toISOString()} rolled back change ${r.rolledBack.id}: not confirmed in time`);
          return 0;
        }
        if (r.msLeft === undefined) return 0;
        await new Promise((res) => setTimeout(res, Math.min(r.msLeft as number, 1000) + 20));
      }
    }
    default:
      throw new UsageError(`unknown policy command "${sub}"`);
  }
}

export type { Io };
