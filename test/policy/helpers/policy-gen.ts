// Random policies for the property tests: devices with IPv4 and/or IPv6 addresses in the device
// segments, peer groups and CIDRs drawn from small pools (so that entries overlap, and devices
// are each other's peers), port lists with crossing ranges, both modes, both fail modes.
// A policy is written as YAML and goes through the real loader, model and compiler.
import fc from 'fast-check';
import { stringify } from 'yaml';
import type { LoadedConfig, LoadedPolicy } from '../../../agent/config/load.js';
import { loadGatewayText, loadPolicyText } from '../../../agent/config/load.js';
import { formatDiagnostic } from '../../../agent/config/diagnostics.js';
import { compile, type CompiledRuleset } from '../../../agent/policy/compile.js';
import { buildModel, type Model } from '../../../agent/policy/model.js';
import { addr, addrInterval, addrText, canonicalV6, MAX, WIDTH, type Fam } from './addr.js';
import type { Packet, Proto } from './nft-eval.js';

export type PortSpec = number | string;

export interface GenEntry {
  peer: string;
  direction: 'inbound' | 'outbound';
  proto: Proto;
  ports?: PortSpec[];
}

export interface GenDevice {
  id: string;
  criticality: 'life-critical' | 'high' | 'medium' | 'low';
  failMode?: 'open' | 'closed';
  mode: 'monitor' | 'enforce';
  ipv4?: string;
  ipv6?: string;
  allow: GenEntry[];
}

export interface GenPolicy {
  mode: 'bridge' | 'router';
  gatewayInput: 'drop' | 'accept';
  failsafe: boolean;
  groups: Record<string, string[]>;
  devices: GenDevice[];
  /** Devices in one file or spread over two. */
  split: boolean;
}

export const SEGMENTS = ['10.20.0.0/24', 'fd00:20::/64'];
export const MANAGEMENT = ['10.99.0.0/24', 'fd00:99::/64'];

interface Pool {
  base: string;
  /** Shortest prefix inside the pool. */
  min: number;
}
const POOLS: Record<Fam, Pool[]> = {
  ipv4: [
    { base: '10.20.0.0', min: 28 }, // where the devices are: device-to-device entries
    { base: '10.20.0.0', min: 24 },
    { base: '10.10.0.0', min: 22 },
    { base: '192.0.2.0', min: 24 },
    { base: '10.99.0.0', min: 24 }, // management network
    { base: '192.0.2.64', min: 28 }, // dense: cuts into ranges that are not prefixes
    { base: '192.0.2.64', min: 28 },
  ],
  ipv6: [
    { base: 'fd00:20::', min: 124 },
    { base: 'fd00:20::', min: 120 },
    { base: 'fd00:10::', min: 112 },
    { base: '2001:db8::', min: 120 },
    { base: '2001:db8::40', min: 124 },
  ],
};
const WIDE: Record<Fam, string[]> = { ipv4: ['0.0.0.0/0', '10.0.0.0/8'], ipv6: ['::/0', 'fd00::/16'] };

function text(family: Fam, value: bigint, compress: boolean): string {
  return family === 'ipv6' && compress ? canonicalV6(value) : addrText(family, value);
}

export function cidrArb(family: Fam): fc.Arbitrary<string> {
  const W = WIDTH[family];
  const pooled = fc
    .record({
      pool: fc.nat(POOLS[family].length - 1),
      len: fc.oneof(fc.constant(-1), fc.nat(128)),
      off: fc.bigInt({ min: 0n, max: (1n << 32n) - 1n }),
      compress: fc.boolean(),
      slash: fc.boolean(),
    })
    .map(({ pool, len, off, compress, slash }) => {
      const p = POOLS[family][pool] as Pool;
      const prefix = len < 0 ? W : p.min + (len % (W - p.min + 1));
      const size = 1n << BigInt(W - p.min);
      const host = (1n << BigInt(W - prefix)) - 1n;
      const net = (addr(p.base).value + (off % size)) & ~host;
      const a = text(family, net, compress);
      return prefix === W && !slash ? a : `${a}/${prefix}`;
    });
  return fc.oneof({ weight: 12, arbitrary: pooled }, { weight: 1, arbitrary: fc.constantFrom(...WIDE[family]) });
}

