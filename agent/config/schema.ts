// The gateway file and the policy files. One zod schema per file kind is the type, the
// defaults and (through z.toJSONSchema) the JSON Schema that editors use.
import { z } from 'zod';
import { familyOf, parsePrefix } from '../policy/net.js';
import { BackupDeviceSchema } from '../backup/schema.js';
import { BackupStoreSchema } from '../backup/schema-store.js';
import { DicomRulesSchema, ModbusRulesSchema, ProtocolsSchema, RtuSchema } from '../protocols/schema.js';
import { NodeRedSchema } from '../nodered/schema.js';

export const API_VERSION = 'wardgate/v1';

const Name = z
  .string()
  .regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'use 1-63 lowercase letters, digits and "-", starting with a letter or digit');

const IfName = z.string().regex(/^[A-Za-z0-9_.@-]{1,15}$/, 'not a Linux interface name (1-15 letters, digits, "_", ".", "-", "@")');

const Cidr = z.string().superRefine((value, ctx) => {
  const result = parsePrefix(value);
  if (!result.ok) ctx.addIssue({ code: 'custom', message: result.reason });
});

const IPv4 = z.string().refine((v) => familyOf(v) === 'ipv4', 'not an IPv4 address');
const IPv6 = z.string().refine((v) => familyOf(v) === 'ipv6', 'not an IPv6 address');
const Mac = z
  .string()
  .regex(/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/, 'not a MAC address (six hex pairs separated by ":")');

/** A port, or a range "low-high". */
export const PortSpec = z.union([
  z.number().int().min(1, 'port must be 1-65535').max(65535, 'port must be 1-65535'),
  z.string().superRefine((value, ctx) => {
    const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(value);
    if (!m) {
      ctx.addIssue({ code: 'custom', message: `"${value}" is not a port or a range "low-high"` });
      return;
    }
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (lo < 1 || hi > 65535 || lo > 65535) ctx.addIssue({ code: 'custom', message: `port ${value} is out of range (1-65535)` });
    else if (lo > hi) ctx.addIssue({ code: 'custom', message: `port range ${value} runs backwards` });
  }),
]);
export type PortSpec = z.infer<typeof PortSpec>;

const Seconds = (min: number, max: number, dflt: number) => z.number().int().min(min).max(max).default(dflt);

export const MqttSchema = z
  .object({
    url: z
      .string()
      .regex(/^(mqtt|mqtts|tcp|tls):\/\/[^\s/]+(:\d+)?\/?$/, 'an MQTT URL: mqtt://host:port or mqtts://host:port')
      .describe('The broker: mqtts:// for a remote broker (TLS), mqtt:// on loopback or the embedded broker'),
    protocolVersion: z.union([z.literal(5), z.literal(4)]).default(5).describe('5 (MQTT 5); 4 (3.1.1) for older brokers. 5 falls back to 4 by itself when the broker refuses it'),
    clientId: z.string().min(1).max(64).optional().describe('Defaults to wardgate-<site>-<gateway>; a wardgate broker accepts a gateway only with an id ending in -<gateway>'),
    username: z.string().optional(),
    passwordFile: z.string().optional().describe('A file holding the password (never the password itself); relative to the gateway file'),
    tls: z
      .object({
        ca: z.string().describe('CA certificate (PEM) that signed the broker\'s certificate; paths are relative to the gateway file'),
        cert: z.string().describe('This gateway\'s client certificate (PEM)'),
        key: z.string().describe('Its private key (PEM), mode 0600'),
        servername: z.string().optional(),
      })
      .strict()
      .optional(),
    keepaliveSeconds: Seconds(5, 3600, 30),
    reconnect: z
      .object({ minSeconds: Seconds(1, 60, 1), maxSeconds: Seconds(1, 3600, 60) })
      .strict()
      .default({ minSeconds: 1, maxSeconds: 60 })
      .describe('Exponential backoff with full jitter between these bounds'),
    embeddedBroker: z
      .object({
        port: z.number().int().min(1).max(65535).default(1883),
        host: z.string().default('127.0.0.1'),
        usersFile: z.string().optional().describe('Users for consoles and other clients: lines from `wardgate broker passwd`; the agent\'s own link needs none'),
        allowAnonymous: z.boolean().default(false).describe('Let clients without a username in, with console rights (read everything, publish commands). Demo only'),
        consoles: z.array(z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$/)).default([]).describe('Usernames with console rights; every other user may only write under its own gateway id'),
      })
      .strict()
      .optional()
      .describe('Run an aedes broker in the agent (a standalone gateway, the demo); url then points at it'),
  })
  .strict();
