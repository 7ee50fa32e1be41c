// Flow records from the kernel, end to end: a router-mode namespace site with the committed
// ruleset (ct-01 in enforce mode, pump-01 in monitor mode), `conntrack -E` read in the gateway's
// namespace, real TCP connections from the hospital side and from the device, and the records
// that come out (and the NDJSON flow log they are written to).
//
// Connections stay in conntrack for minutes after they close (TIME_WAIT); the test ends them
// with `conntrack -D` in the gateway namespace, which the kernel reports as DESTROY events with
// their counters, as it would at the end of the timeout.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConntrackReader } from '../../agent/traffic/conntrack.js';
import { FlowTracker, type FlowRecord } from '../../agent/traffic/flows.js';
import { openFlowLog, type FlowLog } from '../../agent/traffic/log.js';
import { canRoot, destroyAll, Lab, removeStale, skipReason, until, v4, v6, warnSkip } from '../integration/site.js';
import { FLOW_POLICIES, loadModel } from './model.js';

const conntrackSkip: string | undefined = (() => {
  if (!canRoot) return skipReason;
  const which = spawnSync('sh', ['-c', 'command -v conntrack'], { encoding: 'utf8' });
  return which.status === 0 ? undefined : 'conntrack (conntrack-tools) is not installed';
})();

warnSkip('flow records', conntrackSkip);

describe.skipIf(conntrackSkip !== undefined)('flow records from conntrack in a router-mode site', () => {
  const labs: Lab[] = [];
  let lab: Lab;
  let reader: ConntrackReader | undefined;
  let log: FlowLog | undefined;
  let logPath: string;
  const records: FlowRecord[] = [];

  beforeAll(async () => {
    await removeStale();
    lab = await Lab.create({ mode: 'router', hosts: ['pacs', 'stranger', 'ct', 'pump'], policies: FLOW_POLICIES });
    labs.push(lab);
    const model = loadModel(lab.gateway);
    logPath = join(lab.dir, 'log', 'flows.ndjson');
    log = openFlowLog({ path: logPath, maxBytes: 64 * 1024, files: 2 });
    const flowLog = log;
    const tracker = new FlowTracker(model);
    reader = await ConntrackReader.start({
      netns: lab.site.gw,
      onEvent: (ev) => {
        for (const r of tracker.handle(ev)) {
          records.push(r);
          flowLog.write(r);
        }
      },
    });
    await lab.listen('ct', 'tcp', [104]);
    await lab.listen('pump', 'tcp', [443, 8080]);
    await lab.listen('pacs', 'tcp', [11112]);
    await lab.commit();
  });
  afterAll(async () => {
    try {
      await reader?.stop();
      log?.close();
    } finally {
      await destroyAll(labs);
    }
  });

  it('allowed and monitored connections become flow records with their entry; denied ones do not', async () => {
    expect(reader?.accounting).toEqual({ on: true });
    const ok = { ok: true, why: 'echo' };
    expect(await lab.connect('pacs', 'tcp', v4('ct'), 104)).toEqual(ok);
    expect(await lab.connect('pacs', 'tcp', v6('ct'), 104)).toEqual(ok);
    expect(await lab.connect('ct', 'tcp', v4('pacs'), 11112)).toEqual(ok);
    expect(await lab.connect('pacs', 'tcp', v4('pump'), 443)).toEqual(ok);
    expect(await lab.connect('stranger', 'tcp', v4('pump'), 8080)).toEqual(ok);
    // Denied in enforce mode: dropped before conntrack confirms it, so no event (NFLOG's part).
    expect(await lab.connect('stranger', 'tcp', v4('ct'), 104)).toEqual({ ok: false, why: 'timeout' });

    const flush = await lab.site.exec('gw', ['conntrack', '-D']);
    expect(flush.code, flush.stderr).toBe(0);
    await until('five flow records', () => records.length >= 5, 10000);

    const seen = records.map((r) => [r.device, r.peer, r.direction, r.dport, r.app, r.verdict, r.entry]);
    expect(seen).toEqual(
      expect.arrayContaining([
        ['ct-01', v4('pacs'), 'inbound', 104, 'DICOM', 'allowed', 'ct-01/allow[0]'],
        ['ct-01', v6('pacs'), 'inbound', 104, 'DICOM', 'allowed', 'ct-01/allow[0]'],
        ['ct-01', v4('pacs'), 'outbound', 11112, 'DICOM', 'allowed', 'ct-01/allow[3]'],
        ['pump-01', v4('pacs'), 'inbound', 443, 'HTTPS', 'allowed', 'pump-01/allow[0]'],
        ['pump-01', v4('stranger'), 'inbound', 8080, null, 'monitored', null],
      ]),
    );
    expect(records).toHaveLength(5);
    expect(records.some((r) => r.peer === v4('stranger') && r.device === 'ct-01')).toBe(false);
    for (const r of records) {
      expect(r.proto).toBe('tcp');
      expect(r.accounted).toBe(true);
      expect(r.bytes).toBeGreaterThan(0);
      expect(r.toDevice.bytes).toBeGreaterThan(0);
      expect(r.fromDevice.bytes).toBeGreaterThan(0);
      expect(r.packets).toBe(r.toDevice.packets + r.fromDevice.packets);
      expect(r.durationMs).not.toBeNull();
      expect(r.start).not.toBeNull();
    }
    expect(records.find((r) => r.entry === 'ct-01/allow[0]')?.peerGroup).toBe('pacs');
    expect(reader?.unparsed).toBe(0);

    const logged = readFileSync(logPath, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as FlowRecord & { kind: string });
    expect(logged).toEqual(records.map((r) => ({ kind: 'flow', ...r })));
  });
});
