// The agent's policy module: finishes commit-confirm changes left pending by a killed process,
// and keeps the committed ruleset loaded. If the wardgate table disappears or is altered behind
// its back, it loads the committed ruleset again and says so. A loaded fail-safe ruleset is left
// alone (loading it again would change nothing): a person applies and confirms a policy.
import type { PolicyManager, PolicyStatus } from './apply.js';

export interface KeeperLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export type KeeperEvent =
  | { kind: 'policy.rollback'; change: string }
  | { kind: 'policy.drift'; kernel: PolicyStatus['kernel']; restored: string; reason?: string }
  | { kind: 'policy.degraded' };

export class PolicyKeeper {
  private timer: NodeJS.Timeout | undefined;
  private degraded = false;
  private running: Promise<void> | undefined;
  private last: PolicyStatus | undefined;

  constructor(
    private readonly manager: PolicyManager,
    private readonly log: KeeperLogger,
    private readonly onEvent: (e: KeeperEvent) => void = () => {},
    private readonly intervalMs = 1000,
  ) {}

  /** The status seen at the last tick. */
  get status(): PolicyStatus | undefined {
    return this.last;
  }

  start(): void {
    const loop = () => {
      this.running = this.tick()
        .catch((err: unknown) => this.log.error({ err: (err as Error).message }, 'policy check failed'))
        .finally(() => {
          if (this.timer !== undefined) this.timer = setTimeout(loop, this.intervalMs);
        });
    };
    this.timer = setTimeout(loop, 0);
  }

  async stop(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
  }

  async tick(): Promise<void> {
    const r = await this.manager.expireIfDue();
    if (r.rolledBack) {
      this.log.warn({ change: r.rolledBack.id }, 'rolled back a change that was not confirmed in time');
      this.onEvent({ kind: 'policy.rollback', change: r.rolledBack.id });
    }
    const s = await this.manager.status();
    this.last = s;
    if (s.pending) return;
    if (s.kernel === 'failsafe') {
      if (!this.degraded) {
        this.log.error({}, 'DEGRADED: the fail-safe ruleset is loaded; apply and confirm a policy to leave it');
        this.onEvent({ kind: 'policy.degraded' });
      }
      this.degraded = true;
      return;
    }
    this.degraded = false;
    if (s.committed && (s.kernel === 'absent' || s.kernel === 'drifted')) {
      this.log.error({ kernel: s.kernel }, 'the wardgate table is not the committed ruleset: restoring it');
      const restored = await this.manager.restore();
      this.log.warn({ source: restored.source, reason: restored.reason }, 'restored');
      this.onEvent({ kind: 'policy.drift', kernel: s.kernel, restored: restored.source, ...(restored.reason ? { reason: restored.reason } : {}) });
      this.last = await this.manager.status();
    }
  }
}
