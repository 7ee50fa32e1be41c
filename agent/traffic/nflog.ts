// Denied and monitored packets from the kernel's NFLOG group, read with tcpdump:
//   tcpdump -i nflog:<group> -U -w -
// run inside the gateway's network namespace (`ip netns exec NS …`) when one is given.
//
// The policy (agent/policy/compile.ts) sends what an allow-list refuses or only monitors to NFLOG
// group `nflogGroup`, rate-limited, with the log prefix "wg <verdict> <device> <in|out> ". Reading
// the group through libpcap's nflog interface keeps the agent free of native code (as for
// conntrack-tools in conntrack.ts): tcpdump subscribes to the group and writes a pcap stream of
// link type LINKTYPE_NFLOG (239), which is parsed here.
//
// The format (https://www.tcpdump.org/linktypes/LINKTYPE_NFLOG.html, libpcap pcap/nflog.h):
// - pcap global header, 24 bytes: magic, version, thiszone, sigfigs, snaplen, link type; the
//   magic gives the byte order of the file (tcpdump writes its host's) and the time resolution;
// - per record a 16-byte header (ts sec, ts usec|nsec, incl_len, orig_len), then incl_len bytes:
//   - the NFLOG header: family u8 (AF_INET 2, AF_INET6 10), version u8, resource id u16
//     big-endian (the group);
//   - TLVs: length u16 (including the 4-byte TLV header) and type u16 in the *host* byte order of
//     the capturing machine (the file's byte order), the value, padded to a multiple of 4 bytes.
//     NFULA_PAYLOAD = 9 is the packet from its network header on, NFULA_PREFIX = 10 the log
//     prefix, NUL-terminated (linux/netfilter/nfnetlink_log.h).
// The parser is pure and streaming: bytes in, events out, records split across chunks are joined,
// and whatever is malformed is counted and skipped, never thrown.
import { inNetns, ToolProcess } from '../util/process.js';

export const DLT_NFLOG = 239;
export const NFULA_PAYLOAD = 9;
export const NFULA_PREFIX = 10;
const AF_INET = 2;
const AF_INET6 = 10;
/** Larger than any record tcpdump writes (its default snaplen is 262144): a corrupt stream. */
const MAX_RECORD = 1 << 20;

export type NflogVerdict = 'deny' | 'monitor' | 'failopen' | 'failclosed' | (string & {});

export interface NflogEvent {
  /** The capture time, in milliseconds since the epoch (microsecond precision). */
  time: number;
  /** The NFLOG group the packet was logged to. */
  group: number;
  /** The log prefix as the rule set it, "wg deny ct-01 in ". */
  prefix: string;
  verdict: NflogVerdict;
  /** The device id, or "gateway" for the gateway's own input chain. */
  device: string;
  dir: 'in' | 'out';
  family: 'ipv4' | 'ipv6';
  /** "tcp", "udp", "icmp", "icmpv6", or the protocol number for others. */
  proto: string;
  protoNum: number;
  src: string;
  dst: string;
  sport?: number;
  dport?: number;
  icmpType?: number;
  icmpCode?: number;
  /** The packet's length by its IP header (total length; IPv6: payload length + 40). */
  length: number;
}

export interface NflogStats {
  /** Records read from the stream. */
  records: number;
  events: number;
  /** Records that could not be parsed (no payload, short IP header, bad TLV, …). */
  malformed: number;
  /** Records whose prefix is not "wg <verdict> <device> <in|out>" (another user of the group). */
  foreign: number;
  /** Bytes that ended the stream in the middle of a header or record. */
  truncated: number;
}

const PROTO_NAMES: Record<number, string> = { 1: 'icmp', 6: 'tcp', 17: 'udp', 58: 'icmpv6', 132: 'sctp' };
const PREFIX_RE = /^wg (\S+) (\S+) (in|out) ?$/;
const V6_EXT = new Set([0, 43, 60]);

function ipv4(b: Buffer, at: number): string {
  return `${b[at]}.${b[at + 1]}.${b[at + 2]}.${b[at + 3]}`;
}

/** RFC 5952 text of an IPv6 address: lower case, the longest run of two or more zero groups as "::". */
export function formatIpv6(b: Buffer, at: number): string {
  const groups: number[] = [];
  for (let i = 0; i < 8; i++) groups.push(b.readUInt16BE(at + i * 2));
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (gs: number[]) => gs.map((g) => g.toString(16)).join(':');
  if (best === -1) return hex(groups);
  return `${hex(groups.slice(0, best))}::${hex(groups.slice(best + bestLen))}`;
}

type Packet = Pick<NflogEvent, 'family' | 'proto' | 'protoNum' | 'src' | 'dst' | 'sport' | 'dport' | 'icmpType' | 'icmpCode' | 'length'>;

