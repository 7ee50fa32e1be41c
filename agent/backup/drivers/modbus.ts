// Modbus TCP and RTU: a configuration is a set of named register and coil ranges, read with
// functions 1-4 and written back with functions 15 and 16 (Modbus Application Protocol v1.1b3,
// sections 6.1-6.4, 6.11, 6.12), through modbus-serial's client. The fetched bytes are the
// 'modbus' format: JSON {"ranges":[{"name","kind","unit","address","values"}]}, registers as
// numbers 0-65535 and bits as booleans, in the configured order, so that the same device state
// always gives the same bytes (and one blob in the content-addressed store).
import ModbusSerial from 'modbus-serial';
import type { BackupDriver, FetchedConfig } from '../types.js';
import { MODBUS_KINDS, type DriverOf, type ModbusKind } from '../schema.js';
import { abortable, BackupDriverError, errorCode, errorMessage, networkError } from './common.js';

type ModbusClient = InstanceType<typeof ModbusSerial.default>;

// Per request (6.1-6.4): at most 2000 bits or 125 registers read; (6.11, 6.12) at most 1968
// coils or 123 registers written.
const READ_LIMIT: Record<ModbusKind, number> = { holding: 125, input: 125, coil: 2000, discrete: 2000 };
const WRITE_REGISTERS_LIMIT = 123;
const WRITE_COILS_LIMIT = 1968;

export interface ModbusRangeValues {
  name?: string;
  kind: ModbusKind;
  unit: number;
  address: number;
  values: (number | boolean)[];
}

export interface ModbusDocument {
  ranges: ModbusRangeValues[];
}

/** Where a Modbus driver connects: how to open the client, and how to name it in the manifest. */
interface ModbusLink {
  readonly source: string;
  open(client: ModbusClient): Promise<void>;
  /** Closes the link and resolves once it is closed (a serial port's lock released). */
  close(client: ModbusClient): Promise<void>;
}

type ModbusConfig = DriverOf<'modbus-tcp'> | DriverOf<'modbus-rtu'>;

export class ModbusDriver implements BackupDriver {
  constructor(
    readonly type: 'modbus-tcp' | 'modbus-rtu',
    private readonly cfg: ModbusConfig,
    private readonly link: ModbusLink,
  ) {}

  async fetch(signal: AbortSignal): Promise<FetchedConfig> {
    const doc = await this.session(signal, async (client) => {
      const ranges: ModbusRangeValues[] = [];
      for (const range of this.cfg.ranges) ranges.push({ name: range.name, kind: range.kind, unit: this.cfg.unit, address: range.address, values: await this.read(client, range.kind, range.address, range.count) });
      return { ranges };
    });
    return { bytes: Buffer.from(`${JSON.stringify(doc)}\n`), format: 'modbus', source: this.link.source };
  }

  /**
   * Writes the holding registers and coils of a 'modbus' document back, then reads them again and
   * compares. Input registers and discrete inputs are read-only by definition and are skipped.
   * The whole document is checked before the first write, so that bad bytes change nothing.
   */
  async restore(bytes: Buffer, signal: AbortSignal): Promise<void> {
    const writable = parseModbusDocument(bytes).ranges.filter((r) => r.kind === 'holding' || r.kind === 'coil');
    for (const r of writable) {
      if (r.unit !== this.cfg.unit) throw new BackupDriverError('invalid', `range ${rangeLabel(r)} was read from unit ${r.unit}, and this device is unit ${this.cfg.unit}: refusing to write it elsewhere`);
    }
    await this.session(signal, async (client) => {
      for (const r of writable) await this.write(client, r);
      for (const r of writable) {
        const back = await this.read(client, r.kind, r.address, r.values.length);
        const i = back.findIndex((v, k) => v !== r.values[k]);
        if (i >= 0) throw new BackupDriverError('verify', `range ${rangeLabel(r)}: ${r.kind} ${r.address + i} reads back ${String(back[i])} after ${String(r.values[i])} was written`);
      }
    });
  }

  private async session<T>(signal: AbortSignal, work: (client: ModbusClient) => Promise<T>): Promise<T> {
    const client = new ModbusSerial.default();
    // Without a listener, an error on the port after it opened is an unhandled 'error' event.
    client.on('error', () => {});
    client.setID(this.cfg.unit);
    client.setTimeout(this.cfg.responseTimeoutMs);
    const source = this.link.source;
    return abortable(
      signal,
      source,
      async () => {
        try {
          await this.link.open(client);
        } catch (err) {
          throw networkError(err, source);
        }
        return work(client);
      },
      () => this.link.close(client),
    );
  }

  private async read(client: ModbusClient, kind: ModbusKind, address: number, count: number): Promise<(number | boolean)[]> {
    const out: (number | boolean)[] = [];
    for (let at = address; at < address + count; at += READ_LIMIT[kind]) {
      const n = Math.min(READ_LIMIT[kind], address + count - at);
      out.push(...(await this.request(`read ${n} ${kind} at ${at}`, () => readOnce(client, kind, at, n))));
    }
    return out;
  }

  private async write(client: ModbusClient, r: ModbusRangeValues): Promise<void> {
    const limit = r.kind === 'holding' ? WRITE_REGISTERS_LIMIT : WRITE_COILS_LIMIT;
    for (let i = 0; i < r.values.length; i += limit) {
      const part = r.values.slice(i, i + limit);
      const at = r.address + i;
      if (r.kind === 'holding') await this.request(`write ${part.length} holding at ${at}`, () => client.writeRegisters(at, part as number[]));
      else await this.request(`write ${part.length} coil at ${at}`, () => client.writeCoils(at, part as boolean[]));
    }
  }

