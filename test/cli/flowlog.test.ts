// What the commands that read the flow log share (agent/cli/flowlog.ts): one --since for
// `flows map`, `policy learn` and `policy diff --observed` (its forms, its refusals, exit 2 from
// each command), one warning about skipped lines, and a flow log the user may not read said in
// one line (the built CLI, run as nobody when we are root).
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { UsageError } from '../../agent/cli/context.js';
import { parseSince, skippedWarning } from '../../agent/cli/flowlog.js';
import { main } from '../../agent/cli/main.js';
import { assertBuilt, CLI, CT, gatewayYaml, GROUPS, PUMP } from '../integration/site.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A gateway directory (the integration site's groups, ct-01 and pump-01) with one flow record. */
function site(): { dir: string; gateway: string; log: string } {
  const dir = mkdtempSync(join(tmpdir(), 'wg-flowlog-cli-'));
  dirs.push(dir);
  writeFileSync(join(dir, 'gateway.yaml'), gatewayYaml({ mode: 'router', stateDir: 'state' }));
  mkdirSync(join(dir, 'rules'));
  for (const [name, text] of Object.entries({ '00-groups.yaml': GROUPS, 'ct.yaml': CT, 'pump.yaml': PUMP })) writeFileSync(join(dir, 'rules', name), text);
  mkdirSync(join(dir, 'state', 'flows'), { recursive: true });
  const log = join(dir, 'state', 'flows', 'flows.ndjson');
  const record = {
    kind: 'flow', time: new Date().toISOString(), start: null, device: 'pump-01', peer: '10.10.1.10', direction: 'inbound', proto: 'tcp', sport: 40000, dport: 443,
    packets: 2, bytes: 120, toDevice: { packets: 1, bytes: 60 }, fromDevice: { packets: 1, bytes: 60 }, accounted: true, durationMs: 1, app: 'HTTPS', verdict: 'monitored', entry: null,
  };
  writeFileSync(log, `${JSON.stringify(record)}\n`);
  return { dir, gateway: join(dir, 'gateway.yaml'), log };
}

const COMMANDS = [
  ['flows', 'map'],
  ['policy', 'learn', '--device', 'pump-01'],
  ['policy', 'diff', '--observed'],
];

describe('--since', () => {
  const now = new Date('2030-01-10T12:00:00Z');
  it.each([
    ['90s', '2030-01-10T11:58:30.000Z'],
    ['90m', '2030-01-10T10:30:00.000Z'],
    ['24h', '2030-01-09T12:00:00.000Z'],
    ['7d', '2030-01-03T12:00:00.000Z'],
    ['1w', '2030-01-03T12:00:00.000Z'],
    ['2w', '2029-12-27T12:00:00.000Z'],
    [' 7d ', '2030-01-03T12:00:00.000Z'],
    ['2030-01-01', '2030-01-01T00:00:00.000Z'],
    ['2030-02-28', '2030-02-28T00:00:00.000Z'],
    ['2030-01-01T08:00Z', '2030-01-01T08:00:00.000Z'],
    ['2030-01-01T08:00+02:00', '2030-01-01T06:00:00.000Z'],
    ['2030-01-01T08:00:00+01:00', '2030-01-01T07:00:00.000Z'],
    ['2030-01-01T08:00:00.250Z', '2030-01-01T08:00:00.250Z'],
  ])('%s', (text, expected) => expect(parseSince(text, now).toISOString()).toBe(expected));

  it('an age is back from now by default', () => {
    const before = Date.now();
    const t = parseSince('1h').getTime();
    expect(t).toBeGreaterThanOrEqual(before - 3_600_000);
    expect(t).toBeLessThanOrEqual(Date.now() - 3_600_000);
  });

  it.each(['', 'yesterday', 'now', '24', '5', '-1h', '1.5h', '3y', '5y', '1234567d', '12:00', '2030-13-45', '2030-02-30', '2030-01-01T25:00Z', '2030-01-01 soon', '2030-1-1'])(
    'refuses "%s", a usage error that quotes it',
    (text) => {
      expect(() => parseSince(text, now)).toThrow(UsageError);
      expect(() => parseSince(text, now)).toThrow(`--since takes an age back from now (90m, 24h, 7d, 2w; units s, m, h, d, w) or an ISO 8601 time (2030-01-31, 2030-01-31T08:00Z), not "${text}"`);
    },
  );

  it.each(COMMANDS)('%s %s: a bad --since exits 2 with that message, before reading anything', async (...command) => {
    const s = site();
    const out: string[] = [];
    const err: string[] = [];
    const code = await main([...command, '--since', '3y', '--gateway', s.gateway, '--backend', 'dry-run'], { out: (l) => out.push(l), err: (l) => err.push(l) });
    expect({ code, out, err }).toEqual({ code: 2, out: [], err: [expect.stringMatching(/^wardgate: --since takes an age back from now .*, not "3y"$/) as string] });
  });
});

describe('skipped lines', () => {
  it('are warned about when some are not well-formed records, in one wording for every command', () => {
    expect(skippedWarning({ bad: 0 })).toBeUndefined();
    expect(skippedWarning({ bad: 1 })).toBe('warning: skipped 1 line of the flow log that is not a well-formed record');
    expect(skippedWarning({ bad: 3 })).toBe('warning: skipped 3 lines of the flow log that are not well-formed records');
  });
});

describe('a flow log the user may not read', () => {
  it.each(COMMANDS)('%s %s: one line naming the file and what to do, exit 1', (...command) => {
    assertBuilt();
    const s = site();
    const asRoot = process.getuid?.() === 0;
    if (asRoot) {
      // Everything but the log readable by nobody, as on a gateway where the log is the agent's.
      for (const p of [s.dir, join(s.dir, 'rules'), join(s.dir, 'state'), join(s.dir, 'state', 'flows')]) chmodSync(p, 0o755);
      chmodSync(s.log, 0o600);
    } else {
      chmodSync(s.log, 0o000);
    }
    const args = [CLI, ...command, '--gateway', s.gateway, '--backend', 'dry-run'];
    const r = asRoot
      ? spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, ...args], { encoding: 'utf8', timeout: 30000 })
      : spawnSync(process.execPath, args, { encoding: 'utf8', timeout: 30000 });
    expect(r.error).toBeUndefined();
    expect(r.stderr.trimEnd()).toBe(`wardgate: cannot read the flow log: EACCES: permission denied, open '${s.log}' (run as the wardgate user or root)`);
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
  });
});
