// In bridge mode the allow-lists see bridged traffic only through br_netfilter
// (net.bridge.bridge-nf-call-iptables and -ip6tables = 1, per network namespace). Without it a
// ruleset loads and silently enforces nothing, so every apply path turns it on or refuses.
import { NftError, type Backend } from './backend.js';

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
