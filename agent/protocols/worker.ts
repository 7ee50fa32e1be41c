// The proxies' process. It parses bytes from the hospital network that nobody has vouched for,
// so it runs apart from the agent: a failure here closes connections, not the agent, and the
// agent starts it again. It holds no keys and needs no capability but listening on its ports.
// The agent sends it the targets (`targets`, again at every policy change) over the IPC channel
// and gets back alerts, records and, every second, that it is alive with its counters. It exits
// when the channel closes: a proxy without its agent is not enforcing anything anyone reports.
// Modbus RTU devices are reached through their serial lines, each opened once and shared by
// every connection to every device on it (modbus/rtu.ts).
import { contains, parseAddress } from '../policy/net.js';
import type { ProxyTarget } from '../policy/model.js';
import { createDicomSession } from './dicom/session.js';
import { RtuBus, type RtuStatus } from './modbus/rtu.js';
import { createModbusSession } from './modbus/session.js';
import { RecordLimiter } from './records.js';
import { ProxyRelay, type RelayTarget } from './relay.js';
import type { DicomRules, ModbusRules, ProtocolsConfig } from './schema.js';
import type { ProtocolAlert, ProtocolRecord, ProtocolSession, SessionContext } from './types.js';

/** Denial and malformed-frame records kept per device, peer and kind a minute (records.ts). */
const RECORDS_PER_MINUTE = 600;

export interface WorkerTarget extends ProxyTarget {
  listenPort: number;
  addresses: { ipv4?: string; ipv6?: string };
  enforce: boolean;
}

/** The listeners bind to config.listenHost. */
export type ToWorker = { type: 'targets'; config: ProtocolsConfig; targets: WorkerTarget[] };

export type FromWorker =
  | { type: 'ready'; listening: string[]; failed: { key: string; error: string }[] }
  | { type: 'alert'; alert: ProtocolAlert & { device: string } }
  | { type: 'record'; record: ProtocolRecord & { device: string } }
  | { type: 'alive'; stats: ProxyRelay['stats']; rssBytes: number; rtu?: Record<string, RtuStatus> };

/** The session for a peer: the rules of every entry of the target whose peers hold its address. */
export function sessionFor(t: WorkerTarget, config: ProtocolsConfig, ctx: SessionContext): ProtocolSession | undefined {
  const a = parseAddress(ctx.peer.address);
  if (!a) return undefined;
  const host = { family: a.family, lo: a.value, hi: a.value };
  const rules = t.entries.filter((e) => e.peers.some((p) => contains(p, host))).map((e) => e.rules);
  // An RTU gateway port in monitor mode lets every peer in (compile.ts): no rules, so every
  // request is a would-be denial, alerted and forwarded.
  if (rules.length === 0 && (t.enforce || t.rtu === undefined)) return undefined;
  if (t.app === 'modbus') return createModbusSession({ rules: rules as (ModbusRules | 'all')[], ctx, maxPendingRequests: config.modbus.maxPendingRequests });
  return createDicomSession({ rules: rules as (DicomRules | 'all')[], ctx, maxPduBytes: config.dicom.maxPduBytes });
}