  private async request<T>(what: string, send: () => Promise<T>): Promise<T> {
    try {
      return await send();
    } catch (err) {
      const modbusCode = (err as { modbusCode?: unknown } | null)?.modbusCode;
      if (typeof modbusCode === 'number') throw new BackupDriverError('exception', `${this.link.source}: ${what}: Modbus exception ${modbusCode} (${errorMessage(err).replace(/^Modbus exception \d+: /, '')})`, { cause: err });
      // A unit id that no device on the link has is met with silence, not an exception (4.1).
      if (errorCode(err) === 'ETIMEDOUT') throw new BackupDriverError('timeout', `${this.link.source}: ${what}: no answer from unit ${this.cfg.unit} within ${this.cfg.responseTimeoutMs} ms (wrong unit id?)`, { cause: err });
      throw networkError(err, `${this.link.source}: ${what}`);
    }
  }
}

async function readOnce(client: ModbusClient, kind: ModbusKind, at: number, n: number): Promise<(number | boolean)[]> {
  switch (kind) {
    case 'holding':
      return (await client.readHoldingRegisters(at, n)).data;
    case 'input':
      return (await client.readInputRegisters(at, n)).data;
    // Bits come back padded to whole bytes (6.1, 6.2); keep the ones asked for.
    case 'coil':
      return (await client.readCoils(at, n)).data.slice(0, n);
    case 'discrete':
      return (await client.readDiscreteInputs(at, n)).data.slice(0, n);
  }
}

function rangeLabel(r: ModbusRangeValues): string {
  return r.name !== undefined ? `"${r.name}"` : `${r.kind}@${r.address}`;
}

/** Parses and checks a 'modbus' document; throws an 'invalid' error naming the first fault. */
export function parseModbusDocument(bytes: Buffer): ModbusDocument {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new BackupDriverError('invalid', `not a modbus backup: ${errorMessage(err)}`);
  }
  const bad = (msg: string) => new BackupDriverError('invalid', `not a modbus backup: ${msg}`);
  if (typeof doc !== 'object' || doc === null || !Array.isArray((doc as { ranges?: unknown }).ranges)) throw bad('no "ranges" array');
  const ranges = (doc as { ranges: unknown[] }).ranges.map((raw, i): ModbusRangeValues => {
    const r = raw as Partial<Record<keyof ModbusRangeValues, unknown>>;
    if (typeof r !== 'object' || r === null) throw bad(`ranges[${i}] is not an object`);
    if (!MODBUS_KINDS.includes(r.kind as ModbusKind)) throw bad(`ranges[${i}].kind is not one of ${MODBUS_KINDS.join(', ')}`);
    const kind = r.kind as ModbusKind;
    if (!Number.isInteger(r.unit) || (r.unit as number) < 0 || (r.unit as number) > 255) throw bad(`ranges[${i}].unit is not 0-255`);
    if (!Number.isInteger(r.address) || (r.address as number) < 0 || (r.address as number) > 65535) throw bad(`ranges[${i}].address is not 0-65535`);
    if (!Array.isArray(r.values) || r.values.length === 0) throw bad(`ranges[${i}].values is not a non-empty array`);
    if ((r.address as number) + r.values.length > 65536) throw bad(`ranges[${i}] runs past address 65535`);
    const bits = kind === 'coil' || kind === 'discrete';
    const j = (r.values as unknown[]).findIndex((v) => (bits ? typeof v !== 'boolean' : !Number.isInteger(v) || (v as number) < 0 || (v as number) > 65535));
    if (j >= 0) throw bad(`ranges[${i}].values[${j}] is not ${bits ? 'true or false' : 'a register value 0-65535'}`);
    return { ...(typeof r.name === 'string' ? { name: r.name } : {}), kind, unit: r.unit as number, address: r.address as number, values: r.values as (number | boolean)[] };
  });
  return { ranges };
}

export function modbusTcpDriver(cfg: DriverOf<'modbus-tcp'>, host: string): ModbusDriver {
  const source = `modbus-tcp ${host.includes(':') ? `[${host}]` : host}:${cfg.port} unit ${cfg.unit}`;
  return new ModbusDriver('modbus-tcp', cfg, {
    source,
    open: (client) => client.connectTCP(host, { port: cfg.port }),
    // destroy(), not close(): close() waits for the peer and never calls back for a port that never opened.
    close: (client) => new Promise((resolve) => client.destroy(resolve)),
  });
}

export function modbusRtuDriver(cfg: DriverOf<'modbus-rtu'>): ModbusDriver {
  const source = `modbus-rtu ${cfg.path} ${cfg.baudRate} ${cfg.dataBits}${cfg.parity[0]?.toUpperCase() ?? 'N'}${cfg.stopBits} unit ${cfg.unit}`;
  return new ModbusDriver('modbus-rtu', cfg, {
    source,
    open: (client) => client.connectRTUBuffered(cfg.path, { baudRate: cfg.baudRate, parity: cfg.parity, dataBits: cfg.dataBits, stopBits: cfg.stopBits }),
    // modbus-serial's destroy() cancels the pending requests but leaves a serial port open (and
    // locked); close() releases it, and calls back (with an error) for one that never opened.
    close: (client) =>
      new Promise((resolve) => {
        client.destroy(() => {});
        const timer = setTimeout(resolve, 2000);
        client.close(() => {
          clearTimeout(timer);
          resolve();
        });
      }),
  });
}
