// The signed command channel, gateway side: a request is verified (shape, addressee, key,
// Ed25519 signature, freshness, replay), dispatched to its handler, audited, and answered on a
// response topic chosen by a fixed rule. No MQTT client here: the link hands in (topic, payload,
// publish properties) and publishes the answer it gets back. docs/commands.md is the contract.
import { createPublicKey, verify as verifySignature, type KeyObject } from 'node:crypto';
import { join } from 'node:path';
import type { AuditRecord, AuditSink } from '../audit/types.js';
import type { GatewayConfig } from '../config/schema.js';
import { readIfExists, writeFileAtomic } from '../util/fsx.js';
import { CommandRequest, envelope, TOPIC_ROOT, Topics, type CommandResponsePayload } from './topics.js';

export type CommandsConfig = GatewayConfig['commands'];

/** Why a request is refused, in the order the checks run. */
export const REFUSAL_CODES = [
  'E_MALFORMED',
  'E_WRONG_GATEWAY',
  'E_UNKNOWN_KEY',
  'E_BAD_SIGNATURE',
  'E_NOT_YET_VALID',
  'E_EXPIRED',
  'E_LIFETIME',
  'E_REPLAYED',
  'E_NONCE_STORE',
  'E_UNKNOWN_COMMAND',
] as const;
export type RefusalCode = (typeof REFUSAL_CODES)[number];
/** A handler's own reason for failing, when it has one (`policy.learn`'s E_NO_FLOWS, say). */
export type HandlerErrorCode = `E_${string}`;
export type CommandErrorCode = RefusalCode | 'E_HANDLER_FAILED' | HandlerErrorCode;

