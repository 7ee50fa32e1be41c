// ArcSight Common Event Format (CEF 0, "Implementing ArcSight CEF", revision 25) for wardgate
// events: the text that goes in the MSG part of a syslog message when format is cef.
//
// CEF:0|wardgate|wardgate|<version>|<kind>|<message>|<severity 0-10>|<extension>
import { isIP, isIPv4, isIPv6 } from 'node:net';
import type { EventPayload, Severity } from '../mqtt/topics.js';
import { valueText } from './rfc5424.js';

/** 0-3 low, 4-6 medium, 7-8 high, 9-10 very high. */
export const CEF_SEVERITY: Record<Severity, number> = { info: 3, warning: 6, critical: 10 };

/** Header fields: "\" and "|" are escaped; a line break has no place in a header, it becomes a space. */
export function escapeHeader(value: string): string {
  return value.replace(/[\\|]/g, (c) => `\\${c}`).replace(/\r\n|[\r\n]/g, ' ');
}

/** Extension values: "\" and "=" are escaped, line breaks written as \n and \r. */
export function escapeExtension(value: string): string {
  return value.replace(/[\\=\r\n]/g, (c) => (c === '\n' ? '\\n' : c === '\r' ? '\\r' : `\\${c}`));
}

const MAC = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;
const isPort = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 65535;
const ipOf = (v: unknown): string | undefined => (typeof v === 'string' && isIP(v) !== 0 ? v : undefined);

/**
 * The extension, in a fixed order: rt, dvchost, externalId, cs1 site, cs2 device, cs3 dedupKey,
 * cs5 truncated when the text was cut; then from data: src and dst (IPv4; IPv6 goes in c6a2 and
 * c6a3, labelled), smac, spt (data.sport or spt), dpt (dport, dpt or port), proto, app, act
 * (verdict), deviceDirection (0 inbound, 1 outbound); last cs4 with every other data field as
 * JSON. Without src/dst in data, a flow's `peer` is src when it is inbound (the peer opened the
 * connection) and dst when outbound, its `deviceAddress` the other way round; else `source` (a
 * scan) or `address` (a host on the segment) is src, and `mac` smac. Those fields stay in cs4 too.
 */
export function cefExtension(event: EventPayload, hostname: string, opts: { withoutData?: boolean; truncated?: boolean } = {}): [string, string][] {
  const t = Date.parse(event.ts);
  const ext: [string, string][] = [];
  if (!Number.isNaN(t)) ext.push(['rt', String(t)]);
  ext.push(['dvchost', hostname], ['externalId', event.id], ['cs1Label', 'site'], ['cs1', event.site]);
  if (event.device !== undefined) ext.push(['cs2Label', 'device'], ['cs2', event.device]);
  ext.push(['cs3Label', 'dedupKey'], ['cs3', event.dedupKey]);
  if (opts.truncated) ext.push(['cs5Label', 'truncated'], ['cs5', 'true']);
  if (event.data === undefined || opts.withoutData) return ext;

  const data = event.data;
  const rest: Record<string, unknown> = Object.fromEntries(Object.entries(data).filter(([, v]) => v !== undefined));
  const take = <T>(keys: string[], ok: (v: unknown) => v is T): T | undefined => {
    for (const k of keys) {
      const v = data[k];
      if (ok(v)) {
        delete rest[k];
        return v;
      }
    }
    return undefined;
  };
  const isText = (v: unknown): v is string => typeof v === 'string' && v !== '';
  const isIp = (v: unknown): v is string => ipOf(v) !== undefined;

  const direction = take(['direction'], (v): v is 'inbound' | 'outbound' => v === 'inbound' || v === 'outbound');
  let src = take(['src'], isIp);
  let dst = take(['dst'], isIp);
  const peer = ipOf(data.peer);
  const deviceAddress = ipOf(data.deviceAddress);
  if (direction === 'inbound') {
    src ??= peer;
    dst ??= deviceAddress;
  } else if (direction === 'outbound') {
    src ??= deviceAddress;
    dst ??= peer;
  }
  // A scan's source (traffic.fanout), a host seen on the segment (device.new, device.mac-mismatch).
  src ??= ipOf(data.source) ?? ipOf(data.address);
  const smac = typeof data.mac === 'string' && MAC.test(data.mac) ? data.mac.toLowerCase() : undefined;
  if (src !== undefined && isIPv4(src)) ext.push(['src', src]);
  if (dst !== undefined && isIPv4(dst)) ext.push(['dst', dst]);
  if (src !== undefined && isIPv6(src)) ext.push(['c6a2Label', 'source'], ['c6a2', src]);
  if (dst !== undefined && isIPv6(dst)) ext.push(['c6a3Label', 'destination'], ['c6a3', dst]);
  if (smac !== undefined) ext.push(['smac', smac]);
  const spt = take(['sport', 'spt'], isPort);
  const dpt = take(['dport', 'dpt', 'port'], isPort);
  if (spt !== undefined) ext.push(['spt', String(spt)]);
  if (dpt !== undefined) ext.push(['dpt', String(dpt)]);
  for (const [key, from] of [['proto', 'proto'], ['app', 'app'], ['act', 'verdict']] as const) {
    const v = take([from], isText);
    if (v !== undefined) ext.push([key, v]);
  }
  if (direction !== undefined) ext.push(['deviceDirection', direction === 'inbound' ? '0' : '1']);
  if (Object.keys(rest).length > 0) ext.push(['cs4Label', 'data'], ['cs4', valueText(rest)]);
  return ext;
}

export interface CefOptions {
  /** dvchost: the same name as the syslog HOSTNAME. */
  hostname: string;
  /** Device Version: wardgate's version. */
  version: string;
  withoutData?: boolean;
  /** Add cs5Label=truncated cs5=true: the message (the Name field) was cut to fit. */
  truncated?: boolean;
}

export function formatCef(event: EventPayload, o: CefOptions): string {
  const head = ['CEF:0', 'wardgate', 'wardgate', o.version, event.kind, event.message].map((f, i) => (i === 0 ? f : escapeHeader(f)));
  const ext = cefExtension(event, o.hostname, o)
    .map(([k, v]) => `${k}=${escapeExtension(v)}`)
    .join(' ');
  return `${head.join('|')}|${CEF_SEVERITY[event.severity]}|${ext}`;
}
