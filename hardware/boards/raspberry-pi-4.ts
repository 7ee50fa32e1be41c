// Raspberry Pi 4 Model B (BCM2711), and the boards built on the same SoC: the Pi 400 and a bare
// Compute Module 4. A RevPi Connect 4 is also a CM4 but is recognised first (revpi-connect-4.ts).
import type { BoardProfile } from './profile.js';

export const raspberryPi4: BoardProfile = {
  id: 'raspberry-pi-4',
  name: 'Raspberry Pi 4',
  detect: [
    // e.g. "Raspberry Pi 4 Model B Rev 1.5", "Raspberry Pi 400 Rev 1.0", "Raspberry Pi Compute Module 4 Rev 1.0"
    { source: 'device-tree', property: 'model', pattern: /^Raspberry Pi (4 |400 |Compute Module 4 )/ },
    { source: 'device-tree', property: 'compatible', pattern: /^brcm,bcm2711$/m },
  ],
  // thermal_zone0 of type "cpu-thermal" is the SoC sensor (bcm2711_thermal).
  thermal: { types: ['cpu-thermal'], zone: '/sys/class/thermal/thermal_zone0' },
  // eth0 is the onboard port (bcmgenet). The second port is a USB 3 Ethernet adapter: it is eth1
  // while Raspberry Pi OS keeps predictable interface names off (its default, as far as we know),
  // and enx<MAC> when they are on. Name it in gateway.yaml.
  interfaces: { uplink: 'eth0', device: 'eth1' },
  // The green activity LED: "ACT" on Raspberry Pi OS kernels from 6.1 on, "led0" before.
  statusLed: ['/sys/class/leds/ACT', '/sys/class/leds/led0'],
  // bcm2835_wdt (the PM block's watchdog); its longest timeout is about 15 s.
  watchdog: { device: '/dev/watchdog', driver: 'bcm2835_wdt' },
  serialPorts: [
    {
      path: '/dev/serial0',
      kind: 'uart-ttl',
      note: 'the UART on GPIO 14/15 (3.3 V): ttyS0 while Bluetooth holds ttyAMA0, ttyAMA0 with dtoverlay=disable-bt; RS-232/RS-485 needs a HAT or a USB adapter (/dev/ttyUSB0)',
    },
    { path: '/dev/ttyAMA0', kind: 'uart-ttl', note: 'the PL011 UART; used by Bluetooth unless disabled' },
  ],
  notes: ['A microSD card wears out: keep the state directory on USB or eMMC storage where the box writes often.'],
};
