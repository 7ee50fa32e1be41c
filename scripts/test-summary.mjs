#!/usr/bin/env node
// Prints vitest's JSON report as one plain closing line, "vitest: N passed, N failed, N skipped",
// and exits non-zero when anything failed or nothing ran.
import { readFileSync } from 'node:fs';

const file = process.argv[2] ?? '.vitest-results.json';
const r = JSON.parse(readFileSync(file, 'utf8'));
const skipped = (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
process.stdout.write(`vitest: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped\n`);
process.exit(r.numFailedTests > 0 || r.numPassedTests === 0 || r.success === false ? 1 : 0);
