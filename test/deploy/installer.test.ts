// deploy/install.sh from a release made by deploy/release.sh, run as a user would:
// - with --root into a temporary image: from the tarball twice (the second run changes nothing:
//   paths, modes, owners and sha256 compared), upgrade from the unpacked tree (configuration,
//   state and keys kept), uninstall (the configuration kept), uninstall --purge (nothing left);
// - as root into the real paths of a sandbox (private mount namespace with overlays, private
//   network namespace: test/deploy/sandbox.ts), from the release tarball as the Ansible role
//   installs it: the user made by useradd, /usr/bin/wardgate
//   dropping root to that user with the unit's capabilities, a policy applied and confirmed
//   through it, and the boot-time restore run with the restore unit's own command, user and
//   capabilities; then the Ansible playbook (deploy/ansible) against localhost, converging that
//   box twice; and uninstall --purge; nothing leaks to this machine.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { differences, manifest, type Manifest } from './manifest.js';
import { run, Sandbox, sandboxSkipReason } from './sandbox.js';

const REPO = join(import.meta.dirname, '..', '..');
const isRoot = process.getuid?.() === 0;
const built = existsSync(join(REPO, 'dist', 'agent', 'cli', 'main.js'));
if (!built) console.warn('test/deploy/installer.test.ts skipped: dist/ is missing (npm run build)');
if (sandboxSkipReason !== undefined) console.warn(`test/deploy/installer.test.ts: the sandbox tests are skipped: ${sandboxSkipReason}`);
const haveAnsible = run('sh', ['-c', 'command -v ansible-playbook']).code === 0;
if (!haveAnsible) console.warn('test/deploy/installer.test.ts: the Ansible tests are skipped: ansible-playbook is not installed (apt-get install ansible-core)');

let work = '';
let release = ''; // the unpacked release: what install.sh is run from
let tarball = '';

const changes = (out: string): number => Number(/^changes: (\d+)$/m.exec(out)?.[1] ?? NaN);
const here = (script: string) => run('sh', ['-c', script]);
const sha = (file: string) => here(`sha256sum '${file}'`).out.split(' ')[0] ?? '';

