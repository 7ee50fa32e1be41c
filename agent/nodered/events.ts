// How a flow on the gateway's Node-RED raises a wardgate event: an HTTP POST to a listener of the
// agent on 127.0.0.1, with a bearer token made at each start and given to Node-RED alone (its
// environment: WARDGATE_EVENTS_URL, WARDGATE_EVENTS_TOKEN). The body is checked against a strict
// schema, the event gets the kind gateway-flow.<name>, and it goes through a limiter like the
// detections' before it reaches the outbox, the consoles and the SIEM (docs/nodered.md).
//
// Why HTTP and not a topic on the embedded broker: a gateway may have no embedded broker (a
// site broker instead), and the agent would have to subscribe to what any broker client can
// publish. Here only the holder of the token is heard, on loopback, and nothing else is served.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { z } from 'zod';
import type { Severity } from '../mqtt/topics.js';
import { EventLimiter, type LimitedEvent } from '../util/event-limiter.js';

export const EVENTS_PATH = '/v1/events';
/** The largest body taken; a flow's event is a few hundred bytes. */
export const MAX_BODY_BYTES = 8192;
const MAX_DATA_BYTES = 4096;

const Name = z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/, '1-63 lowercase letters, digits and "-", starting with a letter or digit');

export const FlowEventSchema = z
  .object({
    name: Name.describe('The event\'s kind is gateway-flow.<name>'),
    severity: z.enum(['info', 'warning', 'critical']).default('warning'),
    message: z.string().min(1).max(500),
    device: Name.optional().describe('A device of the gateway\'s policy'),
    dedupKey: z.string().min(1).max(200).optional().describe('Events with the same key are raised once per dedup window (default: the kind and the device)'),
    data: z
      .record(z.string(), z.unknown())
      .optional()
      .refine((d) => d === undefined || Buffer.byteLength(JSON.stringify(d)) <= MAX_DATA_BYTES, `at most ${MAX_DATA_BYTES} bytes of JSON`),
  })
  .strict();
export type FlowEvent = z.infer<typeof FlowEventSchema>;

export interface FlowEventsOptions {
  /** The gateway's devices, to check `device` against; undefined when the policy does not load. */
  devices: () => readonly string[] | undefined;
  dedupWindowSeconds: number;
  maxPerMinute: number;
  raise: (severity: Severity, kind: string, message: string, extra: { device?: string; dedupKey: string; data: Record<string, unknown> }) => void;
  /** Why a request was refused (the flow author's mistakes show in the agent's log). */
  refused?: (status: number, reason: string) => void;
}

export interface FlowEvents {
  url: string;
  token: string;
  /** Turns the limiter's minute; call every few seconds. */
  tick(): void;
  close(): Promise<void>;
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

function reply(res: ServerResponse, status: number, body: Record<string, unknown>): void {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

function readBody(req: IncomingMessage): Promise<Buffer | 'too large'> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      if (size > MAX_BODY_BYTES) return;
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        // Answered now; the rest is read and dropped, and the connection closed after the answer.
        chunks.length = 0;
        resolve('too large');
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

export async function startFlowEvents(opts: FlowEventsOptions): Promise<FlowEvents> {
  const token = randomBytes(32).toString('base64url');
  const expected = digest(`Bearer ${token}`);
  let lastEmitted: LimitedEvent | undefined;
  const lastKey = (): string | undefined => lastEmitted?.dedupKey;
  const limiter = new EventLimiter({
    dedupWindowSeconds: opts.dedupWindowSeconds,
    maxPerMinute: opts.maxPerMinute,
    summaryKind: 'gateway-flow.suppressed',
    noun: 'flow event(s)',
    emit: (e) => {
      lastEmitted = e;
      opts.raise(e.severity, e.kind, e.message, { ...(e.device !== undefined ? { device: e.device } : {}), dedupKey: e.dedupKey, data: e.data });
    },
  });
  const refuse = (res: ServerResponse, status: number, error: string): void => {
    opts.refused?.(status, error);
    reply(res, status, { ok: false, error });
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if ((req.url ?? '').split('?')[0] !== EVENTS_PATH) return refuse(res, 404, `nothing here but POST ${EVENTS_PATH}`);
    if (req.method !== 'POST') {
      res.setHeader('allow', 'POST');
      return refuse(res, 405, `POST ${EVENTS_PATH}`);
    }
    // Hashes first: timingSafeEqual wants equal lengths, and then the length tells nothing.
    if (!timingSafeEqual(digest(req.headers.authorization ?? ''), expected)) return refuse(res, 401, 'the bearer token of WARDGATE_EVENTS_TOKEN is needed');
    if (!/^application\/json\b/i.test(req.headers['content-type'] ?? '')) return refuse(res, 415, 'the body must be application/json');
    const body = await readBody(req);
    if (body === 'too large') {
      res.setHeader('connection', 'close');
      return refuse(res, 413, `the body is larger than ${MAX_BODY_BYTES} bytes`);
    }
    let json: unknown;
    try {
      json = JSON.parse(body.toString('utf8'));
    } catch {
      return refuse(res, 400, 'the body is not JSON');
    }
    const parsed = FlowEventSchema.safeParse(json);
    if (!parsed.success) {
      const i = parsed.error.issues[0];
      const field = i && i.path.length > 0 ? `${i.path.join('.')}: ` : '';
      const message = i?.code === 'unrecognized_keys' ? `unknown field(s) ${i.keys.join(', ')}` : (i?.message ?? 'invalid');
      return refuse(res, 400, `${field}${message}`);
    }
    const e = parsed.data;
    const devices = opts.devices();
    if (e.device !== undefined && devices !== undefined && !devices.includes(e.device)) return refuse(res, 400, `device: no device "${e.device}" on this gateway`);
    const kind = `gateway-flow.${e.name}`;
    lastEmitted = undefined;
    const dedupKey = e.dedupKey ?? `${kind}:${e.device ?? 'gateway'}`;
    limiter.raise({ severity: e.severity, kind, message: e.message, dedupKey, ...(e.device !== undefined ? { device: e.device } : {}), data: e.data ?? {} });
    // Held back (a repeat within the dedup window, or the minute is full) is not an error: the
    // flow did its part, and the limiter counts it. (What raise() emitted may also be the
    // summary of the minute before.)
    reply(res, 202, { ok: true, kind, raised: lastKey() === dedupKey });
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) refuse(res, 500, (err as Error).message);
    });
  });
  // A flow posts now and then; nothing should hold a connection open for long.
  server.requestTimeout = 10000;
  server.headersTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    url: `http://127.0.0.1:${port}${EVENTS_PATH}`,
    token,
    tick: () => limiter.tick(),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
