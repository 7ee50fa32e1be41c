export interface FetchedConfig {
  bytes: Buffer;                       // the configuration as fetched
  format: 'text' | 'binary' | 'modbus';  // modbus: JSON {"ranges":[{"kind":"holding"|"coil"|"input"|"discrete","unit":1,"address":0,"values":[...]}]}
  source: string;                      // what was read, for the manifest: "modbus-tcp 10.20.0.31:502 unit 1", "https://…/config"
}
export interface BackupDriver {
  readonly type: string;               // 'modbus-tcp' | 'modbus-rtu' | 'http' | 'sftp' | 'tftp' | 'file' | 'command'
  fetch(signal: AbortSignal): Promise<FetchedConfig>;
  /** Writes a configuration back; absent when the driver cannot. */
  restore?(bytes: Buffer, signal: AbortSignal): Promise<void>;
}