/** Thrown by a handler to fail with its own code; any other error fails as E_HANDLER_FAILED. */
export class CommandFailure extends Error {
  constructor(
    readonly code: HandlerErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export class CommandKeyError extends Error {
  readonly code = 'E_COMMAND_KEY';
}

// ---------------------------------------------------------------------------------------------
// Canonical form and keys

/**
 * The canonical JSON of a value: RFC 8785 (JCS) for the JSON that commands carry. Object keys
 * sorted by UTF-16 code units at every depth, no whitespace, strings and numbers serialised as
 * ECMAScript's JSON.stringify does (which is what RFC 8785 specifies), array order kept. Object
 * members whose value is `undefined` are left out; non-finite numbers cannot be represented.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new TypeError(`${value} has no JSON form`);
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map((v: unknown) => (v === undefined ? 'null' : canonicalJson(v))).join(',')}]`;
  if (typeof value === 'object') {
    const obj = value as Record<string, unknown>;
    const members = Object.keys(obj)
      .sort()
      .filter((k) => obj[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`);
    return `{${members.join(',')}}`;
  }
  throw new TypeError(`a ${typeof value} has no JSON form`);
}

/**
 * The bytes a console signs and a gateway verifies: the UTF-8 canonical JSON of the request
 * object as sent, without its `signature` member. Every other member is covered, `replyTo`
 * included (an unsigned reply topic would let anyone who can publish redirect the answer).
 */
export function signingInput(request: Record<string, unknown>): Buffer {
  const rest = { ...request };
  delete rest.signature;
  return Buffer.from(canonicalJson(rest), 'utf8');
}

// An Ed25519 SubjectPublicKeyInfo is this 12-byte DER header and the 32 raw key bytes (RFC 8410).
const ED25519_SPKI_HEADER = Buffer.from('302a300506032b6570032100', 'hex');

/** An Ed25519 public key from PEM (SPKI) or from base64 (or base64url) of its 32 raw bytes. */
export function parsePublicKey(text: string): KeyObject {
  const t = text.trim();
  let key: KeyObject;
  if (t.startsWith('-----BEGIN')) {
    try {
      key = createPublicKey(t);
    } catch (err) {
      throw new CommandKeyError(`not a PEM public key: ${(err as Error).message}`);
    }
  } else {
    if (!/^[A-Za-z0-9+/_-]+={0,2}$/.test(t)) throw new CommandKeyError('not a PEM public key nor base64 of 32 raw bytes');
    const raw = Buffer.from(t, 'base64');
    if (raw.length !== 32) throw new CommandKeyError(`an Ed25519 public key is 32 bytes, this one is ${raw.length}`);
    key = createPublicKey({ key: Buffer.concat([ED25519_SPKI_HEADER, raw]), format: 'der', type: 'spki' });
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new CommandKeyError(`an ${key.asymmetricKeyType ?? 'unknown'} key, not Ed25519`);
  return key;
}

/** The base64 of the 32 raw bytes of an Ed25519 public key: what gateway.yaml takes. */
export function rawPublicKeyBase64(key: KeyObject): string {
  const der = key.export({ format: 'der', type: 'spki' });
  return der.subarray(ED25519_SPKI_HEADER.length).toString('base64');
}

// ---------------------------------------------------------------------------------------------
// The replay record

interface NonceFile {
  version: 1;
  /** Commands issued at or before this instant (ms) are refused: the record was lost. */
  floor?: number;
  nonces: [string, number][];
}

/**
 * Nonces of accepted commands, each kept until its command has expired (plus the skew), in a
 * file rewritten atomically before the command runs, so that a restart does not reopen replays.
 * It is bounded: when full, new commands are refused rather than old nonces forgotten, since
 * forgetting one would let its command be replayed. Only correctly signed requests get here,
 * so only a console key holder can fill it.
 *
 * A record that cannot be read back (corrupt) is set aside; as it may have held nonces of
 * commands still valid, every command issued before the loss (plus the skew) is refused until
 * all of them have expired.
 */
export class NonceStore {
  private readonly nonces = new Map<string, number>();
  private floor: number | undefined;

  constructor(
    readonly path: string,
    private readonly maxEntries: number,
    private readonly retentionMs: { skew: number; lifetime: number },
    now: number,
  ) {
    const text = readIfExists(path);
    if (text === undefined) return;
    const parsed = parseNonceFile(text);
    if (parsed) {
      this.floor = parsed.floor;
      for (const [nonce, keepUntil] of parsed.nonces) this.nonces.set(nonce, keepUntil);
      this.prune(now);
      return;
    }
    writeFileAtomic(`${path}.corrupt`, text);
    this.floor = now + retentionMs.skew;
    this.persist();
  }

  get size(): number {
    return this.nonces.size;
  }

  /** The instant before which commands are refused after a lost record, if any. */
  get lostFloor(): number | undefined {
    return this.floor;
  }

  has(nonce: string): boolean {
    return this.nonces.has(nonce);
  }

  /** Records a nonce, on disk before it returns. `full`: nothing recorded. Throws if the write fails. */
  add(nonce: string, expiresAt: number, now: number): 'ok' | 'full' {
    this.prune(now);
    if (this.nonces.size >= this.maxEntries) return 'full';
    // Kept past the expiry by the skew, so that a gateway clock set back a little does not
    // make a forgotten command valid again.
    this.nonces.set(nonce, expiresAt + this.retentionMs.skew);
    this.persist();
    return 'ok';
  }

  private prune(now: number): void {
    for (const [nonce, keepUntil] of this.nonces) if (keepUntil <= now) this.nonces.delete(nonce);
    if (this.floor !== undefined && now > this.floor + this.retentionMs.lifetime + this.retentionMs.skew) this.floor = undefined;
  }

  private persist(): void {
    const file: NonceFile = { version: 1, ...(this.floor !== undefined ? { floor: this.floor } : {}), nonces: [...this.nonces] };
    writeFileAtomic(this.path, `${JSON.stringify(file)}\n`);
  }
}

function parseNonceFile(text: string): NonceFile | undefined {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof data !== 'object' || data === null) return undefined;
  const f = data as Partial<NonceFile>;
  if (f.version !== 1 || !Array.isArray(f.nonces)) return undefined;
  if (f.floor !== undefined && typeof f.floor !== 'number') return undefined;
  const ok = f.nonces.every((e) => Array.isArray(e) && e.length === 2 && typeof e[0] === 'string' && typeof e[1] === 'number');
  return ok ? (f as NonceFile) : undefined;
}

// ---------------------------------------------------------------------------------------------
// Verification

export interface VerifierOptions {
  site: string;
  gateway: string;
  config: CommandsConfig;
  /** The nonce record lives in `<stateDir>/commands/nonces.json`. */
  stateDir: string;
  /** Names of the commands this gateway runs. */
  commands: Iterable<string>;
  /** Bound of the nonce record (default 4096). */
  maxNonces?: number;
  /** Larger payloads are malformed (default 64 KiB). */
  maxPayloadBytes?: number;
  now?: () => number;
}

/** What could be read of a request, verified or not (for the answer and the audit record). */
export interface SeenRequest {
  name?: string;
  nonce?: string;
  keyId?: string;
  replyTo?: string;
  /** The signature was checked against keyId's key. */
  authenticated: boolean;
}

export type Verdict =
  | { ok: true; request: CommandRequest; seen: SeenRequest }
  | { ok: false; code: RefusalCode; message: string; seen: SeenRequest };

const COMMAND_TOPIC = new RegExp(`^${TOPIC_ROOT}/([^/]+)/([^/]+)/cmd/([^/]+)$`);
const SIGNATURE_BASE64 = /^[A-Za-z0-9+/]{86}==$/; // 64 bytes

function readString(obj: Record<string, unknown>, key: string): string | undefined {
  const v = obj[key];
  return typeof v === 'string' && v.length <= 1024 ? v : undefined;
}

export class CommandVerifier {
  private readonly keys = new Map<string, KeyObject>();
  private readonly commands: Set<string>;
  private readonly nonces: NonceStore;
  private readonly now: () => number;
  private readonly maxPayloadBytes: number;

  constructor(private readonly opts: VerifierOptions) {
    for (const { id, key } of opts.config.publicKeys) {
      if (this.keys.has(id)) throw new CommandKeyError(`commands.publicKeys: key id "${id}" appears twice`);
      try {
        this.keys.set(id, parsePublicKey(key));
      } catch (err) {
        throw new CommandKeyError(`commands.publicKeys "${id}": ${(err as Error).message}`);
      }
    }
    this.commands = new Set(opts.commands);
    this.now = opts.now ?? Date.now;
    this.maxPayloadBytes = opts.maxPayloadBytes ?? 64 * 1024;
    const maxNonces = opts.maxNonces ?? 4096;
    if (!Number.isInteger(maxNonces) || maxNonces < 1) throw new RangeError('maxNonces must be a positive integer');
    this.nonces = new NonceStore(
      join(opts.stateDir, 'commands', 'nonces.json'),
      maxNonces,
      { skew: opts.config.maxSkewSeconds * 1000, lifetime: opts.config.maxLifetimeSeconds * 1000 },
      this.now(),
    );
  }

  /** How many nonces are held (for health and tests). */
  get nonceCount(): number {
    return this.nonces.size;
  }

  /** Runs every check in order; the first that fails is the verdict. Synchronous, so no two
   * deliveries of one nonce can both pass the replay check. */
  verify(payload: Buffer, topic: string): Verdict {
    const seen: SeenRequest = { authenticated: false };
    const refuse = (code: RefusalCode, message: string): Verdict => ({ ok: false, code, message, seen });

    // E_MALFORMED: size, topic, UTF-8, JSON, schema, topic name = request name, representable.
    const m = COMMAND_TOPIC.exec(topic);
    if (m?.[3] !== undefined) seen.name = m[3];
    if (payload.length > this.maxPayloadBytes) return refuse('E_MALFORMED', `payload of ${payload.length} bytes exceeds ${this.maxPayloadBytes}`);
    if (!m) return refuse('E_MALFORMED', `"${topic.slice(0, 200)}" is not a command topic (${TOPIC_ROOT}/<site>/<gateway>/cmd/<name>)`);
    let raw: unknown;
    try {
      raw = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(payload));
    } catch {
      return refuse('E_MALFORMED', 'the payload is not UTF-8 JSON');
    }
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return refuse('E_MALFORMED', 'the payload is not a JSON object');
    const obj = raw as Record<string, unknown>;
    const name = readString(obj, 'name');
    if (name !== undefined) seen.name = name;
    for (const k of ['nonce', 'keyId', 'replyTo'] as const) {
      const v = readString(obj, k);
      if (v !== undefined) seen[k] = v;
    }
    const parsed = CommandRequest.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const where = issue && issue.path.length > 0 ? `${issue.path.join('.')}: ` : '';
      return refuse('E_MALFORMED', `not a command request: ${where}${issue?.message ?? 'invalid'}`);
    }
    const request = parsed.data;
    if (request.name !== m[3]) return refuse('E_MALFORMED', `the request names "${request.name.slice(0, 64)}" but came on cmd/${m[3]}`);
    let signed: Buffer;
    try {
      signed = signingInput(obj);
    } catch (err) {
      return refuse('E_MALFORMED', (err as Error).message);
    }

    // E_WRONG_GATEWAY: both the request and the topic must name this gateway.
    const { site, gateway } = this.opts;
    if (request.site !== site || request.gateway !== gateway || m[1] !== site || m[2] !== gateway) {
      return refuse('E_WRONG_GATEWAY', `addressed to ${request.site.slice(0, 64)}/${request.gateway.slice(0, 64)}, this is ${site}/${gateway}`);
    }

    // E_UNKNOWN_KEY, E_BAD_SIGNATURE
    const key = this.keys.get(request.keyId);
    if (!key) return refuse('E_UNKNOWN_KEY', `key "${request.keyId.slice(0, 64)}" is not in commands.publicKeys`);
    if (!SIGNATURE_BASE64.test(request.signature)) return refuse('E_BAD_SIGNATURE', 'the signature is not base64 of 64 bytes');
    if (!verifySignature(null, signed, key, Buffer.from(request.signature, 'base64'))) {
      return refuse('E_BAD_SIGNATURE', `the signature does not verify with key "${request.keyId}"`);
    }
    seen.authenticated = true;

    // E_NOT_YET_VALID, E_EXPIRED, E_LIFETIME
    const now = this.now();
    const issued = Date.parse(request.issuedAt);
    const expires = Date.parse(request.expiresAt);
    const { maxSkewSeconds, maxLifetimeSeconds } = this.opts.config;
    if (issued > now + maxSkewSeconds * 1000) {
      return refuse('E_NOT_YET_VALID', `issued ${request.issuedAt}, more than ${maxSkewSeconds} s ahead of this gateway's clock (${new Date(now).toISOString()})`);
    }
    if (expires <= now) return refuse('E_EXPIRED', `expired at ${request.expiresAt} (now ${new Date(now).toISOString()})`);
    if (expires <= issued) return refuse('E_LIFETIME', 'expires before it was issued');
    if (expires - issued > maxLifetimeSeconds * 1000) {
      return refuse('E_LIFETIME', `a lifetime of ${Math.round((expires - issued) / 1000)} s exceeds commands.maxLifetimeSeconds (${maxLifetimeSeconds} s)`);
    }

    // E_REPLAYED, E_NONCE_STORE
    const floor = this.nonces.lostFloor;
    if (floor !== undefined && issued <= floor) {
      return refuse('E_REPLAYED', `the replay record was lost; commands issued before ${new Date(floor).toISOString()} are refused`);
    }
    if (this.nonces.has(request.nonce)) return refuse('E_REPLAYED', `nonce ${request.nonce} was already used`);
    try {
      if (this.nonces.add(request.nonce, expires, now) === 'full') {
        return refuse('E_NONCE_STORE', 'too many commands within their lifetime; try again later');
      }
    } catch (err) {
      return refuse('E_NONCE_STORE', `cannot record the nonce: ${(err as Error).message}`);
    }

    // E_UNKNOWN_COMMAND
    if (!this.commands.has(request.name)) return refuse('E_UNKNOWN_COMMAND', `this gateway has no command "${request.name}"`);
    return { ok: true, request, seen };
  }
}

