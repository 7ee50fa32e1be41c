// Connection-tracking events from the kernel, read with conntrack-tools:
//   conntrack -E -e NEW,DESTROY -o timestamp,extended,id
// run inside the gateway's network namespace (`ip netns exec NS …`) when one is given.
//
// Why conntrack-tools (issue 4 asks to choose among conntrack-tools, ulogd2's JSON output and a
// netlink library):
// - it is the netfilter project's own client of ctnetlink, packaged by every distribution and
//   already a dependency of the gateway (DESIGN.md "Real parts"); the agent adds no native code,
//   so nothing to compile for the Pi's ARM and nothing that breaks with a Node ABI bump;
// - `-o timestamp,extended,id` gives a stable one-line text format with the kernel's event
//   time, the conntrack id (which pairs NEW with DESTROY) and, with nf_conntrack_acct, the
//   packet and byte counters of each direction in the DESTROY event;
// - ulogd2 would be a second daemon to configure, supervise and keep in step with the agent
//   (its JSON output goes to a file or socket the agent must then tail), and a restart of either
//   side loses events in between just the same; the Node netlink libraries for ctnetlink are
//   small, little-maintained and native.
// The cost is one child process and text parsing, off the packet path (the kernel enforces; this
// only observes). The parser below is a pure function, tested on lines captured from a kernel.
import { execFile } from 'node:child_process';
import { createInterface } from 'node:readline';
import { inNetns, ToolProcess } from '../util/process.js';

export type ConntrackEventType = 'new' | 'destroy';

export interface Tuple {
  src: string;
  dst: string;
  /** TCP, UDP, SCTP, …: ports; undefined for ICMP. */
  sport?: number;
  dport?: number;
  /** ICMP and ICMPv6: type, code and identifier. */
  icmpType?: number;
  icmpCode?: number;
  icmpId?: number;
  /** With net.netfilter.nf_conntrack_acct=1, in DESTROY events (and UPDATE). */
  packets?: number;
  bytes?: number;
}

export interface ConntrackEvent {
  type: ConntrackEventType;
  /** The kernel's event time, in milliseconds since the epoch (microsecond precision). */
  timestampMs: number;
  l3: string; // "ipv4" | "ipv6"
  l4: string; // "tcp" | "udp" | "icmp" | "icmpv6" | …
  l4num: number;
  /** The initiator's direction. */
  orig: Tuple;
  reply: Tuple;
  /** TCP state (SYN_SENT, TIME_WAIT, CLOSE, …) when there is one. */
  state?: string;
  /** ASSURED, UNREPLIED, USERSPACE, … */
  flags: string[];
  /** The conntrack id: the same in a connection's NEW and DESTROY events. */
  id?: number;
  /** Seconds since the connection started, when net.netfilter.nf_conntrack_timestamp=1. */
  deltaTime?: number;
}

const TYPES: Record<string, ConntrackEventType> = { '[NEW]': 'new', '[DESTROY]': 'destroy' };
const TUPLE_NUM = { sport: 'sport', dport: 'dport', type: 'icmpType', code: 'icmpCode', packets: 'packets', bytes: 'bytes' } as const;

function int(text: string): number | undefined {
  return /^\d+$/.test(text) ? Number(text) : undefined;
}

/**
 * Parses one line of `conntrack -E -o timestamp,extended,id`, for instance
 *   [1795753810.147277]	[DESTROY] ipv4     2 tcp      6 119 TIME_WAIT src=10.99.0.1 dst=10.99.0.2
 *   sport=60074 dport=104 packets=6 bytes=328 src=10.99.0.2 dst=10.99.0.1 sport=104 dport=60074
 *   packets=4 bytes=224 [ASSURED] id=1190876255 [USERSPACE] portid=3673408819
 * Returns undefined for anything else (the summary conntrack prints on exit, UPDATE events, …).
 */
export function parseConntrackLine(line: string): ConntrackEvent | undefined {
  const tokens = line.trim().split(/\s+/);
  const stamp = /^\[(\d+)\.(\d{1,6})\]$/.exec(tokens[0] ?? '');
  if (!stamp) return undefined;
  const type = TYPES[tokens[1] ?? ''];
  if (!type) return undefined;
  const [l3 = '', l3num, l4 = '', l4numText] = tokens.slice(2, 6);
  const l4num = int(l4numText ?? '');
  if (int(l3num ?? '') === undefined || l4num === undefined) return undefined;
  const icmp = l4 === 'icmp' || l4 === 'icmpv6';

  const tuples: Partial<Tuple>[] = [];
  const flags: string[] = [];
  let state: string | undefined;
  let id: number | undefined;
  let deltaTime: number | undefined;
  for (const tok of tokens.slice(6)) {
    if (tok.startsWith('[') && tok.endsWith(']')) {
      flags.push(tok.slice(1, -1));
      continue;
    }
    const eq = tok.indexOf('=');
    if (eq === -1) {
      // The timeout (a number) and, for TCP, the state, before the first tuple.
      if (tuples.length === 0 && int(tok) === undefined) state = tok;
      continue;
    }
    const key = tok.slice(0, eq);
    const value = tok.slice(eq + 1);
    if (key === 'src') {
      tuples.push({ src: value });
      continue;
    }
    const t = tuples[tuples.length - 1];
    if (key === 'dst' && t && t.dst === undefined) {
      t.dst = value;
    } else if (key in TUPLE_NUM && t && t[TUPLE_NUM[key as keyof typeof TUPLE_NUM]] === undefined) {
      const n = int(value);
      if (n !== undefined) t[TUPLE_NUM[key as keyof typeof TUPLE_NUM]] = n;
    } else if (key === 'id' && icmp && t && t.icmpId === undefined && id === undefined && tuples.length <= 2) {
      // In ICMP tuples "id=" is the echo identifier; the conntrack id comes after both tuples.
      t.icmpId = int(value);
    } else if (key === 'id') {
      id = int(value);
    } else if (key === 'delta-time') {
      deltaTime = int(value);
    }
  }
  const [orig, reply] = tuples;
  if (!orig?.src || !orig.dst || !reply?.src || !reply.dst) return undefined;
  return {
    type,
    timestampMs: Number(stamp[1]) * 1000 + Number(stamp[2]!.padEnd(6, '0')) / 1000,
    l3,
    l4,
    l4num,
    orig: orig as Tuple,
    reply: reply as Tuple,
    ...(state !== undefined ? { state } : {}),
    flags,
    ...(id !== undefined ? { id } : {}),
    ...(deltaTime !== undefined ? { deltaTime } : {}),
  };
}

