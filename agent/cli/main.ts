// The wardgate command line. Exit codes: 0 done; 1 failed (or `diff` found differences);
// 2 usage; 3 configuration errors (nothing applied); 4 nft refused (nothing applied);
// 5 commit-confirm state forbids it (a change pending, nothing to confirm, window closed).
import { parseArgs } from 'node:util';
import { ConfigError, formatDiagnostic } from '../config/diagnostics.js';
import { CommitError } from '../policy/apply.js';
import { NftError } from '../policy/backend.js';
import { LockError } from '../util/fsx.js';
import { VERSION } from '../version.js';
import { UsageError } from './context.js';
import { processIo, type Io } from './io.js';
import { policyCommand } from './policy.js';

const HELP = `wardgate ${VERSION}: per-device allow-lists in front of legacy medical devices

usage: wardgate <command> [options]

  policy check      validate the gateway and policy files, and check the ruleset with nft -c
  policy print      print the compiled ruleset (--failsafe: the fail-safe variant)
  policy diff       show what would change against the committed ruleset
                    (--observed [--device ID] [--since T] [--json]: observed traffic the policy
                    would deny, and allow entries no observed flow used)
  policy apply      load the ruleset; it is rolled back unless confirmed in time (--timeout S)
  policy confirm    make the applied ruleset the committed one
  policy rollback   put back what was in force before the pending change
  policy status     what the kernel runs, what is committed, what is pending (--json)
  policy restore    load the committed ruleset (boot time); the fail-safe one if it cannot
  policy learn      propose a device's allow-list from its observed flows (--device ID
                    [--since T] [--out FILE]): its policy file with the allow list replaced
  policy schema     print the JSON Schema of policy files (--out-dir D: write both schemas)
  flows map         the data-flow map per device: allowed vs observed flows, PHI marked, as DOT
                    or SVG (--device ID, --since T, --format dot|svg, --out FILE)
  audit verify      check the audit log's hash chain; exit 1 naming the first bad line (--json)
  audit show        print the audit records (--json)
  backup keygen     make the backup data key and the gateway's signing key if absent (never overwrites)
  backup list       the stored versions (backup list [DEVICE] [--json]), signatures checked
  backup export     a signed bundle of a device's versions: backup export DEVICE [--version V] --out FILE
  backup verify     check a bundle anywhere: backup verify BUNDLE --pubkey FILE [--key DATAKEY] [--json]
  backup now        fetch a device's configuration once, store it, show its drift: backup now DEVICE [--json]
  backup import     store a configuration file by hand: backup import DEVICE FILE
  backup approve    make a version the approved baseline for drift: backup approve DEVICE [--version V]
  backup restore    write a version back to the device (the baseline by default); shows the
                    difference, writes only with --yes: backup restore DEVICE [--version V] [--yes]
  console keygen    make a console's Ed25519 key pair (--out DIR [--id NAME])
  console cmd       send a signed command: console cmd SITE/GATEWAY NAME [k=v ...] --url U --key F
  console watch     live table of a site's gateways and devices (--url U --site S [--once])
  console backup    a gateway's backups over MQTT: console backup list SITE/GATEWAY [DEVICE],
                    console backup pull SITE/GATEWAY DEVICE --out F [--version V] [--pubkey F]
  mqtt schemas      print the JSON Schema of every MQTT payload (--out-dir D: one file each)
  broker            the wardgate MQTT broker for a site (--config broker.yaml), until SIGTERM
  broker passwd     add or replace a broker user: broker passwd FILE USER (password on stdin)
  run               the agent: finishes pending changes and keeps the committed ruleset loaded
  demo              the whole system on this machine, until Ctrl-C (--once: the script, then
                    stop; --keep: keep its files and, as root, its network-namespace site)
  version           print the version

options:
  --gateway PATH    the gateway file (default: $WARDGATE_GATEWAY, ./gateway.yaml, /etc/wardgate/gateway.yaml)
  --state-dir DIR   override the gateway file's stateDir
  --backend B       auto (default), nft, or dry-run (writes the ruleset to a file, enforces nothing)
  --netns NAME      drive nftables inside network namespace NAME
  --since T         learn, diff --observed, flows map: flows since an ISO 8601 time or for the last 90m, 24h, 7d, 2w
  --file PATH       audit: a log file anywhere instead of <stateDir>/audit/audit.ndjson
  --config PATH     broker: its broker.yaml (listen, tls, usersFile, allowAnonymous, site, consoles)
`;