/** The addresses, protocol and ports (or ICMP type) of an IP packet; undefined when it is too short. */
export function parseIpPacket(p: Buffer): Packet | undefined {
  if (p.length < 1) return undefined;
  const version = p[0]! >> 4;
  let family: Packet['family'];
  let protoNum: number;
  let l4: number;
  let src: string;
  let dst: string;
  let length: number;
  let firstFragment = true;
  if (version === 4) {
    const ihl = (p[0]! & 0x0f) * 4;
    if (ihl < 20 || p.length < ihl) return undefined;
    family = 'ipv4';
    protoNum = p[9]!;
    src = ipv4(p, 12);
    dst = ipv4(p, 16);
    firstFragment = (p.readUInt16BE(6) & 0x1fff) === 0;
    length = p.readUInt16BE(2);
    l4 = ihl;
  } else if (version === 6) {
    if (p.length < 40) return undefined;
    family = 'ipv6';
    src = formatIpv6(p, 8);
    dst = formatIpv6(p, 24);
    protoNum = p[6]!;
    length = p.readUInt16BE(4) + 40;
    l4 = 40;
    // Hop-by-hop, routing, destination options and fragment headers, to the transport header.
    for (let hops = 0; hops < 8; hops++) {
      if (V6_EXT.has(protoNum)) {
        if (p.length < l4 + 2) break;
        const next = p[l4]!;
        l4 += (p[l4 + 1]! + 1) * 8;
        protoNum = next;
      } else if (protoNum === 44) {
        if (p.length < l4 + 8) break;
        firstFragment = (p.readUInt16BE(l4 + 2) & 0xfff8) === 0;
        protoNum = p[l4]!;
        l4 += 8;
      } else {
        break;
      }
    }
  } else {
    return undefined;
  }
  const pkt: Packet = { family, proto: PROTO_NAMES[protoNum] ?? String(protoNum), protoNum, src, dst, length };
  if (!firstFragment) return pkt;
  if ((protoNum === 6 || protoNum === 17 || protoNum === 132) && p.length >= l4 + 4) {
    pkt.sport = p.readUInt16BE(l4);
    pkt.dport = p.readUInt16BE(l4 + 2);
  } else if ((protoNum === 1 || protoNum === 58) && p.length >= l4 + 2) {
    pkt.icmpType = p[l4]!;
    pkt.icmpCode = p[l4 + 1]!;
  }
  return pkt;
}

/** One NFLOG record (the bytes after the pcap record header): an event, or why not. */
export function parseNflogRecord(rec: Buffer, time: number, littleEndian: boolean): NflogEvent | 'malformed' | 'foreign' {
  if (rec.length < 4) return 'malformed';
  const family = rec[0]!;
  const group = rec.readUInt16BE(2);
  let prefix: string | undefined;
  let payload: Buffer | undefined;
  for (let at = 4; at + 4 <= rec.length; ) {
    const len = littleEndian ? rec.readUInt16LE(at) : rec.readUInt16BE(at);
    const type = (littleEndian ? rec.readUInt16LE(at + 2) : rec.readUInt16BE(at + 2)) & 0x7fff;
    if (len < 4 || at + len > rec.length) return 'malformed';
    const value = rec.subarray(at + 4, at + len);
    if (type === NFULA_PREFIX) {
      const nul = value.indexOf(0);
      prefix = value.subarray(0, nul === -1 ? value.length : nul).toString('utf8');
    } else if (type === NFULA_PAYLOAD) {
      payload = value;
    }
    at += (len + 3) & ~3;
  }
  if (payload === undefined || (family !== AF_INET && family !== AF_INET6)) return 'malformed';
  const pkt = parseIpPacket(payload);
  if (!pkt) return 'malformed';
  const m = PREFIX_RE.exec(prefix ?? '');
  if (!m) return 'foreign';
  return { time, group, prefix: prefix!, verdict: m[1]!, device: m[2]!, dir: m[3] as 'in' | 'out', ...pkt };
}

/**
 * A pcap stream of link type NFLOG, fed chunk by chunk. A bad global header (not pcap, or another
 * link type) or an impossible record length stops it: everything after is ignored and `error` says
 * why, since there is no way to find the next record again.
 */
export class NflogPcapParser {
  readonly stats: NflogStats = { records: 0, events: 0, malformed: 0, foreign: 0, truncated: 0 };
  error: string | undefined;
  private buf: Buffer = Buffer.alloc(0);
  private littleEndian = true;
  private nanos = false;
  private headerDone = false;

