// The traffic module of the agent:
//   conntrack events  -> flow records (allowed, monitored, unmatched) -+-> the rotating flow log
//   NFLOG packets     -> denied records (one per attempt)             -+-> flows summaries
//   both, and the segment's neighbour table -> detections -> events (the caller's, to the outbox)
import { join } from 'node:path';
import type { GatewayConfig } from '../config/schema.js';
import type { Module } from '../module.js';
import type { FlowsSummaryPayload } from '../mqtt/topics.js';
import type { Model } from '../policy/model.js';
import { ConntrackReader } from './conntrack.js';
import { DeniedAggregator } from './denied.js';
import { Detector, type Detection } from './detect.js';
import { FlowTracker, type FlowRecord } from './flows.js';
import { openFlowLog, type FlowLog } from './log.js';
import { readNeighbours } from './neighbours.js';
import { NflogReader } from './nflog.js';
import { OuiRegistry } from './oui.js';
import { FlowSummary } from './summary.js';

export interface TrafficDeps {
  config: GatewayConfig['traffic'];
  /** The resolved policy; undefined while the policy files do not load. */
  model: () => Model | undefined;
  stateDir: string;
  /** The enforcement namespace, where conntrack, tcpdump and ip run. */
  netns: string | undefined;
  log: { info(obj: object, msg?: string): void; warn(obj: object, msg?: string): void; error(obj: object, msg?: string): void };
  publish: (summary: FlowsSummaryPayload) => void;
  /** A detection, to be raised as an event. */
  detection: (d: Detection) => void;
  /** Each record once written to the flow log (the flow-rate benchmark counts them). */
  onRecord?: (rec: FlowRecord) => void;
  site: string;
  gateway: string;
}

interface Reader {
  stop(): Promise<void>;
}

/**
 * Keeps one tool reader running: started again after it exits, with a backoff from 1 s doubling
 * up to 60 s (back to 1 s once a reader has run for a minute).
 */
class Supervised {
  private reader: Reader | undefined;
  private timer: NodeJS.Timeout | undefined;
  private failures = 0;
  private stopping = false;

  constructor(
    private readonly name: string,
    private readonly deps: Pick<TrafficDeps, 'log'>,
    private readonly launch: (onExit: (code: number | null, stderr: string) => void) => Promise<Reader>,
  ) {}

  /** The first start: rejects when the tool cannot start at all. */
  async start(): Promise<void> {
    const startedAt = Date.now();
    const r = await this.launch((code, stderr) => {
      if (Date.now() - startedAt >= 60_000) this.failures = 0;
      this.deps.log.error({ module: 'traffic', reader: this.name, code, stderr: stderr.trim() }, `${this.name} exited; restarting it`);
      this.again();
    });
    if (this.stopping) await r.stop();
    else this.reader = r;
  }

  private again(): void {
    if (this.stopping) return;
    const delay = Math.min(60_000, 1000 * 2 ** this.failures++);
    this.timer = setTimeout(() => {
      this.start().catch((err: unknown) => {
        this.deps.log.error({ module: 'traffic', reader: this.name, err: (err as Error).message }, `${this.name} did not start again`);
        this.again();
      });
    }, delay);
  }

  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.timer);
    await this.reader?.stop();
  }
}

/**
 * Flow records in <stateDir>/flows/, a flows summary per interval through the outbox, and the
 * detections. conntrack and tcpdump take a moment to start: the agent does not wait for them.
 * If conntrack cannot start at all (not installed, no ctnetlink), the module is off; if only
 * tcpdump cannot, the flow log runs without denied records (and says so).
 */
