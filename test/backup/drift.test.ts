// Drift summaries: register by register for Modbus (named, capped at 20 with a count), a line
// diff for text with secret-looking lines withheld, sizes and hashes for binary.
import { describe, expect, it } from 'vitest';
import { compareConfigs, MAX_CHANGES } from '../../agent/backup/drift.js';

const doc = (holding: number[], coils: boolean[] = [true, false]) =>
  Buffer.from(
    `${JSON.stringify({
      ranges: [
        { name: 'setpoints', kind: 'holding', unit: 1, address: 100, values: holding },
        { name: 'alarms', kind: 'coil', unit: 1, address: 0, values: coils },
      ],
    })}\n`,
  );

describe('compareConfigs', () => {
  it('names each changed register: range, unit, kind, address, old -> new', () => {
    const d = compareConfigs('modbus', doc([1, 2, 3]), doc([1, 20, 3], [true, true]));
    expect(d.changed).toBe(true);
    expect(d.compared).toBe('modbus');
    expect(d.total).toBe(2);
    expect(d.summary).toEqual(['setpoints: unit 1 holding 101: 2 -> 20', 'alarms: unit 1 coil 1: false -> true']);
    expect(d.registers?.[0]).toEqual({ range: 'setpoints', kind: 'holding', unit: 1, address: 101, old: 2, new: 20 });
  });

  it('lists at most 20 registers and counts the rest', () => {
    const before = Array.from({ length: 50 }, (_, i) => i);
    const d = compareConfigs('modbus', doc(before), doc(before.map((v) => v + 1)));
    expect(d.total).toBe(50);
    expect(d.registers).toHaveLength(MAX_CHANGES);
    expect(d.summary).toHaveLength(MAX_CHANGES + 1);
    expect(d.summary.at(-1)).toBe('... and 30 more');
  });

  it('says which ranges appeared or went', () => {
    const one = Buffer.from(JSON.stringify({ ranges: [{ name: 'a', kind: 'holding', unit: 1, address: 0, values: [1] }] }));
    const other = Buffer.from(JSON.stringify({ ranges: [{ name: 'b', kind: 'holding', unit: 1, address: 0, values: [1] }] }));
    const d = compareConfigs('modbus', one, other);
    expect(d.ranges).toEqual({ added: ['b'], removed: ['a'] });
    expect(d.summary).toEqual(['range b: new', 'range a: gone']);
  });

  it('gives a line diff for text with line numbers, and withholds lines that look like secrets', () => {
    const before = Buffer.from('mode=auto\nrate=10\nadmin_password=hunter2\nend\n');
    const after = Buffer.from('mode=auto\nrate=12\nadmin_password=letmein\nend\nextra=1\n');
    const d = compareConfigs('text', before, after);
    expect(d.compared).toBe('text');
    expect(d.summary).toEqual([
      '- 2: rate=10',
      '- 3: (not shown: looks like a secret)',
      '+ 2: rate=12',
      '+ 3: (not shown: looks like a secret)',
      '+ 5: extra=1',
    ]);
    expect(JSON.stringify(d)).not.toMatch(/hunter2|letmein/);
  });

  it('gives sizes and hashes for binary, and for formats that differ', () => {
    const d = compareConfigs('binary', Buffer.from([0, 1, 2]), Buffer.from([0, 1, 2, 3]));
    expect(d.compared).toBe('binary');
    expect(d.summary[0]).toMatch(/^size 3 -> 4 bytes, sha256 [0-9a-f]{16} -> [0-9a-f]{16}$/);
    expect(compareConfigs('modbus', Buffer.from('x\n'), doc([1]), 'text').compared).toBe('binary');
  });

  it('finds no drift in equal bytes', () => {
    expect(compareConfigs('text', Buffer.from('a\n'), Buffer.from('a\n'))).toMatchObject({ changed: false, total: 0, summary: [] });
  });
});
