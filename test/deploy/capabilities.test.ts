// What the decisions in deploy/systemd/wardgate.service rest on, checked against this kernel, in a
// private network (and mount) namespace: an unprivileged user holding only the unit's ambient
// capabilities (parsed from the unit file) can run what the agent runs (nft, conntrack -E with
// its big receive buffer, tcpdump on the NFLOG group, the net sysctls), and cannot without them;
// and ProtectKernelTunables=yes with ReadWritePaths=/proc/sys/net leaves exactly the network
// namespace's settings writable. The mounts are made here as systemd makes them (a read-only
// bind of /proc/sys, a writable bind of /proc/sys/net over it): systemd itself is not PID 1 here.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { run } from './sandbox.js';

const UNIT = join(import.meta.dirname, '..', '..', 'deploy', 'systemd', 'wardgate.service');

const reason = (() => {
  if (process.getuid?.() !== 0) return 'not root: needs namespaces and setpriv to another user';
  for (const tool of ['unshare', 'setpriv', 'nft', 'conntrack', 'tcpdump', 'sysctl']) {
    if (run('sh', ['-c', `command -v ${tool}`]).code !== 0) return `${tool} is not installed`;
  }
  if (run('unshare', ['--net', 'test', '-e', '/proc/sys/net/bridge/bridge-nf-call-iptables']).code !== 0) return 'br_netfilter is not loaded (modprobe br_netfilter)';
  if (run('getent', ['passwd', 'nobody']).code !== 0) return 'there is no user nobody';
  return undefined;
})();
if (reason !== undefined) console.warn(`test/deploy/capabilities.test.ts skipped: ${reason}`);

/** The unit's ambient capabilities as setpriv wants them: -all,+net_admin,... */
function unitCaps(): string {
  const line = readFileSync(UNIT, 'utf8').split('\n').find((l) => l.startsWith('AmbientCapabilities=')) ?? '';
  const caps = line.slice('AmbientCapabilities='.length).split(/\s+/).filter(Boolean);
  return ['-all', ...caps.map((c) => `+${c.replace(/^CAP_/, '').toLowerCase()}`)].join(',');
}

/** Runs a script in a fresh network and mount namespace: setup as root, then `user` as nobody with caps. */
function inNamespace(setup: string, user: string, caps: string): { code: number | null; out: string; err: string } {
  const script = `set -e
${setup}
exec setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs --inh-caps=${caps} --ambient-caps=${caps} --bounding-set=${caps} -- sh -c '${user.replace(/'/g, `'\\''`)}'`;
  return run('unshare', ['--net', '--mount', '--propagation', 'private', 'sh', '-c', script], { timeout: 30_000 });
}

// Each line prints NAME=ok or NAME=failed, so that one run shows every answer.
const AGENT_WORK = `
try() { n=$1; shift; if "$@" >/dev/null 2>&1; then echo "$n=ok"; else echo "$n=failed"; fi; }
try nft nft -f /dev/stdin <<EOF
table inet wgtest {
  chain c { type filter hook forward priority 0; policy accept; }
}
EOF
try bridge sh -c 'echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables'
try acct sysctl -q -w net.netfilter.nf_conntrack_acct=1
# Long-running readers: still running after a moment means they subscribed.
alive() { "$@" & p=$!; sleep 0.7; if kill -0 $p 2>/dev/null; then kill $p; wait $p; return 0; fi; return 1; }
try conntrack alive conntrack -E -e NEW -b 8388608
try tcpdump alive tcpdump -i nflog:10 -U -w /dev/null
try vm sh -c 'echo 60 > /proc/sys/vm/swappiness'
`;
const answers = (out: string): Record<string, string> => Object.fromEntries(out.trim().split('\n').map((l): [string, string] => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));

describe.skipIf(reason !== undefined)('the agent unit: capabilities and ProtectKernelTunables, on this kernel', () => {
  it('an unprivileged user with the unit\'s capabilities runs nft, conntrack, tcpdump and writes the net sysctls; without them it cannot', () => {
    expect(unitCaps()).toBe('-all,+net_admin,+net_raw');
    // nf_conntrack must be there for its sysctl: a ruleset with ct state loads it, as the agent's does.
    const setup = "nft -f /dev/stdin <<'EOF'\ntable inet wgct {\n  chain c { type filter hook input priority 0; ct state established accept; }\n}\nEOF";
    const withCaps = inNamespace(setup, AGENT_WORK, unitCaps());
    expect(answers(withCaps.out), withCaps.err).toEqual({ nft: 'ok', bridge: 'ok', acct: 'ok', conntrack: 'ok', tcpdump: 'ok', vm: 'failed' });
    const without = inNamespace(setup, AGENT_WORK, '-all');
    expect(answers(without.out), without.err).toEqual({ nft: 'failed', bridge: 'failed', acct: 'failed', conntrack: 'failed', tcpdump: 'failed', vm: 'failed' });
  });

  it('ProtectKernelTunables=yes blocks the net sysctls even with the capabilities; ReadWritePaths=/proc/sys/net opens them, and only them', () => {
    const readOnly = 'mount --bind /proc/sys /proc/sys; mount -o remount,bind,ro /proc/sys';
    const carveOut = `${readOnly}; mount --bind /proc/sys/net /proc/sys/net; mount -o remount,bind,rw /proc/sys/net`;
    const write = `
try() { n=$1; shift; if "$@" 2>/tmp/err; then echo "$n=ok"; else echo "$n=$(sed -n 's/.*: //p' /tmp/err | head -n 1)"; fi; }
try bridge sh -c 'echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables'
try forwarding sh -c 'echo 0 > /proc/sys/net/ipv4/ip_forward'
try vm sh -c 'echo 60 > /proc/sys/vm/swappiness'`;
    const ro = inNamespace(readOnly, write, unitCaps());
    expect(answers(ro.out), ro.err).toEqual({ bridge: 'Read-only file system', forwarding: 'Read-only file system', vm: 'Read-only file system' });
    const open = inNamespace(carveOut, write, unitCaps());
    expect(answers(open.out), open.err).toEqual({ bridge: 'ok', forwarding: 'ok', vm: 'Read-only file system' });
  });
});
