// The box's own signals to the person standing next to it: the hardware watchdog (the board
// reboots when the agent stops kicking it) and the status LED (on: ok, blinking: degraded, off:
// the agent is down). Both are plain files, so tests point them at temporary files.
import { constants } from 'node:fs';
import { open, readFile, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';

/** A watchdog or LED operation failed; `code` says which. */
export class HardwareError extends Error {
  constructor(
    readonly code: 'E_WATCHDOG' | 'E_LED',
    message: string,
  ) {
    super(message);
    this.name = 'HardwareError';
  }
}

/**
 * The Linux watchdog API (Documentation/watchdog/watchdog-api.rst): opening the device starts
 * the timer, every write restarts it, and a write of "V" right before close() ("magic close")
 * stops it, unless the kernel was built with CONFIG_WATCHDOG_NOWAYOUT. A process that dies
 * closes the device without the "V": the timer keeps running and the board reboots. That is the
 * point: a hung or crashed agent on an unattended box in a clinic gets a reboot, after which the
 * boot-time restore loads the committed ruleset.
 *
 * The timeout is the driver's (bcm2835_wdt: about 15 s at most); changing it needs an ioctl,
 * which Node cannot make. Kick well inside it (the default 5 s does). Only one process may hold
 * the device: where systemd already uses it (RuntimeWatchdogSec=), leave health.watchdog unset
 * and rely on the unit's WatchdogSec= (sdnotify.ts) instead.
 */
export class HardwareWatchdog {
  private fh: FileHandle | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly intervalMs: number;
  private readonly healthy: () => boolean;
  private readonly onError: (err: HardwareError) => void;

  constructor(
    readonly device: string,
    opts: { intervalMs?: number; healthy?: () => boolean; onError?: (err: HardwareError) => void } = {},
  ) {
    this.intervalMs = opts.intervalMs ?? 5000;
    this.healthy = opts.healthy ?? (() => true);
    this.onError = opts.onError ?? (() => undefined);
  }

  get armed(): boolean {
    return this.fh !== undefined;
  }

  /** Opens the device (which arms it), kicks once, and keeps kicking while healthy() says so. */
  async start(): Promise<void> {
    if (this.fh) return;
    try {
      // Write-only, no O_CREAT: a missing device (driver not loaded) must not become a regular
      // file in /dev, and no O_TRUNC (meaningless for a device).
      this.fh = await open(this.device, constants.O_WRONLY);
    } catch (err) {
      throw new HardwareError('E_WATCHDOG', `cannot open the watchdog ${this.device}: ${(err as Error).message}`);
    }
    await this.kick();
    this.timer = setInterval(() => {
      if (!this.healthy()) return; // let it expire: the board reboots
      this.kick().catch((err: unknown) => this.onError(err as HardwareError));
    }, this.intervalMs);
  }

  /** Restarts the timer. */
  async kick(): Promise<void> {
    if (!this.fh) throw new HardwareError('E_WATCHDOG', `the watchdog ${this.device} is not open`);
    try {
      // Any byte but "V"; the kernel's own example writes a NUL.
      await this.fh.write(Buffer.from([0]));
    } catch (err) {
      throw new HardwareError('E_WATCHDOG', `cannot kick the watchdog ${this.device}: ${(err as Error).message}`);
    }
  }

  /** A clean stop: magic close, so that the board does not reboot. */
  async stop(): Promise<void> {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    const fh = this.fh;
    this.fh = undefined;
    if (!fh) return;
    try {
      await fh.write('V');
    } finally {
      await fh.close();
    }
  }
}

export type LedPattern = 'on' | 'blink' | 'off';

/**
 * A status LED through sysfs (Documentation/leds/leds-class.rst): the trigger is set to "none"
 * so that the kernel no longer drives it (the Pi's ACT LED blinks for SD-card activity by
 * default), then brightness is written. on = the agent runs and all is well, blink = degraded
 * (fail-safe ruleset, broker unreachable, ...), off = the agent is down.
 *
 * Blinking is done here rather than with the kernel's "timer" trigger: an event loop that stalls
 * stops the blinking too, which is what a person at the box should see. A crashed agent cannot
 * turn its LED off; a line in the unit can (ExecStopPost=, writing 0 to the LED's brightness).
 */
export class StatusLed {
  private pattern: LedPattern | undefined;
  private timer: NodeJS.Timeout | undefined;
  private lit = false;
  private onValue = '1';
  private taken = false;
  private readonly blinkMs: number;
  private readonly onError: (err: HardwareError) => void;

  constructor(
    /** The LED's sysfs directory, e.g. /sys/class/leds/ACT. */
    readonly dir: string,
    opts: { blinkMs?: number; onError?: (err: HardwareError) => void } = {},
  ) {
    this.blinkMs = opts.blinkMs ?? 500;
    this.onError = opts.onError ?? (() => undefined);
  }

  get current(): LedPattern | undefined {
    return this.pattern;
  }

  private async write(file: string, value: string): Promise<void> {
    try {
      await writeFile(join(this.dir, file), value);
    } catch (err) {
      throw new HardwareError('E_LED', `cannot write ${value} to ${join(this.dir, file)}: ${(err as Error).message}`);
    }
  }

  /** Takes the LED from the kernel's trigger, once; "on" is max_brightness (PWM LEDs are 0-255). */
  private async take(): Promise<void> {
    if (this.taken) return;
    await this.write('trigger', 'none');
    try {
      const max = Number((await readFile(join(this.dir, 'max_brightness'), 'utf8')).trim());
      if (Number.isInteger(max) && max > 0) this.onValue = String(max);
    } catch {
      // no max_brightness: 1 is "on" for every LED
    }
    this.taken = true;
  }

  private async light(on: boolean): Promise<void> {
    await this.write('brightness', on ? this.onValue : '0');
    this.lit = on;
  }

  async set(pattern: LedPattern): Promise<void> {
    if (pattern === this.pattern) return;
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    await this.take();
    this.pattern = pattern;
    switch (pattern) {
      case 'on':
        await this.light(true);
        break;
      case 'off':
        await this.light(false);
        break;
      case 'blink':
        await this.light(true);
        this.timer = setInterval(() => {
          this.light(!this.lit).catch((err: unknown) => this.onError(err as HardwareError));
        }, this.blinkMs);
        break;
    }
  }

  /** The agent is going down: the LED goes off. */
  async stop(): Promise<void> {
    await this.set('off');
  }
}

/** The first of the board's status LEDs present under rootPath, as a path under rootPath. */
export async function findStatusLed(rootPath: string, candidates: readonly string[]): Promise<string | undefined> {
  for (const dir of candidates) {
    const path = join(rootPath, dir);
    try {
      await readFile(join(path, 'brightness'), 'utf8');
      return path;
    } catch {
      // not this one
    }
  }
  return undefined;
}
