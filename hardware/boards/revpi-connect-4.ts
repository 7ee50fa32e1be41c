// Kunbus Revolution Pi Connect 4: an industrial gateway on a Compute Module 4 (DIN rail, 24 V,
// two Ethernet ports, RS-485, a relay output). RevPi images carry a HAT EEPROM whose product
// string names the model, and a device-tree compatible string "kunbus,revpi-connect4".
import type { BoardProfile } from './profile.js';

export const revpiConnect4: BoardProfile = {
  id: 'revpi-connect-4',
  name: 'Revolution Pi Connect 4',
  detect: [
    { source: 'device-tree', property: 'compatible', pattern: /^kunbus,revpi-connect4$/m },
    // e.g. "RevPi Connect 4 8/2GB", "RevPi Connect 4 WLAN 32/4GB" (the HAT EEPROM's product string)
    { source: 'device-tree', property: 'hat/product', pattern: /^RevPi Connect 4\b/ },
  ],
  thermal: { types: ['cpu-thermal'], zone: '/sys/class/thermal/thermal_zone0' },
  // Both ports are onboard. Which housing label (X1/X2? "A"/"B"?) is eth0 is not checked here:
  // look at `ip link` on the box and set gateway.yaml's interfaces.
  interfaces: { uplink: 'eth0', device: 'eth1' },
  // LED A1, green. The RevPi Flat exposes a1_green/a1_red (and a2..a5) under /sys/class/leds;
  // that the Connect 4's RGB LEDs use the same names is assumed, not checked. The piControl
  // driver may own these LEDs; then configure health.statusLed to another LED, or none.
  statusLed: ['/sys/class/leds/a1_green'],
  // The CM4's own watchdog. The Connect's separate hardware watchdog (triggered through
  // piControl, as far as we know) is not used by wardgate.
  watchdog: { device: '/dev/watchdog', driver: 'bcm2835_wdt' },
  serialPorts: [
    {
      path: '/dev/ttyRS485',
      kind: 'rs485',
      note: 'the RS-485 terminal for Modbus RTU devices; the name comes from a RevPi udev rule (unsure whether Connect 4 images name it ttyRS485-0)',
    },
  ],
  notes: [
    'The relay output could drive an external bypass relay for life-critical devices (see docs/fail-modes.md); wardgate does not switch it.',
  ],
};
