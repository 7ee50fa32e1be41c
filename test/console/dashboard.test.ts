// The console's dashboard in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core), fed by a real agent: the gateway online, an alert raised by a failing probe
// and acknowledged, a learning proposal asked for, a backup pulled and verified, a killed
// gateway's last will and a clean stop.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertBuilt, CLI, until, warnSkip } from '../integration/site.js';
import { pumpFlow } from '../traffic/fixtures/record.js';
import { consoleLog, DASHBOARD_LOGIN, DEVICE, GW, GW2, startConsoleSite, type ConsoleSite } from './console-site.js';

const CHROMIUM = '/usr/bin/chromium';
const skip = existsSync(CHROMIUM) ? undefined : `${CHROMIUM} is not installed (apt-get install chromium; scripts/install-deps.sh does)`;
warnSkip('console dashboard', skip);

let site: ConsoleSite | undefined;
let browser: Browser | undefined;
let page: Page;
const s = (): ConsoleSite => site!;

const gatewayRow = (gw: string) => `#wg-gateways .wg-gateway[data-gateway="${gw}"]`;

describe.skipIf(skip !== undefined)('the console dashboard in Chromium', () => {
  beforeAll(async () => {
    assertBuilt();
    site = await startConsoleSite();
    await s().startSecond();
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      // Chromium's sandbox refuses to run as root.
      args: process.getuid?.() === 0 ? ['--no-sandbox'] : [],
    });
    page = await browser.newPage({ viewport: { width: 1400, height: 1000 }, httpCredentials: DASHBOARD_LOGIN });
    page.setDefaultTimeout(15000);
  }, 60000);

  afterAll(async () => {
    await browser?.close();
    await site?.stop();
  });

  /** Waits for a selector; on failure, says what the page and Node-RED showed. */
  async function see(selector: string, ms = 15000): Promise<void> {
    try {
      await page.waitForSelector(selector, { timeout: ms });
    } catch (err) {
      const text = await page.textContent('body').catch(() => '');
      throw new Error(`${(err as Error).message}\npage: ${text}\nnode-red: ${consoleLog(site)}`);
    }
  }

  it('shows both gateways online with their birth and policy hash, and the device up', async () => {
    await page.goto(s().console.dashboardUrl);
    await see(`${gatewayRow(GW)}[data-state="online"]`);
    await see(`${gatewayRow(GW2)}[data-state="online"]`);
    expect(await page.textContent(`${gatewayRow(GW)} .wg-birth`)).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$/);
    expect(await page.textContent(`${gatewayRow(GW)} .wg-policy-hash`)).toBe('none committed');
    await see(`#wg-devices .wg-device[data-gateway="${GW}"][data-device="${DEVICE}"][data-state="up"]`);
    // The policy panel: each gateway's policy.status, asked for when it came online.
    await see(`#wg-policy .wg-policy-row[data-gateway="${GW}"][data-kernel]`);
    expect(await page.textContent('#wg-policy')).toContain('wardgate policy learn');
  });

  it('proposes an allow-list for a device: the error in place first, then the proposal as text', async () => {
    const row = `#wg-policy .wg-learn[data-gateway="${GW}"][data-device="${DEVICE}"]`;
    await see(`${row}[data-state="none"]`);
    // No flow log yet: the gateway's error, in the device's row.
    await page.click(`${row} .wg-propose`);
    await see(`${row}[data-state="failed"] .wg-learn-error[data-code="E_NO_FLOWS"]`);
    expect(await page.textContent(`${row} .wg-learn-error`)).toContain(`no observed flows for ${DEVICE}`);

    // A monitored week of the analyzer: the LIS reads it over Modbus; a stranger was denied SSH.
    const hour = 3_600_000;
    const at = (ms: number) => new Date(Date.now() - ms).toISOString();
    const flow = (ms: number, o: Parameters<typeof pumpFlow>[1]) => JSON.stringify({ kind: 'flow', ...pumpFlow(at(ms), { device: DEVICE, peer: '10.99.0.20', dport: 502, app: 'Modbus', ...o }) });
    mkdirSync(join(s().dir, 'state', 'flows'), { recursive: true });
    writeFileSync(
      join(s().dir, 'state', 'flows', 'flows.ndjson'),
      [flow(48 * hour, {}), flow(2 * hour, { sport: 40100 }), flow(hour, { peer: '10.99.0.66', dport: 22, app: 'SSH', verdict: 'denied' })].join('\n') + '\n',
    );
    await page.click(`${row} .wg-propose`);
    await see(`${row}[data-state="proposed"] .wg-learn-text`);
    expect(await page.textContent(`${row} .wg-learn-summary`)).toMatch(/^1 allow entry from 2 flows, to go in place of lab\.yaml/);
    expect(await page.textContent(`${row} .wg-learn-left`)).toMatch(/^not proposed \(denied by the ruleset\): inbound tcp 10\.99\.0\.66 port 22: 1 flow \(denied 1\)/);
    // The text shown is what `wardgate policy learn` prints on the gateway, as text.
    const shown = (await page.textContent(`${row} .wg-learn-text`)) ?? '';
    const cli = spawnSync(process.execPath, [CLI, 'policy', 'learn', '--device', DEVICE, '--gateway', join(s().dir, 'gateway.yaml')], { encoding: 'utf8' });
    expect(cli.status, cli.stderr).toBe(0);
    const undated = (t: string) => t.replace(/(# Proposed by wardgate policy learn at )\S+/, '$1<time>');
    expect(undated(shown)).toBe(undated(cli.stdout.trimEnd()));
    expect(shown).toContain('- peer: 10.99.0.20\n        direction: inbound\n        proto: tcp\n        ports: [502]');
    expect(await page.locator(`${row} .wg-learn-text *`).count()).toBe(0);

    // With a window: the week-old flow is left out.
    await page.fill('#wg-policy .wg-learn-since', '24h');
    await page.click(`${row} .wg-propose`);
    await see(`${row}[data-state="proposed"] .wg-learn-summary:has-text("from 1 flow since")`);
  });

  it('pulls a device\'s backup and shows that it verified', async () => {
    const now = await s().command(GW, 'backup.now', { device: DEVICE });
    expect(now.ok, JSON.stringify(now)).toBe(true);
    // The list was asked for when the gateway came online, before there was a backup: refresh.
    await see(`#wg-backups .wg-backup[data-gateway="${GW}"]`);
    await page.click('.wg-refresh button, button.wg-refresh');
    const row = `#wg-backups .wg-backup[data-gateway="${GW}"][data-device="${DEVICE}"]`;
    await see(row);
    await page.click(`${row} .wg-pull`);
    await see(`${row} .wg-pull-result[data-state="verified"]`);
    const text = (await page.textContent(`${row} .wg-pull-result`)) ?? '';
    expect(text).toMatch(/verified: 1 version\(s\) of lab-analyzer-01 from st-console\/gw-lab-01/);
    const file = /→ (\S+\.wgb)/.exec(text)?.[1];
    expect(file).toBeDefined();
    // The same bundle passes the CLI's check with the gateway's public key, anywhere.
    const v = spawnSync(process.execPath, [CLI, 'backup', 'verify', file!, '--pubkey', join(s().dir, 'gateway-keys', `${GW}.pub`)], { encoding: 'utf8' });
    expect(v.status, v.stderr).toBe(0);
    // Without the gateway's public key the console says it could not verify.
    renameSync(join(s().dir, 'gateway-keys', `${GW}.pub`), join(s().dir, 'gateway-keys', `${GW}.pub.away`));
    await page.click(`${row} .wg-pull`);
    await see(`${row} .wg-pull-result[data-state="failed"]`);
    expect(await page.textContent(`${row} .wg-pull-result`)).toContain(`NOT verified: no public key of st-console/${GW} at`);
  });

  it('raises an alert when the device stops answering, and acknowledges it', async () => {
    await s().analyzer.close();
    const alert = `#wg-alerts .wg-alert[data-kind="device.state"]`;
    await see(`${alert}[data-acked="no"]`);
    expect(await page.textContent(`${alert} .wg-message`)).toContain(`device ${DEVICE} is down`);
    expect(await page.getAttribute(alert, 'data-severity')).toBe('critical'); // criticality high, down
    await see(`#wg-devices .wg-device[data-device="${DEVICE}"][data-state="down"]`);
    await page.click(`${alert} .wg-ack`);
    await see(`${alert}[data-acked="yes"].wg-acked`);
    expect(await page.locator(`${alert} .wg-ack`).count()).toBe(0);
    // Kept in the flow's context: a reload shows it acknowledged still.
    const id = await page.getAttribute(alert, 'data-id');
    const alerts = await s().context<{ id: string; ackAt: string | null }[]>('alerts');
    expect(alerts?.find((a) => a.id === id)?.ackAt).toMatch(/^\d{4}-/);
    await page.reload();
    await see(`#wg-alerts .wg-alert[data-id="${id}"][data-acked="yes"]`);
    // To look at it: WARDGATE_CONSOLE_SCREENSHOT=/tmp/console.png npx vitest run test/console/dashboard.test.ts
    if (process.env.WARDGATE_CONSOLE_SCREENSHOT) await page.screenshot({ path: process.env.WARDGATE_CONSOLE_SCREENSHOT, fullPage: true });
  });

  it('shows a killed gateway offline through its last will', async () => {
    s().second!.kill('SIGKILL');
    await see(`${gatewayRow(GW2)}[data-state="offline"]`);
    expect(await page.textContent(`${gatewayRow(GW2)} .wg-reason`)).toContain('last will');
  });

  it('shows the gateway offline after a clean stop', async () => {
    await s().agent.stop();
    await see(`${gatewayRow(GW)}[data-state="offline"]`);
    expect(await page.textContent(`${gatewayRow(GW)} .wg-reason`)).toContain('shutdown');
    await see(`#wg-devices .wg-device[data-device="${DEVICE}"].wg-acked`); // greyed: its gateway is offline
    await until('the context to agree', async () => (await s().context<Record<string, { state: string }>>('gateways'))?.[GW]?.state === 'offline' || undefined);
  });
});