export async function main(argv: string[], io: Io = processIo): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        gateway: { type: 'string' },
        'state-dir': { type: 'string' },
        backend: { type: 'string' },
        netns: { type: 'string' },
        json: { type: 'boolean' },
        failsafe: { type: 'boolean' },
        timeout: { type: 'string' },
        'out-dir': { type: 'string' },
        keep: { type: 'boolean' },
        out: { type: 'string' },
        file: { type: 'string' },
        id: { type: 'string' },
        url: { type: 'string' },
        key: { type: 'string' },
        'key-id': { type: 'string' },
        site: { type: 'string' },
        once: { type: 'boolean' },
        ttl: { type: 'string' },
        protocol: { type: 'string' },
        ca: { type: 'string' },
        cert: { type: 'string' },
        'cert-key': { type: 'string' },
        config: { type: 'string' },
        device: { type: 'string' },
        since: { type: 'string' },
        format: { type: 'string' },
        observed: { type: 'boolean' },
        pubkey: { type: 'string' },
        version: { type: 'string' },
        yes: { type: 'boolean' },
        'chunk-size': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    io.err(`wardgate: ${(err as Error).message}\n\n${HELP}`);
    return 2;
  }
  const { values: v, positionals } = parsed;
  const [command, sub] = positionals;
  const global = {
    ...(v.gateway !== undefined ? { gateway: v.gateway } : {}),
    ...(v['state-dir'] !== undefined ? { stateDir: v['state-dir'] } : {}),
    ...(v.backend !== undefined ? { backend: v.backend } : {}),
    ...(v.netns !== undefined ? { netns: v.netns } : {}),
  };
  try {
    switch (command) {
      case undefined:
      case 'help':
        io.out(HELP.trimEnd());
        return command === undefined && !v.help ? 2 : 0;
      case 'version':
        io.out(VERSION);
        return 0;
      case 'policy':
        return await policyCommand(sub, {
          ...global,
          ...(v.json !== undefined ? { json: v.json } : {}),
          ...(v.failsafe !== undefined ? { failsafe: v.failsafe } : {}),
          ...(v.timeout !== undefined ? { timeout: v.timeout } : {}),
          ...(v['out-dir'] !== undefined ? { outDir: v['out-dir'] } : {}),
          ...(v.device !== undefined ? { device: v.device } : {}),
          ...(v.since !== undefined ? { since: v.since } : {}),
          ...(v.observed !== undefined ? { observed: v.observed } : {}),
          ...(v.out !== undefined ? { out: v.out } : {}),
        }, io);
      case 'audit': {
        const { auditCommand } = await import('./audit.js');
        return await auditCommand(sub, {
          ...global,
          ...(v.json !== undefined ? { json: v.json } : {}),
          ...(v.file !== undefined ? { file: v.file } : {}),
        }, io);
      }
      case 'flows': {
        const { flowsCommand } = await import('./flows.js');
        return await flowsCommand(sub, {
          ...global,
          ...(v.device !== undefined ? { device: v.device } : {}),
          ...(v.since !== undefined ? { since: v.since } : {}),
          ...(v.format !== undefined ? { format: v.format } : {}),
          ...(v.out !== undefined ? { out: v.out } : {}),
        }, io);
      }
      case 'backup': {
        const { backupCommand } = await import('./backup.js');
        return await backupCommand(sub, positionals.slice(2), { ...global, json: v.json, out: v.out, version: v.version, pubkey: v.pubkey, key: v.key, yes: v.yes }, io);
      }
      case 'console': {
        const { consoleCommand } = await import('./console.js');
        return await consoleCommand(sub, positionals.slice(2), {
          out: v.out,
          id: v.id,
          url: v.url,
          key: v.key,
          keyId: v['key-id'],
          json: v.json,
          site: v.site,
          once: v.once,
          timeout: v.timeout,
          ttl: v.ttl,
          protocol: v.protocol,
          ca: v.ca,
          cert: v.cert,
          certKey: v['cert-key'],
          version: v.version,
          pubkey: v.pubkey,
          chunkSize: v['chunk-size'],
        }, io);
      }
      case 'mqtt': {
        const { mqttCommand } = await import('./mqtt.js');
        return mqttCommand(sub, v['out-dir'] !== undefined ? { outDir: v['out-dir'] } : {}, io);
      }
      case 'broker': {
        const { brokerCommand } = await import('./broker.js');
        return await brokerCommand(sub, positionals.slice(2), v.config !== undefined ? { config: v.config } : {}, io);
      }
      case 'run': {
        const { runAgent } = await import('../main.js');
        return await runAgent(global, io);
      }
      case 'demo': {
        const { runDemo } = await import('../demo.js');
        return await runDemo({ keep: v.keep === true, once: v.once === true }, io);
      }
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (err) {
    if (err instanceof ConfigError) {
      for (const d of err.diagnostics) io.err(formatDiagnostic(d));
      const n = err.diagnostics.filter((d) => d.severity === 'error').length;
      io.err(`wardgate: ${n} error(s); nothing was applied`);
      return 3;
    }
    if (err instanceof NftError) {
      io.err(`wardgate: ${err.message}\nnothing was applied`);
      return 4;
    }
    if (err instanceof CommitError) {
      io.err(`wardgate: ${err.message}`);
      return 5;
    }
    if (err instanceof UsageError) {
      io.err(`wardgate: ${err.message}`);
      return 2;
    }
    if (err instanceof LockError) {
      io.err(`wardgate: ${err.message}`);
      return 1;
    }
    io.err(`wardgate: ${(err as Error).stack ?? String(err)}`);
    return 1;
  }
}
