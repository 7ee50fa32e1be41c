// The drift check hashes our table's listing without the proxies' alive-set elements: the agent
// fills and empties that set by design, and it must not look like someone altered the table.
import { describe, expect, it } from 'vitest';
import { sha256, stableListing } from '../../agent/policy/apply.js';

const listing = (elements: string) => `table inet wardgate {
	comment "wardgate demo/gw policy 0123456789abcdef"
	set proxy_alive_v4 {
		type ipv4_addr . inet_service
		flags timeout
		comment "fail-open devices' proxied ports"${elements}
	}

	set proxy_ct_01_104_v4 {
		type ipv4_addr
		flags interval
		auto-merge
		elements = { 10.10.1.10 }
	}
}
`;

describe('stableListing', () => {
  it("ignores the alive set's elements, one or many lines", () => {
    const empty = listing('');
    const one = listing('\n\t\telements = { 10.20.0.41 . 502 timeout 8s expires 5s }');
    const many = listing('\n\t\telements = { 10.20.0.41 . 502 timeout 8s expires 5s,\n\t\t\t     10.20.0.42 . 104 timeout 8s expires 7s }');
    expect(stableListing(one)).toBe(empty);
    expect(stableListing(many)).toBe(empty);
    expect(sha256(stableListing(many))).toBe(sha256(stableListing(empty)));
  });

  it("keeps every other set's elements: a change there is drift", () => {
    const changed = listing('').replace('elements = { 10.10.1.10 }', 'elements = { 10.10.1.10, 10.66.6.6 }');
    expect(stableListing(changed)).not.toBe(stableListing(listing('')));
    expect(stableListing(changed)).toContain('10.66.6.6');
  });
});
