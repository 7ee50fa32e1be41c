// Compiles the model to the whole text of one nftables table, `inet wardgate`. A pure function:
// the same model gives the same text, and nothing outside that table is ever named.
//
// Packet cost does not grow with the number of entries: a packet meets the established fast
// path, then at most two verdict-map lookups (its source device's outbound chain, its
// destination device's inbound chain), and in each chain a handful of set lookups on
// (peer . protocol . port) concatenations.
import type { SourceRef } from '../config/diagnostics.js';
import { disjointBoxes, type Box } from './disjoint.js';
import type { Model, ProxyTarget, ResolvedDevice, ResolvedEntry } from './model.js';
import { formatAddress, formatRange, type Family } from './net.js';

export const TABLE = 'wardgate';
export const FAMILY = 'inet';

export interface CompileOptions {
  /** wardgate's version, written into the header. */
  version: string;
  /**
   * The fail-safe variant, loaded when the committed ruleset cannot be: devices with
   * failMode open pass everything (logged), devices with failMode closed pass nothing.
   */
  failsafe?: boolean;
  /**
   * The local port each proxied device port ("<device>:<port>") is redirected to
   * (protocols/ports.ts keeps them stable across policies). Without it they are numbered from
   * the start of protocols.listenPorts, which is right only for a gateway that never had one.
   */
  listenPorts?: ReadonlyMap<string, number>;
}

/** The set the agent keeps filled, while its proxies run, with the fail-open devices' proxied ports. */
export const PROXY_ALIVE = { ipv4: 'proxy_alive_v4', ipv6: 'proxy_alive_v6' } as const;

/** What produced a line of the ruleset: nft's errors are mapped back to it. */
export interface LineSource {
  what: string;
  src?: SourceRef;
}

export interface CompiledRuleset {
  text: string;
  /** 1-based line number of `text` -> the configuration that line came from. */
  lines: Map<number, LineSource>;
  /** Number of allow entries and of set elements generated for them. */
  stats: { devices: number; entries: number; elements: number };
}

const quote = (s: string) => `"${s.replace(/["\\]/g, '').slice(0, 120)}"`;
// nft names start with a letter or "_"; a device id may start with a digit ("_" keeps it unique).
const ident = (id: string) => `${/^[0-9]/.test(id) ? '_' : ''}${id.replace(/-/g, '_')}`;
const where = (src: SourceRef) => `${src.file}:${src.line}`;
const IP = { ipv4: 'ip', ipv6: 'ip6' } as const;
const ADDR = { ipv4: 'ipv4_addr', ipv6: 'ipv6_addr' } as const;
const ECHO = { ipv4: 'icmp type echo-request', ipv6: 'icmpv6 type echo-request' } as const;
const FAMILIES: Family[] = ['ipv4', 'ipv6'];
const V = { ipv4: 'v4', ipv6: 'v6' } as const;

class Emitter {
  readonly out: string[] = [];
  readonly lines = new Map<number, LineSource>();
  line(text: string, source?: LineSource): void {
    this.out.push(text);
    if (source) this.lines.set(this.out.length, source);
  }
}

function portText([lo, hi]: readonly [number, number]): string {
  return lo === hi ? String(lo) : `${lo}-${hi}`;
}

function elementComment(labels: readonly string[]): string {
  let text = labels.join(', ');
  if (text.length > 120) text = `${labels.slice(0, 3).join(', ')} +${labels.length - 3} more`;
  return quote(text);
}

interface DeviceSets {
  name: string;
  family: Family;
  icmp: boolean;
  elements: { text: string; labels: string[] }[];
}

