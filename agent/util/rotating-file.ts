// A log file that rotates by size: at most `files` files of at most `maxBytes` each exist at any
// time (`name`, `name.1`, ... oldest last), so it never takes more than files x maxBytes of disk.
// Used by the flow log and the proxies' application log.
import { closeSync, fstatSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

export interface RotatingFileOptions {
  path: string;
  /** Largest size of one file, in bytes. */
  maxBytes: number;
  /** How many files to keep, the one being written included (at least 1). */
  files: number;
  /** Gather the lines of one event-loop turn into one write. */
  batch?: boolean;
}

/** A pino destination (anything with write(string)) that rotates by size. */
export class RotatingFile {
  private fd: number;
  private size: number;
  /** Lines longer than maxBytes, which no file could hold: counted and dropped. */
  dropped = 0;
  rotations = 0;

  constructor(readonly opts: RotatingFileOptions) {
    if (!(opts.maxBytes > 0) || !Number.isInteger(opts.files) || opts.files < 1) {
      throw new Error(`flow log: maxBytes must be > 0 and files an integer >= 1 (got ${opts.maxBytes}, ${opts.files})`);
    }
    mkdirSync(dirname(opts.path), { recursive: true });
    this.fd = openSync(opts.path, 'a', 0o640);
    this.size = fstatSync(this.fd).size;
  }

  /** The file names, newest first. */
  names(): string[] {
    return Array.from({ length: this.opts.files }, (_, i) => (i === 0 ? this.opts.path : `${this.opts.path}.${i}`));
  }

  private pending: string[] = [];
  private pendingBytes = 0;
  private scheduled: NodeJS.Immediate | undefined;

  write(line: string): boolean {
    const length = Buffer.byteLength(line);
    if (length > this.opts.maxBytes) {
      this.dropped++;
      return true;
    }
    if (this.size + this.pendingBytes + length > this.opts.maxBytes) {
      this.flush();
      this.rotate();
    }
    if (this.opts.batch !== true) {
      writeSync(this.fd, line);
      this.size += length;
      return true;
    }
    this.pending.push(line);
    this.pendingBytes += length;
    this.scheduled ??= setImmediate(() => this.flush());
    return true;
  }

  /** Writes the lines gathered so far (batch mode). */
  flush(): void {
    if (this.scheduled) clearImmediate(this.scheduled);
    this.scheduled = undefined;
    if (this.pending.length === 0) return;
    writeSync(this.fd, this.pending.join(''));
    this.size += this.pendingBytes;
    this.pending = [];
    this.pendingBytes = 0;
  }

  private rotate(): void {
    closeSync(this.fd);
    const names = this.names();
    rmSync(names[names.length - 1]!, { force: true });
    for (let i = names.length - 2; i >= 0; i--) {
      try {
        renameSync(names[i]!, names[i + 1]!);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    // With files: 1 the current file was just removed: start it again.
    this.fd = openSync(this.opts.path, 'a', 0o640);
    this.size = 0;
    this.rotations++;
  }

  close(): void {
    this.flush();
    closeSync(this.fd);
  }
}