export function trafficModule(deps: TrafficDeps): Module {
  const t = deps.config;
  const netns = deps.netns;
  let flowLog: FlowLog | undefined;
  let denied: DeniedAggregator | undefined;
  let detector: Detector | undefined;
  const timers: NodeJS.Timeout[] = [];
  const readers: Supervised[] = [];
  const summary = new FlowSummary();
  const publishSummary = () => deps.publish(summary.take(deps.site, deps.gateway));
  const record = (rec: FlowRecord) => {
    flowLog?.write(rec);
    summary.add(rec);
    detector?.flow(rec);
    deps.onRecord?.(rec);
  };

  let first: Promise<void> | undefined;
  return {
    name: 'traffic',
    start: () => {
      const model = deps.model();
      if (!model) throw new Error('the policy files do not load: no device to record flows for');
      const gw = model.gateway;
      const tracker = new FlowTracker(model);
      const agg = new DeniedAggregator(model);
      denied = agg;
      const oui = new OuiRegistry(t.detections.ouiDir);
      const det = new Detector({ config: t.detections, model, emit: deps.detection, vendors: (macs) => oui.lookup(macs) });
      detector = det;
      flowLog = openFlowLog({ path: join(deps.stateDir, 'flows', 'flows.ndjson'), maxBytes: Math.floor(t.diskBudgetBytes / t.files), files: t.files, batch: true });

      const conntrack = new Supervised('conntrack', deps, async (onExit) => {
        const r = await ConntrackReader.start({
          ...(netns !== undefined ? { netns } : {}),
          onEvent: (ev) => {
            if (ev.type === 'new') det.connection(ev);
            for (const rec of tracker.handle(ev)) record(rec);
          },
          onExit,
          onOverrun: () => deps.log.warn({ module: 'traffic' }, 'the kernel dropped conntrack events (ENOBUFS): some flows are missing from the log'),
        });
        if (!r.accounting.on) deps.log.warn({ module: 'traffic' }, r.accounting.reason ?? 'conntrack accounting is off');
        return r;
      });
      const nflog = new Supervised('tcpdump (NFLOG)', deps, (onExit) =>
        NflogReader.start({
          group: gw.nflogGroup,
          ...(netns !== undefined ? { netns } : {}),
          onEvent: (ev) => {
            det.nflog(ev);
            for (const rec of agg.add(ev, (peer) => tracker.groupOfAddress(peer))) record(rec);
          },
          onExit,
        }),
      );
      readers.push(conntrack, nflog);

      timers.push(setInterval(publishSummary, t.summaryIntervalSeconds * 1000));
      timers.push(
        setInterval(() => {
          for (const rec of agg.flush(Date.now())) record(rec);
          det.tick();
        }, 1000),
      );
      if (t.detections.neighbourIntervalSeconds > 0) {
        let busy = false;
        const scan = () => {
          if (busy) return;
          busy = true;
          readNeighbours(gw, netns)
            .then((list) => det.neighbours(list))
            .catch((err: unknown) => deps.log.warn({ module: 'traffic', err: (err as Error).message }, 'could not read the device segment\'s neighbours'))
            .finally(() => (busy = false));
        };
        timers.push(setInterval(scan, t.detections.neighbourIntervalSeconds * 1000));
        scan();
      }

      first = Promise.all([
        conntrack.start().catch((err: unknown) => {
          deps.log.error({ module: 'traffic', err: (err as Error).message }, 'conntrack did not start: no flow records');
        }),
        nflog.start().catch((err: unknown) => {
          deps.log.error({ module: 'traffic', err: (err as Error).message }, 'tcpdump did not start on the NFLOG group: no denied records and no denied-flow detections');
        }),
      ]).then(() => undefined);
    },
    stop: async () => {
      await first;
      for (const timer of timers) clearInterval(timer);
      // Readers first: whatever they had read is recorded before the log closes.
      await Promise.all(readers.map((r) => r.stop()));
      for (const rec of denied?.flush(Date.now(), true) ?? []) record(rec);
      // The last partial interval goes to the outbox, to be sent after the next start.
      if (!summary.empty) publishSummary();
      flowLog?.close();
      flowLog = undefined;
      detector = undefined;
    },
  };
}
