// Key presses in the demo's terminal: a, m, l act on the simulators, q (or Ctrl-C) stops the
// demo. On a terminal each key acts at once (raw mode); from a pipe (a test, a script) each
// line is a key. The terminal is put back as it was when the demo ends.
import { emitKeypressEvents } from 'node:readline';
import { createInterface } from 'node:readline';
import type { StopRequest } from './util.js';

/** Calls onKey for each key until the returned function is called. */
export function listenKeys(stop: StopRequest, onKey: (key: string) => Promise<void> | void): () => void {
  const stdin = process.stdin;
  let busy = Promise.resolve();
  const handle = (key: string): void => {
    if (key === 'q') return stop.request();
    // One at a time: a second a before the first has switched the analyzer off waits for it.
    busy = busy.then(() => onKey(key)).catch(() => undefined);
  };
  if (stdin.isTTY) {
    emitKeypressEvents(stdin);
    stdin.setRawMode(true);
    const onKeypress = (str: string | undefined, key: { name?: string; ctrl?: boolean } | undefined): void => {
      // Raw mode takes Ctrl-C from the terminal's signals: it is a key now.
      if (key?.ctrl === true && key.name === 'c') return stop.request();
      handle((key?.name ?? str ?? '').toLowerCase());
    };
    stdin.on('keypress', onKeypress);
    stdin.resume();
    return () => {
      stdin.off('keypress', onKeypress);
      stdin.setRawMode(false);
      stdin.pause();
    };
  }
  const lines = createInterface({ input: stdin, terminal: false });
  lines.on('line', (line) => handle(line.trim().toLowerCase()));
  return () => {
    lines.close();
    stdin.destroy();
  };
}
