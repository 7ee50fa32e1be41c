// A console's reading of one site's traffic: which gateway and device a topic names, and whether
// its payload is what the topic contract (agent/mqtt/topics.ts) says. Anyone who may publish
// on a gateway's tree could send anything there, so a payload is believed only when it passes
// its schema and names the same site, gateway and device as the topic it came on.
import { z } from 'zod';
import { DeviceHealthPayload, EventPayload, HealthPayload, StatusPayload, TOPIC_ROOT } from '../mqtt/topics.js';

export type SiteMessage =
  | { kind: 'status'; gateway: string; payload: StatusPayload }
  | { kind: 'health'; gateway: string; payload: HealthPayload }
  | { kind: 'device-health'; gateway: string; device: string; payload: DeviceHealthPayload }
  | { kind: 'event'; gateway: string; payload: EventPayload };

export type SiteParse = { ok: true; message: SiteMessage } | { ok: false; reason: string };

/** Far above any real payload (a health message is a few KiB): a bigger one is not parsed. */
export const MAX_SITE_PAYLOAD = 256 * 1024;

const SCHEMAS = {
  status: { schema: StatusPayload, name: 'status' },
  health: { schema: HealthPayload, name: 'health' },
  'device-health': { schema: DeviceHealthPayload, name: 'device-health' },
  event: { schema: EventPayload, name: 'event' },
} as const;

/** The kind of message a topic under wardgate/v1/<site>/ carries, or undefined. */
function classify(site: string, topic: string): { kind: keyof typeof SCHEMAS; gateway: string; device?: string } | undefined {
  const prefix = `${TOPIC_ROOT}/${site}/`;
  if (!topic.startsWith(prefix)) return undefined;
  const rest = topic.slice(prefix.length).split('/');
  const gateway = rest[0];
  if (gateway === undefined || gateway === '') return undefined;
  if (rest.length === 2 && rest[1] === 'status') return { kind: 'status', gateway };
  if (rest.length === 2 && rest[1] === 'health') return { kind: 'health', gateway };
  if (rest.length === 2 && rest[1] === 'events') return { kind: 'event', gateway };
  if (rest.length === 4 && rest[1] === 'devices' && rest[2] !== '' && rest[3] === 'health') return { kind: 'device-health', gateway, device: rest[2] };
  return undefined;
}

export function parseSiteMessage(site: string, topic: string, payload: Buffer | string): SiteParse {
  const what = classify(site, topic);
  if (!what) return { ok: false, reason: 'not a status, health, device health or events topic of this site' };
  const bytes = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
  // An empty retained message clears the topic: the gateway's record was removed on the broker.
  if (bytes.length === 0) return { ok: false, reason: 'empty payload' };
  if (bytes.length > MAX_SITE_PAYLOAD) return { ok: false, reason: `${bytes.length} bytes, more than ${MAX_SITE_PAYLOAD}` };
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (err) {
    return { ok: false, reason: `not UTF-8 JSON (${(err as Error).message})` };
  }
  const { schema, name } = SCHEMAS[what.kind];
  const parsed = (schema as z.ZodType).safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    return { ok: false, reason: `not a ${name} payload: ${issue ? `${issue.path.join('.') || '(root)'}: ${issue.message}` : 'invalid'}` };
  }
  const p = parsed.data as { schema: string; site: string; gateway: string; device?: string };
  if (p.schema !== `${TOPIC_ROOT}/${name}`) return { ok: false, reason: `schema "${p.schema}" on a ${name} topic` };
  if (p.site !== site || p.gateway !== what.gateway) return { ok: false, reason: `the payload names ${p.site}/${p.gateway}, the topic ${site}/${what.gateway}` };
  if (what.device !== undefined && p.device !== what.device) return { ok: false, reason: `the payload names device ${String(p.device)}, the topic ${what.device}` };
  switch (what.kind) {
    case 'status':
      return { ok: true, message: { kind: 'status', gateway: what.gateway, payload: parsed.data as StatusPayload } };
    case 'health':
      return { ok: true, message: { kind: 'health', gateway: what.gateway, payload: parsed.data as HealthPayload } };
    case 'event':
      return { ok: true, message: { kind: 'event', gateway: what.gateway, payload: parsed.data as EventPayload } };
    case 'device-health':
      return { ok: true, message: { kind: 'device-health', gateway: what.gateway, device: what.device ?? '', payload: parsed.data as DeviceHealthPayload } };
  }
}
