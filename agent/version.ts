import { readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The package's root and version: package.json sits above agent/ (sources) or dist/agent/ (built). */
const pkg = (() => {
  for (const rel of ['../package.json', '../../package.json']) {
    const url = new URL(rel, import.meta.url);
    try {
      const json = JSON.parse(readFileSync(url, 'utf8')) as { name?: string; version?: string };
      if (json.name === 'wardgate' && json.version) return { root: dirname(fileURLToPath(url)), version: json.version };
    } catch {
      // try the next location
    }
  }
  throw new Error('wardgate: package.json not found above the agent');
})();

export const VERSION: string = pkg.version;
export const PACKAGE_ROOT: string = pkg.root;