const portSpecArb: fc.Arbitrary<PortSpec> = fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: 1, max: 24 }) },
  {
    weight: 4,
    arbitrary: fc.record({ lo: fc.integer({ min: 1, max: 24 }), len: fc.nat(8) }).map(({ lo, len }) => (len === 0 ? String(lo) : `${lo}-${lo + len}`)),
  },
  { weight: 1, arbitrary: fc.constantFrom<PortSpec>(65535, '65530-65535', 1, '1-2', '1-65535') },
);

// Entries and groups mostly draw their CIDRs and ports from a small per-policy palette, so that
// entries overlap (same peer, nested CIDRs, crossing port ranges) much more often than chance.
type Pick<T> = { ref: number } | { fresh: T };
const pick = <T>(fresh: fc.Arbitrary<T>): fc.Arbitrary<Pick<T>> =>
  fc.oneof({ weight: 3, arbitrary: fc.nat().map((ref) => ({ ref })) }, { weight: 1, arbitrary: fresh.map((v) => ({ fresh: v })) });
const resolve = <T>(palette: readonly T[], p: Pick<T>): T => ('ref' in p ? (palette[p.ref % palette.length] as T) : p.fresh);

const entryArb = fc.record({
  useGroup: fc.boolean(),
  group: fc.nat(),
  c4: pick(cidrArb('ipv4')),
  c6: pick(cidrArb('ipv6')),
  pickV4: fc.boolean(),
  direction: fc.constantFrom('inbound' as const, 'outbound' as const),
  proto: fc.oneof({ weight: 4, arbitrary: fc.constant('tcp' as const) }, { weight: 3, arbitrary: fc.constant('udp' as const) }, { weight: 2, arbitrary: fc.constant('icmp' as const) }),
  ports: fc.array(pick(portSpecArb), { minLength: 1, maxLength: 3 }),
});

const deviceArb = fc.record({
  fam: fc.constantFrom('v4', 'v6', 'both'),
  mode: fc.constantFrom('monitor' as const, 'enforce' as const),
  criticality: fc.constantFrom('life-critical' as const, 'high' as const, 'medium' as const, 'low' as const),
  failMode: fc.option(fc.constantFrom('open' as const, 'closed' as const), { nil: undefined }),
  idStyle: fc.nat(2),
  entries: fc.array(entryArb, { maxLength: 6 }),
});

const familiesOf = (members: readonly string[]) => new Set(members.map((m) => addrInterval(m).family));

