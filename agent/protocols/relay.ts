// The inline proxies' TCP side: one listener per proxied device port, each connection relayed
// to the device through a protocol session that decides what passes (types.ts). The relay owns
// what the session does not: connection limits per peer and in all, the device's connect
// timeout, the idle timeout, backpressure both ways (a side that does not read stops the other
// from being read, so nothing grows without bound), TLS on the hospital side, and the rule that
// a session's failure ends its connection, never the agent.
import { createServer as createTcpServer, connect, isIPv4, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type TLSSocket } from 'node:tls';
import { readFileSync } from 'node:fs';
import type { ProtocolsConfig } from './schema.js';
import type { Endpoint, ProtocolAlert, ProtocolRecord, ProtocolSession, SessionContext, SessionOutput } from './types.js';

/** A socket's write buffer beyond this pauses reading from the other side until it drains. */
const HIGH_WATER = 256 * 1024;

export interface RelayTarget {
  /** "<device>:<port>". */
  key: string;
  device: string;
  app: string;
  listenPort: number;
  devicePort: number;
  /** The device's addresses, by family: a peer reaches the device over its own family. */
  addresses: { ipv4?: string; ipv6?: string };
  enforce: boolean;
  tls?: { cert: string; key: string; ca?: string };
  /** The session for one connection, or undefined when the peer is on none of the port's entries. */
  session(ctx: SessionContext): ProtocolSession | undefined;
  /**
   * A device side that is no TCP connection (the Modbus RTU gateway's serial line): each
   * connection's session talks to a link it opens. `name` stands for the device's address.
   */
  link?: { name: string; open(ctx: SessionContext): DeviceLink };
}

/** The device side of one connection when it is not a socket of its own. */
export interface DeviceLink {
  /** Frames the session passed for the device. */
  write(frame: Buffer): void;
  /** Where the device's frames for this connection go. */
  onData(handler: (frame: Buffer) => void): void;
  /** Nothing of this connection is waiting for the device or on its way. */
  idle(): boolean;
  /** The device side ended by itself (its line was closed): the connection ends too. */
  onEnd(handler: (why: string) => void): void;
  /** The connection ended: what it still has waiting is dropped. */
  close(): void;
}

export interface RelayDeps {
  config: Pick<ProtocolsConfig, 'maxConnections' | 'maxConnectionsPerPeer' | 'connectTimeoutMs' | 'idleTimeoutSeconds'>;
  /** Where the listeners bind: "::" (every address: the ruleset's redirect picks the one) by default. */
  host?: string;
  alert(a: ProtocolAlert & { device: string }): void;
  record(r: ProtocolRecord & { device: string }): void;
  log: { info(o: object, m?: string): void; warn(o: object, m?: string): void; error(o: object, m?: string): void };
  now?: () => number;
}

export interface RelayStats {
  connections: number;
  accepted: number;
  refused: number;
  closedByFilter: number;
  sessionErrors: number;
}

/**
 * Writes a session's buffers for one socket. Several (a DICOM command PDU and its data set PDU,
 * which storescu sends in one segment) go out corked, as one writev: one system call and one TCP
 * segment, as a plain relay such as socat forwards them, instead of one each. Sessions hand over
 * whole frames and TCP_NODELAY is on, so nothing else would gather them.
 */
function writeAll(socket: Socket, bufs: readonly Buffer[]): void {
  if (bufs.length === 1) {
    socket.write(bufs[0] as Buffer);
    return;
  }
  socket.cork();
  for (const b of bufs) socket.write(b);
  socket.uncork();
}

/** An IPv4 peer on a dual-stack listener shows as ::ffff:a.b.c.d; the policy knows it as a.b.c.d. */
export function plainAddress(a: string | undefined): string {
  if (a === undefined) return '';
  return a.startsWith('::ffff:') && isIPv4(a.slice(7)) ? a.slice(7) : a;
}

export class ProxyRelay {
  private readonly servers = new Map<string, Server>();
  private readonly perPeer = new Map<string, number>();
  /** Every open socket, with the target it belongs to. */
  private readonly sockets = new Map<Socket, string>();
  readonly stats: RelayStats = { connections: 0, accepted: 0, refused: 0, closedByFilter: 0, sessionErrors: 0 };

  constructor(private readonly deps: RelayDeps) {}

