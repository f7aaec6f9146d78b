// Process plumbing for the benchmark: every child it starts is tracked so that it is
// stopped at the end of the run, on failure, on SIGINT/SIGTERM and on the watchdog.
// Also: bounded command runs, free loopback ports, and per-process /proc readings
// (RSS, CPU time) used to report what each server costs.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';

const tracked = new Set<ChildProcess>();

/** Starts a long-running child (a server) that killAll() will stop. */
export function spawnTracked(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): ChildProcess {
  const child = spawn(cmd, args, { env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  tracked.add(child);
  child.on('exit', () => tracked.delete(child));
  child.on('error', () => tracked.delete(child));
  return child;
}

export function isRunning(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

/** SIGTERM, then SIGKILL after graceMs; resolves once the child has exited. */
export function stopChild(child: ChildProcess, graceMs = 10_000): Promise<void> {
  if (!isRunning(child)) return Promise.resolve();
  return new Promise((resolve) => {
    const hard = setTimeout(() => child.kill('SIGKILL'), graceMs);
    const last = setTimeout(resolve, graceMs + 5_000); // never hang on a zombie we cannot reap
    child.once('exit', () => {
      clearTimeout(hard);
      clearTimeout(last);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/** Stops every tracked child (by its own pid). */
export async function killAll(graceMs = 10_000): Promise<void> {
  await Promise.all([...tracked].map((c) => stopChild(c, graceMs)));
}

/** Last resort on process exit: synchronous SIGKILL of anything still tracked. */
export function killAllSync(): void {
  for (const c of tracked) if (isRunning(c)) c.kill('SIGKILL');
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** Runs a command to completion, SIGKILLed after timeoutMs. Output is capped at 4 MiB. */
export function run(cmd: string, args: string[], timeoutMs: number, env?: NodeJS.ProcessEnv): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    tracked.add(child);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let bytes = 0;
    const keep = (arr: Buffer[]) => (b: Buffer) => {
      if (bytes < 4 << 20) arr.push(b);
      bytes += b.length;
    };
    child.stdout!.on('data', keep(out));
    child.stderr!.on('data', keep(err));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      tracked.delete(child);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      tracked.delete(child);
      resolve({ code, signal, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString(), timedOut });
    });
  });
}

/** Like run(), but throws unless the command exits 0. Returns stdout. */
export async function runOk(cmd: string, args: string[], timeoutMs = 30_000): Promise<string> {
  const r = await run(cmd, args, timeoutMs);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.timedOut ? 'timed out' : `exit ${r.code ?? r.signal}`}\n${r.stderr.slice(-2000)}`);
  return r.stdout;
}

/** A loopback port that was free a moment ago (the servers that need a fixed port get one). */
/**
 * Drops the file's pages from the page cache (dd's `oflag=nocache`: POSIX_FADV_DONTNEED on the
 * whole file, after an fdatasync). Pages a large sequential write or read builds (a fill, a
 * mirror's sync) are large folios, and a 4 KiB random write into one then costs more the larger
 * it is: files that must compare alike start with none (BENCHMARKS.md, "Finding: the unmirrored QD32...").
 */
export function dropPageCache(file: string): void {
  execFileSync('dd', ['if=/dev/null', `of=${file}`, 'oflag=nocache', 'conv=notrunc,fdatasync', 'count=0'], { stdio: 'ignore', timeout: 120_000 });
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `probe` until it resolves true or timeoutMs passes. */
export async function waitFor(what: string, timeoutMs: number, probe: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await probe().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`${what}: not ready after ${timeoutMs} ms`);
    await sleep(200);
  }
}

/** Fields of /proc/PID/status in KiB (VmRSS, VmHWM…); null when the process is gone. */
export function procStatusKiB(pid: number, field: string): number | null {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** User+system CPU seconds of a process and all its threads so far (0 when gone). */
export function cpuSeconds(pid: number): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // After "pid (comm) ", field 3 (state) is index 0: utime is field 14, stime 15.
    return (Number(fields[11]) + Number(fields[12])) / 100; // CLK_TCK is 100 on Linux
  } catch {
    return 0;
  }
}

/** CPU seconds the whole machine has spent busy (all cores; not idle, not iowait) since boot. */
export function machineBusySeconds(): number {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0); // user nice system idle iowait irq softirq steal
  return (total - f[3]! - f[4]!) / 100;
}

/**
 * Waits (at most maxWaitMs) until the machine is quiet: under `cores` cores busy over a
 * one-second sample. Other work on a shared machine is bursty; starting a measurement
 * in a lull keeps it out of most runs. Returns the last sample, in cores.
 */
export async function waitForQuiet(cores: number, maxWaitMs: number): Promise<number> {
  const deadline = Date.now() + maxWaitMs;
  for (;;) {
    const b0 = machineBusySeconds();
    await sleep(1000);
    const busy = machineBusySeconds() - b0;
    if (busy < cores || Date.now() >= deadline) return busy;
  }
}
