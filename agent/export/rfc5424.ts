// RFC 5424 syslog messages from wardgate events: a pure function from an event to the bytes of
// one message (no framing; the transports add it). Section numbers below are RFC 5424's.
//
// SYSLOG-MSG = HEADER SP STRUCTURED-DATA [SP MSG]                                       (6)
// HEADER     = PRI VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID    (6.2)
import type { EventPayload, Severity } from '../mqtt/topics.js';

/**
 * The private SD-ID enterprise number. wardgate has no IANA Private Enterprise Number of its
 * own; 32473 is the one RFC 5612 reserves for documentation, which keeps our SD-IDs well
 * formed (6.3.2: "name@<private enterprise number>") without claiming someone else's.
 */
export const PEN = 32473;
export const SD_ID = `wardgate@${PEN}`;
export const SD_ID_DATA = `wardgateData@${PEN}`;
export const APP_NAME = 'wardgate';

/** Facility codes (6.2.1, table 1), by the names rsyslog uses for them. */
export const FACILITY_CODES = {
  kern: 0,
  user: 1,
  mail: 2,
  daemon: 3,
  auth: 4,
  syslog: 5,
  lpr: 6,
  news: 7,
  uucp: 8,
  cron: 9,
  authpriv: 10,
  ftp: 11,
  ntp: 12,
  security: 13,
  console: 14,
  'solaris-cron': 15,
  local0: 16,
  local1: 17,
  local2: 18,
  local3: 19,
  local4: 20,
  local5: 21,
  local6: 22,
  local7: 23,
} as const;
export type Facility = keyof typeof FACILITY_CODES;

/** Event severity to syslog severity (6.2.1, table 2): 2 critical, 4 warning, 6 informational. */
export const SYSLOG_SEVERITY: Record<Severity, number> = { critical: 2, warning: 4, info: 6 };

export const BOM = Buffer.from([0xef, 0xbb, 0xbf]);

export function pri(facility: Facility, severity: Severity): number {
  return FACILITY_CODES[facility] * 8 + SYSLOG_SEVERITY[severity];
}

/**
 * A header field: printable US-ASCII (33-126) only, at most `max` characters, NILVALUE "-"
 * when nothing is left (6.2.4-6.2.7). Anything else becomes "_" so that a field can never
 * carry a space and shift the fields after it.
 */
export function headerField(value: string, max: number): string {
  const clean = value.replace(/[^\x21-\x7e]/g, '_').slice(0, max);
  return clean === '' ? '-' : clean;
}

/** SD-NAME (6.3.3): 1-32 printable US-ASCII except "=", SP, "]" and '"'. */
export function sdName(name: string): string {
  const clean = name.replace(/[^\x21-\x7e]|[= \]"]/g, '_').slice(0, 32);
  return clean === '' ? '_' : clean;
}

/** PARAM-VALUE (6.3.3): '"', "\" and "]" MUST be escaped with a backslash; the rest is UTF-8 as is. */
export function escapeParamValue(value: string): string {
  return value.replace(/["\\\]]/g, (c) => `\\${c}`);
}

/** A data value as text: strings as they are, everything else as JSON. */
export function valueText(v: unknown): string {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    // a cycle; events are built by the agent, so this is a bug, but never a reason to lose the event
    return String(v);
  }
}

export type SdParams = [name: string, value: string][];

export function sdElement(id: string, params: SdParams): string {
  return `[${id}${params.map(([n, v]) => ` ${sdName(n)}="${escapeParamValue(v)}"`).join('')}]`;
}

/** RFC 3339 with milliseconds in UTC (6.2.3); the event's own time, or now if it has none. */
export function timestamp(ts: string | undefined, now = Date.now()): string {
  const t = ts === undefined ? Number.NaN : Date.parse(ts);
  return new Date(Number.isNaN(t) ? now : t).toISOString();
}

export interface HeaderOptions {
  facility: Facility;
  /** HOSTNAME as sent (already chosen: the gateway id, the OS host name or a configured one). */
  hostname: string;
  procid: number | string;
}

/** HEADER (6.2) without the trailing space. MSGID is the event kind. */
export function header(event: Pick<EventPayload, 'severity' | 'kind' | 'ts'>, o: HeaderOptions): string {
  // 6.2.2: VERSION is 1.
  return `<${pri(o.facility, event.severity)}>1 ${timestamp(event.ts)} ${headerField(o.hostname, 255)} ${APP_NAME} ${headerField(String(o.procid), 128)} ${headerField(event.kind, 32)}`;
}

/** The event's own parameters: identity, kind (whole: MSGID may be cut), severity, dedup key, device. */
export function eventParams(event: EventPayload): SdParams {
  const p: SdParams = [
    ['id', event.id],
    ['site', event.site],
    ['gateway', event.gateway],
    ['kind', event.kind],
    ['severity', event.severity],
    ['dedupKey', event.dedupKey],
  ];
  if (event.device !== undefined) p.push(['device', event.device]);
  return p;
}

/** The event's data, one parameter per top-level field (objects and arrays as JSON). */
export function dataParams(data: Record<string, unknown> | undefined): SdParams {
  if (data === undefined) return [];
  return Object.entries(data)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => [k, valueText(v)]);
}

export interface Rfc5424Options extends HeaderOptions {
  /** meta sequenceId (7.3.1): 1 to 2147483647, so that a collector sees gaps (UDP loss, drops). */
  sequenceId: number;
  /** Leave out the data element (to make the message fit). */
  withoutData?: boolean;
  /** Add truncated="true" to the event element: the message text was cut to fit. */
  truncated?: boolean;
  /** Leave out the event's own element (the CEF format carries the event in MSG). */
  eventElement?: boolean;
  /** Start MSG with the UTF-8 BOM (6.4); default true. */
  bom?: boolean;
}

/**
 * One RFC 5424 message:
 *   <PRI>1 TIMESTAMP HOSTNAME wardgate PROCID KIND [wardgate@32473 ...][wardgateData@32473 ...][meta sequenceId="n"] BOM MESSAGE
 * MSG is UTF-8 with the BOM (6.4), which tells the collector it is UTF-8.
 */
export function formatRfc5424(event: EventPayload, o: Rfc5424Options): Buffer {
  const elements: string[] = [];
  if (o.eventElement !== false) {
    const params = eventParams(event);
    if (o.truncated) params.push(['truncated', 'true']);
    elements.push(sdElement(SD_ID, params));
  }
  const data = o.withoutData ? [] : dataParams(event.data);
  if (data.length > 0) elements.push(sdElement(SD_ID_DATA, data));
  elements.push(sdElement('meta', [['sequenceId', String(o.sequenceId)]]));
  const parts = [Buffer.from(`${header(event, o)} ${elements.join('')} `, 'utf8')];
  if (o.bom !== false) parts.push(BOM);
  parts.push(Buffer.from(event.message, 'utf8'));
  return Buffer.concat(parts);
}
