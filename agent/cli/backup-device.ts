// `wardgate backup now | import | approve | restore`: the commands that act on one device's
// backups from the box itself. now and restore talk to the device through its driver; restore
// shows what it would change and writes only with --yes (no prompt: scripts and 3 a.m.
// responders), then reads back and compares. approve, import and restore are audited.
import { readFileSync, statSync } from 'node:fs';
import { userInfo } from 'node:os';
import { join, resolve } from 'node:path';
import { openAuditLog } from '../audit/log.js';
import type { AuditRecord } from '../audit/types.js';
import { readBaseline, writeBaseline } from '../backup/baseline.js';
import type { Drift } from '../backup/drift.js';
import { createDeviceDriver, createDriver, MAX_CONFIG_BYTES } from '../backup/drivers/index.js';
import { BackupStoreError } from '../backup/errors.js';
import { openWritableStore } from '../backup/module.js';
import { restoreDevice } from '../backup/restore.js';
import { backupTargets, storeAndCompare, type BackupTarget, type StoredOutcome } from '../backup/run.js';
import type { BackupStore } from '../backup/store.js';
import type { FetchedConfig } from '../backup/types.js';
import { loadConfig } from '../config/load.js';
import { gatewayOnly, gatewayPath, UsageError, type GlobalOptions } from './context.js';
import type { Io } from './io.js';

export interface DeviceCommandOptions extends GlobalOptions {
  json?: boolean;
  version?: string;
  yes?: boolean;
}

const actor = () => `cli:${userInfo().username}`;

function parseVersion(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  if (!/^[1-9]\d{0,9}$/.test(text)) throw new UsageError(`--version must be a version number (1, 2, …), not "${text}"`);
  return Number(text);
}

interface Ctx {
  stateDir: string;
  store: BackupStore;
  target: BackupTarget;
}

/** The device's `backup:` block from the policy files (all of them checked: errors exit 3) and the store. */
function deviceContext(opts: GlobalOptions, device: string): Ctx {
  const path = gatewayPath(opts);
  const targets = backupTargets(loadConfig(path));
  const target = targets.find((t) => t.address.id === device);
  if (target === undefined) {
    const known = targets.map((t) => t.address.id).join(', ') || 'none';
    throw new UsageError(`no device "${device}" with a backup: block in the policy files (devices with one: ${known})`);
  }
  const g = gatewayOnly(opts);
  return { stateDir: g.stateDir, store: openWritableStore(g.path, g.config, g.stateDir), target };
}

function audit(stateDir: string, record: AuditRecord): void {
  const log = openAuditLog(join(stateDir, 'audit'));
  try {
    log.append(record);
  } finally {
    log.close();
  }
}

function printDrift(io: Io, d: Drift, indent = '  '): void {
  for (const line of d.summary) io.out(`${indent}${line}`);
}

function printOutcome(io: Io, device: string, o: StoredOutcome, opts: DeviceCommandOptions): void {
  const m = o.manifest;
  if (opts.json) {
    io.out(JSON.stringify({ device, version: m.version, unchanged: o.unchanged, plaintext: m.plaintext, baseline: o.baseline, baselineSet: o.baselineSet, drift: o.drift ?? null, driftError: o.driftError ?? null }, null, 2));
    return;
  }
  io.out(o.unchanged ? `${device}: unchanged, version ${m.version} (${m.plaintext.size} B, sha256 ${m.plaintext.sha256.slice(0, 16)})` : `${device}: stored version ${m.version} (${m.plaintext.size} B, sha256 ${m.plaintext.sha256.slice(0, 16)})`);
  if (o.baselineSet) io.out(`${device}: no approved baseline yet: version ${m.version} is the baseline now (wardgate backup approve ${device} --version V to choose another)`);
  if (o.drift) {
    io.out(`${device}: differs from the approved baseline (version ${o.baseline.version}), ${o.drift.compared === 'binary' ? 'binary content' : `${o.drift.total} change(s)`}:`);
    printDrift(io, o.drift);
  } else if (o.driftError) {
    io.err(`${device}: ${o.driftError}`);
  } else if (!o.baselineSet) {
    io.out(`${device}: equal to the approved baseline (version ${o.baseline.version})`);
  }
}

async function now(args: string[], opts: DeviceCommandOptions, io: Io): Promise<number> {
  const [device, ...rest] = args;
  if (device === undefined || rest.length > 0) throw new UsageError('usage: wardgate backup now DEVICE [--json]');
  const { store, target } = deviceContext(opts, device);
  const driver = createDeviceDriver(target.address, target.backup, { baseDir: target.baseDir }, { onRetry: (err, attempt) => io.err(`${device}: try ${attempt} failed (${err.message}); trying again`) });
  let fetched: FetchedConfig;
  try {
    fetched = await driver.fetch(new AbortController().signal);
  } catch (err) {
    io.err(`wardgate: backup of ${device} (${driver.type}) failed: ${(err as Error).message}`);
    return 1;
  }
  printOutcome(io, device, await storeAndCompare(store, device, driver.type, fetched), opts);
  return 0;
}

