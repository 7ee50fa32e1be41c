// `wardgate mqtt schemas [--out-dir DIR]`: the JSON Schema of every MQTT payload.
import { join } from 'node:path';
import { jsonSchemaOf, PAYLOADS } from '../mqtt/topics.js';
import { writeFileAtomic } from '../util/fsx.js';
import { UsageError } from './context.js';
import type { Io } from './io.js';

export function mqttCommand(sub: string | undefined, opts: { outDir?: string }, io: Io): number {
  if (sub !== 'schemas') throw new UsageError(`unknown mqtt command "${sub ?? ''}": use schemas`);
  const names = Object.keys(PAYLOADS) as (keyof typeof PAYLOADS)[];
  if (opts.outDir === undefined) {
    io.out(JSON.stringify(Object.fromEntries(names.map((n) => [n, jsonSchemaOf(n)])), null, 2));
    return 0;
  }
  for (const n of names) writeFileAtomic(join(opts.outDir, `${n}.schema.json`), `${JSON.stringify(jsonSchemaOf(n), null, 2)}\n`);
  io.out(`wrote ${names.length} schemas to ${opts.outDir}`);
  return 0;
}
