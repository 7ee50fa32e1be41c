// Objects per second of DICOM C-STORE through the inline proxy, against storescu straight to
// storescp, in one run, on 127.0.0.1.
//
// 1,000 small objects (copies of one synthetic 2x2 CT image, 628 bytes each, made with dump2dcm:
// test/protocols/dicom/dcmtk.ts) are stored over ONE association by
//   storescu -R -aet PACS -aec CT01 127.0.0.1 <port> <1,000 files>
// (-R: only the presentation context the files need, CT Image Storage, is proposed, so the
// association is the same on both paths; the transfer syntax proposal is storescu's default, and
// a one-file run with -v on each path checks that both negotiated the same one) into
//   storescp --aetitle CT01 --ignore
// which receives each object whole and answers it, but writes nothing to disk, so that the disk
// does not hide the hop. storescu waits for each C-STORE-RSP: the time is 1,000 round trips.
// Both DCMTK tools run with TCP_NODELAY=1 (DCMTK 3.6.7 leaves Nagle on otherwise; dcmtk.ts), and
// the proxy and socat set TCP_NODELAY on both of their sockets, so no path waits on a delayed
// ACK. Every process of a path runs on one CPU (proxy-process.ts says why;
// WARDGATE_BENCH_CPU=any lets them float).
// Paths, alternating each round (median of the rounds):
//   direct  storescu -> storescp
//   socat   through `socat ...,nodelay` (for information: what a plain relay's hop costs)
//   proxy   through the proxy process (dist/agent/protocols/worker.js as the agent starts it,
//           proxy-process.ts), one DICOM target whose entry for 127.0.0.1 allows PACS -> CT01,
//           CT Image Storage (the default commands: C-STORE among them)
import { spawn } from 'node:child_process';
import type { WorkerTarget } from '../agent/protocols/worker.js';
import { DicomRulesSchema } from '../agent/protocols/schema.js';
import { copies, makeObject, NO_NAGLE, run, SOP } from '../test/protocols/dicom/dcmtk.js';
import { envNumber, freePorts, median, ratio, sleep, table, waitForPort, withChild, withTempDir, withTimeout } from './lib.js';
import { cpuMs, CPU, LOCALHOST, onCpu, withProxyProcess, type ProxyProcess } from './proxy-process.js';

const OBJECTS = 1000;
const WARM_UP_RUNS = 3;
const TARGET = 0.8;
const MiB = 1024 * 1024;

type Path = 'direct' | 'socat' | 'proxy';
const PATHS: Path[] = ['direct', 'socat', 'proxy'];

interface Run {
  ms: number;
  rate: number;
  /** CPU microseconds per object of the relay (socat with its forks, or the proxy process) and of storescp. */
  cpu: { relay: number; device: number };
}

export async function dicomProxy(): Promise<string[]> {
  const rounds = envNumber('WARDGATE_BENCH_ROUNDS', 7);
  console.log(
    `DICOM on 127.0.0.1: storescu -> [socat | proxy process] -> storescp --ignore; ${OBJECTS} objects over one association, ` +
      `${rounds} rounds, paths alternating, median; TCP_NODELAY on every socket; ${CPU === 'any' ? 'processes where the scheduler puts them' : `every process on CPU ${CPU}`}`,
  );
  return withTempDir('wgbench-dicom-', async (dir) => {
    const files = copies(makeObject(dir, 'ct', SOP.ct, 'CT'), dir, OBJECTS);
    const [scpPort, socatPort, proxyPort] = (await freePorts(3)) as [number, number, number];
    return withChild(
      () => spawn(...onCpu('storescp', ['--aetitle', 'CT01', '--ignore', '-ta', '30', '-td', '30', String(scpPort)]), { cwd: dir, stdio: ['ignore', 'ignore', 'inherit'], env: NO_NAGLE }),
      (scp) =>
        withChild(
          () => spawn(...onCpu('socat', [`TCP-LISTEN:${socatPort},bind=127.0.0.1,fork,reuseaddr,nodelay`, `TCP:127.0.0.1:${scpPort},nodelay`]), { stdio: ['ignore', 'ignore', 'inherit'] }),
          async (socat) => {
            await waitForPort('127.0.0.1', scpPort, 5000, 'storescp');
            await waitForPort('127.0.0.1', socatPort, 5000, 'socat');
            const target: WorkerTarget = {
              key: 'ct-01:104',
              device: 'ct-01',
              port: 104,
              devicePort: scpPort,
              app: 'dicom',
              entries: [{ id: 'ct-01/allow[0]', peers: [LOCALHOST], rules: DicomRulesSchema.parse({ calledAeTitle: 'CT01', callingAeTitles: ['PACS'], sopClasses: ['ct-image-storage'] }) }],
              listenPort: proxyPort,
              addresses: { ipv4: '127.0.0.1' },
              enforce: true,
            };
            return withProxyProcess(dir, [target], (proxy) => measure(proxy, files, { scp: scp.pid ?? 0, socat: socat.pid ?? 0 }, { direct: scpPort, socat: socatPort, proxy: proxyPort }, rounds));
          },
        ),
    );
  });
}

