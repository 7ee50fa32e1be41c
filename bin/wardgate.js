#!/usr/bin/env -S node --max-semi-space-size=1
// The wardgate command. Runs the compiled agent (npm run build writes dist/).
// A 1 MiB semi-space keeps the agent's peak RSS under 80 MB on a 1 GB board (bench/README.md,
// rss); V8 takes the flag only on the command line, hence the shebang.
import { existsSync } from 'node:fs';

const entry = new URL('../dist/agent/cli/main.js', import.meta.url);
if (!existsSync(entry)) {
  process.stderr.write('wardgate: dist/ is missing; run "npm run build" first\n');
  process.exit(1);
}
const { main } = await import(entry.href);
process.exitCode = await main(process.argv.slice(2));
