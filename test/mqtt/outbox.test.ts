// The persistent outbox on a real file system: order and acks across restarts, the bound and
// its drop policy, compaction, torn tails cut off, and a child process killed with -9 mid-push.
import { spawn } from 'node:child_process';
import { appendFileSync, closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Outbox, OutboxError, PRIORITIES, type OutboxOptions, type Priority } from '../../agent/mqtt/outbox.js';
import { LockError } from '../../agent/util/fsx.js';

const ROOT = join(import.meta.dirname, '..', '..');
const CHILD = join(import.meta.dirname, 'fixtures', 'outbox-child.ts');
const BIG: OutboxOptions = { maxBytes: 16 * 1024 * 1024, maxMessages: 10000, fsync: 'always' };

let dir = '';
const open: Outbox[] = [];
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'wg-outbox-'));
});
afterEach(() => {
  for (const b of open.splice(0)) b.close();
  rmSync(dir, { recursive: true, force: true });
});

function box(opts: Partial<OutboxOptions> = {}): Outbox {
  const b = Outbox.open(dir, { ...BIG, ...opts });
  open.push(b);
  return b;
}

function reopen(b: Outbox, opts: Partial<OutboxOptions> = {}): Outbox {
  b.close();
  return box(opts);
}

const msg = (name: string, priority: Priority = 'normal', payload = `{"m":"${name}"}`) => ({ topic: `t/${name}`, payload, retain: false, priority });
const names = (b: Outbox) => b.peek(1_000_000).map((m) => m.topic.slice(2));
const journal = () => join(dir, 'outbox.log');

describe('outbox: order and acks', () => {
  it('replays un-acked messages in order after a restart, never acked ones, and keeps numbering', () => {
    let b = box();
    const seqs = ['a', 'b', 'c', 'd', 'e'].map((n, i) => b.push({ ...msg(n), retain: i === 1, payload: `{"n":"${n}","ü":"✓"}` }));
    expect(seqs).toEqual([1, 2, 3, 4, 5]);
    b.ack(1);
    b.ack(3); // out of order: only that one goes
    b.ack(3); // twice: nothing more
    b.ack(99); // unknown: nothing
    expect(names(b)).toEqual(['b', 'd', 'e']);

    b = reopen(b);
    expect(b.recovered.tornBytes).toBe(0);
    const replayed = b.peek(10);
    expect(replayed.map((m) => m.seq)).toEqual([2, 4, 5]);
    expect(replayed[0]).toEqual({ seq: 2, topic: 't/b', payload: '{"n":"b","ü":"✓"}', retain: true, priority: 'normal' });
    expect(b.push(msg('f'))).toBe(6);
    expect(b.stats()).toMatchObject({ depth: 4, dropped: 0 });

    b = reopen(b);
    expect(names(b)).toEqual(['b', 'd', 'e', 'f']);
    for (const m of b.peek(10)) b.ack(m.seq);
    b = reopen(b);
    expect(b.stats()).toMatchObject({ depth: 0, bytes: 0 });
    expect(b.push(msg('g'))).toBe(7); // numbering survives an empty queue
  });

  it('peek leaves messages queued and returns at most max, oldest first, across priorities', () => {
    const b = box();
    b.push(msg('1', 'low'));
    b.push(msg('2', 'high'));
    b.push(msg('3', 'normal'));
    expect(b.peek(2).map((m) => [m.topic, m.priority])).toEqual([
      ['t/1', 'low'],
      ['t/2', 'high'],
    ]);
    expect(b.peek(0)).toEqual([]);
    expect(b.stats().depth).toBe(3);
  });

  it('is owned by one process at a time, and refuses use after close', () => {
    const b = box();
    expect(() => Outbox.open(dir, BIG)).toThrow(LockError);
    b.close();
    expect(() => b.push(msg('x'))).toThrow(expect.objectContaining({ code: 'E_OUTBOX_CLOSED' }));
    box(); // the lock went with close
  });

  it('checks its options and messages', () => {
    expect(() => Outbox.open(dir, { ...BIG, maxMessages: 0 })).toThrow(/maxMessages must be an integer >= 1/);
    expect(() => Outbox.open(dir, { ...BIG, fsync: 'sometimes' as 'always' })).toThrow(OutboxError);
    const b = box({ maxBytes: 4096 });
    expect(() => b.push(msg('big', 'high', 'x'.repeat(5000)))).toThrow(expect.objectContaining({ code: 'E_OUTBOX_TOO_LARGE' }));
    expect(() => b.push(msg('p', 'urgent' as Priority))).toThrow(expect.objectContaining({ code: 'E_OUTBOX_MESSAGE' }));
    expect(b.stats().depth).toBe(0);
  });
});

