// Device probes: is the device behind the gateway alive, and does it answer in its own protocol?
// One function per probe type. Each resolves, never rejects: a failure is a result (ok: false,
// with a short error whose first word is a kind the console can group on), and each honours the
// probe's timeoutMs as a deadline for the whole exchange, connect included, after which every
// socket it opened is closed.
import { execFile, type ExecFileException } from 'node:child_process';
import { isIP, Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import ModbusSerial from 'modbus-serial';
import type Dimse from 'dcmjs-dimse';
import type { ProbeConfig } from '../config/schema.js';
import type { ProbeResult } from '../mqtt/topics.js';

export type ProbeType = ProbeConfig['type'];
export type ProbeOf<T extends ProbeType> = Extract<ProbeConfig, { type: T }>;
export type TcpProbe = ProbeOf<'tcp'>;
export type IcmpProbe = ProbeOf<'icmp'>;
export type ModbusProbe = ProbeOf<'modbus'>;
export type DicomProbe = ProbeOf<'dicom'>;

export interface ProbeTarget {
  /** An IPv4 or IPv6 address (not a host name: probes must not depend on DNS). */
  address: string;
}

/**
 * The first word of ProbeResult.error: timeout (no answer in time), refused (nothing listens),
 * unreachable (no route, no neighbour), reset (the peer dropped the connection), rejected (the
 * peer answered no: a DICOM association reject), aborted (a DICOM A-ABORT), exception (a Modbus
 * exception response), status (a DICOM status other than success), invalid (the probe could not
 * be run as configured), error (anything else).
 */
export type ProbeErrorKind = 'timeout' | 'refused' | 'unreachable' | 'reset' | 'rejected' | 'aborted' | 'exception' | 'status' | 'invalid' | 'error';

const MAX_ERROR_LENGTH = 160;

function fail(type: ProbeType, kind: ProbeErrorKind, message: string, latencyMs: number | null = null): ProbeResult {
  const text = `${kind}: ${message.replace(/\s+/g, ' ').trim()}`;
  return { type, ok: false, latencyMs, error: text.length > MAX_ERROR_LENGTH ? `${text.slice(0, MAX_ERROR_LENGTH - 1)}…` : text };
}

function since(start: number): number {
  return Math.round((performance.now() - start) * 1000) / 1000;
}

function errorCode(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const { code, errno } = err as { code?: unknown; errno?: unknown };
  if (typeof code === 'string') return code;
  return typeof errno === 'string' ? errno : undefined;
}

function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  if (typeof err === 'object' && err !== null && typeof (err as { message?: unknown }).message === 'string') {
    return (err as { message: string }).message;
  }
  return String(err);
}

/** A socket-level failure as a result, by its errno. */
function socketFailure(type: ProbeType, err: unknown): ProbeResult {
  const code = errorCode(err);
  switch (code) {
    case 'ECONNREFUSED':
      return fail(type, 'refused', 'connection refused');
    case 'ETIMEDOUT':
      return fail(type, 'timeout', 'connection timed out');
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'EHOSTDOWN':
    case 'ENETDOWN':
    case 'EADDRNOTAVAIL':
      return fail(type, 'unreachable', code);
    case 'ECONNRESET':
    case 'EPIPE':
      return fail(type, 'reset', 'connection reset by the peer');
    default:
      return fail(type, 'error', code !== undefined ? `${code} ${errorMessage(err)}` : errorMessage(err));
  }
}

function invalidTarget(type: ProbeType, target: ProbeTarget): ProbeResult | undefined {
  return isIP(target.address) === 0 ? fail(type, 'invalid', `"${target.address}" is not an IP address`) : undefined;
}

