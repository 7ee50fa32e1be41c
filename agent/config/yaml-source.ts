// A YAML file parsed with positions, and zod's complaints turned into diagnostics that point at
// the line and column of the offending field.
import { isMap, isNode, isPair, isScalar, LineCounter, parseDocument, type Document } from 'yaml';
import type { z } from 'zod';
import { formatPath, type Diagnostic, type SourceRef } from './diagnostics.js';

export interface YamlSource {
  /** The file name as shown to people (relative to where the configuration lives). */
  file: string;
  doc: Document;
  lines: LineCounter;
}

export function parseYaml(file: string, text: string): { source: YamlSource; diagnostics: Diagnostic[] } {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const diagnostics: Diagnostic[] = [...doc.errors, ...doc.warnings].map((e) => {
    const pos = lines.linePos(e.pos[0]);
    return {
      file,
      line: pos.line,
      col: pos.col,
      severity: doc.errors.includes(e) ? ('error' as const) : ('warning' as const),
      field: '',
      message: `YAML: ${e.message.split('\n')[0] ?? e.message}`,
    };
  });
  return { source: { file, doc, lines }, diagnostics };
}

/** Where a field is; with `key`, where that key of the mapping at `path` is written. */
export function locate(src: YamlSource, path: readonly PropertyKey[], key?: string): SourceRef {
  let node: unknown = src.doc.contents;
  let best: unknown = node;
  for (const p of path) {
    if (!isNode(node)) break;
    const next: unknown = (node as { get?: (k: unknown, keep: boolean) => unknown }).get?.(p, true);
    if (next === undefined) break;
    node = next;
    best = next;
  }
  if (key !== undefined && isMap(node)) {
    const pair = node.items.find((it) => isPair(it) && isScalar(it.key) && it.key.value === key);
    if (pair && isNode(pair.key)) best = pair.key;
  }
  const offset = isNode(best) && best.range ? best.range[0] : 0;
  const pos = src.lines.linePos(offset);
  return { file: src.file, line: pos.line, col: pos.col };
}

/** Picks, from a union's alternatives, the issues of the one that got furthest. */
function flatten(issues: readonly z.core.$ZodIssue[]): z.core.$ZodIssue[] {
  const out: z.core.$ZodIssue[] = [];
  for (const issue of issues) {
    if (issue.code === 'invalid_union' && issue.errors.length > 0) {
      const branches = issue.errors.map((b) => b.map((i) => ({ ...i, path: [...issue.path, ...i.path] })));
      const typed = branches.filter((b) => !b.every((i) => i.code === 'invalid_type'));
      out.push(...flatten(typed[0] ?? branches[0] ?? []));
    } else out.push(issue);
  }
  return out;
}

export function zodDiagnostics(src: YamlSource, error: z.ZodError, base: readonly PropertyKey[] = []): Diagnostic[] {
  const diagnostics: Diagnostic[] = [];
  for (const issue of flatten(error.issues)) {
    const path = [...base, ...issue.path];
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) {
        diagnostics.push({
          ...locate(src, path, key),
          severity: 'error',
          field: formatPath([...path, key]),
          message: `unknown field "${key}"`,
        });
      }
      continue;
    }
    let message = issue.message;
    if (issue.code === 'invalid_type' && /received undefined/.test(message)) message = 'is required';
    diagnostics.push({ ...locate(src, path), severity: 'error', field: formatPath(path), message });
  }
  return diagnostics;
}
