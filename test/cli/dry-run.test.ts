// The command line end to end with the dry-run backend: what a machine without root or nft
// gets. Runs the built CLI (npm test builds first) as a user would.
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { jsonSchemas } from '../../agent/config/schema.js';
import { jsonSchemaOf, PAYLOADS } from '../../agent/mqtt/topics.js';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'bin', 'wardgate.js');

let dir = '';
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'wg-cli-'));
  cpSync(join(ROOT, 'rules'), join(dir, 'rules'), { recursive: true });
  const gw = readFileSync(join(ROOT, 'gateway.example.yaml'), 'utf8').replace('stateDir: /var/lib/wardgate', 'stateDir: state');
  writeFileSync(join(dir, 'gateway.yaml'), gw);
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function wardgate(...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(process.execPath, [CLI, ...args, '--gateway', join(dir, 'gateway.yaml'), '--backend', 'dry-run'], { encoding: 'utf8' });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

const rulesetFile = () => join(dir, 'state', 'dry-run', 'ruleset.nft');
const status = () => JSON.parse(wardgate('policy', 'status', '--json').out) as { kernel: string; pending?: { secondsLeft: number }; committed?: { policyHash: string } };

async function until(what: string, check: () => boolean, ms = 8000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('wardgate policy, dry run', () => {
  it('check validates and says nothing is checked by nft', () => {
    const r = wardgate('policy', 'check');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^ok: 4 device\(s\), 18 allow entries, \d+ set element\(s\); not checked by nft \(dry run\)/);
  });

  it('apply, confirm, status: the committed ruleset is the compiled one', () => {
    const apply = wardgate('policy', 'apply');
    expect(apply.code).toBe(0);
    expect(apply.out).toContain('confirm within 120 s');
    expect(status()).toMatchObject({ kernel: 'pending' });
    expect(wardgate('policy', 'apply').code).toBe(5); // a change is pending
    expect(wardgate('policy', 'confirm').code).toBe(0);
    expect(status()).toMatchObject({ kernel: 'committed' });
    expect(readFileSync(rulesetFile(), 'utf8')).toBe(wardgate('policy', 'print').out);
    expect(wardgate('policy', 'confirm').code).toBe(5); // nothing to confirm
    expect(wardgate('policy', 'diff')).toMatchObject({ code: 0, out: 'no difference from the committed ruleset\n' });
    // Every change is in the hash-chained audit log, with who made it.
    const audit = JSON.parse(wardgate('audit', 'show', '--json').out) as { action: string; actor: string; outcome: string }[];
    expect(audit.map((a) => [a.action, a.outcome])).toEqual([
      ['policy.apply', 'ok'],
      ['policy.refused', 'refused'],
      ['policy.confirm', 'ok'],
    ]);
    expect(audit.every((a) => a.actor.startsWith('cli:'))).toBe(true);
    expect(wardgate('audit', 'verify').code).toBe(0);
  });

  it('an unconfirmed apply rolls back by itself when the window closes', async () => {
    expect(wardgate('policy', 'apply').code).toBe(0);
    expect(wardgate('policy', 'confirm').code).toBe(0);
    const committed = readFileSync(rulesetFile(), 'utf8');
    const ct = join(dir, 'rules', 'ct-modality.yaml');
    writeFileSync(ct, readFileSync(ct, 'utf8').replace('ports: [22, 443]', 'ports: [22, 443, 8080]'));
    const diff = wardgate('policy', 'diff');
    expect(diff.code).toBe(1);
    expect(diff.out).toMatch(/^\+\t+192\.0\.2\.40 \. tcp \. 8080 counter comment "ct-01\/allow\[5\]/m);
    expect(wardgate('policy', 'apply', '--timeout', '1').code).toBe(0);
    expect(readFileSync(rulesetFile(), 'utf8')).toContain('8080');
    await until('the rollback', () => readFileSync(rulesetFile(), 'utf8') === committed);
    expect(status()).toMatchObject({ kernel: 'committed' });
    const history = readFileSync(join(dir, 'state', 'ruleset', 'history.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { event: string; reason?: string });
    expect(history.map((h) => h.event)).toEqual(['apply', 'confirm', 'apply', 'rollback']);
    expect(history[3]?.reason).toBe('not confirmed within the window');
  });

  it('a rollback whose saved previous table cannot be loaded brings the committed ruleset back instead', () => {
    expect(wardgate('policy', 'apply').code).toBe(0);
    expect(wardgate('policy', 'confirm').code).toBe(0);
    const committed = readFileSync(rulesetFile(), 'utf8');
    const ct = join(dir, 'rules', 'ct-modality.yaml');
    writeFileSync(ct, readFileSync(ct, 'utf8').replace('ports: [22, 443]', 'ports: [22, 443, 8080]'));
    expect(wardgate('policy', 'apply').code).toBe(0);
    writeFileSync(join(dir, 'state', 'ruleset', 'rollback.nft'), 'garbage\n');
    expect(wardgate('policy', 'rollback').code).toBe(0);
    expect(readFileSync(rulesetFile(), 'utf8')).toBe(committed);
    const history = readFileSync(join(dir, 'state', 'ruleset', 'history.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { event: string; restored?: string; error?: string });
    expect(history.at(-1)).toMatchObject({ event: 'rollback', restored: 'committed' });
    expect(history.at(-1)?.error).toContain('not a ruleset');
  });

  it('a rollback by hand; the first apply rolls back to no table', () => {
    expect(wardgate('policy', 'apply').code).toBe(0);
    const r = wardgate('policy', 'rollback');
    expect(r).toMatchObject({ code: 0 });
    expect(r.out).toContain('the table is removed, as before');
    expect(status()).toMatchObject({ kernel: 'absent' });
    expect(wardgate('policy', 'rollback').code).toBe(1);
  });

  it('a broken policy is refused with file, line and field, and changes nothing', () => {
    expect(wardgate('policy', 'apply').code).toBe(0);
    expect(wardgate('policy', 'confirm').code).toBe(0);
    const before = readFileSync(rulesetFile(), 'utf8');
    const lab = join(dir, 'rules', 'lab-analyzer.yaml');
    const original = readFileSync(lab, 'utf8');
    writeFileSync(lab, original.replaceAll('ports: [502]', 'ports: [65536]'));
    const r = wardgate('policy', 'apply');
    expect(r.code).toBe(3);
    expect(r.err).toContain('rules/lab-analyzer.yaml:24:17: error: devices[0].allow[0].ports[0]: port must be 1-65535');
    expect(r.err).toContain('rules/lab-analyzer.yaml:34:17: error: devices[0].allow[2].ports[0]: port must be 1-65535');
    expect(r.err).toContain('wardgate: 2 error(s); nothing was applied');
    expect(readFileSync(rulesetFile(), 'utf8')).toBe(before);
    writeFileSync(lab, original.replace('peer: lims', 'peer: limz'));
    const unknown = wardgate('policy', 'apply');
    expect(unknown.code).toBe(3);
    expect(unknown.err).toContain('rules/lab-analyzer.yaml:26:15: error: devices[0].allow[1].peer: unknown peer group "limz"');
    expect(readFileSync(rulesetFile(), 'utf8')).toBe(before);
    // A broken policy does not stand in the way of the state commands.
    expect(wardgate('policy', 'status').code).toBe(0);
  });

  it('restore loads the committed ruleset, or the fail-safe one when it is damaged', () => {
    expect(wardgate('policy', 'apply').code).toBe(0);
    expect(wardgate('policy', 'confirm').code).toBe(0);
    expect(wardgate('policy', 'restore')).toMatchObject({ code: 0, out: 'restored the committed ruleset\n' });
    const committed = join(dir, 'state', 'ruleset', 'committed.nft');
    writeFileSync(committed, readFileSync(committed, 'utf8').replace('drop', 'dorp'));
    const r = wardgate('policy', 'restore');
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/DEGRADED: loaded the fail-safe ruleset because .*does not match its recorded sha256/);
    const loaded = readFileSync(rulesetFile(), 'utf8');
    expect(loaded).toContain('FAIL-SAFE');
    expect(loaded).toContain('pump-server-01 fail-safe: failMode open');
    expect(loaded).toContain('ct-01 fail-safe: failMode closed');
  });

  it('usage mistakes exit 2 and say what is wrong', () => {
    const r = wardgate('policy', 'explode');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^wardgate: unknown policy command "explode": use check, print/);
    expect(wardgate('policy', 'apply', '--timeout', 'soon').code).toBe(2);
    expect(wardgate('frobnicate').code).toBe(2);
  });

  it('the JSON Schemas shipped in rules/schema are the ones the code prints', () => {
    const schemas = jsonSchemas();
    expect(JSON.parse(readFileSync(join(ROOT, 'rules', 'schema', 'policy.schema.json'), 'utf8'))).toEqual(schemas.policy);
    expect(JSON.parse(readFileSync(join(ROOT, 'rules', 'schema', 'gateway.schema.json'), 'utf8'))).toEqual(schemas.gateway);
  });

  it('the MQTT payload schemas shipped in docs/schemas/mqtt are the ones the code prints', () => {
    for (const name of Object.keys(PAYLOADS) as (keyof typeof PAYLOADS)[]) {
      const shipped: unknown = JSON.parse(readFileSync(join(ROOT, 'docs', 'schemas', 'mqtt', `${name}.schema.json`), 'utf8'));
      expect(shipped, name).toEqual(jsonSchemaOf(name));
    }
  });
});
