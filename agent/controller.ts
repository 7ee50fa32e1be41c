// One controller builds every module of the agent and wires them together; each module has
// start()/stop(), and its constructor only stores what it is given. A module whose start fails
// is reported and left out; it does not take the agent down (the kernel keeps enforcing).
//
// The data path is one way: kernel and probes -> events and health -> outbox -> MQTT.
import { randomBytes, randomUUID } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { resolveBoard } from '../hardware/boards/index.js';
import { openAuditLog, type AuditLog } from './audit/log.js';
import { backupModule, backupTargetsOf, openWritableStore } from './backup/module.js';
import type { BackupStore } from './backup/store.js';
import { backupPullHandlers } from './backup/pull.js';
import type { Drift } from './backup/drift.js';
import { restoreDevice, type RestoreResult } from './backup/restore.js';
import { driftMessage, type BackupTarget } from './backup/run.js';
import { createSyslogSink, type SyslogSink } from './export/syslog.js';
import { chooseBackend, gatewayOnly, loadAndCompile, manager, type GlobalOptions } from './cli/context.js';
import type { Io } from './cli/io.js';
import { loadConfig } from './config/load.js';
import type { GatewayConfig } from './config/schema.js';
import { DeviceHealthModel, monitoredDevice, type DeviceTransition } from './health/devices.js';
import { HardwareWatchdog, StatusLed } from './health/leds.js';
import { rulesetCounters, rulesetHealth } from './health/ruleset.js';
import { SdNotify } from './health/sdnotify.js';
import { readVitals, roleInterfaces } from './health/vitals.js';
import { startEmbeddedBroker, type EmbeddedBroker } from './mqtt/broker.js';
import { CommandDispatcher, CommandVerifier, type CommandHandler } from './mqtt/commands.js';
import { MqttLink } from './mqtt/link.js';
import { Outbox, type Priority } from './mqtt/outbox.js';
import { envelope, type DeviceHealthPayload, type EventPayload, type HealthPayload, type Severity } from './mqtt/topics.js';
import type { PolicyManager } from './policy/apply.js';
import type { Backend } from './policy/backend.js';
import { bridgeProxyProblems, ensureBridgeNetfilter } from './policy/bridge.js';
import { PolicyKeeper, type KeeperEvent } from './policy/keeper.js';
import { buildModel, type Model, type ResolvedDevice } from './policy/model.js';
import { runProbe } from './health/probes.js';
import type { Module } from './module.js';
import { policyLearnHandler } from './traffic/learn-command.js';
import { trafficModule } from './traffic/module.js';
import { ProtocolsModule } from './protocols/module.js';
import { VERSION } from './version.js';

const PRIORITY: Record<Severity, Priority> = { info: 'low', warning: 'normal', critical: 'high' };

export class Controller {
  private readonly started: Module[] = [];
  private readonly bootId = randomUUID();
  private config!: GatewayConfig;
  private stateDir!: string;
  private backend!: Backend;
  private policy!: PolicyManager;
  private keeper!: PolicyKeeper;
  private outbox: Outbox | undefined;
  private link: MqttLink | undefined;
  private devices: DeviceHealthModel | undefined;
  private protocols: ProtocolsModule | undefined;
  private model: Model | undefined;
  private resolved: ResolvedDevice[] = [];
  private board: ReturnType<typeof resolveBoard> | undefined;
  private audit: AuditLog | undefined;
  private siem: SyslogSink | undefined;
  private backup: ReturnType<typeof backupModule> | undefined;
  private backupTargets: BackupTarget[] = [];
  private gatewayFile = '';
  private openedBackupStore: BackupStore | undefined;

  /**
   * The one backup store of the agent (the backup service, backup.list, .pull and .restore),
   * opened at first use; not kept when its keys are missing, so that `backup keygen` needs no restart.
   */
  private backupStore(): BackupStore {
    this.openedBackupStore ??= openWritableStore(this.gatewayFile, this.config, this.stateDir);
    return this.openedBackupStore;
  }

