// The rtu block of a device: its mistakes named with file, line and field; the model's RTU
// target (defaults, entries, line settings); what the compiler makes of it.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError, formatDiagnostic, type Diagnostic } from '../../agent/config/diagnostics.js';
import { loadConfig } from '../../agent/config/load.js';
import { compile } from '../../agent/policy/compile.js';
import { buildModel, type Model } from '../../agent/policy/model.js';
import { workerTargets } from '../../agent/protocols/module.js';

const GATEWAY = `apiVersion: wardgate/v1
kind: Gateway
site: test
gateway: gw-1
mode: router
interfaces: { uplink: up0, device: dev0 }
deviceSegments: [10.20.0.0/24]
management: { networks: [10.99.0.0/24] }
stateDir: state
policies: [rules/*.yaml]
`;

const GROUPS = `apiVersion: wardgate/v1
kind: Policy
groups:
  scada: { members: [10.10.7.1, "fd00:10::7:1"] }
  ws: { members: [10.10.5.0/28] }
`;

let dirs: string[] = [];
afterEach(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  dirs = [];
});

function gatewayWith(files: Record<string, string>, gateway = GATEWAY): string {
  const dir = mkdtempSync(join(tmpdir(), 'wg-rtu-'));
  dirs.push(dir);
  mkdirSync(join(dir, 'rules'));
  writeFileSync(join(dir, 'gateway.yaml'), gateway);
  for (const [name, text] of Object.entries({ '00-groups.yaml': GROUPS, ...files })) writeFileSync(join(dir, 'rules', name), text);
  return join(dir, 'gateway.yaml');
}

/** A policy with one device: its rtu block and allow entries as YAML lines, and extra device fields. */
function device(rtu: string, allow: string, opts: { id?: string; extra?: string } = {}): string {
  return `apiVersion: wardgate/v1
kind: Policy
devices:
  - id: ${opts.id ?? 'plc-01'}
    class: sterilizer
    criticality: medium
    mode: enforce${opts.extra ?? ''}
    rtu:
${rtu}    allow:
${allow}`;
}

const RTU = '      serialPort: /dev/ttyUSB0\n      listenPort: 5020\n';
const ENTRY = '      - { peer: scada, direction: inbound, proto: tcp, ports: [5020], modbus: { profile: read-only, unitIds: [3] } }\n';

function errorsOf(gateway: string): Diagnostic[] {
  try {
    buildModel(loadConfig(gateway));
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).diagnostics.filter((d) => d.severity === 'error');
  }
  throw new Error('expected a ConfigError, and the configuration was accepted');
}

const model = (gateway: string): Model => buildModel(loadConfig(gateway));

