// Board detection from fixture trees of /proc and /sys (test/fixtures/boards/<board>/).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BOARDS } from '../../agent/config/schema.js';
import { boardById, detectBoard, identifyBoard, PROFILES, resolveBoard, type BoardId } from '../../hardware/boards/index.js';

const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'boards');
const temps: string[] = [];
const tempRoot = (files: Record<string, string | Buffer>) => {
  const root = mkdtempSync(join(tmpdir(), 'wg-board-'));
  temps.push(root);
  for (const [rel, content] of Object.entries(files)) {
    mkdirSync(join(root, rel, '..'), { recursive: true });
    writeFileSync(join(root, rel), content);
  }
  return root;
};
afterAll(() => {
  for (const t of temps) rmSync(t, { recursive: true, force: true });
});

describe('board profiles', () => {
  it('cover exactly the boards gateway.yaml accepts', () => {
    expect(PROFILES.map((p) => p.id).sort()).toEqual(BOARDS.filter((b) => b !== 'auto').sort());
  });

  it('each has detection rules, default interfaces and absolute paths', () => {
    for (const p of PROFILES) {
      expect(p.detect.length, p.id).toBeGreaterThan(0);
      expect(p.interfaces.uplink).not.toBe(p.interfaces.device);
      for (const path of [...p.statusLed, p.thermal.zone ?? '/', p.watchdog?.device ?? '/', ...p.serialPorts.map((s) => s.path)]) {
        expect(path.startsWith('/'), `${p.id}: ${path}`).toBe(true);
      }
    }
  });

  it('the RevPi has an RS-485 port and the Pis a UART; the generic box assumes no LED', () => {
    expect(boardById('revpi-connect-4').serialPorts.map((s) => s.kind)).toContain('rs485');
    expect(boardById('raspberry-pi-4').serialPorts.map((s) => s.path)).toContain('/dev/ttyAMA0');
    expect(boardById('generic-x86').statusLed).toEqual([]);
    expect(boardById('raspberry-pi-4').watchdog).toEqual({ device: '/dev/watchdog', driver: 'bcm2835_wdt' });
  });
});

describe('detectBoard on fixture trees', () => {
  const cases: [BoardId, string][] = [
    ['raspberry-pi-4', '/proc/device-tree/model'],
    ['raspberry-pi-5', '/sys/firmware/devicetree/base/model'],
    // Its model string says Compute Module 4, which the Pi 4 profile would take: the RevPi comes first.
    ['revpi-connect-4', '/proc/device-tree/compatible'],
    ['generic-x86', '/sys/class/dmi/id/sys_vendor'],
  ];
  for (const [board, file] of cases) {
    it(`recognises ${board} by ${file}`, async () => {
      const d = await identifyBoard(join(FIXTURES, board));
      expect(d.profile.id).toBe(board);
      expect(d.evidence?.file).toBe(file);
      expect(await detectBoard(join(FIXTURES, board))).toBe(d.profile);
    });
  }

  it('a RevPi whose compatible string lacks kunbus is still recognised by its HAT EEPROM', async () => {
    const root = tempRoot({
      'proc/device-tree/model': Buffer.from('Raspberry Pi Compute Module 4 Rev 1.1\0'),
      'proc/device-tree/compatible': Buffer.from('raspberrypi,4-compute-module\0brcm,bcm2711\0'),
      'proc/device-tree/hat/product': Buffer.from('RevPi Connect 4 WLAN 8/4GB\0'),
    });
    expect((await identifyBoard(root)).evidence).toEqual({ file: '/proc/device-tree/hat/product', text: 'RevPi Connect 4 WLAN 8/4GB' });
  });

  it('a bare CM4 and a Pi 400 are Pi 4s; a RevPi Connect S is not a Connect 4', async () => {
    const cm4 = tempRoot({ 'proc/device-tree/model': Buffer.from('Raspberry Pi Compute Module 4 Rev 1.0\0') });
    expect((await detectBoard(cm4)).id).toBe('raspberry-pi-4');
    const pi400 = tempRoot({ 'proc/device-tree/model': Buffer.from('Raspberry Pi 400 Rev 1.0\0') });
    expect((await detectBoard(pi400)).id).toBe('raspberry-pi-4');
    const connectS = tempRoot({ 'proc/device-tree/hat/product': Buffer.from('RevPi Connect S\0') });
    expect((await detectBoard(connectS)).id).toBe('generic-x86');
  });

  it('an unknown board, or an empty root, falls back to generic-x86 without evidence', async () => {
    const pi3 = tempRoot({ 'proc/device-tree/model': Buffer.from('Raspberry Pi 3 Model B Plus Rev 1.3\0') });
    expect(await identifyBoard(pi3)).toEqual({ profile: boardById('generic-x86') });
    expect((await identifyBoard(join(FIXTURES, 'no-such-board'))).profile.id).toBe('generic-x86');
  });

  it('resolveBoard: auto detects, an id is taken as it is', async () => {
    expect((await resolveBoard('auto', join(FIXTURES, 'raspberry-pi-5'))).profile.id).toBe('raspberry-pi-5');
    expect(await resolveBoard('revpi-connect-4', join(FIXTURES, 'raspberry-pi-5'))).toEqual({ profile: boardById('revpi-connect-4') });
  });

  it('this machine is detected as something, without throwing', async () => {
    const d = await identifyBoard('/');
    expect(PROFILES).toContain(d.profile);
  });
});
