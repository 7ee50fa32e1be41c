// The flow log: NDJSON written with pino to a file with size-bounded rotation. At most `files`
// files of at most `maxBytes` each exist at any time (`flows.ndjson`, `flows.ndjson.1`, … up to
// `.files-1`, oldest last), so the log never takes more than files × maxBytes of disk.
//
// The rotation is a small pino destination of our own: no rotation package (pino-roll,
// rotating-file-stream) is installed. The size check is exact. Writes are synchronous, or, with
// `batch`, gathered for the rest of the event-loop turn and written in one write(2) before the
// next turn (setImmediate), and at flush() and close(): under a burst of conntrack events one
// system call per record was the flow pipeline's largest cost.
import { RotatingFile, type RotatingFileOptions } from '../util/rotating-file.js';
import { pino, type Logger } from 'pino';
import type { FlowRecord } from './flows.js';

export { RotatingFile, type RotatingFileOptions };


export interface FlowLog {
  write(record: FlowRecord): void;
  close(): void;
  readonly file: RotatingFile;
}

/** A pino logger writing one flow record per line: {"kind":"flow", ...record}. */
export function openFlowLog(opts: RotatingFileOptions): FlowLog {
  const file = new RotatingFile(opts);
  const logger: Logger = pino(
    {
      base: null,
      // The record carries its own time (when the connection ended). In place of pino's level,
      // each line says what it is (denied-packet records from NFLOG will share the format).
      timestamp: false,
      formatters: { level: () => ({ kind: 'flow' }) },
    },
    file,
  );
  return {
    file,
    write: (record) => logger.info(record),
    close: () => file.close(),
  };
}
