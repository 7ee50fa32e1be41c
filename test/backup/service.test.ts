// The agent's backup service against a real store and real drivers (a command whose output is
// the configuration): schedules, one run per device at a time, drift against the approved
// baseline, failures, and staleness measured from the store so that it survives restarts.
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { baselineProtect, readBaseline, writeBaseline } from '../../agent/backup/baseline.js';
import { BackupDeviceSchema } from '../../agent/backup/schema.js';
import { BackupService, type BackupEvent } from '../../agent/backup/service.js';
import type { BackupTarget } from '../../agent/backup/run.js';
import { makeStore, text, type TestStore } from './store-helpers.js';

interface Seen {
  severity: string;
  kind: string;
  message: string;
  device?: string;
  data?: Record<string, unknown>;
  at: number;
}

let t: TestStore | undefined;
let service: BackupService | undefined;
afterEach(async () => {
  await service?.stop();
  service = undefined;
  t?.cleanup();
  t = undefined;
});

function target(id: string, baseDir: string, backup: Record<string, unknown>): BackupTarget {
  return { address: { id }, backup: BackupDeviceSchema.parse(backup), baseDir };
}

function harness(targets: BackupTarget[], extra: { hourMs?: number; startSpreadMs?: number } = {}) {
  const events: Seen[] = [];
  const logs: { msg: string; obj: object }[] = [];
  const event: BackupEvent = (severity, kind, message, x) => events.push({ severity, kind, message, at: Date.now(), ...(x.device !== undefined ? { device: x.device } : {}), ...(x.data ? { data: x.data } : {}) });
  const log = { info: (obj: object, msg?: string) => logs.push({ obj, msg: msg ?? '' }), warn: (obj: object, msg?: string) => logs.push({ obj, msg: msg ?? '' }), error: (obj: object, msg?: string) => logs.push({ obj, msg: msg ?? '' }) };
  service = new BackupService({ store: t!.store, targets, event, log, retry: { backoffMs: 10 }, ...extra });
  return { service, events, logs };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe('BackupService', () => {
  it('runs on its schedule, sets the first version as baseline, and raises config.drift naming the changed line', async () => {
    t = makeStore();
    const conf = join(t.dir, 'device.conf');
    writeFileSync(conf, 'mode=auto\nrate=10\n');
    // An hour of 400 ms: everyHours 0.25 is a run every 100 ms.
    const h = harness([target('pump-1', t.dir, { driver: { type: 'command', argv: ['cat', 'device.conf'] }, schedule: { everyHours: 0.25 } })], { hourMs: 400, startSpreadMs: 20 });
    h.service.start();
    await until('the first version', () => t!.store.versions('pump-1').length === 1);
    expect(readBaseline(t.store, 'pump-1')).toMatchObject({ version: 1, by: 'auto' });
    expect(h.logs.some((l) => /no approved baseline for pump-1: version 1 is its baseline now/.test(l.msg))).toBe(true);
    // Scheduled runs keep going: the unchanged configuration is checked again and again.
    const firstCheck = t.store.lastChecked('pump-1')!.time;
    await until('a later check', () => t!.store.lastChecked('pump-1')!.time > firstCheck);
    expect(h.events).toEqual([]);

    writeFileSync(conf, 'mode=auto\nrate=12\n');
    await until('config.drift', () => h.events.some((e) => e.kind === 'config.drift'));
    const drift = h.events.find((e) => e.kind === 'config.drift')!;
    expect(drift).toMatchObject({ severity: 'warning', device: 'pump-1' });
    expect(drift.message).toMatch(/pump-1 version 2 differs from the approved baseline \(version 1\): 2 line\(s\) changed: - 2: rate=10; \+ 2: rate=12/);
    expect(drift.data).toMatchObject({ version: 2, baseline: 1, compared: 'text', total: 2 });
    // The same drifted bytes again are not news.
    const checked = t.store.lastChecked('pump-1')!.time;
    await until('another check', () => t!.store.lastChecked('pump-1')!.time > checked);
    expect(h.events.filter((e) => e.kind === 'config.drift')).toHaveLength(1);
  });

  it('never runs one device twice at once: concurrent runNow calls share one run', async () => {
    t = makeStore();
    writeFileSync(join(t.dir, 'device.conf'), 'x=1\n');
    const h = harness([target('pump-1', t.dir, { driver: { type: 'command', argv: ['sh', '-c', 'echo run >> runs; sleep 0.3; cat device.conf'] } })]);
    h.service.start();
    const results = await Promise.all([h.service.runNow('pump-1'), h.service.runNow('pump-1'), h.service.runNow('pump-1')]);
    expect(results.every((r) => r.ok)).toBe(true);
    expect(readFileSync(join(t.dir, 'runs'), 'utf8')).toBe('run\n');
    // A later call is a new run.
    await h.service.runNow('pump-1');
    expect(readFileSync(join(t.dir, 'runs'), 'utf8')).toBe('run\nrun\n');
  });

  it('raises backup.failed with the driver\'s error, and backup.stale once per expected interval', async () => {
    t = makeStore();
    const h = harness([target('ct-1', t.dir, { driver: { type: 'command', argv: ['sh', '-c', 'echo device busy >&2; exit 3'] }, retries: 0, schedule: { everyHours: 0.25 } })], { hourMs: 800, startSpreadMs: 10 });
    // everyHours 0.25 of an 800 ms hour: a run every 200 ms; stale after 2 x that, 400 ms.
    const started = Date.now();
    h.service.start();
    await until('backup.failed', () => h.events.some((e) => e.kind === 'backup.failed'));
    const failed = h.events.find((e) => e.kind === 'backup.failed')!;
    expect(failed).toMatchObject({ severity: 'warning', device: 'ct-1', data: { driver: 'command', code: 'exit' } });
    expect(failed.message).toMatch(/backup of ct-1 \(command\) failed: .*device busy/);
    await until('backup.stale', () => h.events.some((e) => e.kind === 'backup.stale'));
    const stale = h.events.filter((e) => e.kind === 'backup.stale');
    expect(stale[0]!.at - started).toBeGreaterThanOrEqual(400);
    expect(stale[0]).toMatchObject({ severity: 'warning', device: 'ct-1', data: { lastSuccess: null, expectEveryHours: 0.5 } });
    expect(stale[0]!.message).toMatch(/no successful backup of ct-1 yet/);
    await sleep(1000);
    const all = h.events.filter((e) => e.kind === 'backup.stale');
    expect(all.length).toBeGreaterThanOrEqual(2);
    for (let i = 1; i < all.length; i++) expect(all[i]!.at - all[i - 1]!.at).toBeGreaterThanOrEqual(400);
    expect(h.events.filter((e) => e.kind === 'backup.failed').length).toBeGreaterThan(2);
  });

  it('measures staleness from the store: a backup made before a restart counts, an old one is stale at once', async () => {
    const tenHoursAgo = new Date(Date.now() - 10 * 3600_000);
    t = makeStore({ now: () => tenHoursAgo });
    await t.store.put('old-1', 'file', text('a\n'));
    await t.store.put('fresh-1', 'file', text('b\n'));
    t.store = t.open({ now: () => new Date() });
    await t.store.put('fresh-1', 'file', text('b\n')); // unchanged: only checked.json is written
    const h = harness([
      target('old-1', t.dir, { driver: { type: 'file' }, expectEveryHours: 8 }),
      target('fresh-1', t.dir, { driver: { type: 'file' }, expectEveryHours: 8 }),
    ]);
    h.service.start();
    expect(h.events.map((e) => [e.kind, e.device])).toEqual([['backup.stale', 'old-1']]);
    expect(h.events[0]!.message).toMatch(new RegExp(`no successful backup of old-1 for 10 h \\(last ${tenHoursAgo.toISOString()}; expected every 8 h\\)`));
  });

  it('measures drift against an approved baseline, and keeps it from retention', async () => {
    t = makeStore({ retention: { last: 1, dailyDays: 0 } });
    t.store = t.open({ protect: baselineProtect(t.stateDir) });
    const conf = join(t.dir, 'device.conf');
    writeFileSync(conf, 'v=1\n');
    const h = harness([target('mon-1', t.dir, { driver: { type: 'command', argv: ['cat', 'device.conf'] } })]);
    h.service.start();
    await h.service.runNow('mon-1');
    writeFileSync(conf, 'v=2\n');
    await h.service.runNow('mon-1');
    expect(h.events.map((e) => e.kind)).toEqual(['config.drift']);
    // v=2 approved: back to v=1 is drift now, and version 2 survives retention (last: 1).
    writeBaseline(t.store, t.store.readManifest('mon-1', 2), 'cli:test');
    writeFileSync(conf, 'v=1\n');
    appendFileSync(conf, 'w=0\n');
    const r = await h.service.runNow('mon-1');
    expect(r.outcome?.drift?.summary).toEqual(['- 1: v=2', '+ 1: v=1', '+ 2: w=0']);
    writeFileSync(conf, 'v=3\n');
    await h.service.runNow('mon-1');
    // Version 1 (auto baseline once) went; 2 is the baseline, 4 the newest.
    expect(t.store.versions('mon-1')).toEqual([2, 4]);
    expect(h.events.filter((e) => e.kind === 'config.drift').map((e) => e.data?.baseline)).toEqual([1, 2, 2]);
  });

  it('does not compare against a baseline whose manifest is not the approved one, and says so', async () => {
    t = makeStore();
    const conf = join(t.dir, 'device.conf');
    writeFileSync(conf, 'v=1\n');
    const h = harness([target('mon-1', t.dir, { driver: { type: 'command', argv: ['cat', 'device.conf'] } })]);
    h.service.start();
    await h.service.runNow('mon-1');
    const file = join(t.store.deviceDir('mon-1'), 'baseline.json');
    const b = JSON.parse(readFileSync(file, 'utf8')) as { manifestSha256: string };
    writeFileSync(file, JSON.stringify({ ...b, manifestSha256: 'f'.repeat(64) }));
    writeFileSync(conf, 'v=2\n');
    await h.service.runNow('mon-1');
    const drift = h.events.find((e) => e.kind === 'config.drift')!;
    expect(drift.data).toMatchObject({ version: 2, baseline: 1 });
    expect(drift.data?.error).toMatch(/approved baseline \(version 1\) cannot be read: .*not the manifest that was approved as mon-1's baseline/);
    expect(drift.data?.registers ?? drift.data?.lines).toBeUndefined();
  });
});
