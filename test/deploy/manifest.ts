// What an install left on disk, to compare two runs: every path under the given roots with its
// type, mode, owner, group, and the sha256 of a file or the target of a symbolic link. Times are
// left out: a second run that rewrote a file with the same bytes and modes changed nothing.
import type { RunResult } from './sandbox.js';

export type Manifest = Map<string, string>;

/** exec runs a shell script where the files are (here, or inside a sandbox). */
export function manifest(exec: (script: string) => RunResult, roots: readonly string[]): Manifest {
  const quoted = roots.map((r) => `'${r.replace(/'/g, `'\\''`)}'`).join(' ');
  // One line per path: type mode uid gid path [-> target]; then the sha256 of every file.
  const script = `set -e
for r in ${quoted}; do
  [ -e "$r" ] || [ -L "$r" ] || continue
  find "$r" -printf '%y %m %U %G %p\\t%l\\n'
  find "$r" -type f -exec sha256sum {} +
done`;
  const r = exec(script);
  if (r.code !== 0) throw new Error(`manifest failed: ${r.err}`);
  const sums = new Map<string, string>();
  const entries: [string, string][] = [];
  for (const line of r.out.split('\n')) {
    if (line === '') continue;
    const sum = /^([0-9a-f]{64}) {2}(.*)$/.exec(line);
    if (sum) {
      sums.set(sum[2] ?? '', sum[1] ?? '');
      continue;
    }
    const [head = '', target = ''] = line.split('\t');
    const [type, mode, uid, gid, ...rest] = head.split(' ');
    entries.push([rest.join(' '), `${type} ${mode} ${uid}:${gid}${type === 'l' ? ` -> ${target}` : ''}`]);
  }
  return new Map(entries.map(([path, meta]) => [path, sums.has(path) ? `${meta} ${sums.get(path)}` : meta]));
}

/** The paths that differ between two manifests, with both sides, for a readable failure. */
export function differences(a: Manifest, b: Manifest): string[] {
  const out: string[] = [];
  for (const [p, v] of a) if (b.get(p) !== v) out.push(`${p}: ${v} -> ${b.get(p) ?? 'absent'}`);
  for (const [p, v] of b) if (!a.has(p)) out.push(`${p}: absent -> ${v}`);
  return out.sort();
}
