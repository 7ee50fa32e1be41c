// What wardgate needs to know about the box it runs on, as plain data: how to recognise it, where
// its SoC temperature, status LED and hardware watchdog are, its usual interface names and serial
// ports. One file per board; index.ts holds the detection order. Facts that could not be checked
// on the hardware itself say so in a comment: the gateway file can override every one of them.
import type { BOARDS } from '../../agent/config/schema.js';

/** A board id as gateway.yaml's health.board names it ("auto" is resolved by detection). */
export type BoardId = Exclude<(typeof BOARDS)[number], 'auto'>;

/**
 * One way to recognise a board. Files are read under the configured root (tests point it at a
 * fixture tree); device-tree properties are looked up in /proc/device-tree and in
 * /sys/firmware/devicetree/base (the first is a symlink to the second on current kernels).
 * NUL bytes (device-tree strings and string lists) become newlines, so /^...$/m matches one
 * entry of a list such as "compatible".
 */
export type DetectRule =
  | { source: 'device-tree'; property: string; pattern: RegExp }
  | { source: 'dmi'; field: string; pattern: RegExp };

export interface SerialPort {
  path: string;
  kind: 'rs485' | 'rs232' | 'uart-ttl';
  note: string;
}

export interface BoardProfile {
  id: BoardId;
  name: string;
  /** Any one rule matching identifies the board. */
  detect: DetectRule[];
  thermal: {
    /** Thermal zone types, in order of preference (zone numbering is not stable on every board). */
    types: string[];
    /** The zone to read when no zone has one of those types, e.g. /sys/class/thermal/thermal_zone0. */
    zone?: string;
  };
  /** Default interface names per role; gateway.yaml's `interfaces` is what counts. */
  interfaces: { uplink: string; device: string; management?: string };
  /** sysfs LED directories for the status LED, first present wins; empty: none known. */
  statusLed: string[];
  /** The hardware watchdog, when the board has one the agent may use. */
  watchdog?: { device: string; driver: string };
  serialPorts: SerialPort[];
  /** What a person installing the box should know. */
  notes: string[];
}
