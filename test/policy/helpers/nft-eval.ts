// A small, independent evaluator of compiled nftables text: it parses the script the way nft
// would apply it (table / delete table / table { ... }), keeps the sets, maps and chains of the
// resulting table, and runs a packet through the base chain of a hook the way the kernel does
// (rules in order, jump/return, verdict maps, interval-set lookups on concatenations).
//
// It understands exactly the statements the compiler emits and throws on anything else, so a
// new rule shape fails loudly here instead of being evaluated wrongly.
import { addrInterval, type Fam, type Interval } from './addr.js';

export type Proto = 'tcp' | 'udp' | 'icmp';

export interface Packet {
  family: Fam;
  src: bigint;
  dst: bigint;
  proto: Proto;
  /** tcp/udp destination port. */
  dport: number;
  /** icmp (v4) or icmpv6 type name, for proto icmp. */
  icmpType: string;
  /** Conntrack state; the equivalence test sends new packets. */
  ct: 'new' | 'established' | 'related';
}

export type Verdict = 'accept' | 'drop';

interface Tok {
  t: 'word' | 'str' | '{' | '}' | ',' | ';' | 'nl';
  v: string;
  line: number;
}

export interface NftSet {
  name: string;
  /** Key datatypes, e.g. ["ipv4_addr", "inet_proto", "inet_service"]. */
  key: string[];
  flags: string[];
  autoMerge: boolean;
  /** Each element: one interval per key part. */
  elements: { parts: Interval[]; text: string }[];
}

export interface NftMap {
  name: string;
  key: string;
  elements: Map<bigint, string[]>;
}

export interface NftChain {
  name: string;
  hook?: string;
  policy?: Verdict;
  rules: Tok[][];
}

export interface NftTable {
  family: string;
  name: string;
  sets: Map<string, NftSet>;
  maps: Map<string, NftMap>;
  chains: Map<string, NftChain>;
}

const L4: Record<string, bigint> = { tcp: 6n, udp: 17n, icmp: 1n, 'ipv6-icmp': 58n };
const BLOCKS = new Set(['table', 'set', 'map', 'chain']);

function tokenize(text: string): Tok[] {
  const out: Tok[] = [];
  let line = 1;
  let i = 0;
  while (i < text.length) {
    const c = text[i] as string;
    if (c === '\n') {
      out.push({ t: 'nl', v: '\n', line });
      line++;
      i++;
    } else if (c === ' ' || c === '\t' || c === '\r') {
      i++;
    } else if (c === '#') {
      while (i < text.length && text[i] !== '\n') i++;
    } else if (c === '"') {
      const end = text.indexOf('"', i + 1);
      if (end === -1 || text.slice(i, end).includes('\n')) throw new Error(`line ${line}: unterminated string`);
      out.push({ t: 'str', v: text.slice(i + 1, end), line });
      i = end + 1;
    } else if (c === '{' || c === '}' || c === ',' || c === ';') {
      out.push({ t: c, v: c, line });
      i++;
    } else {
      let j = i;
      while (j < text.length && !' \t\r\n{};,"#'.includes(text[j] as string)) j++;
      out.push({ t: 'word', v: text.slice(i, j), line });
      i = j;
    }
  }
  return out;
}

interface Stmt {
  toks: Tok[];
  block?: Stmt[];
}

/** Statements end at a newline or ";" outside braces; "kw name... {" opens a block. */
function parseStatements(toks: Tok[], pos: { i: number }, nested: boolean): Stmt[] {
  const out: Stmt[] = [];
  for (;;) {
    const first = toks[pos.i];
    if (first === undefined) {
      if (nested) throw new Error('unexpected end of input: a block is not closed');
      return out;
    }
    if (first.t === 'nl' || first.t === ';') {
      pos.i++;
      continue;
    }
    if (first.t === '}') {
      if (!nested) throw new Error(`line ${first.line}: "}" closes nothing`);
      pos.i++;
      return out;
    }
    const stmt: Tok[] = [];
    let depth = 0;
    let block: Stmt[] | undefined;
    for (;;) {
      const t = toks[pos.i];
      if (t === undefined) break;
      if (depth === 0 && (t.t === 'nl' || t.t === ';' || t.t === '}')) break;
      if (t.t === '{' && depth === 0 && BLOCKS.has(stmt[0]?.v ?? '') && stmt.every((s) => s.t === 'word')) {
        pos.i++;
        block = parseStatements(toks, pos, true);
        break;
      }
      if (t.t === '{') depth++;
      if (t.t === '}') depth--;
      if (!(t.t === 'nl' && depth > 0)) stmt.push(t);
      pos.i++;
    }
    out.push(block ? { toks: stmt, block } : { toks: stmt });
  }
}

