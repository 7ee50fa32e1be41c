// The hardware watchdog and the status LED, driven through MOCKS: a real watchdog cannot run
// here (opening /dev/watchdog arms a reboot of this machine, and there is none in CI), nor a
// real LED. The mocks are regular files in a temporary directory standing in for the device node
// and for the sysfs LED directory; they record what was written, which is what these tests check.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { findStatusLed, HardwareError, HardwareWatchdog, StatusLed } from '../../agent/health/leds.js';
import { boardById } from '../../hardware/boards/index.js';

const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'boards');
const dir = mkdtempSync(join(tmpdir(), 'wg-leds-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let n = 0;
/** Mock watchdog device: an empty regular file where /dev/watchdog would be. */
function mockWatchdog(): string {
  const path = join(dir, `mock-watchdog-${n++}`);
  writeFileSync(path, '');
  return path;
}

/** Mock sysfs LED directory, as the kernel shows an LED before anyone takes it. */
function mockLed(maxBrightness: number | undefined): string {
  const led = join(dir, `mock-led-${n++}`);
  mkdirSync(led);
  writeFileSync(join(led, 'trigger'), 'none timer heartbeat default-on [mmc0]\n');
  writeFileSync(join(led, 'brightness'), '0\n');
  if (maxBrightness !== undefined) writeFileSync(join(led, 'max_brightness'), `${maxBrightness}\n`);
  return led;
}
const read = (path: string) => readFileSync(path, 'utf8');

const stops: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const s of stops.splice(0)) await s();
});

describe('hardware watchdog (mock device file)', () => {
  it('opening kicks once, the timer keeps kicking, a clean stop ends with the magic "V"', async () => {
    const dev = mockWatchdog();
    const wd = new HardwareWatchdog(dev, { intervalMs: 20 });
    await wd.start();
    expect(wd.armed).toBe(true);
    expect(read(dev)).toBe('\0');
    await sleep(120);
    await wd.stop();
    expect(wd.armed).toBe(false);
    const written = read(dev);
    expect(written.length).toBeGreaterThanOrEqual(3);
    expect(written.endsWith('V')).toBe(true);
    expect(written.slice(0, -1)).toMatch(/^\0+$/); // no "V" before the end: only the close disarms
    await wd.stop(); // twice is harmless
  });

  it('stops kicking while unhealthy, so that the board reboots', async () => {
    const dev = mockWatchdog();
    let healthy = true;
    const wd = new HardwareWatchdog(dev, { intervalMs: 15, healthy: () => healthy });
    stops.push(() => wd.stop());
    await wd.start();
    healthy = false;
    await sleep(20);
    const frozen = read(dev).length;
    await sleep(100);
    expect(read(dev).length).toBe(frozen);
  });

  it('a missing device is an E_WATCHDOG error, and is not created', async () => {
    const dev = join(dir, 'mock-missing-watchdog');
    const wd = new HardwareWatchdog(dev);
    const err = await wd.start().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HardwareError);
    expect((err as HardwareError).code).toBe('E_WATCHDOG');
    expect((err as HardwareError).message).toMatch(/cannot open the watchdog .*mock-missing-watchdog/);
    expect(existsSync(dev)).toBe(false);
    await expect(wd.kick()).rejects.toMatchObject({ code: 'E_WATCHDOG' });
  });
});

describe('status LED (mock sysfs directory)', () => {
  it('takes the LED from its trigger, then on and off', async () => {
    const ledDir = mockLed(1);
    const led = new StatusLed(ledDir);
    await led.set('on');
    expect(read(join(ledDir, 'trigger'))).toBe('none');
    expect(read(join(ledDir, 'brightness'))).toBe('1');
    await led.set('off');
    expect(read(join(ledDir, 'brightness'))).toBe('0');
    expect(led.current).toBe('off');
  });

  it('"on" is max_brightness (a RevPi LED takes 0-255), or 1 when there is none', async () => {
    const revpi = mockLed(255);
    await new StatusLed(revpi).set('on');
    expect(read(join(revpi, 'brightness'))).toBe('255');
    const plain = mockLed(undefined);
    await new StatusLed(plain).set('on');
    expect(read(join(plain, 'brightness'))).toBe('1');
  });

  it('blinks while degraded, and stays lit once ok again; stop turns it off', async () => {
    const ledDir = mockLed(1);
    const led = new StatusLed(ledDir, { blinkMs: 15 });
    stops.push(() => led.stop());
    await led.set('blink');
    const seen = new Set<string>();
    for (let i = 0; i < 20; i++) {
      seen.add(read(join(ledDir, 'brightness')));
      await sleep(7);
    }
    seen.delete(''); // the mock is a regular file: a read can fall between truncate and write
    expect([...seen].sort()).toEqual(['0', '1']);
    await led.set('on');
    await sleep(60);
    expect(read(join(ledDir, 'brightness'))).toBe('1');
    await led.stop();
    await sleep(40);
    expect(read(join(ledDir, 'brightness'))).toBe('0');
  });

  it('an LED that is not there is an E_LED error', async () => {
    await expect(new StatusLed(join(dir, 'mock-no-led')).set('on')).rejects.toMatchObject({ code: 'E_LED' });
  });

  it('finds the board\'s LED in the fixture trees', async () => {
    const pi4 = join(FIXTURES, 'raspberry-pi-4');
    expect(await findStatusLed(pi4, boardById('raspberry-pi-4').statusLed)).toBe(join(pi4, 'sys/class/leds/ACT'));
    // An older kernel's name first, absent here: the next candidate wins.
    expect(await findStatusLed(pi4, ['/sys/class/leds/led0', '/sys/class/leds/ACT'])).toBe(join(pi4, 'sys/class/leds/ACT'));
    const revpi = join(FIXTURES, 'revpi-connect-4');
    expect(await findStatusLed(revpi, boardById('revpi-connect-4').statusLed)).toBe(join(revpi, 'sys/class/leds/a1_green'));
    expect(await findStatusLed(join(FIXTURES, 'generic-x86'), boardById('generic-x86').statusLed)).toBeUndefined();
  });
});