export type MqttConfig = z.infer<typeof MqttSchema>;

export const BOARDS = ['auto', 'raspberry-pi-4', 'raspberry-pi-5', 'generic-x86', 'revpi-connect-4'] as const;

export const HealthSchema = z
  .object({
    intervalSeconds: Seconds(5, 3600, 30).describe('How often gateway vitals are published'),
    board: z.enum(BOARDS).default('auto').describe('Board profile (hardware/boards); auto detects it'),
    rootPath: z.string().default('/').describe('Where /proc and /sys are read from (tests point it at fixture trees)'),
    watchdog: z.string().optional().describe('Hardware watchdog device, e.g. /dev/watchdog; off when absent'),
    statusLed: z.string().optional().describe('sysfs LED directory for the status LED, e.g. /sys/class/leds/ACT'),
  })
  .strict();

export const OutboxSchema = z
  .object({
    maxBytes: z.number().int().min(64 * 1024).max(1024 ** 3).default(16 * 1024 * 1024),
    maxMessages: z.number().int().min(10).max(1_000_000).default(10000),
    fsync: z.enum(['always', 'batch']).default('always').describe('always: fsync before a message counts as queued; batch: at most every 200 ms'),
  })
  .strict();

export const CommandsSchema = z
  .object({
    publicKeys: z
      .array(
        z
          .object({
            id: z.string().min(1).max(64),
            key: z.string().min(1).describe('Ed25519 public key: PEM (SPKI) or base64 of the 32 raw bytes'),
          })
          .strict(),
      )
      .default([])
      .describe('Console keys whose signed commands this gateway accepts'),
    maxSkewSeconds: Seconds(0, 3600, 300).describe('Clock skew tolerated on a command\'s issue time'),
    maxLifetimeSeconds: Seconds(1, 86400, 600).describe('Longest expiry a command may carry'),
  })
  .strict();

export const DetectionsSchema = z
  .object({
    dedupWindowSeconds: Seconds(1, 86400, 300).describe('An event with the same dedup key is raised at most once per window; repeats are counted into the next one'),
    maxEventsPerMinute: z.number().int().min(1).max(10000).default(60).describe('Detection events per minute across all kinds; the rest are counted into one detections.suppressed event'),
    fanout: z
      .object({
        windowSeconds: Seconds(1, 3600, 60),
        peers: z.number().int().min(2).max(100000).default(20).describe('Distinct destination addresses one source may open connections to per window'),
        ports: z.number().int().min(2).max(65536).default(20).describe('Distinct destination ports one source may try per window'),
      })
      .strict()
      .default({ windowSeconds: 60, peers: 20, ports: 20 })
      .describe('A source (a device, or a peer towards the devices) opening connections to many addresses or ports: a scan or a worm'),
    silentAfterSeconds: z
      .number()
      .int()
      .min(0)
      .max(30 * 86400)
      .default(0)
      .describe('Default for devices without silentAfterSeconds; 0: no silence detection'),
    neighbourIntervalSeconds: Seconds(0, 3600, 30).describe('How often the device segment\'s neighbour table (router) or forwarding database (bridge) is read for new devices; 0: never'),
    ouiDir: z.string().min(1).default('/usr/share/ieee-data').describe('The IEEE registries (Debian package ieee-data) that name the vendor of a new MAC'),
  })
  .strict();

export const TrafficSchema = z
  .object({
    enabled: z
      .boolean()
      .optional()
      .describe('Record flows from conntrack in the flow log and publish flows summaries; defaults to on with the nftables backend (off with dry-run)'),
    diskBudgetBytes: z
      .number()
      .int()
      .min(64 * 1024)
      .max(64 * 1024 ** 3)
      .default(64 * 1024 * 1024)
      .describe('Most disk the flow log (<stateDir>/flows/) may take, all its rotated files together'),
    files: z.number().int().min(1).max(100).default(8).describe('How many files the budget is split into (each at most diskBudgetBytes / files)'),
    summaryIntervalSeconds: Seconds(1, 3600, 60).describe('How often a flows summary (per device: flows, bytes, packets, apps, verdicts, top peers) is published'),
    detections: DetectionsSchema.default(DetectionsSchema.parse({})).describe('Events for what breaks the baseline (docs/detections.md)'),
  })
  .strict();

