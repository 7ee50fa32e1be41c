// The SFTP driver against an ssh2 server run here on loopback, with host and client keys made by
// OpenSSH's ssh-keygen (whose fingerprint is the pin an operator would copy); and the command and
// file drivers.
import { execFileSync } from 'node:child_process';
import { timingSafeEqual } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import ssh2, { type ParsedKey } from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BackupDriverError, createDriver } from '../../agent/backup/drivers/index.js';
import { DriverSchema } from '../../agent/backup/schema.js';
import { missing, never, tempDir } from './helpers.js';

const { Server, utils } = ssh2;
const { OPEN_MODE, STATUS_CODE } = utils.sftp;

const skip = missing('ssh-keygen (openssh-client)', ['ssh-keygen', '-lf', '/dev/null']) === undefined ? undefined : missing('ssh-keygen', ['sh', '-c', 'command -v ssh-keygen']);
if (skip) console.warn(`[backup drivers sftp] skipped: ${skip}`);

const CONFIG = Buffer.from('# monitor gateway\nserver=10.20.0.5\nport=2575\n');

describe.skipIf(skip !== undefined)('sftp driver against an ssh2 server', () => {
  const dir = tempDir('wg-backup-sftp-');
  let server: InstanceType<typeof Server>;
  let port: number;
  let hostKey: string;
  let otherKey: string;
  const reads: string[] = [];

  beforeAll(async () => {
    const keygen = (name: string) => execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', name, '-f', join(dir.path, name)]);
    keygen('host');
    keygen('client');
    keygen('other');
    const fp = (name: string) => /(SHA256:[A-Za-z0-9+/]+)/.exec(execFileSync('ssh-keygen', ['-lf', join(dir.path, `${name}.pub`), '-E', 'sha256'], { encoding: 'utf8' }))![1]!;
    hostKey = fp('host');
    otherKey = fp('other');
    writeFileSync(join(dir.path, 'password'), 'secret\n');
    const allowed = utils.parseKey(readFileSync(join(dir.path, 'client.pub')));
    if (allowed instanceof Error) throw allowed;
    const allowedKey: ParsedKey | undefined = Array.isArray(allowed) ? (allowed as ParsedKey[])[0] : (allowed);
    if (allowedKey === undefined) throw new Error('no client key');

    server = new Server({ hostKeys: [readFileSync(join(dir.path, 'host'))] }, (client) => {
      client.on('error', () => {});
      client.on('authentication', (ctx) => {
        if (ctx.username !== 'backup') return ctx.reject();
        if (ctx.method === 'password' && ctx.password === 'secret') return ctx.accept();
        if (ctx.method === 'publickey') {
          const pub = allowedKey.getPublicSSH();
          if (ctx.key.algo !== allowedKey.type || ctx.key.data.length !== pub.length || !timingSafeEqual(ctx.key.data, pub)) return ctx.reject();
          if (ctx.signature === undefined) return ctx.accept();
          if (ctx.blob !== undefined && allowedKey.verify(ctx.blob, ctx.signature, ctx.hashAlgo) === true) return ctx.accept();
        }
        ctx.reject();
      });
      client.on('ready', () => {
        client.on('session', (accept) => {
          const session = accept();
          session.on('sftp', (acceptSftp) => {
            const sftp = acceptSftp();
            const files: Record<string, Buffer> = { '/etc/device.conf': CONFIG };
            const handles = new Map<number, { path: string; done: boolean }>();
            let next = 0;
            sftp.on('STAT', (id, path) => {
              const f = files[path];
              if (f === undefined) return sftp.status(id, STATUS_CODE.NO_SUCH_FILE);
              sftp.attrs(id, { mode: 0o100644, uid: 0, gid: 0, size: f.length, atime: 0, mtime: 0 });
            });
            sftp.on('LSTAT', (id, path) => sftp.emit('STAT', id, path));
            sftp.on('OPEN', (id, path, flags) => {
              if (files[path] === undefined || flags !== (OPEN_MODE.READ as number)) return sftp.status(id, STATUS_CODE.NO_SUCH_FILE);
              reads.push(path);
              const h = Buffer.alloc(4);
              h.writeUInt32BE(next);
              handles.set(next++, { path, done: false });
              sftp.handle(id, h);
            });
            sftp.on('FSTAT', (id, handle) => {
              const f = files[handles.get(handle.readUInt32BE(0))?.path ?? ''];
              if (f === undefined) return sftp.status(id, STATUS_CODE.FAILURE);
              sftp.attrs(id, { mode: 0o100644, uid: 0, gid: 0, size: f.length, atime: 0, mtime: 0 });
            });
            sftp.on('READ', (id, handle, offset, length) => {
              const f = files[handles.get(handle.readUInt32BE(0))?.path ?? ''];
              if (f === undefined) return sftp.status(id, STATUS_CODE.FAILURE);
              if (offset >= f.length) return sftp.status(id, STATUS_CODE.EOF);
              sftp.data(id, f.subarray(offset, offset + length));
            });
            sftp.on('CLOSE', (id, handle) => {
              handles.delete(handle.readUInt32BE(0));
              sftp.status(id, STATUS_CODE.OK);
            });
          });
        });
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    await new Promise((r) => server?.close(r));
    dir.remove();
  });

  const drv = (extra: Record<string, unknown>) =>
    createDriver({ id: 'monitor', ipv4: '127.0.0.1' }, DriverSchema.parse({ type: 'sftp', port, username: 'backup', hostKey, path: '/etc/device.conf', ...extra }), { baseDir: dir.path });
  const fails = async (p: Promise<unknown>) => {
    const err = await p.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackupDriverError);
    return err as BackupDriverError;
  };

  it('fetches with a private key and with a password, the host key pinned', async () => {
    const got = await drv({ privateKeyFile: 'client' }).fetch(never);
    expect(got.bytes.equals(CONFIG)).toBe(true);
    expect(got.format).toBe('text');
    expect(got.source).toBe(`sftp backup@127.0.0.1:${port}:/etc/device.conf`);
    expect((await drv({ passwordFile: 'password' }).fetch(never)).bytes.equals(CONFIG)).toBe(true);
  });

  it('refuses a host key other than the pinned one, before authenticating', async () => {
    const before = reads.length;
    const err = await fails(drv({ hostKey: otherKey, passwordFile: 'password' }).fetch(never));
    expect(err.code).toBe('pin');
    expect(err.message).toContain(`the host key is ${hostKey}, and the pin is ${otherKey}`);
    expect(reads.length).toBe(before);
  });

  it('names refused credentials and a missing file', async () => {
    expect((await fails(drv({ privateKeyFile: 'other' }).fetch(never))).code).toBe('auth');
    expect((await fails(drv({ passwordFile: 'password', path: '/etc/absent.conf' }).fetch(never))).code).toBe('not-found');
  });
});

describe('command driver', () => {
  const dir = tempDir('wg-backup-cmd-');
  afterAll(() => dir.remove());
  const drv = (argv: string[], timeoutSeconds = 10) => createDriver({ id: 'lab' }, DriverSchema.parse({ type: 'command', argv, timeoutSeconds }), { baseDir: dir.path });

  it('takes stdout as the configuration, runs without a shell in the policy directory', async () => {
    writeFileSync(join(dir.path, 'export.txt'), 'analyser=on\n');
    const got = await drv(['cat', 'export.txt']).fetch(never);
    expect(got.bytes.toString()).toBe('analyser=on\n');
    expect(got.source).toBe('command cat export.txt');
    // No shell: a ";" is an argument, not a second command.
    const echoed = await drv(['echo', 'a;', 'rm', '-rf', 'x']).fetch(never);
    expect(echoed.bytes.toString()).toBe('a; rm -rf x\n');
  });

  it('a non-zero exit fails with its stderr; a missing program is invalid', async () => {
    const err = await drv(['sh', '-c', 'echo partial; echo "device busy" >&2; exit 3']).fetch(never).catch((e: unknown) => e);
    expect((err as BackupDriverError).code).toBe('exit');
    expect((err as Error).message).toMatch(/exit status 3: device busy/);
    const nf = await drv(['/nonexistent/exporter']).fetch(never).catch((e: unknown) => e);
    expect((nf as BackupDriverError).code).toBe('invalid');
  });

  it('its own timeout ends the command and what it started', async () => {
    const marker = join(dir.path, 'child.pid');
    const t0 = Date.now();
    const err = await drv(['sh', '-c', `sleep 30 & echo $! > ${marker}; wait`], 1).fetch(never).catch((e: unknown) => e);
    expect((err as BackupDriverError).code).toBe('timeout');
    expect(Date.now() - t0).toBeLessThan(5000);
    const child = Number(readFileSync(marker, 'utf8'));
    await new Promise((r) => setTimeout(r, 200));
    // Gone, or a zombie that init has not reaped yet (in a container, init may never reap it).
    const state = (() => {
      try {
        return /\) (\S)/.exec(readFileSync(`/proc/${child}/stat`, 'utf8'))?.[1];
      } catch {
        return 'gone';
      }
    })();
    expect(['gone', 'Z']).toContain(state);
  });

  it('the file driver hands over imported bytes, and has nothing to fetch without them', async () => {
    const cfg = DriverSchema.parse({ type: 'file' });
    const got = await createDriver({ id: 'x' }, cfg, { baseDir: dir.path, imported: { bytes: Buffer.from([0, 1, 2]), name: 'usb/x.bin' } }).fetch(never);
    expect(got).toEqual({ bytes: Buffer.from([0, 1, 2]), format: 'binary', source: 'file usb/x.bin' });
    const err = await createDriver({ id: 'x' }, cfg, { baseDir: dir.path }).fetch(never).catch((e: unknown) => e);
    expect((err as BackupDriverError).code).toBe('manual');
  });
});
