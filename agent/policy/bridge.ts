// In bridge mode the allow-lists see bridged traffic only through br_netfilter
// (net.bridge.bridge-nf-call-iptables and -ip6tables = 1, per network namespace). Without it a
// ruleset loads and silently enforces nothing, so every apply path turns it on or refuses.
import { NftError, type Backend } from './backend.js';
import type { Model } from './model.js';

const BRIDGE_SYSCTLS = ['net.bridge.bridge-nf-call-iptables', 'net.bridge.bridge-nf-call-ip6tables'];

/**
 * Checks (fix: false) or turns on (fix: true) what bridge mode needs. Returns what it found or
 * did, one line each; throws NftError when br_netfilter is not loaded at all.
 */
export async function ensureBridgeNetfilter(backend: Backend, fix: boolean): Promise<string[]> {
  const notes: string[] = [];
  if (backend.kind !== 'nft') return notes;
  for (const name of BRIDGE_SYSCTLS) {
    const value = await backend.readSysctl(name);
    if (value === undefined) {
      throw new NftError(`bridge mode needs br_netfilter, and ${name} does not exist: load it (modprobe br_netfilter) and try again`);
    }
    if (value === '1') continue;
    if (!fix) {
      notes.push(`warning: ${name} is ${value}: bridged traffic bypasses the allow-lists until apply sets it to 1`);
      continue;
    }
    await backend.writeSysctl(name, '1');
    notes.push(`set ${name}=1 so that bridged traffic meets the allow-lists`);
  }
  return notes;
}

/**
 * In bridge mode the ruleset redirects proxied connections to the bridge's own address (a
 * redirect delivers to the address of the interface the packet came in on, and br_netfilter
 * names the bridge). Without an address of the device's family on the bridge the kernel drops
 * the redirected packets: the device would be cut off, even a fail-open one. Returns what is
 * missing, one line each.
 */
export async function bridgeProxyProblems(backend: Backend, model: Model): Promise<string[]> {
  if (model.gateway.mode !== 'bridge') return [];
  const bridge = model.gateway.interfaces.bridge ?? 'br0';
  const families = new Set(model.devices.flatMap((d) => (d.proxies.some((p) => p.rtu === undefined) ? (Object.keys(d.addresses) as ('ipv4' | 'ipv6')[]) : [])));
  if (families.size === 0) return [];
  const have = await backend.interfaceAddresses(bridge);
  if (have === undefined) return backend.kind === 'nft' ? [`bridge ${bridge} does not exist here: the proxied ports need its address`] : [];
  return [...families]
    .filter((f) => !have.some((a) => a.family === f))
    .map((f) => `bridge ${bridge} has no ${f === 'ipv4' ? 'IPv4' : 'IPv6'} address: the proxied ports of ${f} devices are redirected to the bridge's own address, so their connections would be dropped; give ${bridge} an address (docs/protocols.md, bridge mode)`);
}
