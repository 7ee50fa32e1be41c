// A TFTP client for reading one file (RFC 1350), in octet mode, with the block size option
// (RFC 2347 option extension, RFC 2348 blksize) when one is configured. Lock-step: each DATA
// is answered by its ACK; the last packet sent is sent again when nothing comes in time.
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { isIP } from 'node:net';
import type { BackupDriver, FetchedConfig } from '../types.js';
import type { DriverOf } from '../schema.js';
import { abortable, BackupDriverError, fetched, hostPort, MAX_CONFIG_BYTES, networkError } from './common.js';

// Opcodes (RFC 1350 section 5; OACK from RFC 2347).
const RRQ = 1;
const DATA = 3;
const ACK = 4;
const ERROR = 5;
const OACK = 6;

// Error codes (RFC 1350 appendix; 8 from RFC 2347).
const ERR_NOT_FOUND = 1;
const ERR_ACCESS = 2;
const ERR_DISK_FULL = 3;
const ERR_UNKNOWN_TID = 5;
const ERR_OPTION = 8;

const DEFAULT_BLOCK = 512;

export interface TftpOptions {
  /** How long to wait for the next packet before sending the last one again. */
  retransmitMs?: number;
  /** How many times the same packet is sent again before giving up. */
  maxRetransmits?: number;
  maxBytes?: number;
}

function rrq(file: string, blockSize: number | undefined): Buffer {
  const parts = [Buffer.from([0, RRQ]), Buffer.from(`${file}\0octet\0`, 'latin1')];
  if (blockSize !== undefined) parts.push(Buffer.from(`blksize\0${blockSize}\0`, 'latin1'));
  return Buffer.concat(parts);
}

function ack(block: number): Buffer {
  return Buffer.from([0, ACK, block >> 8, block & 0xff]);
}

function errorPacket(code: number, message: string): Buffer {
  return Buffer.concat([Buffer.from([0, ERROR, code >> 8, code & 0xff]), Buffer.from(`${message}\0`, 'latin1')]);
}

/** NUL-terminated strings, pairwise: an OACK's option names and values. */
function parseOptions(body: Buffer): Map<string, string> {
  const fields = body.toString('latin1').split('\0');
  const out = new Map<string, string>();
  for (let i = 0; i + 1 < fields.length; i += 2) out.set((fields[i] ?? '').toLowerCase(), fields[i + 1] ?? '');
  return out;
}

