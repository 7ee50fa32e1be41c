// The embedded broker (aedes) for a standalone gateway and for the demo. It binds loopback
// only: a broker that consoles reach from the network is Mosquitto (or EMQX, HiveMQ, ...) with
// TLS and per-gateway ACLs (deploy/), not an in-process one without authentication.
import { createServer, type Server } from 'node:net';
import { Aedes } from 'aedes';

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

export interface EmbeddedBroker {
  port: number;
  close(): Promise<void>;
}

export class BrokerError extends Error {
  readonly code = 'E_BROKER';
}

export async function startEmbeddedBroker(opts: { host: string; port: number }): Promise<EmbeddedBroker> {
  if (!LOOPBACK.has(opts.host)) {
    throw new BrokerError(`the embedded broker binds loopback only, not ${opts.host}: consoles on the network reach a site broker (Mosquitto with TLS)`);
  }
  const broker = await Aedes.createBroker();
  const server: Server = createServer(broker.handle);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : opts.port;
  return {
    port,
    // aedes first: it closes the client sockets that would keep server.close waiting.
    close: () => new Promise<void>((resolve) => broker.close(() => server.close(() => resolve()))),
  };
}
