// The product's relay (agent/protocols/relay.ts) on 127.0.0.1 in front of one device, with the
// session each test makes for a peer: the protocol tests run their sessions between real peers
// exactly as the proxy process does, with the relay's limits well out of their way.
import { ProxyRelay } from '../../agent/protocols/relay.js';
import type { Endpoint, ProtocolSession } from '../../agent/protocols/types.js';
import { freePort, LOOPBACK } from '../fixtures/peers.js';

export interface TestRelay {
  readonly port: number;
  /** Connections open now. */
  connections(): number;
  close(): Promise<void>;
}

export interface RelayTarget {
  host: string;
  port: number;
}

export async function startTestRelay(target: RelayTarget, makeSession: (peer: Endpoint) => ProtocolSession): Promise<TestRelay> {
  const relay = new ProxyRelay({
    config: { maxConnections: 64, maxConnectionsPerPeer: 64, connectTimeoutMs: 3000, idleTimeoutSeconds: 60 },
    host: LOOPBACK,
    alert: () => {},
    record: () => {},
    log: { info: () => {}, warn: () => {}, error: (o, m) => console.error(m, o) },
  });
  const port = await freePort();
  await relay.listen({
    key: 'device:1',
    device: 'device',
    app: 'modbus',
    listenPort: port,
    devicePort: target.port,
    addresses: { ipv4: target.host },
    enforce: true,
    session: (ctx) => makeSession(ctx.peer),
  });
  return { port, connections: () => relay.stats.connections, close: () => relay.close() };
}
