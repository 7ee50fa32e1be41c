// Board profiles and their detection. Detection reads a few small files under a root path (the
// real / on a gateway, a fixture tree in tests) and never throws: a board nobody recognises gets
// the generic profile, which assumes no LED and no watchdog.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { genericX86 } from './generic-x86.js';
import type { BoardId, BoardProfile, DetectRule } from './profile.js';
import { raspberryPi4 } from './raspberry-pi-4.js';
import { raspberryPi5 } from './raspberry-pi-5.js';
import { revpiConnect4 } from './revpi-connect-4.js';

export type { BoardId, BoardProfile, DetectRule, SerialPort } from './profile.js';

/**
 * Every profile, in detection order: the most specific first (a RevPi Connect 4 is also a CM4,
 * which the Pi 4 profile would take), the generic fallback last.
 */
export const PROFILES: readonly BoardProfile[] = [revpiConnect4, raspberryPi5, raspberryPi4, genericX86];

export const FALLBACK: BoardProfile = genericX86;

export function boardById(id: BoardId): BoardProfile {
  const found = PROFILES.find((p) => p.id === id);
  if (!found) throw new Error(`no board profile "${String(id)}"`);
  return found;
}

export interface Detection {
  profile: BoardProfile;
  /** What identified it: the file and the text that matched; absent for the fallback. */
  evidence?: { file: string; text: string };
}

const DEVICE_TREE = ['proc/device-tree', 'sys/firmware/devicetree/base'];

function candidates(rule: DetectRule): string[] {
  switch (rule.source) {
    case 'device-tree':
      return DEVICE_TREE.map((dir) => `${dir}/${rule.property}`);
    case 'dmi':
      return [`sys/class/dmi/id/${rule.field}`];
  }
}

async function readSmall(path: string): Promise<string | undefined> {
  try {
    // Device-tree strings end in NUL and string lists are NUL-separated.
    return (await readFile(path, 'latin1')).replace(/\0+$/, '').replace(/\0/g, '\n').trim();
  } catch {
    // Absent (not this kind of board) or unreadable (DMI fields such as product_serial are root-only).
    return undefined;
  }
}

/** Identifies the board under `rootPath`, saying which file gave it away. */
export async function identifyBoard(rootPath: string): Promise<Detection> {
  for (const profile of PROFILES) {
    for (const rule of profile.detect) {
      for (const rel of candidates(rule)) {
        const text = await readSmall(join(rootPath, rel));
        if (text !== undefined && rule.pattern.test(text)) return { profile, evidence: { file: `/${rel}`, text } };
      }
    }
  }
  return { profile: FALLBACK };
}

/** The board under `rootPath`; the generic x86 profile when nothing else matches. */
export async function detectBoard(rootPath: string): Promise<BoardProfile> {
  return (await identifyBoard(rootPath)).profile;
}

/** gateway.yaml's health.board: "auto" detects, a board id picks that profile. */
export async function resolveBoard(setting: BoardId | 'auto', rootPath: string): Promise<Detection> {
  return setting === 'auto' ? identifyBoard(rootPath) : { profile: boardById(setting) };
}
