// The allow-list model: policies resolved across files (groups expanded, ports parsed, devices
// checked against the gateway), ready to compile. Cross-file mistakes are found here.
import { createHash } from 'node:crypto';
import { dirname, resolve } from 'node:path';
import { ConfigError, formatPath, type Diagnostic, type SourceRef } from '../config/diagnostics.js';
import type { LoadedConfig } from '../config/load.js';
import type { AllowEntry, Device, GatewayConfig, PortSpec, ProbeConfig } from '../config/schema.js';
import { locate, type YamlSource } from '../config/yaml-source.js';
import type { DicomRules, ModbusRules, RtuLine } from '../protocols/schema.js';
import { contains, familyOf, parseAddress, parsePrefix, type AddrRange, type Family } from './net.js';

export type Direction = 'inbound' | 'outbound';
export type Proto = 'tcp' | 'udp' | 'icmp';
export type PortRange = readonly [number, number];

export interface ResolvedEntry {
  /** "<device>/allow[<i>]": how rules, counters and logs name the entry. */
  id: string;
  src: SourceRef;
  direction: Direction;
  proto: Proto;
  /** Empty for icmp. */
  ports: PortRange[];
  peer: string;
  /** The peer's addresses, both families; the compiler uses those of the device's families. */
  peers: AddrRange[];
  app?: AllowEntry['app'];
  /** Application rules: the entry's traffic goes through the inline proxy (docs/protocols.md). */
  modbus?: ModbusRules;
  dicom?: DicomRules;
  comment?: string;
}

/** A device port whose inbound connections the ruleset steers to an inline proxy. */
export interface ProxyTarget {
  /** "<device>:<port>": the listen-port assignment is keyed by it. */
  key: string;
  device: string;
  /** The port peers connect to on the device. */
  port: number;
  /** The port the proxy connects to on the device (differs only with DICOM TLS). */
  devicePort: number;
  app: 'modbus' | 'dicom';
  /** Whose rules apply to which peers: every inbound tcp entry covering the port. */
  entries: { id: string; peers: AddrRange[]; rules: ModbusRules | DicomRules | 'all' }[];
  /** DICOM TLS on the hospital side: absolute paths. */
  tls?: { cert: string; key: string; ca?: string };
  /**
   * The device is on a serial line (Modbus RTU): `port` is then the gateway's own port, which
   * peers connect to on the gateway's address (no redirect), and the proxy drives the line.
   */
  rtu?: RtuLine;
}

export interface ResolvedDevice {
  id: string;
  src: SourceRef;
  class: string;
  criticality: Device['criticality'];
  mode: Device['mode'];
  failMode: Device['failMode'];
  addresses: Partial<Record<Family, bigint>>;
  mac?: string;
  entries: ResolvedEntry[];
  probes: ProbeConfig[];
  silentAfterSeconds?: number;
  proxies: ProxyTarget[];
}

export interface Model {
  gateway: GatewayConfig;
  devices: ResolvedDevice[];
  management: AddrRange[];
  segments: AddrRange[];
  /** sha256 of the canonical configuration: what the ruleset was compiled from. */
  hash: string;
  warnings: Diagnostic[];
}

function ranges(cidrs: readonly string[]): AddrRange[] {
  return cidrs.flatMap((c) => {
    const r = parsePrefix(c);
    return r.ok ? [r.range] : [];
  });
}

export function parsePorts(specs: readonly PortSpec[]): PortRange[] {
  return specs.map((p) => {
    if (typeof p === 'number') return [p, p] as const;
    const [lo, hi = lo] = p.split('-').map(Number) as [number, number?];
    return [lo, hi] as const;
  });
}