  constructor(
    private readonly opts: GlobalOptions,
    private readonly io: Io,
    private readonly log: Logger,
  ) {}

  private async startModule(m: Module): Promise<void> {
    try {
      await m.start();
      this.started.push(m);
    } catch (err) {
      this.log.error({ module: m.name, err: (err as Error).message }, 'module failed to start; running without it');
    }
  }

  /** Queues a message for the consoles (nothing is sent before the birth), and drains. */
  private publish(topic: string, payload: object, opts: { retain?: boolean; priority: Priority }): void {
    if (!this.outbox) return;
    this.outbox.push({ topic, payload: JSON.stringify(payload), retain: opts.retain ?? false, priority: opts.priority });
    this.link?.kick();
  }

  event(severity: Severity, kind: string, message: string, extra: { device?: string; dedupKey?: string; data?: Record<string, unknown> } = {}): void {
    const g = this.config;
    const payload: EventPayload = {
      ...envelope('event', g.site, g.gateway),
      severity,
      kind,
      dedupKey: extra.dedupKey ?? `${kind}:${extra.device ?? g.gateway}`,
      message,
      ...(extra.device !== undefined ? { device: extra.device } : {}),
      ...(extra.data !== undefined ? { data: extra.data } : {}),
    };
    // The payload id is logged so that a delivery can be traced from the gateway's log to a console.
    this.log.info({ event: kind, severity, device: extra.device, id: payload.id }, message);
    // To the SIEM as well, with or without MQTT (it never blocks; a full queue drops info first).
    this.siem?.send(payload);
    if (this.link) this.publish(this.link.topics.events(), payload, { priority: PRIORITY[severity] });
  }

  private onKeeperEvent(e: KeeperEvent): void {
    switch (e.kind) {
      case 'policy.rollback':
        this.event('warning', e.kind, `change ${e.change} was not confirmed in time and was rolled back`, { data: { change: e.change } });
        break;
      case 'policy.drift':
        this.event('critical', e.kind, `the wardgate table was ${e.kernel === 'absent' ? 'removed' : 'altered'} outside wardgate; the ${e.restored} ruleset was loaded again`, {
          data: { kernel: e.kernel, restored: e.restored, ...(e.reason ? { reason: e.reason } : {}) },
        });
        break;
      case 'policy.degraded':
        this.event('critical', e.kind, 'the fail-safe ruleset is loaded because the committed one could not be');
        break;
    }
  }

  async health(): Promise<HealthPayload> {
    const g = this.config;
    // The board does not change while the agent runs: detected once, at the first health.
    this.board ??= resolveBoard(g.health.board, g.health.rootPath);
    const board = await this.board;
    const vitals = await readVitals({ rootPath: g.health.rootPath, board: board.profile, interfaces: roleInterfaces(g.interfaces), stateDir: this.stateDir });
    const status = this.keeper.status ?? (await this.policy.status());
    const counters = rulesetCounters(await this.backend.listJson());
    const stats = this.outbox?.stats();
    return {
      ...envelope('health', g.site, g.gateway),
      board: vitals.board,
      uptimeSeconds: vitals.uptimeSeconds,
      load: vitals.load,
      cpuCount: vitals.cpuCount,
      memory: vitals.memory,
      disk: vitals.disk,
      temperatureC: vitals.temperatureC,
      interfaces: vitals.interfaces,
      ruleset: rulesetHealth(status, counters),
      agent: { version: VERSION, ...vitals.agent },
      outbox: { depth: stats?.depth ?? 0, bytes: stats?.bytes ?? 0, dropped: stats?.dropped ?? 0 },
      ...this.proxiesHealth(),
    };
  }

  private proxiesHealth(): { proxies?: HealthPayload['proxies'] } {
    const p = this.protocols?.status();
    if (!p || (p.listening.length === 0 && p.failed.length === 0)) return {};
    return {
      proxies: {
        listening: p.listening,
        failed: p.failed.map((f) => f.key),
        connections: p.stats?.connections ?? 0,
        accepted: p.stats?.accepted ?? 0,
        refused: p.stats?.refused ?? 0,
        closedByFilter: p.stats?.closedByFilter ?? 0,
        restarts: p.restarts,
        rssBytes: p.rssBytes ?? null,
      },
    };
  }