/** Settles with the first of `work` and a timeout result at `ms` after the call. */
async function withDeadline(work: Promise<ProbeResult>, ms: number, onTimeout: () => ProbeResult): Promise<ProbeResult> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<ProbeResult>((resolve) => {
    timer = setTimeout(() => resolve(onTimeout()), ms);
  });
  try {
    return await Promise.race([work, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------
// TCP: the three-way handshake completes within the timeout. Latency is the time to connect.

export function probeTcp(target: ProbeTarget, probe: TcpProbe): Promise<ProbeResult> {
  const invalid = invalidTarget('tcp', target);
  if (invalid) return Promise.resolve(invalid);
  return new Promise((resolve) => {
    const start = performance.now();
    const socket = new Socket();
    let settled = false;
    const finish = (result: ProbeResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      // destroy() closes the descriptor: a FIN to a peer that accepted, nothing left behind.
      socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => finish(fail('tcp', 'timeout', `no connection within ${probe.timeoutMs} ms`)), probe.timeoutMs);
    socket.on('error', (err) => finish(socketFailure('tcp', err)));
    socket.once('connect', () => finish({ type: 'tcp', ok: true, latencyMs: since(start) }));
    socket.connect({ host: target.address, port: probe.port });
  });
}

// ---------------------------------------------------------------------------------------------
// ICMP: one echo request through the system's ping.
//
// Why not our own ICMP socket: Node has no raw sockets (dgram is UDP only), and the native
// addons that add them need a compiler and a rebuild per Node ABI on every board. iputils ping
// already does it right: it uses an unprivileged ICMP datagram socket where
// net.ipv4.ping_group_range allows one, and otherwise the CAP_NET_RAW that the agent's unit
// grants as an ambient capability, which the child process inherits.

const PING = 'ping';
/** How long after the timeout we kill a ping that has not exited by itself. */
const PING_GRACE_MS = 1000;

interface ExecOutcome {
  error: ExecFileException | null;
  stdout: string;
  stderr: string;
}

function execPing(args: string[], killAfterMs: number): Promise<ExecOutcome> {
  return new Promise((resolve) => {
    execFile(
      PING,
      args,
      // LC_ALL=C: the output we parse is the C locale's.
      { timeout: killAfterMs, killSignal: 'SIGKILL', env: { ...process.env, LC_ALL: 'C' }, maxBuffer: 64 * 1024 },
      (error, stdout, stderr) => resolve({ error, stdout: String(stdout), stderr: String(stderr) }),
    );
  });
}

/** The round-trip time of the first reply in ping's output, in milliseconds. */
export function parsePingLatency(output: string): number | undefined {
  const reply = /\btime[=<]\s*([0-9]+(?:\.[0-9]+)?)\s*ms\b/.exec(output);
  if (reply?.[1] !== undefined) return Number(reply[1]);
  // The summary line, "rtt min/avg/max/mdev = 0.126/0.126/0.126/0.000 ms" (iputils) or
  // "round-trip min/avg/max = ..." (BusyBox), for a ping that prints no per-reply line.
  const summary = /(?:rtt|round-trip)[^=]*=\s*[0-9.]+\/([0-9.]+)\//.exec(output);
  return summary?.[1] !== undefined ? Number(summary[1]) : undefined;
}

export async function probeIcmp(target: ProbeTarget, probe: IcmpProbe): Promise<ProbeResult> {
  const family = isIP(target.address);
  if (family === 0) return fail('icmp', 'invalid', `"${target.address}" is not an IP address`);
  // Whole seconds where the timeout allows: BusyBox and old iputils take only those.
  // A fraction goes to newer iputils as it is; the kill timer below bounds the rest.
  const waitSeconds = probe.timeoutMs % 1000 === 0 ? String(probe.timeoutMs / 1000) : (probe.timeoutMs / 1000).toFixed(3);
  // -n: no reverse lookups; -c 1: one echo; -W: how long to wait for the reply.
  const args = [family === 6 ? '-6' : '-4', '-n', '-c', '1', '-W', waitSeconds, target.address];
  const start = performance.now();
  const { error, stdout, stderr } = await execPing(args, probe.timeoutMs + PING_GRACE_MS);
  const elapsed = since(start);
  if (!error) {
    const latency = parsePingLatency(stdout);
    return { type: 'icmp', ok: true, latencyMs: latency ?? elapsed };
  }
  if (error.code === 'ENOENT') return fail('icmp', 'error', `${PING} not found`);
  if (error.killed) return fail('icmp', 'timeout', `no echo reply within ${probe.timeoutMs} ms`);
  // Exit status 1: sent, no reply (or an ICMP error such as destination unreachable, which
  // ping prints as a reply line). 2: ping could not send at all (no route, no permission).
  const text = `${stdout}\n${stderr}`;
  if (/unreachable/i.test(text)) return fail('icmp', 'unreachable', firstLine(/.*unreachable.*/i.exec(text)?.[0] ?? 'destination unreachable'));
  if (error.code === 1) return fail('icmp', 'timeout', `no echo reply within ${probe.timeoutMs} ms`);
  return fail('icmp', 'error', firstLine(stderr) || `ping exited with ${String(error.code)}`);
}

function firstLine(text: string): string {
  return text.trim().split('\n')[0]?.replace(/^ping: /, '') ?? '';
}

// ---------------------------------------------------------------------------------------------
// Modbus TCP: read a register or coil range (function 1, 2, 3 or 4), or, without one, Read
// Device Identification (function 43, MEI type 14), through modbus-serial's client.

const READ_FUNCTION = { coils: 1, discrete: 2, holding: 3, input: 4 } as const;

/** The basic device identification objects (Modbus Application Protocol v1.1b3, 6.21). */
const BASIC_OBJECTS = ['VendorName', 'ProductCode', 'MajorMinorRevision'] as const;
const REGULAR_OBJECTS = ['VendorUrl', 'ProductName', 'ModelName', 'UserApplicationName'] as const;
/** ReadDevId code 01: stream access to the basic identification (6.21). */
const READ_DEV_ID_BASIC = 0x01;

type ModbusClient = InstanceType<typeof ModbusSerial.default>;

function modbusFailure(err: unknown): ProbeResult {
  const modbusCode = (err as { modbusCode?: unknown } | null)?.modbusCode;
  if (typeof modbusCode === 'number') return fail('modbus', 'exception', `exception ${modbusCode}: ${errorMessage(err).replace(/^Modbus exception \d+: /, '')}`);
  if (errorCode(err) === 'ETIMEDOUT') return fail('modbus', 'timeout', 'no response');
  return socketFailure('modbus', err);
}

async function modbusRequest(client: ModbusClient, probe: ModbusProbe): Promise<Record<string, unknown>> {
  const read = probe.read;
  if (read) {
    const functionCode = READ_FUNCTION[read.kind];
    const base = { functionCode, kind: read.kind, address: read.address, count: read.count };
    switch (read.kind) {
      case 'holding':
        return { ...base, values: (await client.readHoldingRegisters(read.address, read.count)).data };
      case 'input':
        return { ...base, values: (await client.readInputRegisters(read.address, read.count)).data };
      // Bits come back padded to whole bytes (6.1, 6.2); keep the ones asked for.
      case 'coils':
        return { ...base, values: (await client.readCoils(read.address, read.count)).data.slice(0, read.count) };
      case 'discrete':
        return { ...base, values: (await client.readDiscreteInputs(read.address, read.count)).data.slice(0, read.count) };
    }
  }
  const answer = await client.readDeviceIdentification(READ_DEV_ID_BASIC, 0);
  // modbus-serial types `data` as string[]; it is an object keyed by object id.
  const objects = answer.data as unknown as Record<number, string | undefined>;
  const detail: Record<string, unknown> = { functionCode: 43, meiType: 14, conformityLevel: answer.conformityLevel };
  [...BASIC_OBJECTS, ...REGULAR_OBJECTS].forEach((name, id) => {
    const value = objects[id];
    if (value !== undefined) detail[name] = value;
  });
  const missing = BASIC_OBJECTS.filter((name) => detail[name] === undefined);
  if (missing.length > 0) throw new Error(`identification without ${missing.join(', ')}`);
  return detail;
}

export async function probeModbus(target: ProbeTarget, probe: ModbusProbe): Promise<ProbeResult> {
  const invalid = invalidTarget('modbus', target);
  if (invalid) return invalid;
  const start = performance.now();
  const client = new ModbusSerial.default();
  // Without a listener, an error on the socket after the connect (a reset, say) is an
  // unhandled 'error' event, which would end the agent.
  client.on('error', () => {});
  client.setID(probe.unitId);
  // The library's own per-request timer is set past our deadline, so that ours always fires
  // first and destroy() cancels theirs: modbus-serial 8.0.25 throws from a timer when the
  // follow-up request of a multi-part identification (more follows, 6.21) times out.
  client.setTimeout(probe.timeoutMs + 1000);
  const work = (async (): Promise<ProbeResult> => {
    try {
      await client.connectTCP(target.address, { port: probe.port });
    } catch (err) {
      return socketFailure('modbus', err);
    }
    try {
      const detail = await modbusRequest(client, probe);
      return { type: 'modbus', ok: true, latencyMs: since(start), detail };
    } catch (err) {
      return modbusFailure(err);
    }
  })();
  try {
    return await withDeadline(work, probe.timeoutMs, () =>
      fail('modbus', 'timeout', client.isOpen ? `no response from unit ${probe.unitId} within ${probe.timeoutMs} ms` : `no connection within ${probe.timeoutMs} ms`),
    );
  } finally {
    // destroy() is the close that always completes: close() waits for the peer's FIN, and its
    // callback never runs for a port that never opened. It also cancels pending requests.
    client.destroy(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// DICOM: C-ECHO (PS3.7 9.1.5) on an association for the Verification SOP Class, with
// dcmjs-dimse as the SCU. Latency is from the connect to the C-ECHO response, association
// negotiation included; the result is returned once the association is released and the
// socket closed, or at the deadline, whichever comes first.

// dcmjs-dimse (and dcmjs under it) costs megabytes of heap on a 1 GB board: it is loaded the
// first time a DICOM probe runs, not at start. Importing it enables every level of loglevel's
// root logger and prints each association, at info, to the console: the agent's stdout, where
// its NDJSON logs go. wardgate reports through results and its own logs, so turn it off.
let dimseModule: Promise<typeof Dimse> | undefined;
function loadDimse(): Promise<typeof Dimse> {
  dimseModule ??= import('dcmjs-dimse').then((m) => {
    m.default.log.setLevel('silent');
    return m.default;
  });
  return dimseModule;
}

type DimseClient = InstanceType<typeof Dimse.Client>;

/**
 * The client's connection, which dcmjs-dimse 0.3 keeps to itself: it offers no way to drop a
 * connection before an association exists, and does not pass on an A-ABORT from the peer.
 */
interface DimseNetwork {
  socket?: Socket;
  on?(event: 'abort', listener: (abort: { source?: number; reason?: number }) => void): unknown;
}

function dimseNetwork(client: DimseClient): DimseNetwork | undefined {
  return (client as unknown as { network?: DimseNetwork }).network;
}

// PS3.8 9.3.4: A-ASSOCIATE-RJ result, source and reason.
function rejectText(rj: { result?: number; source?: number; reason?: number }): string {
  const result = rj.result === 1 ? 'permanent' : rj.result === 2 ? 'transient' : `result ${String(rj.result)}`;
  const reasons: Record<string, string> = {
    '1:1': 'no reason given',
    '1:2': 'application context name not supported',
    '1:3': 'calling AE title not recognized',
    '1:7': 'called AE title not recognized',
    '2:1': 'no reason given',
    '2:2': 'protocol version not supported',
    '3:1': 'temporary congestion',
    '3:2': 'local limit exceeded',
  };
  const reason = reasons[`${String(rj.source)}:${String(rj.reason)}`] ?? `source ${String(rj.source)} reason ${String(rj.reason)}`;
  return `association rejected (${result}): ${reason}`;
}

export async function probeDicom(target: ProbeTarget, probe: DicomProbe): Promise<ProbeResult> {
  const invalid = invalidTarget('dicom', target);
  if (invalid) return invalid;
  const dimse = await loadDimse();
  const { Status } = dimse.constants;
  const start = performance.now();
  const client = new dimse.Client();
  let outcome: ProbeResult | undefined;
  const work = new Promise<ProbeResult>((resolve) => {
    const request = new dimse.requests.CEchoRequest();
    request.on('response', (response: { getStatus(): number }) => {
      const status = response.getStatus();
      outcome =
        status === Status.Success
          ? { type: 'dicom', ok: true, latencyMs: since(start) }
          : fail('dicom', 'status', `C-ECHO status 0x${status.toString(16).padStart(4, '0')}`, since(start));
    });
    client.addRequest(request);
    client.on('associationRejected', (rj: { result?: number; source?: number; reason?: number }) => {
      outcome ??= fail('dicom', 'rejected', rejectText(rj));
    });
    client.on('networkError', (err: unknown) => {
      outcome ??= /Connection timeout|Exceeded/.test(errorMessage(err)) ? fail('dicom', 'timeout', 'no answer') : socketFailure('dicom', causeOf(err));
    });
    client.on('closed', () => {
      resolve(outcome ?? fail('dicom', 'error', 'connection closed before a C-ECHO response'));
    });
    try {
      client.send(target.address, probe.port, probe.callingAe, probe.calledAe, {
        connectTimeout: probe.timeoutMs,
        associationTimeout: probe.timeoutMs,
        pduTimeout: probe.timeoutMs,
      });
    } catch (err) {
      resolve(fail('dicom', 'error', errorMessage(err)));
      return;
    }
    // PS3.8 9.3.8: after an A-ABORT the association is over and the transport is closed; the
    // library neither reports it nor closes, so the probe would wait for its deadline.
    const network = dimseNetwork(client);
    network?.on?.('abort', (abort) => {
      // PS3.8 9.3.8: source 0 is the service user (the peer's application), 2 the provider.
      const by = abort.source === 0 ? 'the peer' : abort.source === 2 ? 'the peer\'s DICOM stack' : `source ${String(abort.source)}`;
      outcome ??= fail('dicom', 'aborted', `association aborted by ${by} (reason ${String(abort.reason)})`);
      network.socket?.destroy();
    });
  });
  try {
    // A peer that answered the C-ECHO but not the release still answered.
    return await withDeadline(work, probe.timeoutMs, () => outcome ?? fail('dicom', 'timeout', `no C-ECHO response within ${probe.timeoutMs} ms`));
  } finally {
    dimseNetwork(client)?.socket?.destroy();
  }
}

/** dcmjs-dimse wraps socket errors in new Errors with the errno only in the text. */
function causeOf(err: unknown): unknown {
  const message = errorMessage(err);
  const code = /\b(E[A-Z]{3,})\b/.exec(message)?.[1];
  return code !== undefined ? Object.assign(new Error(message), { code }) : err;
}

// ---------------------------------------------------------------------------------------------

/** Runs a probe of any type. */
export function runProbe(target: ProbeTarget, probe: ProbeConfig): Promise<ProbeResult> {
  switch (probe.type) {
    case 'tcp':
      return probeTcp(target, probe);
    case 'icmp':
      return probeIcmp(target, probe);
    case 'modbus':
      return probeModbus(target, probe);
    case 'dicom':
      return probeDicom(target, probe);
  }
}
