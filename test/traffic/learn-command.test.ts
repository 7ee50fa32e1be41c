// `policy.learn`, the signed command, on a real agent (Controller, dry-run backend, its embedded
// broker) whose state directory holds a flow log for pump-01 in monitor mode: the answer carries
// the proposal exactly as `wardgate policy learn` prints it for the same state, the command
// writes nothing, and each failure has its own code.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../agent/cli/main.js';
import { sendCommand } from '../../agent/console/client.js';
import { generateConsoleKey, loadConsoleKey } from '../../agent/console/keys.js';
import { Controller } from '../../agent/controller.js';
import type { CommandResponsePayload } from '../../agent/mqtt/topics.js';
import type { FlowRecord } from '../../agent/traffic/flows.js';
import type { LearnAnswer } from '../../agent/traffic/learn-command.js';
import { CT, gatewayYaml, GROUPS, PUMP, until } from '../integration/site.js';
import { freePort } from '../mqtt/brokers.js';
import { pumpFlow } from './fixtures/record.js';

const HOUR = 3_600_000;
const NOW = Date.now();
const at = (ms: number) => new Date(NOW + ms).toISOString();
const rec = (o: Partial<FlowRecord>): string => JSON.stringify({ kind: 'flow', ...pumpFlow(o.time ?? at(-HOUR), o) });
const quiet = { out: () => {}, err: () => {} };

let dir = '';
let url = '';
let agent: Controller | undefined;
let key = { privateKeyPath: '', id: '' };

const gateway = () => join(dir, 'gateway.yaml');
const command = (name: string, args: Record<string, unknown>, timeoutMs = 10000): Promise<CommandResponsePayload> =>
  sendCommand(url, 'itest', 'gw-1', name, args, loadConsoleKey(key.privateKeyPath), key.id, { timeoutMs });

async function wardgate(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await main([...args, '--gateway', gateway(), '--backend', 'dry-run'], { out: (l) => out.push(l), err: (l) => err.push(l) });
  return { code, out: out.join('\n'), err: err.join('\n') };
}

/** The proposal's one line that differs from run to run: when it was made. */
const undated = (text: string) => text.replace(/^( *# Proposed by wardgate policy learn at )\S+/m, '$1<time>');

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'wg-learn-cmd-'));
  const port = await freePort();
  url = `mqtt://127.0.0.1:${port}`;
  const k = generateConsoleKey(join(dir, 'keys'), 'biomed-console');
  key = { privateKeyPath: k.privateKeyPath, id: k.id };
  writeFileSync(
    gateway(),
    `${gatewayYaml({ mode: 'router', stateDir: 'state' })}mqtt:
  url: ${url}
  embeddedBroker: { port: ${port}, allowAnonymous: true }
commands:
  publicKeys: [{ id: biomed-console, key: "${k.publicKey}" }]
`,
  );
  mkdirSync(join(dir, 'rules'));
  for (const [name, text] of Object.entries({ '00-groups.yaml': GROUPS, 'ct.yaml': CT, 'pump.yaml': PUMP })) writeFileSync(join(dir, 'rules', name), text);
  const flows = join(dir, 'state', 'flows');
  mkdirSync(flows, { recursive: true });
  writeFileSync(
    join(flows, 'flows.ndjson'),
    [
      rec({ time: at(-24 * HOUR), verdict: 'allowed', entry: 'pump-01/allow[0]' }),
      rec({ peer: 'fd00:10::1:10', dport: 2575, app: 'HL7', time: at(-20 * HOUR) }),
      rec({ peer: '10.10.5.3', proto: 'icmp', sport: null, dport: null, app: null, time: at(-3 * HOUR) }),
      rec({ peer: '10.10.9.66', dport: 8080, app: null }),
      rec({ peer: '10.10.9.66', dport: 22, app: 'SSH', verdict: 'denied', time: at(-10 * 60_000) }),
      '{"kind":"flow","time":"2025-', // torn
    ].join('\n') + '\n',
  );
  agent = new Controller({ gateway: gateway(), backend: 'dry-run' }, quiet, pino({ level: 'warn' }, pino.destination({ dest: join(dir, 'agent.log'), sync: true })));
  await agent.start();
  // The link connects in the background: the first command waits for its subscription.
  await until('the agent to answer', async () => (await command('ping', {}, 1000).catch(() => undefined))?.ok, 15000);
}, 30000);

