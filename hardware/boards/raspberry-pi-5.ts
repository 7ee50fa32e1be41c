// Raspberry Pi 5 (BCM2712, I/O through the RP1 chip), and the Compute Module 5.
import type { BoardProfile } from './profile.js';

export const raspberryPi5: BoardProfile = {
  id: 'raspberry-pi-5',
  name: 'Raspberry Pi 5',
  detect: [
    // e.g. "Raspberry Pi 5 Model B Rev 1.0", "Raspberry Pi Compute Module 5 Rev 1.0"
    { source: 'device-tree', property: 'model', pattern: /^Raspberry Pi (5 |Compute Module 5 )/ },
    { source: 'device-tree', property: 'compatible', pattern: /^brcm,bcm2712$/m },
  ],
  // Type "cpu-thermal" as on the Pi 4 (the same thermal driver family); not checked on hardware.
  thermal: { types: ['cpu-thermal'], zone: '/sys/class/thermal/thermal_zone0' },
  // eth0 is the onboard port (macb, behind RP1); the second port is a USB or PCIe (HAT+) adapter.
  interfaces: { uplink: 'eth0', device: 'eth1' },
  statusLed: ['/sys/class/leds/ACT', '/sys/class/leds/led0'],
  // The same PM watchdog block as the Pi 4 (bcm2835_wdt); unsure whether the driver name differs on
  // BCM2712 kernels: the device path is what the agent uses.
  watchdog: { device: '/dev/watchdog', driver: 'bcm2835_wdt' },
  serialPorts: [
    {
      path: '/dev/ttyAMA0',
      kind: 'uart-ttl',
      note: 'the UART on GPIO 14/15 once enabled (dtparam=uart0); unsure of the name on older kernels',
    },
    { path: '/dev/ttyAMA10', kind: 'uart-ttl', note: 'the 3-pin debug UART connector between the HDMI ports' },
  ],
  notes: ['The Pi 5 needs its 5 V/5 A supply to power USB adapters (the second Ethernet port) reliably.'],
};
