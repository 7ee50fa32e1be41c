// The signed command channel: canonical form, every refusal in the order the checks run, the
// replay record across restarts and its bound, response routing, and the whole exchange over a
// real broker: aedes in-process (MQTT 3.1.1, replyTo) and Mosquitto with TLS (MQTT 5, response
// topic and correlation data).
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { CommandsSchema } from '../../agent/config/schema.js';
import { CommandClient } from '../../agent/console/client.js';
import { buildRequest, signRequest, type RequestSpec } from '../../agent/console/sign.js';
import {
  canonicalJson,
  CommandDispatcher,
  CommandKeyError,
  CommandVerifier,
  isAllowedResponseTopic,
  parsePublicKey,
  rawPublicKeyBase64,
  signingInput,
  type CommandHandler,
} from '../../agent/mqtt/commands.js';
import { startEmbeddedBroker, type EmbeddedBroker } from '../../agent/mqtt/broker.js';
import { CommandResponsePayload, Topics, type CommandRequest } from '../../agent/mqtt/topics.js';
import { defaultHandlers, FakeGateway, GATEWAY, MemoryAudit, SITE } from '../console/gateway-fixture.js';
import { freePort, haveMosquitto, makePki, removePki, startMosquitto, until, type Mosquitto, type Pki } from './brokers.js';

const ops = generateKeyPairSync('ed25519');
const stranger = generateKeyPairSync('ed25519');
const OPS_PUBLIC = rawPublicKeyBase64(ops.publicKey);
const topics = new Topics(SITE, GATEWAY);

function spec(over: Partial<RequestSpec> = {}): RequestSpec {
  return { site: SITE, gateway: GATEWAY, name: 'ping', args: {}, keyId: 'ops', ...over };
}
const signed = (over: Partial<RequestSpec> = {}, key: KeyObject = ops.privateKey): CommandRequest => signRequest(buildRequest(spec(over)), key);
const bytes = (o: unknown) => Buffer.from(JSON.stringify(o));

let dirs: string[] = [];
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), 'wg-cmd-'));
  dirs.push(d);
  return d;
};
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  dirs = [];
});

describe('canonical JSON (RFC 8785 for what commands carry)', () => {
  it('sorts keys at every depth, keeps array order, has no whitespace', () => {
    expect(canonicalJson({ b: 1, a: { d: [3, { z: 1, y: 2 }], c: 'x' }, A: null })).toBe('{"A":null,"a":{"c":"x","d":[3,{"y":2,"z":1}]},"b":1}');
    expect(canonicalJson({ s: 'é "q" \n \u0001', n: 1e21, f: 0.1, neg: -0, t: true })).toBe('{"f":0.1,"n":1e+21,"neg":0,"s":"é \\"q\\" \\n \\u0001","t":true}');
    expect(canonicalJson({ u: undefined, k: 1 })).toBe('{"k":1}');
    expect(() => canonicalJson({ n: Number.POSITIVE_INFINITY })).toThrow(TypeError);
  });

  it('the signed bytes leave out the signature only; replyTo is signed', () => {
    const input = signingInput({ name: 'ping', signature: 'xx', replyTo: 'a/b', args: {} }).toString();
    expect(input).toBe('{"args":{},"name":"ping","replyTo":"a/b"}');
  });
});

describe('keys', () => {
  it('takes a public key as PEM or as base64 of the raw 32 bytes, and nothing else', () => {
    const pem = ops.publicKey.export({ format: 'pem', type: 'spki' }).toString();
    expect(rawPublicKeyBase64(parsePublicKey(pem))).toBe(OPS_PUBLIC);
    expect(rawPublicKeyBase64(parsePublicKey(OPS_PUBLIC))).toBe(OPS_PUBLIC);
    expect(() => parsePublicKey('AAAA')).toThrow(/32 bytes/);
    expect(() => parsePublicKey('not a key!')).toThrow(CommandKeyError);
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'pem', type: 'spki' }).toString();
    expect(() => parsePublicKey(ec)).toThrow(/not Ed25519/);
  });

  it('a bad key in the configuration stops the verifier from being built, naming the key', () => {
    const config = CommandsSchema.parse({ publicKeys: [{ id: 'ops', key: 'AAAA' }] });
    expect(() => new CommandVerifier({ site: SITE, gateway: GATEWAY, config, stateDir: tempDir(), commands: ['ping'] })).toThrow(/"ops".*32 bytes/);
  });
});

