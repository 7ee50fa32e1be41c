// `wardgate console keygen | cmd | watch | backup list | backup pull`: the console side, for an operator's laptop or a
// responder at 3 a.m. (docs/commands.md). Exit codes: 0 done (the command succeeded); 1 the
// gateway refused the command or it failed, no answer came, or the broker was unreachable;
// 2 usage (thrown as UsageError, mapped by main).
import { basename } from 'node:path';
import { CommandClient, connectConsole, ConsoleError, type ConnectOptions } from '../console/client.js';
import { ConsoleKeyError, generateConsoleKey, loadConsoleKey } from '../console/keys.js';
import { SiteView } from '../console/watch.js';
import { Topics } from '../mqtt/topics.js';
import { REFUSAL_CODES } from '../mqtt/commands.js';
import { UsageError } from './context.js';
import type { Io } from './io.js';

export interface ConsoleOptions {
  /** keygen: where the key files go */
  out?: string;
  /** keygen: the key id (default "console") */
  id?: string;
  url?: string;
  /** cmd: the private key file */
  key?: string;
  /** cmd: the key id the gateways know the key by (default: the key file's name without .key) */
  keyId?: string;
  json?: boolean;
  /** watch: the site to follow */
  site?: string;
  /** watch: collect retained messages for a second, print once, exit */
  once?: boolean;
  /** cmd: seconds to wait for the answer (default 10) */
  timeout?: string;
  /** cmd: the request's lifetime in seconds (default 120) */
  ttl?: string;
  /** 5 (default, falls back to 4) or 4 */
  protocol?: string;
  ca?: string;
  cert?: string;
  certKey?: string;
  /** Stops `watch` (the CLI stops it on SIGINT). */
  signal?: AbortSignal;
  /** How long `watch --once` collects (ms, default 1000). */
  onceMs?: number;
  /** backup pull: one version (all the gateway keeps by default) */
  version?: string;
  /** backup pull: the gateway's public key (gateway-ed25519.pub), to verify the bundle */
  pubkey?: string;
  /** backup pull: bytes per request */
  chunkSize?: string;
}

const USAGE = `usage:
  wardgate console keygen --out DIR [--id NAME]
  wardgate console cmd <site>/<gateway> <name> [key=value | key:=json ...] --url URL --key FILE [--key-id ID] [--json]
  wardgate console watch --url URL --site SITE [--once]
  wardgate console backup list <site>/<gateway> [DEVICE] --url URL --key FILE [--json]
  wardgate console backup pull <site>/<gateway> DEVICE --out BUNDLE [--version V] [--pubkey FILE] [--chunk-size BYTES] --url URL --key FILE`;

export async function consoleCommand(sub: string | undefined, positionals: string[], opts: ConsoleOptions, io: Io): Promise<number> {
  try {
    switch (sub) {
      case 'keygen':
        return keygen(positionals, opts, io);
      case 'cmd':
        return await cmd(positionals, opts, io);
      case 'watch':
        return await watch(positionals, opts, io);
      case 'backup': {
        const { consoleBackup } = await import('./console-backup.js');
        return await consoleBackup(positionals, opts, io);
      }
      default:
        throw new UsageError(`unknown console command "${sub ?? ''}"\n${USAGE}`);
    }
  } catch (err) {
    if (err instanceof ConsoleError || err instanceof ConsoleKeyError) {
      io.err(`wardgate: ${err.code}: ${err.message}`);
      return 1;
    }
    throw err;
  }
}

function keygen(positionals: string[], opts: ConsoleOptions, io: Io): number {
  if (positionals.length > 0) throw new UsageError(`console keygen takes no arguments\n${USAGE}`);
  if (opts.out === undefined) throw new UsageError(`console keygen needs --out DIR\n${USAGE}`);
  const k = generateConsoleKey(opts.out, opts.id ?? 'console');
  if (opts.json) {
    io.out(JSON.stringify(k, null, 2));
    return 0;
  }
  io.out(`wrote ${k.privateKeyPath} (private key, mode 0600: it stays on this console)`);
  io.out(`wrote ${k.publicKeyPath}`);
  io.out('');
  io.out('to let gateways accept commands signed with it, add to their gateway.yaml:');
  io.out('');
  io.out('commands:');
  io.out('  publicKeys:');
  io.out(`    - id: ${k.id}`);
  io.out(`      key: ${k.publicKey}`);
  return 0;
}

export function seconds(value: string | undefined, flag: string, dflt: number, max: number): number {
  if (value === undefined) return dflt;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0 || n > max) throw new UsageError(`${flag} takes seconds, more than 0 and at most ${max}`);
  return n;
}

export function connectOptions(opts: ConsoleOptions): ConnectOptions {
  let protocolVersion: 4 | 5 = 5;
  if (opts.protocol !== undefined) {
    if (opts.protocol !== '4' && opts.protocol !== '5') throw new UsageError('--protocol takes 4 (MQTT 3.1.1) or 5');
    protocolVersion = opts.protocol === '4' ? 4 : 5;
  }
  const tls = {
    ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
    ...(opts.cert !== undefined ? { cert: opts.cert } : {}),
    ...(opts.certKey !== undefined ? { key: opts.certKey } : {}),
  };
  return { protocolVersion, ...(Object.keys(tls).length > 0 ? { tls } : {}) };
}