const words = (toks: Tok[]) => toks.map((t) => (t.t === 'str' ? `"${t.v}"` : t.v)).join(' ');

/** Splits "{ a, b, ... }" (the tokens after "elements =") into its elements. */
function braceList(toks: Tok[], where: string): Tok[][] {
  if (toks[0]?.t !== '{' || toks[toks.length - 1]?.t !== '}') throw new Error(`${where}: expected { ... }, got ${words(toks)}`);
  const out: Tok[][] = [[]];
  for (const t of toks.slice(1, -1)) {
    if (t.t === ',') out.push([]);
    else (out[out.length - 1] as Tok[]).push(t);
  }
  return out.filter((e) => e.length > 0);
}

function portInterval(text: string): Interval {
  const m = /^(\d+)(?:-(\d+))?$/.exec(text);
  if (!m) throw new Error(`bad port "${text}"`);
  const lo = Number(m[1]);
  const hi = m[2] === undefined ? lo : Number(m[2]);
  if (lo > hi || hi > 65535) throw new Error(`bad port range "${text}"`);
  return { lo: BigInt(lo), hi: BigInt(hi) };
}

function keyPart(type: string, text: string): Interval {
  switch (type) {
    case 'ipv4_addr':
    case 'ipv6_addr': {
      const r = addrInterval(text);
      if (r.family !== (type === 'ipv4_addr' ? 'ipv4' : 'ipv6')) throw new Error(`"${text}" is not of type ${type}`);
      return r;
    }
    case 'inet_proto': {
      const n = L4[text] ?? (/^\d+$/.test(text) ? BigInt(text) : undefined);
      if (n === undefined) throw new Error(`bad protocol "${text}"`);
      return { lo: n, hi: n };
    }
    case 'inet_service':
      return portInterval(text);
    default:
      throw new Error(`key type ${type} is not understood by this evaluator`);
  }
}

function parseSet(name: string, body: Stmt[]): NftSet {
  const set: NftSet = { name, key: [], flags: [], autoMerge: false, elements: [] };
  for (const s of body) {
    const [kw, ...rest] = s.toks;
    switch (kw?.v) {
      case 'type':
        set.key = rest.filter((_, i) => i % 2 === 0).map((t) => t.v);
        if (rest.some((t, i) => i % 2 === 1 && t.v !== '.')) throw new Error(`set ${name}: bad type ${words(rest)}`);
        break;
      case 'flags':
        set.flags.push(...rest.map((t) => t.v).join('').split(','));
        break;
      case 'auto-merge':
        set.autoMerge = true;
        break;
      case 'counter':
        break;
      case 'comment':
        break;
      case 'elements': {
        if (rest[0]?.v !== '=') throw new Error(`set ${name}: expected "elements ="`);
        for (const el of braceList(rest.slice(1), `set ${name}`)) {
          const end = el.findIndex((t) => t.v === 'counter' || t.v === 'comment');
          const keyToks = end === -1 ? el : el.slice(0, end);
          const trailer = end === -1 ? [] : el.slice(end);
          // What may follow an element's key: "counter" and "comment <string>".
          for (let i = 0; i < trailer.length; i++) {
            const t = trailer[i] as Tok;
            if (t.v === 'counter') continue;
            if (t.v === 'comment' && trailer[i + 1]?.t === 'str') i++;
            else throw new Error(`set ${name}: unexpected "${t.v}" after an element`);
          }
          const parts = keyToks.filter((_, i) => i % 2 === 0).map((t) => t.v);
          if (keyToks.some((t, i) => i % 2 === 1 && t.v !== '.') || parts.length !== set.key.length) {
            throw new Error(`set ${name}: element "${words(keyToks)}" does not fit type ${set.key.join(' . ')}`);
          }
          set.elements.push({ parts: parts.map((p, i) => keyPart(set.key[i] as string, p)), text: parts.join(' . ') });
        }
        break;
      }
      default:
        throw new Error(`set ${name}: statement not understood: ${words(s.toks)}`);
    }
  }
  // The kernel refuses an interval set whose elements overlap (and a plain set that repeats one),
  // unless nft merges them first (auto-merge).
  for (let a = 0; a < set.elements.length && !set.autoMerge; a++) {
    for (let b = a + 1; b < set.elements.length; b++) {
      const x = set.elements[a]!;
      const y = set.elements[b]!;
      if (x.parts.every((p, i) => p.lo <= y.parts[i]!.hi && y.parts[i]!.lo <= p.hi)) {
        throw new Error(`set ${name}: elements "${x.text}" and "${y.text}" overlap`);
      }
    }
  }
  if (!set.flags.includes('interval') && set.elements.some((e) => e.parts.some((p) => p.lo !== p.hi))) {
    throw new Error(`set ${name}: an interval element in a set without "flags interval"`);
  }
  return set;
}

