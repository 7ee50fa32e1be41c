// The agent (`wardgate run`). The kernel enforces; the agent manages. For now it finishes
// commit-confirm changes left pending by a killed process, and keeps the committed ruleset
// loaded: if the wardgate table disappears or is altered behind its back, it loads the
// committed ruleset again and says so.
import { pino } from 'pino';
import { chooseBackend, manager, stateDirOnly, type GlobalOptions } from './cli/context.js';
import type { Io } from './cli/io.js';
import { VERSION } from './version.js';

export interface AgentOptions extends GlobalOptions {
  /** How often to look at the kernel's table, in ms. */
  intervalMs?: number;
}

export async function runAgent(opts: AgentOptions, io: Io, signal?: AbortSignal): Promise<number> {
  const log = pino({ name: 'wardgate', base: { version: VERSION } });
  const stateDir = stateDirOnly(opts);
  const { backend, notice } = chooseBackend(opts, stateDir);
  if (notice) io.err(notice);
  const m = manager(backend, stateDir);
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  signal?.addEventListener('abort', onSignal);
  log.info({ stateDir, backend: backend.description }, 'agent started');

  let degraded = false;
  const tick = async () => {
    const r = await m.expireIfDue();
    if (r.rolledBack) log.warn({ change: r.rolledBack.id }, 'rolled back a change that was not confirmed in time');
    const s = await m.status();
    if (s.pending) return;
    if (s.kernel === 'failsafe') {
      // Restoring again would load the same fail-safe ruleset: say so once, and wait for a
      // person to apply and confirm a policy.
      if (!degraded) log.error('DEGRADED: the fail-safe ruleset is loaded; apply and confirm a policy to leave it');
      degraded = true;
      return;
    }
    degraded = false;
    if (s.committed && (s.kernel === 'absent' || s.kernel === 'drifted')) {
      log.error({ kernel: s.kernel }, 'the wardgate table is not the committed ruleset: restoring it');
      const restored = await m.restore();
      log.warn({ source: restored.source, reason: restored.reason }, 'restored');
    }
  };
  while (!stop.signal.aborted) {
    try {
      await tick();
    } catch (err) {
      log.error({ err }, 'policy check failed');
    }
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, opts.intervalMs ?? 1000);
      stop.signal.addEventListener('abort', () => {
        clearTimeout(t);
        resolve();
      });
    });
  }
  log.info('agent stopped');
  return 0;
}