export function need(value: string | undefined, flag: string, what: string): string {
  if (value === undefined || value === '') throw new UsageError(`console ${what} needs ${flag}\n${USAGE}`);
  return value;
}

/** `key=value` is a string; `key:=json` a JSON value (number, boolean, object, ...). */
export function parseArgsList(items: string[]): Record<string, unknown> {
  const args: Record<string, unknown> = {};
  for (const item of items) {
    const m = /^([^=:]+)(:?=)(.*)$/s.exec(item);
    if (!m?.[1] || m[2] === undefined || m[3] === undefined) throw new UsageError(`"${item}" is not key=value or key:=json`);
    const [, key, op, value] = m;
    if (Object.hasOwn(args, key)) throw new UsageError(`argument "${key}" is given twice`);
    if (op === '=') args[key] = value;
    else {
      try {
        args[key] = JSON.parse(value);
      } catch {
        throw new UsageError(`"${item}": the value after := is not JSON`);
      }
    }
  }
  return args;
}

/** `<site>/<gateway>` into its parts. */
export function parseTarget(target: string | undefined, what: string): { site: string; gateway: string } {
  const t = target === undefined ? null : /^([^/+#]+)\/([^/+#]+)$/.exec(target);
  if (!t?.[1] || !t[2]) throw new UsageError(`console ${what} needs <site>/<gateway>\n${USAGE}`);
  return { site: t[1], gateway: t[2] };
}

async function cmd(positionals: string[], opts: ConsoleOptions, io: Io): Promise<number> {
  const [target, name, ...rest] = positionals;
  const { site, gateway } = parseTarget(target, 'cmd');
  if (name === undefined || !/^[^/+#]+$/.test(name)) throw new UsageError(`console cmd needs a command name\n${USAGE}`);
  const args = parseArgsList(rest);
  const url = need(opts.url, '--url URL', 'cmd');
  const keyFile = need(opts.key, '--key FILE', 'cmd');
  const keyId = opts.keyId ?? basename(keyFile).replace(/\.key$/, '');
  const timeoutMs = seconds(opts.timeout, '--timeout', 10, 3600) * 1000;
  const ttlSeconds = seconds(opts.ttl, '--ttl', 120, 86400);
  const key = loadConsoleKey(keyFile);

  const client = await CommandClient.connect(url, { ...connectOptions(opts), timeoutMs });
  let response;
  try {
    response = await client.command({ site, gateway, name, args, key, keyId, ttlSeconds }, { timeoutMs });
  } finally {
    await client.end();
  }
  if (opts.json) io.out(JSON.stringify(response, null, 2));
  if (response.ok) {
    if (!opts.json) {
      io.out(`ok: ${name} on ${site}/${gateway}`);
      if (response.result !== undefined) io.out(JSON.stringify(response.result, null, 2));
    }
    return 0;
  }
  const code = response.error?.code ?? 'E_UNKNOWN';
  const verdict = (REFUSAL_CODES as readonly string[]).includes(code) || code === 'E_UNKNOWN' ? 'refused' : 'failed';
  io.err(`${verdict}: ${name} on ${site}/${gateway}: ${code}: ${response.error?.message ?? ''}`);
  return 1;
}

async function watch(positionals: string[], opts: ConsoleOptions, io: Io): Promise<number> {
  if (positionals.length > 0) throw new UsageError(`console watch takes no arguments\n${USAGE}`);
  const url = need(opts.url, '--url URL', 'watch');
  const site = need(opts.site, '--site SITE', 'watch');
  const once = opts.once === true;
  const { client } = await connectConsole(url, { ...connectOptions(opts), reconnect: !once });
  const view = new SiteView(site);
  // Colour and in-place redraw only on a terminal; piped output gets one table per change.
  const tty = !once && process.stdout.isTTY;
  let note = '';
  const draw = () => io.out(`${tty ? '\x1b[H\x1b[2J' : ''}${view.render({ color: tty })}${note ? `\n\n${note}` : ''}`);
  client.on('message', (topic, payload) => {
    if (view.apply(topic, payload) && !once) draw();
  });
  client.on('offline', () => {
    note = `connection to ${url} lost; reconnecting`;
    if (!once) draw();
  });
  client.on('connect', () => {
    if (note === '') return;
    note = '';
    if (!once) draw();
  });
  try {
    await client.subscribeAsync(Topics.siteWildcards(site), { qos: 1 });
    if (once) {
      // Retained messages arrive right after the subscription; a second is plenty on a LAN.
      await new Promise((r) => setTimeout(r, opts.onceMs ?? 1000));
      io.out(view.render({ color: false }));
      return 0;
    }
    draw();
    await new Promise<void>((resolve) => {
      const stop = () => {
        process.off('SIGINT', stop);
        opts.signal?.removeEventListener('abort', stop);
        resolve();
      };
      process.on('SIGINT', stop);
      if (opts.signal?.aborted) stop();
      else opts.signal?.addEventListener('abort', stop);
    });
    return 0;
  } finally {
    await client.endAsync();
  }
}
