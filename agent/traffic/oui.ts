// The vendor of a MAC address, from the IEEE registration authority's registries as Debian's
// ieee-data package ships them (/usr/share/ieee-data): MA-L (oui.csv, 24-bit prefixes), MA-M
// (mam.csv, 28-bit) and MA-S (oui36.csv, 36-bit). The longest matching assignment wins, since
// IEEE hands out MA-M and MA-S blocks inside MA-L blocks it registered to itself.
//
// New devices are rare and the registries are 4 MB: they are read when asked, once for a batch
// of addresses, rather than held in memory for the life of the agent. Answers are cached.
import { createReadStream, existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

export const IEEE_DATA_DIR = '/usr/share/ieee-data';
const REGISTRIES = ['oui.csv', 'mam.csv', 'oui36.csv'];

export interface Vendor {
  /** The organisation the block is registered to; null when none is. */
  name: string | null;
  /** MA-L, MA-M, MA-S; "local" for a locally administered (often randomised) address. */
  registry: string | null;
  /** The assignment (hex digits) that matched. */
  assignment?: string;
}

/** 12 upper-case hex digits, or undefined when `mac` is not a MAC-48 address. */
export function macHex(mac: string): string | undefined {
  const hex = mac.replace(/[:.-]/g, '').toUpperCase();
  return /^[0-9A-F]{12}$/.test(hex) ? hex : undefined;
}

/** The first three fields of a CSV line (RFC 4180 quoting). */
function csvFields(line: string, n: number): string[] {
  const out: string[] = [];
  let i = 0;
  while (out.length < n && i <= line.length) {
    if (line[i] === '"') {
      let v = '';
      i++;
      for (;;) {
        const q = line.indexOf('"', i);
        if (q === -1) return out;
        v += line.slice(i, q);
        if (line[q + 1] === '"') {
          v += '"';
          i = q + 2;
        } else {
          i = q + 2;
          break;
        }
      }
      out.push(v);
    } else {
      const c = line.indexOf(',', i);
      out.push(line.slice(i, c === -1 ? undefined : c));
      i = c === -1 ? line.length + 1 : c + 1;
    }
  }
  return out;
}

export class OuiRegistry {
  private readonly cache = new Map<string, Vendor>();

  constructor(readonly dir = IEEE_DATA_DIR) {}

  /** Whether the registries are installed (Debian package ieee-data). */
  get available(): boolean {
    return REGISTRIES.some((f) => existsSync(join(this.dir, f)));
  }

  /** The vendors of `macs` (any notation), keyed as given. Unknown or malformed: name null. */
  async lookup(macs: readonly string[]): Promise<Map<string, Vendor>> {
    const out = new Map<string, Vendor>();
    const wanted = new Map<string, string[]>();
    for (const mac of macs) {
      const hex = macHex(mac);
      if (!hex) {
        out.set(mac, { name: null, registry: null });
        continue;
      }
      const cached = this.cache.get(hex);
      if (cached) out.set(mac, cached);
      // The U/L bit: a locally administered address was not assigned by IEEE.
      else if ((parseInt(hex.slice(0, 2), 16) & 0x02) !== 0) out.set(mac, { name: null, registry: 'local' });
      else wanted.set(hex, [...(wanted.get(hex) ?? []), mac]);
    }
    if (wanted.size === 0) return out;
    const best = new Map<string, Vendor>();
    for (const file of REGISTRIES) {
      const path = join(this.dir, file);
      if (!existsSync(path)) continue;
      const lines = createInterface({ input: createReadStream(path, 'utf8'), crlfDelay: Infinity });
      for await (const line of lines) {
        const [registry, assignment, name] = csvFields(line, 3);
        if (!registry || !assignment || name === undefined || !/^[0-9A-F]{6,9}$/.test(assignment)) continue;
        for (const hex of wanted.keys()) {
          if (!hex.startsWith(assignment)) continue;
          const prev = best.get(hex);
          if (!prev || (prev.assignment?.length ?? 0) < assignment.length) best.set(hex, { name: name.trim(), registry, assignment });
        }
      }
    }
    for (const [hex, macsOf] of wanted) {
      const v = best.get(hex) ?? { name: null, registry: null };
      this.cache.set(hex, v);
      for (const mac of macsOf) out.set(mac, v);
    }
    return out;
  }
}
