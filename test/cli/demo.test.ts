// `wardgate demo` (what `npm start` runs) does what it says: as root, a namespace site where
// allowed connections pass and the rest are dropped; without root, a dry run; then health over
// MQTT. It exits non-zero on any surprise, so the exit code is the verdict.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const CLI = join(import.meta.dirname, '..', '..', 'bin', 'wardgate.js');

describe('wardgate demo', () => {
  it('runs the whole system on this machine and leaves nothing behind', () => {
    const r = spawnSync(process.execPath, [CLI, 'demo'], { encoding: 'utf8', timeout: 90000 });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    if (process.getuid?.() === 0) {
      expect(r.stdout).toMatch(/PASSED {2}pacs -> CT scanner ct-01:104/);
      expect(r.stdout).toMatch(/DROPPED stranger -> CT scanner ct-01:104/);
      expect(r.stdout).toMatch(/event \[warning\] flow\.denied: denied tcp\/104 from 10\.10\.9\.66 to device ct-01/);
      expect(r.stdout).toMatch(/^ {2}denied {4}10\.10\.9\.66 -> ct-01:104 DICOM$/m);
      expect(r.stdout).toContain('site removed');
    } else {
      expect(r.stdout).toContain('DRY RUN');
    }
    expect(r.stdout).toMatch(/devices\/lab-analyzer-01\/health: up/);
    expect(r.stdout).toMatch(/answer: ok=true \{"pong":true/);
    expect(r.stdout).toMatch(/answer: ok=false \{"code":"E_MALFORMED"/);
    // Backups: drift named register by register, a restore that reads back, a bundle that verifies.
    expect(r.stdout).toMatch(/backup\.now: ok=true, version 1, the approved baseline/);
    expect(r.stdout).toMatch(/events: \[warning\] configuration of lab-analyzer-01 version 2 differs .*holding 1: 0 -> 4/);
    expect(r.stdout).toMatch(/backup\.restore: restored version 1 .*register 1 reads 0 again/);
    expect(r.stdout).toMatch(/verified with .*gateway-ed25519\.pub .*: 2 version\(s\) of lab-analyzer-01 from demo\/gw-lab-01/);
    expect(r.stdout).toMatch(/status: offline \(session 1, shutdown\)/);
    expect(spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout).not.toMatch(/^wgdemo/m);
  });
});
