// A storm of denials cannot write the record of what reached the device out of the log.
import { describe, expect, it } from 'vitest';
import { RecordLimiter } from '../../agent/protocols/records.js';
import type { ProtocolRecord } from '../../agent/protocols/types.js';

describe('RecordLimiter', () => {
  it('keeps every write and summary, caps denials per device, peer and kind, and counts the rest', () => {
    let t = 0;
    const out: (ProtocolRecord & { device: string })[] = [];
    const lim = new RecordLimiter(10, (r) => out.push(r), () => t);
    for (let i = 0; i < 1000; i++) {
      lim.push({ kind: 'modbus.malformed', device: 'plc', peer: '10.10.9.66' });
      if (i % 100 === 0) lim.push({ kind: 'modbus.write', device: 'plc', peer: '10.10.1.10', address: i });
    }
    lim.push({ kind: 'modbus.denied', device: 'plc', peer: '10.10.9.66' });
    lim.push({ kind: 'modbus.session', device: 'plc', peer: '10.10.9.66' });
    expect(out.filter((r) => r.kind === 'modbus.write')).toHaveLength(10);
    expect(out.filter((r) => r.kind === 'modbus.malformed')).toHaveLength(10);
    expect(out.filter((r) => r.kind === 'modbus.denied')).toHaveLength(1);
    expect(out.filter((r) => r.kind === 'modbus.session')).toHaveLength(1);
    t = 60_000;
    lim.tick();
    expect(out.at(-1)).toEqual({ kind: 'records.suppressed', device: 'plc', peer: '10.10.9.66', of: 'modbus.malformed', count: 990, perMinute: 10 });
    // A new minute starts afresh.
    lim.push({ kind: 'modbus.malformed', device: 'plc', peer: '10.10.9.66' });
    expect(out.at(-1)?.kind).toBe('modbus.malformed');
  });
});