describe('the rtu block: mistakes', () => {
  it('line settings outside Modbus RTU: 7 data bits, a parity it has not, 1.5 stop bits, a relative path, no listen port', () => {
    const rtu = '      serialPort: ttyUSB0\n      dataBits: 7\n      parity: mark\n      stopBits: 1.5\n';
    const errors = errorsOf(gatewayWith({ 'plc.yaml': device(rtu, ENTRY) }));
    const by = new Map(errors.map((e) => [e.field, e]));
    expect([...by.keys()].sort()).toEqual(['devices[0].rtu.dataBits', 'devices[0].rtu.listenPort', 'devices[0].rtu.parity', 'devices[0].rtu.serialPort', 'devices[0].rtu.stopBits']);
    expect(errors.every((e) => e.file === 'rules/plc.yaml')).toBe(true);
    expect(by.get('devices[0].rtu.serialPort')).toMatchObject({ line: 9, col: 19 });
    expect(by.get('devices[0].rtu.serialPort')?.message).toContain('absolute path');
    expect(by.get('devices[0].rtu.dataBits')).toMatchObject({ line: 10, col: 17 });
    expect(by.get('devices[0].rtu.dataBits')?.message).toContain('8 data bits (Modbus over Serial Line 2.5.1)');
    expect(by.get('devices[0].rtu.parity')?.line).toBe(11);
    expect(by.get('devices[0].rtu.stopBits')).toMatchObject({ line: 12, message: 'stopBits is 1 or 2' });
    // A missing field is shown at the block that lacks it.
    expect(by.get('devices[0].rtu.listenPort')?.line).toBe(9);
    expect(by.get('devices[0].rtu.listenPort')?.message).toBe('is required');
  });

  it('numbers out of range: listen port, baud rate, timeouts', () => {
    const rtu = '      serialPort: /dev/ttyUSB0\n      listenPort: 70000\n      baudRate: 100\n      responseTimeoutMs: 0\n      turnaroundDelayMs: -1\n';
    const errors = errorsOf(gatewayWith({ 'plc.yaml': device(rtu, ENTRY) }));
    expect(errors.map((e) => `${e.line} ${e.field}`).sort()).toEqual([
      '10 devices[0].rtu.listenPort',
      '11 devices[0].rtu.baudRate',
      '12 devices[0].rtu.responseTimeoutMs',
      '13 devices[0].rtu.turnaroundDelayMs',
    ]);
    expect(errors.find((e) => e.field.endsWith('listenPort'))?.message).toBe('port must be 1-65535');
  });

  it('a listen port the gateway already uses: the proxies\' range, the embedded broker, ssh, another RTU device', () => {
    const gw = `${GATEWAY}mqtt: { url: "mqtt://127.0.0.1:1883", embeddedBroker: { port: 1883 } }\n`;
    const a = device('      serialPort: /dev/ttyUSB0\n      listenPort: 40150\n', ENTRY.replace('5020', '40150'));
    const b = device('      serialPort: /dev/ttyUSB0\n      listenPort: 1883\n', ENTRY.replace('5020', '1883'), { id: 'plc-02' });
    const c = device('      serialPort: /dev/ttyUSB0\n      listenPort: 22\n', ENTRY.replace('5020', '22'), { id: 'plc-03' });
    const d = device('      serialPort: /dev/ttyUSB0\n      listenPort: 22\n', ENTRY.replace('5020', '22'), { id: 'plc-04' });
    const errors = errorsOf(gatewayWith({ 'a.yaml': a, 'b.yaml': b, 'c.yaml': c, 'd.yaml': d }, gw));
    expect(errors.map(formatDiagnostic)).toEqual([
      'rules/a.yaml:10:19: error: devices[0].rtu.listenPort: 40150 is within protocols.listenPorts (40100-40299), the proxies\' redirect ports; choose a port outside it',
      'rules/b.yaml:10:19: error: devices[0].rtu.listenPort: 1883 is the embedded MQTT broker\'s port',
      'rules/c.yaml:10:19: error: devices[0].rtu.listenPort: 22 is ssh: the RTU gateway port drops every peer not on its entries, management networks too',
      'rules/d.yaml:10:19: error: devices[0].rtu.listenPort: 22 is ssh: the RTU gateway port drops every peer not on its entries, management networks too',
      'rules/d.yaml:10:19: error: devices[0].rtu.listenPort: 22 is already the RTU gateway port of device "plc-03"',
    ]);
  });

  it('devices on one serial line with different settings', () => {
    const a = device(RTU, ENTRY);
    const b = device('      serialPort: /dev/ttyUSB0\n      listenPort: 5021\n      baudRate: 9600\n', ENTRY.replace('5020', '5021'), { id: 'plc-02' });
    const errors = errorsOf(gatewayWith({ 'a.yaml': a, 'b.yaml': b }));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ file: 'rules/b.yaml', line: 9, field: 'devices[0].rtu.serialPort' });
    expect(errors[0]?.message).toContain('/dev/ttyUSB0 is also the line of device "plc-01" with other settings');
  });

  it('a device on a serial line only: entries other than inbound tcp on its listen port have nothing to apply to', () => {
    const allow = [
      '      - { peer: scada, direction: inbound, proto: tcp, ports: [502] }',
      '      - { peer: scada, direction: outbound, proto: tcp, ports: [5020] }',
      '      - { peer: scada, direction: inbound, proto: icmp }',
      '      - { peer: scada, direction: inbound, proto: tcp, ports: ["5000-5030"] }',
      '      - { peer: scada, direction: inbound, proto: tcp, ports: [5020], dicom: { calledAeTitle: PLC } }',
    ].join('\n');
    const errors = errorsOf(gatewayWith({ 'plc.yaml': device(RTU, `${allow}\n`) }));
    expect(errors.map((e) => `${e.line} ${e.field}`)).toEqual([
      '12 devices[0].allow[0]',
      '13 devices[0].allow[1]',
      '14 devices[0].allow[2]',
      '15 devices[0].allow[3].ports',
      '16 devices[0].allow[4].dicom',
    ]);
    expect(errors[0]?.message).toBe('plc-01 has no ipv4 or ipv6 address: it is reached only through its RTU gateway port, by inbound tcp entries with ports: [5020]');
    expect(errors[3]?.message).toContain('an entry for it names that port alone (ports: [5020])');
    expect(errors[4]?.message).toContain('speaks Modbus: dicom rules cannot apply');
  });

  it('a device with neither address nor rtu block is told about both', () => {
    const text = `apiVersion: wardgate/v1
kind: Policy
devices:
  - { id: plc-01, class: sterilizer, criticality: medium }
`;
    const errors = errorsOf(gatewayWith({ 'plc.yaml': text }));
    expect(errors[0]).toMatchObject({ field: 'devices[0]', line: 4 });
    expect(errors[0]?.message).toContain('or an rtu block');
  });

  it('no parity and 1 stop bit is a warning, not an error', () => {
    const m = model(gatewayWith({ 'plc.yaml': device(`${RTU}      parity: none\n      stopBits: 1\n`, ENTRY) }));
    expect(m.warnings.map(formatDiagnostic)).toEqual([
      'rules/plc.yaml:12:17: warning: devices[0].rtu.stopBits: no parity and 1 stop bit is 10 bits a character; Modbus over Serial Line 2.5.1 asks for 2 stop bits without parity: check the device\'s setting',
    ]);
  });
});

