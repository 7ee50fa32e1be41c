// `wardgate backup keygen | list | export | verify`, and now | import | approve | restore
// (backup-device.ts). verify runs anywhere (a responder's laptop) with only the gateway's public
// key; the others read the gateway's store. Exit codes: 0 ok, 1 a check, a fetch or a restore
// failed (each failure named), 2 usage, 3 configuration (keys, policy files).
import { lstatSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { exportBundle, verifyBundle, type BundleReport } from '../backup/bundle.js';
import { BackupDriverError } from '../backup/drivers/index.js';
import { BackupKeyError, BackupStoreError, BackupVerifyError, formatProblem } from '../backup/errors.js';
import { createDataKeyFile, dataKeyId, ensureGatewayKey, FileKeyProvider, gatewayKeyPaths, loadGatewayKey, parseDataKey, readGatewayPublicKey } from '../backup/keys.js';
import { BackupStoreSchema, type BackupStoreConfig } from '../backup/schema-store.js';
import { BackupStore } from '../backup/store.js';
import { gatewayOnly, stateDirOnly, UsageError, type GlobalOptions } from './context.js';
import type { Io } from './io.js';

export interface BackupOptions extends GlobalOptions {
  json?: boolean;
  out?: string;
  version?: string;
  pubkey?: string;
  key?: string;
  yes?: boolean;
}

interface Ctx {
  stateDir: string;
  gateway: string;
  keyFile: string;
  config: BackupStoreConfig;
}

/**
 * The store's settings from the gateway file; with only --state-dir (an install before
 * gateway.yaml exists, a copied state directory) the defaults.
 */
function context(opts: GlobalOptions): Ctx {
  const explicitGateway = opts.gateway ?? process.env.WARDGATE_GATEWAY;
  const explicitState = opts.stateDir ?? process.env.WARDGATE_STATE_DIR;
  if ((explicitGateway === undefined || explicitGateway === '') && explicitState !== undefined) {
    const stateDir = stateDirOnly(opts);
    const config = BackupStoreSchema.parse({});
    return { stateDir, gateway: hostname(), config, keyFile: join(stateDir, 'keys', 'backup-data.key') };
  }
  const g = gatewayOnly(opts);
  const config = g.config.backup;
  const keyFile = config.keyFile === undefined ? join(g.stateDir, 'keys', 'backup-data.key') : isAbsolute(config.keyFile) ? config.keyFile : join(dirname(g.path), config.keyFile);
  return { stateDir: g.stateDir, gateway: `${g.config.site}/${g.config.gateway}`, config, keyFile };
}

function openStore(ctx: Ctx, mode: 'read' | 'sign'): BackupStore {
  const key = mode === 'sign' ? loadGatewayKey(ctx.stateDir, { create: false }) : readGatewayPublicKey(gatewayKeyPaths(ctx.stateDir).publicKeyPath);
  return BackupStore.open({
    stateDir: ctx.stateDir,
    gateway: ctx.gateway,
    key,
    retention: { last: ctx.config.retention.last, dailyDays: ctx.config.retention.dailyDays, diskBudgetBytes: ctx.config.diskBudgetBytes },
  });
}

export async function backupCommand(sub: string | undefined, args: string[], opts: BackupOptions, io: Io): Promise<number> {
  try {
    switch (sub) {
      case 'keygen':
        return keygen(context(opts), io);
      case 'list':
        return list(context(opts), args[0], opts, io);
      case 'export':
        return exportCmd(context(opts), args, opts, io);
      case 'verify':
        return await verify(args, opts, io);
      case 'now':
      case 'import':
      case 'approve':
      case 'restore': {
        const { deviceBackupCommand } = await import('./backup-device.js');
        return await deviceBackupCommand(sub, args, opts, io);
      }
      case undefined:
        throw new UsageError('backup needs a subcommand: keygen, list, export, verify, now, import, approve or restore');
      default:
        throw new UsageError(`unknown backup command "${sub}" (keygen, list, export, verify, now, import, approve, restore)`);
    }
  } catch (err) {
    if (err instanceof BackupKeyError) {
      io.err(`wardgate: ${err.message}`);
      return 3;
    }
    if (err instanceof BackupVerifyError || err instanceof BackupStoreError || err instanceof BackupDriverError) {
      io.err(`wardgate: ${err.message}`);
      return 1;
    }
    throw err;
  }
}

function keygen(ctx: Ctx, io: Io): number {
  const madeData = createDataKeyFile(ctx.keyFile);
  const dataKey = new FileKeyProvider(ctx.keyFile);
  const g = ensureGatewayKey(ctx.stateDir);
  const fp = loadGatewayKey(ctx.stateDir, { create: false }).fingerprint;
  io.out(`data key     ${ctx.keyFile} (${madeData ? 'made' : 'already there, kept'}; id ${dataKey.id})`);
  io.out(`gateway key  ${g.privateKeyPath} (${g.created ? 'made' : 'already there, kept'})`);
  io.out(`public key   ${g.publicKeyPath} (sha256 ${fp})`);
  io.out('Give responders the public key: wardgate backup verify BUNDLE --pubkey gateway-ed25519.pub');
  io.out('Keep a copy of the data key off the gateway: without it no backup can be decrypted.');
  return 0;
}

function list(ctx: Ctx, device: string | undefined, opts: BackupOptions, io: Io): number {
  const store = openStore(ctx, 'read');
  const { manifests, problems } = store.list(device);
  if (opts.json) {
    io.out(JSON.stringify({ versions: manifests, problems }, null, 2));
  } else {
    if (manifests.length === 0 && problems.length === 0) io.err(device !== undefined ? `no backup of ${device}` : 'no backups yet');
    for (const m of manifests) {
      io.out(`${m.device.padEnd(16)} ${String(m.version).padStart(5)}  ${m.time}  ${m.driver.padEnd(10)} ${m.format.padEnd(6)} ${String(m.plaintext.size).padStart(9)} B  ${m.plaintext.sha256.slice(0, 16)}  ${m.source}`);
    }
  }
  for (const p of problems) io.err(`FAILED ${formatProblem(p)}`);
  return problems.length > 0 ? 1 : 0;
}

function parseVersion(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  if (!/^[1-9]\d{0,9}$/.test(text)) throw new UsageError(`--version must be a version number (1, 2, …), not "${text}"`);
  return Number(text);
}

function exportCmd(ctx: Ctx, args: string[], opts: BackupOptions, io: Io): number {
  const [device, ...rest] = args;
  if (device === undefined || rest.length > 0) throw new UsageError('usage: wardgate backup export DEVICE [--version V] --out FILE');
  if (opts.out === undefined) throw new UsageError('backup export needs --out FILE (where the bundle is written)');
  const version = parseVersion(opts.version);
  const store = openStore(ctx, 'sign');
  const out = resolve(opts.out);
  const r = exportBundle(store, device, version, out);
  for (const p of r.skipped) io.err(`FAILED ${formatProblem(p)} (left out of the bundle)`);
  io.out(`wrote ${out}: ${device} version(s) ${r.versions.join(', ')}, ${r.bytes} bytes`);
  io.out(`check it anywhere: wardgate backup verify ${out} --pubkey ${gatewayKeyPaths(ctx.stateDir).publicKeyPath}`);
  return r.skipped.length > 0 ? 1 : 0;
}

/** A responder's copy of the data key may sit on a FAT stick where every file is 0755: read it, but say so. */
function readDataKeyLoosely(path: string, io: Io): Buffer {
  let bytes: Buffer;
  try {
    if ((lstatSync(path).mode & 0o077) !== 0) io.err(`warning: ${path} is readable by others; keep the data key private`);
    bytes = readFileSync(path);
  } catch (err) {
    throw new UsageError(`--key ${path}: ${(err as Error).message}`);
  }
  try {
    return parseDataKey(path, bytes);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

async function verify(args: string[], opts: BackupOptions, io: Io): Promise<number> {
  const [bundle, ...rest] = args;
  if (bundle === undefined || rest.length > 0) throw new UsageError('usage: wardgate backup verify BUNDLE --pubkey FILE [--key FILE]');
  if (opts.pubkey === undefined) throw new UsageError('backup verify needs --pubkey FILE: the gateway\'s public key (gateway-ed25519.pub), obtained from a trusted source');
  let pub;
  try {
    pub = readGatewayPublicKey(opts.pubkey);
  } catch (err) {
    throw new UsageError(`--pubkey ${(err as Error).message}`);
  }
  const dataKey = opts.key !== undefined ? readDataKeyLoosely(opts.key, io) : undefined;
  let report: BundleReport;
  try {
    report = await verifyBundle(bundle, pub, dataKey !== undefined ? { dataKey } : {});
  } catch (err) {
    throw new UsageError(`${bundle}: ${(err as Error).message}`);
  }
  if (opts.json) {
    const versions = report.versions.map((v) => ({ ok: v.ok, manifest: v.manifest }));
    io.out(JSON.stringify({ ...report, versions, dataKeyId: dataKey !== undefined ? dataKeyId(dataKey) : undefined }, null, 2));
  } else {
    const checked = report.decrypted ? 'signatures, ciphertext and plaintext hashes' : 'signatures and ciphertext hashes; pass --key to check the plaintext too';
    for (const v of report.versions) {
      const m = v.manifest;
      io.out(`${v.ok ? 'ok    ' : 'FAILED'} ${m.device} version ${m.version}  ${m.time}  ${m.driver}  ${m.plaintext.size} B  sha256 ${m.plaintext.sha256}`);
    }
    for (const p of report.problems) io.err(`FAILED ${formatProblem(p)}`);
    if (report.ok) io.out(`ok: ${bundle}: ${report.versions.length} version(s) of ${report.device ?? '?'} from ${report.gateway ?? '?'} verified (${checked})`);
    else io.err(`${bundle}: ${report.problems.length} problem(s); do not trust the versions marked FAILED`);
  }
  return report.ok ? 0 : 1;
}
