// What is wrong with a configuration, and where: file, line, column and field.

export interface SourceRef {
  file: string;
  line: number;
  col: number;
}

export interface Diagnostic extends SourceRef {
  severity: 'error' | 'warning';
  /** The field's path, as "devices[0].allow[1].ports[0]". */
  field: string;
  message: string;
}

export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else out += out === '' ? String(p) : `.${String(p)}`;
  }
  return out;
}

export function formatDiagnostic(d: Diagnostic): string {
  const where = `${d.file}:${d.line}:${d.col}`;
  const field = d.field === '' ? '' : ` ${d.field}:`;
  return `${where}: ${d.severity}:${field} ${d.message}`;
}

/** Thrown when configuration is wrong; carries every mistake found, not just the first. */
export class ConfigError extends Error {
  readonly code = 'E_CONFIG';
  constructor(readonly diagnostics: Diagnostic[]) {
    const errors = diagnostics.filter((d) => d.severity === 'error');
    super(`${errors.length} error(s) in the configuration:\n${errors.map(formatDiagnostic).join('\n')}`);
    this.name = 'ConfigError';
  }
}
