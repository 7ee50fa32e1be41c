// The TFTP client against Debian's tftpd-hpa (in.tftpd in the foreground on a loopback port):
// files of several blocks, an exact multiple of the block size (which ends with an empty DATA
// block), an empty file, the blksize option, a missing file, and a server that does not answer.
// A relay between client and server that drops packets proves the retransmissions.
import { createSocket, type Socket } from 'node:dgram';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BackupDriverError, createDriver } from '../../agent/backup/drivers/index.js';
import { tftpRead } from '../../agent/backup/drivers/tftp.js';
import { DriverSchema } from '../../agent/backup/schema.js';
import { missing, never, startProcess, tempDir, type Proc } from './helpers.js';

const IN_TFTPD = '/usr/sbin/in.tftpd';
const skip = missing('tftpd-hpa', [IN_TFTPD, '-V']) ?? (process.getuid?.() !== 0 ? 'not root: in.tftpd needs root to change to its tftp user' : undefined);
if (skip) console.warn(`[backup drivers tftp] skipped: ${skip}`);

function content(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

async function udpPort(): Promise<number> {
  const s = createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', r));
  const port = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/**
 * A relay standing between client and server, with its own transfer ids on both sides, that drops
 * the first copy of every packet `drop` picks: the client must send again what went unanswered.
 */
async function lossyRelay(serverPort: number, drop: (packet: Buffer, toServer: boolean) => boolean): Promise<{ port: number; dropped: string[]; close(): void }> {
  const front = createSocket('udp4');
  const back = createSocket('udp4');
  const dropped: string[] = [];
  const once = new Set<string>();
  let client: { address: string; port: number } | undefined;
  let server: { address: string; port: number } | undefined;
  const shouldDrop = (msg: Buffer, toServer: boolean) => {
    const key = `${toServer ? '>' : '<'}${msg.readUInt16BE(0)}:${msg.length >= 4 ? msg.readUInt16BE(2) : 0}`;
    if (once.has(key) || !drop(msg, toServer)) return false;
    once.add(key);
    dropped.push(key);
    return true;
  };
  front.on('message', (msg, from) => {
    client = { address: from.address, port: from.port };
    if (shouldDrop(msg, true)) return;
    back.send(msg, server?.port ?? serverPort, '127.0.0.1');
  });
  back.on('message', (msg, from) => {
    server = { address: from.address, port: from.port };
    if (client === undefined || shouldDrop(msg, false)) return;
    front.send(msg, client.port, client.address);
  });
  await new Promise<void>((r) => front.bind(0, '127.0.0.1', r));
  await new Promise<void>((r) => back.bind(0, '127.0.0.1', r));
  return {
    port: front.address().port,
    dropped,
    close: () => {
      for (const s of [front, back] as Socket[]) s.close();
    },
  };
}

describe.skipIf(skip !== undefined)('tftp driver against tftpd-hpa', () => {
  const dir = tempDir('wg-backup-tftp-');
  let server: Proc;
  let port: number;
  const files: Record<string, Buffer> = {
    'several.bin': content(512 * 5 + 100, 1),
    'exact.bin': content(512 * 4, 2),
    'empty.cfg': Buffer.alloc(0),
    'config.txt': Buffer.from('[network]\naddress=10.20.0.31\n'),
    'big.bin': content(1024 * 3 + 7, 3),
    'exact1024.bin': content(1024 * 2, 4),
    'long.bin': content(512 * 40 + 1, 5),
  };

  beforeAll(async () => {
    // in.tftpd drops to its tftp user: the directory and files must be readable by others.
    chmodSync(dir.path, 0o755);
    for (const [name, bytes] of Object.entries(files)) {
      writeFileSync(join(dir.path, name), bytes);
      chmodSync(join(dir.path, name), 0o644);
    }
    port = await udpPort();
    // -L: stay in the foreground; -s: chroot to the directory; -a: only this loopback address.
    server = await startProcess([IN_TFTPD, '-L', '-s', '-a', `127.0.0.1:${port}`, dir.path], /$/);
    // Ready once it answers a read.
    const end = Date.now() + 5000;
    for (;;) {
      try {
        await tftpRead('127.0.0.1', port, 'config.txt', never, undefined, { retransmitMs: 100, maxRetransmits: 1 });
        break;
      } catch (err) {
        if (Date.now() > end) throw new Error(`in.tftpd did not answer: ${String(err)} ${server.output()}`);
      }
    }
  });
  afterAll(async () => {
    await server?.stop();
    dir.remove();
  });

  const drv = (file: string, extra: Record<string, unknown> = {}) => createDriver({ id: 'pump', ipv4: '127.0.0.1' }, DriverSchema.parse({ type: 'tftp', port, file, ...extra }), { baseDir: dir.path });

  it('reads files of several blocks, an exact multiple of 512, and an empty one', async () => {
    for (const name of ['several.bin', 'exact.bin', 'empty.cfg', 'long.bin']) {
      const got = await drv(name).fetch(never);
      expect(got.bytes.equals(files[name]!), name).toBe(true);
    }
    const text = await drv('config.txt').fetch(never);
    expect(text.format).toBe('text');
    expect(text.source).toBe(`tftp 127.0.0.1:${port}/config.txt`);
    expect((await drv('several.bin').fetch(never)).format).toBe('binary');
  });

  it('negotiates a block size (RFC 2348)', async () => {
    for (const name of ['big.bin', 'exact1024.bin', 'several.bin']) {
      expect((await drv(name, { blockSize: 1024 }).fetch(never)).bytes.equals(files[name]!), name).toBe(true);
    }
  });

  it('names a missing file', async () => {
    const err = await drv('absent.cfg').fetch(never).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackupDriverError);
    expect((err as BackupDriverError).code).toBe('not-found');
    expect((err as Error).message).toMatch(/error 1: File not found/);
  });

  it('sends again what went unanswered: the request, an ACK, and after a lost DATA block', async () => {
    const relay = await lossyRelay(port, (msg, toServer) => {
      const op = msg.readUInt16BE(0);
      const block = msg.length >= 4 ? msg.readUInt16BE(2) : -1;
      return (toServer && op === 1) || (toServer && op === 4 && block === 2) || (!toServer && op === 3 && block === 4);
    });
    try {
      // tftpd-hpa ignores a repeated ACK (no Sorcerer's Apprentice) and sends a lost DATA block
      // again only on its own timeout (1 s): the client must keep asking past that.
      const got = await tftpRead('127.0.0.1', relay.port, 'several.bin', never, undefined, { retransmitMs: 200, maxRetransmits: 10 });
      expect(got.equals(files['several.bin']!)).toBe(true);
      expect(relay.dropped).toHaveLength(3);
      expect(relay.dropped.slice(1)).toEqual(['>4:2', '<3:4']);
    } finally {
      relay.close();
    }
  });

  it('gives up on a server that never answers', async () => {
    const silent = await udpPort();
    const err = await tftpRead('127.0.0.1', silent, 'x', never, undefined, { retransmitMs: 100, maxRetransmits: 2 }).catch((e: unknown) => e);
    expect((err as BackupDriverError).code).toBe('timeout');
    expect((err as Error).message).toMatch(/no answer after 3 tries of 100 ms/);
  });
});
