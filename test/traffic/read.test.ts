// Reading the flow log back (agent/traffic/read.ts): what the real writer (openFlowLog, with its
// rotation) wrote comes back record for record, oldest file first; lines that are not flow
// records are counted and skipped; a rotation while reading, or while the files are being opened
// (the real writer rotating in a process of its own), loses and repeats nothing.
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, linkSync, mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../agent/traffic/flows.js';
import { record } from './fixtures/record.js';
import { openFlowLog } from '../../agent/traffic/log.js';
import { flowLogFiles, readFlowLog, type FlowLine } from '../../agent/traffic/read.js';

const dirs: string[] = [];
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), 'wg-flowread-'));
  dirs.push(d);
  return d;
};
const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const ROOT = join(import.meta.dirname, '..', '..');
const WRITER = join(import.meta.dirname, 'fixtures', 'flow-writer.ts');


async function readAll(dir: string): Promise<{ flows: FlowLine[]; stats: Awaited<ReturnType<typeof readFlowLog>> }> {
  const flows: FlowLine[] = [];
  const stats = await readFlowLog(dir, (f) => flows.push(f));
  return { flows, stats };
}

describe('reading the flow log', () => {
  it('reads back what the rotating writer wrote, oldest file first, every field', async () => {
    const dir = tmp();
    const log = openFlowLog({ path: join(dir, 'flows.ndjson'), maxBytes: 4096, files: 12 });
    const n = 80; // about 470 bytes a line: some 10 files
    for (let i = 0; i < n; i++) log.write(record(i));
    log.close();
    expect(log.file.rotations).toBeGreaterThan(5);
    const { flows, stats } = await readAll(dir);
    expect(stats).toEqual({ files: flowLogFiles(dir), lines: n, records: n, bad: 0, other: 0 });
    expect(stats.files).toHaveLength(log.file.rotations + 1);
    expect(flows).toEqual(Array.from({ length: n }, (_, i) => ({ kind: 'flow', ...record(i) })));
  });

  it('orders rotated files by number, not by name, and ignores other files', () => {
    const dir = tmp();
    for (const name of ['flows.ndjson', 'flows.ndjson.1', 'flows.ndjson.2', 'flows.ndjson.10', 'flows.ndjson.0', 'flows.ndjson.x', 'other.ndjson', '.flows.ndjson.1.tmp']) writeFileSync(join(dir, name), '');
    expect(flowLogFiles(dir).map((p) => p.slice(dir.length + 1))).toEqual(['flows.ndjson.10', 'flows.ndjson.2', 'flows.ndjson.1', 'flows.ndjson']);
    expect(flowLogFiles(join(dir, 'absent'))).toEqual([]);
  });

  it('skips and counts lines that are not flow records; other kinds apart', async () => {
    const dir = tmp();
    const good = JSON.stringify({ kind: 'flow', ...record(1) });
    const without = (field: keyof FlowRecord) => {
      const r: Partial<FlowRecord> = { ...record(2) };
      delete r[field];
      return JSON.stringify({ kind: 'flow', ...r });
    };
    const bad = (over: Record<string, unknown>) => JSON.stringify({ ...JSON.parse(good), ...over });
    writeFileSync(
      join(dir, 'flows.ndjson'),
      [
        good,
        '',
        'not json',
        good.slice(0, 40), // torn by a power cut
        without('device'),
        without('dport'),
        without('start'),
        bad({ peer: 'pacs' }), // not an address
        bad({ verdict: 'maybe' }),
        bad({ direction: 'sideways' }),
        bad({ dport: 70000 }),
        bad({ time: 'yesterday' }),
        bad({ start: 'soon' }),
        bad({ packets: -1 }),
        JSON.stringify({ kind: 'event', name: 'device-lost' }),
        bad({ kind: 'denied' }), // a whole record, of another kind
        JSON.stringify({ ...JSON.parse(good), extra: { future: true } }), // a field added later: fine
        '[1,2]',
        '42',
        'null',
      ].join('\n'),
    );
    const { flows, stats } = await readAll(dir);
    expect(stats).toEqual({ files: [join(dir, 'flows.ndjson')], lines: 19, records: 2, bad: 15, other: 2 });
    expect(flows.map((f) => [f.sport, f.extra])).toEqual([[40001, undefined], [40001, { future: true }]]);
  });

  it('reads a file under two names once, by the newer name', async () => {
    const dir = tmp();
    writeFileSync(join(dir, 'flows.ndjson'), [record(1), record(2)].map((r) => `${JSON.stringify({ kind: 'flow', ...r })}\n`).join(''));
    linkSync(join(dir, 'flows.ndjson'), join(dir, 'flows.ndjson.1'));
    const { flows, stats } = await readAll(dir);
    expect(stats).toMatchObject({ files: [join(dir, 'flows.ndjson')], records: 2 });
    expect(flows.map((f) => f.sport)).toEqual([40001, 40002]);
  });

  it('a missing flow directory is an empty log, not an error', async () => {
    expect(await readAll(join(tmp(), 'nowhere'))).toEqual({ flows: [], stats: { files: [], lines: 0, records: 0, bad: 0, other: 0 } });
  });

  it('closes every file when the callback throws', async () => {
    const dir = tmp();
    const log = openFlowLog({ path: join(dir, 'flows.ndjson'), maxBytes: 1024, files: 6 });
    for (let i = 0; i < 10; i++) log.write(record(i));
    log.close();
    expect(flowLogFiles(dir).length).toBeGreaterThan(3);
    const open = () => readdirSync('/proc/self/fd').length;
    const before = open();
    await expect(readFlowLog(dir, () => {
      throw new Error('stop');
    })).rejects.toThrow('stop');
    expect(open()).toBe(before);
  });

  it('a rotation while reading neither loses nor repeats a line', async () => {
    const dir = tmp();
    const path = join(dir, 'flows.ndjson');
    const lines = (from: number, to: number) => Array.from({ length: to - from }, (_, k) => `${JSON.stringify({ kind: 'flow', ...record(from + k) })}\n`).join('');
    writeFileSync(`${path}.2`, lines(0, 50));
    writeFileSync(`${path}.1`, lines(50, 100));
    writeFileSync(path, lines(100, 150));
    const seen: number[] = [];
    let rotated = false;
    await readFlowLog(dir, (f) => {
      seen.push(Number(f.sport) - 40000);
      if (rotated) return;
      // The agent rotates once the reader has begun: the oldest goes, each file moves up one.
      rotated = true;
      rmSync(`${path}.2`);
      renameSync(`${path}.1`, `${path}.2`);
      renameSync(path, `${path}.1`);
      appendFileSync(path, lines(150, 160));
    });
    expect(readdirSync(dir).sort()).toEqual(['flows.ndjson', 'flows.ndjson.1', 'flows.ndjson.2']);
    expect(seen).toEqual(Array.from({ length: 150 }, (_, i) => i));
  });

  it('rotations by a running writer while the files are opened: every read holds each record once, from the first', async () => {
    // A line about every millisecond, some 8 to a file of 3000 bytes: a rotation every ~9 ms, while
    // listing, opening and checking the ~190 files the log grows to takes a good part of that, so
    // many reads begin across a rotation. 300 files: more than the run makes, so nothing is
    // dropped and every read must start at record 0. Opening the files in listing order without
    // the check misses a file; newest first without it misses the oldest (both fail here).
    const dir = tmp();
    const path = join(dir, 'flows.ndjson');
    const count = 1500;
    const writer = spawn(process.execPath, ['--import', 'tsx', WRITER, path, '3000', '300', String(count), '1'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    children.push(writer);
    let stderr = '';
    writer.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((r) => writer.once('exit', (code) => r(code)));
    let done = false;
    void exited.then(() => (done = true));

    const check = async (): Promise<number> => {
      const seqs: number[] = [];
      const stats = await readFlowLog(dir, (f) => seqs.push(Number(f.conntrackId)));
      // A line the writer is writing at that moment may be read in part: the last line, at most.
      expect(stats.bad).toBeLessThanOrEqual(1);
      const expected = Array.from({ length: seqs.length }, (_, i) => i);
      if (seqs.some((s, i) => s !== i)) expect(seqs, `read ${stats.files.length} files`).toEqual(expected);
      return seqs.length;
    };
    let reads = 0;
    let rotatedReads = 0;
    let last = 0;
    // The writer takes a moment to start (tsx).
    while (!done && flowLogFiles(dir).length === 0) await new Promise((r) => setTimeout(r, 10));
    while (!done) {
      // A read of little I/O may not give the writer's exit event a turn: give it one.
      await new Promise((r) => setImmediate(r));
      const files = flowLogFiles(dir).length;
      const n = await check();
      expect(n).toBeGreaterThanOrEqual(last);
      last = n;
      reads++;
      if (files > 1) rotatedReads++;
    }
    expect(await exited, stderr).toBe(0);
    expect(rotatedReads, `${reads} reads`).toBeGreaterThan(10);
    expect(await check()).toBe(count);
    expect(flowLogFiles(dir).length).toBeGreaterThan(50);
  }, 60000);
});
