// SFTP through ssh2: one file, read whole. The host key is pinned by its SHA-256 fingerprint
// (OpenSSH's "SHA256:<base64>" form, as `ssh-keygen -lf` prints it); there is no trust on first
// use, because the first use is exactly when nobody is watching.
import { createHash } from 'node:crypto';
import { Client, type ConnectConfig, type SFTPWrapper } from 'ssh2';
import type { BackupDriver, FetchedConfig } from '../types.js';
import type { DriverOf } from '../schema.js';
import { abortable, BackupDriverError, errorMessage, fetched, hostPort, MAX_CONFIG_BYTES, networkError, readSecret, readSecretBytes, type DriverContext } from './common.js';

/** The OpenSSH fingerprint of a host key blob (RFC 4253 6.6 encoding): SHA256:<base64, unpadded>. */
export function sshFingerprint(keyBlob: Buffer): string {
  return `SHA256:${createHash('sha256').update(keyBlob).digest('base64').replace(/=+$/, '')}`;
}

// SFTP status codes (draft-ietf-secsh-filexfer-02, 7).
const SSH_FX_NO_SUCH_FILE = 2;
const SSH_FX_PERMISSION_DENIED = 3;

export function sftpDriver(cfg: DriverOf<'sftp'>, host: string, ctx: DriverContext, opts: { maxBytes?: number } = {}): BackupDriver {
  const maxBytes = opts.maxBytes ?? MAX_CONFIG_BYTES;
  const where = hostPort(host, cfg.port);
  const source = `sftp ${cfg.username}@${where}:${cfg.path}`;
  const pinned = cfg.hostKey.replace(/=$/, '');

  return {
    type: 'sftp',
    async fetch(signal: AbortSignal): Promise<FetchedConfig> {
      const credentials: Partial<ConnectConfig> =
        cfg.privateKeyFile !== undefined
          ? {
              privateKey: await readSecretBytes(ctx, cfg.privateKeyFile, 'private key'),
              ...(cfg.passphraseFile !== undefined ? { passphrase: await readSecret(ctx, cfg.passphraseFile, 'passphrase') } : {}),
            }
          : { password: await readSecret(ctx, cfg.passwordFile ?? '', 'password') };
      const client = new Client();
      let seenKey: string | undefined;
      const bytes = await abortable(
        signal,
        source,
        () =>
          new Promise<Buffer>((resolve, reject) => {
            client.once('error', (err: Error & { level?: string }) => {
              if (seenKey !== undefined && seenKey !== pinned) reject(new BackupDriverError('pin', `${where}: the host key is ${seenKey}, and the pin is ${pinned}: refused`));
              else if (err.level === 'client-authentication') reject(new BackupDriverError('auth', `${where}: user ${cfg.username} was refused (${cfg.privateKeyFile !== undefined ? 'private key' : 'password'})`, { cause: err }));
              else reject(networkError(err, where));
            });
            client.once('close', () => reject(new BackupDriverError('reset', `${where}: the connection closed before the file was read`)));
            client.once('ready', () => {
              client.sftp((err, sftp) => {
                if (err) reject(new BackupDriverError('protocol', `${where}: no SFTP subsystem: ${err.message}`, { cause: err }));
                else readWhole(sftp, cfg.path, maxBytes, `${where}:${cfg.path}`).then(resolve, reject);
              });
            });
            try {
              client.connect({
                host,
                port: cfg.port,
                username: cfg.username,
                ...credentials,
                hostVerifier: (key: Buffer) => {
                  seenKey = sshFingerprint(key);
                  return seenKey === pinned;
                },
                // The overall deadline is the caller's signal; this only bounds the handshake.
                readyTimeout: 60000,
              });
            } catch (err) {
              // ssh2 throws synchronously for a private key it cannot parse.
              reject(new BackupDriverError('secret', `${where}: ${errorMessage(err)}`, { cause: err }));
            }
          }),
        () => void client.end(),
      );
      return fetched(bytes, source);
    },
  };
}

function sftpError(err: unknown, what: string): BackupDriverError {
  const code = (err as { code?: unknown }).code;
  if (code === SSH_FX_NO_SUCH_FILE) return new BackupDriverError('not-found', `${what}: no such file`, { cause: err });
  if (code === SSH_FX_PERMISSION_DENIED) return new BackupDriverError('auth', `${what}: permission denied`, { cause: err });
  return new BackupDriverError('protocol', `${what}: ${errorMessage(err)}`, { cause: err });
}

function readWhole(sftp: SFTPWrapper, path: string, maxBytes: number, what: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    sftp.stat(path, (err, stats) => {
      if (err) return reject(sftpError(err, what));
      if (!stats.isFile()) return reject(new BackupDriverError('invalid', `${what}: not a regular file`));
      if (stats.size > maxBytes) return reject(new BackupDriverError('too-large', `${what}: ${stats.size} bytes, over the limit of ${maxBytes}`));
      const chunks: Buffer[] = [];
      let size = 0;
      const stream = sftp.createReadStream(path);
      stream.on('data', (chunk: Buffer) => {
        size += chunk.length;
        // The file may grow between stat and read.
        if (size > maxBytes) {
          stream.destroy();
          reject(new BackupDriverError('too-large', `${what}: more than ${maxBytes} bytes`));
        } else chunks.push(chunk);
      });
      stream.once('error', (e: unknown) => reject(sftpError(e, what)));
      stream.once('end', () => resolve(Buffer.concat(chunks)));
    });
  });
}
