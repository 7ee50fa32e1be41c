// The traffic module of the agent: conntrack events -> flow records -> the rotating flow log, and
// a flows summary per interval (published by the caller, through the outbox).
import { join } from 'node:path';
import type { GatewayConfig } from '../config/schema.js';
import type { Module } from '../module.js';
import type { FlowsSummaryPayload } from '../mqtt/topics.js';
import type { Model } from '../policy/model.js';
import { ConntrackReader } from './conntrack.js';
import { FlowTracker } from './flows.js';
import { openFlowLog, type FlowLog } from './log.js';
import { FlowSummary } from './summary.js';

export interface TrafficDeps {
  config: GatewayConfig['traffic'];
  /** The resolved policy; undefined while the policy files do not load. */
  model: () => Model | undefined;
  stateDir: string;
  /** The enforcement namespace, where conntrack runs. */
  netns: string | undefined;
  log: { warn(obj: object, msg?: string): void; error(obj: object, msg?: string): void };
  publish: (summary: FlowsSummaryPayload) => void;
  site: string;
  gateway: string;
}

/**
 * conntrack events -> flow records -> the rotating flow log in <stateDir>/flows/, and a flows
 * summary per interval through the outbox. A reader that exits is started again, with a backoff
 * from 1 s doubling up to 60 s (back to 1 s once a reader has run for a minute).
 */
export function trafficModule(deps: TrafficDeps): Module {
  const t = deps.config;
  const netns = deps.netns;
  let reader: ConntrackReader | undefined;
  let flowLog: FlowLog | undefined;
  let summaryTimer: NodeJS.Timeout | undefined;
  let restartTimer: NodeJS.Timeout | undefined;
  let stopping = false;
  let failures = 0;
  const summary = new FlowSummary();
  const publishSummary = () => {
    deps.publish(summary.take(deps.site, deps.gateway));
  };

  const startReader = async (tracker: FlowTracker, log: FlowLog): Promise<void> => {
    const startedAt = Date.now();
    const r = await ConntrackReader.start({
      ...(netns !== undefined ? { netns } : {}),
      onEvent: (ev) => {
        for (const rec of tracker.handle(ev)) {
          log.write(rec);
          summary.add(rec);
        }
      },
      onExit: (code, stderr) => {
        if (Date.now() - startedAt >= 60_000) failures = 0;
        deps.log.error({ module: 'traffic', code, stderr: stderr.trim() }, 'conntrack exited; restarting it');
        restart(tracker, log);
      },
    });
    if (stopping) {
      await r.stop();
      return;
    }
    reader = r;
    if (!r.accounting.on) deps.log.warn({ module: 'traffic' }, r.accounting.reason ?? 'conntrack accounting is off');
  };
  const restart = (tracker: FlowTracker, log: FlowLog) => {
    if (stopping) return;
    const delay = Math.min(60_000, 1000 * 2 ** failures++);
    restartTimer = setTimeout(() => {
      startReader(tracker, log).catch((err: unknown) => {
        deps.log.error({ module: 'traffic', err: (err as Error).message, retryInMs: Math.min(60_000, 1000 * 2 ** failures) }, 'conntrack did not start again');
        restart(tracker, log);
      });
    }, delay);
  };

  let first: Promise<void> | undefined;
  return {
    name: 'traffic',
    start: () => {
      const model = deps.model();
      if (!model) throw new Error('the policy files do not load: no device to record flows for');
      const tracker = new FlowTracker(model);
      const log = openFlowLog({ path: join(deps.stateDir, 'flows', 'flows.ndjson'), maxBytes: Math.floor(t.diskBudgetBytes / t.files), files: t.files });
      flowLog = log;
      summaryTimer = setInterval(publishSummary, t.summaryIntervalSeconds * 1000);
      // conntrack takes a moment to start (sysctl, then its settle time): the agent does not
      // wait for it. If it cannot start at all (not installed, no ctnetlink), the module is off.
      first = startReader(tracker, log).catch((err: unknown) => {
        deps.log.error({ module: 'traffic', err: (err as Error).message }, 'module failed to start; running without it');
        clearInterval(summaryTimer);
        log.close();
        flowLog = undefined;
      });
    },
    stop: async () => {
      stopping = true;
      await first;
      clearInterval(summaryTimer);
      clearTimeout(restartTimer);
      await reader?.stop();
      // The last partial interval goes to the outbox, to be sent after the next start.
      if (!summary.empty) publishSummary();
      flowLog?.close();
      flowLog = undefined;
    },
  };
}
