// The model of the integration tests' site (test/integration/site.ts: groups, ct-01 in enforce
// mode, pump-01 in monitor mode), loaded and resolved by the real configuration code.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../agent/config/load.js';
import { buildModel, type Model } from '../../agent/policy/model.js';
import { CT, gatewayYaml, GROUPS, PUMP } from '../integration/site.js';

export const FLOW_POLICIES = { '00-groups.yaml': GROUPS, 'ct.yaml': CT, 'pump.yaml': PUMP };

export function loadModel(gatewayPath: string): Model {
  return buildModel(loadConfig(gatewayPath));
}

/** The model of FLOW_POLICIES, built from files in a temporary directory that is removed again. */
export function siteModel(): Model {
  const dir = mkdtempSync(join(tmpdir(), 'wg-flows-'));
  try {
    writeFileSync(join(dir, 'gateway.yaml'), gatewayYaml({ mode: 'router', stateDir: join(dir, 'state') }));
    mkdirSync(join(dir, 'rules'));
    for (const [name, text] of Object.entries(FLOW_POLICIES)) writeFileSync(join(dir, 'rules', name), text);
    return loadModel(join(dir, 'gateway.yaml'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