// The names are rsyslog's; agent/export/rfc5424.ts holds their codes (RFC 5424 6.2.1).
export const FACILITIES = ['kern', 'user', 'mail', 'daemon', 'auth', 'syslog', 'lpr', 'news', 'uucp', 'cron', 'authpriv', 'ftp', 'ntp', 'security', 'console', 'solaris-cron', 'local0', 'local1', 'local2', 'local3', 'local4', 'local5', 'local6', 'local7'] as const;

export const SyslogSchema = z
  .object({
    host: z.string().regex(/^[A-Za-z0-9.:_-]{1,253}$/, 'a host name or an IPv4/IPv6 address').describe('The collector (rsyslog, syslog-ng, a SIEM\'s syslog input)'),
    port: z.number().int().min(1).max(65535).optional().describe('Defaults to 514 for udp and tcp, 6514 for tls (RFC 5425)'),
    transport: z.enum(['udp', 'tcp', 'tls']).default('tls').describe('tls (RFC 5425) needs tls.ca; tcp uses the same octet-counting framing (RFC 6587 3.4.1) in clear; udp is one datagram per message (RFC 5426)'),
    format: z.enum(['rfc5424', 'cef']).default('rfc5424').describe('rfc5424: the event in structured data; cef: MSG is an ArcSight CEF line'),
    facility: z.enum(FACILITIES).default('local4'),
    hostname: z
      .string()
      .regex(/^[\x21-\x7e]{1,255}$/, '1-255 printable ASCII characters, no spaces')
      .default('gateway')
      .describe('HOSTNAME of every message: "gateway" sends the gateway id, "os" the host name of the box, anything else is sent as it is'),
    minSeverity: z.enum(['info', 'warning', 'critical']).default('info').describe('Events below this severity are not sent'),
    queueSize: z.number().int().min(1).max(100000).default(1000).describe('Messages held in memory while the collector is unreachable; when full, the oldest of the lowest severity goes first'),
    maxMessageBytes: z
      .number()
      .int()
      .min(480)
      .max(65507)
      .optional()
      .describe('Longest message; longer ones are cut (the text first). Defaults to 2048 for udp (RFC 5426 6.1), 8192 for tcp and tls (RFC 5425 4.3.1)'),
    tls: z
      .object({
        ca: z.string().min(1).describe('CA certificate (PEM) that signed the collector\'s certificate; relative to the gateway file'),
        cert: z.string().min(1).optional().describe('Client certificate (PEM), for collectors that ask for one'),
        key: z.string().min(1).optional().describe('Its private key (PEM), mode 0600'),
        serverName: z.string().min(1).optional().describe('The name the collector\'s certificate must carry; defaults to host'),
      })
      .strict()
      .optional(),
    reconnect: z
      .object({ minSeconds: Seconds(1, 60, 1), maxSeconds: Seconds(1, 3600, 60) })
      .strict()
      .default({ minSeconds: 1, maxSeconds: 60 })
      .describe('tcp and tls: exponential backoff with full jitter between these bounds'),
  })
  .strict()
  .superRefine((s, ctx) => {
    if (s.transport === 'tls' && s.tls === undefined) ctx.addIssue({ code: 'custom', path: ['transport'], message: 'transport tls (the default) needs tls.ca, the CA that signed the collector\'s certificate' });
    if (s.transport !== 'tls' && s.tls !== undefined) ctx.addIssue({ code: 'custom', path: ['tls'], message: `tls settings apply only to transport tls, and transport is ${s.transport}` });
    if (s.tls && (s.tls.cert === undefined) !== (s.tls.key === undefined)) ctx.addIssue({ code: 'custom', path: ['tls', s.tls.cert === undefined ? 'key' : 'cert'], message: 'tls.cert and tls.key go together' });
    if (s.reconnect.minSeconds > s.reconnect.maxSeconds) ctx.addIssue({ code: 'custom', path: ['reconnect', 'minSeconds'], message: 'minSeconds is above maxSeconds' });
  });
export type SyslogConfig = z.infer<typeof SyslogSchema>;

export const SiemSchema = z
  .object({
    syslog: SyslogSchema.optional().describe('Events as RFC 5424 syslog (or CEF) to a collector: docs/siem.md'),
  })
  .strict();

