// One backup, as both the agent's schedule and `wardgate backup now | import` run it: the
// fetched configuration is stored, and the stored version compared with the device's approved
// baseline. A device without a baseline gets this version as its baseline.
import { dirname } from 'node:path';
import type { LoadedConfig } from '../config/load.js';
import { baselineManifest, readBaseline, writeBaseline, type Baseline } from './baseline.js';
import { compareConfigs, type Drift } from './drift.js';
import type { DeviceAddress } from './drivers/index.js';
import type { SignedManifest } from './manifest.js';
import type { BackupDeviceConfig } from './schema.js';
import type { BackupStore, PutResult } from './store.js';
import type { FetchedConfig } from './types.js';

/** A device with a `backup:` block, as the policy files give it. */
export interface BackupTarget {
  address: DeviceAddress;
  backup: BackupDeviceConfig;
  /** The policy file's directory: relative secret files, a command's working directory. */
  baseDir: string;
}

/** The devices with a `backup:` block, in the order of the policy files. */
export function backupTargets(loaded: LoadedConfig): BackupTarget[] {
  return loaded.policies.flatMap((p) =>
    p.policy.devices.flatMap((d) => (d.backup ? [{ address: { id: d.id, ipv4: d.ipv4, ipv6: d.ipv6 }, backup: d.backup, baseDir: dirname(p.path) }] : [])),
  );
}

export interface StoredOutcome {
  manifest: SignedManifest;
  /** Equal to the newest version: nothing new was written. */
  unchanged: boolean;
  pruned: PutResult['pruned'];
  baseline: Baseline;
  /** This version became the baseline (there was none). */
  baselineSet: boolean;
  /** Against the baseline; undefined when this version is the baseline or has its bytes. */
  drift?: Drift;
  /** Why drift could not be measured (the baseline version is gone or was replaced). */
  driftError?: string;
}

/** Stores `fetched` for `device` and compares it with the approved baseline. */
export async function storeAndCompare(store: BackupStore, device: string, driver: string, fetched: FetchedConfig, now = new Date()): Promise<StoredOutcome> {
  const put = await store.put(device, driver, fetched);
  const m = put.manifest;
  let baselineSet = false;
  // Under the device's lock, so that the CLI and the agent storing at once set one baseline.
  const baseline = await store.withDeviceLock(device, () => {
    const b = readBaseline(store, device);
    if (b !== undefined) return Promise.resolve(b);
    baselineSet = true;
    return Promise.resolve(writeBaseline(store, m, 'auto', now));
  });
  const out: StoredOutcome = { manifest: m, unchanged: put.unchanged, pruned: put.pruned, baseline, baselineSet };
  if (baseline.plaintextSha256 === m.plaintext.sha256) return out;
  try {
    const bm = baselineManifest(store, device, baseline);
    const before = await store.get(device, bm.version);
    out.drift = compareConfigs(m.format, before.bytes, fetched.bytes, bm.format);
  } catch (err) {
    out.driftError = `the approved baseline (version ${baseline.version}) cannot be read: ${(err as Error).message}`;
  }
  return out;
}

/** The drift summary as one event message (no configuration content beyond the listed changes). */
export function driftMessage(device: string, o: StoredOutcome): string {
  const d = o.drift;
  if (d === undefined) return `configuration of ${device} (version ${o.manifest.version}) differs from its approved baseline: ${o.driftError ?? 'unknown'}`;
  const what = d.compared === 'modbus' ? `${d.total} register(s) or range(s)` : d.compared === 'text' ? `${d.total} line(s)` : 'binary content';
  return `configuration of ${device} version ${o.manifest.version} differs from the approved baseline (version ${o.baseline.version}): ${what} changed: ${d.summary.slice(0, 5).join('; ')}${d.summary.length > 5 ? '; ...' : ''}`;
}
