// The command driver: a program whose standard output is the configuration (a vendor's export
// tool, a script around an undocumented protocol). Run without a shell, in its own process group
// so that a timeout ends whatever it started too; a non-zero exit is a failure, with its stderr.
import { spawn } from 'node:child_process';
import type { BackupDriver, FetchedConfig } from '../types.js';
import type { DriverOf } from '../schema.js';
import { BackupDriverError, fetched, MAX_CONFIG_BYTES, type DriverContext } from './common.js';

const STDERR_KEPT = 2048;
/** Between SIGTERM and SIGKILL for a command that is stopped. */
const KILL_GRACE_MS = 1000;

export function commandDriver(cfg: DriverOf<'command'>, ctx: DriverContext, opts: { maxBytes?: number } = {}): BackupDriver {
  const maxBytes = opts.maxBytes ?? MAX_CONFIG_BYTES;
  const shown = cfg.argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
  const source = `command ${shown}`;
  return {
    type: 'command',
    fetch(signal: AbortSignal): Promise<FetchedConfig> {
      return new Promise<FetchedConfig>((resolve, reject) => {
        if (signal.aborted) return reject(new BackupDriverError('aborted', `${source}: aborted`));
        const [program, ...args] = cfg.argv;
        const child = spawn(program ?? '', args, { cwd: ctx.baseDir, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
        const chunks: Buffer[] = [];
        let size = 0;
        let stderr = '';
        let stopped: BackupDriverError | undefined;
        let killTimer: NodeJS.Timeout | undefined;
        const stop = (why: BackupDriverError) => {
          if (stopped !== undefined || child.pid === undefined) return;
          stopped = why;
          const group = (sig: NodeJS.Signals) => {
            try {
              process.kill(-(child.pid as number), sig);
            } catch {
              // the group is gone already
            }
          };
          group('SIGTERM');
          killTimer = setTimeout(() => group('SIGKILL'), KILL_GRACE_MS);
        };
        const timeout = setTimeout(() => stop(new BackupDriverError('timeout', `${source}: no exit within ${cfg.timeoutSeconds} s`)), cfg.timeoutSeconds * 1000);
        const onAbort = () => {
          const reason: unknown = signal.reason;
          stop(reason instanceof Error && reason.name === 'TimeoutError' ? new BackupDriverError('timeout', `${source}: timed out`) : new BackupDriverError('aborted', `${source}: aborted`));
        };
        signal.addEventListener('abort', onAbort, { once: true });

        child.stdout.on('data', (d: Buffer) => {
          size += d.length;
          if (size > maxBytes) stop(new BackupDriverError('too-large', `${source}: more than ${maxBytes} bytes of output`));
          else chunks.push(d);
        });
        child.stderr.on('data', (d: Buffer) => {
          stderr = (stderr + d.toString()).slice(-STDERR_KEPT);
        });
        let spawnError: Error | undefined;
        child.once('error', (err) => (spawnError = err));
        child.once('close', (code, sig) => {
          clearTimeout(timeout);
          clearTimeout(killTimer);
          signal.removeEventListener('abort', onAbort);
          // A program that cannot be started will not start on a retry either.
          if (spawnError !== undefined) return reject(new BackupDriverError('invalid', `${source}: cannot run ${program ?? ''}: ${spawnError.message}`, { cause: spawnError }));
          if (stopped !== undefined) return reject(stopped);
          const said = stderr.trim() ? `: ${stderr.trim()}` : '';
          if (sig !== null) return reject(new BackupDriverError('exit', `${source}: killed by ${sig}${said}`));
          if (code !== 0) return reject(new BackupDriverError('exit', `${source}: exit status ${code ?? '?'}${said}`));
          resolve(fetched(Buffer.concat(chunks), source));
        });
      });
    },
  };
}
