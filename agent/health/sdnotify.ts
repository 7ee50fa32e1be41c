// systemd's notify protocol (sd_notify(3)): READY=1 once the agent runs, WATCHDOG=1 while it is
// healthy, STOPPING=1 on a clean stop, STATUS=<text> for `systemctl status`. Everything is a no-op
// when NOTIFY_SOCKET is unset (not started by systemd with Type=notify, or in tests).
//
// Why we spawn systemd-notify(1) rather than write the datagram ourselves: the message is one
// datagram on an AF_UNIX SOCK_DGRAM socket, which Node cannot open. The npm ways to get one are
// native addons: `sd-notify` (node-gyp, links libsystemd, needs libsystemd-dev and a compiler on
// every install) and `unix-dgram` (nan, compiled by node-gyp at install; zigbee2mqtt loads it
// as an optional dependency for exactly this). A compiler on a clinic's gateway, or a build farm
// for each Node ABI and CPU, costs more than one short-lived process every WatchdogSec/2.
// systemd-notify ships with systemd itself (Debian package "systemd"), so wherever
// NOTIFY_SOCKET is set it is there, and it speaks whatever protocol details that systemd has
// (abstract sockets, credentials, the synchronisation below).
//
// What the unit needs to know:
// - The datagram comes from the systemd-notify child, not from the agent. systemd-notify --pid
//   asks the kernel to stamp the message with our pid (SCM_CREDENTIALS), which only a process
//   with CAP_SYS_ADMIN may do; the agent runs with CAP_NET_ADMIN only, so the kernel refuses,
//   systemd-notify resends with its own pid, and systemd accepts it only with NotifyAccess=all
//   (the default, "main", would drop it). So: Type=notify, NotifyAccess=all, WatchdogSec=30.
// - By default systemd-notify waits (up to 5 s, BARRIER=1 with a pipe) until systemd has
//   processed the message, so systemd still finds the sender in our cgroup: without that, a
//   child that exits first can have its message dropped ("Cannot find unit for notify message").
//   Do not pass --no-block.
// - --pid also sends MAINPID=<our pid>, which keeps systemd watching the agent even when it was
//   started through a wrapper.
import { execFile } from 'node:child_process';

export type NotifyResult = { sent: true } | { sent: false; reason: string };

export interface SdNotifyOptions {
  /** The environment to read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID from. */
  env?: NodeJS.ProcessEnv;
  /** The systemd-notify binary. */
  command?: string;
  /** The pid to announce as the main pid; ours by default. */
  pid?: number;
  /** How long to wait for systemd-notify (it waits up to 5 s for systemd itself). */
  timeoutMs?: number;
}

/** One line per value: a newline would start another assignment. */
const oneLine = (text: string) => text.replace(/[\r\n]+/g, ' ').slice(0, 1024);

export class SdNotify {
  private readonly env: NodeJS.ProcessEnv;
  private readonly command: string;
  private readonly pid: number;
  private readonly timeoutMs: number;
  private timer: NodeJS.Timeout | undefined;

  constructor(opts: SdNotifyOptions = {}) {
    this.env = opts.env ?? process.env;
    this.command = opts.command ?? 'systemd-notify';
    this.pid = opts.pid ?? process.pid;
    this.timeoutMs = opts.timeoutMs ?? 10000;
  }

  /** True when systemd is listening: NOTIFY_SOCKET is set. */
  get enabled(): boolean {
    return (this.env.NOTIFY_SOCKET ?? '') !== '';
  }

  /**
   * Half the watchdog timeout the unit asked for (WatchdogSec=), in ms, as sd_watchdog_enabled(3)
   * advises; undefined when there is none or it is meant for another process (WATCHDOG_PID).
   */
  watchdogIntervalMs(): number | undefined {
    if (!this.enabled) return undefined;
    const usec = Number(this.env.WATCHDOG_USEC ?? '');
    if (!Number.isFinite(usec) || usec <= 0) return undefined;
    const forPid = this.env.WATCHDOG_PID;
    if (forPid !== undefined && forPid !== '' && Number(forPid) !== this.pid) return undefined;
    return Math.max(1, Math.floor(usec / 2000));
  }

  /** Sends assignments such as READY=1; never rejects. */
  notify(assignments: Record<string, string>): Promise<NotifyResult> {
    if (!this.enabled) return Promise.resolve({ sent: false, reason: 'NOTIFY_SOCKET is not set: not started by systemd with Type=notify' });
    const args = [`--pid=${this.pid}`, ...Object.entries(assignments).map(([k, v]) => `${k}=${oneLine(v)}`)];
    return new Promise((resolve) => {
      execFile(this.command, args, { env: this.env, timeout: this.timeoutMs, encoding: 'utf8' }, (err, _stdout, stderr) => {
        if (!err) return resolve({ sent: true });
        const e = err as NodeJS.ErrnoException & { killed?: boolean };
        if (e.code === 'ENOENT') return resolve({ sent: false, reason: `${this.command} not found: it comes with systemd (apt-get install systemd)` });
        if (e.killed === true) return resolve({ sent: false, reason: `${this.command} did not finish within ${this.timeoutMs} ms` });
        resolve({ sent: false, reason: `${this.command} failed: ${stderr.trim() || e.message}` });
      });
    });
  }

  ready(status?: string): Promise<NotifyResult> {
    return this.notify({ READY: '1', ...(status !== undefined ? { STATUS: status } : {}) });
  }

  watchdog(): Promise<NotifyResult> {
    return this.notify({ WATCHDOG: '1' });
  }

  stopping(status?: string): Promise<NotifyResult> {
    return this.notify({ STOPPING: '1', ...(status !== undefined ? { STATUS: status } : {}) });
  }

  status(text: string): Promise<NotifyResult> {
    return this.notify({ STATUS: text });
  }

  /**
   * Sends WATCHDOG=1 every half timeout while `healthy()` says so: a stuck main loop stops the
   * pings and systemd restarts the agent. Does nothing without a watchdog. stop() ends it.
   */
  startWatchdog(healthy: () => boolean, onResult?: (r: NotifyResult) => void): boolean {
    const every = this.watchdogIntervalMs();
    if (every === undefined || this.timer !== undefined) return false;
    this.timer = setInterval(() => {
      if (!healthy()) return;
      void this.watchdog().then((r) => onResult?.(r));
    }, every);
    return true;
  }

  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }
}