/** Reads `file` from a TFTP server; resolves with its bytes. */
export async function tftpRead(host: string, port: number, file: string, signal: AbortSignal, blockSize?: number, opts: TftpOptions = {}): Promise<Buffer> {
  const retransmitMs = opts.retransmitMs ?? 1000;
  const maxRetransmits = opts.maxRetransmits ?? 5;
  const maxBytes = opts.maxBytes ?? MAX_CONFIG_BYTES;
  const where = `${hostPort(host, port)}/${file}`;
  const socket: Socket = createSocket(isIP(host) === 6 ? 'udp6' : 'udp4');
  let timer: NodeJS.Timeout | undefined;

  const transfer = () =>
    new Promise<Buffer>((resolve, reject) => {
      let peer: { address: string; port: number } | undefined;
      let asked = blockSize;
      let size = DEFAULT_BLOCK;
      let expected = 1;
      let received = 0;
      const chunks: Buffer[] = [];
      let last = rrq(file, asked);
      let tries = 0;
      let done = false;

      const finish = (err: BackupDriverError | undefined, value?: Buffer) => {
        done = true;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(value ?? Buffer.alloc(0));
      };
      const send = (packet: Buffer, to = peer ?? { address: host, port }) => {
        socket.send(packet, to.port, to.address, (err) => {
          if (err && !done) finish(networkError(err, where));
        });
      };
      // Sends `packet` and waits for an answer, sending it again on silence.
      const exchange = (packet: Buffer) => {
        last = packet;
        tries = 0;
        send(packet);
        arm();
      };
      const arm = () => {
        clearTimeout(timer);
        timer = setTimeout(() => {
          if (done) return;
          if (++tries > maxRetransmits) {
            finish(new BackupDriverError('timeout', `tftp ${where}: no answer after ${maxRetransmits + 1} tries of ${retransmitMs} ms${received > 0 ? ` (stopped at block ${expected}, ${received} bytes in)` : ''}`));
            return;
          }
          send(last);
          arm();
        }, retransmitMs);
      };

      socket.on('error', (err) => {
        if (!done) finish(networkError(err, where));
      });
      socket.on('message', (msg: Buffer, from: RemoteInfo) => {
        if (done || msg.length < 4) return;
        // The server answers from a port of its own, its transfer id (RFC 1350 section 4); a
        // packet from any other source is told so, and the transfer goes on.
        if (peer === undefined) {
          if (from.address !== host && !(isIP(host) === 0)) return;
          peer = { address: from.address, port: from.port };
        } else if (from.port !== peer.port || from.address !== peer.address) {
          send(errorPacket(ERR_UNKNOWN_TID, 'Unknown transfer ID'), { address: from.address, port: from.port });
          return;
        }
        const opcode = msg.readUInt16BE(0);
        switch (opcode) {
          case OACK: {
            if (expected !== 1 || received !== 0) return;
            const options = parseOptions(msg.subarray(2));
            const agreed = Number(options.get('blksize'));
            // RFC 2348: the server may only lower the size asked for.
            if (asked === undefined || !Number.isInteger(agreed) || agreed < 8 || agreed > asked) {
              send(errorPacket(ERR_OPTION, 'bad blksize'));
              finish(new BackupDriverError('protocol', `tftp ${where}: the server answered blksize ${options.get('blksize') ?? 'none'} to ${asked ?? 'no request'}`));
              return;
            }
            size = agreed;
            exchange(ack(0));
            return;
          }
          case DATA: {
            const block = msg.readUInt16BE(2);
            const data = msg.subarray(4);
            if (block === ((expected - 1) & 0xffff) && (expected !== 1 || received > 0)) {
              // Our ACK was lost and the server sent the block again: acknowledge it again.
              send(ack(block));
              return;
            }
            if (block !== (expected & 0xffff)) return;
            if (data.length > size) {
              finish(new BackupDriverError('protocol', `tftp ${where}: block ${block} carries ${data.length} bytes, more than the block size ${size}`));
              return;
            }
            received += data.length;
            if (received > maxBytes) {
              send(errorPacket(ERR_DISK_FULL, 'file too large'));
              finish(new BackupDriverError('too-large', `tftp ${where}: more than ${maxBytes} bytes`));
              return;
            }
            chunks.push(data);
            expected++;
            // A block shorter than the block size is the last (section 6); the rollover after
            // block 65535 goes to 0, as tftp-hpa and most servers do.
            if (data.length < size) {
              send(ack(block));
              finish(undefined, Buffer.concat(chunks));
            } else exchange(ack(block));
            return;
          }
          case ERROR: {
            const code = msg.readUInt16BE(2);
            const text = msg.subarray(4).toString('latin1').replace(/\0.*$/s, '');
            if (code === ERR_OPTION && asked !== undefined && received === 0) {
              // RFC 2347: a server that refuses the options ends the transfer; ask again without them.
              asked = undefined;
              size = DEFAULT_BLOCK;
              peer = undefined;
              exchange(rrq(file, undefined));
              return;
            }
            const kind = code === ERR_NOT_FOUND ? 'not-found' : code === ERR_ACCESS ? 'auth' : 'protocol';
            finish(new BackupDriverError(kind, `tftp ${where}: error ${code}: ${text || 'no message'}`));
            return;
          }
          default:
            return;
        }
      });
      exchange(last);
    });

  return abortable(signal, `tftp ${where}`, transfer, () => {
    clearTimeout(timer);
    try {
      socket.close();
    } catch {
      // already closed after an error
    }
  });
}

export function tftpDriver(cfg: DriverOf<'tftp'>, host: string, opts: TftpOptions = {}): BackupDriver {
  const source = `tftp ${hostPort(host, cfg.port)}/${cfg.file}`;
  return {
    type: 'tftp',
    async fetch(signal: AbortSignal): Promise<FetchedConfig> {
      return fetched(await tftpRead(host, cfg.port, cfg.file, signal, cfg.blockSize, opts), source);
    },
  };
}
