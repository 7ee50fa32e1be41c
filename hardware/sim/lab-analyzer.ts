// A simulated legacy lab analyzer on Modbus TCP (modbus-serial's server), for the demo and
// tests: it speaks the real protocol on loopback. Holding registers 0-3: status (1 = running),
// alarm bits, reagent level (%), incubator temperature (0.1 degC); device identification
// (function 43/14) answers as a vendor's analyzer would.
import ModbusRTU from 'modbus-serial';

export interface LabAnalyzer {
  host: string;
  port: number;
  registers: number[];
  close(): Promise<void>;
}

/**
 * Starts the analyzer on host:port (a loopback address). Pick a free port: port 0 would silently
 * mean 502. `registers` carries a panel's settings over a restart.
 */
export function startLabAnalyzer(port: number, unitId = 1, host = '127.0.0.1', registers = [1, 0, 87, 370]): Promise<LabAnalyzer> {
  if (port === 0) return Promise.reject(new RangeError('modbus-serial treats port 0 as 502: pass a free port'));
  // readDeviceIdentification is served by modbus-serial but missing from its type declarations.
  const vector = {
    getHoldingRegister: (addr: number) => registers[addr] ?? 0,
    getInputRegister: (addr: number) => registers[addr] ?? 0,
    getCoil: () => false,
    setRegister: (addr: number, value: number) => {
      registers[addr] = value;
    },
    setCoil: () => {},
    readDeviceIdentification: () => ({ 0x00: 'Example Diagnostics', 0x01: 'CHEM-9000', 0x02: '4.2.1' }),
  };
  return new Promise((resolve, reject) => {
    const server = new ModbusRTU.ServerTCP(vector, { host, port, unitID: unitId });
    server.on('initialized', () =>
      resolve({ host, port, registers, close: () => new Promise<void>((r) => server.close(() => r())) }),
    );
    server.on('socketError', () => {});
    server.on('error', reject);
  });
}