function main(): void {
  const send = (m: FromWorker) => {
    if (process.connected) process.send?.(m);
  };
  const records = new RecordLimiter(RECORDS_PER_MINUTE, (record) => send({ type: 'record', record }));
  setInterval(() => records.tick(), 5000).unref();
  const log = {
    info: (o: object, m?: string) => console.log(JSON.stringify({ level: 'info', proxy: true, msg: m, ...o })),
    warn: (o: object, m?: string) => console.error(JSON.stringify({ level: 'warn', proxy: true, msg: m, ...o })),
    error: (o: object, m?: string) => console.error(JSON.stringify({ level: 'error', proxy: true, msg: m, ...o })),
  };
  let relay: ProxyRelay | undefined;
  let current = new Map<string, string>();
  let targets: WorkerTarget[] = [];
  /** Serial port -> its bus, with the settings it was opened with. */
  const buses = new Map<string, { settings: string; bus: RtuBus }>();
  const busFor = (t: WorkerTarget, config: ProtocolsConfig): RtuBus => {
    const line = t.rtu;
    if (line === undefined) throw new Error(`${t.key} is not on a serial line`);
    const had = buses.get(line.serialPort);
    if (had) return had.bus;
    const bus = new RtuBus({
      line,
      maxQueuedPerConnection: config.modbus.maxPendingRequests,
      lineAlert: (a) => {
        for (const device of new Set(targets.filter((x) => x.rtu?.serialPort === line.serialPort).map((x) => x.device))) send({ type: 'alert', alert: { ...a, device } });
      },
      log,
    });
    buses.set(line.serialPort, { settings: JSON.stringify(line), bus });
    bus.open();
    return bus;
  };

  const apply = async (m: ToWorker) => {
    relay ??= new ProxyRelay({
      config: m.config,
      host: m.config.listenHost,
      alert: (alert) => send({ type: 'alert', alert }),
      record: (record) => records.push(record),
      log,
    });
    const r = relay;
    const next = new Map(m.targets.map((t) => [t.key, JSON.stringify(t, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))]));
    targets = m.targets;
    // A line whose settings changed (or that no device uses now) is closed, and the connections
    // through it end, before its targets' listeners are listened to again.
    const lines = new Map(m.targets.flatMap((t) => (t.rtu ? [[t.rtu.serialPort, JSON.stringify(t.rtu)] as const] : [])));
    for (const [path, b] of buses) {
      if (lines.get(path) === b.settings) continue;
      buses.delete(path);
      await b.bus.close();
    }
    // A target whose rules changed is listened to again; its open connections end with it.
    for (const key of r.listening()) {
      if (next.get(key) !== current.get(key)) await r.unlisten(key);
    }
    const failed: { key: string; error: string }[] = [];
    for (const t of m.targets) {
      if (r.listening().includes(t.key)) continue;
      const target: RelayTarget = {
        key: t.key,
        device: t.device,
        app: t.app,
        listenPort: t.listenPort,
        devicePort: t.devicePort,
        addresses: t.addresses,
        enforce: t.enforce,
        ...(t.tls ? { tls: t.tls } : {}),
        ...(t.rtu ? { link: { name: t.rtu.serialPort, open: (ctx) => busFor(t, m.config).link(ctx) } } : {}),
        session: (ctx) => sessionFor(t, m.config, ctx),
      };
      if (t.rtu) busFor(t, m.config);
      try {
        await r.listen(target);
      } catch (err) {
        failed.push({ key: t.key, error: (err as Error).message });
      }
    }
    current = next;
    send({ type: 'ready', listening: r.listening(), failed });
  };

  let queue = Promise.resolve();
  process.on('message', (m: ToWorker) => {
    if (m.type === 'targets') queue = queue.then(() => apply(m)).catch((err: unknown) => log.error({ err: (err as Error).message }, 'proxy targets failed'));
  });
  // A stop signal meant for the agent (Ctrl-C to the process group, systemd's SIGTERM to the
  // unit's cgroup) is not the proxies' to act on: the agent stops them by closing the channel,
  // after it has handed the fail-open ports back to the kernel. Dying first would raise a false
  // proxy.restarted and refuse connections for nothing.
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => {});
  process.on('disconnect', () => {
    void Promise.all([relay?.close(), ...[...buses.values()].map((b) => b.bus.close())]).finally(() => process.exit(0));
    // The agent is stopping or replacing us: its stop must not wait on peers that do not close.
    setTimeout(() => process.exit(0), 1000).unref();
  });
  setInterval(() => {
    const rtu = buses.size > 0 ? Object.fromEntries([...buses].map(([path, b]) => [path, b.bus.status()])) : undefined;
    if (relay) send({ type: 'alive', stats: { ...relay.stats }, rssBytes: process.memoryUsage.rss(), ...(rtu ? { rtu } : {}) });
  }, 1000);
}

if (process.send !== undefined && process.argv[1]?.endsWith('worker.js')) main();
