// Node-RED embedded in a process of its own, as both the console (agent/console/nodered-main.ts)
// and the gateway's flows (agent/nodered/gateway-main.ts) run it: loaded from the optional
// dependency, locked down, served over HTTP, and stopped with its parent.
import { createServer, type RequestListener } from 'node:http';
import { createRequire } from 'node:module';

export interface NodeRed {
  init(server: ReturnType<typeof createServer>, settings: Record<string, unknown>): void;
  start(): Promise<void>;
  stop(): Promise<void>;
  httpAdmin: RequestListener;
  httpNode: RequestListener;
}

interface Express {
  (): RequestListener & { use(path: string, handler: RequestListener): void; disable(setting: string): void };
}

/** Node-RED, and a require() that resolves the packages it brings (express, bcryptjs). */
export function loadNodeRed(): { RED: NodeRed; fromNodeRed: NodeJS.Require } {
  const require = createRequire(import.meta.url);
  try {
    return { RED: require('node-red') as NodeRed, fromNodeRed: createRequire(require.resolve('node-red')) };
  } catch (err) {
    throw new Error(`node-red is not installed (an optional dependency: npm ci without --omit=optional): ${(err as Error).message}`);
  }
}

/** A Node-RED that calls nowhere but where its flows point: no update checks, no installs from the editor. */
export const LOCKED_DOWN = {
  telemetry: { enabled: false },
  diagnostics: { enabled: false },
  externalModules: { autoInstall: false, palette: { allowInstall: false }, modules: { allowInstall: false } },
  functionExternalModules: false,
  editorTheme: { tours: false, projects: { enabled: false } },
} as const;

/**
 * Serves the runtime on host:port (0: a free port) and starts the flows; returns its base URL.
 * `nodeAuth` guards the flows' own endpoints. The process stops on SIGTERM, SIGINT and, when a
 * parent started it over IPC, when the channel closes (a parent killed with SIGKILL included):
 * RED.stop() stops the flows and flushes the file context store, 8 s at most.
 */
export async function serveNodeRed(
  RED: NodeRed,
  fromNodeRed: NodeJS.Require,
  settings: { httpAdminRoot: string; httpNodeRoot: string } & Record<string, unknown>,
  opts: { port: number; host: string; nodeAuth?: RequestListener },
): Promise<string> {
  const app = (fromNodeRed('express') as Express)();
  app.disable('x-powered-by');
  const server = createServer(app);
  RED.init(server, settings);
  app.use(settings.httpAdminRoot, RED.httpAdmin);
  if (opts.nodeAuth) app.use(settings.httpNodeRoot, opts.nodeAuth);
  app.use(settings.httpNodeRoot, RED.httpNode);
  await new Promise<void>((ok, fail) => {
    server.once('error', fail);
    server.listen(opts.port, opts.host, () => ok());
  });
  await RED.start();

  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    void RED.stop()
      .catch(() => undefined)
      .then(() => {
        server.closeAllConnections();
        server.close(() => process.exit(0));
      });
    setTimeout(() => process.exit(0), 8000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  if (process.send !== undefined) process.on('disconnect', stop);

  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : opts.port;
  return `http://${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${port}`;
}