  private deviceHealth(id: string): DeviceHealthPayload | undefined {
    const snap = this.devices?.snapshot(id);
    if (!snap) return undefined;
    return { ...envelope('device-health', this.config.site, this.config.gateway), ...snap };
  }

  private onTransition(t: DeviceTransition): void {
    const dev = this.resolved.find((d) => d.id === t.device);
    const payload = this.deviceHealth(t.device);
    if (payload && this.link) this.publish(this.link.topics.deviceHealth(t.device), payload, { retain: true, priority: 'normal' });
    if (t.from === 'unknown' && t.to === 'up') return; // the first answer is not news
    const serious = dev?.criticality === 'life-critical' || dev?.criticality === 'high';
    const severity: Severity = t.to === 'up' ? 'info' : t.to === 'down' ? (serious ? 'critical' : 'warning') : 'warning';
    this.event(severity, 'device.state', `device ${t.device} is ${t.to} (was ${t.from})`, {
      device: t.device,
      dedupKey: `device.state:${t.device}`,
      data: { from: t.from, to: t.to, probes: t.probes },
    });
  }

  private handlers(): Record<string, CommandHandler> {
    return {
      ping: () => Promise.resolve({ pong: true, bootId: this.bootId, version: VERSION }),
      'health.now': async () => {
        const h = await this.health();
        if (this.link) this.publish(this.link.topics.health(), h, { priority: 'low' });
        return h;
      },
      probe: async (args) => {
        const id = typeof args.device === 'string' ? args.device : undefined;
        const dev = this.resolved.find((d) => d.id === id);
        if (!dev) throw new Error(`no device "${String(id)}" on this gateway`);
        const target = monitoredDevice(dev);
        if (target.address === undefined) throw new Error(`device ${dev.id} has no address to probe`);
        const address = target.address;
        return { device: dev.id, probes: await Promise.all(dev.probes.map((p) => runProbe({ address }, p))) };
      },
      'policy.status': () => this.policy.status(),
      'policy.apply': async (args) => {
        const l = loadAndCompile(this.opts, true);
        const timeout = typeof args.timeoutSeconds === 'number' ? args.timeoutSeconds : l.model.gateway.commitConfirm.timeoutSeconds;
        const notes = l.model.gateway.mode === 'bridge' ? await ensureBridgeNetfilter(this.backend, true) : [];
        const problems = await bridgeProxyProblems(this.backend, l.model);
        if (problems.length > 0) throw new Error(`not applied: ${problems.join('; ')}`);
        const pending = await this.policy.apply(l.compiled, l.failsafe, l.model.hash, timeout);
        return { change: pending.id, deadline: new Date(pending.deadline).toISOString(), policyHash: l.model.hash, notes };
      },
      'policy.confirm': async () => this.policy.confirm(),
      'policy.learn': policyLearnHandler(this.opts),
      ...backupPullHandlers({ store: () => this.backupStore(), stateDir: this.stateDir, gateway: `${this.config.site}/${this.config.gateway}`, config: this.config.backup }),
      // A backup run now, through the agent's own backup service (docs/backups.md).
      'backup.now': async (args) => {
        const device = args.device;
        if (typeof device !== 'string' || device === '') throw new Error('backup.now needs { device: "<id>" }');
        const service = this.backup?.service();
        if (!service) throw new Error('the backup module is not running: no device has a backup: block, or its keys are missing (wardgate backup keygen)');
        const r = await service.runNow(device);
        if (!r.ok || !r.outcome) return { device, ok: false, error: r.error?.message ?? 'the run failed' };
        const o = r.outcome;
        return {
          device,
          ok: true,
          version: o.manifest.version,
          time: o.manifest.time,
          unchanged: o.unchanged,
          baselineSet: o.baselineSet,
          drift: o.drift?.changed === true ? driftMessage(device, o) : null,
        };
      },
      // A restore through the device's driver, the same steps as `wardgate backup restore`. The
      // signed command is the consent, and `confirm: true` the "--yes": without it, a preview.
      'backup.restore': async (args, ctx) => {
        const device = args.device;
        if (typeof device !== 'string' || device === '') throw new Error('backup.restore needs { device: "<id>", version?: N, confirm?: true }');
        const version = args.version;
        if (version !== undefined && (typeof version !== 'number' || !Number.isInteger(version) || version < 1)) throw new Error('backup.restore: version must be a version number (1, 2, ...)');
        const target = this.backupTargets.find((t) => t.address.id === device);
        if (!target) throw new Error(`no device "${device}" with a backup: block (devices with one: ${this.backupTargets.map((t) => t.address.id).join(', ') || 'none'})`);
        if (!this.audit) throw new Error('the audit log is not open: no restore without a record');
        const audit = this.audit;
        const r = await restoreDevice({
          store: this.backupStore(),
          target,
          ...(version !== undefined ? { version } : {}),
          write: args.confirm === true,
          actor: ctx.keyId,
          audit: (rec) => audit.append(rec),
        });
        // The summary of what changes (register by register, or lines), never the configuration.
        const { changes, after, ...rest } = r as RestoreResult & { changes?: Drift; after?: Drift };
        return { device, ...rest, ...(changes ? { changes: changes.summary, total: changes.total } : {}), ...(after ? { readBack: after.summary } : {}) };
      },
    };
  }

