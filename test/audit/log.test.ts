// The hash-chained audit log: the chain across reopen and across writers, what verify catches
// (each naming the line), torn-line recovery, and `wardgate audit verify | show`.
import { createHash } from 'node:crypto';
import { appendFileSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuditLog, auditLogPath, canonicalJson, GENESIS, openAuditLog, recordHash, verifyAuditLog, type AuditEntry } from '../../agent/audit/log.js';
import type { AuditSink } from '../../agent/audit/types.js';
import { auditCommand } from '../../agent/cli/audit.js';
import { UsageError } from '../../agent/cli/context.js';

const ROOT = join(import.meta.dirname, '..', '..');
let dir = '';
let file = '';
const logs: AuditLog[] = [];
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'wg-audit-'));
  file = auditLogPath(dir);
});
afterEach(() => {
  for (const l of logs.splice(0)) l.close();
  rmSync(dir, { recursive: true, force: true });
});

function open(): AuditLog {
  const l = AuditLog.open(file);
  logs.push(l);
  return l;
}

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');
const lines = () => readFileSync(file, 'utf8').split('\n').slice(0, -1);
const setLines = (ls: string[]) => writeFileSync(file, ls.map((l) => `${l}\n`).join(''));

/** Five records: policy.apply, command.refused, backup.restore, policy.confirm, command.ok. */
function five(): void {
  const sink: AuditSink = open();
  sink.append({ actor: 'cli:alice', action: 'policy.apply', outcome: 'ok', detail: { policyHash: 'abc', devices: 4 } });
  sink.append({ actor: 'console-1', action: 'command.refused', outcome: 'refused', detail: { reason: 'expired' } });
  sink.append({ actor: 'console-1', action: 'backup.restore', outcome: 'failed', detail: { device: 'ct-1', error: 'timeout' } });
  sink.append({ actor: 'cli:alice', action: 'policy.confirm', outcome: 'ok' });
  sink.append({ actor: 'console-2', action: 'command.ping', outcome: 'ok', detail: { z: 1, a: [1, { y: 2, b: null }] } });
}

describe('audit log: the chain', () => {
  it('chains every line to the one before, and continues across reopen', () => {
    let log = open();
    const first = log.append({ actor: 'agent', action: 'agent.start', outcome: 'ok' });
    expect(first).toMatchObject({ seq: 1, prev: GENESIS, detail: {} });
    log.append({ actor: 'cli:bob', action: 'policy.apply', outcome: 'ok', detail: { when: new Date(0), skip: undefined } });
    log.close();

    log = open();
    const third = log.append({ actor: 'agent', action: 'agent.stop', outcome: 'ok' });
    expect(third.seq).toBe(3);
    log.close();
    log = openAuditLog(join(dir, 'audit')); // the agent's way in: the state dir's audit/ folder
    logs.push(log);
    log.append({ actor: 'agent', action: 'agent.start', outcome: 'ok' });

    const ls = lines();
    expect(ls).toHaveLength(4);
    const parsed = ls.map((l) => JSON.parse(l) as AuditEntry);
    expect(parsed.map((e) => e.seq)).toEqual([1, 2, 3, 4]);
    expect(parsed[0]?.prev).toBe(GENESIS);
    for (let i = 1; i < ls.length; i++) expect(parsed[i]?.prev).toBe(sha256(ls[i - 1] ?? ''));
    for (const e of parsed) {
      const { hash, ...rest } = e;
      expect(hash).toBe(sha256(canonicalJson(rest)));
    }
    expect(parsed[1]?.detail).toEqual({ when: '1970-01-01T00:00:00.000Z' }); // what JSON keeps of it
    expect(Object.keys(parsed[0] ?? {})).toEqual(['seq', 'time', 'actor', 'action', 'outcome', 'detail', 'prev', 'hash']);
    expect(verifyAuditLog(file)).toEqual({ ok: true, records: 4, head: sha256(ls[3] ?? '') });
  });

  it('hashes canonical JSON: key order does not matter, and the hash covers the detail', () => {
    expect(canonicalJson({ b: 1, a: { d: [1, 'x', null], c: true } })).toBe('{"a":{"c":true,"d":[1,"x",null]},"b":1}');
    const base = { seq: 1, time: 't', actor: 'a', action: 'b', outcome: 'ok' as const, prev: GENESIS };
    expect(recordHash({ ...base, detail: { x: 1, y: 2 } })).toBe(recordHash({ ...base, detail: { y: 2, x: 1 } }));
    expect(recordHash({ ...base, detail: { x: 1 } })).not.toBe(recordHash({ ...base, detail: { x: 2 } }));
  });

  it('keeps one chain when two writers (the agent and the CLI) take turns', () => {
    const agent = open();
    const cli = open();
    for (let i = 0; i < 10; i++) (i % 3 === 0 ? cli : agent).append({ actor: i % 3 === 0 ? 'cli:root' : 'agent', action: `step.${i}`, outcome: 'ok' });
    expect(verifyAuditLog(file)).toMatchObject({ ok: true, records: 10 });
  });

  it('refuses a record it cannot write faithfully', () => {
    const log = open();
    expect(() => log.append({ actor: '', action: 'x', outcome: 'ok' })).toThrow(/actor/);
    expect(() => log.append({ actor: 'a', action: 'x', outcome: 'maybe' as 'ok' })).toThrow(/outcome/);
    expect(() => log.append({ actor: 'a', action: 'x', outcome: 'ok', detail: { n: 1n } })).toThrow(expect.objectContaining({ code: 'E_AUDIT_RECORD' }));
    expect(existsSync(file) ? readFileSync(file, 'utf8') : '').toBe('');
  });
});