// ---------------------------------------------------------------------------------------------
// Dispatch and answer

export interface CommandContext {
  keyId: string;
  request: CommandRequest;
}

export type CommandHandler = (args: Record<string, unknown>, ctx: CommandContext) => Promise<unknown>;

/** The MQTT 5 publish properties a request may carry (mqtt.js's packet.properties fits). */
export interface RequestProperties {
  responseTopic?: string;
  correlationData?: Buffer;
}

/** What the link publishes: QoS 1, not retained, correlationData as an MQTT 5 property. */
export interface CommandAnswer {
  responseTopic: string;
  correlationData?: Buffer;
  payload: string;
  response: CommandResponsePayload;
}

export interface DispatcherOptions {
  site: string;
  gateway: string;
  verifier: CommandVerifier;
  handlers: Record<string, CommandHandler>;
  audit: AuditSink;
  /** Topic prefixes answers may go to besides `<base>/cmd-response` (e.g. a console's own tree). */
  responsePrefixes?: string[];
  /** Told when the audit sink throws; the command's answer is still sent. */
  onAuditError?: (err: Error) => void;
  now?: () => Date;
}

/** A topic name one may publish to: not empty, no wildcards or NUL [MQTT-4.7.0-1], not a $ topic. */
function isPlainTopic(topic: string): boolean {
  return topic.length > 0 && !/[+#]/.test(topic) && !topic.includes('\0') && !topic.startsWith('$');
}

/** A response topic an answer may be published to: one of `prefixes` or below it, no wildcards. */
export function isAllowedResponseTopic(topic: string, prefixes: readonly string[]): boolean {
  if (!isPlainTopic(topic) || topic.length > 1024) return false;
  return prefixes.some((p) => topic === p || topic.startsWith(`${p}/`));
}

export class CommandDispatcher {
  private readonly topics: Topics;
  private readonly prefixes: string[];
  private readonly now: () => Date;

  constructor(private readonly opts: DispatcherOptions) {
    this.topics = new Topics(opts.site, opts.gateway);
    for (const p of opts.responsePrefixes ?? []) {
      if (!isPlainTopic(p) || p.endsWith('/')) {
        throw new RangeError(`response prefix "${p}": a topic without wildcards, "$" or a trailing "/"`);
      }
    }
    this.prefixes = [this.topics.responses(), ...(opts.responsePrefixes ?? [])];
    this.now = opts.now ?? (() => new Date());
  }

  /** Verifies, runs and answers one request. Never throws for anything the sender controls. */
  async handle(topic: string, payload: Buffer, properties: RequestProperties = {}): Promise<CommandAnswer> {
    const verdict = this.opts.verifier.verify(payload, topic);
    const seen = verdict.seen;
    const responseTopic = this.route(verdict, properties);
    const name = verdict.ok ? verdict.request.name : (seen.name ?? '').slice(0, 128);
    let outcome: AuditRecord['outcome'];
    let result: unknown;
    let error: { code: CommandErrorCode; message: string } | undefined;

    if (!verdict.ok) {
      outcome = 'refused';
      error = { code: verdict.code, message: verdict.message };
    } else {
      const { request } = verdict;
      const handler = Object.hasOwn(this.opts.handlers, request.name) ? this.opts.handlers[request.name] : undefined;
      if (!handler) {
        outcome = 'refused';
        error = { code: 'E_UNKNOWN_COMMAND', message: `this gateway has no command "${request.name}"` };
      } else {
        try {
          result = await handler(request.args, { keyId: request.keyId, request });
          if (result !== undefined) JSON.stringify(result); // a result that cannot be sent is a failure
          outcome = 'ok';
        } catch (err) {
          outcome = 'failed';
          result = undefined;
          error = { code: err instanceof CommandFailure ? err.code : 'E_HANDLER_FAILED', message: err instanceof Error ? err.message : String(err) };
        }
      }
    }

    const response: CommandResponsePayload = {
      ...envelope('command-response', this.opts.site, this.opts.gateway, this.now()),
      command: name,
      nonce: seen.nonce?.slice(0, 128) ?? null,
      ok: outcome === 'ok',
      ...(outcome === 'ok' && result !== undefined ? { result } : {}),
      ...(error ? { error } : {}),
    };
    this.audit(verdict, outcome, name, topic, responseTopic, error);
    return {
      responseTopic,
      ...(properties.correlationData !== undefined ? { correlationData: properties.correlationData } : {}),
      payload: JSON.stringify(response),
      response,
    };
  }

  /**
   * A verified request's signed replyTo comes first: it cannot be rewritten on the way. Then the
   * MQTT 5 response topic (unsigned: a packet property), then an unverified request's replyTo.
   * Any of them only within the allowed prefixes, so that nobody can make the gateway publish
   * on a topic of its own (status, health) or of another client; otherwise `<base>/cmd-response`.
   */
  private route(verdict: Verdict, properties: RequestProperties): string {
    const candidates = verdict.ok ? [verdict.request.replyTo, properties.responseTopic] : [properties.responseTopic, verdict.seen.replyTo];
    for (const c of candidates) if (typeof c === 'string' && isAllowedResponseTopic(c, this.prefixes)) return c;
    return this.topics.responses();
  }

  private audit(verdict: Verdict, outcome: AuditRecord['outcome'], name: string, topic: string, responseTopic: string, error: { code: string; message: string } | undefined): void {
    const seen = verdict.seen;
    const action = { ok: 'command.executed', refused: 'command.refused', failed: 'command.failed' }[outcome];
    const record: AuditRecord = {
      // Only a key whose signature verified is an actor; a claimed key id is a detail.
      actor: seen.authenticated && seen.keyId !== undefined ? seen.keyId : 'unknown',
      action,
      outcome,
      detail: {
        command: name,
        nonce: seen.nonce?.slice(0, 128) ?? null,
        topic: topic.slice(0, 256),
        responseTopic,
        ...(!seen.authenticated && seen.keyId !== undefined ? { claimedKeyId: seen.keyId.slice(0, 64) } : {}),
        ...(verdict.ok ? { args: verdict.request.args, issuedAt: verdict.request.issuedAt, expiresAt: verdict.request.expiresAt } : {}),
        ...(error ? { code: error.code, message: error.message.slice(0, 500) } : {}),
      },
    };
    try {
      this.opts.audit.append(record);
    } catch (err) {
      this.opts.onAuditError?.(err as Error);
    }
  }
}
