// sd_notify through systemd-notify(1), against a real AF_UNIX datagram socket standing in for
// systemd's: a python3 listener bound in a temporary directory and named by NOTIFY_SOCKET, which
// prints each datagram it receives with the sender's credentials (SCM_CREDENTIALS), and closes
// the file descriptor of systemd-notify's BARRIER=1 as systemd does.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SdNotify } from '../../agent/health/sdnotify.js';

const LISTENER = `
import array, json, os, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
print("ready", flush=True)
while True:
    msg, anc, _flags, _addr = s.recvmsg(4096, socket.CMSG_SPACE(64) + socket.CMSG_SPACE(12))
    fds, pid = [], None
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            a = array.array("i"); a.frombytes(data[: len(data) - len(data) % 4]); fds += list(a)
        elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", data[:12])[0]
    for fd in fds:
        os.close(fd)
    print(json.dumps({"msg": msg.decode(), "pid": pid, "fds": len(fds)}), flush=True)
`;

interface Datagram {
  msg: string;
  pid: number | null;
  fds: number;
}

const has = (cmd: string) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
const skipReason = !has('systemd-notify')
  ? 'systemd-notify is not installed (Debian package "systemd": apt-get install systemd)'
  : !has('python3')
    ? 'python3 is not installed: it stands in for systemd\'s notify socket'
    : undefined;
if (skipReason !== undefined) console.warn(`[sd_notify] socket tests skipped: ${skipReason}`);

describe('sd_notify without systemd', () => {
  it('is a no-op when NOTIFY_SOCKET is unset: nothing is spawned', async () => {
    const n = new SdNotify({ env: {}, command: '/nonexistent/systemd-notify' });
    expect(n.enabled).toBe(false);
    expect(await n.ready()).toEqual({ sent: false, reason: 'NOTIFY_SOCKET is not set: not started by systemd with Type=notify' });
    expect(n.watchdogIntervalMs()).toBeUndefined();
    expect(n.startWatchdog(() => true)).toBe(false);
  });

  it('says where systemd-notify comes from when it is missing, and does not throw', async () => {
    const n = new SdNotify({ env: { NOTIFY_SOCKET: '/run/nothing' }, command: '/nonexistent/systemd-notify' });
    expect(await n.watchdog()).toEqual({ sent: false, reason: '/nonexistent/systemd-notify not found: it comes with systemd (apt-get install systemd)' });
  });

  it('watchdog interval: half of WATCHDOG_USEC, only for our pid', () => {
    const env = { NOTIFY_SOCKET: '/run/x', WATCHDOG_USEC: '30000000' };
    expect(new SdNotify({ env }).watchdogIntervalMs()).toBe(15000);
    expect(new SdNotify({ env: { ...env, WATCHDOG_PID: String(process.pid) } }).watchdogIntervalMs()).toBe(15000);
    expect(new SdNotify({ env: { ...env, WATCHDOG_PID: '1' } }).watchdogIntervalMs()).toBeUndefined();
    expect(new SdNotify({ env: { NOTIFY_SOCKET: '/run/x' } }).watchdogIntervalMs()).toBeUndefined();
    expect(new SdNotify({ env: { NOTIFY_SOCKET: '/run/x', WATCHDOG_USEC: 'soon' } }).watchdogIntervalMs()).toBeUndefined();
  });
});