describe('CommandVerifier and CommandDispatcher, without a broker', () => {
  let now = Date.parse('2030-01-01T00:00:00Z');
  let stateDir = '';
  const config = CommandsSchema.parse({ publicKeys: [{ id: 'ops', key: OPS_PUBLIC }], maxSkewSeconds: 60, maxLifetimeSeconds: 300 });
  const verifier = (maxNonces?: number) =>
    new CommandVerifier({ site: SITE, gateway: GATEWAY, config, stateDir, commands: ['ping', 'echo', 'fail'], now: () => now, ...(maxNonces ? { maxNonces } : {}) });
  const at = (over: Partial<RequestSpec> = {}) => signed({ now: new Date(now), ...over });
  beforeEach(() => {
    now = Date.parse('2030-01-01T00:00:00Z');
    stateDir = tempDir();
  });

  it('runs the checks in order and names each failure', () => {
    const v = verifier();
    const t = topics.command('ping');
    const code = (payload: Buffer | string, topic = t) => {
      const r = v.verify(Buffer.from(payload), topic);
      return r.ok ? 'ok' : r.code;
    };
    expect(code('{')).toBe('E_MALFORMED');
    expect(code('[]')).toBe('E_MALFORMED');
    expect(code(Buffer.from([0x7b, 0xff, 0x7d]))).toBe('E_MALFORMED'); // not UTF-8
    expect(code(bytes(at()), 'wardgate/v1/st-test/gw-1/commands/ping')).toBe('E_MALFORMED');
    expect(code(bytes(at()), topics.command('echo'))).toBe('E_MALFORMED'); // the topic names another command
    expect(code(bytes({ ...at(), args: { big: 1 } }).toString().replace('"big":1', '"big":1e999'))).toBe('E_MALFORMED'); // not representable
    // Wrong gateway comes before the key: a request for another gateway says so, whoever signed it.
    expect(code(bytes(at({ gateway: 'gw-2', keyId: 'nobody' })))).toBe('E_WRONG_GATEWAY');
    expect(code(bytes(at()), `wardgate/v1/${SITE}/gw-2/cmd/ping`)).toBe('E_WRONG_GATEWAY');
    expect(code(bytes(at({ keyId: 'nobody' })))).toBe('E_UNKNOWN_KEY');
    expect(code(bytes({ ...at(), signature: 'abc' }))).toBe('E_BAD_SIGNATURE');
    expect(code(bytes(signed({ now: new Date(now) }, stranger.privateKey)))).toBe('E_BAD_SIGNATURE');
    expect(code(bytes({ ...at(), replyTo: `${topics.responses()}/elsewhere` }))).toBe('E_BAD_SIGNATURE'); // replyTo is signed
    expect(code(bytes(at({ now: new Date(now + 61_000) })))).toBe('E_NOT_YET_VALID');
    expect(code(bytes(at({ now: new Date(now + 59_000) })))).toBe('ok'); // within the skew
    expect(code(bytes(at({ now: new Date(now - 121_000), ttlSeconds: 120 })))).toBe('E_EXPIRED');
    expect(code(bytes(at({ ttlSeconds: 301 })))).toBe('E_LIFETIME');
    const once = bytes(at());
    expect(code(once)).toBe('ok');
    expect(code(once)).toBe('E_REPLAYED');
    expect(code(bytes(at({ name: 'reboot' })), topics.command('reboot'))).toBe('E_UNKNOWN_COMMAND');
  });

  it('a replay is refused after a restart, and until the command has expired (plus the skew)', () => {
    const request = bytes(at({ ttlSeconds: 100 }));
    expect(verifier().verify(request, topics.command('ping')).ok).toBe(true);
    const after = verifier(); // a restart: the record is read back
    expect(after.nonceCount).toBe(1);
    expect(after.verify(request, topics.command('ping'))).toMatchObject({ ok: false, code: 'E_REPLAYED' });
    now += 100_000; // expired: the nonce is kept for the skew still, and the command is refused as expired
    expect(after.verify(request, topics.command('ping'))).toMatchObject({ ok: false, code: 'E_EXPIRED' });
    now += 61_000;
    expect(after.verify(bytes(at()), topics.command('ping')).ok).toBe(true);
    expect(after.nonceCount).toBe(1); // the old one is gone
  });

  it('is bounded: when full it refuses new commands instead of forgetting nonces', () => {
    const v = verifier(3);
    for (let i = 0; i < 3; i++) expect(v.verify(bytes(at()), topics.command('ping')).ok).toBe(true);
    expect(v.verify(bytes(at()), topics.command('ping'))).toMatchObject({ ok: false, code: 'E_NONCE_STORE' });
    expect(v.nonceCount).toBe(3);
    now += (120 + 60) * 1000; // the first three expire (120 s lifetime + 60 s skew)
    expect(v.verify(bytes(at()), topics.command('ping')).ok).toBe(true);
    expect(v.nonceCount).toBe(1);
  });

  it('a lost (corrupt) record refuses every command issued before the loss plus the skew, across restarts', () => {
    const old = bytes(at());
    expect(verifier().verify(old, topics.command('ping')).ok).toBe(true);
    const file = join(stateDir, 'commands', 'nonces.json');
    writeFileSync(file, '{"version":1,"nonc');
    now += 10_000;
    const v = verifier();
    expect(readFileSync(`${file}.corrupt`, 'utf8')).toBe('{"version":1,"nonc');
    expect(v.verify(old, topics.command('ping'))).toMatchObject({ ok: false, code: 'E_REPLAYED', message: expect.stringMatching(/record was lost/) as unknown });
    expect(verifier().verify(bytes(at()), topics.command('ping'))).toMatchObject({ ok: false, code: 'E_REPLAYED' }); // restarting does not lift it
    now += 61_000;
    expect(verifier().verify(bytes(at()), topics.command('ping')).ok).toBe(true);
  });

  describe('dispatch and routing', () => {
    const t = topics.command('ping');
    const dispatcher = (handlers: Record<string, CommandHandler> = defaultHandlers, audit = new MemoryAudit()) =>
      new CommandDispatcher({ site: SITE, gateway: GATEWAY, verifier: verifier(), handlers, audit, responsePrefixes: ['wardgate/v1/st-test/console'], now: () => new Date(now) });

    it('answers with the envelope, the result, the nonce; echoes correlation data', async () => {
      const request = at();
      const answer = await dispatcher().handle(t, bytes(request), { responseTopic: `${topics.responses()}/c1`, correlationData: Buffer.from('abc') });
      expect(answer.responseTopic).toBe(`${topics.responses()}/c1`);
      expect(answer.correlationData?.toString()).toBe('abc');
      const response = CommandResponsePayload.parse(JSON.parse(answer.payload));
      expect(response).toMatchObject({ schema: 'wardgate/v1/command-response', site: SITE, gateway: GATEWAY, ts: '2030-01-01T00:00:00.000Z', command: 'ping', nonce: request.nonce, ok: true, result: { pong: true } });
      expect(response.error).toBeUndefined();
    });

    it('routes: signed replyTo, then the MQTT 5 response topic, only within the allowed prefixes; else <base>/cmd-response', async () => {
      const d = dispatcher();
      const route = async (request: unknown, responseTopic?: string) =>
        (await d.handle(t, bytes(request), responseTopic !== undefined ? { responseTopic } : {})).responseTopic;
      const mine = `${topics.responses()}/console-a`;
      expect(await route(at({ replyTo: mine }), `${topics.responses()}/other`)).toBe(mine); // the signed one wins
      expect(await route(at(), mine)).toBe(mine);
      expect(await route(at({ replyTo: 'wardgate/v1/st-test/console/laptop-1' }))).toBe('wardgate/v1/st-test/console/laptop-1'); // a configured prefix
      expect(await route(at({ replyTo: topics.status() }), topics.health())).toBe(topics.responses()); // never the gateway's own topics
      expect(await route(at(), `${topics.responses()}-evil`)).toBe(topics.responses()); // a prefix is a whole topic level
      expect(await route(at(), 'wardgate/v1/st-test/gw-2/cmd-response')).toBe(topics.responses());
      // A refused request is answered too, on an allowed topic only.
      expect(await route({ junk: true }, mine)).toBe(mine);
      expect(await route({ junk: true, replyTo: mine })).toBe(mine);
      expect(await route({ junk: true }, 'wardgate/v1/st-test/gw-1/status')).toBe(topics.responses());
      expect(isAllowedResponseTopic(`${topics.responses()}/+`, [topics.responses()])).toBe(false);
      expect(() => new CommandDispatcher({ site: SITE, gateway: GATEWAY, verifier: verifier(), handlers: {}, audit: new MemoryAudit(), responsePrefixes: ['a/#'] })).toThrow(/response prefix/);
    });

    it('a handler that throws, or returns what JSON cannot carry, is E_HANDLER_FAILED; names on Object.prototype are not commands', async () => {
      const audit = new MemoryAudit();
      const d = dispatcher({ ...defaultHandlers, echo: () => Promise.resolve({ n: 10n }) }, audit);
      const answer = async (request: CommandRequest) => CommandResponsePayload.parse(JSON.parse((await d.handle(topics.command(request.name), bytes(request))).payload));
      expect(await answer(at({ name: 'fail' }))).toMatchObject({ ok: false, error: { code: 'E_HANDLER_FAILED', message: 'the device did not answer' } });
      expect(await answer(at({ name: 'echo' }))).toMatchObject({ ok: false, error: { code: 'E_HANDLER_FAILED' } });
      expect(await answer(at({ name: 'constructor' }))).toMatchObject({ ok: false, error: { code: 'E_UNKNOWN_COMMAND' } });
      expect(audit.records.map((r) => [r.action, r.outcome, r.detail?.code])).toEqual([
        ['command.failed', 'failed', 'E_HANDLER_FAILED'],
        ['command.failed', 'failed', 'E_HANDLER_FAILED'],
        ['command.refused', 'refused', 'E_UNKNOWN_COMMAND'],
      ]);
    });

    it('the audit actor is a key id only once its signature verified', async () => {
      const audit = new MemoryAudit();
      const d = dispatcher(defaultHandlers, audit);
      await d.handle(t, bytes({ ...at(), signature: 'x' }));
      await d.handle(t, bytes(at({ now: new Date(now - 3_600_000) })));
      expect(audit.records[0]).toMatchObject({ actor: 'unknown', outcome: 'refused', detail: { code: 'E_BAD_SIGNATURE', claimedKeyId: 'ops' } });
      expect(audit.records[1]).toMatchObject({ actor: 'ops', outcome: 'refused', detail: { code: 'E_EXPIRED' } });
    });
  });
});

