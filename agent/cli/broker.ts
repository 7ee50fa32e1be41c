// `wardgate broker --config broker.yaml`: the wardgate broker (agent/mqtt/broker.ts) for a
// small site, until SIGTERM or SIGINT. `wardgate broker passwd FILE USER`: add or replace a
// user in a users file, the password read from stdin (one line).
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { parse } from 'yaml';
import { z } from 'zod';
import { hashPasswordLine, IDENTITY, parseUsersFile, startBroker, type BrokerOptions, type EmbeddedBroker } from '../mqtt/broker.js';
import { readIfExists, writeFileAtomic } from '../util/fsx.js';
import { UsageError } from './context.js';
import type { Io } from './io.js';

const Name = z.string().regex(IDENTITY, 'letters, digits, . _ @ - (one topic level)');

export const BrokerConfigSchema = z
  .object({
    listen: z
      .object({ host: z.string().default('127.0.0.1'), port: z.number().int().min(0).max(65535).default(8883) })
      .strict()
      .default({ host: '127.0.0.1', port: 8883 })
      .describe('Where to listen; anything but loopback needs tls'),
    tls: z
      .object({
        ca: z.string().describe('The site CA (PEM) that signs gateways\' and consoles\' certificates'),
        cert: z.string().describe('The broker\'s certificate (PEM)'),
        key: z.string().describe('Its private key (PEM), mode 0600'),
        requireClientCert: z.boolean().default(true).describe('false: clients may log in with a username and password instead'),
      })
      .strict()
      .optional(),
    usersFile: z.string().optional().describe('Lines from `wardgate broker passwd`'),
    allowAnonymous: z.boolean().default(false).describe('Clients without credentials get console rights. Demo only; loopback only'),
    site: Name.optional().describe('Pin the site level of topics; any single level when absent'),
    consoles: z.array(Name).default([]).describe('Identities (certificate CN or username) with console rights'),
  })
  .strict();
export type BrokerConfig = z.infer<typeof BrokerConfigSchema>;

/** Reads broker.yaml; relative paths are relative to its directory. */
export function loadBrokerConfig(path: string): BrokerOptions {
  let raw: unknown;
  try {
    raw = parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new UsageError(`${path}: ${(err as Error).message}`);
  }
  const r = BrokerConfigSchema.safeParse(raw ?? {});
  if (!r.success) throw new UsageError(`${path}: ${r.error.issues.map((i) => `${i.path.join('.') || '(top)'}: ${i.message}`).join('; ')}`);
  const c = r.data;
  const rel = (p: string) => resolve(dirname(path), p);
  return {
    host: c.listen.host,
    port: c.listen.port,
    allowAnonymous: c.allowAnonymous,
    consoles: c.consoles,
    ...(c.site !== undefined ? { site: c.site } : {}),
    ...(c.usersFile !== undefined ? { usersFile: rel(c.usersFile) } : {}),
    ...(c.tls ? { tls: { ca: rel(c.tls.ca), cert: rel(c.tls.cert), key: rel(c.tls.key), requireClientCert: c.tls.requireClientCert } } : {}),
  };
}

/** The first line of a stream (without its line ending). */
export async function readLine(input: Readable): Promise<string> {
  let buf = '';
  for await (const chunk of input) {
    buf += typeof chunk === 'string' ? chunk : (chunk as Buffer).toString('utf8');
    const nl = buf.indexOf('\n');
    if (nl >= 0) return buf.slice(0, nl).replace(/\r$/, '');
  }
  return buf.replace(/\r$/, '');
}

/** Adds or replaces USER's line in FILE (atomically, mode 0600); other lines stay as they are. */
export async function setPassword(file: string, user: string, password: string): Promise<'added' | 'replaced'> {
  if (!IDENTITY.test(user)) throw new UsageError(`unusable username "${user}": letters, digits, . _ @ - (one topic level)`);
  if (password === '') throw new UsageError('empty password');
  const before = readIfExists(file) ?? '';
  parseUsersFile(before, file); // refuse to rewrite a file we cannot read back
  const line = await hashPasswordLine(user, password);
  let replaced = false;
  const lines = before.split('\n').filter((l) => l.trim() !== '').map((l) => {
    if (l.split(':')[0] !== user) return l;
    replaced = true;
    return line;
  });
  if (!replaced) lines.push(line);
  writeFileAtomic(file, `${lines.join('\n')}\n`, { mode: 0o600 });
  return replaced ? 'replaced' : 'added';
}

export async function brokerCommand(sub: string | undefined, args: string[], opts: { config?: string }, io: Io, input: Readable = process.stdin): Promise<number> {
  if (sub === 'passwd') {
    const [file, user] = args;
    if (file === undefined || user === undefined || args.length > 2) throw new UsageError('usage: wardgate broker passwd FILE USER (the password on stdin, one line)');
    if ((input as Readable & { isTTY?: boolean }).isTTY) io.err(`password for ${user} (echoed; end with Enter):`);
    const what = await setPassword(file, user, await readLine(input));
    io.out(`${what} ${user} in ${file}`);
    return 0;
  }
  if (sub !== undefined && sub !== 'run') throw new UsageError(`unknown broker command "${sub}": use --config FILE, or passwd FILE USER`);
  if (opts.config === undefined) throw new UsageError('wardgate broker needs --config broker.yaml');
  const config = loadBrokerConfig(opts.config);
  const broker: EmbeddedBroker = await startBroker(config);
  io.out(`wardgate broker listening on ${config.host}:${broker.port}${config.tls ? ' (TLS)' : ''}${config.site !== undefined ? `, site ${config.site}` : ''}`);
  const signal = await new Promise<NodeJS.Signals>((done) => {
    process.once('SIGTERM', () => done('SIGTERM'));
    process.once('SIGINT', () => done('SIGINT'));
  });
  await broker.close();
  io.out(`wardgate broker stopped (${signal})`);
  return 0;
}
