// Allow entries with modbus: and dicom: rules: mistakes are reported where they are written, the
// model lists the proxied ports with every entry that covers them, and listen ports stay put.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError, formatDiagnostic, type Diagnostic } from '../../agent/config/diagnostics.js';
import { loadConfig } from '../../agent/config/load.js';
import { buildModel } from '../../agent/policy/model.js';
import { assignListenPorts, ListenPortsError, PORTS_FILE } from '../../agent/protocols/ports.js';

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

let dirs: string[] = [];
afterEach(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  dirs = [];
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'wg-proto-'));
  dirs.push(dir);
  return dir;
}

function gatewayWith(allow: string): string {
  const dir = tempDir();
  mkdirSync(join(dir, 'rules'));
  writeFileSync(join(dir, 'gateway.yaml'), GATEWAY);
  writeFileSync(
    join(dir, 'rules', 'plc.yaml'),
    `apiVersion: wardgate/v1
kind: Policy
groups:
  scada: { members: [10.10.7.1] }
  ws: { members: [10.10.5.0/28] }
devices:
  - id: plc-01
    class: lab-analyzer
    criticality: medium
    ipv4: 10.20.0.21
    allow:
${allow}`,
  );
  return join(dir, 'gateway.yaml');
}

function errorsOf(gateway: string): string[] {
  try {
    buildModel(loadConfig(gateway));
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).diagnostics.filter((d: Diagnostic) => d.severity === 'error').map(formatDiagnostic);
  }
  throw new Error('expected a ConfigError, and the configuration was accepted');
}

describe('protocol rules in the policy', () => {
  it('a mistake in modbus rules is named with file, line and field', () => {
    const errors = errorsOf(
      gatewayWith(`      - peer: scada
        direction: inbound
        proto: tcp
        ports: [502]
        modbus:
          functions: [read-holding-registers, write-everything]
          unitIds: [300]
          read: { holdingRegisters: ["200-100"] }
`),
    );
    expect(errors).toEqual([
      expect.stringMatching(/^rules\/plc\.yaml:17:47: error: devices\[0\]\.allow\[0\]\.modbus\.functions\[1\]: Invalid option: expected one of "read-coils"/),
      'rules/plc.yaml:18:21: error: devices[0].allow[0].modbus.unitIds[0]: unit id must be 0-255',
      'rules/plc.yaml:19:38: error: devices[0].allow[0].modbus.read.holdingRegisters[0]: address range 200-100 runs backwards',
    ]);
  });

  it('modbus rules need a profile or functions', () => {
    const errors = errorsOf(gatewayWith('      - { peer: scada, direction: inbound, proto: tcp, ports: [502], modbus: { unitIds: [1] } }\n'));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toContain('devices[0].allow[0].modbus.profile: name a profile (read-only, read-write) or the functions the peer may use');
  });

  it('application rules only on inbound tcp entries with single ports, one protocol a port', () => {
    const errors = errorsOf(
      gatewayWith(`      - { peer: scada, direction: outbound, proto: tcp, ports: [502], modbus: { profile: read-only } }
      - { peer: scada, direction: inbound, proto: udp, ports: [502], modbus: { profile: read-only } }
      - { peer: scada, direction: inbound, proto: tcp, ports: ["500-510"], modbus: { profile: read-only } }
      - { peer: scada, direction: inbound, proto: tcp, ports: [104], app: HL7, dicom: { calledAeTitle: PLC } }
      - { peer: ws, direction: inbound, proto: tcp, ports: [600], modbus: { profile: read-only } }
      - { peer: ws, direction: inbound, proto: tcp, ports: [600], dicom: { calledAeTitle: PLC } }
`),
    );
    expect(errors).toEqual([
      'rules/plc.yaml:12:35: error: devices[0].allow[0].direction: modbus rules say what a peer may ask of the device: they apply to inbound entries only',
      'rules/plc.yaml:13:51: error: devices[0].allow[1].proto: modbus rules need proto tcp',
      'rules/plc.yaml:14:64: error: devices[0].allow[2].ports[0]: a proxied entry names single ports, not a range (500-510): the proxy listens once per port',
      'rules/plc.yaml:15:75: error: devices[0].allow[3].app: app HL7 disagrees with the entry\'s dicom rules',
      'rules/plc.yaml:17:74: error: devices[0].allow[5].dicom: port 600 of plc-01 is proxied as modbus by plc-01/allow[4]; one port speaks one protocol',
    ]);
  });

  it('a bad AE title and an unknown SOP class are refused', () => {
    const errors = errorsOf(
      gatewayWith(`      - peer: scada
        direction: inbound
        proto: tcp
        ports: [104]
        dicom: { calledAeTitle: "THIS-AE-TITLE-IS-TOO-LONG", sopClasses: [ct-image-storage, ct-image-storge, "1.2.840.10008.5.1.4.1.1.2"] }
`),
    );
    expect(errors).toHaveLength(2);
    expect(errors[0]).toContain('devices[0].allow[0].dicom.calledAeTitle: an AE title: 1-16 printable characters');
    expect(errors[1]).toContain('devices[0].allow[0].dicom.sopClasses[1]: "ct-image-storge" is neither a SOP class name');
  });

  it('the model lists each proxied port with every entry covering it (a plain entry allows all)', () => {
    const model = buildModel(
      loadConfig(
        gatewayWith(`      - { peer: ws, direction: inbound, proto: tcp, ports: [502], modbus: { profile: read-only } }
      - { peer: scada, direction: inbound, proto: tcp, ports: [502] }
      - { peer: scada, direction: inbound, proto: tcp, ports: ["80-90"] }
`),
      ),
    );
    const [dev] = model.devices;
    expect(dev?.proxies).toHaveLength(1);
    const [t] = dev?.proxies ?? [];
    expect(t).toMatchObject({ key: 'plc-01:502', port: 502, devicePort: 502, app: 'modbus' });
    expect(t?.entries.map((e) => [e.id, e.rules === 'all' ? 'all' : 'rules'])).toEqual([
      ['plc-01/allow[0]', 'rules'],
      ['plc-01/allow[1]', 'all'],
    ]);
    expect(dev?.entries[0]?.app).toBe('Modbus');
  });
});

describe('listen ports', () => {
  it('an assignment is kept when other device ports come and go', () => {
    const state = tempDir();
    const first = assignListenPorts('40100-40102', state, ['b:502', 'c:104'], { persist: true });
    expect([...first]).toEqual([
      ['b:502', 40100],
      ['c:104', 40101],
    ]);
    // A device that sorts first arrives, and b goes away: c keeps its port, a takes a free one.
    const second = assignListenPorts('40100-40102', state, ['a:502', 'c:104'], { persist: true });
    expect(second.get('c:104')).toBe(40101);
    expect(second.get('a:502')).toBe(40102);
    expect(JSON.parse(readFileSync(join(state, PORTS_FILE), 'utf8'))).toEqual({ version: 1, ports: { 'a:502': 40102, 'b:502': 40100, 'c:104': 40101 } });
    // The range is full: a clear error, nothing written.
    expect(() => assignListenPorts('40100-40102', state, ['d:1'], { persist: true })).toThrow(ListenPortsError);
    expect(() => assignListenPorts('40100-40102', state, ['d:1'], { persist: true })).toThrow(/no free port for d:1/);
  });

  it('without persist nothing is written', () => {
    const state = tempDir();
    assignListenPorts('40100-40199', state, ['a:1'], { persist: false });
    expect(() => readFileSync(join(state, PORTS_FILE))).toThrow();
  });
});
