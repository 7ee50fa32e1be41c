import type { ChildProcess } from 'node:child_process';

/** Ends a child process: SIGTERM, then SIGKILL after `ms`; resolves once it has exited. */
export async function stopProcess(child: ChildProcess, exited: Promise<unknown>, ms: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), ms);
  await exited;
  clearTimeout(timer);
}