  async start(): Promise<void> {
    const g = gatewayOnly(this.opts);
    this.config = g.config;
    this.gatewayFile = g.path;
    this.stateDir = g.stateDir;
    const { backend, notice } = chooseBackend(this.opts, this.stateDir);
    if (notice) this.io.err(notice);
    this.backend = backend;
    this.log.info({ stateDir: this.stateDir, backend: backend.description, bootId: this.bootId }, 'agent started');

    await this.startModule({
      name: 'audit',
      start: () => {
        this.audit = openAuditLog(join(this.stateDir, 'audit'));
      },
      stop: () => this.audit?.close(),
    });
    // The SIEM export comes right after the audit log, so that events raised at start reach it.
    const syslog = g.config.siem?.syslog;
    if (syslog) {
      const sink = createSyslogSink(syslog, this.log, { baseDir: dirname(g.path), version: VERSION });
      await this.startModule({
        name: 'siem',
        start: () => {
          sink.start();
          this.siem = sink;
        },
        stop: () => sink.close(),
      });
    }
    // Without the audit log the policy still works (a rollback must never wait on it).
    this.policy = manager(backend, this.stateDir, this.audit ?? { append: () => {} }, 'agent');
    this.keeper = new PolicyKeeper(this.policy, this.log, (e) => this.onKeeperEvent(e));
    await this.startModule({ name: 'policy', start: () => this.keeper.start(), stop: () => this.keeper.stop() });

    try {
      this.model = buildModel(loadConfig(g.path));
      this.resolved = this.model.devices;
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'the policy files do not load: no device is probed until they do');
    }

