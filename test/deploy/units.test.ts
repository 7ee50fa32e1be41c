// The systemd units in deploy/systemd, checked by systemd itself: `systemd-analyze verify`
// (syntax, known settings, ExecStart= executable) and `systemd-analyze security --offline`
// (the sandbox's exposure score), plus the settings the agent relies on (docs/install.md).
//
// verify works without systemd running as PID 1 (it loads the units into a private manager), but
// it checks that ExecStart='s program exists: /usr/bin/node must be there, as on a gateway.
// The arguments (/opt/wardgate/...) are not checked. A unit that verify only warns about still
// exits 0, so every line it prints about our units counts as a failure.
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from './sandbox.js';

const DIR = join(import.meta.dirname, '..', '..', 'deploy', 'systemd');
const UNITS = ['wardgate.service', 'wardgate-restore.service'];
const haveAnalyze = run('sh', ['-c', 'command -v systemd-analyze']).code === 0;
const skip = !haveAnalyze ? 'systemd-analyze is not installed (apt-get install systemd)' : !existsSync('/usr/bin/node') ? '/usr/bin/node is missing: verify checks that ExecStart= can run' : undefined;
if (skip !== undefined) console.warn(`test/deploy/units.test.ts: systemd-analyze checks skipped: ${skip}`);

/** Every setting of a unit, key -> values in order (a key may repeat). */
function settings(file: string): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const kv = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (kv) m.set(kv[1] ?? '', [...(m.get(kv[1] ?? '') ?? []), kv[2] ?? '']);
  }
  return m;
}
const one = (m: Map<string, string[]>, k: string) => (m.get(k) ?? []).join(' ');

describe.skipIf(skip !== undefined)('systemd-analyze on deploy/systemd', () => {
  let work = '';
  // SYSTEMD_LOG_COLOR=0: plain text; LANG=C: messages we can match.
  const env = { ...process.env, SYSTEMD_LOG_COLOR: '0', SYSTEMD_LOG_LEVEL: 'notice', LANG: 'C' };
  const verify = (files: string[]) => run('systemd-analyze', ['verify', '--man=no', ...files], { env, cwd: work });

  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), 'wg-units-'));
  });
  afterAll(() => {
    rmSync(work, { recursive: true, force: true });
  });

  it('verify accepts both units without a word', () => {
    for (const u of UNITS) copyFileSync(join(DIR, u), join(work, u));
    const r = verify(UNITS.map((u) => join(work, u)));
    const ours = `${r.out}${r.err}`.split('\n').filter((l) => /wardgate/.test(l));
    expect(ours).toEqual([]);
    expect(r.code, r.err).toBe(0);
  });

  it('verify would catch a misspelt setting and a missing program (the check can fail)', () => {
    const text = readFileSync(join(DIR, 'wardgate.service'), 'utf8');
    writeFileSync(join(work, 'wardgate.service'), text.replace('NoNewPrivileges=yes', 'NoNewPrivilege=yes'));
    const typo = verify([join(work, 'wardgate.service')]);
    expect(`${typo.out}${typo.err}`).toMatch(/Unknown key.*NoNewPrivilege/);
    writeFileSync(join(work, 'wardgate.service'), text.replace('ExecStart=/usr/bin/node ', 'ExecStart=/usr/bin/no-such-node '));
    const missing = verify([join(work, 'wardgate.service')]);
    expect(missing.code).not.toBe(0);
  });

  it('security --offline rates both units OK (exposure at most 3.0 of 10)', () => {
    for (const u of UNITS) {
      const r = run('systemd-analyze', ['security', '--offline=yes', '--threshold=30', '--no-pager', join(DIR, u)], { env });
      expect(r.code, `${u}: ${r.out.split('\n').slice(-3).join(' ')}`).toBe(0);
    }
    // And would not with the sandbox gone.
    const bare = join(work, 'bare.service');
    writeFileSync(bare, '[Service]\nExecStart=/usr/bin/node /opt/wardgate/bin/wardgate.js run\n');
    expect(run('systemd-analyze', ['security', '--offline=yes', '--threshold=30', '--no-pager', bare], { env }).code).not.toBe(0);
  });
});

