// The gateway file and the policy files. One zod schema per file kind is the type, the
// defaults and (through z.toJSONSchema) the JSON Schema that editors use.
import { z } from 'zod';
import { familyOf, parsePrefix } from '../policy/net.js';

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
  })
  .strict();
export type GatewayConfig = z.infer<typeof GatewaySchema>;

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
    comment: z.string().max(200).optional(),
  })
  .strict();
export type AllowEntry = z.infer<typeof AllowEntrySchema>;

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
    owner: z.string().optional().describe('Team responsible for the device'),
    sbom: z.string().optional().describe('Reference to the manufacturer\'s SBOM'),
    mds2: z.string().optional().describe('Reference to the manufacturer\'s MDS2 form'),
    allow: z.array(AllowEntrySchema).default([]),
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