    const mqttConfig = this.config.mqtt;
    if (mqttConfig) {
      await this.startModule({
        name: 'outbox',
        start: () => {
          this.outbox = Outbox.open(join(this.stateDir, 'outbox'), this.config.outbox);
        },
        stop: () => this.outbox?.close(),
      });
      const embedded = mqttConfig.embeddedBroker;
      // The link's identity on its own broker is the gateway id (the ACL gives it only its own
      // topics), with a password made at start that lives in memory only.
      let credentials: { username: string; password: string } | undefined;
      if (embedded) {
        let broker: EmbeddedBroker | undefined;
        const own = { username: g.config.gateway, password: randomBytes(24).toString('base64url') };
        await this.startModule({
          name: 'broker',
          start: async () => {
            broker = await startEmbeddedBroker({
              host: embedded.host,
              port: embedded.port,
              auth: {
                site: g.config.site,
                allowAnonymous: embedded.allowAnonymous,
                consoles: embedded.consoles,
                extraUsers: [own],
                ...(embedded.usersFile !== undefined ? { usersFile: resolve(dirname(g.path), embedded.usersFile) } : {}),
              },
            });
            credentials = own;
          },
          stop: () => broker?.close(),
        });
      }
      if (this.outbox) {
        const outbox = this.outbox;
        let dispatcher: CommandDispatcher | undefined;
        await this.startModule({
          name: 'commands',
          start: () => {
            const handlers = this.handlers();
            const verifier = new CommandVerifier({ site: g.config.site, gateway: g.config.gateway, config: g.config.commands, stateDir: this.stateDir, commands: Object.keys(handlers) });
            // Without the audit log, commands are refused: every command must leave a record.
            if (!this.audit) throw new Error('the audit log is not open: commands are off');
            dispatcher = new CommandDispatcher({ site: g.config.site, gateway: g.config.gateway, verifier, handlers, audit: this.audit });
          },
          stop: () => {},
        });
        const link = new MqttLink({
          config: relativeToGatewayFile(mqttConfig, dirname(g.path)),
          site: g.config.site,
          gateway: g.config.gateway,
          bootId: this.bootId,
          version: VERSION,
          policyHash: () => this.keeper.status?.committed?.policyHash ?? null,
          outbox,
          log: this.log,
          ...(credentials ? { credentials } : {}),
          onCommand: (topic, payload, packet) => {
            if (!dispatcher) return;
            void dispatcher.handle(topic, payload, packet.properties ?? {}).then(async (a) => {
              const props = link.version === 5 && a.correlationData ? { properties: { correlationData: a.correlationData } } : {};
              await link.publishNow(a.responseTopic, a.payload, props);
            }).catch((err: unknown) => this.log.error({ err: (err as Error).message }, 'command answer failed'));
          },
        });
        this.link = link;
        await this.startModule({ name: 'mqtt', start: () => link.start(), stop: () => link.stop() });
      }
    }

    let healthTimer: NodeJS.Timeout | undefined;
    await this.startModule({
      name: 'health',
      start: () => {
        const tick = () => {
          void this.health()
            .then((h) => this.link && this.publish(this.link.topics.health(), h, { priority: 'low' }))
            .catch((err: unknown) => this.log.error({ err: (err as Error).message }, 'health failed'));
        };
        tick();
        healthTimer = setInterval(tick, this.config.health.intervalSeconds * 1000);
      },
      stop: () => clearInterval(healthTimer),
    });

    // The flow log reads conntrack in the enforcement namespace: only with the nftables backend.
    if (backend.kind === 'nft' && this.config.traffic.enabled !== false) {
      await this.startModule(
        trafficModule({
          config: this.config.traffic,
          model: () => this.model,
          stateDir: this.stateDir,
          netns: this.opts.netns ?? process.env.WARDGATE_NETNS,
          log: this.log,
          publish: (summary) => {
            if (this.link) this.publish(this.link.topics.flows(), summary, { priority: 'low' });
          },
          detection: (d) => this.event(d.severity, d.kind, d.message, { ...(d.device !== undefined ? { device: d.device } : {}), dedupKey: d.dedupKey, data: d.data }),
          site: this.config.site,
          gateway: this.config.gateway,
        }),
      );
    }

