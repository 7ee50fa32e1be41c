// Learning end to end, with real traffic: a router-mode namespace site with pump-01 in monitor
// mode and `wardgate run` recording flows. For random traffic (fast-check: a few connections
// between hospital hosts and the pump, either way, TCP, UDP or ping, IPv4 or IPv6), the learned
// allow-list, once the pump enforces it, lets exactly that traffic through and drops the rest:
// every observed connection succeeds (and, for a peer folded into its group, the same traffic
// from the group's address of the other family), and a sample of unobserved ones fails.
//
// One site serves every run: each run puts the monitor-mode policy back, takes its window from
// `--since`, and ends every connection (conntrack -D) so that no record spills into the next.
//
// Reproduce a failure with the seed fast-check prints: FC_SEED=<seed>; more runs: FC_LEARN_RUNS=<n>.
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readObserved } from '../../agent/traffic/observed.js';
import { canRoot, destroyAll, Lab, PUMP, removeStale, skipReason, sleep, stopAgent, until, v4, v6, warnSkip, type HostName } from '../integration/site.js';
import { FLOW_POLICIES } from './model.js';

const conntrackSkip: string | undefined = (() => {
  if (!canRoot) return skipReason;
  const which = spawnSync('sh', ['-c', 'command -v conntrack'], { encoding: 'utf8' });
  return which.status === 0 ? undefined : 'conntrack (conntrack-tools) is not installed';
})();

warnSkip('learning in a namespace site', conntrackSkip);

type Service = { proto: 'tcp' | 'udp'; port: number } | { proto: 'icmp' };
/** Listeners on the pump (inbound) and on every hospital host (outbound), and ping both ways. */
const INBOUND: Service[] = [
  { proto: 'tcp', port: 443 },
  { proto: 'tcp', port: 2575 },
  { proto: 'tcp', port: 8080 },
  { proto: 'udp', port: 4242 },
  { proto: 'udp', port: 5000 },
  { proto: 'icmp' },
];
const OUTBOUND: Service[] = [{ proto: 'tcp', port: 104 }, { proto: 'tcp', port: 8443 }, { proto: 'udp', port: 123 }, { proto: 'icmp' }];
const HOSTS = ['pacs', 'biomed', 'stranger'] as const satisfies readonly HostName[];
/** Hosts inside a peer group of GROUPS (pacs, biomed: both families); stranger is in none. */
const GROUPED = new Set<HostName>(['pacs', 'biomed']);

interface Conn {
  direction: 'inbound' | 'outbound';
  host: (typeof HOSTS)[number];
  family: 4 | 6;
  service: Service;
}

const svcText = (s: Service) => (s.proto === 'icmp' ? 'icmp' : `${s.proto}/${s.port}`);
const connText = (c: Conn) => `${c.direction} ${c.host} ipv${c.family} ${svcText(c.service)}`;
/** What the learned policy allows for a connection: the group for a grouped host, else the one address. */
const allowKey = (c: Conn) => `${c.direction} ${GROUPED.has(c.host) ? c.host : `${c.host}/${c.family}`} ${svcText(c.service)}`;

const UNIVERSE: Conn[] = (['inbound', 'outbound'] as const).flatMap((direction) =>
  HOSTS.flatMap((host) => ([4, 6] as const).flatMap((family) => (direction === 'inbound' ? INBOUND : OUTBOUND).map((service) => ({ direction, host, family, service })))),
);

const connArb: fc.Arbitrary<Conn> = fc.constantFrom(...UNIVERSE);

const RUNS = Number(process.env.FC_LEARN_RUNS ?? 4);