describe('outbox: the bound and the drop policy', () => {
  it('drops the oldest low first, then normal, refuses a newcomer outranked by all, and keeps the counts', () => {
    let b = box({ maxMessages: 5 });
    b.push(msg('L1', 'low'));
    b.push(msg('N2', 'normal'));
    b.push(msg('H3', 'high'));
    b.push(msg('L4', 'low'));
    b.push(msg('N5', 'normal'));
    b.push(msg('H6', 'high')); // full: the oldest low goes
    expect(names(b)).toEqual(['N2', 'H3', 'L4', 'N5', 'H6']);
    b.push(msg('N7', 'normal')); // the other low
    expect(names(b)).toEqual(['N2', 'H3', 'N5', 'H6', 'N7']);
    expect(b.push(msg('L8', 'low'))).toBeUndefined(); // no low left to make room: the newcomer goes
    expect(names(b)).toEqual(['N2', 'H3', 'N5', 'H6', 'N7']);
    b.push(msg('H9', 'high')); // the oldest normal
    b.push(msg('N10', 'normal')); // normal still drops normal, never high
    expect(names(b)).toEqual(['H3', 'H6', 'N7', 'H9', 'N10']);
    expect(b.stats()).toMatchObject({ depth: 5, dropped: 5, droppedByPriority: { low: 3, normal: 2, high: 0 } });

    b = reopen(b, { maxMessages: 5 });
    expect(names(b)).toEqual(['H3', 'H6', 'N7', 'H9', 'N10']);
    expect(b.stats()).toMatchObject({ dropped: 5, droppedByPriority: { low: 3, normal: 2, high: 0 } });
  });

  it('drops the oldest high only when only high remain', () => {
    const b = box({ maxMessages: 3 });
    for (const n of ['H1', 'H2', 'H3']) b.push(msg(n, 'high'));
    expect(b.push(msg('N4', 'normal'))).toBeUndefined();
    expect(b.push(msg('L5', 'low'))).toBeUndefined();
    b.push(msg('H6', 'high'));
    expect(names(b)).toEqual(['H2', 'H3', 'H6']);
    expect(b.stats().droppedByPriority).toEqual({ low: 1, normal: 1, high: 1 });
  });

  it('bounds bytes the same way, dropping as many as it takes', () => {
    const payload = 'x'.repeat(1000); // about 1030 bytes a record
    const b = box({ maxBytes: 4096, maxMessages: 1000 });
    b.push(msg('L1', 'low', payload));
    b.push(msg('N2', 'normal', payload));
    b.push(msg('L3', 'low', payload));
    expect(b.stats().bytes).toBeLessThanOrEqual(4096);
    b.push(msg('H4', 'high', 'y'.repeat(2500))); // needs two records' room: both lows go
    expect(names(b)).toEqual(['N2', 'H4']);
    expect(b.stats().bytes).toBeLessThanOrEqual(4096);
    expect(b.stats().droppedByPriority).toEqual({ low: 2, normal: 0, high: 0 });
  });

  it('drops down to smaller bounds at open', () => {
    let b = box();
    for (const [i, p] of PRIORITIES.entries()) for (let k = 0; k < 4; k++) b.push(msg(`${p}${k}`, PRIORITIES[(i + k) % 3]));
    b = reopen(b, { maxMessages: 4 });
    expect(b.stats()).toMatchObject({ depth: 4, dropped: 8, droppedByPriority: { low: 4, normal: 4, high: 0 } });
    expect(b.peek(10).every((m) => m.priority === 'high')).toBe(true);
    b = reopen(b, { maxMessages: 4 });
    expect(b.stats()).toMatchObject({ depth: 4, dropped: 8 });
  });
});