/** The exchange over a real broker, the same cases on each transport. */
function overBroker(label: string, setup: () => Promise<{ url: string; protocolVersion: 4 | 5; tls?: { ca: string; cert: string; key: string }; close: () => Promise<void> }>) {
  describe(label, () => {
    let env: Awaited<ReturnType<typeof setup>>;
    let gw: FakeGateway;
    let console_: CommandClient;
    beforeAll(async () => {
      env = await setup();
    });
    afterAll(async () => {
      await env.close();
    });
    beforeEach(async () => {
      const tlsOpts = env.tls ? { ca: readFileSync(env.tls.ca), cert: readFileSync(env.tls.cert), key: readFileSync(env.tls.key) } : {};
      gw = new FakeGateway({ url: env.url, stateDir: tempDir(), publicKeys: [{ id: 'ops', key: OPS_PUBLIC }], protocolVersion: env.protocolVersion, clientOptions: tlsOpts });
      await gw.start();
      console_ = await CommandClient.connect(env.url, { protocolVersion: env.protocolVersion, ...(env.tls ? { tls: env.tls } : {}) });
    });
    afterEach(async () => {
      await console_.end();
      await gw.stop();
    });

    /** Signs with the console's response topic as replyTo, as CommandClient.command does. */
    const request = (over: Partial<RequestSpec> = {}, key: KeyObject = ops.privateKey) => signRequest(buildRequest(spec({ replyTo: console_.responseTopic(SITE, GATEWAY), ...over })), key);
    const raw = (topic: string, payload: unknown, nonce?: string) =>
      console_.sendRaw(topic, typeof payload === 'string' ? payload : JSON.stringify(payload), { site: SITE, gateway: GATEWAY, ...(nonce !== undefined ? { nonce } : {}) }, { timeoutMs: 5000 });

    function audited(outcome: 'ok' | 'refused' | 'failed', code?: string, actor = 'ops') {
      expect(gw.lastAudit()).toMatchObject({ actor, outcome, detail: code === undefined ? {} : { code } });
      if (code === undefined) expect(gw.lastAudit()?.detail?.code).toBeUndefined();
    }

    it('a signed ping round-trips', async () => {
      const response = await console_.command({ site: SITE, gateway: GATEWAY, name: 'ping', key: ops.privateKey, keyId: 'ops' }, { timeoutMs: 5000 });
      expect(response).toMatchObject({ ok: true, command: 'ping', result: { pong: true }, gateway: GATEWAY });
      expect(console_.protocolVersion).toBe(env.protocolVersion);
      const answer = gw.answers.at(-1);
      expect(answer?.responseTopic).toBe(console_.responseTopic(SITE, GATEWAY));
      if (env.protocolVersion === 5) expect(answer?.correlationData?.length).toBe(16);
      else expect(answer?.correlationData).toBeUndefined();
      audited('ok');
      expect(gw.lastAudit()).toMatchObject({ action: 'command.executed', detail: { command: 'ping', nonce: response.nonce } });
    });

    it('arguments reach the handler; a handler failure comes back with its message', async () => {
      expect(await console_.send(request({ name: 'echo', args: { device: 'ct-1', n: 2, deep: { a: [1, 'b'] } } }))).toMatchObject({ ok: true, result: { device: 'ct-1', n: 2, deep: { a: [1, 'b'] } } });
      expect(await console_.send(request({ name: 'fail' }))).toMatchObject({ ok: false, error: { code: 'E_HANDLER_FAILED', message: 'the device did not answer' } });
      audited('failed', 'E_HANDLER_FAILED');
    });

    it('unsigned (no signature) is malformed', async () => {
      const unsigned: Partial<CommandRequest> = { ...request() };
      delete unsigned.signature;
      const r = await raw(topics.command('ping'), unsigned, unsigned.nonce);
      expect(r).toMatchObject({ ok: false, nonce: unsigned.nonce, error: { code: 'E_MALFORMED', message: expect.stringContaining('signature') as unknown } });
      audited('refused', 'E_MALFORMED', 'unknown');
    });

    it('not JSON, or on the topic of another command, is malformed', async () => {
      if (env.protocolVersion === 5) {
        expect(await raw(topics.command('ping'), 'ping please')).toMatchObject({ ok: false, nonce: null, error: { code: 'E_MALFORMED' } });
      } else {
        // Nothing names a reply topic: the answer goes to the gateway's default one.
        const answers: unknown[] = [];
        console_.client.on('message', (topic, payload) => {
          if (topic === topics.responses()) answers.push(JSON.parse(payload.toString()));
        });
        await console_.client.subscribeAsync(topics.responses(), { qos: 1 });
        await console_.client.publishAsync(topics.command('ping'), 'ping please', { qos: 1 });
        await until('the answer', () => answers.length > 0);
        expect(answers[0]).toMatchObject({ ok: false, nonce: null, error: { code: 'E_MALFORMED' } });
      }
      audited('refused', 'E_MALFORMED', 'unknown');
      const r = request();
      expect(await raw(topics.command('echo'), r, r.nonce)).toMatchObject({ ok: false, error: { code: 'E_MALFORMED', message: expect.stringContaining('cmd/echo') as unknown } });
    });

    it('tampered arguments break the signature', async () => {
      const r = { ...request({ name: 'echo', args: { device: 'ct-1' } }), args: { device: 'pump-7' } };
      expect(await raw(topics.command('echo'), r, r.nonce)).toMatchObject({ ok: false, error: { code: 'E_BAD_SIGNATURE' } });
      audited('refused', 'E_BAD_SIGNATURE', 'unknown');
      // Signed by another key under a trusted key id: the same.
      const forged = request({}, stranger.privateKey);
      expect(await console_.send(forged)).toMatchObject({ ok: false, error: { code: 'E_BAD_SIGNATURE' } });
    });

    it('expired, not yet valid, and too long a lifetime are refused', async () => {
      const hour = 3_600_000;
      expect(await console_.send(request({ now: new Date(Date.now() - hour), ttlSeconds: 60 }))).toMatchObject({ ok: false, error: { code: 'E_EXPIRED' } });
      audited('refused', 'E_EXPIRED');
      expect(await console_.send(request({ now: new Date(Date.now() + hour) }))).toMatchObject({ ok: false, error: { code: 'E_NOT_YET_VALID' } });
      audited('refused', 'E_NOT_YET_VALID');
      expect(await console_.send(request({ ttlSeconds: 3600 }))).toMatchObject({ ok: false, error: { code: 'E_LIFETIME' } });
      audited('refused', 'E_LIFETIME');
    });

    it('the same message twice is a replay, and still one after the gateway restarts', async () => {
      const r = request();
      expect(await console_.send(r)).toMatchObject({ ok: true });
      expect(await console_.send(r)).toMatchObject({ ok: false, nonce: r.nonce, error: { code: 'E_REPLAYED' } });
      audited('refused', 'E_REPLAYED');
      gw.rebuild();
      expect(await console_.send(r)).toMatchObject({ ok: false, error: { code: 'E_REPLAYED' } });
      audited('refused', 'E_REPLAYED');
      expect(await console_.send(request())).toMatchObject({ ok: true }); // a fresh one is fine
    });

    it('an unknown key, another gateway, an unknown command', async () => {
      expect(await console_.send(request({ keyId: 'nobody' }))).toMatchObject({ ok: false, error: { code: 'E_UNKNOWN_KEY' } });
      audited('refused', 'E_UNKNOWN_KEY', 'unknown');
      const elsewhere = request({ gateway: 'gw-2' });
      expect(await raw(topics.command('ping'), elsewhere, elsewhere.nonce)).toMatchObject({ ok: false, error: { code: 'E_WRONG_GATEWAY' } });
      audited('refused', 'E_WRONG_GATEWAY', 'unknown');
      expect(await console_.send(request({ name: 'format-disk' }))).toMatchObject({ ok: false, command: 'format-disk', error: { code: 'E_UNKNOWN_COMMAND' } });
      audited('refused', 'E_UNKNOWN_COMMAND');
    });

    it('the audit sink saw every request once, with its outcome and code', async () => {
      const sent = [
        console_.send(request()),
        console_.send(request({ keyId: 'nobody' })),
        console_.send(request({ name: 'fail' })),
        console_.send(request({ ttlSeconds: 3600 })),
      ];
      await Promise.all(sent);
      const seen = gw.audit.records.map((r) => `${r.outcome}:${typeof r.detail?.code === 'string' ? r.detail.code : '-'}`).sort();
      expect(seen).toEqual(['failed:E_HANDLER_FAILED', 'ok:-', 'refused:E_LIFETIME', 'refused:E_UNKNOWN_KEY']);
    });
  });
}

