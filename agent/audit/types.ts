// What the rest of the agent needs of the audit log: somewhere to append. The hash-chained
// file (agent/audit/log.ts) is the implementation.

export interface AuditRecord {
  /** Who: a console key id, "cli:<user>", "agent". */
  actor: string;
  /** What: "policy.apply", "command.refused", "backup.restore", ... */
  action: string;
  outcome: 'ok' | 'refused' | 'failed';
  detail?: Record<string, unknown>;
}

export interface AuditSink {
  append(record: AuditRecord): void;
}
