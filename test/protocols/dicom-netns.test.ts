// The DICOM proxy through the whole agent in a namespace site (router mode): DCMTK's storescp is
// the CT scanner behind the gateway, echoscu and storescu run on the hospital side. The ruleset
// redirects the PACS's associations into the proxy; a stranger is dropped by the kernel. The
// same device is also offered over DICOM TLS (PS3.15 B.1) on port 2762, terminated by the proxy
// for a modality that cannot speak TLS itself.
import { cpSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GROUPS, Lab, skipReason, stopAgent, until, v4, warnSkip, type Agent } from '../integration/site.js';
import { makePki, type Pki } from '../mqtt/brokers.js';
import { copies, dcmtkSkipReason, makeObject, SOP } from './dicom/dcmtk.js';

const reason = skipReason ?? dcmtkSkipReason;
warnSkip('dicom netns', reason);

const RULES = 'calledAeTitle: CT01, callingAeTitles: [PACS], sopClasses: [verification, ct-image-storage], commands: [C-ECHO, C-STORE]';
const CT = `apiVersion: wardgate/v1
kind: Policy
devices:
  - id: ct-01
    class: ct-modality
    criticality: high
    mode: enforce
    ipv4: 10.20.0.11
    allow:
      - { peer: pacs, direction: inbound, proto: tcp, ports: [104], dicom: { ${RULES} } }
      - peer: pacs
        direction: inbound
        proto: tcp
        ports: [2762]
        dicom: { ${RULES}, tls: { cert: tls/broker.crt, key: tls/broker.key, ca: tls/site-ca.crt, devicePort: 104 } }
`;

describe.skipIf(reason !== undefined)('DICOM proxy in a namespace site', () => {
  let lab: Lab;
  let agent: Agent | undefined;
  let pki: Pki;
  let files = '';
  let stored = '';
  const ct = () => join(files, 'ct.dcm');

  const dcmtk = (host: string, tool: string, args: string[]) => lab.site.exec(host, [tool, ...args], { timeoutMs: 30000 }).then((r) => ({ code: r.code, out: r.stdout + r.stderr }));

  beforeAll(async () => {
    lab = await Lab.create({ mode: 'router', hosts: ['pacs', 'stranger', 'ct'], policies: { '00-groups.yaml': GROUPS, 'ct.yaml': CT } });
    pki = makePki({ clients: ['pacs'] });
    mkdirSync(join(lab.dir, 'rules', 'tls'));
    cpSync(pki.dir, join(lab.dir, 'rules', 'tls'), { recursive: true });
    files = mkdtempSync(join(tmpdir(), 'wg-dicom-netns-'));
    makeObject(files, 'ct', SOP.ct, 'CT');
    makeObject(files, 'mr', SOP.mr, 'MR');
    stored = join(files, 'stored');
    mkdirSync(stored);
    const scp = lab.site.spawn('ct', ['storescp', '--aetitle', 'CT01', '-od', stored, '104']);
    scp.on('exit', (code) => {
      if (code !== null && code !== 0) console.error(`storescp exited ${code}`);
    });
    await lab.commit();
    agent = lab.startAgent();
    const a = agent;
    await until('a C-ECHO through the proxy', async () => {
      if (a.child.exitCode !== null) throw new Error(`agent exited: ${a.output()}`);
      return (await dcmtk('pacs', 'echoscu', ['-to', '2', '-aet', 'PACS', '-aec', 'CT01', v4('ct'), '104'])).code === 0;
    }, 30000, 500);
  }, 90000);

  afterAll(async () => {
    await stopAgent(agent);
    await lab?.destroy();
    if (files) rmSync(files, { recursive: true, force: true });
    if (pki) rmSync(pki.dir, { recursive: true, force: true });
  });

  it('stores a CT image from the PACS', async () => {
    const r = await dcmtk('pacs', 'storescu', ['-aet', 'PACS', '-aec', 'CT01', v4('ct'), '104', ct()]);
    expect(r.code, r.out).toBe(0);
    expect(readdirSync(stored).some((f) => f.startsWith('CT.'))).toBe(true);
  });

  it('rejects a wrong calling AE title with reason 3, and the scanner never sees it', async () => {
    const r = await dcmtk('pacs', 'echoscu', ['-aet', 'EVIL', '-aec', 'CT01', v4('ct'), '104']);
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/Association Rejected[\s\S]*Calling AE Title Not Recognized/i);
  });

  it('refuses a SOP class the entry does not allow', async () => {
    const before = readdirSync(stored).length;
    const r = await dcmtk('pacs', 'storescu', ['-aet', 'PACS', '-aec', 'CT01', v4('ct'), '104', join(files, 'mr.dcm')]);
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/No presentation context|Rejected/i);
    expect(readdirSync(stored)).toHaveLength(before);
  });

  it('a stranger never reaches the proxy: the kernel drops its connection', async () => {
    const r = await dcmtk('stranger', 'echoscu', ['-to', '2', '-aet', 'PACS', '-aec', 'CT01', v4('ct'), '104']);
    expect(r.code).not.toBe(0);
    expect(r.out).not.toMatch(/Rejected|refused/i);
  });

  it('over DICOM TLS: a client certificate of the site CA stores the image; the scanner speaks plain DICOM', async () => {
    const before = readdirSync(stored).length;
    // Another instance (its own SOP instance UID), so that storescp writes a new file.
    mkdirSync(join(files, 'tls'));
    const other = copies(ct(), join(files, 'tls'), 2)[1]; // copy 0 keeps the template's UID
    const tls = ['+tls', pki.clients.pacs?.key ?? '', pki.clients.pacs?.cert ?? '', '+cf', pki.ca];
    const r = await dcmtk('pacs', 'storescu', [...tls, '-aet', 'PACS', '-aec', 'CT01', v4('ct'), '2762', other ?? '']);
    expect(r.code, r.out).toBe(0);
    expect(readdirSync(stored).length).toBe(before + 1);
  });

  it('over DICOM TLS: a certificate of another CA is refused in the handshake, and alerted', async () => {
    const r = await dcmtk('pacs', 'echoscu', ['+tls', pki.strangerKey, pki.strangerCert, '+cf', pki.ca, '-aet', 'PACS', '-aec', 'CT01', v4('ct'), '2762']);
    expect(r.code).not.toBe(0);
    const a = agent as Agent;
    await until('dicom.tls-refused in the agent log', () => a.output().includes('dicom.tls-refused'));
  });

  it('over DICOM TLS the same rules hold: a wrong called AE title is rejected (reason 7)', async () => {
    const tls = ['+tls', pki.clients.pacs?.key ?? '', pki.clients.pacs?.cert ?? '', '+cf', pki.ca];
    const r = await dcmtk('pacs', 'echoscu', [...tls, '-aet', 'PACS', '-aec', 'MR01', v4('ct'), '2762']);
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/Called AE Title Not Recognized/i);
  });

  it('records each association in the application log, without patient data', async () => {
    const { readFileSync } = await import('node:fs');
    const log = readFileSync(join(lab.stateDir, 'app', 'app.ndjson'), 'utf8');
    expect(log).toContain('"dicom.association"');
    expect(log).toContain(v4('pacs'));
    expect(log).not.toContain('Synthetic^Test');
    expect(log).not.toContain('WG-0001');
  });
});