describe('audit log: verify names the line', () => {
  beforeEach(five);

  it('an edited detail: hash mismatch on that line', () => {
    const ls = lines();
    ls[2] = (ls[2] ?? '').replace('"timeout"', '"done"');
    setLines(ls);
    expect(verifyAuditLog(file)).toMatchObject({ ok: false, records: 2, firstBadLine: 3, problem: expect.stringMatching(/^line 3: hash mismatch/) as unknown });
  });

  it('an edited detail with its hash recomputed: the next line\'s prev breaks', () => {
    const ls = lines();
    const e = JSON.parse(ls[1] ?? '') as AuditEntry;
    e.detail = { reason: 'fine' };
    e.hash = recordHash(e);
    ls[1] = JSON.stringify(e);
    setLines(ls);
    expect(verifyAuditLog(file)).toMatchObject({ ok: false, firstBadLine: 3, problem: 'line 3: broken chain: prev is not the sha256 of line 2' });
  });

  it('a deleted line: a seq gap where it was', () => {
    const ls = lines();
    ls.splice(1, 1);
    setLines(ls);
    expect(verifyAuditLog(file)).toMatchObject({ ok: false, records: 1, firstBadLine: 2, problem: expect.stringMatching(/^line 2: seq gap: expected seq 2, found 3/) as unknown });
  });

  it('a deleted first line', () => {
    setLines(lines().slice(1));
    expect(verifyAuditLog(file)).toMatchObject({ ok: false, records: 0, firstBadLine: 1, problem: expect.stringMatching(/^line 1: seq gap/) as unknown });
  });

  it('a reordered pair: the first of them', () => {
    const ls = lines();
    [ls[2], ls[3]] = [ls[3] ?? '', ls[2] ?? ''];
    setLines(ls);
    expect(verifyAuditLog(file)).toMatchObject({ ok: false, records: 2, firstBadLine: 3, problem: expect.stringMatching(/^line 3: seq gap: expected seq 3, found 4/) as unknown });
  });

  it('a reordered pair renumbered by hand: the chain', () => {
    const ls = lines();
    const swap = [ls[3], ls[2]].map((l, k) => {
      const e = { ...(JSON.parse(l ?? '') as AuditEntry), seq: 3 + k };
      return JSON.stringify({ ...e, hash: recordHash(e) });
    });
    setLines([...ls.slice(0, 2), ...swap, ...ls.slice(4)]);
    expect(verifyAuditLog(file)).toMatchObject({ ok: false, firstBadLine: 3, problem: 'line 3: broken chain: prev is not the sha256 of line 2' });
  });

  it('bad JSON, an empty line, an added field', () => {
    const ls = lines();
    setLines([...ls.slice(0, 3), '{"seq":4,', ...ls.slice(4)]);
    expect(verifyAuditLog(file)).toMatchObject({ firstBadLine: 4, problem: 'line 4: bad JSON' });
    setLines([...ls.slice(0, 1), '', ...ls.slice(1)]);
    expect(verifyAuditLog(file)).toMatchObject({ firstBadLine: 2, problem: 'line 2: bad JSON (an empty line)' });
    setLines([...ls.slice(0, 4), (ls[4] ?? '').replace('{"seq"', '{"note":"added","seq"')]);
    expect(verifyAuditLog(file)).toMatchObject({ firstBadLine: 5, problem: expect.stringMatching(/^line 5: hash mismatch/) as unknown });
  });

  it('a torn last line: reported as torn; the next open saves it aside, cuts it off and audits that', () => {
    const size = readFileSync(file).length;
    truncateSync(file, size - 20);
    const r = verifyAuditLog(file);
    expect(r).toMatchObject({ ok: false, records: 4, firstBadLine: 5, torn: true });
    expect(r.problem).toMatch(/^line 5: torn last line \(\d+ bytes and no newline\)/);

    const log = open();
    const next = log.append({ actor: 'agent', action: 'agent.start', outcome: 'ok' });
    expect(next.seq).toBe(6);
    const ls = lines();
    const recovered = JSON.parse(ls[4] ?? '') as AuditEntry;
    expect(recovered).toMatchObject({ seq: 5, actor: 'agent', action: 'audit.recovered', detail: { afterSeq: 4 } });
    const savedTo = String(recovered.detail.savedTo);
    expect(readFileSync(savedTo, 'utf8')).toMatch(/^\{"seq":5,/);
    expect(readdirSync(join(dir, 'audit')).filter((f) => f.includes('.torn-'))).toHaveLength(1);
    expect(verifyAuditLog(file)).toMatchObject({ ok: true, records: 6 });
  });

  it('refuses to continue a chain whose last line is not a record', () => {
    appendFileSync(file, 'hello\n');
    expect(() => AuditLog.open(file)).toThrow(expect.objectContaining({ code: 'E_AUDIT_CORRUPT' }));
  });
});

function io() {
  const out: string[] = [];
  const err: string[] = [];
  return { out, err, io: { out: (l: string) => out.push(l), err: (l: string) => err.push(l) } };
}

describe('wardgate audit', () => {
  it('verify: 0 and a summary when intact, 1 and the problem when not', async () => {
    five();
    let t = io();
    expect(await auditCommand('verify', { stateDir: dir }, t.io)).toBe(0);
    expect(t.out.join('\n')).toMatch(/^ok: 5 record\(s\), the chain is intact/);

    const ls = lines();
    ls[0] = (ls[0] ?? '').replace('"devices":4', '"devices":5');
    setLines(ls);
    t = io();
    expect(await auditCommand('verify', { file }, t.io)).toBe(1);
    expect(t.err.join('\n')).toContain('line 1: hash mismatch');
    t = io();
    expect(await auditCommand('verify', { file, json: true }, t.io)).toBe(1);
    expect(JSON.parse(t.out.join('\n'))).toMatchObject({ path: file, ok: false, firstBadLine: 1, records: 0 });
  });

  it('show prints the records, as text or JSON, and flags a log that does not verify', async () => {
    five();
    let t = io();
    expect(await auditCommand('show', { stateDir: dir }, t.io)).toBe(0);
    expect(t.out).toHaveLength(5);
    expect(t.out[1]).toMatch(/^ {4}2 {2}\S+ {2}refused {2}console-1 {2}command\.refused {2}\{"reason":"expired"\}$/);
    t = io();
    expect(await auditCommand('show', { file, json: true }, t.io)).toBe(0);
    const shown = JSON.parse(t.out.join('\n')) as AuditEntry[];
    expect(shown.map((e) => e.action)).toEqual(['policy.apply', 'command.refused', 'backup.restore', 'policy.confirm', 'command.ping']);

    const ls = lines();
    ls.splice(1, 1);
    setLines(ls);
    t = io();
    expect(await auditCommand('show', { file }, t.io)).toBe(1);
    expect(t.out).toHaveLength(4);
    expect(t.err.join('\n')).toContain('line 2: seq gap');
  });

  it('finds the log through the gateway file\'s stateDir, as every command does', async () => {
    const gw = readFileSync(join(ROOT, 'gateway.example.yaml'), 'utf8').replace('stateDir: /var/lib/wardgate', 'stateDir: state');
    writeFileSync(join(dir, 'gateway.yaml'), gw);
    const log = openAuditLog(join(dir, 'state', 'audit'));
    logs.push(log);
    log.append({ actor: 'agent', action: 'agent.start', outcome: 'ok' });
    const t = io();
    expect(await auditCommand('verify', { gateway: join(dir, 'gateway.yaml') }, t.io)).toBe(0);
    expect(t.out.join('\n')).toContain(`ok: 1 record(s), the chain is intact (${join(dir, 'state', 'audit', 'audit.ndjson')}`);
  });

  it('says what is wrong with the command or the file', async () => {
    const t = io();
    await expect(auditCommand(undefined, { stateDir: dir }, t.io)).rejects.toBeInstanceOf(UsageError);
    await expect(auditCommand('frobnicate', { stateDir: dir }, t.io)).rejects.toThrow(/unknown audit command "frobnicate"/);
    expect(await auditCommand('verify', { stateDir: dir }, t.io)).toBe(1);
    expect(t.err.join('\n')).toContain(`no audit log at ${file}`);
  });
});