describe('outbox: compaction', () => {
  it('rewrites the journal once acked records outweigh live ones, with the same content and counts', () => {
    let b = box({ maxMessages: 100, compactAfterBytes: 8 * 1024 });
    const payload = 'p'.repeat(200);
    let peak = 0;
    for (let i = 0; i < 500; i++) {
      const seq = b.push(msg(`m${i}`, i % 10 === 0 ? 'low' : 'normal', payload));
      if (seq !== undefined && i % 5 !== 0) b.ack(seq);
      peak = Math.max(peak, b.stats().fileBytes);
    }
    const s = b.stats();
    expect(s.dropped).toBeGreaterThan(0); // the low ones, once 100 were waiting
    // Never much more than twice the live bytes plus the slack, although 500 records were written.
    expect(peak).toBeLessThan(2 * s.bytes + 8 * 1024 + 2 * 300);
    expect(statSync(journal()).size).toBe(s.fileBytes);
    const before = b.peek(1000);

    writeFileSync(join(dir, 'outbox.log.tmp'), 'a rewrite cut short by a crash');
    b = reopen(b, { maxMessages: 100, compactAfterBytes: 8 * 1024 });
    expect(existsSync(join(dir, 'outbox.log.tmp'))).toBe(false);
    expect(b.peek(1000)).toEqual(before);
    expect(b.stats()).toMatchObject({ depth: s.depth, bytes: s.bytes, dropped: s.dropped, droppedByPriority: s.droppedByPriority });
    expect(b.push(msg('next'))).toBe(501);
  });

  it('leaves a tiny journal once everything is acked', () => {
    let b = box({ compactAfterBytes: 1024 });
    for (let i = 0; i < 50; i++) b.ack(b.push(msg(`m${i}`, 'normal', 'z'.repeat(100))) ?? 0);
    expect(b.stats().fileBytes).toBeLessThan(1024 + 200);
    b = reopen(b);
    expect(b.stats()).toMatchObject({ depth: 0 });
    expect(b.push(msg('again'))).toBe(51);
  });
});

describe('outbox: torn and corrupt tails', () => {
  function threeQueued(): void {
    const b = box();
    b.push(msg('one'));
    b.push(msg('two'));
    b.push(msg('three', 'high', '{"last":true}'));
    b.close();
    open.splice(open.indexOf(b), 1);
  }

  it('skips a last record cut short, and appends cleanly after it', () => {
    threeQueued();
    const size = statSync(journal()).size;
    truncateSync(journal(), size - 3);
    let b = box();
    expect(names(b)).toEqual(['one', 'two']);
    expect(b.recovered.tornBytes).toBeGreaterThan(0);
    expect(statSync(journal()).size).toBeLessThan(size - 3); // cut off, so new records follow good ones
    expect(b.push(msg('four'))).toBe(3);
    b = reopen(b);
    expect(names(b)).toEqual(['one', 'two', 'four']);
    expect(b.recovered.tornBytes).toBe(0);
  });

  it('skips garbage, a zero-filled tail and a record whose CRC does not match', () => {
    threeQueued();
    const garbage = Buffer.from('not a record at all, just bytes after a crash');
    appendFileSync(journal(), garbage);
    let b = box();
    expect(names(b)).toEqual(['one', 'two', 'three']);
    expect(b.recovered.tornBytes).toBe(garbage.length);
    b.close();

    appendFileSync(journal(), Buffer.alloc(4096)); // ext4 can leave a zeroed block after power loss
    b = box();
    expect(names(b)).toEqual(['one', 'two', 'three']);
    expect(b.recovered.tornBytes).toBe(4096);
    b.close();

    const bytes = readFileSync(journal());
    bytes.writeUInt8(bytes.readUInt8(bytes.length - 2) ^ 0x20, bytes.length - 2); // inside the last payload: the length is right, the CRC is not
    writeFileSync(journal(), bytes);
    b = box();
    expect(names(b)).toEqual(['one', 'two']);
    expect(b.peek(5).map((m) => m.payload)).toEqual(['{"m":"one"}', '{"m":"two"}']);
  });
});

interface ChildReport {
  pushed: Map<number, number>; // seq -> i
  acked: Set<number>;
  lastSeq: number;
  lastI: number;
  ready: number;
}

/**
 * Runs the child until it has reported `target` pushes, then kills it with SIGKILL mid-loop.
 * The child reports into a file, not a pipe: a pipe that fills up would stall or fail it.
 */