afterAll(async () => {
  await agent?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('policy.learn', () => {
  it('answers with the proposal `wardgate policy learn` prints, its entry count and what was left out', async () => {
    const a = await command('policy.learn', { device: 'pump-01' });
    expect(a.ok, JSON.stringify(a.error)).toBe(true);
    const r = a.result as LearnAnswer;
    const cli = await wardgate('policy', 'learn', '--device', 'pump-01');
    expect(cli.code, cli.err).toBe(0);
    expect(undated(r.text)).toBe(undated(cli.out));
    expect(r.text).toContain('      - peer: 10.10.9.66\n        direction: inbound\n        proto: tcp\n        ports: [8080]');
    expect(r).toMatchObject({ device: 'pump-01', since: null, entries: 3, flows: 4, file: 'rules/pump.yaml', skippedLines: 1 });
    expect(r.left).toEqual([`not proposed (denied by the ruleset): inbound tcp 10.10.9.66 port 22: 1 flow (denied 1), ${at(-10 * 60_000 - 2000)} to ${at(-10 * 60_000)}`]);
    // The CLI says the same about what it left out.
    expect(cli.err.split('\n')).toEqual(['warning: skipped 1 line of the flow log that is not a well-formed record', ...r.left]);
    // Read-only: the policy files are as they were, and nothing new is in rules/.
    expect(readFileSync(join(dir, 'rules', 'pump.yaml'), 'utf8')).toBe(PUMP);
    expect(readdirSync(join(dir, 'rules')).sort()).toEqual(['00-groups.yaml', 'ct.yaml', 'pump.yaml']);
  });

  it('takes since as --since does', async () => {
    const a = await command('policy.learn', { device: 'pump-01', since: '4h' });
    expect(a.ok, JSON.stringify(a.error)).toBe(true);
    const r = a.result as LearnAnswer;
    expect(r.flows).toBe(2);
    expect(r.text).not.toContain('peer: pacs');
    const cli = await wardgate('policy', 'learn', '--device', 'pump-01', '--since', r.since!);
    expect(undated(r.text)).toBe(undated(cli.out));
  });

  it('fails with a code of its own: unknown device, no flows, nothing to propose, bad arguments', async () => {
    expect(await command('policy.learn', { device: 'mri-9' })).toMatchObject({ ok: false, error: { code: 'E_UNKNOWN_DEVICE', message: 'unknown device "mri-9" (devices: ct-01, pump-01)' } });
    const none = await command('policy.learn', { device: 'ct-01' });
    expect(none).toMatchObject({ ok: false, error: { code: 'E_NO_FLOWS' } });
    expect(none.error?.message).toMatch(/^no observed flows for ct-01: 1 file in .* hold none; nothing to propose/);
    const denied = await command('policy.learn', { device: 'pump-01', since: '30m' });
    expect(denied).toMatchObject({ ok: false, error: { code: 'E_NOTHING_TO_PROPOSE' } });
    expect(denied.error?.message).toMatch(/^no proposal for pump-01: none of its 1 observed flow since \S+ can be allowed:\nnot proposed \(denied by the ruleset\): inbound tcp 10\.10\.9\.66 port 22/);
    expect(await command('policy.learn', {})).toMatchObject({ ok: false, error: { code: 'E_BAD_ARGS' } });
    expect(await command('policy.learn', { device: 'pump-01', since: 'last week' })).toMatchObject({ ok: false, error: { code: 'E_BAD_ARGS', message: expect.stringContaining('policy.learn: since takes an age') as unknown } });
  });

  it('is audited like every command, failures with their code', async () => {
    const audit = await wardgate('audit', 'show', '--json');
    const records = (JSON.parse(audit.out) as { action: string; outcome: string; detail: { command: string; code?: string; args?: Record<string, unknown> } }[]).filter((x) => x.detail.command === 'policy.learn');
    expect(records.map((x) => [x.outcome, x.detail.code ?? '-', x.detail.args?.device ?? '-'])).toEqual([
      ['ok', '-', 'pump-01'],
      ['ok', '-', 'pump-01'],
      ['failed', 'E_UNKNOWN_DEVICE', 'mri-9'],
      ['failed', 'E_NO_FLOWS', 'ct-01'],
      ['failed', 'E_NOTHING_TO_PROPOSE', 'pump-01'],
      ['failed', 'E_BAD_ARGS', '-'],
      ['failed', 'E_BAD_ARGS', 'pump-01'],
    ]);
  });
});
