// One driver per device, from its policy's `backup.driver` block. createDriver builds the bare
// driver; createDeviceDriver also wraps it in the device's timeout and retries.
import type { BackupDriver } from '../types.js';
import type { BackupDeviceConfig, DriverConfig } from '../schema.js';
import { commandDriver } from './command.js';
import { deviceHost, type DeviceAddress, type DriverContext } from './common.js';
import { fileDriver, type Imported } from './file.js';
import { httpDriver } from './http.js';
import { modbusRtuDriver, modbusTcpDriver } from './modbus.js';
import { withRetries, type RetryOptions } from './retry.js';
import { sftpDriver } from './sftp.js';
import { tftpDriver } from './tftp.js';

export { BackupDriverError, MAX_CONFIG_BYTES, type DeviceAddress, type DriverContext, type DriverErrorCode } from './common.js';
export { parseModbusDocument, type ModbusDocument, type ModbusRangeValues } from './modbus.js';
export { withRetries, type RetryOptions, type RetryPolicy } from './retry.js';
export type { Imported } from './file.js';

export interface CreateDriverContext extends DriverContext {
  /** For the file driver: the bytes being imported by hand. */
  imported?: Imported;
}

export function createDriver(device: DeviceAddress, cfg: DriverConfig, ctx: CreateDriverContext): BackupDriver {
  switch (cfg.type) {
    case 'modbus-tcp':
      return modbusTcpDriver(cfg, deviceHost(cfg.host, device, cfg.type));
    case 'modbus-rtu':
      return modbusRtuDriver(cfg);
    case 'http':
      return httpDriver(cfg, ctx);
    case 'sftp':
      return sftpDriver(cfg, deviceHost(cfg.host, device, cfg.type), ctx);
    case 'tftp':
      return tftpDriver(cfg, deviceHost(cfg.host, device, cfg.type));
    case 'file':
      return fileDriver(device.id, ctx.imported);
    case 'command':
      return commandDriver(cfg, ctx);
  }
}

/** The device's driver with its timeout and retries (backup.timeoutSeconds, backup.retries). */
export function createDeviceDriver(device: DeviceAddress, backup: BackupDeviceConfig, ctx: CreateDriverContext, retry?: RetryOptions): BackupDriver {
  return withRetries(createDriver(device, backup.driver, ctx), { timeoutSeconds: backup.timeoutSeconds, retries: backup.retries }, retry);
}
