// Restoring a device's configuration, from the CLI (`wardgate backup restore`) or a signed
// command (`backup.restore`): the same steps, the same checks, the same audit record.
//
// Under the device's store lock (no version written or approved meanwhile): pick the version
// (the one asked for; else the approved baseline, if its manifest is still the approved one;
// else the newest), read what the device has now, compare. Nothing differs: done. Otherwise,
// without `write` it stops there (a preview); with it, write through the driver, read back and
// compare again. Every write, good or bad, is recorded in the audit log.
import type { AuditRecord } from '../audit/types.js';
import { baselineManifest, readBaseline } from './baseline.js';
import { compareConfigs, type Drift } from './drift.js';
import { BackupDriverError, createDeviceDriver, parseModbusDocument } from './drivers/index.js';
import type { BackupTarget } from './run.js';
import type { BackupStore } from './store.js';
import type { FetchedConfig } from './types.js';

/** What a restore writes and can read back: for Modbus the holding registers and coils only. */
function writable(format: FetchedConfig['format'], bytes: Buffer): Buffer {
  if (format !== 'modbus') return bytes;
  try {
    const ranges = parseModbusDocument(bytes).ranges.filter((r) => r.kind === 'holding' || r.kind === 'coil');
    return Buffer.from(`${JSON.stringify({ ranges })}\n`);
  } catch {
    return bytes;
  }
}

export interface RestoreChosen {
  version: number;
  time: string;
  sha256: string;
  /** Why this version: asked for, the approved baseline, or the newest (no baseline). */
  why: 'asked' | 'baseline' | 'newest';
}

export type RestoreResult = RestoreChosen &
  (
    | { status: 'unchanged' }
    /** Differs; nothing written (no `write`). */
    | { status: 'preview'; changes: Drift }
    /** Differs, and the driver cannot write a configuration back. */
    | { status: 'cannot'; changes: Drift; driver: string }
    | { status: 'restored'; changes: Drift }
    | { status: 'failed'; stage: 'read-current' | 'write' | 'read-back' | 'differs'; error: string; changes?: Drift; after?: Drift }
  );

export interface RestoreOptions {
  store: BackupStore;
  target: BackupTarget;
  version?: number;
  write: boolean;
  actor: string;
  audit: (record: AuditRecord) => void;
  signal?: AbortSignal;
}

export async function restoreDevice(o: RestoreOptions): Promise<RestoreResult> {
  const device = o.target.address.id;
  const driver = createDeviceDriver(o.target.address, o.target.backup, { baseDir: o.target.baseDir });
  const signal = o.signal ?? new AbortController().signal;
  const record = (outcome: AuditRecord['outcome'], detail: Record<string, unknown>) =>
    o.audit({ actor: o.actor, action: 'backup.restore', outcome, detail: { device, driver: driver.type, ...detail } });

  return o.store.withDeviceLock(device, async (): Promise<RestoreResult> => {
    const baseline = readBaseline(o.store, device);
    // The approved version is restored only if its manifest is still the one that was approved.
    if (o.version === undefined && baseline !== undefined) baselineManifest(o.store, device, baseline);
    const { manifest, bytes } = await o.store.get(device, o.version ?? baseline?.version);
    const chosen: RestoreChosen = {
      version: manifest.version,
      time: manifest.time,
      sha256: manifest.plaintext.sha256,
      why: o.version !== undefined ? 'asked' : baseline !== undefined ? 'baseline' : 'newest',
    };
    let current: FetchedConfig;
    try {
      current = await driver.fetch(signal);
    } catch (err) {
      return { ...chosen, status: 'failed', stage: 'read-current', error: (err as Error).message };
    }
    const want = writable(manifest.format, bytes);
    const changes = compareConfigs(manifest.format, writable(current.format, current.bytes), want, current.format);
    if (!changes.changed) return { ...chosen, status: 'unchanged' };
    if (driver.restore === undefined) return { ...chosen, status: 'cannot', changes, driver: driver.type };
    if (!o.write) return { ...chosen, status: 'preview', changes };

    const detail = { version: manifest.version, plaintextSha256: manifest.plaintext.sha256 };
    try {
      await driver.restore(bytes, signal);
    } catch (err) {
      const code = err instanceof BackupDriverError ? err.code : undefined;
      record('failed', { ...detail, error: (err as Error).message, ...(code !== undefined ? { code } : {}) });
      return { ...chosen, status: 'failed', stage: 'write', error: (err as Error).message, changes };
    }
    let back: FetchedConfig;
    try {
      back = await driver.fetch(signal);
    } catch (err) {
      record('failed', { ...detail, error: `written, but cannot be read back: ${(err as Error).message}` });
      return { ...chosen, status: 'failed', stage: 'read-back', error: (err as Error).message, changes };
    }
    const after = compareConfigs(manifest.format, want, writable(back.format, back.bytes), manifest.format);
    if (after.changed) {
      record('failed', { ...detail, readBack: 'differs', differences: after.total });
      return { ...chosen, status: 'failed', stage: 'differs', error: `what reads back differs from version ${manifest.version}`, changes, after };
    }
    record('ok', { ...detail, readBack: 'equal', changes: changes.total });
    return { ...chosen, status: 'restored', changes };
  });
}
