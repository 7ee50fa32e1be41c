// The closed namespace site of the traffic benchmarks (hardware/netns-site.ts, router mode): one
// hospital host whose address is the peer of the policy's last allow entry, one device host
// with the last device's address, the gateway between them, an iperf3 server on the device.
// Rulesets are swapped in the gateway namespace between runs.
import { join } from 'node:path';
import { compile } from '../agent/policy/compile.js';
import { NftBackend } from '../agent/policy/backend.js';
import { NetnsSite } from '../hardware/netns-site.js';
import { renderLinear, TARGET_DEVICE_V4, uniquePrefix, withResource, VERSION, type GeneratedPolicy } from './lib.js';

const NETCHECK = join(import.meta.dirname, '..', 'hardware', 'netcheck.mjs');

/**
 * none: no table in the gateway namespace (no nftables hook, no conntrack);
 * wardgate: the compiled ruleset; linear: the naive rendering, established/related first;
 * linear-no-fast: the naive rendering with established/related after the entry rules.
 */
export type Variant = 'none' | 'wardgate' | 'linear' | 'linear-no-fast';

export interface TrafficSite {
  site: NetnsSite;
  g: GeneratedPolicy;
  /** Replaces whatever ruleset the gateway namespace has with the variant's. */
  use(v: Variant): Promise<void>;
  /** Runs the iperf3 client in the hospital host; the JSON it printed. */
  iperf(args: string[], seconds: number): Promise<IperfJson>;
  /** Proves the wardgate table met the traffic; a line to print. Call with the wardgate variant loaded. */
  checkWardgate(proto: 'tcp' | 'udp'): Promise<string>;
}

interface IperfSum {
  seconds?: number;
  bytes?: number;
  bits_per_second?: number;
  retransmits?: number;
  packets?: number;
  lost_packets?: number;
}

export interface IperfJson {
  error?: string;
  end?: { sum_sent?: IperfSum; sum_received?: IperfSum; sum?: IperfSum };
}

interface NftSetJson {
  nftables: { set?: { elem?: { elem?: { val?: { concat?: unknown[] }; comment?: string; counter?: { packets: number } } }[] } }[];
}

async function startServer(site: NetnsSite, port: number): Promise<void> {
  const child = site.spawn('dev', ['iperf3', '-s', '-p', String(port), '-B', TARGET_DEVICE_V4, '--forceflush']);
  let out = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`iperf3 server did not start: ${out}`)), 10000);
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('Server listening')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`iperf3 server exited ${code}: ${out}`));
    });
  });
}

export function withTrafficSite<T>(g: GeneratedPolicy, body: (t: TrafficSite) => Promise<T>): Promise<T> {
  const texts: Record<Exclude<Variant, 'none'>, string> = {
    wardgate: compile(g.model, { version: VERSION }).text,
    linear: renderLinear(g.model, { fastPath: 'first' }),
    'linear-no-fast': renderLinear(g.model, { fastPath: 'last' }),
  };
  const setName = `${g.target.device.id.replace(/-/g, '_')}_in_v4`;
  return withResource(
    () =>
      NetnsSite.create({
        prefix: uniquePrefix(),
        mode: 'router',
        hosts: [
          // Router mode routes IPv6 too and needs an IPv6 address on every host (in fd00:10::/48
          // and fd00:20::/64); the policy is IPv4 only, so these carry no benchmark traffic.
          { name: 'peer', side: 'hospital', ipv4: [g.last.peer], ipv6: ['fd00:10::10'] },
          { name: 'dev', side: 'device', ipv4: [TARGET_DEVICE_V4], ipv6: ['fd00:20::11'] },
        ],
      }),
    (site) => site.destroy(),
    async (site) => {
      const nft = new NftBackend(site.gw);
      await startServer(site, g.last.port);
      const t: TrafficSite = {
        site,
        g,
        async use(v) {
          const r = await site.exec('gw', ['nft', 'flush', 'ruleset']);
          if (r.code !== 0) throw new Error(`nft flush ruleset failed: ${r.stderr.trim()}`);
          if (v !== 'none') await nft.load(texts[v]);
        },
        async iperf(args, seconds) {
          const argv = ['iperf3', '-c', TARGET_DEVICE_V4, '-p', String(g.last.port), '-t', String(seconds), '-J', '--connect-timeout', '3000', ...args];
          const r = await site.exec('peer', argv, { timeoutMs: (seconds + 30) * 1000 });
          let j: IperfJson;
          try {
            j = JSON.parse(r.stdout) as IperfJson;
          } catch {
            throw new Error(`iperf3 gave no JSON (exit ${r.code}): ${r.stderr.trim() || r.stdout.slice(0, 300)}`);
          }
          if (j.error !== undefined || r.code !== 0) throw new Error(`iperf3 failed (exit ${r.code}): ${j.error ?? r.stderr.trim()}`);
          return j;
        },
        async checkWardgate(proto) {
          const r = await site.exec('gw', ['nft', '-j', 'list', 'set', 'inet', 'wardgate', setName]);
          if (r.code !== 0) throw new Error(`nft list set ${setName} failed: ${r.stderr.trim()}`);
          const j = JSON.parse(r.stdout) as NftSetJson;
          const entry = g.target.device.entries.find((e) => e.proto === proto && e.peer === g.last.peer);
          if (!entry) throw new Error(`no ${proto} entry for ${g.last.peer} in the generated policy`);
          const elems = j.nftables.flatMap((o) => o.set?.elem ?? []).map((e) => e.elem);
          const packets = elems.find((e) => e?.comment === entry.id)?.counter?.packets ?? 0;
          if (packets === 0) throw new Error(`the element of ${entry.id} counted no packet: the traffic did not meet the wardgate table`);
          const closed = g.last.port + 1;
          const denied = await site.exec('peer', [process.execPath, NETCHECK, 'connect', 'tcp', TARGET_DEVICE_V4, String(closed), '700'], { timeoutMs: 15000 });
          if (!denied.stdout.startsWith('fail timeout')) {
            throw new Error(`a connection to port ${closed}, not allowed, was not dropped: ${denied.stdout.trim()} ${denied.stderr.trim()}`);
          }
          return `check: the set element of ${entry.id} (${proto}) counted ${packets} packets; TCP to port ${closed}, not allowed, was dropped`;
        },
      };
      return body(t);
    },
  );
}
