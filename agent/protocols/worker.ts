// The proxies' process. It parses bytes from the hospital network that nobody has vouched for,
// so it runs apart from the agent: a failure here closes connections, not the agent, and the
// agent starts it again. It holds no keys and needs no capability but listening on its ports.
// The agent sends it the targets (`targets`, again at every policy change) over the IPC channel
// and gets back alerts, records and, every second, that it is alive with its counters. It exits
// when the channel closes: a proxy without its agent is not enforcing anything anyone reports.
import { contains, parseAddress } from '../policy/net.js';
import type { ProxyTarget } from '../policy/model.js';
import { createDicomSession } from './dicom/session.js';
import { createModbusSession } from './modbus/session.js';
import { ProxyRelay, type RelayTarget } from './relay.js';
import type { ModbusRules, ProtocolsConfig } from './schema.js';
import type { ProtocolAlert, ProtocolRecord, ProtocolSession, SessionContext } from './types.js';

export interface WorkerTarget extends ProxyTarget {
  listenPort: number;
  addresses: { ipv4?: string; ipv6?: string };
  enforce: boolean;
}

export type ToWorker = { type: 'targets'; config: ProtocolsConfig; targets: WorkerTarget[]; host?: string };

export type FromWorker =
  | { type: 'ready'; listening: string[]; failed: { key: string; error: string }[] }
  | { type: 'alert'; alert: ProtocolAlert & { device: string } }
  | { type: 'record'; record: ProtocolRecord & { device: string } }
  | { type: 'alive'; stats: ProxyRelay['stats']; rssBytes: number };

/** The session for a peer: the rules of every entry of the target whose peers hold its address. */
export function sessionFor(t: WorkerTarget, config: ProtocolsConfig, ctx: SessionContext): ProtocolSession | undefined {
  const a = parseAddress(ctx.peer.address);
  if (!a) return undefined;
  const host = { family: a.family, lo: a.value, hi: a.value };
  const rules = t.entries.filter((e) => e.peers.some((p) => contains(p, host))).map((e) => e.rules);
  if (rules.length === 0) return undefined;
  if (t.app === 'modbus') return createModbusSession({ rules: rules as (ModbusRules | 'all')[], ctx, maxPendingRequests: config.modbus.maxPendingRequests });
  return createDicomSession({ rules: rules, ctx, maxPduBytes: config.dicom.maxPduBytes });
}

function main(): void {
  const send = (m: FromWorker) => {
    if (process.connected) process.send?.(m);
  };
  const log = {
    info: (o: object, m?: string) => console.log(JSON.stringify({ level: 'info', proxy: true, msg: m, ...o })),
    warn: (o: object, m?: string) => console.error(JSON.stringify({ level: 'warn', proxy: true, msg: m, ...o })),
    error: (o: object, m?: string) => console.error(JSON.stringify({ level: 'error', proxy: true, msg: m, ...o })),
  };
  let relay: ProxyRelay | undefined;
  let current = new Map<string, string>();

  const apply = async (m: ToWorker) => {
    relay ??= new ProxyRelay({
      config: m.config,
      ...(m.host !== undefined ? { host: m.host } : {}),
      alert: (alert) => send({ type: 'alert', alert }),
      record: (record) => send({ type: 'record', record }),
      log,
    });
    const r = relay;
    const next = new Map(m.targets.map((t) => [t.key, JSON.stringify(t, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))]));
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
        session: (ctx) => sessionFor(t, m.config, ctx),
      };
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
  process.on('disconnect', () => {
    void relay?.close().finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 3000).unref();
  });
  setInterval(() => {
    if (relay) send({ type: 'alive', stats: { ...relay.stats }, rssBytes: process.memoryUsage.rss() });
  }, 1000);
}

if (process.send !== undefined && process.argv[1]?.endsWith('worker.js')) main();
