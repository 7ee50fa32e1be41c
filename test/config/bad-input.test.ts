// Policy mistakes are reported with file, line, column and field, all at once.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError, formatDiagnostic, type Diagnostic } from '../../agent/config/diagnostics.js';
import { loadConfig } from '../../agent/config/load.js';
import { buildModel } from '../../agent/policy/model.js';

const GATEWAY = `apiVersion: wardgate/v1
kind: Gateway
site: test
gateway: gw-1
mode: router
interfaces: { uplink: up0, device: dev0 }
deviceSegments: [10.20.0.0/24, "fd00:20::/64"]
management: { networks: [10.99.0.0/24] }
stateDir: state
policies: [rules/*.yaml]
`;

const GROUPS = `apiVersion: wardgate/v1
kind: Policy
groups:
  pacs:
    members: [10.10.1.10]
`;

let dirs: string[] = [];
afterEach(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  dirs = [];
});

/** A gateway directory with rules/00-groups.yaml and the given policy files. */
function withRules(files: Record<string, string>, gateway = GATEWAY): string {
  const dir = mkdtempSync(join(tmpdir(), 'wg-bad-'));
  dirs.push(dir);
  mkdirSync(join(dir, 'rules'));
  writeFileSync(join(dir, 'gateway.yaml'), gateway);
  for (const [name, text] of Object.entries({ '00-groups.yaml': GROUPS, ...files })) writeFileSync(join(dir, 'rules', name), text);
  return join(dir, 'gateway.yaml');
}

function errorsOf(gateway: string): Diagnostic[] {
  try {
    buildModel(loadConfig(gateway));
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).diagnostics.filter((d) => d.severity === 'error');
  }
  throw new Error('expected a ConfigError, and the configuration was accepted');
}

/** A device policy with one allow entry given as YAML lines (indented under allow:). */
function device(entry: string, extra = ''): string {
  return `apiVersion: wardgate/v1
kind: Policy
devices:
  - id: ct-01
    class: ct-modality
    criticality: high
    ipv4: 10.20.0.11${extra}
    allow:
${entry}`;
}

