'use strict';
// Node-RED nodes for a wardgate console. The work is done by the compiled wardgate modules in
// dist/ (npm run build): the connection, the topic contract and its schemas, command signing,
// the chunked backup pull and the bundle check are the same code the CLI runs, not copies.
//
//   wardgate-console      config: one site on one broker, the console key, where bundles go
//   wardgate-site         out: every status, health, device health and event of the site that
//                         passes its schema (others are dropped and counted)
//   wardgate-command      in: msg.gateway, msg.command, msg.args; out: the gateway's answer
//   wardgate-backup-pull  in: msg.gateway, msg.device; out: {file, verified, versions, ...}
const path = require('node:path');
const { pathToFileURL } = require('node:url');

const DIST = path.join(__dirname, '..', '..', 'dist', 'agent', 'console');

/**
 * A setting from the node's configuration, else the environment. Node-RED replaces a property
 * that is exactly ${VAR} with the variable, and leaves it as it is when the variable is unset.
 */
function setting(value, envName) {
  if (typeof value === 'string' && value !== '' && !/^\$\{[^}]*\}$/.test(value)) return value;
  const env = process.env[envName];
  return env !== undefined && env !== '' ? env : undefined;
}

function errorInfo(err) {
  return { code: typeof err?.code === 'string' ? err.code : 'E_FAILED', message: err?.message ?? String(err) };
}