overBroker('over MQTT 3.1.1: embedded aedes, replyTo', async () => {
  const broker: EmbeddedBroker = await startEmbeddedBroker({ host: '127.0.0.1', port: await freePort() });
  return { url: `mqtt://127.0.0.1:${broker.port}`, protocolVersion: 4, close: () => broker.close() };
});

if (haveMosquitto) {
  overBroker('over MQTT 5: Mosquitto with TLS client certificates, response topic and correlation data', async () => {
    const pki: Pki = makePki();
    const m: Mosquitto = await startMosquitto(pki);
    return {
      url: `mqtts://127.0.0.1:${m.port}`,
      protocolVersion: 5,
      tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey },
      close: async () => {
        await m.stop();
        removePki(pki);
      },
    };
  });
} else {
  describe.skip('over MQTT 5 (Mosquitto and openssl are not installed)', () => {});
}

describe('MQTT 5 without a signed replyTo', () => {
  it.skipIf(!haveMosquitto)('answers on the response topic property', async () => {
    const pki = makePki();
    const m = await startMosquitto(pki);
    const tls = { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey };
    const url = `mqtts://127.0.0.1:${m.port}`;
    const gw = new FakeGateway({ url, stateDir: tempDir(), publicKeys: [{ id: 'ops', key: OPS_PUBLIC }], protocolVersion: 5, clientOptions: { ca: readFileSync(tls.ca), cert: readFileSync(tls.cert), key: readFileSync(tls.key) } });
    const c = await CommandClient.connect(url, { tls });
    try {
      await gw.start();
      const r = signed(); // no replyTo: a third-party MQTT 5 console
      expect(await c.send(r, { timeoutMs: 5000 })).toMatchObject({ ok: true, result: { pong: true } });
      expect(gw.answers.at(-1)?.responseTopic).toBe(c.responseTopic(SITE, GATEWAY));
    } finally {
      await c.end();
      await gw.stop();
      await m.stop();
      removePki(pki);
    }
  });
});
