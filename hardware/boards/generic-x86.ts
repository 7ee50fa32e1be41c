// A generic x86-64 box (industrial PC, NUC, a VM in the lab). Also the fallback for any board
// that no other profile recognises, so it assumes nothing it cannot find: no status LED, and a
// temperature only where a thermal zone of a known type exists.
import type { BoardProfile } from './profile.js';

export const genericX86: BoardProfile = {
  id: 'generic-x86',
  name: 'Generic x86-64',
  // Any DMI vendor string: firmware tables exist on x86 (and some ARM servers, which fit here too).
  detect: [{ source: 'dmi', field: 'sys_vendor', pattern: /\S/ }],
  // x86_pkg_temp is the Intel package sensor (module x86_pkg_temp_thermal); TCPU comes from
  // int340x on Atom/Celeron boards; acpitz is the ACPI zone, often a board sensor rather than the
  // CPU. AMD's k10temp is a hwmon device, not a thermal zone: such boxes report no temperature.
  thermal: { types: ['x86_pkg_temp', 'TCPU', 'cpu-thermal', 'acpitz'] },
  // Placeholders: x86 interfaces usually have predictable names (enp1s0, eno1); set them in gateway.yaml.
  interfaces: { uplink: 'eth0', device: 'eth1' },
  statusLed: [],
  // No default: where a watchdog exists (iTCO_wdt, sp5100_tco, a Super I/O chip) it is
  // /dev/watchdog, but systemd often holds it (RuntimeWatchdogSec). Set health.watchdog to use it.
  serialPorts: [
    { path: '/dev/ttyS0', kind: 'rs232', note: 'COM1; some industrial PCs switch a COM port to RS-485 in the firmware setup' },
    { path: '/dev/ttyS1', kind: 'rs232', note: 'COM2, where fitted' },
  ],
  notes: [],
};