  /** Starts the listener of one target; resolves when it listens. */
  async listen(target: RelayTarget): Promise<void> {
    const onSocket = (s: Socket) => this.accept(target, s);
    let server: Server;
    if (target.tls) {
      const t = target.tls;
      server = createTlsServer(
        {
          cert: readFileSync(t.cert),
          key: readFileSync(t.key),
          minVersion: 'TLSv1.2',
          ...(t.ca !== undefined ? { ca: readFileSync(t.ca), requestCert: true, rejectUnauthorized: true } : {}),
          handshakeTimeout: this.deps.config.connectTimeoutMs,
          allowHalfOpen: true,
        },
        onSocket,
      );
      server.on('tlsClientError', (err: Error, s: TLSSocket) => {
        this.deps.alert({
          device: target.device,
          severity: 'warning',
          kind: `${target.app}.tls-refused`,
          dedupKey: `${target.app}.tls-refused/${target.device}/${plainAddress(s.remoteAddress)}`,
          message: `${plainAddress(s.remoteAddress)} failed the TLS handshake for ${target.key}: ${err.message}`,
          data: { peer: plainAddress(s.remoteAddress), target: target.key, reason: err.message },
        });
      });
    } else {
      server = createTcpServer({ allowHalfOpen: true, pauseOnConnect: true }, onSocket);
    }
    server.maxConnections = this.deps.config.maxConnections;
    // Past maxConnections node closes the connection itself, before accept(): say so, as accept() would.
    server.on('drop', (d?: { remoteAddress?: string }) => {
      const peer = plainAddress(d?.remoteAddress);
      this.stats.refused++;
      this.deps.alert({ device: target.device, severity: 'warning', kind: 'proxy.limit', dedupKey: `proxy.limit/${target.device}/${peer}`, message: `${target.key}: ${this.deps.config.maxConnections} proxied connections open, ${peer} refused`, data: { peer, target: target.key } });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port: target.listenPort, host: this.deps.host ?? '::', ipv6Only: false }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.deps.log.error({ err: err.message, target: target.key }, 'proxy listener failed'));
    this.servers.set(target.key, server);
  }

