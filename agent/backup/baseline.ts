// The approved baseline of each device: the version drift is measured against. It lives next to
// the device's versions, in <stateDir>/backups/devices/<device>/baseline.json, names the version
// and the hash of its manifest (so that a replaced manifest is not silently trusted as approved),
// and keeps that version out of retention's reach (baselineProtect, the store's protect callback).
import { join } from 'node:path';
import { readIfExists, writeFileAtomic } from '../util/fsx.js';
import { BackupStoreError } from './errors.js';
import { DeviceId, manifestHash, type SignedManifest } from './manifest.js';
import type { BackupStore } from './store.js';

export interface Baseline {
  version: number;
  manifestSha256: string;
  plaintextSha256: string;
  /** When it was approved. */
  time: string;
  /** Who approved it: "cli:<user>", or "auto" for the first version of a device without one. */
  by: string;
}

const FILE = 'baseline.json';

function baselineFile(stateDir: string, device: string): string {
  return join(stateDir, 'backups', 'devices', device, FILE);
}

function parse(file: string, text: string): Baseline {
  let b: Partial<Baseline>;
  try {
    b = JSON.parse(text) as Partial<Baseline>;
  } catch (err) {
    throw new BackupStoreError(`${file}: not JSON (${(err as Error).message}); approve a version again (wardgate backup approve)`);
  }
  const hex = (v: unknown) => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v);
  if (!Number.isInteger(b.version) || (b.version as number) < 1 || !hex(b.manifestSha256) || !hex(b.plaintextSha256) || typeof b.time !== 'string' || typeof b.by !== 'string') {
    throw new BackupStoreError(`${file}: not a baseline record; approve a version again (wardgate backup approve)`);
  }
  return b as Baseline;
}

/** The device's approved baseline, or undefined when none was approved yet. */
export function readBaseline(store: BackupStore, device: string): Baseline | undefined {
  const file = join(store.deviceDir(device), FILE);
  const text = readIfExists(file);
  return text === undefined ? undefined : parse(file, text);
}

/** Records `m` as the device's approved baseline. */
export function writeBaseline(store: BackupStore, m: SignedManifest, by: string, now = new Date()): Baseline {
  const b: Baseline = { version: m.version, manifestSha256: manifestHash(m), plaintextSha256: m.plaintext.sha256, time: now.toISOString(), by };
  writeFileAtomic(join(store.deviceDir(m.device), FILE), `${JSON.stringify(b)}\n`, { mode: 0o640 });
  return b;
}

/**
 * The baseline's manifest, verified, and checked to be the one that was approved. Throws when it
 * is gone or was replaced: drift against an unknown reference would mean nothing.
 */
export function baselineManifest(store: BackupStore, device: string, b: Baseline): SignedManifest {
  const m = store.readManifest(device, b.version);
  if (manifestHash(m) !== b.manifestSha256) throw new BackupStoreError(`${store.manifestPath(device, b.version)}: not the manifest that was approved as ${device}'s baseline (its hash differs)`);
  return m;
}

/**
 * The store's protect callback: a device's approved version is never pruned. Reads the file at
 * each call, so that an approval by the CLI protects at once in the agent as well.
 */
export function baselineProtect(stateDir: string): (m: SignedManifest) => boolean {
  return (m) => {
    if (!DeviceId.safeParse(m.device).success) return false;
    const file = baselineFile(stateDir, m.device);
    const text = readIfExists(file);
    if (text === undefined) return false;
    try {
      return parse(file, text).version === m.version;
    } catch {
      // An unreadable baseline protects nothing by version, so keep the device's versions from the
      // budget's reach instead of guessing: better over budget than losing the approved version.
      return true;
    }
  };
}
