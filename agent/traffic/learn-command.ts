// `policy.learn`, the signed command: the proposal `wardgate policy learn` prints, for a console
// to show. Read-only by design: it never writes a policy file, so applying a proposal stays an act
// of a person on the gateway (docs/commands.md, docs/learning.md).
import { learnProposal } from '../cli/learn.js';
import { UsageError, type GlobalOptions } from '../cli/context.js';
import { parseSince } from '../cli/flowlog.js';
import { ConfigError } from '../config/diagnostics.js';
import { CommandFailure, type CommandHandler } from '../mqtt/commands.js';

export interface LearnAnswer {
  device: string;
  /** The start of the window learned from, or null for the whole flow log. */
  since: string | null;
  entries: number;
  flows: number;
  /** The policy file the proposal goes in place of, as `policy check` names it. */
  file: string;
  /** The proposal, exactly as `wardgate policy learn` prints it. */
  text: string;
  /** Observed traffic not proposed, and why, one line each. */
  left: string[];
  skippedLines: number;
}

export function policyLearnHandler(opts: GlobalOptions): CommandHandler {
  return async (args) => {
    const device = args.device;
    if (typeof device !== 'string' || device === '') throw new CommandFailure('E_BAD_ARGS', 'policy.learn needs { device: "<id>", since?: "7d" | "<ISO 8601 time>" }');
    if (args.since !== undefined && typeof args.since !== 'string') throw new CommandFailure('E_BAD_ARGS', 'policy.learn: since must be a string (7d, 24h, 2030-01-31T08:00Z)');
    let since: Date | undefined;
    try {
      since = args.since !== undefined ? parseSince(args.since) : undefined;
    } catch (err) {
      if (err instanceof UsageError) throw new CommandFailure('E_BAD_ARGS', `policy.learn: ${err.message.replace('--since', 'since')}`);
      throw err;
    }
    let r: Awaited<ReturnType<typeof learnProposal>>;
    try {
      r = await learnProposal(opts, device, since);
    } catch (err) {
      if (err instanceof ConfigError) throw new CommandFailure('E_CONFIG', err.message);
      throw err;
    }
    if (!r.ok) {
      // Without the CLI's lines "above", what was left out goes into the message itself.
      const message = r.code === 'E_NOTHING_TO_PROPOSE' ? `${r.message.replace(/ \(above\)$/, '')}:\n${r.left.join('\n')}` : [r.message, ...r.diagnostics].join('\n');
      throw new CommandFailure(r.code, message);
    }
    const answer: LearnAnswer = {
      device: r.device,
      since: r.since?.toISOString() ?? null,
      entries: r.entries,
      flows: r.flows,
      file: r.shown,
      text: r.text.trimEnd(),
      left: r.left,
      skippedLines: r.skippedLines,
    };
    return answer;
  };
}