async function pushUntilKilled(fsync: 'always' | 'batch', target: number, round: number): Promise<ChildReport> {
  const reportPath = join(dir, `report-${round}.txt`);
  const reportFd = openSync(reportPath, 'w');
  const child = spawn(process.execPath, ['--import', 'tsx', CHILD, join(dir, 'box'), fsync], { cwd: ROOT, stdio: ['ignore', reportFd, 'pipe'] });
  closeSync(reportFd);
  let err = '';
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
  const deadline = Date.now() + 30000;
  while (child.exitCode === null && child.signalCode === null && Date.now() < deadline) {
    // ~60 bytes a push: cheap to poll by size, then count the lines once it looks near.
    if (statSync(reportPath).size > target * 12 && readFileSync(reportPath, 'utf8').split('\np ').length > target) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  await new Promise((r) => setTimeout(r, Math.random() * 20)); // land at a random point of the loop
  child.kill('SIGKILL');
  const signal = await exited;
  expect(signal, `the child died by itself: ${err}`).toBe('SIGKILL');
  const report: ChildReport = { pushed: new Map(), acked: new Set(), lastSeq: 0, lastI: 0, ready: -1 };
  const lines = readFileSync(reportPath, 'utf8').split('\n');
  lines.pop(); // an unterminated fragment is no report
  for (const line of lines) {
    const [kind, a, b] = line.split(' ');
    if (kind === 'ready') report.ready = Number(a);
    else if (kind === 'p') {
      report.pushed.set(Number(a), Number(b));
      report.lastSeq = Number(a);
      report.lastI = Number(b);
    } else if (kind === 'a') report.acked.add(Number(a));
  }
  expect(report.pushed.size).toBeGreaterThanOrEqual(target);
  return report;
}

// As in the fixture.
const childPayload = (i: number) => JSON.stringify({ i, pad: 'x'.repeat(i % 97) });
const CHILD_OPTIONS: OutboxOptions = { maxBytes: 64 * 1024 * 1024, maxMessages: 1_000_000, fsync: 'always', compactAfterBytes: 16 * 1024 };

describe('outbox: kill -9', () => {
  for (const fsync of ['always', 'batch'] as const) {
    it(`keeps every reported push, in order, untorn, and no acked one (fsync ${fsync})`, async () => {
      let expectedDepth = 0;
      let previous = new Map<number, number>(); // queued before this round: seq -> i
      for (let round = 0; round < 2; round++) {
        const r = await pushUntilKilled(fsync, 1500 + round * 700, round);
        expect(r.ready).toBe(expectedDepth);
        const sizeAsLeft = statSync(join(dir, 'box', 'outbox.log')).size;
        const b = Outbox.open(join(dir, 'box'), CHILD_OPTIONS);
        open.push(b);
        const replayed = b.peek(1_000_000);
        const seqs = replayed.map((m) => m.seq);
        expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
        expect(new Set(seqs).size).toBe(seqs.length);
        for (const m of replayed) {
          // One push may have landed after the last report; any other seq was reported.
          const i = r.pushed.get(m.seq) ?? previous.get(m.seq) ?? (m.seq === r.lastSeq + 1 ? r.lastI + 1 : undefined);
          expect(i, `seq ${m.seq} was never pushed`).toBeDefined();
          expect(m).toEqual({ seq: m.seq, topic: `test/n/${i}`, payload: childPayload(i ?? 0), retain: (i ?? 0) % 2 === 0, priority: PRIORITIES[(i ?? 0) % 3] });
          expect(r.acked.has(m.seq), `seq ${m.seq} was acked`).toBe(false);
        }
        const present = new Set(seqs);
        for (const [seq, i] of r.pushed) {
          if (r.acked.has(seq)) continue;
          // The last one may have been acked without the child living to say so.
          if (seq === r.lastSeq && i % 3 !== 0) continue;
          expect(present.has(seq), `seq ${seq} was reported pushed and is missing`).toBe(true);
        }
        for (const seq of previous.keys()) expect(present.has(seq)).toBe(true);
        // The child compacted as it went (two in three messages acked): never more dead bytes
        // than live ones (or 16 KiB), give or take the records written just before the kill.
        const { bytes } = b.stats();
        expect(sizeAsLeft - b.recovered.tornBytes).toBeLessThanOrEqual(bytes + Math.max(bytes, 16 * 1024) + 512);
        previous = new Map(replayed.map((m) => [m.seq, Number((JSON.parse(m.payload) as { i: number }).i)]));
        expectedDepth = replayed.length;
        b.close();
        open.splice(open.indexOf(b), 1);
      }
    });
  }
});