function parseMap(name: string, body: Stmt[]): NftMap {
  const map: NftMap = { name, key: '', elements: new Map() };
  for (const s of body) {
    const [kw, ...rest] = s.toks;
    if (kw?.v === 'type') {
      if (rest.length !== 3 || rest[1]?.v !== ':' || rest[2]?.v !== 'verdict') throw new Error(`map ${name}: not a verdict map`);
      map.key = rest[0]?.v ?? '';
    } else if (kw?.v === 'elements' && rest[0]?.v === '=') {
      for (const el of braceList(rest.slice(1), `map ${name}`)) {
        if (el[1]?.v !== ':') throw new Error(`map ${name}: element "${words(el)}" has no ":"`);
        const key = keyPart(map.key, el[0]?.v ?? '');
        if (key.lo !== key.hi) throw new Error(`map ${name}: interval key without flags interval`);
        if (map.elements.has(key.lo)) throw new Error(`map ${name}: key ${el[0]?.v} twice`);
        map.elements.set(key.lo, el.slice(2).map((t) => t.v));
      }
    } else {
      throw new Error(`map ${name}: statement not understood: ${words(s.toks)}`);
    }
  }
  return map;
}

function parseChain(name: string, body: Stmt[]): NftChain {
  const chain: NftChain = { name, rules: [] };
  for (const s of body) {
    const v = s.toks.map((t) => t.v);
    if (v[0] === 'type') {
      if ((v[1] !== 'filter' && v[1] !== 'nat') || v[2] !== 'hook' || v[4] !== 'priority' || v.length !== 6) throw new Error(`chain ${name}: bad type ${v.join(' ')}`);
      // The proxies' nat chain is parsed (its sets must exist) but not evaluated: redirects are
      // tested against the kernel (test/protocols/proxy-netns.test.ts).
      chain.hook = v[1] === 'nat' ? `nat ${v[3]}` : v[3];
    } else if (v[0] === 'policy') {
      if (v[1] !== 'accept' && v[1] !== 'drop') throw new Error(`chain ${name}: bad policy`);
      chain.policy = v[1];
    } else {
      chain.rules.push(s.toks);
    }
  }
  return chain;
}

/** Applies an nft script; returns the tables that exist afterwards. */
export function parseRuleset(text: string): Map<string, NftTable> {
  const tables = new Map<string, NftTable>();
  const toks = tokenize(text);
  for (const s of parseStatements(toks, { i: 0 }, false)) {
    const v = s.toks.map((t) => t.v);
    if (v[0] === 'table' && v.length === 3) {
      const key = `${v[1]} ${v[2]}`;
      let table = tables.get(key);
      if (!table) {
        table = { family: v[1] as string, name: v[2] as string, sets: new Map(), maps: new Map(), chains: new Map() };
        tables.set(key, table);
      }
      for (const item of s.block ?? []) {
        const [kw, nameTok] = item.toks;
        const itemName = nameTok?.v ?? '';
        if (kw?.v === 'comment') continue;
        if (!item.block || item.toks.length !== 2) throw new Error(`table ${key}: statement not understood: ${words(item.toks)}`);
        if (kw?.v !== 'chain' && (table.sets.has(itemName) || table.maps.has(itemName))) {
          throw new Error(`table ${key}: set or map ${itemName} defined twice`);
        }
        if (kw?.v === 'set') table.sets.set(itemName, parseSet(itemName, item.block));
        else if (kw?.v === 'map') table.maps.set(itemName, parseMap(itemName, item.block));
        else if (kw?.v === 'chain') {
          if (table.chains.has(itemName)) throw new Error(`table ${key}: chain ${itemName} defined twice`);
          table.chains.set(itemName, parseChain(itemName, item.block));
        } else throw new Error(`table ${key}: statement not understood: ${words(item.toks)}`);
      }
    } else if (v[0] === 'delete' && v[1] === 'table' && v.length === 4 && !s.block) {
      const key = `${v[2]} ${v[3]}`;
      if (!tables.delete(key)) throw new Error(`delete table ${key}: no such table (nft -f would fail)`);
    } else {
      throw new Error(`top level statement not understood: ${words(s.toks)}`);
    }
  }
  // Every jump target must exist, as nft requires.
  for (const table of tables.values()) {
    const targets = [...table.maps.values()].flatMap((m) => [...m.elements.values()]).concat(
      [...table.chains.values()].flatMap((c) => c.rules.map((r) => r.map((t) => t.v))),
    );
    for (const verdict of targets) {
      verdict.forEach((w, i) => {
        if ((w === 'jump' || w === 'goto') && !table.chains.has(verdict[i + 1] ?? '')) {
          throw new Error(`${w} to undefined chain ${verdict[i + 1]}`);
        }
      });
    }
  }
  return tables;
}