/** The set elements of one device, direction and family, disjoint and labelled by entry. */
function deviceSets(dev: ResolvedDevice, direction: 'inbound' | 'outbound'): DeviceSets[] {
  const sets: DeviceSets[] = [];
  // Entries for the RTU gateway's port are the gateway's (rtuInput), not the device address's.
  const rtu = new Set(dev.proxies.flatMap((p) => (p.rtu ? p.entries.map((x) => x.id) : [])));
  const entries = dev.entries.filter((e) => e.direction === direction && !rtu.has(e.id));
  const dir = direction === 'inbound' ? 'in' : 'out';
  for (const family of FAMILIES) {
    if (dev.addresses[family] === undefined) continue;
    const boxesOf = (pick: (e: ResolvedEntry) => boolean, ports: (e: ResolvedEntry) => readonly (readonly [number, number])[]) =>
      entries.filter(pick).flatMap((e) =>
        e.peers.filter((p) => p.family === family).flatMap((p) =>
          ports(e).map((r): Box => ({ lo: p.lo, hi: p.hi, plo: r[0], phi: r[1], labels: [e.id] })),
        ),
      );
    for (const proto of ['tcp', 'udp'] as const) {
      const boxes = disjointBoxes(boxesOf((e) => e.proto === proto, (e) => e.ports));
      if (boxes.length === 0) continue;
      let set = sets.find((s) => s.name === `${ident(dev.id)}_${dir}_${V[family]}`);
      if (!set) {
        set = { name: `${ident(dev.id)}_${dir}_${V[family]}`, family, icmp: false, elements: [] };
        sets.push(set);
      }
      for (const b of boxes) {
        set.elements.push({
          text: `${formatRange({ family, lo: b.lo, hi: b.hi })} . ${proto} . ${portText([b.plo, b.phi])}`,
          labels: b.labels,
        });
      }
    }
    const icmp = disjointBoxes(boxesOf((e) => e.proto === 'icmp', () => [[0, 0]]));
    if (icmp.length > 0) {
      sets.push({
        name: `${ident(dev.id)}_${dir}_icmp_${V[family]}`,
        family,
        icmp: true,
        elements: icmp.map((b) => ({ text: formatRange({ family, lo: b.lo, hi: b.hi }), labels: b.labels })),
      });
    }
  }
  return sets;
}

