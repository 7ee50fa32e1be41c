// Which local port each proxied device port is redirected to. The ruleset (written by whoever
// applies a policy) and the agent's listeners must agree, and an agent still running an older
// policy must never serve one device's port on a listener the new ruleset gives another: so
// an assignment, once made, is kept for good in <stateDir>/proxy-ports.json, and new device
// ports take the lowest free port. A listener therefore always means the same device port.
import { join } from 'node:path';
import { readIfExists, writeFileAtomic } from '../util/fsx.js';

export const PORTS_FILE = 'proxy-ports.json';

interface PortsFile {
  version: 1;
  /** "<device>:<port>" -> local listen port. */
  ports: Record<string, number>;
}

export class ListenPortsError extends Error {}

function parseRange(range: string): [number, number] {
  const [lo, hi] = range.split('-').map(Number) as [number, number];
  if (!(lo >= 1 && hi <= 65535 && lo <= hi)) throw new ListenPortsError(`protocols.listenPorts ${range} is not a port range within 1-65535`);
  return [lo, hi];
}

function read(stateDir: string): Record<string, number> {
  const text = readIfExists(join(stateDir, PORTS_FILE));
  if (text === undefined) return {};
  try {
    const f = JSON.parse(text) as PortsFile;
    if (f.version !== 1 || typeof f.ports !== 'object') throw new Error('unknown format');
    return Object.fromEntries(Object.entries(f.ports).filter(([, v]) => Number.isInteger(v)));
  } catch (err) {
    throw new ListenPortsError(`${join(stateDir, PORTS_FILE)}: ${(err as Error).message}; it maps proxied device ports to listeners, move it aside only with the agent stopped`);
  }
}

/**
 * The listen port of every key, keeping earlier assignments. With persist, new assignments are
 * written before they are returned (the caller is about to load a ruleset that uses them).
 */
export function assignListenPorts(range: string, stateDir: string, keys: readonly string[], opts: { persist: boolean }): Map<string, number> {
  const [lo, hi] = parseRange(range);
  const known = read(stateDir);
  const taken = new Set<number>();
  const out = new Map<string, number>();
  for (const p of Object.values(known)) {
    if (p >= lo && p <= hi) taken.add(p);
  }
  let changed = false;
  let next = lo;
  for (const key of [...keys].sort()) {
    const had = known[key];
    if (had !== undefined && had >= lo && had <= hi) {
      out.set(key, had);
      continue;
    }
    while (next <= hi && taken.has(next)) next++;
    if (next > hi) {
      throw new ListenPortsError(`protocols.listenPorts ${range} has no free port for ${key} (${taken.size} assigned, some perhaps to device ports no longer proxied); widen the range`);
    }
    taken.add(next);
    out.set(key, next);
    known[key] = next;
    changed = true;
  }
  if (changed && opts.persist) {
    const file: PortsFile = { version: 1, ports: Object.fromEntries(Object.entries(known).sort(([a], [b]) => a.localeCompare(b))) };
    writeFileAtomic(join(stateDir, PORTS_FILE), `${JSON.stringify(file, null, 2)}\n`);
  }
  return out;
}
