// The product's relay (agent/protocols/relay.ts) over loopback, with the Modbus filter and a real
// Modbus device (modbus-serial's ServerTCP): when it opens the device's connection, and the
// connection limits. No root needed; the namespace tests (proxy-netns, load-netns) cover the
// ruleset's redirect and the proxy process.
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createModbusSession } from '../../agent/protocols/modbus/session.js';
import { ProxyRelay, type RelayDeps } from '../../agent/protocols/relay.js';
import { ModbusRulesSchema, type ProtocolsConfig } from '../../agent/protocols/schema.js';
import type { ProtocolAlert, ProtocolRecord } from '../../agent/protocols/types.js';
import { freePort, LOOPBACK, Peers, startModbusServer, waitFor } from '../fixtures/peers.js';
import { adu, readHolding, writeRegister } from './modbus/frames.js';

const RULES = [ModbusRulesSchema.parse({ profile: 'read-write', unitIds: [1], write: { holdingRegisters: ['10-19'] } })];
const LIMITS: RelayDeps['config'] = { maxConnections: 512, maxConnectionsPerPeer: 16, connectTimeoutMs: 1000, idleTimeoutSeconds: 30 };

interface Setup {
  relay: ProxyRelay;
  port: number;
  alerts: (ProtocolAlert & { device: string })[];
  records: (ProtocolRecord & { device: string })[];
  /** Connections the device has accepted so far. */
  deviceAccepted: () => number;
}

/** A client connection to the relay: what it receives, whether it was reset or closed. */
class Client {
  readonly socket: Socket;
  received = Buffer.alloc(0);
  error: string | undefined;
  closed = false;
  constructor(port: number) {
    this.socket = connect({ host: LOOPBACK, port });
    this.socket.on('data', (d: Buffer) => (this.received = Buffer.concat([this.received, d])));
    this.socket.on('error', (e: NodeJS.ErrnoException) => (this.error = e.code ?? e.message));
    this.socket.on('close', () => (this.closed = true));
  }
  opened(): Promise<void> {
    return new Promise((resolve, reject) => {
      if (!this.socket.connecting) return resolve();
      this.socket.once('connect', () => resolve());
      this.socket.once('error', reject);
    });
  }
  /** Frames received so far ([TCP] 3.1.3: the MBAP length field says where each ends). */
  frames(): Buffer[] {
    const out: Buffer[] = [];
    let b = this.received;
    while (b.length >= 6 && b.length >= 6 + b.readUInt16BE(4)) {
      out.push(b.subarray(0, 6 + b.readUInt16BE(4)));
      b = b.subarray(6 + b.readUInt16BE(4));
    }
    return out;
  }
}

