// A small TCP relay for the DICOM tests, standing in for the agent's (the lead's relay.ts): a
// net.Server on 127.0.0.1 that connects each peer to the target, feeds both directions through
// a fresh session, writes what the session decides and closes when it says so. No limits, no
// timeouts: the tests bound their own waits.
import { createServer, connect, type Server, type Socket } from 'node:net';
import { createDicomSession } from '../../../agent/protocols/dicom/session.js';
import type { DicomRules } from '../../../agent/protocols/schema.js';
import type { ProtocolAlert, ProtocolRecord, SessionOutput } from '../../../agent/protocols/types.js';

export interface RelayOptions {
  target: number;
  rules: (DicomRules | 'all')[];
  enforce?: boolean;
  maxPduBytes?: number;
  device?: string;
}

export interface Relay {
  port: number;
  alerts: ProtocolAlert[];
  records: ProtocolRecord[];
  /** Sessions ended so far (each writes its record then). */
  ended(): number;
  close(): Promise<void>;
}

const HOST = '127.0.0.1';

export async function startRelay(opts: RelayOptions): Promise<Relay> {
  const alerts: ProtocolAlert[] = [];
  const records: ProtocolRecord[] = [];
  const sockets = new Set<Socket>();
  let ended = 0;

  const server: Server = createServer((peer) => {
    const device = connect({ host: HOST, port: opts.target });
    for (const s of [peer, device]) {
      sockets.add(s);
      s.setNoDelay(true);
      s.on('close', () => sockets.delete(s));
    }
    const session = createDicomSession({
      rules: opts.rules,
      maxPduBytes: opts.maxPduBytes ?? 1024 * 1024,
      ctx: {
        device: opts.device ?? 'ct-01',
        peer: { address: peer.remoteAddress ?? '?', port: peer.remotePort ?? 0 },
        target: { address: HOST, port: opts.target },
        enforce: opts.enforce ?? true,
        alert: (a) => alerts.push(a),
        record: (r) => records.push(r),
        now: () => Date.now(),
      },
    });
    let done = false;
    const finish = (reason: string) => {
      if (done) return;
      done = true;
      session.end(reason);
      ended++;
      // end() lets what was written go out first; destroy() catches a side that never closes.
      peer.end();
      device.end();
      setTimeout(() => {
        peer.destroy();
        device.destroy();
      }, 2000).unref();
    };
    const write = (to: Socket, from: Socket, buffers: Buffer[]) => {
      if (buffers.length === 0 || done) return;
      let ok = true;
      if (buffers.length === 1) ok = to.write(buffers[0]!);
      else {
        // One writev for a PDU in pieces, not a segment per piece.
        to.cork();
        for (const b of buffers) ok = to.write(b);
        to.uncork();
      }
      if (!ok) {
        from.pause();
        to.once('drain', () => from.resume());
      }
    };
    const apply = (out: SessionOutput) => {
      write(device, peer, out.toDevice);
      write(peer, device, out.toPeer);
      if (out.close !== undefined) finish(out.close);
    };
    device.once('connect', () => {
      peer.on('data', (chunk: Buffer) => apply(session.fromPeer(chunk)));
    });
    device.on('data', (chunk: Buffer) => apply(session.fromDevice(chunk)));
    peer.on('end', () => finish('the peer closed'));
    device.on('end', () => finish('the device closed'));
    peer.on('error', (err) => finish(`peer: ${err.message}`));
    device.on('error', (err) => finish(`device: ${err.message}`));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: HOST, port: 0 }, resolve);
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('relay: no port');
  return {
    port: address.port,
    alerts,
    records,
    ended: () => ended,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
