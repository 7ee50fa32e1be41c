// A stand-in for the gateway's side of the command channel, for tests: an MQTT client that
// subscribes to its cmd/# topics and answers through the real CommandVerifier and
// CommandDispatcher, the way the agent's link does, with an in-memory audit sink.
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { AuditRecord, AuditSink } from '../../agent/audit/types.js';
import { CommandsSchema } from '../../agent/config/schema.js';
import { CommandDispatcher, CommandVerifier, type CommandAnswer, type CommandHandler } from '../../agent/mqtt/commands.js';
import { Topics } from '../../agent/mqtt/topics.js';

export class MemoryAudit implements AuditSink {
  records: AuditRecord[] = [];
  append(record: AuditRecord): void {
    this.records.push(record);
  }
}

export const SITE = 'st-test';
export const GATEWAY = 'gw-1';

export const defaultHandlers: Record<string, CommandHandler> = {
  ping: () => Promise.resolve({ pong: true }),
  echo: (args) => Promise.resolve(args),
  fail: () => Promise.reject(new Error('the device did not answer')),
};

export interface FixtureOptions {
  url: string;
  stateDir: string;
  publicKeys: { id: string; key: string }[];
  protocolVersion: 4 | 5;
  clientOptions?: IClientOptions;
  handlers?: Record<string, CommandHandler>;
  maxNonces?: number;
}

export class FakeGateway {
  readonly audit = new MemoryAudit();
  readonly answers: CommandAnswer[] = [];
  dispatcher!: CommandDispatcher;
  verifier!: CommandVerifier;
  private client: MqttClient | undefined;

  constructor(readonly opts: FixtureOptions) {
    this.rebuild();
  }

  /** A new verifier and dispatcher on the same state directory: what a restart does. */
  rebuild(): void {
    const handlers = this.opts.handlers ?? defaultHandlers;
    this.verifier = new CommandVerifier({
      site: SITE,
      gateway: GATEWAY,
      config: CommandsSchema.parse({ publicKeys: this.opts.publicKeys }),
      stateDir: this.opts.stateDir,
      commands: Object.keys(handlers),
      ...(this.opts.maxNonces !== undefined ? { maxNonces: this.opts.maxNonces } : {}),
    });
    this.dispatcher = new CommandDispatcher({ site: SITE, gateway: GATEWAY, verifier: this.verifier, handlers, audit: this.audit });
  }

  async start(): Promise<void> {
    const client = await mqtt.connectAsync(this.opts.url, { reconnectPeriod: 0, protocolVersion: this.opts.protocolVersion, ...this.opts.clientOptions });
    this.client = client;
    client.on('message', (topic, payload, packet) => {
      void this.dispatcher.handle(topic, payload, packet.properties ?? {}).then(async (answer) => {
        this.answers.push(answer);
        const properties = this.opts.protocolVersion === 5 && answer.correlationData ? { properties: { correlationData: answer.correlationData } } : {};
        await client.publishAsync(answer.responseTopic, answer.payload, { qos: 1, ...properties });
      });
    });
    await client.subscribeAsync(`${new Topics(SITE, GATEWAY).base}/cmd/#`, { qos: 1 });
  }

  lastAudit(): AuditRecord | undefined {
    return this.audit.records.at(-1);
  }

  async stop(): Promise<void> {
    await this.client?.endAsync();
    this.client = undefined;
  }
}
