// A store in a temp directory with real key files, as keygen makes them.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDataKeyFile, FileKeyProvider, loadGatewayKey } from '../../agent/backup/keys.js';
import { BackupStore, type StoreOptions } from '../../agent/backup/store.js';
import type { FetchedConfig } from '../../agent/backup/types.js';

export interface TestStore {
  dir: string;
  stateDir: string;
  keyFile: string;
  store: BackupStore;
  open(extra?: Partial<StoreOptions>): BackupStore;
  cleanup(): void;
}

export function makeStore(extra: Partial<StoreOptions> = {}): TestStore {
  const dir = mkdtempSync(join(tmpdir(), 'wg-backup-'));
  const stateDir = join(dir, 'state');
  const keyFile = join(stateDir, 'keys', 'backup-data.key');
  createDataKeyFile(keyFile);
  const open = (more: Partial<StoreOptions> = {}): BackupStore =>
    BackupStore.open({ stateDir, gateway: 'site-a/gw-1', key: loadGatewayKey(stateDir), keys: new FileKeyProvider(keyFile), ...extra, ...more });
  return { dir, stateDir, keyFile, store: open(), open, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function text(s: string, source = 'file /tmp/x.cfg'): FetchedConfig {
  return { bytes: Buffer.from(s), format: 'text', source };
}

/** Flips one bit of the byte at `at` (negative: from the end). */
export function flip(buf: Buffer, at: number): Buffer {
  const out = Buffer.from(buf);
  const i = at < 0 ? out.length + at : at;
  out[i] = out[i]! ^ 0x01;
  return out;
}