function run(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: 10000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}


export interface AccountingState {
  on: boolean;
  /** Why accounting is off: without it DESTROY events carry no packet and byte counts. */
  reason?: string;
}

/**
 * Turns on net.netfilter.nf_conntrack_acct (per network namespace) so that DESTROY events carry
 * packets and bytes per direction. It only counts connections created after it is set. Also
 * nf_conntrack_timestamp (best effort), so that a DESTROY carries its connection's age: the start
 * of a connection whose NEW came before the agent (re)started is then still known.
 */
export async function enableAccounting(netns?: string): Promise<AccountingState> {
  await run(inNetns(netns, ['sysctl', '-q', '-w', 'net.netfilter.nf_conntrack_timestamp=1']));
  const set = await run(inNetns(netns, ['sysctl', '-q', '-w', 'net.netfilter.nf_conntrack_acct=1']));
  const read = await run(inNetns(netns, ['sysctl', '-n', 'net.netfilter.nf_conntrack_acct']));
  if (read.code === 0 && read.stdout.trim() === '1') return { on: true };
  const why = (set.stderr || read.stderr).trim() || `the sysctl reads "${read.stdout.trim()}"`;
  return { on: false, reason: `net.netfilter.nf_conntrack_acct is off: flows will have no byte or packet counts (${why})` };
}

export interface ConntrackReaderOptions {
  /** The network namespace to read (the gateway's); the caller's own when undefined. */
  netns?: string;
  onEvent: (event: ConntrackEvent) => void;
  /** conntrack exited or could not be started; after start() resolved. */
  onExit?: (code: number | null, stderr: string) => void;
  /** How long conntrack must run before start() resolves (it prints nothing when ready). */
  settleMs?: number;
  /** The kernel dropped events: the socket buffer overflowed ("We have hit ENOBUFS!"). */
  onOverrun?: () => void;
}

/**
 * `-b`: the event socket's receive buffer (conntrack sets it with SO_RCVBUFFORCE as root). The
 * kernel drops events that do not fit, so a burst of new connections needs room while the agent
 * catches up; 8 MiB holds some 20,000 events.
 */
export const CONNTRACK_ARGS = ['-E', '-e', 'NEW,DESTROY', '-o', 'timestamp,extended,id', '-b', String(8 * 1024 * 1024)] as const;

/** A running `conntrack -E`: events go to onEvent until stop(). */
export class ConntrackReader {
  /** Lines that were not events (counted, not thrown: a format change must not stop the agent). */
  unparsed = 0;
  events = 0;
  /** Times conntrack said the kernel dropped events (ENOBUFS: its socket buffer overflowed). */
  overruns = 0;

  private constructor(
    private readonly proc: ToolProcess,
    readonly accounting: AccountingState,
  ) {}

  static async start(opts: ConntrackReaderOptions): Promise<ConntrackReader> {
    const accounting = await enableAccounting(opts.netns);
    const proc = new ToolProcess(inNetns(opts.netns, ['conntrack', ...CONNTRACK_ARGS]));
    const reader = new ConntrackReader(proc, accounting);
    createInterface({ input: proc.child.stdout }).on('line', (line) => {
      const ev = parseConntrackLine(line);
      if (!ev) {
        reader.unparsed++;
        return;
      }
      reader.events++;
      opts.onEvent(ev);
    });
    createInterface({ input: proc.child.stderr }).on('line', (line) => {
      if (line.includes('ENOBUFS')) {
        reader.overruns++;
        opts.onOverrun?.();
      }
    });
    // conntrack says nothing once subscribed: wait a moment, and fail if it exited meanwhile.
    await Promise.race([proc.exited, new Promise((r) => setTimeout(r, opts.settleMs ?? 300))]);
    if (proc.exitCode !== undefined) throw proc.failure(`exited (${proc.exitCode})`);
    proc.onUnexpectedExit(opts.onExit);
    return reader;
  }

  get pid(): number | undefined {
    return this.proc.pid;
  }

  /** Stops conntrack; resolves once it has exited (SIGKILL after `ms`). */
  async stop(ms = 2000, quietMs = 200): Promise<void> {
    await this.proc.stop(ms, quietMs);
  }
}
