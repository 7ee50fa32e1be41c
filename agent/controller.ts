// One controller builds every module of the agent and wires them together; each module has
// start()/stop(), and its constructor only stores what it is given. A module whose start fails
// is reported and left out; it does not take the agent down (the kernel keeps enforcing).
import type { Logger } from 'pino';
import { chooseBackend, manager, stateDirOnly, type GlobalOptions } from './cli/context.js';
import type { Io } from './cli/io.js';
import { PolicyKeeper } from './policy/keeper.js';

interface Module {
  name: string;
  start(): Promise<void> | void;
  stop(): Promise<void> | void;
}

export class Controller {
  private readonly started: Module[] = [];

  constructor(
    private readonly opts: GlobalOptions,
    private readonly io: Io,
    private readonly log: Logger,
  ) {}

  private async startModule(m: Module): Promise<void> {
    try {
      await m.start();
      this.started.push(m);
    } catch (err) {
      this.log.error({ module: m.name, err: (err as Error).message }, 'module failed to start; running without it');
    }
  }

  async start(): Promise<void> {
    const stateDir = stateDirOnly(this.opts);
    const { backend, notice } = chooseBackend(this.opts, stateDir);
    if (notice) this.io.err(notice);
    const policy = manager(backend, stateDir);
    this.log.info({ stateDir, backend: backend.description }, 'agent started');
    const keeper = new PolicyKeeper(policy, this.log);
    await this.startModule({ name: 'policy', start: () => keeper.start(), stop: () => keeper.stop() });
  }

  async stop(): Promise<void> {
    for (const m of this.started.splice(0).reverse()) {
      try {
        await m.stop();
      } catch (err) {
        this.log.error({ module: m.name, err: (err as Error).message }, 'module failed to stop cleanly');
      }
    }
    this.log.info({}, 'agent stopped');
  }
}
