// The backups as a module of the agent: the store opened from gateway.yaml's `backup:` block
// (with the gateway's signing key and the data key, both made by `wardgate backup keygen`) and
// the service that runs the schedules. Missing keys fail the module's start with a message that
// says what to run; the agent goes on without backups.
import { dirname, isAbsolute, join } from 'node:path';
import { ConfigError } from '../config/diagnostics.js';
import { loadConfig } from '../config/load.js';
import type { GatewayConfig } from '../config/schema.js';
import type { Module } from '../module.js';
import { baselineProtect } from './baseline.js';
import { BackupKeyError } from './errors.js';
import { FileKeyProvider, loadGatewayKey } from './keys.js';
import { backupTargets, type BackupTarget } from './run.js';
import { BackupService, type BackupEvent, type ServiceLog } from './service.js';
import { BackupStore } from './store.js';

/** The data key's file: gateway.yaml's backup.keyFile (relative to that file), else <stateDir>/keys/backup-data.key. */
export function dataKeyFile(gatewayPath: string, config: GatewayConfig, stateDir: string): string {
  const k = config.backup.keyFile;
  if (k === undefined) return join(stateDir, 'keys', 'backup-data.key');
  return isAbsolute(k) ? k : join(dirname(gatewayPath), k);
}

/** The store for writing: signing key, data key, retention, and the approved baselines protected. */
export function openWritableStore(gatewayPath: string, config: GatewayConfig, stateDir: string): BackupStore {
  const keyFile = dataKeyFile(gatewayPath, config, stateDir);
  let key;
  let keys;
  try {
    key = loadGatewayKey(stateDir, { create: false });
    keys = new FileKeyProvider(keyFile);
  } catch (err) {
    if (err instanceof BackupKeyError) throw new BackupKeyError(`${err.message} (make the keys with: wardgate backup keygen)`);
    throw err;
  }
  const b = config.backup;
  return BackupStore.open({
    stateDir,
    gateway: `${config.site}/${config.gateway}`,
    key,
    keys,
    retention: { last: b.retention.last, dailyDays: b.retention.dailyDays, diskBudgetBytes: b.diskBudgetBytes },
    protect: baselineProtect(stateDir),
  });
}

/** The devices with a `backup:` block; none while the policy files do not load (the controller says so). */
export function backupTargetsOf(gatewayPath: string): BackupTarget[] {
  try {
    return backupTargets(loadConfig(gatewayPath));
  } catch (err) {
    if (err instanceof ConfigError) return [];
    throw err;
  }
}

export interface BackupModuleDeps {
  gatewayPath: string;
  config: GatewayConfig;
  stateDir: string;
  targets: BackupTarget[];
  event: BackupEvent;
  log: ServiceLog;
  /** The store to use (the agent shares one with its backup commands); opened here when not given. */
  store?: () => BackupStore;
}

export function backupModule(deps: BackupModuleDeps): Module & { service(): BackupService | undefined } {
  let service: BackupService | undefined;
  return {
    name: 'backup',
    service: () => service,
    start: () => {
      const store = deps.store?.() ?? openWritableStore(deps.gatewayPath, deps.config, deps.stateDir);
      service = new BackupService({ store, targets: deps.targets, event: deps.event, log: deps.log });
      service.start();
    },
    stop: async () => {
      await service?.stop();
      service = undefined;
    },
  };
}