export const policyArb: fc.Arbitrary<GenPolicy> = fc
  .record({
    mode: fc.constantFrom('bridge' as const, 'router' as const),
    gatewayInput: fc.constantFrom('drop' as const, 'accept' as const),
    failsafe: fc.oneof({ weight: 4, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
    palette4: fc.array(cidrArb('ipv4'), { minLength: 1, maxLength: 5 }),
    palette6: fc.array(cidrArb('ipv6'), { minLength: 1, maxLength: 5 }),
    portPalette: fc.array(portSpecArb, { minLength: 1, maxLength: 4 }),
    groups: fc.array(fc.array(fc.tuple(fc.boolean(), pick(cidrArb('ipv4')), pick(cidrArb('ipv6'))), { minLength: 1, maxLength: 4 }), { maxLength: 3 }),
    devices: fc.array(deviceArb, { minLength: 1, maxLength: 4 }),
    v4Hosts: fc.uniqueArray(fc.integer({ min: 1, max: 12 }), { minLength: 4, maxLength: 4 }),
    v6Hosts: fc.uniqueArray(fc.integer({ min: 1, max: 12 }), { minLength: 4, maxLength: 4 }),
    split: fc.boolean(),
  })
  .map((r): GenPolicy => {
    const groups: Record<string, string[]> = {};
    r.groups.forEach((members, i) => (groups[`g${i}`] = members.map(([v4, c4, c6]) => (v4 ? resolve(r.palette4, c4) : resolve(r.palette6, c6)))));
    const devices = r.devices.map((d, i): GenDevice => {
      const fams: Fam[] = d.fam === 'v4' ? ['ipv4'] : d.fam === 'v6' ? ['ipv6'] : ['ipv4', 'ipv6'];
      const eligible = Object.keys(groups).filter((g) => [...familiesOf(groups[g] ?? [])].some((f) => fams.includes(f)));
      const allow = d.entries.map((e): GenEntry => {
        const c4 = resolve(r.palette4, e.c4);
        const c6 = resolve(r.palette6, e.c6);
        let peer: string;
        if (e.useGroup && eligible.length > 0) peer = eligible[e.group % eligible.length] as string;
        else if (fams.length === 2) peer = e.pickV4 ? c4 : c6;
        else peer = fams[0] === 'ipv4' ? c4 : c6;
        const ports = e.ports.map((p) => resolve(r.portPalette, p));
        return { peer, direction: e.direction, proto: e.proto, ...(e.proto === 'icmp' ? {} : { ports }) };
      });
      const id = [`dev-${i}`, `${i}dev`, `ct-${i}-x`][d.idStyle] as string;
      return {
        id,
        criticality: d.criticality,
        ...(d.failMode ? { failMode: d.failMode } : {}),
        mode: d.mode,
        ...(fams.includes('ipv4') ? { ipv4: `10.20.0.${r.v4Hosts[i]}` } : {}),
        ...(fams.includes('ipv6') ? { ipv6: `fd00:20::${(r.v6Hosts[i] as number).toString(16)}` } : {}),
        allow,
      };
    });
    return { mode: r.mode, gatewayInput: r.gatewayInput, failsafe: r.failsafe, groups, devices, split: r.split };
  });

/** The gateway file and the policy files of a policy, as YAML text. */
export function policyFiles(p: GenPolicy): { gateway: string; rules: Record<string, string> } {
  const gateway = stringify({
    apiVersion: 'wardgate/v1',
    kind: 'Gateway',
    site: 'prop',
    gateway: 'gw-1',
    mode: p.mode,
    interfaces: { uplink: 'up0', device: 'dev0' },
    deviceSegments: SEGMENTS,
    management: { networks: MANAGEMENT },
    gatewayInput: p.gatewayInput,
    policies: ['rules/*.yaml'],
  });
  const device = (d: GenDevice) => ({ ...d, class: 'test-device' });
  const file = (body: object) => stringify({ apiVersion: 'wardgate/v1', kind: 'Policy', ...body });
  const rules: Record<string, string> = {};
  if (Object.keys(p.groups).length > 0) rules['00-groups.yaml'] = file({ groups: Object.fromEntries(Object.entries(p.groups).map(([k, m]) => [k, { members: m }])) });
  const half = p.split ? Math.ceil(p.devices.length / 2) : p.devices.length;
  rules['10-devices.yaml'] = file({ devices: p.devices.slice(0, half).map(device) });
  if (half < p.devices.length) rules['20-devices.yaml'] = file({ devices: p.devices.slice(half).map(device) });
  return { gateway, rules };
}

/** Loads, resolves and compiles a policy in memory, through the real loader. */
export function compilePolicy(p: GenPolicy, failsafe = p.failsafe): { model: Model; compiled: CompiledRuleset } {
  const files = policyFiles(p);
  const g = loadGatewayText('/prop/gateway.yaml', files.gateway, '/prop');
  if (!g.gateway) throw new Error(`generated gateway file refused:\n${g.diagnostics.map(formatDiagnostic).join('\n')}`);
  const policies: LoadedPolicy[] = [];
  for (const [name, textOf] of Object.entries(files.rules)) {
    const r = loadPolicyText(`rules/${name}`, `/prop/rules/${name}`, textOf);
    if (!r.policy) throw new Error(`generated policy refused:\n${r.diagnostics.map(formatDiagnostic).join('\n')}`);
    policies.push(r.policy);
  }
  const loaded: LoadedConfig = { gateway: g.gateway, policies, diagnostics: [] };
  const model = buildModel(loaded);
  return { model, compiled: compile(model, { version: '0.0.0-prop', failsafe }) };
}

// ---- packets ------------------------------------------------------------------------------

const ICMP_TYPES: Record<Fam, string[]> = {
  ipv4: ['echo-request', 'echo-reply', 'destination-unreachable'],
  ipv6: ['echo-request', 'echo-reply', 'nd-neighbor-solicit', 'nd-router-advert', 'packet-too-big'],
};

function parsePort(spec: PortSpec): [number, number] {
  if (typeof spec === 'number') return [spec, spec];
  const [lo, hi = lo] = spec.split('-').map(Number) as [number, number?];
  return [lo, hi];
}

/** Addresses and ports worth sending to: the devices, and the edges of every CIDR and range. */
export function interesting(p: GenPolicy): { devices: Record<Fam, bigint[]>; addrs: Record<Fam, bigint[]>; ports: number[] } {
  const devices: Record<Fam, bigint[]> = { ipv4: [], ipv6: [] };
  const addrs: Record<Fam, Set<bigint>> = { ipv4: new Set(), ipv6: new Set() };
  for (const d of p.devices) {
    if (d.ipv4) devices.ipv4.push(addr(d.ipv4).value);
    if (d.ipv6) devices.ipv6.push(addr(d.ipv6).value);
  }
  const cidrs = [...Object.values(p.groups).flat(), ...p.devices.flatMap((d) => d.allow.map((e) => e.peer).filter((x) => !(x in p.groups)))];
  for (const c of [...cidrs, ...MANAGEMENT]) {
    const r = addrInterval(c);
    for (const v of [r.lo - 1n, r.lo, r.lo + 1n, r.hi - 1n, r.hi, r.hi + 1n]) if (v >= 0n && v <= MAX[r.family]) addrs[r.family].add(v);
  }
  addrs.ipv4.add(addr('198.51.100.7').value);
  addrs.ipv6.add(addr('2001:db8:ffff::7').value);
  const ports = new Set([0, 1, 80, 65535]);
  for (const d of p.devices) {
    for (const e of d.allow) {
      for (const s of e.ports ?? []) {
        const [lo, hi] = parsePort(s);
        for (const v of [lo - 1, lo, hi, hi + 1]) if (v >= 0 && v <= 65535) ports.add(v);
      }
    }
  }
  return { devices, addrs: { ipv4: [...addrs.ipv4], ipv6: [...addrs.ipv6] }, ports: [...ports] };
}

export function packetArb(p: GenPolicy): fc.Arbitrary<Packet> {
  const i = interesting(p);
  const addrArb = (f: Fam) =>
    fc.oneof(
      { weight: i.devices[f].length > 0 ? 4 : 0, arbitrary: fc.constantFrom(...(i.devices[f].length > 0 ? i.devices[f] : [0n])) },
      { weight: 5, arbitrary: fc.constantFrom(...i.addrs[f]) },
      { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: MAX[f] }) },
    );
  const famArb = fc.constantFrom<Fam>('ipv4', 'ipv6');
  return fc
    .record({
      family: famArb,
      s4: addrArb('ipv4'),
      d4: addrArb('ipv4'),
      s6: addrArb('ipv6'),
      d6: addrArb('ipv6'),
      proto: fc.oneof({ weight: 4, arbitrary: fc.constant<Proto>('tcp') }, { weight: 3, arbitrary: fc.constant<Proto>('udp') }, { weight: 2, arbitrary: fc.constant<Proto>('icmp') }),
      dport: fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...i.ports) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 65535 }) }),
      icmp: fc.nat(),
    })
    .map((r): Packet => {
      const v4 = r.family === 'ipv4';
      const types = ICMP_TYPES[r.family];
      return {
        family: r.family,
        src: v4 ? r.s4 : r.s6,
        dst: v4 ? r.d4 : r.d6,
        proto: r.proto,
        dport: r.proto === 'icmp' ? 0 : r.dport,
        icmpType: r.proto === 'icmp' ? (types[r.icmp % types.length] as string) : '',
        ct: 'new',
      };
    });
}

export function packetText(p: Packet): string {
  const a = (v: bigint) => (p.family === 'ipv4' ? addrText('ipv4', v) : canonicalV6(v));
  const what = p.proto === 'icmp' ? `${p.family === 'ipv4' ? 'icmp' : 'icmpv6'} ${p.icmpType}` : `${p.proto} dport ${p.dport}`;
  return `${a(p.src)} -> ${a(p.dst)} ${what}`;
}

export { parsePort };