// ---- evaluation ---------------------------------------------------------------------------

type Value = bigint | string | undefined;

/** The value of a selector for a packet; undefined when the packet has no such header. */
function selector(p: Packet, a: string, b: string): Value {
  const fam = a === 'ip' ? 'ipv4' : a === 'ip6' ? 'ipv6' : undefined;
  if (fam) {
    if (p.family !== fam) return undefined;
    if (b === 'saddr') return p.src;
    if (b === 'daddr') return p.dst;
  } else if (a === 'meta' && b === 'l4proto') {
    return p.proto === 'icmp' ? (p.family === 'ipv4' ? L4.icmp : L4['ipv6-icmp']) : L4[p.proto];
  } else if (a === 'th' && b === 'dport') {
    // The raw 16 bits at offset 2 of the transport header: for ICMP, its checksum. No set
    // element has an ICMP protocol, so the exact value never decides a lookup.
    return p.proto === 'icmp' ? 0n : BigInt(p.dport);
  } else if ((a === 'tcp' || a === 'udp') && (b === 'dport' || b === 'sport')) {
    if (p.proto !== a) return undefined;
    return b === 'dport' ? BigInt(p.dport) : undefined;
  } else if (a === 'icmp' && b === 'type') {
    return p.family === 'ipv4' && p.proto === 'icmp' ? p.icmpType : undefined;
  } else if (a === 'icmpv6' && b === 'type') {
    return p.family === 'ipv6' && p.proto === 'icmp' ? p.icmpType : undefined;
  } else if (a === 'ct' && b === 'state') {
    return p.ct;
  } else if (a === 'meta' && b === 'pkttype') {
    // The generated packets are all unicast to an address.
    return 'host';
  }
  throw new Error(`selector "${a} ${b}" is not understood by this evaluator`);
}

/** Looks a key up in a set: does any element hold it? */
export function setHas(set: NftSet, key: bigint[]): boolean {
  if (key.length !== set.key.length) throw new Error(`set ${set.name}: key of ${key.length} parts for type ${set.key.join(' . ')}`);
  return set.elements.some((e) => e.parts.every((p, i) => p.lo <= key[i]! && key[i]! <= p.hi));
}

type RuleResult = { match: false } | { match: true; verdict?: string[] };