export function compile(model: Model, opts: CompileOptions): CompiledRuleset {
  const g = model.gateway;
  const e = new Emitter();
  const failsafe = opts.failsafe === true;
  let elements = 0;

  e.line(`# wardgate ${opts.version}: ${failsafe ? 'FAIL-SAFE ruleset' : 'ruleset'} for ${g.site}/${g.gateway} (${g.mode} mode)`);
  e.line(`# policy sha256:${model.hash}`);
  e.line('# Generated: do not edit. Loaded whole with nft -f, which replaces the table atomically.');
  e.line(`table ${FAMILY} ${TABLE}`);
  e.line(`delete table ${FAMILY} ${TABLE}`);
  e.line(`table ${FAMILY} ${TABLE} {`);
  e.line(`\tcomment ${quote(`wardgate ${g.site}/${g.gateway} policy ${model.hash.slice(0, 16)}${failsafe ? ' FAIL-SAFE' : ''}`)}`);

  const mgmtSource: LineSource = { what: 'gateway.yaml management.networks' };
  for (const family of FAMILIES) {
    const nets = model.management.filter((m) => m.family === family);
    if (nets.length === 0) continue;
    e.line(`\tset mgmt_${V[family]} {`, mgmtSource);
    e.line(`\t\ttype ${ADDR[family]}; flags interval; auto-merge`);
    e.line(`\t\telements = { ${nets.map(formatRange).join(', ')} }`, mgmtSource);
    e.line('\t}');
  }

  // Dispatch maps: device address -> that device's chain.
  for (const [dir, key] of [['in', 'daddr'], ['out', 'saddr']] as const) {
    for (const family of FAMILIES) {
      const devs = model.devices.filter((d) => d.addresses[family] !== undefined);
      if (devs.length === 0) continue;
      e.line(`\tmap ${dir}_${V[family]} {`, { what: `dispatch on ${IP[family]} ${key} to device chains` });
      e.line(`\t\ttype ${ADDR[family]} : verdict`);
      e.line('\t\telements = {');
      devs.forEach((d, i) => {
        const sep = i === devs.length - 1 ? '' : ',';
        e.line(`\t\t\t${formatAddress(family, d.addresses[family] as bigint)} : jump dev_${ident(d.id)}_${dir}${sep}`, {
          what: `device ${d.id}`,
          src: d.src,
        });
      });
      e.line('\t\t}');
      e.line('\t}');
    }
  }

  for (const dev of model.devices) {
    // A device on a serial line only has no address to dispatch on: no chains.
    if (!FAMILIES.some((f) => dev.addresses[f] !== undefined)) continue;
    const devSource: LineSource = { what: `device ${dev.id}`, src: dev.src };
    for (const direction of ['inbound', 'outbound'] as const) {
      const dir = direction === 'inbound' ? 'in' : 'out';
      const peerKey = direction === 'inbound' ? 'saddr' : 'daddr';
      const sets = failsafe ? [] : deviceSets(dev, direction);
      for (const s of sets) {
        e.line(`\tset ${s.name} {`, devSource);
        e.line(`\t\ttype ${ADDR[s.family]}${s.icmp ? '' : ' . inet_proto . inet_service'}; flags interval; counter`);
        e.line('\t\telements = {');
        s.elements.forEach((el, i) => {
          const sep = i === s.elements.length - 1 ? '' : ',';
          const entry = dev.entries.find((x) => x.id === el.labels[0]);
          e.line(`\t\t\t${el.text} counter comment ${elementComment(el.labels)}${sep}`, {
            what: `allow entry ${el.labels.join(', ')}`,
            ...(entry ? { src: entry.src } : {}),
          });
        });
        elements += s.elements.length;
        e.line('\t\t}');
        e.line('\t}');
      }

      e.line(`\tchain dev_${ident(dev.id)}_${dir} {`, devSource);
      for (const s of sets) {
        const match = s.icmp
          ? `${ECHO[s.family]} ${IP[s.family]} ${peerKey} @${s.name}`
          : `${IP[s.family]} ${peerKey} . meta l4proto . th dport @${s.name}`;
        e.line(
          `\t\t${match} counter return comment ${quote(`${dev.id} ${direction} allow-list${s.icmp ? ' (echo)' : ''}, ${where(dev.src)}`)}`,
          devSource,
        );
      }
      const prefix = (verdict: string) => quote(`wg ${verdict} ${dev.id} ${dir} `);
      // queue-threshold 1: the kernel hands each logged packet to the reader at once, instead of
      // batching up to 100 for up to a second (a packet still batched when the reader stops is lost).
      const logRule = (verdict: string) =>
        `\t\tlimit rate ${g.logRate}/second burst ${g.logRate * 2} packets counter log group ${g.nflogGroup} queue-threshold 1 prefix ${prefix(verdict)} comment ${quote(`${dev.id} ${direction}: ${verdict} sent to NFLOG ${g.nflogGroup}`)}`;
      if (failsafe) {
        const verdict = dev.failMode === 'open' ? 'failopen' : 'failclosed';
        e.line(logRule(verdict), devSource);
        e.line(
          `\t\tcounter ${dev.failMode === 'open' ? 'return' : 'drop'} comment ${quote(`${dev.id} fail-safe: failMode ${dev.failMode}, ${where(dev.src)}`)}`,
          devSource,
        );
      } else if (dev.mode === 'enforce') {
        e.line(logRule('deny'), devSource);
        e.line(`\t\tcounter drop comment ${quote(`${dev.id} enforce: default drop, ${where(dev.src)}`)}`, devSource);
      } else {
        e.line(logRule('monitor'), devSource);
        e.line(`\t\tcounter return comment ${quote(`${dev.id} monitor: log and allow, ${where(dev.src)}`)}`, devSource);
      }
      e.line('\t}');
    }
  }

  const fwd: LineSource = { what: 'forward chain' };
  e.line('\tchain forward {');
  e.line('\t\ttype filter hook forward priority filter; policy accept;');
  e.line('\t\tct state established,related counter accept comment "fast path: replies and related traffic of allowed connections"', fwd);
  e.line('\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert } counter accept comment "IPv6 neighbour discovery"', fwd);
  for (const [dir, key] of [['out', 'saddr'], ['in', 'daddr']] as const) {
    for (const family of FAMILIES) {
      if (!model.devices.some((d) => d.addresses[family] !== undefined)) continue;
      const what = dir === 'out' ? 'the sending device\'s outbound allow-list' : 'the receiving device\'s inbound allow-list';
      e.line(`\t\t${IP[family]} ${key} vmap @${dir}_${V[family]} comment ${quote(`check ${what}`)}`, fwd);
    }
  }
  e.line('\t\tcounter accept comment "allowed by every device allow-list it met, or involves no listed device"', fwd);
  e.line('\t}');

  const proxies = failsafe ? [] : model.devices.flatMap((d) => d.proxies.filter((p) => p.rtu === undefined).map((p) => ({ dev: d, p })));
  const listenRange = g.protocols.listenPorts;
  if (proxies.length > 0) {
    const [first] = listenRange.split('-').map(Number) as [number];
    const listen = (key: string, i: number) => opts.listenPorts?.get(key) ?? first + i;
    const proxySource: LineSource = { what: 'inline proxies' };
    for (const family of FAMILIES) {
      if (!proxies.some(({ dev }) => dev.addresses[family] !== undefined && dev.failMode === 'open')) continue;
      e.line(`\tset ${PROXY_ALIVE[family]} {`, proxySource);
      e.line(`\t\ttype ${ADDR[family]} . inet_service; flags timeout`);
      e.line(`\t\tcomment "fail-open devices' proxied ports, kept filled by the running agent: when it stops, their traffic bypasses the proxy"`);
      e.line('\t}');
    }
    const sortedKeys = proxies.map(({ p }) => p.key).sort();
    for (const { dev, p } of proxies) {
      for (const family of FAMILIES) {
        const peers = p.entries.flatMap((x) => x.peers.filter((r) => r.family === family));
        if (dev.addresses[family] === undefined || peers.length === 0) continue;
        e.line(`\tset proxy_${ident(dev.id)}_${p.port}_${V[family]} {`, { what: `proxied port ${p.key}`, src: dev.src });
        e.line(`\t\ttype ${ADDR[family]}; flags interval; auto-merge`);
        e.line(`\t\telements = { ${peers.map(formatRange).join(', ')} }`, { what: `peers of ${p.entries.map((x) => x.id).join(', ')}`, src: dev.src });
        e.line('\t}');
      }
    }
    e.line('\tchain proxy {');
    e.line('\t\ttype nat hook prerouting priority dstnat; policy accept;');
    for (const { dev, p } of proxies) {
      const port = listen(p.key, sortedKeys.indexOf(p.key));
      for (const family of FAMILIES) {
        const address = dev.addresses[family];
        if (address === undefined || !p.entries.some((x) => x.peers.some((r) => r.family === family))) continue;
        const alive = dev.failMode === 'open' ? ` ${IP[family]} daddr . tcp dport @${PROXY_ALIVE[family]}` : '';
        e.line(
          `\t\t${IP[family]} daddr ${formatAddress(family, address)} tcp dport ${p.port} ${IP[family]} saddr @proxy_${ident(dev.id)}_${p.port}_${V[family]}${alive} counter redirect to :${port} comment ${quote(`${p.key} to the ${p.app} proxy (failMode ${dev.failMode}), ${where(dev.src)}`)}`,
          { what: `proxied port ${p.key}`, src: dev.src },
        );
      }
    }
    e.line('\t}');
  }

  const rtu = model.devices.flatMap((d) => d.proxies.filter((p) => p.rtu !== undefined).map((p) => ({ dev: d, p })));
  for (const { dev, p } of failsafe ? [] : rtu) {
    for (const family of FAMILIES) {
      const peers = p.entries.flatMap((x) => x.peers.filter((r) => r.family === family));
      if (peers.length === 0) continue;
      e.line(`\tset rtu_${ident(dev.id)}_${V[family]} {`, { what: `RTU gateway port ${p.key}`, src: dev.src });
      e.line(`\t\ttype ${ADDR[family]}; flags interval; auto-merge`);
      e.line(`\t\telements = { ${peers.map(formatRange).join(', ')} }`, { what: `peers of ${p.entries.map((x) => x.id).join(', ')}`, src: dev.src });
      e.line('\t}');
    }
  }

  const inp: LineSource = { what: 'input chain (the gateway itself)' };
  e.line('\tchain input {');
  e.line('\t\ttype filter hook input priority filter; policy accept;');
  if (proxies.length > 0) {
    e.line(`\t\ttcp dport ${listenRange} ct status dnat counter accept comment "redirected to the inline proxies"`, inp);
    e.line(`\t\ttcp dport ${listenRange} counter drop comment "the proxies take only connections the ruleset redirected"`, inp);
  }
  e.line('\t\tiif "lo" counter accept comment "loopback"', inp);
  e.line('\t\tct state established,related counter accept comment "replies to the gateway\'s own connections"', inp);
  // Before management's accept: an RTU gateway port takes only its entries' peers.
  for (const { dev, p } of rtu) rtuInput(e, g, dev, p, failsafe);
  for (const family of FAMILIES) {
    if (!model.management.some((m) => m.family === family)) continue;
    e.line(`\t\t${IP[family]} saddr @mgmt_${V[family]} counter accept comment "management networks always reach the gateway"`, mgmtSource);
  }
  e.line('\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert, packet-too-big } counter accept comment "IPv6 neighbour discovery"', inp);
  e.line('\t\tudp sport 67 udp dport 68 counter accept comment "DHCPv4 replies to the gateway"', inp);
  e.line('\t\tudp sport 547 udp dport 546 counter accept comment "DHCPv6 replies to the gateway"', inp);
  if (g.gatewayInput === 'drop') {
    // Hosts' link-local chatter (MLD reports, router solicitations, discovery broadcasts) is
    // nobody's connection attempt: dropped like the rest, but not logged as denied.
    e.line('\t\tmeta pkttype { broadcast, multicast } counter drop comment "gatewayInput: drop, broadcast and multicast not logged"', inp);
    e.line(`\t\tlimit rate ${g.logRate}/second burst ${g.logRate * 2} packets counter log group ${g.nflogGroup} queue-threshold 1 prefix "wg deny gateway in " comment "gatewayInput: drop, sent to NFLOG ${g.nflogGroup}"`, inp);
    e.line('\t\tcounter drop comment "gatewayInput: drop"', inp);
  } else {
    e.line('\t\tcounter accept comment "gatewayInput: accept"', inp);
  }
  e.line('\t}');
  e.line('}');

  return {
    text: `${e.out.join('\n')}\n`,
    lines: e.lines,
    stats: {
      devices: model.devices.length,
      entries: model.devices.reduce((n, d) => n + d.entries.length, 0),
      elements,
    },
  };
}