/** A bare image: only the files useradd needs to add a user to it. */
function seedImage(dir: string): void {
  mkdirSync(join(dir, 'etc'), { recursive: true });
  chmodSync(dir, 0o755);
  writeFileSync(join(dir, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/bash\n');
  writeFileSync(join(dir, 'etc', 'group'), 'root:x:0:\n');
  writeFileSync(join(dir, 'etc', 'shadow'), 'root:*:19000:0:99999:7:::\n', { mode: 0o640 });
  writeFileSync(join(dir, 'etc', 'gshadow'), 'root:*::\n', { mode: 0o640 });
}

function installer(args: string[]): { code: number | null; out: string; err: string } {
  return run('sh', [join(release, 'deploy', 'install.sh'), ...args]);
}

beforeAll(() => {
  if (!built) return;
  work = mkdtempSync(join(tmpdir(), 'wg-deploy-'));
  chmodSync(work, 0o755); // the wardgate user must reach the images below
  const r = run('sh', [join(REPO, 'deploy', 'release.sh'), '--out', work, '--keep-dir']);
  if (r.code !== 0) throw new Error(`release.sh failed: ${r.err}`);
  [release = '', tarball = ''] = r.out.trim().split('\n');
}, 120_000);

afterAll(() => {
  if (work !== '') rmSync(work, { recursive: true, force: true });
});

describe.skipIf(!built)('deploy/release.sh', () => {
  it('makes a tarball with the built app, production node_modules only (no dev, no optional), and install.sh', () => {
    expect(tarball).toMatch(/wardgate-\d+\.\d+\.\d+\.tar\.gz$/);
    const list = here(`tar -tzf '${tarball}'`).out.split('\n');
    const name = /(wardgate-[^/]+)\.tar\.gz$/.exec(tarball)?.[1] ?? '';
    for (const f of ['RELEASE', 'bin/wardgate.js', 'dist/agent/cli/main.js', 'deploy/install.sh', 'deploy/systemd/wardgate.service', 'node_modules/mqtt/package.json', 'gateway.example.yaml', 'rules/groups.yaml']) {
      expect(list, f).toContain(`${name}/${f}`);
    }
    // Dev dependencies are pruned.
    expect(list.some((p) => p.startsWith(`${name}/node_modules/vitest/`))).toBe(false);
    expect(list.some((p) => p.startsWith(`${name}/node_modules/typescript/`))).toBe(false);
    // Optional ones too: Node-RED is for a console, not a gateway (docs/console.md).
    expect(list.some((p) => p.startsWith(`${name}/node_modules/node-red/`))).toBe(false);
    // The serial ports' native module is a production dependency (Modbus RTU).
    expect(list).toContain(`${name}/node_modules/@serialport/bindings-cpp/package.json`);
  });
});

describe.skipIf(!built)('deploy/install.sh --root DIR', () => {
  let img = '';
  let first: Manifest;
  const everything = () => manifest(here, [img]);

  beforeAll(() => {
    img = join(work, 'image');
    seedImage(img);
  });

  it('refuses bad usage with exit 2', () => {
    expect(installer(['--root', img]).code).toBe(2);
    expect(installer(['--root', img, 'install', '--purge']).code).toBe(2);
    expect(installer(['--root', img, '--bogus', 'install']).code).toBe(2);
  });

  it('installs into the image from the release tarball, and a second run changes nothing', () => {
    const a = installer(['--root', img, '--release', tarball, 'install']);
    expect(a.code, a.err).toBe(0);
    expect(changes(a.out)).toBeGreaterThan(0);
    first = everything();
    const b = installer(['--root', img, '--release', tarball, 'install']);
    expect(b.code, b.err).toBe(0);
    expect(changes(b.out), b.out).toBe(0);
    expect(differences(first, everything())).toEqual([]);

    const at = (p: string) => first.get(join(img, p)) ?? 'absent';
    const passwd = readFileSync(join(img, 'etc', 'passwd'), 'utf8');
    expect(passwd.match(/^wardgate:/gm)?.length ?? 0).toBe(isRoot ? 1 : 0);
    const [, , uid = '', gid = '', , home, shell] = /^wardgate:.*$/m.exec(passwd)?.[0].split(':') ?? [];
    if (isRoot) {
      expect(Number(uid)).toBeLessThan(1000);
      expect([home, shell]).toEqual(['/nonexistent', '/usr/sbin/nologin']);
      expect(at('etc/wardgate')).toBe(`d 750 0:${gid}`);
      expect(at('etc/wardgate/gateway.yaml')).toMatch(new RegExp(`^f 640 0:${gid} `));
      expect(at('var/lib/wardgate')).toBe(`d 750 ${uid}:${gid}`);
      expect(at('var/lib/wardgate/keys/backup-data.key')).toMatch(new RegExp(`^f 600 ${uid}:${gid} `));
      expect(at('var/lib/wardgate/keys/gateway-ed25519.pem')).toMatch(new RegExp(`^f 600 ${uid}:${gid} `));
      expect(at('usr/bin/wardgate')).toMatch(/^f 755 0:0 /);
      expect(at('opt/wardgate/bin/wardgate.js')).toMatch(/^f \d+ 0:0 /);
    }
    // The configuration and the policies come from the release, the units and the wrapper as shipped.
    expect(at('etc/wardgate/gateway.yaml').endsWith(sha(join(release, 'gateway.example.yaml')))).toBe(true);
    expect(at('etc/wardgate/rules/groups.yaml').endsWith(sha(join(release, 'rules', 'groups.yaml')))).toBe(true);
    for (const u of ['wardgate.service', 'wardgate-restore.service']) {
      expect(at(`etc/systemd/system/${u}`).endsWith(sha(join(REPO, 'deploy', 'systemd', u)))).toBe(true);
    }
    expect(at('usr/bin/wardgate').endsWith(sha(join(REPO, 'deploy', 'wardgate.sh')))).toBe(true);
    expect(at('etc/modules-load.d/wardgate.conf')).not.toBe('absent');
    expect(at('etc/sysctl.d/60-wardgate.conf')).not.toBe('absent');
    expect(at('etc/sysctl.d/61-wardgate-router.conf')).toBe('absent'); // the example is bridge mode
    // Enabled as systemctl --root does it.
    expect(at('etc/systemd/system/multi-user.target.wants/wardgate.service')).toMatch(/^l .* -> \/etc\/systemd\/system\/wardgate\.service$/);
    expect(at('etc/systemd/system/sysinit.target.wants/wardgate-restore.service')).toMatch(/-> \/etc\/systemd\/system\/wardgate-restore\.service$/);
    // The installed app runs.
    const v = run(process.execPath, [join(img, 'opt', 'wardgate', 'bin', 'wardgate.js'), 'version']);
    expect(v.out.trim()).toBe((JSON.parse(readFileSync(join(release, 'package.json'), 'utf8')) as { version: string }).version);
  });

  it('upgrades the app and keeps the configuration, the state and the keys', () => {
    const gateway = join(img, 'etc', 'wardgate', 'gateway.yaml');
    writeFileSync(gateway, `${readFileSync(gateway, 'utf8')}# edited on the box\n`);
    writeFileSync(join(img, 'var', 'lib', 'wardgate', 'marker'), 'state\n');
    const key = sha(join(img, 'var', 'lib', 'wardgate', 'keys', 'backup-data.key'));
    const pkgFile = join(release, 'package.json');
    const pkg = readFileSync(pkgFile, 'utf8');
    try {
      writeFileSync(pkgFile, pkg.replace(/"version": "[^"]+"/, '"version": "9.9.9"'));
      // From the unpacked tree this time (a checkout works the same way): copied, then swapped in.
      const r = installer(['--root', img, 'upgrade']);
      expect(r.code, r.err).toBe(0);
      expect(r.out).toMatch(/app: .* replaced \(\d+\.\d+\.\d+ -> 9\.9\.9\)/);
    } finally {
      writeFileSync(pkgFile, pkg);
    }
    expect(run(process.execPath, [join(img, 'opt', 'wardgate', 'bin', 'wardgate.js'), 'version']).out.trim()).toBe('9.9.9');
    expect(readFileSync(gateway, 'utf8')).toMatch(/# edited on the box\n$/);
    expect(readFileSync(join(img, 'var', 'lib', 'wardgate', 'marker'), 'utf8')).toBe('state\n');
    expect(sha(join(img, 'var', 'lib', 'wardgate', 'keys', 'backup-data.key'))).toBe(key);
    // Nothing is left of the swap.
    expect(here(`ls -a '${join(img, 'opt')}'`).out.split('\n').filter((n) => n.includes('wardgate'))).toEqual(['wardgate']);
  });

  it('refuses to upgrade what is not installed', () => {
    const empty = join(work, 'empty');
    mkdirSync(empty);
    const r = installer(['--root', empty, 'upgrade']);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/not installed/);
  });

  it('uninstall removes the app and keeps the configuration; --purge removes everything', () => {
    const keep = (m: Manifest) => new Map([...m].filter(([p]) => p.startsWith(join(img, 'etc', 'wardgate')) || p.startsWith(join(img, 'var', 'lib', 'wardgate'))));
    const before = keep(everything());
    const r = installer(['--root', img, 'uninstall']);
    expect(r.code, r.err).toBe(0);
    const after = everything();
    expect(differences(before, keep(after))).toEqual([]);
    const left = [...after.keys()].filter((p) => p.includes('wardgate') && !before.has(p));
    expect(left).toEqual([]);
    if (isRoot) expect(readFileSync(join(img, 'etc', 'passwd'), 'utf8')).toMatch(/^wardgate:/m);

    const p = installer(['--root', img, 'uninstall', '--purge']);
    expect(p.code, p.err).toBe(0);
    expect([...everything().keys()].filter((x) => x.includes('wardgate'))).toEqual([]);
    for (const f of ['passwd', 'group', 'shadow', 'gshadow']) expect(readFileSync(join(img, 'etc', f), 'utf8')).not.toMatch(/^wardgate:/m);
  });
});

// ---- as root, into the real paths of a sandbox -------------------------------------------------

const REAL = ['/opt/wardgate', '/etc/wardgate', '/var/lib/wardgate', '/usr/bin/wardgate', '/etc/systemd/system/wardgate.service', '/etc/systemd/system/wardgate-restore.service', '/etc/modules-load.d/wardgate.conf', '/etc/sysctl.d/60-wardgate.conf'];
const OVERLAYS = ['/etc', '/opt', '/usr/bin', '/var/lib'];

/**
 * This machine's wardgate paths and user as they are: a sandbox must leave them so. Which files,
 * their modes and owners; not their times or sizes, which other tests on a shared machine may
 * change (a test's own /var/lib/wardgate/audit): a leak would add files or change owners.
 */
function hostSnapshot(): string {
  const there = REAL.filter((p) => existsSync(p)).map((p) => `'${p}'`);
  const files = there.length > 0 ? here(`find ${there.join(' ')} -printf '%p %y %m %U %G\\n'`).out : '';
  return `${files}${run('getent', ['passwd', 'wardgate']).out}${run('getent', ['group', 'wardgate']).out}`;
}

/** A sandbox without whatever wardgate this machine has (a test's /var/lib/wardgate, a user). */
function openClean(dir: string): Sandbox {
  const box = Sandbox.open(dir, OVERLAYS);
  const r = box.sh(`userdel wardgate 2>/dev/null; groupdel wardgate 2>/dev/null; rm -rf ${REAL.join(' ')}`);
  if (r.code !== 0) {
    box.close();
    throw new Error(`cleaning the sandbox: ${r.err}`);
  }
  return box;
}

/** A unit file's settings (the last value of each key; ExecStart whole). */
function unitSettings(text: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of text.split('\n')) {
    const kv = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (kv) m.set(kv[1] ?? '', kv[2] ?? '');
  }
  return m;
}

/** setpriv arguments that give a command what a unit gives its ExecStart. */
function asUnit(unit: Map<string, string>): string[] {
  const caps = (unit.get('AmbientCapabilities') ?? '')
    .split(/\s+/)
    .filter(Boolean)
    .map((c) => `+${c.replace(/^CAP_/, '').toLowerCase()}`)
    .join(',');
  const set = `-all${caps ? `,${caps}` : ''}`;
  const nnp = unit.get('NoNewPrivileges') === 'yes' ? ['--no-new-privs'] : [];
  return ['setpriv', `--reuid=${unit.get('User')}`, `--regid=${unit.get('Group')}`, '--init-groups', `--inh-caps=${set}`, `--ambient-caps=${set}`, `--bounding-set=${set}`, ...nnp, '--'];
}

describe.skipIf(!built || sandboxSkipReason !== undefined)('deploy/install.sh as root, in a sandbox (private mount and network namespaces)', () => {
  let box: Sandbox | undefined;
  const sb = () => {
    if (!box) throw new Error('no sandbox');
    return box;
  };
  const inBox = (script: string) => sb().sh(script);
  const real = () => {
    const m = manifest(inBox, REAL);
    const pw = inBox('getent passwd wardgate; getent group wardgate');
    m.set('getent', pw.out);
    return m;
  };

  let host = '';
  beforeAll(() => {
    host = hostSnapshot();
    box = openClean(join(work, 'sandbox'));
  });

  afterAll(() => {
    box?.close();
    box = undefined;
    expect(hostSnapshot()).toBe(host);
  });

  // As the Ansible role does: only deploy/ unpacked, the app straight from the tarball.
  const install = () => sb().run('sh', [join(release, 'deploy', 'install.sh'), '--release', tarball, '--no-packages', 'install']);

  it('creates the wardgate user and installs from the release tarball; a second run changes nothing', () => {
    const a = install();
    expect(a.code, a.err).toBe(0);
    expect(a.out).toMatch(/user: wardgate \(\d+:\d+\) created/);
    expect(a.out).toMatch(/app: \/opt\/wardgate installed/);
    // No systemd here: the installer says what to run instead of running it.
    expect(a.out).toMatch(/systemd: not running here; on the gateway run: systemctl daemon-reload && systemctl enable wardgate-restore\.service wardgate\.service/);
    const m1 = real();
    const b = install();
    expect(b.code, b.err).toBe(0);
    expect(changes(b.out), b.out).toBe(0);
    expect(b.out).toMatch(/app: \/opt\/wardgate unchanged/);
    expect(differences(m1, real())).toEqual([]);

    const [name, , uid = '', gid = '', , home = '', shell = ''] = (m1.get('getent') ?? '').split('\n')[0]?.split(':') ?? [];
    expect(name).toBe('wardgate');
    expect(Number(uid)).toBeLessThan(1000);
    expect(shell).toBe('/usr/sbin/nologin');
    expect(inBox(`test -e '${home}'`).code).not.toBe(0); // no home
    expect(m1.get('/var/lib/wardgate/keys/backup-data.key')).toMatch(new RegExp(`^f 600 ${uid}:${gid} `));
    expect(m1.get('/etc/wardgate')).toBe(`d 750 0:${gid}`);
    // Serial lines (Modbus RTU): the user is in the group that owns them, where there is one.
    if (inBox('getent group dialout').code === 0) expect(inBox('id -nG wardgate').out.split(/\s+/)).toContain('dialout');
    // The sandbox's /etc/passwd has the user; this machine's does not.
    expect(run('getent', ['passwd', 'wardgate']).code).not.toBe(0);
  });

  it('runs root\'s commands as wardgate with the unit\'s capabilities: apply, confirm, and the boot-time restore', () => {
    const unit = unitSettings(inBox('cat /etc/systemd/system/wardgate.service').out);
    const wrapper = inBox('cat /usr/bin/wardgate').out;
    // The command gives root's commands exactly the agent's capabilities.
    const unitCaps = (unit.get('AmbientCapabilities') ?? '').split(/\s+/).map((c) => c.replace(/^CAP_/, '').toLowerCase()).sort();
    const wrapperCaps = (/^CAPS=-all,(.*)$/m.exec(wrapper)?.[1] ?? '').split(',').map((c) => c.replace(/^\+/, '')).sort();
    expect(wrapperCaps).toEqual(unitCaps);

    const check = inBox('wardgate policy check');
    expect(check.code, check.err).toBe(0);
    expect(check.out).toMatch(/nft -c accepted it/);
    const apply = inBox('wardgate policy apply --timeout 60 && wardgate policy confirm');
    expect(apply.code, apply.err).toBe(0);
    expect(apply.out).toMatch(/committed: policy/);
    // Everything in the state directory belongs to the agent's user, though root ran the commands.
    expect(inBox("find /var/lib/wardgate ! -user wardgate -print -o ! -group wardgate -print").out).toBe('');
    expect(inBox('test -f /var/lib/wardgate/ruleset/committed.json').code).toBe(0);

    // Boot: the table is gone (as after a reboot); the restore unit's command, as its user with
    // its capabilities only, puts the committed ruleset back.
    expect(inBox('nft delete table inet wardgate').code).toBe(0);
    const restoreUnit = unitSettings(inBox('cat /etc/systemd/system/wardgate-restore.service').out);
    const exec = (restoreUnit.get('ExecStart') ?? '').split(/\s+/);
    const restore = sb().run(asUnit(restoreUnit)[0] ?? '', [...asUnit(restoreUnit).slice(1), ...exec]);
    expect(restore.code, restore.err).toBe(0);
    expect(restore.out).toMatch(/restored the committed ruleset/);
    const status = inBox('wardgate policy status --json');
    expect(JSON.parse(status.out)).toMatchObject({ kernel: 'committed' });
    // Commands that never touch the state keep root: a console's key goes where root says.
    const keys = join(work, 'console-keys');
    const k = inBox(`wardgate console keygen --out '${keys}' --id biomed && stat -c %U '${keys}/biomed.key'`);
    expect(k.code, k.err).toBe(0);
    expect(k.out.trim().split('\n').pop()).toBe('root');
    // The agent's own ExecStart names the same node and app.
    expect(unit.get('ExecStart')).toMatch(new RegExp(`^${exec[0]} --max-semi-space-size=1 /opt/wardgate/bin/wardgate\\.js run --gateway /etc/wardgate/gateway\\.yaml$`));
  });

  /** An inventory for this machine as the gateway gw-test, with the release and fake certificates. */
  const ansibleInventory = (): string => {
    const dir = join(work, 'ansible');
    mkdirSync(join(dir, 'home'), { recursive: true });
    for (const f of ['ca.crt', 'gw.crt', 'gw.key']) writeFileSync(join(dir, f), `-----BEGIN TEST ${f}-----\n`);
    const inventory = {
      wardgate_gateways: {
        hosts: {
          'gw-test': {
            ansible_connection: 'local',
            ansible_become: false,
            ansible_python_interpreter: '/usr/bin/python3',
            wardgate_release: tarball,
            wardgate_release_dir: join(dir, 'release'),
            wardgate_install_args: ['--no-packages'],
            wardgate_site: 'st-test',
            wardgate_device_segments: ['10.20.0.0/24', 'fd00:20::/64'],
            wardgate_management_networks: ['10.99.0.0/24'],
            wardgate_mqtt_url: 'mqtts://broker.st-test.example:8883',
            wardgate_mqtt_ca: join(dir, 'ca.crt'),
            wardgate_mqtt_cert: join(dir, 'gw.crt'),
            wardgate_mqtt_key: join(dir, 'gw.key'),
            wardgate_gateway_extra: { health: { intervalSeconds: 60 }, commitConfirm: { timeoutSeconds: 300 } },
            // All the example policies but one: the installer's copy of that one goes.
            wardgate_policies: ['groups.yaml', 'ct-modality.yaml', 'lab-analyzer.yaml', 'infusion-pump-server.yaml'].map((f) => join(REPO, 'rules', f)),
            wardgate_apply: true,
            wardgate_apply_timeout: 60,
          },
        },
      },
    };
    writeFileSync(join(dir, 'inventory.json'), JSON.stringify(inventory));
    return dir;
  };

  const play = (dir: string) =>
    sb().run('ansible-playbook', ['-i', join(dir, 'inventory.json'), join(REPO, 'deploy', 'ansible', 'site.yml')], {
      env: { ...process.env, HOME: join(dir, 'home'), ANSIBLE_LOCAL_TEMP: join(dir, 'tmp'), ANSIBLE_REMOTE_TEMP: join(dir, 'tmp'), ANSIBLE_NOCOLOR: '1', ANSIBLE_RETRY_FILES_ENABLED: '0', ANSIBLE_PIPELINING: '1' },
      timeout: 180_000,
    });
  const recap = (out: string) => /gw-test\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)/.exec(out)?.slice(1).map(Number);

  it.skipIf(!haveAnsible)('site.yml converges it: gateway.yaml, MQTT certificates, policies placed and removed, applied and confirmed; a second run changes nothing', () => {
    const dir = ansibleInventory();
    const a = play(dir);
    expect(a.code, `${a.out}${a.err}`).toBe(0);
    expect(recap(a.out)?.slice(2)).toEqual([0, 0]);
    // The box already runs this release: install.sh --release found nothing to change.
    const task = a.out.slice(a.out.indexOf('TASK [wardgate : Install or upgrade'));
    expect(/^(ok|changed): \[gw-test\]/m.exec(task)?.[1]).toBe('ok');

    const g = parse(sb().run('cat', ['/etc/wardgate/gateway.yaml']).out) as Record<string, unknown>;
    expect(g).toMatchObject({
      apiVersion: 'wardgate/v1',
      kind: 'Gateway',
      site: 'st-test',
      gateway: 'gw-test',
      mode: 'bridge',
      deviceSegments: ['10.20.0.0/24', 'fd00:20::/64'],
      management: { networks: ['10.99.0.0/24'] },
      mqtt: { url: 'mqtts://broker.st-test.example:8883', tls: { ca: '/etc/wardgate/mqtt/ca.crt', cert: '/etc/wardgate/mqtt/gateway.crt', key: '/etc/wardgate/mqtt/gateway.key' } },
      health: { intervalSeconds: 60 },
      commitConfirm: { timeoutSeconds: 300 },
    });
    expect(sb().sh('stat -c "%U:%G %a" /etc/wardgate/mqtt/gateway.key /etc/wardgate/gateway.yaml').out.split('\n')).toEqual(['wardgate:wardgate 600', 'root:wardgate 640', '']);
    expect(sb().sh('ls /etc/wardgate/rules/*.yaml').out.trim().split('\n').map((p) => p.replace('/etc/wardgate/rules/', ''))).toEqual(['ct-modality.yaml', 'groups.yaml', 'infusion-pump-server.yaml', 'lab-analyzer.yaml']);
    const status = JSON.parse(sb().sh('wardgate policy status --json').out) as { kernel: string; pending?: unknown };
    expect(status.kernel).toBe('committed');
    expect(status.pending).toBeUndefined();

    const b = play(dir);
    expect(b.code, `${b.out}${b.err}`).toBe(0);
    expect(recap(b.out)?.slice(1), b.out).toEqual([0, 0, 0]);
  });

  it('uninstall --purge takes the user and every file away', () => {
    const r = sb().run('sh', [join(release, 'deploy', 'install.sh'), 'uninstall', '--purge']);
    expect(r.code, r.err).toBe(0);
    const left = real();
    expect(left.get('getent')).toBe('');
    left.delete('getent');
    expect([...left.keys()]).toEqual([]);
  });
});

// ---- the Ansible playbook -----------------------------------------------------------------------

describe('deploy/ansible', () => {
  it.skipIf(!haveAnsible)('passes ansible-playbook --syntax-check', () => {
    const home = mkdtempSync(join(tmpdir(), 'wg-ansible-'));
    try {
      const r = run('ansible-playbook', ['-i', 'inventory.example.yml', 'site.yml', '--syntax-check'], {
        cwd: join(REPO, 'deploy', 'ansible'),
        env: { ...process.env, ANSIBLE_NOCOLOR: '1', HOME: home, ANSIBLE_LOCAL_TEMP: join(home, 'tmp') },
      });
      expect(r.code, `${r.out}${r.err}`).toBe(0);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
