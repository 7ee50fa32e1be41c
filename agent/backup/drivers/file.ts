// The file driver: a configuration that no protocol reaches (a USB stick, a service laptop's
// export) is imported by hand. The driver has nothing to fetch by itself; the importer hands it
// the bytes and their name.
import type { BackupDriver, FetchedConfig } from '../types.js';
import { BackupDriverError, fetched } from './common.js';

export interface Imported {
  bytes: Buffer;
  /** Where the bytes came from (a file name), for the manifest. */
  name: string;
}

export function fileDriver(deviceId: string, imported: Imported | undefined): BackupDriver {
  return {
    type: 'file',
    fetch(signal: AbortSignal): Promise<FetchedConfig> {
      if (signal.aborted) return Promise.reject(new BackupDriverError('aborted', `device ${deviceId}: aborted`));
      if (imported === undefined) return Promise.reject(new BackupDriverError('manual', `device ${deviceId}: its configuration is imported by hand (wardgate backup import); there is nothing to fetch`));
      return Promise.resolve(fetched(imported.bytes, `file ${imported.name}`));
    },
  };
}
