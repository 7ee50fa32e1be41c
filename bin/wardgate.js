#!/usr/bin/env node
// The wardgate command. Runs the compiled agent (npm run build writes dist/).
import { existsSync } from 'node:fs';

const entry = new URL('../dist/agent/cli/main.js', import.meta.url);
if (!existsSync(entry)) {
  process.stderr.write('wardgate: dist/ is missing; run "npm run build" first\n');
  process.exit(1);
}
const { main } = await import(entry.href);
process.exitCode = await main(process.argv.slice(2));
