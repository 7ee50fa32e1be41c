// The kernel's own counters of the wardgate table, summed for the health report. Input is the
// output of `nft -j list table inet wardgate` (with counters, so not -s). The shapes are those
// agent/policy/compile.ts writes:
//
//   dev_<id>_<in|out> chains   allow-list rules that look the packet up in sets whose elements
//                              carry counters (`... @<set> counter return`), then one verdict:
//                              "<id> enforce: default drop"        counter drop
//                              "<id> monitor: log and allow"       counter return
//                              "<id> fail-safe: failMode closed"   counter drop   (fail-safe ruleset)
//                              "<id> fail-safe: failMode open"     counter return (fail-safe ruleset)
//   input chain                "gatewayInput: drop"                counter drop
//
// Only packets that open a connection meet these rules: replies and the rest of an allowed
// connection take the established fast path first. Traffic between two listed devices passes
// the sender's outbound and the receiver's inbound chain, and counts in both.
import type { HealthPayload } from '../mqtt/topics.js';

export interface RulesetCounters {
  /** Packets matched by allow-list set elements. */
  accepted: number;
  /** Packets dropped by enforce rules and by fail-closed rules of the fail-safe ruleset. */
  dropped: number;
  /** Packets a monitor-mode device's allow-list did not cover: logged and let through. */
  monitored: number;
  /** Packets let through by fail-open rules of the fail-safe ruleset. */
  failOpen: number;
  /** Packets to the gateway itself dropped by gatewayInput: drop (not device traffic). */
  gatewayDropped: number;
  /** Why some counters could not be read; empty when the listing was whole. */
  problems: string[];
}

interface NftCounter {
  packets?: unknown;
}
interface NftRule {
  chain?: unknown;
  comment?: unknown;
  expr?: unknown;
}
interface NftSet {
  name?: unknown;
  elem?: unknown;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function packets(counter: unknown): number {
  const p = isObject(counter) ? (counter as NftCounter).packets : undefined;
  return typeof p === 'number' && Number.isFinite(p) ? p : 0;
}

/** The set names a rule looks up ("@ct_01_in_v4" on the right of a match). */
function setRefs(expr: Record<string, unknown>[]): string[] {
  return expr.flatMap((e) => {
    const right = isObject(e.match) ? e.match.right : undefined;
    return typeof right === 'string' && right.startsWith('@') ? [right.slice(1)] : [];
  });
}

/** Sums the wardgate table's counters; a missing table (undefined) gives zeros. */
export function rulesetCounters(listingJson: string | undefined): RulesetCounters {
  const out: RulesetCounters = { accepted: 0, dropped: 0, monitored: 0, failOpen: 0, gatewayDropped: 0, problems: [] };
  if (listingJson === undefined || listingJson.trim() === '') return out;
  let parsed: unknown;
  try {
    parsed = JSON.parse(listingJson);
  } catch (err) {
    out.problems.push(`ruleset: nft -j output is not JSON: ${(err as Error).message}`);
    return out;
  }
  const items = isObject(parsed) ? parsed.nftables : undefined;
  if (!Array.isArray(items)) {
    out.problems.push('ruleset: nft -j output has no "nftables" array');
    return out;
  }
  const allowSets = new Set<string>();
  const sets: NftSet[] = [];
  for (const item of items as unknown[]) {
    if (!isObject(item)) continue;
    if (isObject(item.set)) sets.push(item.set);
    if (!isObject(item.rule)) continue;
    const rule = item.rule as NftRule;
    const chain = typeof rule.chain === 'string' ? rule.chain : '';
    const comment = typeof rule.comment === 'string' ? rule.comment : '';
    const expr = Array.isArray(rule.expr) ? rule.expr.filter(isObject) : [];
    const counted = packets(expr.find((e) => 'counter' in e)?.counter);
    const drops = expr.some((e) => 'drop' in e);
    if (chain.startsWith('dev_')) {
      for (const s of setRefs(expr)) allowSets.add(s);
      if (drops) out.dropped += counted;
      else if (/ monitor: log and allow\b/.test(comment)) out.monitored += counted;
      else if (/ fail-safe: failMode open\b/.test(comment)) out.failOpen += counted;
    } else if (chain === 'input' && drops) {
      out.gatewayDropped += counted;
    }
  }
  for (const set of sets) {
    if (typeof set.name !== 'string' || !allowSets.has(set.name) || !Array.isArray(set.elem)) continue;
    // Elements with a counter are {"elem": {"val": ..., "counter": {...}}}; bare values have none.
    for (const el of set.elem as unknown[]) {
      if (isObject(el) && isObject(el.elem)) out.accepted += packets(el.elem.counter);
    }
  }
  return out;
}

/** The health payload's `ruleset` from the policy manager's status and the counters. */
export function rulesetHealth(status: { kernel: string; committed?: { policyHash: string } }, counters: RulesetCounters): HealthPayload['ruleset'] {
  return {
    kernel: status.kernel,
    policyHash: status.committed?.policyHash ?? null,
    accepted: counters.accepted,
    dropped: counters.dropped,
    monitored: counters.monitored,
  };
}