describe('policy mistakes', () => {
  it('bad YAML: file, line and column of the syntax error', () => {
    const errors = errorsOf(withRules({ 'ct.yaml': 'apiVersion: wardgate/v1\nkind: Policy\ndevices: []\nkind: Policy\n' }));
    expect(errors).toHaveLength(1);
    expect(formatDiagnostic(errors[0] as Diagnostic)).toBe('rules/ct.yaml:4:1: error: YAML: Map keys must be unique');
    const tabs = errorsOf(withRules({ 'ct.yaml': 'apiVersion: wardgate/v1\nkind: Policy\ndevices:\n\t- id: x\n' }));
    expect(tabs[0]).toMatchObject({ file: 'rules/ct.yaml', line: 4, col: 1, message: 'YAML: Tabs are not allowed as indentation' });
  });

  it('an unknown field is named where it is written', () => {
    const text = device('      - { peer: pacs, direction: inbound, proto: tcp, ports: [104] }\n', '\n    critcality: high');
    const errors = errorsOf(withRules({ 'ct.yaml': text }));
    expect(errors.map(formatDiagnostic)).toEqual(['rules/ct.yaml:8:5: error: devices[0].critcality: unknown field "critcality"']);
  });

  it('an unknown peer group lists the groups there are', () => {
    const errors = errorsOf(withRules({ 'ct.yaml': device('      - peer: pacz\n        direction: inbound\n        proto: tcp\n        ports: [104]\n') }));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ file: 'rules/ct.yaml', line: 9, col: 15, field: 'devices[0].allow[0].peer' });
    expect(errors[0]?.message).toContain('unknown peer group "pacz" (groups: pacs)');
  });

  it('bad CIDRs: host bits set, octet out of range, prefix too long', () => {
    const groups = `apiVersion: wardgate/v1
kind: Policy
groups:
  wards:
    members:
      - 10.10.1.5/24
      - 10.10.300.0/24
      - 10.10.0.0/33
`;
    const errors = errorsOf(withRules({ 'groups2.yaml': groups }));
    expect(errors.map((e) => [e.line, e.col, e.field])).toEqual([
      [6, 9, 'groups.wards.members[0]'],
      [7, 9, 'groups.wards.members[1]'],
      [8, 9, 'groups.wards.members[2]'],
    ]);
    expect(errors[0]?.message).toContain('the network is 10.10.1.0/24');
    expect(errors[1]?.message).toContain('not an IPv4 or IPv6 address');
    expect(errors[2]?.message).toContain('/0 and /32');
  });

  it('ports out of range and backwards ranges', () => {
    const errors = errorsOf(withRules({ 'ct.yaml': device('      - peer: pacs\n        direction: inbound\n        proto: tcp\n        ports: [70000, "200-100", "0-5", http]\n') }));
    expect(errors.map((e) => e.field)).toEqual([
      'devices[0].allow[0].ports[0]',
      'devices[0].allow[0].ports[1]',
      'devices[0].allow[0].ports[2]',
      'devices[0].allow[0].ports[3]',
    ]);
    expect(errors.every((e) => e.line === 12)).toBe(true);
    expect(errors[0]?.message).toBe('port must be 1-65535');
    expect(errors[1]?.message).toContain('runs backwards');
    expect(errors[3]?.message).toContain('"http" is not a port');
  });

  it('a duplicate device id across files points at the first definition', () => {
    const entry = '      - { peer: pacs, direction: inbound, proto: tcp, ports: [104] }\n';
    const other = device(entry).replace('10.20.0.11', '10.20.0.12');
    const errors = errorsOf(withRules({ 'a.yaml': device(entry), 'b.yaml': other }));
    expect(errors).toHaveLength(1);
    expect(formatDiagnostic(errors[0] as Diagnostic)).toBe('rules/b.yaml:4:9: error: devices[0].id: device id "ct-01" is already used at rules/a.yaml:4');
  });

  it('a device address outside the device segments, or shared with another device', () => {
    const entry = '      - { peer: pacs, direction: inbound, proto: tcp, ports: [104] }\n';
    const outside = device(entry).replace('10.20.0.11', '10.30.0.11');
    const errors = errorsOf(withRules({ 'ct.yaml': outside }));
    expect(errors[0]).toMatchObject({ field: 'devices[0].ipv4', line: 7, col: 11 });
    expect(errors[0]?.message).toContain('outside the device segments (10.20.0.0/24, fd00:20::/64)');

    const twin = device(entry).replace('ct-01', 'ct-02');
    const dup = errorsOf(withRules({ 'a.yaml': device(entry), 'b.yaml': twin }));
    expect(dup[0]?.message).toBe('10.20.0.11 is already the address of device "ct-01"');
  });

  it('contradictory settings: icmp with ports, tcp without ports, an IPv6 peer for an IPv4 device', () => {
    const entries = [
      '      - { peer: pacs, direction: inbound, proto: icmp, ports: [1] }',
      '      - { peer: pacs, direction: inbound, proto: tcp }',
      '      - { peer: "fd00:10::1", direction: inbound, proto: tcp, ports: [104] }',
    ].join('\n');
    const errors = errorsOf(withRules({ 'ct.yaml': device(`${entries}\n`) }));
    expect(errors.map((e) => [e.line, e.field])).toEqual([
      [9, 'devices[0].allow[0].ports'],
      [10, 'devices[0].allow[1]'],
      [11, 'devices[0].allow[2].peer'],
    ]);
    expect(errors[0]?.message).toContain('icmp has no ports');
    expect(errors[1]?.message).toContain('tcp needs "ports"');
    expect(errors[2]?.message).toContain('has no ipv4 address');
  });

  it('every mistake in every file is reported at once', () => {
    const entry = '      - { peer: nope, direction: sideways, proto: tcp, ports: [0] }\n';
    const errors = errorsOf(withRules({ 'a.yaml': device(entry), 'b.yaml': 'apiVersion: wardgate/v2\nkind: Policy\n' }));
    expect(errors.map((e) => `${e.file}:${e.field}`).sort()).toEqual([
      'rules/a.yaml:devices[0].allow[0].direction',
      'rules/a.yaml:devices[0].allow[0].ports[0]',
      'rules/b.yaml:apiVersion',
    ]);
  });

  it('gateway file mistakes: wrong mode, missing field, a policy path that matches nothing', () => {
    const gw = GATEWAY.replace('mode: router', 'mode: hub').replace('site: test\n', '');
    const errors = errorsOf(withRules({}, gw));
    expect(errors.map((e) => `${e.file}:${e.line}:${e.field}`).sort()).toEqual(['gateway.yaml:1:site', 'gateway.yaml:4:mode']);
    const nothing = errorsOf(withRules({}, GATEWAY.replace('rules/*.yaml', 'policies/*.yaml')));
    expect(nothing[0]).toMatchObject({ file: 'gateway.yaml', field: 'policies[0]' });
    expect(nothing[0]?.message).toContain('matches no policy file');
  });

  it('a device without any address', () => {
    const text = device('      - { peer: pacs, direction: inbound, proto: tcp, ports: [104] }\n').replace('    ipv4: 10.20.0.11\n', '');
    const errors = errorsOf(withRules({ 'ct.yaml': text }));
    expect(errors[0]).toMatchObject({ field: 'devices[0]', line: 4 });
    expect(errors[0]?.message).toContain('needs an ipv4 or an ipv6 address');
  });
});