/** Resolves and cross-checks loaded configuration. Throws ConfigError listing every error. */
export function buildModel(loaded: LoadedConfig): Model {
  const gw = loaded.gateway.config;
  const diags: Diagnostic[] = [];
  const at = (src: YamlSource, path: PropertyKey[], severity: Diagnostic['severity'], message: string, key?: string) =>
    diags.push({ ...locate(src, path, key), severity, field: formatPath(key ? [...path, key] : path), message });

  const segments = ranges(gw.deviceSegments);
  const management = ranges(gw.management.networks);

  // Peer groups are one namespace across all policy files.
  const groups = new Map<string, { members: AddrRange[]; src: SourceRef }>();
  for (const { source, policy } of loaded.policies) {
    for (const [name, group] of Object.entries(policy.groups)) {
      const prev = groups.get(name);
      if (prev) {
        at(source, ['groups'], 'error', `group "${name}" is already defined at ${prev.src.file}:${prev.src.line}`, name);
        continue;
      }
      groups.set(name, { members: ranges(group.members), src: locate(source, ['groups'], name) });
    }
  }

  const devices: ResolvedDevice[] = [];
  const ids = new Map<string, SourceRef>();
  const rtuPorts = new Map<number, string>(); // rtu.listenPort -> device id
  const rtuLines = new Map<string, { device: string; line: string }>(); // serial port -> its settings
  const owners = new Map<string, string>(); // address or MAC -> device id
  for (const { source, policy } of loaded.policies) {
    policy.devices.forEach((d, di) => {
      const base = ['devices', di];
      const src = locate(source, base);
      const prev = ids.get(d.id);
      if (prev) at(source, [...base, 'id'], 'error', `device id "${d.id}" is already used at ${prev.file}:${prev.line}`);
      else ids.set(d.id, src);

      const addresses: Partial<Record<Family, bigint>> = {};
      for (const family of ['ipv4', 'ipv6'] as const) {
        const text = d[family];
        if (text === undefined) continue;
        const parsed = parseAddress(text);
        if (!parsed) continue;
        addresses[family] = parsed.value;
        const host: AddrRange = { family, lo: parsed.value, hi: parsed.value };
        if (!segments.some((s) => contains(s, host))) {
          at(source, [...base, family], 'error', `${text} is outside the device segments (${gw.deviceSegments.join(', ')}) of the gateway file`);
        }
        if (management.some((m) => contains(m, host))) {
          at(source, [...base, family], 'error', `${text} lies in a management network; management networks are never segmented`);
        }
        const key = `${family}:${parsed.value}`;
        const other = owners.get(key);
        if (other) at(source, [...base, family], 'error', `${text} is already the address of device "${other}"`);
        else owners.set(key, d.id);
      }
      if (d.mac !== undefined) {
        const key = `mac:${d.mac.toLowerCase()}`;
        const other = owners.get(key);
        if (other) at(source, [...base, 'mac'], 'error', `${d.mac} is already the MAC of device "${other}"`);
        else owners.set(key, d.id);
      }
      if (d.ipv4 === undefined && d.ipv6 === undefined && d.rtu === undefined) {
        at(source, base, 'error', 'a device needs an ipv4 or an ipv6 address (or both), or an rtu block (a Modbus RTU device on a serial line)');
      }
      if (d.rtu !== undefined) checkRtu(d.id, d.rtu, gw, rtuPorts, rtuLines, (field, severity, message) => at(source, [...base, 'rtu', ...field], severity, message));
      if (d.criticality === 'life-critical' && d.failMode === 'closed') {
        at(source, [...base, 'failMode'], 'warning', 'a life-critical device with failMode closed is cut off when its policy cannot be enforced');
      }
      if (d.mode === 'enforce' && d.allow.length === 0) {
        at(source, [...base, 'mode'], 'warning', `device "${d.id}" enforces an empty allow-list: all its new connections are dropped`);
      }

      const entries: ResolvedEntry[] = [];
      d.allow.forEach((e, ei) => {
        const path = [...base, 'allow', ei];
        const before = diags.filter((x) => x.severity === 'error').length;
        if (e.proto === 'icmp' && e.ports !== undefined) {
          at(source, [...path, 'ports'], 'error', 'icmp has no ports; remove "ports" or use tcp or udp');
        }
        if (e.proto !== 'icmp' && (e.ports === undefined || e.ports.length === 0)) {
          at(source, path, 'error', `${e.proto} needs "ports" (a list of ports or "low-high" ranges)`);
        }
        let peers: AddrRange[] = [];
        if (familyOf(e.peer.split('/')[0] ?? '') !== undefined) {
          const r = parsePrefix(e.peer);
          if (!r.ok) at(source, [...path, 'peer'], 'error', r.reason);
          else peers = [r.range];
        } else {
          const g = groups.get(e.peer);
          if (!g) {
            const known = [...groups.keys()].sort().join(', ') || 'none defined';
            at(source, [...path, 'peer'], 'error', `unknown peer group "${e.peer}" (groups: ${known}); a peer is a group name, an address or a CIDR`);
          } else peers = g.members;
        }
        // An inbound tcp entry on the RTU gateway's port is for the gateway, which listens on both families.
        const rtuPort = d.rtu?.listenPort;
        const onRtu = rtuPort !== undefined && e.proto === 'tcp' && e.direction === 'inbound' && parsePorts(e.ports ?? []).some(([lo, hi]) => lo <= rtuPort && rtuPort <= hi);
        if (onRtu) {
          if (e.ports?.length !== 1 || parsePorts(e.ports)[0]?.[1] !== rtuPort) at(source, [...path, 'ports'], 'error', `port ${rtuPort} is ${d.id}'s RTU gateway port: an entry for it names that port alone (ports: [${rtuPort}])`);
          if (e.dicom !== undefined) at(source, [...path, 'dicom'], 'error', `port ${rtuPort} is ${d.id}'s RTU gateway port, which speaks Modbus: dicom rules cannot apply`);
        } else if (d.rtu !== undefined && d.ipv4 === undefined && d.ipv6 === undefined) {
          at(source, path, 'error', `${d.id} has no ipv4 or ipv6 address: it is reached only through its RTU gateway port, by inbound tcp entries with ports: [${d.rtu.listenPort}]`);
        }
        const families = Object.keys(addresses) as Family[];
        if (!onRtu && peers.length > 0 && families.length > 0 && !peers.some((p) => families.includes(p.family))) {
          at(source, [...path, 'peer'], 'error', `"${e.peer}" has no ${families.join(' or ')} address, the device's address family`);
        }
        if (peers.some((p) => p.lo === 0n && p.hi === (p.family === 'ipv4' ? 0xffffffffn : (1n << 128n) - 1n))) {
          at(source, [...path, 'peer'], 'warning', `"${e.peer}" allows any host`);
        }
        const appRules = e.modbus !== undefined ? 'modbus' : e.dicom !== undefined ? 'dicom' : undefined;
        if (e.modbus !== undefined && e.dicom !== undefined) at(source, [...path, 'dicom'], 'error', 'an entry carries modbus or dicom rules, not both');
        if (appRules !== undefined) {
          if (e.direction !== 'inbound') at(source, [...path, 'direction'], 'error', `${appRules} rules say what a peer may ask of the device: they apply to inbound entries only`);
          if (e.proto !== 'tcp') at(source, [...path, 'proto'], 'error', `${appRules} rules need proto tcp`);
          const wanted = appRules === 'modbus' ? 'Modbus' : 'DICOM';
          if (e.app !== undefined && e.app !== wanted) at(source, [...path, 'app'], 'error', `app ${e.app} disagrees with the entry's ${appRules} rules`);
          for (const [pi, p] of (e.ports ?? []).entries()) {
            if (typeof p === 'string' && p.includes('-')) at(source, [...path, 'ports', pi], 'error', `a proxied entry names single ports, not a range (${p}): the proxy listens once per port`);
          }
        }
        if (diags.filter((x) => x.severity === 'error').length > before) return;
        const policyDir = resolve(loaded.gateway.root, dirname(source.file));
        const dicom = e.dicom?.tls
          ? { ...e.dicom, tls: { ...e.dicom.tls, cert: resolve(policyDir, e.dicom.tls.cert), key: resolve(policyDir, e.dicom.tls.key), ...(e.dicom.tls.ca !== undefined ? { ca: resolve(policyDir, e.dicom.tls.ca) } : {}) } }
          : e.dicom;
        entries.push({
          id: `${d.id}/allow[${ei}]`,
          src: locate(source, path),
          direction: e.direction,
          proto: e.proto,
          ports: e.proto === 'icmp' ? [] : parsePorts(e.ports ?? []),
          peer: e.peer,
          peers,
          ...(e.app !== undefined ? { app: e.app } : appRules === 'modbus' ? { app: 'Modbus' as const } : appRules === 'dicom' ? { app: 'DICOM' as const } : {}),
          ...(e.modbus !== undefined ? { modbus: e.modbus } : {}),
          ...(dicom !== undefined ? { dicom } : {}),
          ...(e.comment !== undefined ? { comment: e.comment } : {}),
        });
      });
      const rtuEntries = d.rtu === undefined ? [] : entries.filter((e) => e.direction === 'inbound' && e.proto === 'tcp' && e.ports.some(([lo]) => lo === d.rtu?.listenPort));
      const proxies = proxyTargets(d.id, entries.filter((e) => !rtuEntries.includes(e)), (ei, field, message) => at(source, [...base, 'allow', ei, ...field], 'error', message));
      if (d.rtu !== undefined) {
        const { listenPort, ...line } = d.rtu;
        proxies.push({
          key: `${d.id}:rtu`,
          device: d.id,
          port: listenPort,
          devicePort: listenPort,
          app: 'modbus',
          entries: rtuEntries.map((e) => ({ id: e.id, peers: e.peers, rules: e.modbus ?? 'all' })),
          rtu: line,
        });
      }

      devices.push({
        id: d.id,
        src,
        class: d.class,
        criticality: d.criticality,
        mode: d.mode,
        failMode: d.failMode,
        addresses,
        ...(d.mac !== undefined ? { mac: d.mac.toLowerCase() } : {}),
        entries,
        probes: d.probes,
        ...(d.silentAfterSeconds !== undefined ? { silentAfterSeconds: d.silentAfterSeconds } : {}),
        proxies,
      });
    });
  }

  const all = [...loaded.diagnostics, ...diags];
  if (all.some((d) => d.severity === 'error')) throw new ConfigError(all);
  const canonical = JSON.stringify({
    gateway: gw,
    policies: loaded.policies.map((p) => ({ file: p.source.file, policy: p.policy })),
  });
  return {
    gateway: gw,
    devices,
    management,
    segments,
    hash: createHash('sha256').update(canonical).digest('hex'),
    warnings: all.filter((d) => d.severity === 'warning'),
  };
}

