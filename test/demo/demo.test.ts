// `wardgate demo` (what `npm start` runs), built, as a child process in a process group of its
// own: the whole system comes up (the simulated devices up on the console, the proxies'
// answers as the rules say, a backup round trip), it ends cleanly, and no process of its group,
// no namespace, no listener and no file is left. As root the namespace site runs first.
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { assertBuilt, CLI, sleep, until } from '../integration/site.js';

const root = process.getuid?.() === 0;

interface Run {
  child: ChildProcessWithoutNullStreams;
  out: () => string;
  exited: Promise<number | null>;
}

const runs: Run[] = [];

function startDemo(args: string[]): Run {
  // detached: the demo leads a process group of its own, so whatever it starts can be found.
  const child = spawn(process.execPath, [CLI, 'demo', ...args], { detached: true, stdio: 'pipe' });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const run = { child, out: () => out, exited };
  runs.push(run);
  return run;
}

/** Live processes of a process group (zombies are already gone for our purpose). */
function groupMembers(pgid: number): string[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .flatMap((d) => {
      try {
        const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
        const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        if (fields[0] === 'Z' || Number(fields[2]) !== pgid) return [];
        return [`${d} ${readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0').join(' ')}`];
      } catch {
        return [];
      }
    });
}

const listening = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });

/** What nothing left behind means: no process of the group, no namespace, the work directory gone. */
async function assertNothingLeft(run: Run, ports: number[]): Promise<void> {
  const pgid = run.child.pid!;
  // The IPC lifeline ends Node-RED and the proxy process with the demo; give them a moment.
  await until('the demo\'s process group to empty', () => groupMembers(pgid).length === 0 || undefined, 5000).catch(() => undefined);
  expect(groupMembers(pgid)).toEqual([]);
  for (const p of ports) expect(await listening(p), `port ${p}`).toBe(false);
  const work = /work directory (\/\S+)/.exec(run.out())?.[1];
  expect(work).toBeDefined();
  expect(existsSync(work!)).toBe(false);
  expect(spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout).not.toMatch(new RegExp(`^wgdemo${pgid}-`, 'm'));
}

const portsIn = (out: string): number[] => {
  const broker = /embedded MQTT broker on 127\.0\.0\.1:(\d+)/.exec(out)?.[1];
  const proxies = [...out.matchAll(/^ {4}127\.0\.0\.1:(\d+) -> /gm)].map((m) => Number(m[1]));
  const console = /^OPEN the console's dashboard: +http:\/\/127\.0\.0\.1:(\d+)\//m.exec(out)?.[1];
  return [broker, console].filter((p): p is string => p !== undefined).map(Number).concat(proxies);
};

