// The first part of `wardgate demo`, as root with nftables: a closed bridge-mode site in network
// namespaces (a PACS, a lab middleware host, a stranger, a CT scanner and a lab analyzer), the
// example policies applied to its gateway with commit-confirm, and real connections that show
// what passes and what is dropped, in the flow log and the data-flow map. It says what it did.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { NetnsSite } from '../../hardware/netns-site.js';
import { Controller } from '../controller.js';
import { flowsCommand } from '../cli/flows.js';
import { policyCommand } from '../cli/policy.js';
import type { Io } from '../cli/io.js';
import { PACKAGE_ROOT } from '../version.js';

const repo = PACKAGE_ROOT;

function gatewayYaml(stateDir: string): string {
  return `apiVersion: wardgate/v1
kind: Gateway
site: demo
gateway: gw-demo-01
mode: bridge
interfaces: { uplink: p0, device: p3, bridge: br0 }
deviceSegments: [10.20.0.0/24, fd00:20::/64]
management: { networks: [10.99.0.0/24] }
stateDir: ${stateDir}
policies:
  - ${join(repo, 'rules')}/*.yaml
commitConfirm: { timeoutSeconds: 120 }
`;
}

const HOSTS = [
  { name: 'pacs', side: 'hospital' as const, ipv4: ['10.10.1.10'], label: 'PACS' },
  { name: 'middleware', side: 'hospital' as const, ipv4: ['10.10.4.30'], label: 'lab middleware' },
  { name: 'stranger', side: 'hospital' as const, ipv4: ['10.10.9.66'], label: 'unknown hospital host' },
  { name: 'ct', side: 'device' as const, ipv4: ['10.20.0.11'], label: 'CT scanner ct-01' },
  { name: 'analyzer', side: 'device' as const, ipv4: ['10.20.0.31'], label: 'lab analyzer lab-analyzer-01' },
];

const TRIES = [
  { from: 'pacs', to: 'ct', port: 104, expect: true, why: 'DICOM from the PACS (ct-01/allow[1])' },
  { from: 'stranger', to: 'ct', port: 104, expect: false, why: 'DICOM from an unknown host' },
  { from: 'pacs', to: 'ct', port: 23, expect: false, why: 'telnet from the PACS' },
  { from: 'middleware', to: 'analyzer', port: 502, expect: true, why: 'Modbus from the lab middleware (lab-analyzer-01/allow[0])' },
  { from: 'stranger', to: 'analyzer', port: 502, expect: false, why: 'Modbus from an unknown host' },
];

/** Returns the number of surprises (0: everything went as the policies say). */
export async function runNamespaceSite(base: string, opts: { keep: boolean }, io: Io): Promise<number> {
  const work = join(base, 'netns');
  mkdirSync(work, { recursive: true });
  const gateway = join(work, 'gateway.yaml');
  writeFileSync(gateway, gatewayYaml(join(work, 'state')));
  io.out(`\nenforcement in the kernel: the example policies from ${join(repo, 'rules')} on a gateway in network namespaces`);
  const prefix = `wgdemo${process.pid}`;
  io.out(`building a closed bridge-mode site in network namespaces ${prefix}-*`);
  const site = await NetnsSite.create({ prefix, mode: 'bridge', hosts: HOSTS });
  const netcheck = join(repo, 'hardware', 'netcheck.mjs');
  try {
    for (const h of HOSTS.filter((x) => x.side === 'device')) site.spawn(h.name, [process.execPath, netcheck, 'listen', 'tcp', '23', '104', '502']);
    await new Promise((r) => setTimeout(r, 500));
    const g = { gateway, netns: site.gw };
    await policyCommand('check', g, io);
    await policyCommand('apply', g, io);
    await policyCommand('confirm', g, io);

    // The agent, for its flow log and detections: its events are printed as they come.
    const events: string[] = [];
    const logLines = new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const line of chunk.toString().split('\n').filter(Boolean)) {
          const rec = JSON.parse(line) as { event?: string; severity?: string; msg?: string };
          if (rec.event !== undefined) {
            events.push(rec.event);
            io.out(`  event [${rec.severity ?? ''}] ${rec.event}: ${rec.msg ?? ''}`);
          }
        }
        done();
      },
    });
    const agent = new Controller(g, io, pino({ name: 'wardgate' }, logLines));
    await agent.start();
    await new Promise((r) => setTimeout(r, 1500)); // conntrack and tcpdump subscribe
    io.out('');
    io.out('trying connections across the gateway (the agent records them):');
    let surprises = 0;
    for (const t of TRIES) {
      const target = HOSTS.find((h) => h.name === t.to);
      const r = await site.exec(t.from, [process.execPath, netcheck, 'connect', 'tcp', target?.ipv4[0] ?? '', String(t.port), '1000']);
      const passed = r.code === 0;
      if (passed !== t.expect) surprises++;
      io.out(`  ${passed ? 'PASSED ' : 'DROPPED'} ${t.from} -> ${target?.label ?? t.to}:${t.port}  ${t.why}${passed === t.expect ? '' : '  <-- unexpected'}`);
    }
    // Connections end (conntrack -D), and the agent stops: the flows and the denied attempts are
    // in its flow log.
    await site.exec('gw', ['conntrack', '-D']);
    await new Promise((r) => setTimeout(r, 500));
    await agent.stop();
    const flowFile = join(work, 'state', 'flows', 'flows.ndjson');
    const records = readFileSync(flowFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { device: string; peer: string; dport: number | null; verdict: string; entry: string | null; app: string | null });
    io.out(`\nthe flow log (${flowFile}):`);
    for (const r of records.filter((x) => x.device !== 'gateway')) {
      io.out(`  ${r.verdict.padEnd(9)} ${r.peer} -> ${r.device}:${r.dport ?? ''} ${r.app ?? ''}${r.entry ? ` (${r.entry})` : ''}`);
    }
    if (!events.includes('flow.denied')) {
      surprises++;
      io.out('  <-- expected a flow.denied event');
    }
    const mapFile = join(work, 'flows-map.svg');
    io.out('\nthe data-flow map (wardgate flows map --format svg), allowed against observed:');
    await flowsCommand('map', { gateway, format: 'svg', out: mapFile }, io);
    io.out(`  ${mapFile}${opts.keep ? '' : ' (removed with the site; --keep keeps it)'}`);
    io.out('');
    await policyCommand('status', g, io);
    const counters = await site.exec('gw', ['nft', 'list', 'chain', 'inet', 'wardgate', 'dev_ct_01_in']);
    io.out('\nct-01 inbound chain, with its counters:');
    io.out(counters.stdout.trimEnd());
    if (opts.keep) {
      io.out(`\n--keep: the site stays up. Look: ip netns exec ${site.gw} nft list table inet wardgate`);
      io.out(`remove it: for n in $(ip netns list | grep ${prefix} | cut -d' ' -f1); do ip netns del $n; done`);
    }
    return surprises;
  } finally {
    if (!opts.keep) {
      await site.destroy();
      io.out('\nthe namespace site is removed; nothing on this host was changed');
    }
  }
}
