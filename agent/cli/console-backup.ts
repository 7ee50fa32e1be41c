// `wardgate console backup list | pull`: a responder's view of a gateway's backups, and a
// bundle pulled over MQTT, resumable, checked chunk by chunk and whole, then verified with the
// gateway's public key when given (docs/backups.md, "Pulling a backup"). Exit codes: 0 done
// (and verified, when --pubkey was given); 1 refused, failed, no answer, or a check failed;
// 2 usage.
import { basename, resolve } from 'node:path';
import { readGatewayPublicKey } from '../backup/keys.js';
import { PULL_CHUNK_MAX, PULL_CHUNK_MIN } from '../backup/pull.js';
import { CommandClient } from '../console/client.js';
import { loadConsoleKey } from '../console/keys.js';
import { checkPulled, listRemote, pullBundle, type PullTarget } from '../console/pull.js';
import { connectOptions, need, parseTarget, seconds, type ConsoleOptions } from './console.js';
import { UsageError } from './context.js';
import type { Io } from './io.js';

const USAGE = `usage:
  wardgate console backup list <site>/<gateway> [DEVICE] --url URL --key FILE [--json]
  wardgate console backup pull <site>/<gateway> DEVICE --out BUNDLE [--version V] [--pubkey FILE] [--chunk-size BYTES] --url URL --key FILE`;

function target(positionals: string[], what: string, opts: ConsoleOptions): PullTarget & { url: string } {
  const { site, gateway } = parseTarget(positionals[0], `backup ${what}`);
  const url = need(opts.url, '--url URL', `backup ${what}`);
  const keyFile = need(opts.key, '--key FILE', `backup ${what}`);
  return {
    site,
    gateway,
    url,
    key: loadConsoleKey(keyFile),
    keyId: opts.keyId ?? basename(keyFile).replace(/\.key$/, ''),
    ttlSeconds: seconds(opts.ttl, '--ttl', 120, 86400),
    timeoutMs: seconds(opts.timeout, '--timeout', 10, 3600) * 1000,
  };
}

export async function consoleBackup(positionals: string[], opts: ConsoleOptions, io: Io): Promise<number> {
  const [sub, ...rest] = positionals;
  switch (sub) {
    case 'list':
      return list(rest, opts, io);
    case 'pull':
      return pull(rest, opts, io);
    default:
      throw new UsageError(`console backup needs list or pull\n${USAGE}`);
  }
}

async function list(positionals: string[], opts: ConsoleOptions, io: Io): Promise<number> {
  if (positionals.length > 2) throw new UsageError(`console backup list takes <site>/<gateway> and a device at most\n${USAGE}`);
  const t = target(positionals, 'list', opts);
  const client = await CommandClient.connect(t.url, { ...connectOptions(opts), timeoutMs: t.timeoutMs });
  let r;
  try {
    r = await listRemote(client, t, positionals[1]);
  } finally {
    await client.end();
  }
  if (opts.json) {
    io.out(JSON.stringify(r, null, 2));
  } else {
    io.out(`backups on ${r.gateway} (signatures checked on the gateway; pull and verify to check them yourself)`);
    for (const d of r.devices) {
      io.out(`${d.device}: ${d.versions.length} version(s), last successful fetch ${d.lastChecked ?? 'never'}`);
      for (const v of d.versions) {
        io.out(`  ${String(v.version).padStart(5)}  ${v.time}  ${v.driver.padEnd(10)} ${v.format.padEnd(6)} ${String(v.size).padStart(9)} B  sha256 ${v.plaintextSha256.slice(0, 16)}  ${v.source}${v.approved ? '  (approved)' : ''}`);
      }
    }
    if (r.devices.length === 0) io.out('no backups yet');
  }
  for (const p of r.problems) io.err(`FAILED on the gateway: ${remote(p)}`);
  return r.problems.length > 0 ? 1 : 0;
}

/** A problem as the gateway reported it (its check name not trusted to be one we know). */
const remote = (p: { file: string; check: string; message: string }): string => `${p.file}: ${p.check}: ${p.message}`;

function positiveInt(text: string | undefined, flag: string, min: number, max: number): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d{1,10}$/.test(text) || Number(text) < min || Number(text) > max) throw new UsageError(`${flag} takes a whole number from ${min} to ${max}, not "${text}"`);
  return Number(text);
}

async function pull(positionals: string[], opts: ConsoleOptions, io: Io): Promise<number> {
  const device = positionals[1];
  if (device === undefined || positionals.length > 2) throw new UsageError(`console backup pull needs <site>/<gateway> and a device\n${USAGE}`);
  const out = resolve(need(opts.out, '--out BUNDLE', 'backup pull'));
  const version = positiveInt(opts.version, '--version', 1, 9_999_999_999);
  const chunkSize = positiveInt(opts.chunkSize, '--chunk-size', PULL_CHUNK_MIN, PULL_CHUNK_MAX);
  // Read before the pull: a wrong path should not cost a download.
  let pub;
  if (opts.pubkey !== undefined) {
    try {
      pub = readGatewayPublicKey(opts.pubkey);
    } catch (err) {
      throw new UsageError(`--pubkey ${(err as Error).message}`);
    }
  }
  const t = target(positionals, 'pull', opts);
  const client = await CommandClient.connect(t.url, { ...connectOptions(opts), timeoutMs: t.timeoutMs });
  let r;
  try {
    r = await pullBundle(client, {
      ...t,
      device,
      out,
      ...(version !== undefined ? { version } : {}),
      ...(chunkSize !== undefined ? { chunkSize } : {}),
      note: (line) => io.err(line),
    });
  } finally {
    await client.end();
  }
  io.out(`wrote ${out}: ${device} version(s) ${r.versions.join(', ')}, ${r.totalBytes} bytes, sha256 ${r.bundleSha256}${r.resumedAt > 0 ? ` (resumed at byte ${r.resumedAt})` : ''}`);
  io.out('transfer checked: every chunk\'s sha256 and the whole bundle\'s match what the gateway sent');
  for (const p of r.skipped) io.err(`FAILED on the gateway: ${remote(p)} (left out of the bundle)`);
  if (pub === undefined) {
    io.out(`not verified: the bundle's signatures were not checked; run: wardgate backup verify ${out} --pubkey GATEWAY.pub`);
    return r.skipped.length > 0 ? 1 : 0;
  }
  const check = await checkPulled(out, pub, { site: t.site, gateway: t.gateway, device });
  for (const p of check.problems) io.err(`FAILED ${p}`);
  if (!check.ok) {
    io.err(`${out}: do not trust it: ${check.problems.length} problem(s)`);
    return 1;
  }
  const report = check.report;
  const wanted = `${t.site}/${t.gateway}`;
  io.out(`verified with ${opts.pubkey} (sha256 ${pub.fingerprint}): ${report.versions.length} version(s) of ${device} from ${wanted}: the index and every manifest signed by that key, every blob's ciphertext hash right`);
  io.out('the configurations are still encrypted; check the plaintext with: wardgate backup verify BUNDLE --pubkey FILE --key DATA.key');
  return r.skipped.length > 0 ? 1 : 0;
}