/**
 * The input rules of an RTU gateway port (the gateway's own listener; the proxy applies the
 * Modbus rules): its entries' peers are accepted; the rest are dropped and logged as the
 * device's denied inbound traffic, or in monitor mode logged and accepted (the proxy then
 * forwards and alerts). The fail-safe ruleset follows the device's fail mode.
 */
function rtuInput(e: Emitter, g: Model['gateway'], dev: ResolvedDevice, p: ProxyTarget, failsafe: boolean): void {
  const src: LineSource = { what: `RTU gateway port ${p.key}`, src: dev.src };
  const port = p.port;
  const log = (verdict: string) =>
    `\t\ttcp dport ${port} limit rate ${g.logRate}/second burst ${g.logRate * 2} packets counter log group ${g.nflogGroup} queue-threshold 1 prefix ${quote(`wg ${verdict} ${dev.id} in `)} comment ${quote(`${dev.id} RTU gateway port ${port}: ${verdict} sent to NFLOG ${g.nflogGroup}`)}`;
  if (failsafe) {
    const verdict = dev.failMode === 'open' ? 'failopen' : 'failclosed';
    e.line(log(verdict), src);
    e.line(`\t\ttcp dport ${port} counter ${dev.failMode === 'open' ? 'accept' : 'drop'} comment ${quote(`${dev.id} fail-safe: failMode ${dev.failMode}, RTU gateway port ${port}, ${where(dev.src)}`)}`, src);
    return;
  }
  for (const family of FAMILIES) {
    if (!p.entries.some((x) => x.peers.some((r) => r.family === family))) continue;
    e.line(`\t\t${IP[family]} saddr @rtu_${ident(dev.id)}_${V[family]} tcp dport ${port} counter accept comment ${quote(`${dev.id} RTU gateway port ${port}: its entries' peers, ${where(dev.src)}`)}`, src);
  }
  if (dev.mode === 'enforce') {
    e.line(log('deny'), src);
    e.line(`\t\ttcp dport ${port} counter drop comment ${quote(`${dev.id} enforce: the RTU gateway port takes only its entries' peers, management too, ${where(dev.src)}`)}`, src);
  } else {
    e.line(log('monitor'), src);
    e.line(`\t\ttcp dport ${port} counter accept comment ${quote(`${dev.id} monitor: log and allow, RTU gateway port ${port}, ${where(dev.src)}`)}`, src);
  }
}
