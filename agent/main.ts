// The agent (`wardgate run`): builds the controller, starts it, and stops it cleanly on SIGTERM
// or SIGINT (an `offline` status published before disconnecting).
import { pino } from 'pino';
import type { GlobalOptions } from './cli/context.js';
import type { Io } from './cli/io.js';
import { Controller } from './controller.js';
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
  const controller = new Controller(opts, io, log);
  await controller.start();
  await stopRequested;
  await controller.stop();
  return 0;
}
