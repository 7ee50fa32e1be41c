// Timeouts and retries around any driver: each try gets its own deadline (timeoutSeconds), a
// failure that a retry can fix (a timeout, a refused or reset connection, a 5xx) is tried again
// after a backoff, and one that cannot (credentials, a pin, a missing file) is not.
import type { BackupDriver, FetchedConfig } from '../types.js';
import { abortError, BackupDriverError } from './common.js';

export interface RetryPolicy {
  timeoutSeconds: number;
  /** Tries after the first. */
  retries: number;
}

export interface RetryOptions {
  /** The first backoff; each next one doubles, up to maxBackoffMs. */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** Told of each failed try that will be tried again. */
  onRetry?: (err: BackupDriverError, attempt: number, delayMs: number) => void;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(abortError(signal, 'backoff'));
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortError(signal, 'backoff'));
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** The error a try ended with, as a driver error (the try's own deadline is a timeout). */
function asDriverError(err: unknown, attempt: AbortSignal, outer: AbortSignal, type: string): BackupDriverError {
  if (err instanceof BackupDriverError) {
    // A try cut short by its own deadline, not by the caller: a timeout, whatever the driver made of it.
    if (err.code === 'aborted' && attempt.aborted && !outer.aborted) return new BackupDriverError('timeout', err.message.replace(/aborted$/, 'timed out'), { cause: err });
    return err;
  }
  return new BackupDriverError('protocol', `${type}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
}

export function withRetries(driver: BackupDriver, policy: RetryPolicy, opts: RetryOptions = {}): BackupDriver {
  const base = opts.backoffMs ?? 2000;
  const cap = opts.maxBackoffMs ?? 60000;
  const timeoutMs = policy.timeoutSeconds * 1000;

  async function fetch(signal: AbortSignal): Promise<FetchedConfig> {
    const tries = policy.retries + 1;
    for (let attempt = 1; ; attempt++) {
      const trySignal = AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]);
      try {
        return await driver.fetch(trySignal);
      } catch (raw) {
        const err = asDriverError(raw, trySignal, signal, driver.type);
        if (signal.aborted || !err.retryable || attempt >= tries) {
          if (attempt === 1) throw err;
          throw new BackupDriverError(err.code, `${err.message} (try ${attempt} of ${tries})`, { cause: err });
        }
        // Equal jitter: half the backoff fixed, half random, so that gateways that lost the same
        // device at once do not all come back to it in step.
        const full = Math.min(cap, base * 2 ** (attempt - 1));
        const delay = full / 2 + Math.random() * (full / 2);
        opts.onRetry?.(err, attempt, delay);
        await sleep(delay, signal);
      }
    }
  }

  const wrapped: BackupDriver = { type: driver.type, fetch };
  const restore = driver.restore?.bind(driver);
  if (restore !== undefined) {
    // A restore is not tried again by itself: a person watches it, and a POST need not be idempotent.
    wrapped.restore = async (bytes: Buffer, signal: AbortSignal): Promise<void> => {
      const trySignal = AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]);
      try {
        await restore(bytes, trySignal);
      } catch (raw) {
        throw asDriverError(raw, trySignal, signal, driver.type);
      }
    };
  }
  return wrapped;
}