describe('deploy/systemd: what the agent relies on', () => {
  it('wardgate.service: notify with a watchdog, its own user, two capabilities, a sandbox', () => {
    const s = settings(join(DIR, 'wardgate.service'));
    expect(Object.fromEntries(['Type', 'NotifyAccess', 'WatchdogSec', 'Restart', 'User', 'Group', 'NoNewPrivileges', 'ProtectSystem', 'ProtectHome', 'PrivateTmp', 'StateDirectory', 'StateDirectoryMode', 'ConfigurationDirectory', 'ProtectKernelModules', 'ProtectKernelTunables', 'ReadWritePaths', 'SystemCallFilter'].map((k) => [k, one(s, k)]))).toEqual({
      Type: 'notify',
      // READY=1/WATCHDOG=1 come from a systemd-notify child (agent/health/sdnotify.ts).
      NotifyAccess: 'all',
      WatchdogSec: '30',
      Restart: 'always',
      User: 'wardgate',
      Group: 'wardgate',
      NoNewPrivileges: 'yes',
      ProtectSystem: 'strict',
      ProtectHome: 'yes',
      PrivateTmp: 'yes',
      StateDirectory: 'wardgate',
      StateDirectoryMode: '0750',
      ConfigurationDirectory: 'wardgate',
      ProtectKernelModules: 'yes',
      ProtectKernelTunables: 'yes',
      // The carve-out for net.bridge.* and net.netfilter.* (docs/install.md).
      ReadWritePaths: '/proc/sys/net',
      SystemCallFilter: '@system-service',
    });
    expect(one(s, 'AmbientCapabilities')).toBe('CAP_NET_ADMIN CAP_NET_RAW');
    expect(one(s, 'CapabilityBoundingSet')).toBe(one(s, 'AmbientCapabilities'));
    expect(one(s, 'RestrictAddressFamilies').split(' ').sort()).toEqual(['AF_INET', 'AF_INET6', 'AF_NETLINK', 'AF_PACKET', 'AF_UNIX']);
    expect(one(s, 'ExecStart')).toBe('/usr/bin/node --max-semi-space-size=1 /opt/wardgate/bin/wardgate.js run --gateway /etc/wardgate/gateway.yaml');
    expect(one(s, 'After').split(' ')).toEqual(expect.arrayContaining(['network-online.target', 'wardgate-restore.service']));
    expect(one(s, 'Wants')).toBe('network-online.target');
    expect(one(s, 'MemoryMax')).toMatch(/^\d+M$/);
    expect(Number(one(s, 'MemoryMax').slice(0, -1))).toBeLessThanOrEqual(512); // a Pi 3 has 1 GB
    expect(one(s, 'WantedBy')).toBe('multi-user.target');
  });

  it('wardgate-restore.service: a oneshot before the network, from the state directory alone', () => {
    const s = settings(join(DIR, 'wardgate-restore.service'));
    expect(Object.fromEntries(['Type', 'RemainAfterExit', 'DefaultDependencies', 'User', 'NoNewPrivileges', 'StateDirectory', 'WantedBy'].map((k) => [k, one(s, k)]))).toEqual({
      Type: 'oneshot',
      RemainAfterExit: 'yes',
      DefaultDependencies: 'no',
      User: 'wardgate',
      NoNewPrivileges: 'yes',
      StateDirectory: 'wardgate',
      WantedBy: 'sysinit.target',
    });
    expect(one(s, 'Before').split(' ')).toContain('network-pre.target');
    expect(one(s, 'Wants')).toBe('network-pre.target');
    expect(one(s, 'After').split(' ')).toEqual(expect.arrayContaining(['local-fs.target', 'systemd-modules-load.service', 'nftables.service']));
    // Never the gateway file or the policies: a broken configuration must not stop the restore.
    expect(one(s, 'ExecStart')).toBe('/usr/bin/node --max-semi-space-size=1 /opt/wardgate/bin/wardgate.js policy restore --state-dir /var/lib/wardgate --backend nft');
    expect(one(s, 'AmbientCapabilities')).toBe('CAP_NET_ADMIN');
  });
});