afterEach(() => {
  for (const r of runs.splice(0)) {
    if (r.child.exitCode === null && r.child.signalCode === null) {
      try {
        process.kill(-r.child.pid!, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
});

function expectTheScript(out: string): void {
  if (root) {
    expect(out).toMatch(/PASSED {2}pacs -> CT scanner ct-01:104/);
    expect(out).toMatch(/DROPPED stranger -> CT scanner ct-01:104/);
    expect(out).toMatch(/event \[warning\] flow\.denied: denied tcp\/104 from 10\.10\.9\.66 to device ct-01/);
    expect(out).toMatch(/^ {2}denied {4}10\.10\.9\.66 -> ct-01:104 DICOM$/m);
    expect(out).toContain('the namespace site is removed');
  } else {
    expect(out).toContain('not root (or no nftables)');
  }
  expect(out).toMatch(/committed: policy [0-9a-f]{16} is now the ruleset restored at boot/);
  // The simulators, probed by the agent in their own protocols.
  expect(out).toMatch(/devices\/lab-analyzer-01\/health: up {2}\(modbus ok registers \[1,0,87,370\]\)/);
  expect(out).toMatch(/devices\/ct-01\/health: up {2}\(dicom ok\)/);
  // The proxies, tried with real clients.
  expect(out).toMatch(/^ {2}PASSED +Modbus read of holding registers 0-3 of lab-analyzer-01: passed: \[1,0,87,370\]$/m);
  expect(out).toMatch(/^ {2}REFUSED +Modbus write of holding register 1 := 9 on lab-analyzer-01: refused with exception 01 \(Illegal function.*\); register 1 still reads 0$/m);
  expect(out).toMatch(/^ {2}PASSED +C-ECHO from AE title PACS to CT01 \(ct-01\): passed/m);
  expect(out).toMatch(/^ {2}REJECTED +C-ECHO from AE title STRANGER to CT01 \(ct-01\): rejected: association rejected \(permanent\): calling AE title not recognized$/m);
  expect(out).toMatch(/events: \[warning\] modbus\.denied: /);
  expect(out).toMatch(/events: \[warning\] dicom\.rejected: /);
  // Signed commands, backups, a verified pull.
  expect(out).toMatch(/answer: ok=true \{"pong":true/);
  expect(out).toMatch(/answer: ok=false \{"code":"E_MALFORMED"/);
  expect(out).toMatch(/backup\.now: ok=true, version 1, the approved baseline/);
  expect(out).toMatch(/events: \[warning\] config\.drift: configuration of lab-analyzer-01 version 2 differs .*holding 1: 0 -> 4/);
  expect(out).toMatch(/backup\.restore: restored version 1 .*register 1 reads 0 again/);
  expect(out).toMatch(/verified with .*gateway-ed25519\.pub .*: 2 version\(s\) of lab-analyzer-01 from demo\/gw-demo-01/);
  // The console, read back by the demo through Node-RED's admin API.
  expect(out).toContain('the console shows: gw-demo-01 online; lab-analyzer-01 up, ct-01 up; 2 backup version(s) of lab-analyzer-01');
  expect(out).not.toContain('<-- expected');
}

describe('wardgate demo', () => {
  it('--once: the whole system comes up, answers as the rules say, and leaves nothing behind', async () => {
    assertBuilt();
    const run = startDemo(['--once']);
    const code = await Promise.race([run.exited, sleep(150000).then(() => 'timeout' as const)]);
    const out = run.out();
    expect(code, out).toBe(0);
    expectTheScript(out);
    expect(out).toMatch(/events: \[critical\] device\.state: device lab-analyzer-01 is down \(was up\)/);
    expect(out).toContain('the console\'s alerts: [critical] device lab-analyzer-01 is down (was up)');
    expect(out).toMatch(/status: offline \(session 1, shutdown\)/);
    expect(out).toContain('demo: everything went as the policies say');
    await assertNothingLeft(run, portsIn(out));
  }, 180000);

  it('runs until Ctrl-C: the dashboard to open, a key that switches the analyzer off, a clean stop', async () => {
    assertBuilt();
    const run = startDemo([]);
    await until('the demo to say what to try', () => run.out().includes('Ctrl-C (or q) stops everything.') || (run.child.exitCode !== null ? 'exited' : undefined), 150000, 250);
    const out = run.out();
    expect(run.child.exitCode, out).toBeNull();
    expectTheScript(out);
    const dashboard = /^OPEN the console's dashboard: +(http:\S+)/m.exec(out)?.[1];
    const editor = /the Node-RED editor: +(http:\S+) +user (\S+), password (\S+)/.exec(out);
    expect(dashboard).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/dashboard\/site$/);
    // What the demo says to open: the dashboard without a login on loopback, the editor with the one it printed.
    expect((await fetch(dashboard!)).status).toBe(200);
    expect((await fetch(`${editor![1]}/flows`)).status).toBe(401);
    const token = await fetch(`${editor![1]}/auth/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ client_id: 'node-red-admin', grant_type: 'password', scope: '*', username: editor![2], password: editor![3] }),
    });
    expect(token.status).toBe(200);
    const auth = { authorization: `Bearer ${((await token.json()) as { access_token: string }).access_token}` };
    const context = async <T>(key: string): Promise<T | undefined> => {
      const r = await fetch(`${editor![1]}/context/flow/wg-tab/${key}?store=default`, { headers: auth });
      const body = (await r.json()) as { msg?: string; format?: string };
      return body.msg === undefined || body.format === 'undefined' ? undefined : (JSON.parse(body.msg) as T);
    };
    const devices = await context<Record<string, { state: string }>>('devices');
    expect(devices?.['gw-demo-01/lab-analyzer-01']?.state).toBe('up');
    expect(devices?.['gw-demo-01/ct-01']?.state).toBe('up');

    // "press a": the analyzer is switched off, and the console raises the alert.
    run.child.stdin.write('a\n');
    await until(
      'the device.state alert on the console',
      async () => ((await context<{ kind: string; device?: string }[]>('alerts')) ?? []).some((a) => a.kind === 'device.state' && a.device === 'lab-analyzer-01') || undefined,
      15000,
      250,
    );
    expect(run.out()).toContain('[a] the analyzer is switched off');

    const ports = portsIn(run.out());
    // Ctrl-C in a terminal signals the whole process group, the proxy process included: it must
    // leave its stopping to the agent (no false proxy.restarted).
    process.kill(-run.child.pid!, 'SIGINT');
    const code = await Promise.race([run.exited, sleep(30000).then(() => 'timeout' as const)]);
    expect(code, run.out()).toBe(0);
    expect(run.out()).not.toContain('proxy.restarted');
    expect(run.out()).toMatch(/stopping: the console, the agent .*\n {2}status: offline \(session 1, shutdown\)/);
    await assertNothingLeft(run, ports);
  }, 180000);
});
