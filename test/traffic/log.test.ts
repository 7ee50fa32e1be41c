// The flow log: NDJSON through pino, rotated by size within its disk budget.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../agent/traffic/flows.js';
import { openFlowLog, RotatingFile } from '../../agent/traffic/log.js';

const dirs: string[] = [];
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), 'wg-flowlog-'));
  dirs.push(d);
  return d;
};
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const record = (i: number): FlowRecord => ({
  time: new Date(1_800_000_000_000 + i).toISOString(),
  start: null,
  device: 'ct-01',
  peer: '10.10.1.10',
  peerGroup: 'pacs',
  direction: 'inbound',
  proto: 'tcp',
  sport: 40000 + (i % 20000),
  dport: 104,
  packets: 10,
  bytes: 700,
  toDevice: { packets: 6, bytes: 400 },
  fromDevice: { packets: 4, bytes: 300 },
  accounted: true,
  durationMs: i,
  app: 'DICOM',
  verdict: 'allowed',
  entry: 'ct-01/allow[0]',
});

describe('flow log', () => {
  it('writes one JSON object per line: kind and the record, no other pino fields', () => {
    const dir = tmp();
    const log = openFlowLog({ path: join(dir, 'flows.ndjson'), maxBytes: 1 << 20, files: 3 });
    log.write(record(1));
    log.write(record(2));
    log.close();
    const lines = readFileSync(join(dir, 'flows.ndjson'), 'utf8').trim().split('\n');
    expect(lines.map((l) => JSON.parse(l) as unknown)).toEqual([{ kind: 'flow', ...record(1) }, { kind: 'flow', ...record(2) }]);
  });

  it('rotation keeps the disk budget: at most `files` files of at most maxBytes, newest kept', () => {
    const dir = tmp();
    const path = join(dir, 'flows.ndjson');
    const maxBytes = 4096;
    const files = 3;
    const log = openFlowLog({ path, maxBytes, files });
    const n = 2000; // about 400 bytes each: some 200 files' worth
    for (let i = 0; i < n; i++) log.write(record(i));
    log.close();
    const names = readdirSync(dir).sort();
    expect(names).toEqual(['flows.ndjson', 'flows.ndjson.1', 'flows.ndjson.2']);
    const total = names.reduce((s, f) => s + statSync(join(dir, f)).size, 0);
    expect(total).toBeLessThanOrEqual(files * maxBytes);
    for (const f of names) expect(statSync(join(dir, f)).size).toBeLessThanOrEqual(maxBytes);
    expect(log.file.rotations).toBeGreaterThan(100);
    // Every line whole; the newest record last in the current file; the files in order.
    const all = ['flows.ndjson.2', 'flows.ndjson.1', 'flows.ndjson'].flatMap((f) => readFileSync(join(dir, f), 'utf8').trim().split('\n'));
    const seq = all.map((l) => (JSON.parse(l) as FlowRecord).durationMs as number);
    expect(seq[seq.length - 1]).toBe(n - 1);
    expect(seq).toEqual([...seq].sort((a, b) => a - b));
    expect(seq.length).toBeGreaterThan(files - 1);
  });

  it('appends to an existing file and counts toward its size; drops a line no file can hold', () => {
    const dir = tmp();
    const path = join(dir, 'flows.ndjson');
    writeFileSync(path, 'x'.repeat(90) + '\n');
    const f = new RotatingFile({ path, maxBytes: 100, files: 2 });
    f.write('y'.repeat(20) + '\n');
    expect(existsSync(`${path}.1`)).toBe(true);
    expect(readFileSync(path, 'utf8')).toBe('y'.repeat(20) + '\n');
    f.write('z'.repeat(200));
    expect(f.dropped).toBe(1);
    f.close();
  });

  it('files: 1 keeps only the current file', () => {
    const dir = tmp();
    const f = new RotatingFile({ path: join(dir, 'f'), maxBytes: 10, files: 1 });
    for (let i = 0; i < 5; i++) f.write('12345678\n');
    f.close();
    expect(readdirSync(dir)).toEqual(['f']);
    expect(readFileSync(join(dir, 'f'), 'utf8')).toBe('12345678\n');
  });

  it('batch: the lines of one turn go out in one write before the next turn, rotation as exact, close flushes', async () => {
    const dir = tmp();
    const path = join(dir, 'f');
    const f = new RotatingFile({ path, maxBytes: 30, files: 3, batch: true });
    f.write('a'.repeat(9) + '\n');
    f.write('b'.repeat(9) + '\n');
    expect(readFileSync(path, 'utf8')).toBe('');
    await new Promise((r) => setImmediate(r));
    expect(readFileSync(path, 'utf8')).toBe(`${'a'.repeat(9)}\n${'b'.repeat(9)}\n`);
    // 20 + 10 fits, the next 10 does not: what was gathered is written, then the file rotates.
    f.write('c'.repeat(9) + '\n');
    f.write('d'.repeat(9) + '\n');
    expect(readFileSync(`${path}.1`, 'utf8')).toBe(`${'a'.repeat(9)}\n${'b'.repeat(9)}\n${'c'.repeat(9)}\n`);
    f.write('e'.repeat(9) + '\n');
    f.close();
    expect(readFileSync(path, 'utf8')).toBe(`${'d'.repeat(9)}\n${'e'.repeat(9)}\n`);
    for (const name of readdirSync(dir)) expect(statSync(join(dir, name)).size).toBeLessThanOrEqual(30);
  });

  it('rejects a budget it cannot keep', () => {
    const dir = tmp();
    expect(() => new RotatingFile({ path: join(dir, 'f'), maxBytes: 0, files: 2 })).toThrow(/maxBytes/);
    expect(() => new RotatingFile({ path: join(dir, 'f'), maxBytes: 10, files: 0 })).toThrow(/files/);
  });
});