async function measure(proxy: ProxyProcess, files: string[], pids: { scp: number; socat: number }, ports: Record<Path, number>, rounds: number): Promise<string[]> {
  const rssBefore = (await proxy.nextAlive()).rssBytes;
  const storescu = (path: Path, list: string[], ...extra: string[]) =>
    run(...onCpu('storescu', [...extra, '-R', '-aet', 'PACS', '-aec', 'CT01', '127.0.0.1', String(ports[path]), ...list]), 120000, NO_NAGLE);
  const relayCpu = (path: Path) => (path === 'direct' ? 0 : path === 'socat' ? cpuMs(pids.socat, true) : cpuMs(proxy.pid));

  // What each path negotiated: the same transfer syntax and PDU size, or the runs compare different things.
  const negotiated = new Map<Path, string>();
  for (const path of PATHS) {
    const r = await storescu(path, files.slice(0, 1), '-v');
    if (r.code !== 0) throw new Error(`storescu ${path} failed (${r.code}): ${r.output}`);
    const pdv = /Association Accepted \(([^)]*)\)/.exec(r.output)?.[1];
    const ts = /Converting transfer syntax: (.*)/.exec(r.output)?.[1];
    negotiated.set(path, `${ts ?? '?'}; ${pdv ?? '?'}`);
  }
  const what = new Set(negotiated.values());
  if (what.size !== 1) throw new Error(`the paths negotiated differently: ${[...negotiated].map(([p, w]) => `${p}: ${w}`).join('; ')}`);
  console.log(`  every path negotiated: ${[...what][0]}`);

  const once = async (path: Path): Promise<Run> => {
    const before = { relay: relayCpu(path), device: cpuMs(pids.scp) };
    const r = await storescu(path, files);
    if (r.code !== 0) throw new Error(`storescu ${path} failed (${r.code}): ${r.output.slice(-2000)}`);
    await sleep(path === 'socat' ? 300 : 50);
    const per = (msDelta: number) => (msDelta * 1000) / files.length;
    return { ms: r.ms, rate: (files.length * 1000) / r.ms, cpu: { relay: per(relayCpu(path) - before.relay), device: per(cpuMs(pids.scp) - before.device) } };
  };

  // Warm-up, not counted: the page cache for the files, and the proxy's JIT and young
  // generation, which take some 3,000 C-STOREs to settle (the first runs cost up to 1.7x the CPU).
  for (let i = 0; i < WARM_UP_RUNS; i++) for (const path of PATHS) await once(path);

  const runs = new Map<Path, Run[]>(PATHS.map((p) => [p, []]));
  for (let round = 0; round < rounds; round++) {
    for (const path of PATHS) {
      const r = await once(path);
      runs.get(path)?.push(r);
      console.log(`  round ${round + 1}  ${path.padEnd(6)} ${r.ms.toFixed(0).padStart(5)} ms  ${r.rate.toFixed(0).padStart(5)} objects/s  CPU us/object: relay ${r.cpu.relay.toFixed(0)}, storescp ${r.cpu.device.toFixed(0)}`);
    }
  }
  const rssAfter = (await proxy.nextAlive()).rssBytes;
  const rssMax = Math.max(...proxy.alive.map((a) => a.rssBytes));

  // Every association through the proxy (the check, the warm-up, the rounds) was recorded, and nothing was denied.
  const proxied = 1 + WARM_UP_RUNS + rounds;
  await withTimeout(
    (async () => {
      while ((proxy.records.get('dicom.association') ?? 0) < proxied) await sleep(50);
    })(),
    5000,
    `expected ${proxied} dicom.association records from the proxy, got ${proxy.records.get('dicom.association') ?? 0}`,
  );
  if (proxy.alerts.length > 0) throw new Error(`the proxy raised ${proxy.alerts.length} alerts, the first: ${proxy.alerts[0]?.message}`);
  const stats = proxy.alive.at(-1)?.stats;
  if ((stats?.sessionErrors ?? 0) > 0) throw new Error(`the proxy had ${stats?.sessionErrors} session errors`);

  const med = (path: Path, f: (r: Run) => number) => median((runs.get(path) ?? []).map(f));
  const direct = med('direct', (r) => r.rate);
  console.log('');
  console.log(
    table(
      ['path', 'runs (objects/s)', 'objects/s', 'ms', 'CPU us/object relay', 'storescp', 'vs direct'],
      PATHS.map((p) => [
        p,
        (runs.get(p) ?? []).map((r) => r.rate.toFixed(0)).join(' '),
        med(p, (r) => r.rate).toFixed(0),
        med(p, (r) => r.ms).toFixed(0),
        p === 'direct' ? '-' : med(p, (r) => r.cpu.relay).toFixed(0),
        med(p, (r) => r.cpu.device).toFixed(0),
        ratio(med(p, (r) => r.rate) / direct),
      ]),
    ),
  );
  console.log('');
  console.log(`proxy process: RSS ${(rssBefore / MiB).toFixed(1)} MiB before the runs, ${(rssAfter / MiB).toFixed(1)} MiB after, at most ${(rssMax / MiB).toFixed(1)} MiB`);
  const r = med('proxy', (x) => x.rate) / direct;
  const summary = [
    `dicom: proxy/direct = ${ratio(r)} (target >= ${TARGET}x): ${r >= TARGET ? 'PASS' : 'MISS'}; socat/direct = ${ratio(med('socat', (x) => x.rate) / direct)}, proxy/socat = ${ratio(med('proxy', (x) => x.rate) / med('socat', (x) => x.rate))}`,
    `dicom: proxy RSS ${(rssBefore / MiB).toFixed(1)} -> ${(rssAfter / MiB).toFixed(1)} MiB (max ${(rssMax / MiB).toFixed(1)})`,
  ];
  console.log('');
  for (const line of summary) console.log(line);
  return summary;
}
