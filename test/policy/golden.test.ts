// Golden rulesets: every directory under test/policy/golden/ is a gateway with its policies and
// the ruleset and warnings they must compile to. See test/policy/golden/README.md.
//
// Regenerate after an intended change, then review the diff:
//   UPDATE_GOLDEN=1 npx vitest run test/policy/golden.test.ts && git diff test/policy/golden
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, formatDiagnostic } from '../../agent/config/diagnostics.js';
import { loadConfig } from '../../agent/config/load.js';
import { nftAvailable } from '../../agent/policy/backend.js';
import { compile } from '../../agent/policy/compile.js';
import { buildModel } from '../../agent/policy/model.js';
import { parseRuleset } from './helpers/nft-eval.js';

const ROOT = join(import.meta.dirname, '..', '..');
const GOLDEN = join(import.meta.dirname, 'golden');
const VERSION = '0.0.0-golden';
const UPDATE = process.env.UPDATE_GOLDEN === '1';

const cases = readdirSync(GOLDEN, { withFileTypes: true })
  .filter((d) => d.isDirectory())
  .map((d) => d.name)
  .sort();

const staged: string[] = [];
afterAll(() => {
  for (const dir of staged) rmSync(dir, { recursive: true, force: true });
});

/**
 * The gateway file of a case. A case with copy-from-repo.json ({"<in case>": "<in repo>"}) is
 * assembled in a temporary directory from files of the repository (the shipped examples), so
 * that file names in comments, warnings and the policy hash do not depend on the checkout.
 */
function gatewayOf(name: string): string {
  const dir = join(GOLDEN, name);
  const manifest = join(dir, 'copy-from-repo.json');
  if (!existsSync(manifest)) return join(dir, 'gateway.yaml');
  const tmp = mkdtempSync(join(tmpdir(), `wg-golden-${name}-`));
  staged.push(tmp);
  cpSync(dir, tmp, { recursive: true });
  for (const [to, from] of Object.entries(JSON.parse(readFileSync(manifest, 'utf8')) as Record<string, string>)) {
    cpSync(join(ROOT, from), join(tmp, to), { recursive: true });
  }
  return join(tmp, 'gateway.yaml');
}

function compileCase(name: string) {
  let model;
  try {
    model = buildModel(loadConfig(gatewayOf(name)));
  } catch (err) {
    if (err instanceof ConfigError) throw new Error(`case ${name} does not load:\n${err.diagnostics.map(formatDiagnostic).join('\n')}`);
    throw err;
  }
  const warnings = model.warnings.map((d) => `${formatDiagnostic(d)}\n`).join('');
  return {
    hash: model.hash,
    ruleset: compile(model, { version: VERSION }).text,
    failsafe: compile(model, { version: VERSION, failsafe: true }).text,
    warnings,
  };
}

/**
 * The policy hash covers the whole canonical configuration, schema defaults included, so it
 * changes with every new defaulted field even when the ruleset does not. Expected files hold a
 * placeholder; that the real hash is where the placeholder stands is checked separately.
 */
function withoutHash(text: string, hash: string): string {
  return text.replace(`# policy sha256:${hash}\n`, '# policy sha256:<policy hash>\n').replace(` policy ${hash.slice(0, 16)}`, ' policy <hash>');
}

/** Compares with the expected file, or writes it under UPDATE_GOLDEN=1. */
function expectFile(file: string, actual: string): void {
  if (UPDATE) {
    writeFileSync(file, actual);
    return;
  }
  if (!existsSync(file)) throw new Error(`${file} is missing: run UPDATE_GOLDEN=1 npx vitest run test/policy/golden.test.ts and review it`);
  expect(actual, `${file} (UPDATE_GOLDEN=1 regenerates it)`).toBe(readFileSync(file, 'utf8'));
}

describe('golden rulesets', () => {
  it('has cases', () => {
    expect(cases.length).toBeGreaterThanOrEqual(10);
  });

  for (const name of cases) {
    it(name, () => {
      const dir = join(GOLDEN, name);
      const out = compileCase(name);
      expect(out.hash).toMatch(/^[0-9a-f]{64}$/);
      for (const text of [out.ruleset, out.failsafe]) {
        expect(text.split('\n')[1]).toBe(`# policy sha256:${out.hash}`);
        expect(text).toContain(` policy ${out.hash.slice(0, 16)}`);
      }
      expectFile(join(dir, 'expected.nft'), withoutHash(out.ruleset, out.hash));
      expectFile(join(dir, 'expected-warnings.txt'), out.warnings);
      // The fail-safe variant is compared where the case has one (an empty file asks for it).
      if (existsSync(join(dir, 'expected-failsafe.nft'))) expectFile(join(dir, 'expected-failsafe.nft'), withoutHash(out.failsafe, out.hash));
      // Whatever is expected must also be a table the evaluator (and so nft) can take: no
      // overlapping set elements, no jump to a chain that is not there.
      expect(() => parseRuleset(out.ruleset)).not.toThrow();
      expect(() => parseRuleset(out.failsafe)).not.toThrow();
    });
  }

  it('is deterministic: compiling twice gives the same text', () => {
    for (const name of cases) expect(compileCase(name)).toEqual(compileCase(name));
  });
});

const skipReason = (() => {
  if (process.platform !== 'linux') return `network namespaces need Linux, this is ${process.platform}`;
  if (process.getuid?.() !== 0) return 'not root';
  const nft = nftAvailable();
  if (!nft.ok) return nft.reason ?? 'nft is unavailable';
  if (spawnSync('ip', ['netns', 'list']).status !== 0) return 'iproute2 cannot list network namespaces';
  return undefined;
})();
if (skipReason) console.warn(`skipping loading the golden rulesets into the kernel: ${skipReason}`);

describe.skipIf(skipReason !== undefined)('golden rulesets load into the kernel', () => {
  const ns = `wgqgold${process.pid}`;
  beforeAll(() => {
    const r = spawnSync('ip', ['netns', 'add', ns], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
  });
  afterAll(() => {
    spawnSync('ip', ['netns', 'del', ns]);
  });

  for (const name of cases) {
    it(name, () => {
      const out = compileCase(name);
      for (const [what, text] of [['ruleset', out.ruleset], ['fail-safe ruleset', out.failsafe]] as const) {
        const r = spawnSync('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], { input: text, encoding: 'utf8' });
        expect(r.status, `nft -f refused the ${what} of ${name}: ${r.stderr}`).toBe(0);
      }
    });
  }
});
