// TEST HELPER, not the product's relay (that is agent/protocols/relay.ts, the lead's): a small
// TCP relay on 127.0.0.1 that runs each connection through a ProtocolSession, so that protocol
// sessions can be tried against real peers before the real relay exists. It writes what the
// session decides, closes when it says so, and calls end() once per connection. No limits, no
// timeouts, no backpressure: the tests send little.
import { connect, createServer, type Server, type Socket } from 'node:net';
import type { Endpoint, ProtocolSession, SessionOutput } from '../../agent/protocols/types.js';

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

/** Listens on 127.0.0.1 (a port the kernel picks) and relays each connection to `target` through `makeSession(peer)`. */
export async function startTestRelay(target: RelayTarget, makeSession: (peer: Endpoint) => ProtocolSession): Promise<TestRelay> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const session = makeSession({ address: client.remoteAddress ?? '?', port: client.remotePort ?? 0 });
    const device = connect({ host: target.host, port: target.port });
    sockets.add(client);
    sockets.add(device);
    let ended = false;
    const finish = (reason: string) => {
      if (ended) return;
      ended = true;
      session.end(reason);
      // end() lets the bytes already written go out first; destroy() after, so nothing lingers.
      client.end(() => client.destroy());
      device.end(() => device.destroy());
    };
    const apply = (out: SessionOutput) => {
      for (const b of out.toDevice) device.write(b);
      for (const b of out.toPeer) client.write(b);
      if (out.close !== undefined) finish(out.close);
    };
    client.on('data', (chunk: Buffer) => {
      if (!ended) apply(session.fromPeer(chunk));
    });
    device.on('data', (chunk: Buffer) => {
      if (!ended) apply(session.fromDevice(chunk));
    });
    client.on('end', () => finish('peer closed'));
    device.on('end', () => finish('device closed'));
    client.on('error', (err) => finish(`peer: ${err.message}`));
    device.on('error', (err) => finish(`device: ${err.message}`));
    client.on('close', () => sockets.delete(client));
    device.on('close', () => sockets.delete(device));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port: 0, host: '127.0.0.1' }, resolve);
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('test relay: no port');
  return {
    port: address.port,
    connections: () => [...sockets].filter((s) => s.localPort === address.port).length,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
