// What every driver shares: the error family, secrets read from files at use, the size limit, and
// the plumbing between an AbortSignal and the sockets a driver holds.
import { readFile } from 'node:fs/promises';
import { isAbsolute, resolve } from 'node:path';
import type { FetchedConfig } from '../types.js';

/**
 * The kind of failure, for callers and tests to match on: timeout (no answer in time; for Modbus
 * also a unit that does not answer), refused / unreachable / reset (the network), auth (credentials
 * refused), pin (certificate or host key does not match), not-found, too-large (over the size
 * limit), protocol (the peer answered something we cannot use), exception (a Modbus exception),
 * status (an HTTP status other than 2xx), exit (a command failed), verify (a restore did not read
 * back as written), invalid (the configuration or the bytes to restore are unusable), secret
 * (a secret file cannot be read), manual (the driver has nothing to fetch: import by hand),
 * aborted (the caller gave up).
 */
export type DriverErrorCode =
  | 'timeout'
  | 'refused'
  | 'unreachable'
  | 'reset'
  | 'auth'
  | 'pin'
  | 'not-found'
  | 'too-large'
  | 'protocol'
  | 'exception'
  | 'status'
  | 'exit'
  | 'verify'
  | 'invalid'
  | 'secret'
  | 'manual'
  | 'aborted';

// A retry cannot fix a wrong password, a foreign certificate, a missing file or bad bytes; it
// can fix a device that was busy, rebooting or briefly off the network.
const RETRYABLE: ReadonlySet<DriverErrorCode> = new Set(['timeout', 'refused', 'unreachable', 'reset', 'protocol', 'status', 'exit']);

export class BackupDriverError extends Error {
  override readonly name = 'BackupDriverError';
  constructor(
    readonly code: DriverErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  get retryable(): boolean {
    return RETRYABLE.has(this.code);
  }
}

/** The largest configuration any driver accepts. */
export const MAX_CONFIG_BYTES = 16 * 1024 * 1024;

export interface DriverContext {
  /** The policy file's directory: relative secret files and a command's working directory. */
  baseDir: string;
}

/** Reads a secret file at use (so that a rotated secret needs no reload); one trailing newline is dropped. */
export async function readSecret(ctx: DriverContext, file: string, what: string): Promise<string> {
  return (await readSecretBytes(ctx, file, what)).toString('utf8').replace(/\r?\n$/, '');
}

export async function readSecretBytes(ctx: DriverContext, file: string, what: string): Promise<Buffer> {
  const path = isAbsolute(file) ? file : resolve(ctx.baseDir, file);
  try {
    return await readFile(path);
  } catch (err) {
    throw new BackupDriverError('secret', `cannot read the ${what} file ${path}: ${errorMessage(err)}`, { cause: err });
  }
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  if (typeof err === 'object' && err !== null && typeof (err as { message?: unknown }).message === 'string') return (err as { message: string }).message;
  return String(err);
}

export function errorCode(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const { code, errno } = err as { code?: unknown; errno?: unknown };
  if (typeof code === 'string') return code;
  return typeof errno === 'string' ? errno : undefined;
}

/** A socket-level error as a driver error, naming what was being reached. */
export function networkError(err: unknown, target: string): BackupDriverError {
  if (err instanceof BackupDriverError) return err;
  const code = errorCode(err);
  const msg = errorMessage(err);
  switch (code) {
    case 'ECONNREFUSED':
      return new BackupDriverError('refused', `${target}: connection refused`, { cause: err });
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'EHOSTDOWN':
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return new BackupDriverError('unreachable', `${target}: ${msg}`, { cause: err });
    case 'ECONNRESET':
    case 'EPIPE':
      return new BackupDriverError('reset', `${target}: connection reset`, { cause: err });
    case 'ETIMEDOUT':
      return new BackupDriverError('timeout', `${target}: timed out`, { cause: err });
    default:
      return new BackupDriverError('protocol', `${target}: ${msg}`, { cause: err });
  }
}

/** The error for a signal that fired: a timeout (AbortSignal.timeout's reason) or the caller's abort. */
export function abortError(signal: AbortSignal, target: string): BackupDriverError {
  const reason: unknown = signal.reason;
  if (reason instanceof BackupDriverError) return reason;
  if (reason instanceof Error && reason.name === 'TimeoutError') return new BackupDriverError('timeout', `${target}: timed out`, { cause: reason });
  return new BackupDriverError('aborted', `${target}: aborted`, { cause: reason });
}

/**
 * Runs `work` until it settles or the signal fires; `cleanup` runs either way (it closes what
 * `work` opened, which also makes a pending `work` settle), and is waited for, so that a port is
 * free again when this returns.
 */
export async function abortable<T>(signal: AbortSignal, target: string, work: () => Promise<T>, cleanup: () => void | Promise<void>): Promise<T> {
  if (signal.aborted) {
    await cleanup();
    throw abortError(signal, target);
  }
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(abortError(signal, target));
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([work(), aborted]);
  } finally {
    if (onAbort) signal.removeEventListener('abort', onAbort);
    await cleanup();
  }
}

/**
 * Text when the bytes are UTF-8 without NUL or other control characters than tab, CR, LF and FF
 * (so that drift can be shown as a line diff); binary otherwise.
 */
export function detectFormat(bytes: Buffer): 'text' | 'binary' {
  if (bytes.length === 0) return 'text';
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x08\x0b\x0e-\x1f\x7f]/.test(bytes.toString('latin1'))) return 'binary';
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    return 'text';
  } catch {
    return 'binary';
  }
}

export function fetched(bytes: Buffer, source: string): FetchedConfig {
  return { bytes, format: detectFormat(bytes), source };
}

/** The host for a driver: its own setting, else the device's address. */
export function deviceHost(host: string | undefined, device: DeviceAddress, driver: string): string {
  const h = host ?? device.ipv4 ?? device.ipv6;
  if (h === undefined) throw new BackupDriverError('invalid', `device ${device.id}: the ${driver} driver needs a host (the device has no ipv4 or ipv6 address)`);
  return h;
}

export interface DeviceAddress {
  id: string;
  ipv4?: string | undefined;
  ipv6?: string | undefined;
}

/** host:port, with an IPv6 address in brackets. */
export function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
