// When nft refuses a ruleset, the error names nft's message and the allow entry (file and
// line) that produced the failing line. Needs root and nft: runs in a namespace of its own.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../agent/config/load.js';
import { PolicyManager } from '../../agent/policy/apply.js';
import { NftBackend, NftError, nftAvailable } from '../../agent/policy/backend.js';
import { compile } from '../../agent/policy/compile.js';
import { buildModel } from '../../agent/policy/model.js';

const ROOT = join(import.meta.dirname, '..', '..');
const root = process.getuid?.() === 0 && nftAvailable().ok;
if (!root) console.warn('skipping nft error tests: they need root and nft (run as root, apt-get install nftables)');
const ns = `wgerr${process.pid}`;

describe.skipIf(!root)('nft refusals name their source', () => {
  beforeAll(() => {
    expect(spawnSync('ip', ['netns', 'add', ns]).status).toBe(0);
  });
  afterAll(() => {
    spawnSync('ip', ['netns', 'del', ns]);
  });

  it('maps nft line numbers back to the allow entry', async () => {
    const model = buildModel(loadConfig(join(ROOT, 'gateway.example.yaml')));
    const compiled = compile(model, { version: 'test' });
    // Damage one set element the way a bad value would reach nft: a port nft cannot take.
    const lines = compiled.text.split('\n');
    const at = lines.findIndex((l) => l.includes('192.0.2.40 . tcp . 443'));
    expect(at).toBeGreaterThan(0);
    lines[at] = (lines[at] ?? '').replace('tcp . 443', 'tcp . 70000');
    const broken = { ...compiled, text: lines.join('\n') };
    const manager = new PolicyManager({ stateDir: '/nonexistent', backend: new NftBackend(ns), version: 'test' });
    const err = await manager.check(broken).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(NftError);
    const failure = (err as NftError).failures[0];
    expect(failure?.line).toBe(at + 1);
    expect(failure?.source?.what).toBe('allow entry ct-01/allow[5]');
    expect(failure?.source?.src).toMatchObject({ file: 'rules/ct-modality.yaml' });
    expect((err as NftError).message).toMatch(
      new RegExp(`ruleset line ${at + 1}: .+ \\(from allow entry ct-01/allow\\[5\\] at rules/ct-modality.yaml:\\d+\\)`),
    );
    // The kernel was never touched: a check is nft -c.
    expect(await new NftBackend(ns).listTable()).toBeUndefined();
  });
});