export const GatewaySchema = z
  .object({
    apiVersion: z.literal(API_VERSION),
    kind: z.literal('Gateway'),
    site: Name.describe('Site (hospital, building) this gateway belongs to; part of every MQTT topic'),
    gateway: Name.describe('This gateway\'s id, unique within the site'),
    mode: z
      .enum(['bridge', 'router'])
      .describe('bridge: bump in the wire on a Linux bridge (br_netfilter); router: devices on their own subnet'),
    interfaces: z
      .object({
        uplink: IfName.describe('Towards the hospital network'),
        device: IfName.describe('Towards the protected devices'),
        management: IfName.optional().describe('Out-of-band management port, if any'),
        bridge: IfName.optional().describe('The bridge joining uplink and device ports (bridge mode)'),
      })
      .strict(),
    deviceSegments: z
      .array(Cidr)
      .min(1)
      .describe('Networks the protected devices live on; every device address must lie in one'),
    management: z
      .object({
        networks: z
          .array(Cidr)
          .min(1)
          .describe('Networks that always reach the gateway itself; never locked out by any policy'),
      })
      .strict(),
    gatewayInput: z
      .enum(['drop', 'accept'])
      .default('drop')
      .describe('What other traffic to the gateway itself meets (management networks are always accepted)'),
    stateDir: z.string().min(1).default('/var/lib/wardgate').describe('Where committed rulesets and state are kept'),
    nflogGroup: z.number().int().min(0).max(65535).default(10).describe('NFLOG group that denied and monitored packets go to'),
    logRate: z
      .number()
      .int()
      .min(1)
      .max(100000)
      .default(100)
      .describe('Packets per second per device and direction sent to NFLOG; the rest are still counted'),
    policies: z
      .array(z.string().min(1))
      .min(1)
      .default(['rules/*.yaml'])
      .describe('Policy files or globs (a single "*" in the file name), relative to the gateway file'),
    commitConfirm: z
      .object({
        timeoutSeconds: z.number().int().min(10).max(3600).default(120),
      })
      .strict()
      .default({ timeoutSeconds: 120 })
      .describe('A ruleset that is not confirmed within the window is rolled back by itself'),
    mqtt: MqttSchema.optional().describe('The link to central consoles; without it the gateway reports nothing'),
    health: HealthSchema.default(HealthSchema.parse({})),
    outbox: OutboxSchema.default(OutboxSchema.parse({})),
    commands: CommandsSchema.default(CommandsSchema.parse({})),
    traffic: TrafficSchema.default(TrafficSchema.parse({})).describe('The flow log and its summaries (issue 4)'),
    siem: SiemSchema.optional().describe('Export of events to a SIEM'),
    backup: BackupStoreSchema.default(BackupStoreSchema.parse({})).describe('The configuration backup store: data key, budget, retention (docs/backups.md)'),
    protocols: ProtocolsSchema.default(ProtocolsSchema.parse({})).describe('The inline Modbus and DICOM proxies that enforce allow entries with modbus: or dicom: rules (docs/protocols.md)'),
    nodeRed: NodeRedSchema.optional().describe('Node-RED on the gateway, for local flows that raise wardgate events (docs/nodered.md); not run without this block'),
  })
  .strict();
export type GatewayConfig = z.infer<typeof GatewaySchema>;

/** Application protocols an allow entry can name (the flow log knows them by well-known port). */
export const APPS = ['DICOM', 'HL7', 'Modbus', 'HTTPS', 'DNS', 'NTP', 'SSH'] as const;

export const AllowEntrySchema = z
  .object({
    peer: z
      .string()
      .min(1)
      .describe('A peer group name, an IPv4/IPv6 address or a CIDR'),
    direction: z
      .enum(['inbound', 'outbound'])
      .describe('inbound: the peer opens the connection to the device; outbound: the device opens it to the peer'),
    proto: z.enum(['tcp', 'udp', 'icmp']),
    ports: z
      .array(PortSpec)
      .optional()
      .describe('Destination ports of the opening packet (required for tcp and udp, not allowed for icmp)'),
    app: z
      .enum(APPS)
      .optional()
      .describe('The application protocol the entry carries, where its port is not the well-known one (HL7 on 2576); the data-flow map marks DICOM and HL7 as patient data'),
    modbus: ModbusRulesSchema.optional().describe('What the peer may ask of the device over Modbus TCP: enforced by the inline proxy (docs/protocols.md)'),
    dicom: DicomRulesSchema.optional().describe('Which associations and DIMSE commands the peer may open on the device: enforced by the inline proxy (docs/protocols.md)'),
    comment: z.string().max(200).optional(),
  })
  .strict();
export type AllowEntry = z.infer<typeof AllowEntrySchema>;

