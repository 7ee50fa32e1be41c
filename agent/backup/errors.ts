// What can go wrong with a backup, as codes callers and tests match on. A verification problem
// names the file (or bundle entry) and the check that failed, so that a responder at 3 a.m.
// reads "blob …/3f2a….blob: ciphertext sha256 differs from the manifest's", not "bad data".

/** The checks a read or a verify runs, in the order it runs them. */
export type Check =
  | 'structure' // the file is not what its format says (JSON, header, offsets, fields)
  | 'public-key' // signed by another key than the one given
  | 'signature' // the Ed25519 signature does not verify
  | 'identity' // a manifest claims another device or version than where it is found
  | 'missing' // a file or entry a manifest refers to is not there
  | 'blob-hash' // the ciphertext's SHA-256 differs from the manifest's
  | 'key-id' // the data key given is not the one the blob was encrypted with
  | 'gcm-tag' // AES-256-GCM authentication failed: the ciphertext, header or binding was altered
  | 'plaintext-hash' // the decrypted bytes' SHA-256 differs from the manifest's
  | 'plaintext-size' // the decrypted size differs from the manifest's
  | 'chain'; // a manifest names a previous version whose hash is not the one it records

export interface Problem {
  /** The file, or "bundle entry …", the check was run on. */
  file: string;
  check: Check;
  message: string;
}

export function formatProblem(p: Problem): string {
  return `${p.file}: ${p.check}: ${p.message}`;
}

export class BackupVerifyError extends Error {
  readonly code = 'E_BACKUP_VERIFY';
  constructor(readonly problem: Problem) {
    super(formatProblem(problem));
  }
}

/** A key is missing, unreadable, of the wrong size, or readable by others. */
export class BackupKeyError extends Error {
  readonly code = 'E_BACKUP_KEY';
}

/** A request the store cannot serve: an unknown device or version, a bad device id. */
export class BackupStoreError extends Error {
  readonly code = 'E_BACKUP_STORE';
}
