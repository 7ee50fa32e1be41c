// The demo's scripted tries through the inline proxies, with real clients: a Modbus read that
// passes and a write the read-only rules refuse with an exception (modbus-serial), and a
// C-ECHO from the PACS's AE title that passes and one from another AE title that the DICOM
// filter rejects (dcmjs-dimse, through the agent's own C-ECHO probe code).
import ModbusSerial from 'modbus-serial';
import type { Io } from '../cli/io.js';
import { probeDicom } from '../health/probes.js';

export interface TryTargets {
  /** Where the proxies listen (the demo's peers reach them directly: no redirect without root). */
  host: string;
  modbus: { listenPort: number; device: string; readRegisters: () => number[] };
  dicom: { listenPort: number; device: string; calledAe: string; allowedAe: string; otherAe: string };
}

export interface TryResult {
  what: string;
  expected: string;
  got: string;
  ok: boolean;
}

async function modbusTries(t: TryTargets): Promise<TryResult[]> {
  const client = new ModbusSerial.default();
  const results: TryResult[] = [];
  try {
    await client.connectTCP(t.host, { port: t.modbus.listenPort });
    client.setID(1);
    client.setTimeout(3000);
    try {
      const r = await client.readHoldingRegisters(0, 4);
      results.push({ what: `Modbus read of holding registers 0-3 of ${t.modbus.device}`, expected: 'passed', got: `passed: ${JSON.stringify(r.data)}`, ok: true });
    } catch (err) {
      results.push({ what: `Modbus read of holding registers 0-3 of ${t.modbus.device}`, expected: 'passed', got: `failed: ${(err as Error).message}`, ok: false });
    }
    const before = t.modbus.readRegisters()[1];
    try {
      await client.writeRegister(1, 9);
      results.push({ what: `Modbus write of holding register 1 := 9 on ${t.modbus.device}`, expected: 'refused with exception 01', got: `written (register 1 reads ${t.modbus.readRegisters()[1]})`, ok: false });
    } catch (err) {
      const code = (err as { modbusCode?: unknown }).modbusCode;
      const unchanged = t.modbus.readRegisters()[1] === before;
      results.push({
        what: `Modbus write of holding register 1 := 9 on ${t.modbus.device}`,
        expected: 'refused with exception 01',
        got: typeof code === 'number' ? `refused with exception 0${code} (${(err as Error).message.replace(/^Modbus exception \d+: /, '')}); register 1 still reads ${t.modbus.readRegisters()[1]}` : `failed: ${(err as Error).message}`,
        ok: code === 1 && unchanged,
      });
    }
  } catch (err) {
    results.push({ what: `Modbus connection to the proxy of ${t.modbus.device}`, expected: 'connected', got: (err as Error).message, ok: false });
  } finally {
    await new Promise<void>((r) => client.close(() => r()));
  }
  return results;
}

async function dicomTry(t: TryTargets, callingAe: string, allowed: boolean): Promise<TryResult> {
  const r = await probeDicom(
    { address: t.host },
    { type: 'dicom', port: t.dicom.listenPort, calledAe: t.dicom.calledAe, callingAe, intervalSeconds: 30, timeoutMs: 5000, failuresToDown: 1, successesToUp: 1 },
  );
  return {
    what: `C-ECHO from AE title ${callingAe} to ${t.dicom.calledAe} (${t.dicom.device})`,
    expected: allowed ? 'passed' : 'rejected (calling AE title not recognized)',
    got: r.ok ? `passed (${r.latencyMs ?? '?'} ms)` : (r.error ?? 'failed'),
    ok: allowed ? r.ok : !r.ok && /^rejected: .*calling AE title not recognized/.test(r.error ?? ''),
  };
}

/** Runs the tries, prints each, and returns the number that did not go as the rules say. */
export async function tryProxies(t: TryTargets, io: Io): Promise<{ surprises: number; results: TryResult[] }> {
  const results = [...(await modbusTries(t)), await dicomTry(t, t.dicom.allowedAe, true), await dicomTry(t, t.dicom.otherAe, false)];
  for (const r of results) {
    const word = r.got.split(/[ :]/)[0]!.toUpperCase();
    io.out(`  ${word.padEnd(8)} ${r.what}: ${r.got}${r.ok ? '' : `  <-- expected ${r.expected}`}`);
  }
  return { surprises: results.filter((r) => !r.ok).length, results };
}