  /** Adds bytes; returns the events of the records they complete. */
  push(chunk: Buffer): NflogEvent[] {
    if (this.error !== undefined) return [];
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const out: NflogEvent[] = [];
    let at = 0;
    if (!this.headerDone) {
      if (this.buf.length < 24) return out;
      if (!this.readHeader(this.buf)) {
        this.buf = Buffer.alloc(0);
        return out;
      }
      at = 24;
    }
    while (this.buf.length - at >= 16) {
      const b = this.buf;
      const u32 = (o: number) => (this.littleEndian ? b.readUInt32LE(o) : b.readUInt32BE(o));
      const incl = u32(at + 8);
      if (incl > MAX_RECORD) {
        this.fail(`record length ${incl} is impossible: the stream is corrupt`);
        return out;
      }
      if (b.length - at - 16 < incl) break;
      const time = u32(at) * 1000 + u32(at + 4) / (this.nanos ? 1e6 : 1e3);
      const rec = b.subarray(at + 16, at + 16 + incl);
      at += 16 + incl;
      this.stats.records++;
      const r = parseNflogRecord(rec, time, this.littleEndian);
      if (r === 'malformed') this.stats.malformed++;
      else if (r === 'foreign') this.stats.foreign++;
      else {
        this.stats.events++;
        out.push(r);
      }
    }
    // Keep only the unparsed tail (copied, so the chunks it came from can be freed).
    this.buf = at === 0 ? this.buf : Buffer.from(this.buf.subarray(at));
    return out;
  }

  /** The stream ended: a partial header or record left over is counted as truncated. */
  end(): void {
    if (this.buf.length > 0 && this.error === undefined) {
      this.stats.truncated += this.buf.length;
      this.stats.malformed++;
    }
    this.buf = Buffer.alloc(0);
  }

  private readHeader(b: Buffer): boolean {
    const magics: Record<number, [boolean, boolean]> = {
      0xa1b2c3d4: [false, false],
      0xa1b23c4d: [false, true],
      0xd4c3b2a1: [true, false],
      0x4d3cb2a1: [true, true],
    };
    const m = magics[b.readUInt32BE(0)];
    if (!m) return this.fail(`not a pcap stream (magic ${b.readUInt32BE(0).toString(16)})`);
    [this.littleEndian, this.nanos] = m;
    const linkType = (this.littleEndian ? b.readUInt32LE(20) : b.readUInt32BE(20)) & 0x0fffffff;
    if (linkType !== DLT_NFLOG) return this.fail(`link type ${linkType}, not NFLOG (${DLT_NFLOG})`);
    this.headerDone = true;
    return true;
  }

  private fail(why: string): false {
    this.error = why;
    this.stats.malformed++;
    this.buf = Buffer.alloc(0);
    return false;
  }
}

/** Parses a whole capture (a file), for tests and tools. */
export function parseNflogPcap(data: Buffer): { events: NflogEvent[]; stats: NflogStats; error?: string } {
  const p = new NflogPcapParser();
  const events = p.push(data);
  p.end();
  return { events, stats: p.stats, ...(p.error !== undefined ? { error: p.error } : {}) };
}


export const nflogArgs = (group: number): string[] => ['-i', `nflog:${group}`, '-U', '-w', '-'];

export interface NflogReaderOptions {
  /** The NFLOG group (gateway.yaml nflogGroup). */
  group: number;
  /** The network namespace to read (the gateway's); the caller's own when undefined. */
  netns?: string;
  onEvent: (event: NflogEvent) => void;
  /** tcpdump exited or could not be started; after start() resolved. */
  onExit?: (code: number | null, stderr: string) => void;
  /** How long to wait for tcpdump to say it is listening. */
  startMs?: number;
}

/** A running `tcpdump -i nflog:<group>`: events go to onEvent until stop(). */
export class NflogReader {
  private constructor(
    private readonly proc: ToolProcess,
    readonly parser: NflogPcapParser,
  ) {}

  get stats(): NflogStats {
    return this.parser.stats;
  }

  static async start(opts: NflogReaderOptions): Promise<NflogReader> {
    const proc = new ToolProcess(inNetns(opts.netns, ['tcpdump', ...nflogArgs(opts.group)]));
    const parser = new NflogPcapParser();
    const reader = new NflogReader(proc, parser);
    let listening: () => void = () => undefined;
    const ready = new Promise<void>((r) => (listening = r));
    proc.child.stderr.on('data', () => {
      // tcpdump says "listening on nflog:10, link-type NFLOG …" once subscribed to the group.
      if (proc.stderr.includes('listening on')) listening();
    });
    proc.child.stdout.on('data', (d: Buffer) => {
      for (const ev of parser.push(d)) opts.onEvent(ev);
    });
    proc.child.stdout.on('end', () => parser.end());
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), opts.startMs ?? 5000)));
    const how = await Promise.race([proc.exited.then(() => 'exited' as const), ready.then(() => 'ready' as const), timeout]);
    clearTimeout(timer);
    if (how !== 'ready' || proc.exitCode !== undefined) {
      await proc.stop(2000);
      throw proc.failure(how === 'timeout' ? `did not start listening within ${opts.startMs ?? 5000} ms` : `exited (${proc.exitCode})`);
    }
    proc.onUnexpectedExit(opts.onExit);
    return reader;
  }

  get pid(): number | undefined {
    return this.proc.pid;
  }

  /** Stops tcpdump; resolves once it has exited (SIGKILL after `ms`). */
  async stop(ms = 2000, quietMs = 200): Promise<void> {
    await this.proc.stop(ms, quietMs);
  }
}