/**
 * An rtu block's cross-checks: its listen port is the gateway's own, so it must be free (not a
 * proxy listen port, not the embedded broker's, not another RTU device's, not ssh); devices that
 * share a serial line share its settings, since the line runs at one speed and framing.
 */
function checkRtu(
  device: string,
  rtu: NonNullable<Device['rtu']>,
  gw: GatewayConfig,
  ports: Map<number, string>,
  lines: Map<string, { device: string; line: string }>,
  report: (field: PropertyKey[], severity: Diagnostic['severity'], message: string) => void,
): void {
  const p = rtu.listenPort;
  const [lo, hi] = gw.protocols.listenPorts.split('-').map(Number) as [number, number];
  if (p >= lo && p <= hi) report(['listenPort'], 'error', `${p} is within protocols.listenPorts (${gw.protocols.listenPorts}), the proxies' redirect ports; choose a port outside it`);
  if (gw.mqtt?.embeddedBroker !== undefined && gw.mqtt.embeddedBroker.port === p) report(['listenPort'], 'error', `${p} is the embedded MQTT broker's port`);
  if (p === 22) report(['listenPort'], 'error', '22 is ssh: the RTU gateway port drops every peer not on its entries, management networks too');
  const other = ports.get(p);
  if (other !== undefined) report(['listenPort'], 'error', `${p} is already the RTU gateway port of device "${other}"`);
  else ports.set(p, device);
  const line = JSON.stringify({ baudRate: rtu.baudRate, parity: rtu.parity, dataBits: rtu.dataBits, stopBits: rtu.stopBits, responseTimeoutMs: rtu.responseTimeoutMs, turnaroundDelayMs: rtu.turnaroundDelayMs });
  const shared = lines.get(rtu.serialPort);
  if (shared === undefined) lines.set(rtu.serialPort, { device, line });
  else if (shared.line !== line) report(['serialPort'], 'error', `${rtu.serialPort} is also the line of device "${shared.device}" with other settings (${shared.line}); devices on one line share its settings`);
  if (rtu.parity === 'none' && rtu.stopBits === 1) report(['stopBits'], 'warning', 'no parity and 1 stop bit is 10 bits a character; Modbus over Serial Line 2.5.1 asks for 2 stop bits without parity: check the device\'s setting');
}