  /** Stops a target's listener; its open connections are closed as well. */
  async unlisten(key: string): Promise<void> {
    const server = this.servers.get(key);
    if (!server) return;
    this.servers.delete(key);
    // server.close() waits for every connection to end: a peer that holds its connection open
    // would keep the old rules in force until its idle timeout.
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const [socket, k] of this.sockets) if (k === key) socket.destroy();
    await closed;
  }

  listening(): string[] {
    return [...this.servers.keys()];
  }

  async close(): Promise<void> {
    const all = [...this.servers.keys()];
    const closing = all.map((k) => this.unlisten(k));
    for (const s of this.sockets.keys()) s.destroy();
    await Promise.all(closing);
  }

  private accept(target: RelayTarget, peerSocket: Socket): void {
    const now = this.deps.now ?? Date.now;
    const peer: Endpoint = { address: plainAddress(peerSocket.remoteAddress), port: peerSocket.remotePort ?? 0 };
    const family = isIPv4(peer.address) ? 'ipv4' : 'ipv6';
    const deviceAddress = target.link ? target.link.name : target.addresses[family];
    const count = this.perPeer.get(peer.address) ?? 0;
    const refuse = (kind: string, message: string, severity: ProtocolAlert['severity'] = 'warning') => {
      this.stats.refused++;
      this.deps.alert({ device: target.device, severity, kind, dedupKey: `${kind}/${target.device}/${peer.address}`, message, data: { peer: peer.address, target: target.key } });
      peerSocket.resetAndDestroy();
    };
    if (this.stats.connections >= this.deps.config.maxConnections) return refuse('proxy.limit', `${target.key}: ${this.deps.config.maxConnections} proxied connections open, ${peer.address} refused`);
    if (count >= this.deps.config.maxConnectionsPerPeer) {
      return refuse('proxy.limit', `${peer.address} has ${count} connections open through the proxies (limit ${this.deps.config.maxConnectionsPerPeer}); ${target.key} refused`);
    }
    if (deviceAddress === undefined) return refuse('proxy.refused', `${peer.address} reached ${target.key} over ${family}, which the device has no address for`);

    const ctx: SessionContext = {
      device: target.device,
      peer,
      target: { address: deviceAddress, port: target.devicePort },
      enforce: target.enforce,
      alert: (a) => this.deps.alert({ ...a, device: target.device }),
      record: (r) => this.deps.record({ ...r, device: target.device }),
      now,
    };
    let session: ProtocolSession | undefined;
    try {
      session = target.session(ctx);
    } catch (err) {
      this.stats.sessionErrors++;
      this.deps.log.error({ err: (err as Error).message, target: target.key }, 'proxy session could not start');
    }
    if (!session) return refuse('proxy.refused', `${peer.address} is on none of ${target.key}'s allow entries: refused by the proxy`);
    const s = session;

    this.stats.accepted++;
    this.stats.connections++;
    this.perPeer.set(peer.address, count + 1);
    // Nagle's algorithm would hold a second small write (a DICOM data set PDU after its command,
    // a frame sent in pieces) until the first is acknowledged, and the receiver delays that ACK
    // (40 ms on Linux) while it waits for the rest: 1,000 C-STOREs took 46 s instead of 0.2 s.
    // Sessions hand over whole frames, so there is nothing for Nagle to gather.
    peerSocket.setNoDelay(true);
    if (target.link) return this.relayLink(target, target.link.open(ctx), peerSocket, s, peer);
    this.sockets.set(peerSocket, target.key);
    // The device's connection is opened when the session first has bytes for it, not at accept:
    // a connection that carries only what the filter answers itself (malformed or denied
    // requests, garbage, nothing at all) never takes one of the device's few connection slots
    // or a place in its accept queue, whatever an allowed peer's churn. Modbus and DICOM peers
    // speak first, so nothing waits on this.
    let deviceSocket: Socket | undefined;
    let connected = false;
    let ended = false;
    let reason = '';
    const finish = (why: string) => {
      if (ended) return;
      ended = true;
      reason = why;
      this.sockets.delete(peerSocket);
      if (deviceSocket) this.sockets.delete(deviceSocket);
      this.stats.connections--;
      this.left(peer.address);
      try {
        s.end(reason);
      } catch (err) {
        this.stats.sessionErrors++;
        this.deps.log.error({ err: (err as Error).message, target: target.key }, 'proxy session failed at its end');
      }
    };
    const closeBoth = (why: string, graceful: boolean) => {
      if (!ended) finish(why);
      const d = deviceSocket;
      if (graceful) {
        peerSocket.end();
        d?.end();
        // A side that never reads must not hold the connection open.
        setTimeout(() => {
          peerSocket.destroy();
          d?.destroy();
        }, 2000).unref();
      } else {
        peerSocket.destroy();
        d?.destroy();
      }
    };

    // Reading a side pauses while either write buffer is over the mark, and the peer's while
    // the device has not accepted yet (what it sends meanwhile waits in the kernel, not here).
    // A stalled side is read again once both buffers are under the mark. Only a socket over the
    // mark gets a 'drain' listener, and one at a time: a socket that never filled never drains,
    // and a listener per congestion episode on it stayed for the connection's life.
    const congested = () => peerSocket.writableLength > HIGH_WATER || (deviceSocket?.writableLength ?? 0) > HIGH_WATER;
    const stalled = new Set<Socket>();
    const draining = new Set<Socket>();
    const awaitDrain = () => {
      for (const s of [peerSocket, deviceSocket]) {
        if (s === undefined || s.writableLength <= HIGH_WATER || draining.has(s)) continue;
        draining.add(s);
        s.once('drain', () => {
          draining.delete(s);
          unstall();
        });
      }
    };
    const unstall = () => {
      if (ended) return;
      if (congested()) return awaitDrain();
      for (const s of stalled) {
        if (s === peerSocket && deviceSocket !== undefined && !connected) continue;
        stalled.delete(s);
        s.resume();
      }
    };
    const apply = (out: SessionOutput, from: Socket) => {
      if (out.toDevice.length > 0) writeAll(deviceSocket ?? openDevice(), out.toDevice);
      if (out.toPeer.length > 0) writeAll(peerSocket, out.toPeer);
      if (out.close !== undefined) {
        this.stats.closedByFilter++;
        closeBoth(out.close, true);
        return;
      }
      if (congested()) {
        from.pause();
        stalled.add(from);
        awaitDrain();
      }
    };
    const feed = (from: Socket, chunk: Buffer) => {
      if (ended) return;
      let out: SessionOutput;
      try {
        out = from === peerSocket ? s.fromPeer(chunk) : s.fromDevice(chunk);
      } catch (err) {
        this.sessionFailed(target, peer, err as Error);
        closeBoth('session error', false);
        return;
      }
      apply(out, from);
    };
    const onError = (side: string) => (err: Error) => {
      if (side === 'device' && !connected) {
        this.deps.alert({ device: target.device, severity: 'warning', kind: 'proxy.device-unreachable', dedupKey: `proxy.device-unreachable/${target.key}`, message: `the ${target.app} proxy could not reach ${target.key}: ${err.message}`, data: { target: target.key, peer: peer.address, error: err.message } });
      }
      closeBoth(`${side} ${err.message}`, false);
    };

    const openDevice = (): Socket => {
      const d = connect({ host: deviceAddress, port: target.devicePort, allowHalfOpen: true, timeout: this.deps.config.connectTimeoutMs });
      d.setNoDelay(true);
      deviceSocket = d;
      this.sockets.set(d, target.key);
      peerSocket.pause();
      stalled.add(peerSocket);
      d.on('data', (c: Buffer) => feed(d, c));
      d.once('connect', () => {
        connected = true;
        d.setTimeout(this.deps.config.idleTimeoutSeconds * 1000);
        unstall();
      });
      d.on('timeout', () => {
        if (!connected) {
          this.deps.alert({ device: target.device, severity: 'warning', kind: 'proxy.device-unreachable', dedupKey: `proxy.device-unreachable/${target.key}`, message: `the ${target.app} proxy could not reach ${target.key} within ${this.deps.config.connectTimeoutMs} ms`, data: { target: target.key, peer: peer.address } });
          closeBoth('device connect timeout', false);
        } else closeBoth('idle timeout', true);
      });
      // The other side learns of an end once what came before it is written.
      d.on('end', () => {
        if (!ended) peerSocket.end();
      });
      d.on('error', onError('device'));
      // A side that closes ends the other once its bytes are written; one that never reads is cut.
      d.on('close', () => {
        if (peerSocket.destroyed) return finish(reason || 'closed');
        peerSocket.end();
        setTimeout(() => peerSocket.destroy(), 2000).unref();
      });
      return d;
    };

    peerSocket.on('data', (c: Buffer) => feed(peerSocket, c));
    peerSocket.setTimeout(this.deps.config.idleTimeoutSeconds * 1000, () => closeBoth('idle timeout', true));
    peerSocket.on('end', () => {
      if (ended) return;
      // With no device connection there is nothing to pass the end on to: the filter's own
      // answers are written, then the connection ends.
      if (deviceSocket) deviceSocket.end();
      else peerSocket.end();
    });
    peerSocket.on('error', onError('peer'));
    peerSocket.on('close', () => {
      const d = deviceSocket;
      if (d === undefined || d.destroyed) return finish(reason || 'closed');
      d.end();
      setTimeout(() => d.destroy(), 2000).unref();
    });
    peerSocket.resume();
  }

  private left(peer: string): void {
    const left = (this.perPeer.get(peer) ?? 1) - 1;
    if (left <= 0) this.perPeer.delete(peer);
    else this.perPeer.set(peer, left);
  }

  private sessionFailed(target: RelayTarget, peer: Endpoint, err: Error): void {
    this.stats.sessionErrors++;
    this.deps.log.error({ err: err.message, stack: err.stack, target: target.key, peer: peer.address }, 'proxy session failed: connection closed');
    this.deps.alert({ device: target.device, severity: 'warning', kind: 'proxy.error', dedupKey: `proxy.error/${target.key}`, message: `the ${target.app} proxy for ${target.key} failed on a connection from ${peer.address} and closed it`, data: { peer: peer.address, target: target.key, error: err.message } });
  }

  /**
   * A connection whose device side is a link (the RTU gateway): the peer's socket, the session
   * between, the link's frames back. The link answers every request it takes (with the device's
   * answer or the gateway's exception), so a peer that half-closes is ended once it is idle.
   */
  private relayLink(target: RelayTarget, link: DeviceLink, peerSocket: Socket, s: ProtocolSession, peer: Endpoint): void {
    this.sockets.set(peerSocket, target.key);
    let ended = false;
    let peerEnded = false;
    const finish = (why: string, graceful: boolean) => {
      if (ended) return;
      ended = true;
      this.sockets.delete(peerSocket);
      this.stats.connections--;
      this.left(peer.address);
      link.close();
      try {
        s.end(why);
      } catch (err) {
        this.stats.sessionErrors++;
        this.deps.log.error({ err: (err as Error).message, target: target.key }, 'proxy session failed at its end');
      }
      if (graceful) {
        peerSocket.end();
        setTimeout(() => peerSocket.destroy(), 2000).unref();
      } else peerSocket.destroy();
    };
    const feed = (fromPeer: boolean, chunk: Buffer) => {
      if (ended) return;
      let out: SessionOutput;
      try {
        out = fromPeer ? s.fromPeer(chunk) : s.fromDevice(chunk);
      } catch (err) {
        this.sessionFailed(target, peer, err as Error);
        finish('session error', false);
        return;
      }
      for (const b of out.toDevice) link.write(b);
      if (out.toPeer.length > 0) writeAll(peerSocket, out.toPeer);
      if (out.close !== undefined) {
        this.stats.closedByFilter++;
        finish(out.close, true);
        return;
      }
      if (peerEnded && link.idle()) finish('peer closed', true);
      else if (peerSocket.writableLength > HIGH_WATER && !peerSocket.isPaused()) {
        peerSocket.pause();
        peerSocket.once('drain', () => {
          if (!ended) peerSocket.resume();
        });
      }
    };
    link.onData((frame) => feed(false, frame));
    link.onEnd((why) => finish(why, true));
    peerSocket.on('data', (c: Buffer) => feed(true, c));
    peerSocket.setTimeout(this.deps.config.idleTimeoutSeconds * 1000, () => finish('idle timeout', true));
    peerSocket.on('end', () => {
      peerEnded = true;
      if (link.idle()) finish('peer closed', true);
    });
    peerSocket.on('error', (err) => finish(`peer ${err.message}`, false));
    peerSocket.on('close', () => finish('peer closed', false));
    peerSocket.resume();
  }
}