const ProbeCommon = {
  intervalSeconds: Seconds(1, 3600, 30),
  timeoutMs: z.number().int().min(50).max(60000).default(2000),
  failuresToDown: z.number().int().min(1).max(100).default(3).describe('Consecutive failures before the probe counts as failing'),
  successesToUp: z.number().int().min(1).max(100).default(2).describe('Consecutive successes before it counts as passing again'),
};

export const ProbeSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('tcp'), port: z.number().int().min(1).max(65535), ...ProbeCommon }).strict(),
  z.object({ type: z.literal('icmp'), ...ProbeCommon }).strict(),
  z
    .object({
      type: z.literal('modbus'),
      port: z.number().int().min(1).max(65535).default(502),
      unitId: z.number().int().min(0).max(255).default(1),
      read: z
        .object({
          kind: z.enum(['holding', 'input', 'coils', 'discrete']).default('holding'),
          address: z.number().int().min(0).max(65535),
          count: z.number().int().min(1).max(125).default(1),
        })
        .strict()
        .optional()
        .describe('A register range to read; without it, device identification (function 43/14)'),
      ...ProbeCommon,
    })
    .strict(),
  z
    .object({
      type: z.literal('dicom'),
      port: z.number().int().min(1).max(65535).default(104),
      calledAe: z.string().min(1).max(16),
      callingAe: z.string().min(1).max(16).default('WARDGATE'),
      ...ProbeCommon,
    })
    .strict(),
]);
export type ProbeConfig = z.infer<typeof ProbeSchema>;

export const CRITICALITIES = ['life-critical', 'high', 'medium', 'low'] as const;

export const DeviceSchema = z
  .object({
    id: Name,
    description: z.string().optional(),
    class: z.string().min(1).describe('Device class, for example ct-modality or infusion-pump-server'),
    criticality: z.enum(CRITICALITIES),
    failMode: z
      .enum(['open', 'closed'])
      .optional()
      .describe('What the device meets when the committed policy cannot be enforced; defaults to open for life-critical devices, closed otherwise'),
    mode: z
      .enum(['monitor', 'enforce'])
      .default('monitor')
      .describe('monitor: log and allow what the allow-list does not cover; enforce: drop it'),
    ipv4: IPv4.optional(),
    ipv6: IPv6.optional(),
    mac: Mac.optional(),
    rtu: RtuSchema.optional().describe('A Modbus RTU device on a serial line behind the gateway, reached on the gateway\'s own port rtu.listenPort (docs/protocols.md)'),
    owner: z.string().optional().describe('Team responsible for the device'),
    sbom: z.string().optional().describe('Reference to the manufacturer\'s SBOM'),
    mds2: z.string().optional().describe('Reference to the manufacturer\'s MDS2 form'),
    allow: z.array(AllowEntrySchema).default([]),
    probes: z.array(ProbeSchema).default([]).describe('How the gateway checks that the device is alive'),
    silentAfterSeconds: z
      .number()
      .int()
      .min(60)
      .max(30 * 86400)
      .optional()
      .describe('Raise device.silent when no traffic of the device is seen for this long (default: traffic.detections.silentAfterSeconds)'),
    backup: BackupDeviceSchema.optional().describe('How the device\'s configuration is backed up (docs/backup-drivers.md)'),
  })
  .strict()
  .transform((d) => ({ ...d, failMode: d.failMode ?? (d.criticality === 'life-critical' ? 'open' : 'closed') }));
export type Device = z.infer<typeof DeviceSchema>;

export const PeerGroupSchema = z
  .object({
    description: z.string().optional(),
    members: z.array(Cidr).min(1).describe('Hosts and networks (IPv4 or IPv6)'),
  })
  .strict();

export const PolicySchema = z
  .object({
    apiVersion: z.literal(API_VERSION),
    kind: z.literal('Policy'),
    groups: z.record(Name, PeerGroupSchema).default({}),
    devices: z.array(DeviceSchema).default([]),
  })
  .strict();
export type PolicyFile = z.infer<typeof PolicySchema>;

/** JSON Schemas for editors (yaml-language-server, VS Code). */
export function jsonSchemas(): { gateway: unknown; policy: unknown } {
  const opts = { io: 'input', unrepresentable: 'any' } as const;
  return {
    gateway: { $id: 'https://wardgate.dev/schema/v1/gateway.json', ...z.toJSONSchema(GatewaySchema, opts) },
    policy: { $id: 'https://wardgate.dev/schema/v1/policy.json', ...z.toJSONSchema(PolicySchema, opts) },
  };
}
