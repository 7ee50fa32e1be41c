// Who is on the device segment, from the kernel's own tables in the gateway's namespace:
// - router mode: the neighbour table (ARP and IPv6 neighbour discovery) of the device interface,
//   `ip -j neigh show dev <device>`: address and MAC of each host the gateway has talked to;
// - bridge mode: the bridge's forwarding database for the device port,
//   `bridge -j fdb show br <bridge>`: the MAC of each host that sent a frame through that port
//   (the gateway has no address there, so no neighbour entries, and a MAC alone).
// iproute2 is there on every gateway; its JSON output is stable.
import { execFile } from 'node:child_process';
import type { GatewayConfig } from '../config/schema.js';

export interface Neighbour {
  mac: string;
  /** The IP address, when the table has one (router mode). */
  address?: string;
}

function run(argv: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: 10_000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${argv.join(' ')}: ${(stderr || err.message).trim()}`));
      else resolve(stdout);
    });
  });
}

const nsArgs = (netns: string | undefined): string[] => (netns ? ['-n', netns] : []);

interface IpNeigh {
  dst?: string;
  dev?: string;
  lladdr?: string;
  state?: string[];
}
interface FdbEntry {
  mac?: string;
  ifname?: string;
  state?: string;
  flags?: string[];
  vlan?: number;
}

/** Parses `ip -j neigh show`: entries with a MAC, not FAILED or INCOMPLETE. */
export function parseNeigh(json: string, dev?: string): Neighbour[] {
  const rows = JSON.parse(json || '[]') as IpNeigh[];
  return rows
    .filter((r) => r.lladdr && r.dst && (dev === undefined || r.dev === undefined || r.dev === dev))
    .filter((r) => !(r.state ?? []).some((s) => s === 'FAILED' || s === 'INCOMPLETE'))
    .map((r) => ({ mac: r.lladdr!.toLowerCase(), address: r.dst! }));
}

/** Parses `bridge -j fdb show`: learned entries on port `port` (not the bridge's own, not multicast). */
export function parseFdb(json: string, port: string): Neighbour[] {
  const rows = JSON.parse(json || '[]') as FdbEntry[];
  const seen = new Set<string>();
  const out: Neighbour[] = [];
  for (const r of rows) {
    if (!r.mac || r.ifname !== port || r.state === 'permanent' || (r.flags ?? []).includes('self')) continue;
    if ((parseInt(r.mac.slice(0, 2), 16) & 0x01) !== 0) continue;
    const mac = r.mac.toLowerCase();
    if (seen.has(mac)) continue;
    seen.add(mac);
    out.push({ mac });
  }
  return out;
}

/** The hosts on the device segment, as the gateway's namespace sees them now. */
export async function readNeighbours(gw: Pick<GatewayConfig, 'mode' | 'interfaces'>, netns: string | undefined): Promise<Neighbour[]> {
  if (gw.mode === 'router') {
    return parseNeigh(await run(['ip', ...nsArgs(netns), '-j', 'neigh', 'show', 'dev', gw.interfaces.device]), gw.interfaces.device);
  }
  const bridge = gw.interfaces.bridge;
  const args = ['bridge', ...nsArgs(netns), '-j', 'fdb', 'show', ...(bridge ? ['br', bridge] : [])];
  return parseFdb(await run(args), gw.interfaces.device);
}