/**
 * The device ports that an entry with modbus or dicom rules proxies, each with every inbound tcp
 * entry covering that port (allow-lists add up: an entry without rules lets its peers ask
 * anything). Mistakes are reported against the entry that makes them.
 */
function proxyTargets(device: string, entries: readonly ResolvedEntry[], error: (entryIndex: number, field: PropertyKey[], message: string) => void): ProxyTarget[] {
  const indexOf = (e: ResolvedEntry) => Number(/\[(\d+)\]$/.exec(e.id)?.[1] ?? 0);
  const targets = new Map<number, ProxyTarget>();
  const firstBy = new Map<number, string>();
  for (const e of entries) {
    const app = e.modbus !== undefined ? 'modbus' : e.dicom !== undefined ? 'dicom' : undefined;
    if (app === undefined) continue;
    for (const [port] of e.ports) {
      const t = targets.get(port);
      if (t && t.app !== app) {
        error(indexOf(e), [app], `port ${port} of ${device} is proxied as ${t.app} by ${firstBy.get(port) ?? 'another entry'}; one port speaks one protocol`);
        continue;
      }
      const tls = e.dicom?.tls;
      if (t) {
        const a = JSON.stringify(t.tls ?? null);
        const b = JSON.stringify(tls ? { cert: tls.cert, key: tls.key, ...(tls.ca !== undefined ? { ca: tls.ca } : {}) } : null);
        if (a !== b) error(indexOf(e), ['dicom', 'tls'], `the entries proxying port ${port} of ${device} disagree on tls; give them the same tls block`);
        continue;
      }
      firstBy.set(port, e.id);
      targets.set(port, {
        key: `${device}:${port}`,
        device,
        port,
        devicePort: tls?.devicePort ?? port,
        app,
        entries: [],
        ...(tls ? { tls: { cert: tls.cert, key: tls.key, ...(tls.ca !== undefined ? { ca: tls.ca } : {}) } } : {}),
      });
    }
  }
  for (const t of targets.values()) {
    for (const e of entries) {
      if (e.direction !== 'inbound' || e.proto !== 'tcp' || !e.ports.some(([lo, hi]) => lo <= t.port && t.port <= hi)) continue;
      const rules = t.app === 'modbus' ? e.modbus : e.dicom;
      if (rules === undefined && (e.modbus !== undefined || e.dicom !== undefined)) continue; // reported above
      if (rules === undefined && t.tls) {
        error(indexOf(e), ['ports'], `port ${t.port} of ${device} is DICOM TLS in the proxy; this entry without dicom rules would expect plain traffic there`);
        continue;
      }
      t.entries.push({ id: e.id, peers: e.peers, rules: rules ?? 'all' });
    }
  }
  return [...targets.values()].sort((a, b) => a.port - b.port);
}
