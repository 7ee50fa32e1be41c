// Reading the flow log back (agent/traffic/read.ts): what the real writer (openFlowLog, with its
// rotation) wrote comes back record for record, oldest file first; lines that are not flow
// records are counted and skipped; a rotation while reading loses and repeats nothing.
import { appendFileSync, mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../agent/traffic/flows.js';
import { openFlowLog } from '../../agent/traffic/log.js';
import { flowLogFiles, readFlowLog, type FlowLine } from '../../agent/traffic/read.js';

const dirs: string[] = [];
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), 'wg-flowread-'));
  dirs.push(d);
  return d;
};
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const record = (i: number): FlowRecord => ({
  time: new Date(1_900_000_000_000 + i * 1000).toISOString(),
  start: null,
  device: 'ct-01',
  peer: i % 2 === 0 ? '10.10.1.10' : 'fd00:10::1:10',
  peerGroup: 'pacs',
  direction: 'inbound',
  proto: 'tcp',
  sport: 40000 + i,
  dport: 104,
  packets: 10,
  bytes: 700 + i,
  toDevice: { packets: 6, bytes: 400 },
  fromDevice: { packets: 4, bytes: 300 + i },
  accounted: true,
  durationMs: i,
  app: 'DICOM',
  verdict: 'allowed',
  entry: 'ct-01/allow[0]',
  conntrackId: i,
});

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
    expect(stats).toEqual({ files: log.file.rotations + 1, lines: n, records: n, bad: 0, other: 0 });
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
    writeFileSync(
      join(dir, 'flows.ndjson'),
      [
        good,
        '',
        'not json',
        good.slice(0, 40), // torn by a power cut
        without('device'),
        without('dport'),
        JSON.stringify({ ...JSON.parse(good), peer: 'pacs' }), // not an address
        JSON.stringify({ ...JSON.parse(good), verdict: 'maybe' }),
        JSON.stringify({ ...JSON.parse(good), time: 'yesterday' }),
        JSON.stringify({ kind: 'event', name: 'device-lost' }),
        JSON.stringify({ ...JSON.parse(good), extra: { future: true } }), // a field added later: fine
        '[1,2]',
        'null',
      ].join('\n'),
    );
    const { flows, stats } = await readAll(dir);
    expect(stats).toEqual({ files: 1, lines: 12, records: 2, bad: 9, other: 1 });
    expect(flows.map((f) => [f.sport, f.extra])).toEqual([[40001, undefined], [40001, { future: true }]]);
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
});
