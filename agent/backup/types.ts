// The seam between backup drivers (which fetch a device's configuration) and the store (which
// keeps it encrypted and signed). Both sides import this file and nothing else of each other.

export interface FetchedConfig {
  /** The configuration as fetched. */
  bytes: Buffer;
  /**
   * modbus: JSON {"ranges":[{"kind":"holding"|"coil"|"input"|"discrete","unit":1,"address":0,"values":[...]}]}
   */
  format: 'text' | 'binary' | 'modbus';
  /** What was read, for the manifest: "modbus-tcp 10.20.0.31:502 unit 1", "https://…/config". */
  source: string;
}

export interface BackupDriver {
  /** 'modbus-tcp' | 'modbus-rtu' | 'http' | 'sftp' | 'tftp' | 'file' | 'command' */
  readonly type: string;
  fetch(signal: AbortSignal): Promise<FetchedConfig>;
  /** Writes a configuration back; absent when the driver cannot. */
  restore?(bytes: Buffer, signal: AbortSignal): Promise<void>;
}