describe.skipIf(conntrackSkip !== undefined)('learning from monitored traffic, then enforcing it', () => {
  const labs: Lab[] = [];
  let lab: Lab;
  let agent: ReturnType<Lab['startAgent']> | undefined;

  /** One connection or ping, through the gateway; true when it got its answer. */
  const attempt = async (c: Conn, ms = 1000): Promise<boolean> => {
    const addr = (h: HostName) => (c.family === 4 ? v4(h) : v6(h));
    const [from, to] = c.direction === 'inbound' ? [c.host, 'pump' as const] : ['pump' as const, c.host];
    if (c.service.proto === 'icmp') return lab.ping(from, addr(to), Math.ceil(ms / 1000));
    return (await lab.connect(from, c.service.proto, addr(to), c.service.port, ms)).ok;
  };

  /** Ends every connection the gateway tracks, so that the agent writes their records now. */
  const flush = async () => {
    const r = await lab.site.exec('gw', ['conntrack', '-D']);
    // conntrack -D exits 1 when there was nothing to delete.
    if (r.code !== 0 && !/0 flow entries have been deleted/.test(r.stderr)) throw new Error(`conntrack -D failed (${r.code}): ${r.stderr}`);
  };

  const flowDir = () => join(lab.stateDir, 'flows');

  beforeAll(async () => {
    await removeStale();
    lab = await Lab.create({ mode: 'router', hosts: ['pacs', 'biomed', 'stranger', 'pump'], policies: FLOW_POLICIES });
    labs.push(lab);
    await lab.listen('pump', 'tcp', [443, 2575, 8080]);
    await lab.listen('pump', 'udp', [4242, 5000]);
    for (const h of HOSTS) {
      await lab.listen(h, 'tcp', [104, 8443]);
      await lab.listen(h, 'udp', [123]);
    }
    await lab.commit();
    agent = lab.startAgent();
    // The agent starts conntrack in its own time: a flow in the log says the reader is up.
    await until(
      'a first flow record',
      async () => {
        if (agent?.child.exitCode !== null) throw new Error(`the agent exited: ${agent?.output() ?? ''}`);
        await attempt({ direction: 'inbound', host: 'pacs', family: 4, service: { proto: 'tcp', port: 443 } });
        await flush();
        await sleep(300);
        return (await readObserved(flowDir())).records > 0;
      },
      30000,
      500,
    ).catch((err: unknown) => {
      throw new Error(`${(err as Error).message}; agent output:\n${agent?.output() ?? ''}`);
    });
  }, 120000);

  afterAll(async () => {
    try {
      await stopAgent(agent);
    } finally {
      await destroyAll(labs);
    }
  }, 30000);

  it('the learned allow-list, enforced, allows exactly the observed traffic', async () => {
    const pumpFile = join(lab.dir, 'rules', 'pump.yaml');
    await fc.assert(
      fc.asyncProperty(fc.array(connArb, { minLength: 1, maxLength: 5 }), fc.array(fc.nat(), { minLength: 6, maxLength: 6 }), async (observed, picks) => {
        // Monitor mode again, and a window of our own.
        lab.writePolicy('pump.yaml', PUMP);
        await lab.commit();
        await flush();
        await sleep(20);
        const since = new Date().toISOString();

        for (const c of observed) expect(await attempt(c), `in monitor mode: ${connText(c)}`).toBe(true);
        await flush();
        await until('the records of the observed connections', async () => (await readObserved(flowDir(), { device: 'pump-01', since: new Date(since) })).records >= observed.length, 10000);

        const learn = await lab.wardgate('policy', 'learn', '--device', 'pump-01', '--since', since, '--out', pumpFile);
        expect(learn.code, learn.stderr).toBe(0);
        const check = await lab.wardgate('policy', 'check');
        expect(check.code, `${check.stderr}${readFileSync(pumpFile, 'utf8')}`).toBe(0);
        const learned = readFileSync(pumpFile, 'utf8');
        expect(learned.match(/^ {4}mode: monitor$/gm)).toHaveLength(1);
        writeFileSync(pumpFile, learned.replace(/^ {4}mode: monitor$/m, '    mode: enforce'));
        await lab.commit();

        const allowed = new Set(observed.map(allowKey));
        const expectOk = UNIVERSE.filter((c) => allowed.has(allowKey(c)));
        const denied = UNIVERSE.filter((c) => !allowed.has(allowKey(c)));
        const sample = [...new Set(picks.map((p) => denied[p % denied.length]!))];
        const checks = [...expectOk.map((c) => ({ c, ok: true })), ...sample.map((c) => ({ c, ok: false }))];
        const results: { c: Conn; ok: boolean; got: boolean }[] = [];
        // A few at a time: the machine has two CPUs, and each attempt is a process.
        for (let i = 0; i < checks.length; i += 4) {
          results.push(...(await Promise.all(checks.slice(i, i + 4).map(async (x) => ({ ...x, got: await attempt(x.c) })))));
        }
        await flush();
        const wrong = results.filter((r) => r.got !== r.ok).map((r) => `${connText(r.c)}: expected ${r.ok ? 'to pass' : 'to be dropped'}`);
        expect(wrong, `observed: ${observed.map(connText).join('; ')}\nlearned:\n${learned}`).toEqual([]);
      }),
      {
        numRuns: RUNS,
        // A run takes seconds; a failure is reported as found, with its seed, not shrunk for minutes.
        endOnFailure: true,
        ...(process.env.FC_SEED ? { seed: Number(process.env.FC_SEED) } : {}),
      },
    );
  }, 300000);
});
