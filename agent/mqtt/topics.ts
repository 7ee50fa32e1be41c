// The topic contract: every MQTT topic wardgate uses, and the payload each one carries. One zod
// schema per payload is its type and, through `wardgate mqtt schemas`, the JSON Schema that
// consoles validate against (docs/mqtt.md lists them). Every payload carries its schema name
// and version, the site and gateway ids, a timestamp and a unique id.
import { randomUUID } from 'node:crypto';
import { z } from 'zod';

export const TOPIC_ROOT = 'wardgate/v1';
export const SCHEMA_VERSION = 1;

const Envelope = {
  schema: z.string().describe('The payload schema, e.g. wardgate/v1/health'),
  schemaVersion: z.literal(SCHEMA_VERSION),
  site: z.string(),
  gateway: z.string(),
  ts: z.iso.datetime().describe('When the gateway produced the message (UTC)'),
  id: z.uuid().describe('Unique per message; consumers de-duplicate at-least-once delivery on it'),
};

export const StatusPayload = z.object({
  ...Envelope,
  state: z.enum(['online', 'offline']),
  bootId: z.string().describe('Changes at every start of the agent'),
  version: z.string(),
  policyHash: z.string().nullable().describe('sha256 of the committed policy; null before the first commit'),
  seq: z.number().int().min(0).describe('Session sequence number: increases at every (re)connection'),
  reason: z.string().optional().describe('offline: clean shutdown, or the last will after a lost connection'),
});

export const InterfaceVitals = z.object({
  role: z.enum(['uplink', 'device', 'management', 'bridge']),
  name: z.string(),
  present: z.boolean(),
  up: z.boolean(),
  speedMbps: z.number().nullable(),
  rxBytes: z.number(),
  txBytes: z.number(),
  rxErrors: z.number(),
  txErrors: z.number(),
  rxDropped: z.number(),
});

export const HealthPayload = z.object({
  ...Envelope,
  board: z.string().describe('The board profile in use'),
  uptimeSeconds: z.number(),
  load: z.tuple([z.number(), z.number(), z.number()]),
  cpuCount: z.number().int(),
  memory: z.object({ totalBytes: z.number(), availableBytes: z.number() }),
  disk: z.object({ path: z.string(), totalBytes: z.number(), freeBytes: z.number() }),
  temperatureC: z.number().nullable().describe('SoC temperature; null where the board has no sensor'),
  interfaces: z.array(InterfaceVitals),
  ruleset: z.object({
    kernel: z.string().describe('committed, pending, failsafe, drifted or absent'),
    policyHash: z.string().nullable(),
    accepted: z.number().describe('Packets let through by allow-list entries (set element counters)'),
    dropped: z.number().describe('Packets dropped by enforce and fail-closed rules'),
    monitored: z.number().describe('Packets a monitor-mode allow-list did not cover, logged and allowed'),
  }),
  agent: z.object({ version: z.string(), rssBytes: z.number(), pid: z.number() }),
  outbox: z.object({ depth: z.number(), bytes: z.number(), dropped: z.number() }),
  proxies: z
    .object({
      listening: z.array(z.string()).describe('"<device>:<port>" of every proxied port with a listener'),
      failed: z.array(z.string()).describe('Proxied ports whose listener could not start'),
      connections: z.number().describe('Proxied connections open now'),
      accepted: z.number().describe('Connections accepted since the proxy process started'),
      refused: z.number().describe('Connections refused by limits or because the peer is on no entry'),
      closedByFilter: z.number().describe('Connections the protocol filters closed (malformed, denied with onDeny close, oversize)'),
      restarts: z.number().describe('Times the proxy process was started again after it died'),
      rssBytes: z.number().nullable().describe('The proxy process\'s resident memory'),
    })
    .optional()
    .describe('The inline Modbus and DICOM proxies, when some allow entry has modbus or dicom rules'),
});

export const ProbeResult = z.object({
  type: z.enum(['tcp', 'icmp', 'modbus', 'dicom']),
  ok: z.boolean(),
  latencyMs: z.number().nullable(),
  error: z.string().optional(),
  detail: z.record(z.string(), z.unknown()).optional().describe('What the probe read: register values, device identification, ...'),
});

export const DeviceHealthPayload = z.object({
  ...Envelope,
  device: z.string(),
  class: z.string(),
  criticality: z.string(),
  state: z.enum(['up', 'degraded', 'down', 'unknown']),
  since: z.iso.datetime().describe('When the device entered this state'),
  probes: z.array(ProbeResult),
});

export const SEVERITIES = ['info', 'warning', 'critical'] as const;

export const EventPayload = z.object({
  ...Envelope,
  severity: z.enum(SEVERITIES),
  kind: z.string().describe('device.state, policy.rollback, command.refused, ...'),
  dedupKey: z.string().describe('Events with the same key describe the same condition'),
  message: z.string(),
  device: z.string().optional(),
  data: z.record(z.string(), z.unknown()).optional(),
});