module.exports = async function (RED) {
  let lib;
  try {
    lib = await import(pathToFileURL(path.join(DIST, 'link.js')).href);
  } catch (err) {
    throw new Error(`wardgate nodes: cannot load ${DIST}/link.js (run npm run build in the wardgate checkout): ${err.message}`);
  }
  const { ConsoleLink } = lib;

  function WardgateConsoleNode(config) {
    RED.nodes.createNode(this, config);
    const node = this;
    const creds = node.credentials || {};
    const ca = setting(config.ca, 'WARDGATE_BROKER_CA');
    const cert = setting(config.cert, 'WARDGATE_BROKER_CERT');
    const certKey = setting(config.certKey, 'WARDGATE_BROKER_CERT_KEY');
    const opts = {
      url: setting(config.url, 'WARDGATE_BROKER_URL'),
      site: setting(config.site, 'WARDGATE_SITE'),
      keyFile: setting(config.keyFile, 'WARDGATE_CONSOLE_KEY'),
      keyId: setting(config.keyId, 'WARDGATE_CONSOLE_KEY_ID'),
      username: setting(creds.user, 'WARDGATE_BROKER_USER'),
      password: setting(creds.password, 'WARDGATE_BROKER_PASSWORD'),
      ...(ca || cert || certKey ? { tls: { ...(ca ? { ca } : {}), ...(cert ? { cert } : {}), ...(certKey ? { key: certKey } : {}) } } : {}),
    };
    for (const k of Object.keys(opts)) if (opts[k] === undefined) delete opts[k];
    node.site = opts.site;
    node.backupDir = setting(config.backupDir, 'WARDGATE_BACKUP_DIR') ?? path.join(RED.settings.userDir ?? '.', 'wardgate-backups');
    node.gatewayKeys = setting(config.gatewayKeys, 'WARDGATE_GATEWAY_KEYS');
    if (opts.url === undefined || opts.site === undefined) {
      node.problem = 'no broker URL or site: set WARDGATE_BROKER_URL and WARDGATE_SITE, or fill in the console node';
      node.error(node.problem);
      return;
    }
    try {
      node.link = new ConsoleLink(opts);
    } catch (err) {
      node.problem = err.message;
      node.error(err.message);
      return;
    }
    node.link.setMaxListeners(50);
    node.link.on('state', (state, detail) => {
      if (state === 'connected') node.log(`connected to ${opts.url} as ${opts.username ?? '(no user)'}, following site ${opts.site}`);
      else if (state === 'disconnected') node.log(`not connected to ${opts.url}: ${detail ?? ''}`);
    });
    node.link.start();
    node.on('close', (done) => {
      node.link.stop().then(
        () => done(),
        () => done(),
      );
    });
  }
  RED.nodes.registerType('wardgate-console', WardgateConsoleNode, {
    credentials: { user: { type: 'text' }, password: { type: 'password' } },
  });

  /** The console config node of a node, or a red status saying what is missing. */
  function consoleOf(node, config) {
    const conf = RED.nodes.getNode(config.console);
    if (!conf || !conf.link) {
      node.status({ fill: 'red', shape: 'ring', text: conf?.problem ?? 'no wardgate console configured' });
      return undefined;
    }
    return conf;
  }

  function showLink(node, link) {
    const show = (state) => {
      if (state === 'connected') node.status({ fill: 'green', shape: 'dot', text: 'connected' });
      else if (state === 'connecting') node.status({ fill: 'yellow', shape: 'ring', text: 'connecting' });
      else node.status({ fill: 'red', shape: 'ring', text: state });
    };
    show(link.state);
    link.on('state', show);
    return () => link.off('state', show);
  }

  function WardgateSiteNode(config) {
    RED.nodes.createNode(this, config);
    const node = this;
    const conf = consoleOf(node, config);
    if (!conf) return;
    const link = conf.link;
    let dropped = 0;
    const unshow = showLink(node, link);
    const onMessage = (m, topic) => {
      node.send({ topic, kind: m.kind, site: conf.site, gateway: m.gateway, ...(m.device !== undefined ? { device: m.device } : {}), payload: m.payload });
    };
    // Anyone allowed on a gateway's tree can publish anything there: a message that fails its
    // schema is dropped and counted, never shown. The warnings are few: a flood of junk must
    // not flood the log as well.
    const onMalformed = (topic, reason) => {
      dropped++;
      node.status({ fill: 'yellow', shape: 'dot', text: `connected; ${dropped} malformed message(s) dropped` });
      if (dropped <= 10 || dropped % 100 === 0) node.warn(`dropped message ${dropped} on ${topic}: ${reason}`);
    };
    link.on('message', onMessage);
    link.on('malformed', onMalformed);
    node.on('close', () => {
      unshow();
      link.off('message', onMessage);
      link.off('malformed', onMalformed);
    });
  }
  RED.nodes.registerType('wardgate-site', WardgateSiteNode);

  function WardgateCommandNode(config) {
    RED.nodes.createNode(this, config);
    const node = this;
    const conf = consoleOf(node, config);
    if (!conf) return;
    let running = 0;
    const defaultTimeout = Number(config.timeout) > 0 ? Number(config.timeout) : 10;
    node.on('input', (msg, send, done) => {
      const gateway = typeof msg.gateway === 'string' ? msg.gateway : config.gateway;
      const command = typeof msg.command === 'string' && msg.command !== '' ? msg.command : config.command;
      const args = msg.args && typeof msg.args === 'object' && !Array.isArray(msg.args) ? msg.args : {};
      const timeout = Number(msg.timeout) > 0 ? Number(msg.timeout) : defaultTimeout;
      running++;
      node.status({ fill: 'blue', shape: 'dot', text: `${command} to ${gateway}${running > 1 ? ` (+${running - 1})` : ''}` });
      // A refusal, a failure and no answer all come out as an answer with ok: false and an
      // error code, so that one wire handles every outcome.
      conf.link
        .command(gateway, command, args, timeout * 1000)
        .then(
          (answer) => answer,
          (err) => ({ ok: false, command, gateway, error: errorInfo(err) }),
        )
        .then((answer) => {
          running--;
          node.status(answer.ok ? { fill: 'green', shape: 'dot', text: `${command}: ok` } : { fill: 'red', shape: 'ring', text: `${command}: ${answer.error?.code ?? 'failed'}` });
          msg.gateway = gateway;
          msg.command = command;
          msg.payload = answer;
          send(msg);
          done();
        });
    });
  }
  RED.nodes.registerType('wardgate-command', WardgateCommandNode);

  function WardgateBackupPullNode(config) {
    RED.nodes.createNode(this, config);
    const node = this;
    const conf = consoleOf(node, config);
    if (!conf) return;
    const timeout = Number(config.timeout) > 0 ? Number(config.timeout) : 10;
    node.on('input', (msg, send, done) => {
      const gateway = String(msg.gateway ?? '');
      const device = String(msg.device ?? '');
      const version = Number.isInteger(msg.version) && msg.version > 0 ? msg.version : undefined;
      // The gateway's public key comes from the operator (a trusted copy per gateway), never
      // over MQTT: a key that came with the bundle would prove nothing.
      const pubkeyFile = typeof msg.pubkey === 'string' ? msg.pubkey : conf.gatewayKeys ? path.join(conf.gatewayKeys, `${gateway}.pub`) : undefined;
      node.status({ fill: 'blue', shape: 'dot', text: `pulling ${gateway}/${device}` });
      conf.link
        .pull({ gateway, device, dir: conf.backupDir, timeoutMs: timeout * 1000, ...(version !== undefined ? { version } : {}), ...(pubkeyFile !== undefined ? { pubkeyFile } : {}) })
        .then(
          (r) => ({
            ...r,
            summary: r.verified
              ? `verified: ${r.versions.length} version(s) of ${device} from ${conf.site}/${gateway}, newest ${r.versions.at(-1)?.version ?? '?'} of ${r.versions.at(-1)?.time ?? '?'}`
              : `not verified: ${r.problems[0] ?? 'unknown'}`,
          }),
          (err) => {
            const e = errorInfo(err);
            return { file: null, gateway, device, verified: false, problems: [`${e.code}: ${e.message}`], versions: [], error: e, summary: `failed: ${e.code}: ${e.message}` };
          },
        )
        .then((report) => {
          node.status(report.verified ? { fill: 'green', shape: 'dot', text: `${gateway}/${device}: verified` } : { fill: 'red', shape: 'ring', text: `${gateway}/${device}: ${report.file ? 'not verified' : 'failed'}` });
          msg.gateway = gateway;
          msg.device = device;
          msg.payload = report;
          send(msg);
          done();
        });
    });
  }
  RED.nodes.registerType('wardgate-backup-pull', WardgateBackupPullNode);
};