function evalRule(table: NftTable, rule: Tok[], p: Packet): RuleResult {
  let i = 0;
  const w = (k: number) => rule[k]?.v ?? '';
  const fail = (why: string) => new Error(`rule "${words(rule)}": ${why}`);
  while (i < rule.length) {
    const t = w(i);
    // Statements that neither match nor decide.
    if (t === 'counter') {
      i++;
      continue;
    }
    if (t === 'comment') {
      if (rule[i + 1]?.t !== 'str') throw fail('comment without a string');
      i += 2;
      continue;
    }
    if (t === 'limit') {
      // limit rate N/second burst M packets: assumed under the limit (it only gates logging here).
      if (w(i + 1) !== 'rate' || !/^\d+\/second$/.test(w(i + 2)) || w(i + 3) !== 'burst' || w(i + 5) !== 'packets') throw fail('bad limit');
      i += 6;
      continue;
    }
    if (t === 'log') {
      i++;
      while (w(i) === 'group' || w(i) === 'prefix' || w(i) === 'queue-threshold') {
        if (w(i) === 'prefix' && rule[i + 1]?.t !== 'str') throw fail('log prefix without a string');
        i += 2;
      }
      continue;
    }
    if (t === 'accept' || t === 'drop' || t === 'return') {
      if (rule.slice(i + 1).some((x) => x.v !== 'comment' && x.t !== 'str')) throw fail('statements after the verdict');
      return { match: true, verdict: [t] };
    }
    if (t === 'jump' || t === 'goto') {
      return { match: true, verdict: [t, w(i + 1)] };
    }
    if (t === 'iif') {
      // Only in the input chain; forwarded packets are not from lo.
      i += 2;
      return { match: false };
    }
    // A match: selector ( . selector )* then a set, a verdict map, an anonymous set or a value.
    const key: Value[] = [];
    for (;;) {
      key.push(selector(p, w(i), w(i + 1)));
      i += 2;
      if (w(i) !== '.') break;
      i++;
    }
    if (key.some((k) => k === undefined)) return { match: false };
    if (w(i) === 'vmap') {
      const name = w(i + 1).slice(1);
      const map = table.maps.get(name);
      if (!w(i + 1).startsWith('@') || !map) throw fail(`no map ${name}`);
      if (key.length !== 1 || typeof key[0] !== 'bigint') throw fail('vmap key');
      const verdict = map.elements.get(key[0]);
      return verdict ? { match: true, verdict } : { match: false };
    }
    if (w(i).startsWith('@')) {
      const set = table.sets.get(w(i).slice(1));
      if (!set) throw fail(`no set ${w(i)}`);
      if (key.some((k) => typeof k !== 'bigint')) throw fail('set key');
      if (!setHas(set, key as bigint[])) return { match: false };
      i++;
      continue;
    }
    if (key.length !== 1) throw fail('a concatenation compared with a value');
    if (rule[i]?.t === '{') {
      const close = rule.findIndex((x, k) => k > i && x.t === '}');
      const values = rule.slice(i + 1, close).filter((x) => x.t === 'word').map((x) => x.v);
      if (!values.includes(String(key[0]))) return { match: false };
      i = close + 1;
      continue;
    }
    // A value, or a list of them ("established,related").
    const values = [w(i)];
    while (rule[i + 1]?.t === ',') {
      values.push(w(i + 2));
      i += 2;
    }
    i++;
    const ok = typeof key[0] === 'bigint' ? values.some((v) => key[0] === BigInt(v)) : values.includes(key[0] as string);
    if (!ok) return { match: false };
  }
  return { match: true };
}

type ChainResult = Verdict | 'return';

function evalChain(table: NftTable, chain: NftChain, p: Packet, trace: string[], depth: number): ChainResult {
  if (depth > 16) throw new Error('jump loop');
  trace.push(chain.name);
  for (const rule of chain.rules) {
    const r = evalRule(table, rule, p);
    if (!r.match || !r.verdict) continue;
    const [v, target] = r.verdict;
    if (v === 'accept' || v === 'drop') return v;
    if (v === 'return') return 'return';
    if (v === 'jump') {
      const next = table.chains.get(target ?? '');
      if (!next) throw new Error(`jump to undefined chain ${target}`);
      const res = evalChain(table, next, p, trace, depth + 1);
      if (res !== 'return') return res;
      continue;
    }
    throw new Error(`verdict ${r.verdict.join(' ')} is not understood by this evaluator`);
  }
  return 'return';
}

/** The verdict of the base chain on `hook` (only one such chain is expected). */
export function evaluate(table: NftTable, hook: string, p: Packet, trace: string[] = []): Verdict {
  const bases = [...table.chains.values()].filter((c) => c.hook === hook);
  if (bases.length !== 1) throw new Error(`expected one base chain on hook ${hook}, found ${bases.length}`);
  const base = bases[0] as NftChain;
  const r = evalChain(table, base, p, trace, 0);
  return r === 'return' ? (base.policy ?? 'accept') : r;
}

/** Text of a set key for `nft get element`, from key values. */
export function keyText(set: NftSet, key: bigint[], fmt: (f: Fam, v: bigint) => string): string {
  return key
    .map((k, i) => {
      const type = set.key[i];
      if (type === 'ipv4_addr') return fmt('ipv4', k);
      if (type === 'ipv6_addr') return fmt('ipv6', k);
      if (type === 'inet_proto') return Object.entries(L4).find(([, n]) => n === k)?.[0] ?? String(k);
      return String(k);
    })
    .join(' . ');
}

