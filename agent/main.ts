// The agent (`wardgate run`): builds the controller, starts it, and stops it cleanly on SIGTERM
// or SIGINT (an `offline` status published before disconnecting). With a `nodeRed:` block in the
// gateway file, Node-RED runs beside it (nodered/module.ts), loaded only then.
import { pino } from 'pino';
import { gatewayOnly, type GlobalOptions } from './cli/context.js';
import type { Io } from './cli/io.js';
import { Controller } from './controller.js';
import type { Module } from './module.js';
import { VERSION } from './version.js';

export async function runAgent(opts: GlobalOptions, io: Io, signal?: AbortSignal): Promise<number> {
  const log = pino({ name: 'wardgate', base: { version: VERSION } });
  // The handlers go in before start(): a SIGTERM that comes while modules start must still end
  // in a clean stop, not in Node's default exit.
  const stopRequested = new Promise<void>((resolve) => {
    process.once('SIGTERM', () => resolve());
    process.once('SIGINT', () => resolve());
    signal?.addEventListener('abort', () => resolve());
  });
  // A nodeRed block the agent cannot honour (no login, no flows) is a configuration error, found
  // before anything starts.
  const g = gatewayOnly(opts);
  const nodeRed = g.config.nodeRed?.enabled === true ? await import('./nodered/module.js') : undefined;
  nodeRed?.resolveNodeRed(g.path, g.config, g.stateDir);
  const controller = new Controller(opts, io, log);
  await controller.start();
  let flows: Module | undefined;
  if (nodeRed) {
    const m = new nodeRed.GatewayNodeRed({ gatewayPath: g.path, config: g.config, stateDir: g.stateDir, log, event: (s, k, msg, x) => controller.event(s, k, msg, x) });
    try {
      await m.start();
      flows = m;
    } catch (err) {
      // As the controller does with a module: reported, and the agent runs without it.
      log.error({ module: m.name, err: (err as Error).message }, 'module failed to start; running without it');
      controller.event('warning', 'node-red.failed', `Node-RED did not start, the gateway's flows do not run: ${(err as Error).message}`, { dedupKey: 'node-red.failed' });
      await m.stop();
    }
  }
  await stopRequested;
  await flows?.stop();
  await controller.stop();
  return 0;
}