describe('ProxyRelay', () => {
  const peers = new Peers();
  const clients: Client[] = [];
  let relay: ProxyRelay | undefined;
  const holding = Array.from({ length: 100 }, (_, i) => i);

  async function setup(limits: Partial<RelayDeps['config']> = {}, opts: { noDevice?: boolean } = {}): Promise<Setup> {
    const devicePort = await freePort();
    let accepted = 0;
    if (!opts.noDevice) {
      const device = await startModbusServer(peers, devicePort, 1, {
        getHoldingRegister: (addr: number) => holding[addr] ?? 0,
        setRegister: (addr: number, value: number) => {
          holding[addr] = value;
        },
      });
      // ServerTCP has no event per connection; its net.Server does.
      (device.server as unknown as { _server: Server })._server.on('connection', () => accepted++);
    }
    const alerts: Setup['alerts'] = [];
    const records: Setup['records'] = [];
    const r = new ProxyRelay({
      config: { ...LIMITS, ...limits },
      host: LOOPBACK,
      alert: (a) => alerts.push(a),
      record: (x) => records.push(x),
      log: { info: () => {}, warn: () => {}, error: () => {} },
    });
    relay = r;
    const port = await freePort();
    const config = { modbus: { maxPendingRequests: 32 } } as ProtocolsConfig;
    await r.listen({
      key: 'plc-01:502',
      device: 'plc-01',
      app: 'modbus',
      listenPort: port,
      devicePort,
      addresses: { ipv4: LOOPBACK },
      enforce: true,
      session: (ctx) => createModbusSession({ rules: RULES, ctx, maxPendingRequests: config.modbus.maxPendingRequests }),
    });
    return { relay: r, port, alerts, records, deviceAccepted: () => accepted };
  }

  const client = (port: number) => {
    const c = new Client(port);
    clients.push(c);
    return c;
  };

  beforeEach(() => holding.forEach((_, i) => (holding[i] = i)));

  afterEach(async () => {
    for (const c of clients.splice(0)) c.socket.destroy();
    await relay?.close();
    relay = undefined;
    await peers.stopAll();
  });

  it('a connection that carries only requests the filter answers itself never opens one to the device', async () => {
    const s = await setup();
    const c = client(s.port);
    await c.opened();
    // Unit 2 (not allowed), a write outside 10-19, a read of 126 registers (malformed, MAP 6.3).
    c.socket.write(Buffer.concat([readHolding(1, 2, 0, 1), writeRegister(2, 1, 50, 7), readHolding(3, 1, 0, 126)]));
    await waitFor('three exceptions', () => c.frames().length === 3);
    expect(c.frames().map((f) => [f.readUInt16BE(0), f[7], f[8]])).toEqual([
      [1, 0x83, 0x02],
      [2, 0x86, 0x02],
      [3, 0x83, 0x03],
    ]);
    c.socket.end();
    await waitFor('the connection to end', () => c.closed && s.relay.stats.connections === 0);
    expect(s.deviceAccepted()).toBe(0);
    expect(s.records.find((r) => r.kind === 'modbus.session')).toMatchObject({ requests: 3, forwarded: 0, denied: 2, malformed: 1 });
  });

  it('unlisten ends the target\'s open connections at once (new rules must not wait for idle peers)', async () => {
    const s = await setup();
    const c = client(s.port);
    await c.opened();
    c.socket.write(readHolding(1, 1, 0, 1));
    await waitFor('the answer', () => c.frames().length === 1);
    const t0 = Date.now();
    await s.relay.unlisten('plc-01:502');
    expect(Date.now() - t0).toBeLessThan(1000);
    await waitFor('the client to be closed', () => c.closed);
    expect(s.relay.listening()).toEqual([]);
  });

  it('an idle connection holds no connection to the device', async () => {
    const s = await setup();
    const c = client(s.port);
    await c.opened();
    await waitFor('the relay to count it', () => s.relay.stats.connections === 1);
    await new Promise((r) => setTimeout(r, 200));
    expect(s.deviceAccepted()).toBe(0);
  });

  it('the first request that passes opens the device connection; requests sent before it accepts all arrive, in order', async () => {
    const s = await setup();
    const c = client(s.port);
    await c.opened();
    // One chunk: a denied request (answered at once), then a write and a read of it back, then
    // 20 reads; all but the first wait for the device's accept.
    const reads = Array.from({ length: 20 }, (_, i) => readHolding(10 + i, 1, i, 1));
    c.socket.write(Buffer.concat([writeRegister(1, 1, 99, 1), writeRegister(2, 1, 12, 4242), readHolding(3, 1, 12, 1), ...reads]));
    await waitFor('23 answers', () => c.frames().length === 23);
    const byTid = new Map(c.frames().map((f) => [f.readUInt16BE(0), f]));
    expect(byTid.get(1)?.subarray(7)).toEqual(Buffer.from([0x86, 0x02]));
    expect(byTid.get(2)?.subarray(7)).toEqual(writeRegister(2, 1, 12, 4242).subarray(7));
    expect(byTid.get(3)?.readUInt16BE(9)).toBe(4242);
    for (let i = 0; i < 20; i++) expect(byTid.get(10 + i)?.readUInt16BE(9)).toBe(i === 12 ? 4242 : i);
    expect(s.deviceAccepted()).toBe(1);
  });

  it('a device that is not there: the connection that has a request for it is closed, with proxy.device-unreachable', async () => {
    const s = await setup({}, { noDevice: true });
    const c = client(s.port);
    await c.opened();
    c.socket.write(readHolding(1, 1, 0, 1));
    await waitFor('the connection to close', () => c.closed);
    expect(c.frames()).toEqual([]);
    expect(s.alerts.map((a) => a.kind)).toEqual(['proxy.device-unreachable']);
    await waitFor('the relay to let it go', () => s.relay.stats.connections === 0);
  });

  it('maxConnections: the connection past it is closed at once, with proxy.limit', async () => {
    const s = await setup({ maxConnections: 2 });
    const [a, b] = [client(s.port), client(s.port)];
    await Promise.all([a.opened(), b.opened()]);
    await waitFor('two connections', () => s.relay.stats.connections === 2);
    const third = client(s.port);
    await waitFor('the third to be closed', () => third.closed);
    expect(third.received.length).toBe(0);
    expect(s.alerts.map((x) => x.kind)).toEqual(['proxy.limit']);
    expect(s.relay.stats.refused).toBe(1);
    expect(a.closed || b.closed).toBe(false);
  });

  it('maxConnectionsPerPeer: the connection past the limit is reset, and a slot freed is taken again', async () => {
    const s = await setup({ maxConnectionsPerPeer: 2 });
    const [a, b] = [client(s.port), client(s.port)];
    await Promise.all([a.opened(), b.opened()]);
    await waitFor('two connections', () => s.relay.stats.connections === 2);
    const third = client(s.port);
    await waitFor('the third to be reset', () => third.closed);
    expect(third.error).toBe('ECONNRESET');
    a.socket.end();
    await waitFor('a slot to free', () => s.relay.stats.connections === 1);
    const fourth = client(s.port);
    await fourth.opened();
    fourth.socket.write(readHolding(7, 1, 5, 1));
    await waitFor('its answer', () => fourth.frames().length === 1);
    expect(fourth.frames()[0]?.readUInt16BE(9)).toBe(5);
  });

  it('a broken MBAP header closes the connection after the answers before it; with nothing forwarded, the device never saw it', async () => {
    const s = await setup();
    const c = client(s.port);
    await c.opened();
    c.socket.write(Buffer.concat([readHolding(1, 2, 0, 1), Buffer.from([0, 9, 0, 7, 0, 6, 1, 3, 0, 0, 0, 1])]));
    await waitFor('the connection to close', () => c.closed);
    expect(c.frames().map((f) => f.readUInt16BE(0))).toEqual([1]);
    expect(s.deviceAccepted()).toBe(0);
    expect(s.alerts.map((a) => a.kind)).toEqual(['modbus.denied', 'modbus.malformed']);
  });

  // Backpressure, many times over on one connection: a session that passes bytes untouched, and
  // a device that stops reading, then reads all, twelve times. Each time the relay's write buffer
  // to the device passes the mark, the peer stops being read until it drains. The relay used to
  // add a 'drain' listener to both sockets each time, and the peer's socket, which never filled,
  // kept them all: one more per episode for the connection's life. The relay's sockets are a
  // private field; how many listeners it leaves on them is what is checked.
  it('a device that stops reading, again and again: the peer is stalled and resumed each time, no listener piles up, every byte arrives in order', async () => {
    // More than the kernel's socket buffers on the way take (4 MiB each at most here), so the relay's own buffer fills.
    const EPISODE = 16 * 1024 * 1024;
    const pattern = Buffer.alloc(EPISODE + 251);
    for (let i = 0; i < pattern.length; i++) pattern[i] = i % 251;
    let device: Socket | undefined;
    let received = 0;
    let disorder = -1;
    const server = createServer((sock) => {
      device = sock;
      sock.pause();
      sock.on('data', (d: Buffer) => {
        const at = received % 251;
        if (disorder < 0 && !d.equals(pattern.subarray(at, at + d.length))) disorder = received;
        received += d.length;
      });
      sock.on('error', () => {});
    });
    await new Promise<void>((resolve) => server.listen(0, LOOPBACK, resolve));
    try {
      const r = new ProxyRelay({ config: LIMITS, host: LOOPBACK, alert: () => {}, record: () => {}, log: { info: () => {}, warn: () => {}, error: () => {} } });
      relay = r;
      const port = await freePort();
      await r.listen({
        key: 'scanner-01:104',
        device: 'scanner-01',
        app: 'dicom',
        listenPort: port,
        devicePort: (server.address() as { port: number }).port,
        addresses: { ipv4: LOOPBACK },
        enforce: true,
        session: () => ({ fromPeer: (c) => ({ toDevice: [c], toPeer: [] }), fromDevice: (c) => ({ toDevice: [], toPeer: [c] }), end: () => {}, buffered: () => 0 }),
      });
      // A Set of sockets, or a Map keyed by them: keys() lists the sockets in both.
      const sockets = (r as unknown as { sockets: { keys(): Iterable<Socket> } }).sockets;
      const drainListeners = () => [...sockets.keys()].map((x) => x.listenerCount('drain'));
      const c = client(port);
      await c.opened();
      let sent = 0;
      const most: number[] = [];
      for (let episode = 0; episode < 12; episode++) {
        c.socket.write(pattern.subarray(sent % 251, (sent % 251) + EPISODE));
        sent += EPISODE;
        await waitFor(`episode ${episode}: the relay to stall the peer`, () => drainListeners().some((n) => n > 0));
        most.push(Math.max(...drainListeners()));
        device?.resume();
        await waitFor(`episode ${episode}: the device to read all`, () => received === sent, 10000);
        device?.pause();
      }
      expect(disorder).toBe(-1);
      expect(most).toEqual(Array.from({ length: 12 }, () => 1));
      expect(drainListeners()).toEqual([0, 0]);
    } finally {
      device?.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('an unknown function code from a peer with an entry is answered by the filter', async () => {
    const s = await setup();
    const c = client(s.port);
    await c.opened();
    c.socket.write(adu(4, 1, [0x41, 1, 2]));
    await waitFor('an exception', () => c.frames().length === 1);
    expect(c.frames()[0]?.subarray(7)).toEqual(Buffer.from([0xc1, 0x01]));
    expect(s.deviceAccepted()).toBe(0);
  });
});