export const CommandRequest = z.object({
  name: z.string(),
  args: z.record(z.string(), z.unknown()).default({}),
  site: z.string(),
  gateway: z.string(),
  nonce: z.string().min(16).max(128),
  issuedAt: z.iso.datetime(),
  expiresAt: z.iso.datetime(),
  keyId: z.string(),
  signature: z.string().describe('base64 Ed25519 signature of the canonical JSON of every other field'),
  replyTo: z.string().optional().describe('Response topic for MQTT 3.1.1 clients (MQTT 5 clients use the response topic property)'),
});
export type CommandRequest = z.infer<typeof CommandRequest>;

export const CommandResponsePayload = z.object({
  ...Envelope,
  command: z.string(),
  nonce: z.string().nullable().describe('The request\'s nonce, when it could be read'),
  ok: z.boolean(),
  result: z.unknown().optional(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
});

export const TOP_PEERS = 10;

const FlowCounts = z.object({ flows: z.number().int().min(0), bytes: z.number().min(0), packets: z.number().min(0) });

export const DeviceFlowSummary = z.object({
  device: z.string(),
  ...FlowCounts.shape,
  byApp: z.record(z.string(), FlowCounts).describe('By application protocol (DICOM, HL7, HTTPS, ...); "other" when the port names none'),
  byVerdict: z.record(z.string(), FlowCounts).describe('allowed, monitored, unmatched, denied'),
  topPeers: z
    .array(z.object({ peer: z.string(), peerGroup: z.string().optional(), ...FlowCounts.shape }))
    .max(TOP_PEERS)
    .describe(`The peers with the most bytes, at most ${TOP_PEERS}`),
});

export const FlowsSummaryPayload = z.object({
  ...Envelope,
  intervalStart: z.iso.datetime().describe('The summary counts the flows the agent recorded from this time...'),
  intervalEnd: z.iso.datetime().describe('...to this one (a flow is recorded when its connection ends)'),
  devices: z.array(DeviceFlowSummary).describe('Listed devices with at least one finished flow in the interval'),
});

export type StatusPayload = z.infer<typeof StatusPayload>;
export type HealthPayload = z.infer<typeof HealthPayload>;
export type DeviceHealthPayload = z.infer<typeof DeviceHealthPayload>;
export type EventPayload = z.infer<typeof EventPayload>;
export type CommandResponsePayload = z.infer<typeof CommandResponsePayload>;
export type FlowsSummaryPayload = z.infer<typeof FlowsSummaryPayload>;
export type DeviceFlowSummary = z.infer<typeof DeviceFlowSummary>;
export type ProbeResult = z.infer<typeof ProbeResult>;
export type Severity = (typeof SEVERITIES)[number];

/** Every payload schema by name, for `wardgate mqtt schemas` and the docs. */
export const PAYLOADS = {
  status: StatusPayload,
  health: HealthPayload,
  'device-health': DeviceHealthPayload,
  event: EventPayload,
  flows: FlowsSummaryPayload,
  'command-request': CommandRequest,
  'command-response': CommandResponsePayload,
} as const;

export function jsonSchemaOf(name: keyof typeof PAYLOADS): unknown {
  return { $id: `https://wardgate.dev/schema/v1/mqtt/${name}.json`, ...z.toJSONSchema(PAYLOADS[name], { io: 'output', unrepresentable: 'any' }) };
}

/** The topics of one gateway. */
export class Topics {
  readonly base: string;
  constructor(
    readonly site: string,
    readonly gateway: string,
  ) {
    this.base = `${TOPIC_ROOT}/${site}/${gateway}`;
  }
  status(): string {
    return `${this.base}/status`;
  }
  health(): string {
    return `${this.base}/health`;
  }
  deviceHealth(device: string): string {
    return `${this.base}/devices/${device}/health`;
  }
  events(): string {
    return `${this.base}/events`;
  }
  flows(): string {
    return `${this.base}/flows`;
  }
  command(name: string): string {
    return `${this.base}/cmd/${name}`;
  }
  /** Where answers go when the request names no response topic (MQTT 3.1.1 clients). */
  responses(): string {
    return `${this.base}/cmd-response`;
  }
  /** Subscriptions a console uses to follow every gateway of a site. */
  static siteWildcards(site: string): string[] {
    return [`${TOPIC_ROOT}/${site}/+/status`, `${TOPIC_ROOT}/${site}/+/health`, `${TOPIC_ROOT}/${site}/+/devices/+/health`, `${TOPIC_ROOT}/${site}/+/events`];
  }
}

/** Fills in the envelope of a payload. */
export function envelope<S extends string>(schema: S, site: string, gateway: string, now = new Date()) {
  return { schema: `${TOPIC_ROOT}/${schema}`, schemaVersion: SCHEMA_VERSION, site, gateway, ts: now.toISOString(), id: randomUUID() } as const;
}