    // The inline Modbus and DICOM proxies (docs/protocols.md): idle until an allow entry carries
    // modbus or dicom rules. They follow the policy loaded in the kernel: when another one is
    // loaded (applied by the CLI or a command), the files are read again and, if they are what
    // was loaded, the proxies get their targets.
    const protocols = new ProtocolsModule({
      config: this.config,
      stateDir: this.stateDir,
      netns: this.opts.netns ?? process.env.WARDGATE_NETNS,
      nft: backend.kind === 'nft',
      log: this.log,
      event: (e) => this.event(e.severity, e.kind, e.message, { ...(e.device !== undefined ? { device: e.device } : {}), dedupKey: e.dedupKey, data: e.data }),
    });
    this.protocols = protocols;
    let protocolsHash = this.model?.hash;
    let protocolsTimer: NodeJS.Timeout | undefined;
    const follow = async () => {
      const st = this.keeper.status;
      const loaded = st?.pending?.policyHash ?? st?.committed?.policyHash;
      if (loaded === undefined || loaded === protocolsHash) return;
      let m: Model;
      try {
        m = buildModel(loadConfig(g.path));
      } catch {
        return; // the files do not load: the proxies keep what they have
      }
      if (m.hash !== loaded) return;
      protocolsHash = loaded;
      await protocols.update(m);
      this.log.info({ policyHash: loaded, proxies: protocols.status().listening }, 'the proxies follow the loaded policy');
    };
    await this.startModule({
      name: 'protocols',
      start: async () => {
        await protocols.start(this.model);
        protocolsTimer = setInterval(() => void follow().catch((err: unknown) => this.log.error({ err: (err as Error).message }, 'proxies could not follow the policy')), 2000);
      },
      stop: async () => {
        clearInterval(protocolsTimer);
        await protocols.stop();
      },
    });

    // Configuration backups, only when some device has a `backup:` block (docs/backups.md).
    const backupTargets = backupTargetsOf(g.path);
    this.backupTargets = backupTargets;
    if (backupTargets.length > 0) {
      this.backup = backupModule({ gatewayPath: g.path, config: g.config, stateDir: this.stateDir, targets: backupTargets, log: this.log, event: (s, k, m, x) => this.event(s, k, m, x), store: () => this.backupStore() });
      await this.startModule(this.backup);
    }

    const devices = new DeviceHealthModel({ devices: this.resolved.map(monitoredDevice) });
    devices.on('transition', (t) => this.onTransition(t));
    this.devices = devices;
    await this.startModule({ name: 'devices', start: () => devices.start(), stop: () => devices.stop() });

    const hw = this.config.health;
    if (hw.watchdog) {
      const dog = new HardwareWatchdog(hw.watchdog, { onError: (err) => this.log.error({ err: err.message }, 'watchdog') });
      await this.startModule({ name: 'watchdog', start: () => dog.start(), stop: () => dog.stop() });
    }
    if (hw.statusLed) {
      const led = new StatusLed(hw.statusLed, { onError: (err) => this.log.error({ err: err.message }, 'status LED') });
      let ledTimer: NodeJS.Timeout | undefined;
      await this.startModule({
        name: 'led',
        start: async () => {
          await led.set('on');
          ledTimer = setInterval(() => void led.set(this.keeper.status?.kernel === 'failsafe' || (this.link && !this.link.isOnline) ? 'blink' : 'on'), 2000);
        },
        stop: async () => {
          clearInterval(ledTimer);
          await led.set('off');
        },
      });
    }

    const sd = new SdNotify();
    await this.startModule({
      name: 'systemd',
      start: async () => {
        await sd.ready(`enforcing; ${this.resolved.length} device(s)`);
        sd.startWatchdog(() => true);
      },
      stop: async () => {
        sd.stop();
        await sd.stopping();
      },
    });
  }

  async stop(): Promise<void> {
    for (const m of this.started.splice(0).reverse()) {
      try {
        await m.stop();
      } catch (err) {
        this.log.error({ module: m.name, err: (err as Error).message }, 'module failed to stop cleanly');
      }
    }
    this.log.info({}, 'agent stopped');
  }
}

/** The MQTT link's files (password, TLS), relative to the gateway file as every other path in it. */
export function relativeToGatewayFile(c: NonNullable<GatewayConfig['mqtt']>, base: string): NonNullable<GatewayConfig['mqtt']> {
  return {
    ...c,
    ...(c.passwordFile !== undefined ? { passwordFile: resolve(base, c.passwordFile) } : {}),
    ...(c.tls ? { tls: { ...c.tls, ca: resolve(base, c.tls.ca), cert: resolve(base, c.tls.cert), key: resolve(base, c.tls.key) } } : {}),
  };
}