async function importCmd(args: string[], opts: DeviceCommandOptions, io: Io): Promise<number> {
  const [device, file, ...rest] = args;
  if (device === undefined || file === undefined || rest.length > 0) throw new UsageError('usage: wardgate backup import DEVICE FILE');
  const path = resolve(file);
  let bytes: Buffer;
  try {
    if (statSync(path).size > MAX_CONFIG_BYTES) throw new UsageError(`${path}: larger than ${MAX_CONFIG_BYTES} bytes`);
    bytes = readFileSync(path);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`${path}: ${(err as Error).message}`);
  }
  const { stateDir, store, target } = deviceContext(opts, device);
  const fetched = await createDriver(target.address, { type: 'file' }, { baseDir: target.baseDir, imported: { bytes, name: path } }).fetch(new AbortController().signal);
  const o = await storeAndCompare(store, device, 'file', fetched);
  audit(stateDir, { actor: actor(), action: 'backup.import', outcome: 'ok', detail: { device, file: path, version: o.manifest.version, unchanged: o.unchanged, plaintextSha256: o.manifest.plaintext.sha256 } });
  printOutcome(io, device, o, opts);
  return 0;
}

async function approve(args: string[], opts: DeviceCommandOptions, io: Io): Promise<number> {
  const [device, ...rest] = args;
  if (device === undefined || rest.length > 0) throw new UsageError('usage: wardgate backup approve DEVICE [--version V]');
  const version = parseVersion(opts.version);
  const g = gatewayOnly(opts);
  const store = openWritableStore(g.path, g.config, g.stateDir);
  const { m, before } = await store.withDeviceLock(device, () => {
    const m = version !== undefined ? store.readManifest(device, version) : store.latest(device);
    if (m === undefined) throw new BackupStoreError(`no backup of ${device} to approve`);
    const before = readBaseline(store, device);
    writeBaseline(store, m, actor());
    return Promise.resolve({ m, before });
  });
  audit(g.stateDir, { actor: actor(), action: 'backup.approve', outcome: 'ok', detail: { device, version: m.version, plaintextSha256: m.plaintext.sha256, previous: before?.version ?? null } });
  io.out(`${device}: version ${m.version} (${m.time}, sha256 ${m.plaintext.sha256.slice(0, 16)}) is the approved baseline${before !== undefined ? ` (was version ${before.version})` : ''}`);
  return 0;
}

async function restore(args: string[], opts: DeviceCommandOptions, io: Io): Promise<number> {
  const [device, ...rest] = args;
  if (device === undefined || rest.length > 0) throw new UsageError('usage: wardgate backup restore DEVICE [--version V] [--yes]');
  const asked = parseVersion(opts.version);
  const { stateDir, store, target } = deviceContext(opts, device);
  const r = await restoreDevice({ store, target, ...(asked !== undefined ? { version: asked } : {}), write: opts.yes === true, actor: actor(), audit: (rec) => audit(stateDir, rec) });
  const why = { asked: '', baseline: ', the approved baseline', newest: ', the newest (no approved baseline)' }[r.why];
  io.out(`${device}: restoring version ${r.version} (${r.time}, sha256 ${r.sha256.slice(0, 16)})${why}`);
  const showChanges = (d: Drift) => {
    io.out(`${device}: the restore would change (now -> version ${r.version}):`);
    printDrift(io, d);
  };
  switch (r.status) {
    case 'unchanged':
      io.out(`${device}: already has this configuration; nothing to restore`);
      return 0;
    case 'cannot':
      showChanges(r.changes);
      io.err(`wardgate: the ${r.driver} driver cannot write a configuration back${r.driver === 'http' ? ' (give the driver a restore: block)' : ''}; restore ${device} by hand from: wardgate backup export ${device} --version ${r.version} --out FILE`);
      return 1;
    case 'preview':
      showChanges(r.changes);
      io.err(`wardgate: nothing was written; add --yes to write version ${r.version} to ${device}`);
      return 1;
    case 'restored':
      showChanges(r.changes);
      io.out(`${device}: restored version ${r.version}; what reads back equals it`);
      return 0;
    case 'failed':
      if (r.changes) showChanges(r.changes);
      if (r.stage === 'read-current') io.err(`wardgate: cannot read what ${device} has now (${r.error}); nothing was written`);
      else if (r.stage === 'write') io.err(`wardgate: restore of ${device} failed: ${r.error}`);
      else if (r.stage === 'read-back') io.err(`wardgate: ${device}: written, but it cannot be read back: ${r.error}`);
      else {
        io.err(`wardgate: ${device}: written, but what reads back differs from version ${r.version}:`);
        for (const line of r.after?.summary ?? []) io.err(`  ${line}`);
      }
      return 1;
  }
}

export async function deviceBackupCommand(sub: 'now' | 'import' | 'approve' | 'restore', args: string[], opts: DeviceCommandOptions, io: Io): Promise<number> {
  switch (sub) {
    case 'now':
      return now(args, opts, io);
    case 'import':
      return importCmd(args, opts, io);
    case 'approve':
      return approve(args, opts, io);
    case 'restore':
      return restore(args, opts, io);
  }
}