describe('the rtu block: model and ruleset', () => {
  it('an RTU target with the Serial Line defaults, its entries, and the gateway\'s own port', () => {
    const allow = `${ENTRY}      - { peer: ws, direction: inbound, proto: tcp, ports: [5020] }\n`;
    const m = model(gatewayWith({ 'plc.yaml': device(RTU, allow) }));
    const [d] = m.devices;
    expect(d?.addresses).toEqual({});
    expect(d?.proxies).toHaveLength(1);
    const t = d?.proxies[0];
    expect(t).toMatchObject({ key: 'plc-01:rtu', device: 'plc-01', port: 5020, app: 'modbus' });
    expect(t?.rtu).toEqual({ serialPort: '/dev/ttyUSB0', baudRate: 19200, parity: 'even', dataBits: 8, stopBits: 1, responseTimeoutMs: 1000, turnaroundDelayMs: 100 });
    expect(t?.entries.map((e) => [e.id, e.rules === 'all' ? 'all' : 'profile' in e.rules ? e.rules.profile : 'dicom'])).toEqual([
      ['plc-01/allow[0]', 'read-only'],
      ['plc-01/allow[1]', 'all'],
    ]);
    // Not redirected, not in the proxies' range: the worker listens on the port itself.
    const state = mkdtempSync(join(tmpdir(), 'wg-rtu-state-'));
    dirs.push(state);
    const [w] = workerTargets(m, state);
    expect(w).toMatchObject({ key: 'plc-01:rtu', listenPort: 5020, addresses: {}, enforce: true });
  });

  it('no parity means 2 stop bits unless told otherwise (Serial Line 2.5.1)', () => {
    const m = model(gatewayWith({ 'plc.yaml': device(`${RTU}      parity: none\n`, ENTRY) }));
    expect(m.devices[0]?.proxies[0]?.rtu?.stopBits).toBe(2);
  });

  it('a device with an address and a line: the entry for the RTU port is the gateway\'s, not the address\'s', () => {
    const allow = `${ENTRY}      - { peer: scada, direction: inbound, proto: tcp, ports: [502], modbus: { profile: read-only } }\n`;
    const m = model(gatewayWith({ 'plc.yaml': device(RTU, allow, { extra: '\n    ipv4: 10.20.0.21' }) }));
    expect(m.devices[0]?.proxies.map((p) => [p.key, p.rtu !== undefined])).toEqual([
      ['plc-01:502', false],
      ['plc-01:rtu', true],
    ]);
    const text = compile(m, { version: 't' }).text;
    // 502 is redirected to a proxy listen port; 5020 is never in the device's forward allow-list.
    expect(text).toContain('ip daddr 10.20.0.21 tcp dport 502 ip saddr @proxy_plc_01_502_v4 counter redirect to :40100');
    expect(text).not.toMatch(/tcp \. 5020/);
    expect(text).not.toMatch(/dport 5020 .*redirect/);
    expect(text).toContain('ip saddr @rtu_plc_01_v4 tcp dport 5020 counter accept');
    expect(text).toContain('ip6 saddr @rtu_plc_01_v6 tcp dport 5020 counter accept');
    expect(text).toContain('tcp dport 5020 counter drop');
    // Before management's accept: management networks are dropped on the port too.
    expect(text.indexOf('tcp dport 5020 counter drop')).toBeLessThan(text.indexOf('ip saddr @mgmt_v4 counter accept'));
  });
});