describe.skipIf(skipReason !== undefined)('sd_notify to a listening datagram socket', () => {
  let dir: string;
  let socketPath: string;
  let listener: ChildProcess;
  const received: Datagram[] = [];

  /** Waits for the next datagram that is not systemd-notify's BARRIER=1. */
  const next = async (ms = 5000): Promise<Datagram> => {
    const end = Date.now() + ms;
    for (;;) {
      const i = received.findIndex((d) => d.msg !== 'BARRIER=1');
      if (i >= 0) return received.splice(0, i + 1)[i] as Datagram;
      if (Date.now() > end) throw new Error(`no datagram within ${ms} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'wg-notify-'));
    socketPath = join(dir, 'notify');
    listener = spawn('python3', ['-c', LISTENER, socketPath], { stdio: ['ignore', 'pipe', 'inherit'] });
    let buffered = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the python3 listener did not start')), 15000);
      listener.stdout?.on('data', (d: Buffer) => {
        buffered += d.toString();
        const lines = buffered.split('\n');
        buffered = lines.pop() ?? '';
        for (const line of lines) {
          if (line === 'ready') {
            clearTimeout(timer);
            resolve();
          } else if (line.trim() !== '') received.push(JSON.parse(line) as Datagram);
        }
      });
      listener.on('exit', (code) => reject(new Error(`the python3 listener exited ${code}`)));
    });
  });
  afterAll(() => {
    listener?.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('READY=1 with a status, our pid as MAINPID, then a barrier systemd must answer', async () => {
    const n = new SdNotify({ env: { ...process.env, NOTIFY_SOCKET: socketPath } });
    expect(n.enabled).toBe(true);
    expect(await n.ready('enforcing 4 devices')).toEqual({ sent: true });
    const d = await next();
    expect(d.msg).toBe(`MAINPID=${process.pid}\nREADY=1\nSTATUS=enforcing 4 devices`);
    // Root may stamp a datagram with another pid: systemd-notify stamps ours. Without
    // CAP_SYS_ADMIN (the agent's case) the kernel refuses and the child's own pid goes, which
    // is why the unit says NotifyAccess=all.
    if (process.getuid?.() === 0) expect(d.pid).toBe(process.pid);
    else expect(d.pid).not.toBe(process.pid);
    // Then BARRIER=1 with the write end of a pipe: systemd-notify waits until the receiver has
    // closed it, so systemd has read the message while the sender was still alive.
    const end = Date.now() + 5000;
    while (received.length === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    expect(received[0]).toMatchObject({ msg: 'BARRIER=1', fds: 1 });
  });

  it('WATCHDOG=1, STATUS= (one line) and STOPPING=1', async () => {
    const n = new SdNotify({ env: { ...process.env, NOTIFY_SOCKET: socketPath } });
    expect(await n.watchdog()).toEqual({ sent: true });
    expect((await next()).msg).toBe(`MAINPID=${process.pid}\nWATCHDOG=1`);
    expect(await n.status('degraded:\nbroker unreachable')).toEqual({ sent: true });
    expect((await next()).msg).toBe(`MAINPID=${process.pid}\nSTATUS=degraded: broker unreachable`);
    expect(await n.stopping('SIGTERM')).toEqual({ sent: true });
    expect((await next()).msg).toBe(`MAINPID=${process.pid}\nSTOPPING=1\nSTATUS=SIGTERM`);
  });

  it('pings the watchdog every half timeout while healthy, and not while unhealthy', async () => {
    let healthy = true;
    const results: unknown[] = [];
    const n = new SdNotify({ env: { ...process.env, NOTIFY_SOCKET: socketPath, WATCHDOG_USEC: '400000' } });
    expect(n.watchdogIntervalMs()).toBe(200);
    expect(n.startWatchdog(() => healthy, (r) => results.push(r))).toBe(true);
    try {
      expect((await next()).msg).toBe(`MAINPID=${process.pid}\nWATCHDOG=1`);
      expect((await next()).msg).toBe(`MAINPID=${process.pid}\nWATCHDOG=1`);
      healthy = false;
      await new Promise((r) => setTimeout(r, 300)); // one in flight may still land
      received.splice(0);
      await new Promise((r) => setTimeout(r, 600));
      expect(received.filter((d) => d.msg !== 'BARRIER=1')).toEqual([]);
    } finally {
      n.stop();
    }
    expect(results.length).toBeGreaterThanOrEqual(2);
    expect(results.every((r) => (r as { sent: boolean }).sent)).toBe(true);
  });
});
