// What `wardgate console watch` shows: the gateways of a site (from their retained status and
// periodic health) and their devices (retained device health), as a plain-text table redrawn on
// each message. The view is pure (messages in, text out); the CLI owns the connection.
import { DeviceHealthPayload, EventPayload, HealthPayload, StatusPayload, TOPIC_ROOT } from '../mqtt/topics.js';

interface GatewayRow {
  state: 'online' | 'offline' | undefined;
  lastBirth: string | undefined;
  policyHash: string | null | undefined;
  lastHealth: string | undefined;
  reason: string | undefined;
}

interface DeviceRow {
  gateway: string;
  device: string;
  state: DeviceHealthPayload['state'];
  since: string;
}

interface EventRow {
  ts: string;
  gateway: string;
  severity: string;
  kind: string;
  message: string;
}

export interface RenderOptions {
  color: boolean;
  now?: Date;
}

const ANSI = { reset: '\x1b[0m', bold: '\x1b[1m', dim: '\x1b[2m', red: '\x1b[31m', green: '\x1b[32m', yellow: '\x1b[33m' } as const;
type Colour = keyof typeof ANSI;

const STATE_COLOUR: Record<string, Colour> = { online: 'green', offline: 'red', up: 'green', degraded: 'yellow', down: 'red', unknown: 'dim', '?': 'yellow' };

/** "2025-03-01 10:00:00Z (42s ago)" */
export function when(ts: string | undefined, now: Date): string {
  if (ts === undefined) return '-';
  const t = Date.parse(ts);
  if (Number.isNaN(t)) return ts;
  const s = Math.round((now.getTime() - t) / 1000);
  const age = s < 0 ? 'ahead' : s < 120 ? `${s}s ago` : s < 7200 ? `${Math.round(s / 60)}m ago` : s < 172800 ? `${Math.round(s / 3600)}h ago` : `${Math.round(s / 86400)}d ago`;
  return `${new Date(t).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z')} (${age})`;
}

function table(header: string[], rows: { cells: string[]; colour?: (Colour | undefined)[] }[], color: boolean): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r.cells[i] ?? '').length)));
  const line = (cells: string[], colours: (Colour | undefined)[] = []) =>
    cells
      .map((c, i) => {
        const padded = i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0);
        const k = colours[i];
        return color && k ? `${ANSI[k]}${padded}${ANSI.reset}` : padded;
      })
      .join('  ')
      .trimEnd();
  return [line(header, color ? header.map(() => 'bold' as const) : []), ...rows.map((r) => line(r.cells, r.colour))];
}

export class SiteView {
  private readonly gateways = new Map<string, GatewayRow>();
  private readonly devices = new Map<string, DeviceRow>();
  private readonly events: EventRow[] = [];
  /** Messages on our topics that did not match their schema. */
  invalid = 0;

  constructor(readonly site: string) {}

  private gateway(id: string): GatewayRow {
    let g = this.gateways.get(id);
    if (!g) {
      g = { state: undefined, lastBirth: undefined, policyHash: undefined, lastHealth: undefined, reason: undefined };
      this.gateways.set(id, g);
    }
    return g;
  }

  /** Takes one message; false when it is not one the view shows. */
  apply(topic: string, payload: Buffer): boolean {
    const prefix = `${TOPIC_ROOT}/${this.site}/`;
    if (!topic.startsWith(prefix)) return false;
    const parts = topic.slice(prefix.length).split('/');
    const [gw, kind, device, leaf] = parts;
    if (gw === undefined || kind === undefined) return false;
    let data: unknown;
    try {
      data = JSON.parse(payload.toString('utf8'));
    } catch {
      if (payload.length > 0) this.invalid += 1;
      return false;
    }
    if (parts.length === 2 && kind === 'status') {
      const s = StatusPayload.safeParse(data);
      if (!s.success) return this.bad();
      const g = this.gateway(gw);
      g.state = s.data.state;
      if (s.data.state === 'online') g.lastBirth = s.data.ts;
      g.policyHash = s.data.policyHash;
      g.reason = s.data.reason;
      return true;
    }
    if (parts.length === 2 && kind === 'health') {
      const h = HealthPayload.safeParse(data);
      if (!h.success) return this.bad();
      const g = this.gateway(gw);
      g.lastHealth = h.data.ts;
      if (g.policyHash === undefined) g.policyHash = h.data.ruleset.policyHash;
      return true;
    }
    if (parts.length === 4 && kind === 'devices' && device !== undefined && leaf === 'health') {
      const d = DeviceHealthPayload.safeParse(data);
      if (!d.success) return this.bad();
      this.gateway(gw);
      this.devices.set(`${gw}/${device}`, { gateway: gw, device, state: d.data.state, since: d.data.since });
      return true;
    }
    if (parts.length === 2 && kind === 'events') {
      const e = EventPayload.safeParse(data);
      if (!e.success) return this.bad();
      this.events.push({ ts: e.data.ts, gateway: gw, severity: e.data.severity, kind: e.data.kind, message: e.data.message });
      if (this.events.length > 5) this.events.shift();
      return true;
    }
    return false;
  }

  private bad(): false {
    this.invalid += 1;
    return false;
  }

  render(opts: RenderOptions): string {
    const now = opts.now ?? new Date();
    const gws = [...this.gateways.entries()].sort(([a], [b]) => a.localeCompare(b));
    const online = gws.filter(([, g]) => g.state === 'online').length;
    const out = [`wardgate site ${this.site}: ${gws.length} gateway(s), ${online} online, ${this.devices.size} device(s)   ${when(now.toISOString(), now).replace(/ \(.*\)$/, '')}`, ''];
    if (gws.length === 0) {
      out.push(`no gateway has reported under ${TOPIC_ROOT}/${this.site}/ yet`);
      return out.join('\n');
    }
    out.push(
      ...table(
        ['GATEWAY', 'STATE', 'LAST BIRTH', 'POLICY', 'LAST HEALTH', 'NOTE'],
        gws.map(([id, g]) => {
          const state = g.state ?? '?';
          const policy = g.policyHash === undefined ? '-' : g.policyHash === null ? 'none' : g.policyHash.slice(0, 12);
          return {
            cells: [id, state, when(g.lastBirth, now), policy, when(g.lastHealth, now), g.state === 'offline' ? (g.reason ?? '') : ''],
            colour: [undefined, STATE_COLOUR[state]],
          };
        }),
        opts.color,
      ),
    );
    if (this.devices.size > 0) {
      const devs = [...this.devices.values()].sort((a, b) => a.gateway.localeCompare(b.gateway) || a.device.localeCompare(b.device));
      out.push('', ...table(['DEVICE', 'GATEWAY', 'STATE', 'SINCE'], devs.map((d) => ({ cells: [d.device, d.gateway, d.state, when(d.since, now)], colour: [undefined, undefined, STATE_COLOUR[d.state]] })), opts.color));
    }
    if (this.events.length > 0) {
      out.push('', ...table(['EVENT', 'GATEWAY', 'SEVERITY', 'KIND', 'MESSAGE'], this.events.map((e) => ({ cells: [when(e.ts, now), e.gateway, e.severity, e.kind, e.message.slice(0, 100)] })), opts.color));
    }
    if (this.invalid > 0) out.push('', `${this.invalid} message(s) did not match their schema and were ignored`);
    return out.join('\n');
  }
}
