// Test harness: runs a real ferryd (bin/ferry.cjs serve) on ephemeral loopback ports
// with its own temporary data directory, and real command-line clients against it.
// Interop tests never skip: a missing client tool is a failure (requireTool).
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const FERRY_BIN = path.join(ROOT, 'bin', 'ferry.cjs');

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion (bounded by timeoutMs), capturing its output. */
export function run(cmd: string, args: string[], opts: { input?: string | Buffer; env?: NodeJS.ProcessEnv; timeoutMs?: number; cwd?: string } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: opts.env ?? process.env, cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() });
    });
    child.stdin.on('error', () => undefined); // a child that exits at once must not fail the test with EPIPE
    child.stdin.end(opts.input ?? '');
  });
}

/** Fails (never skips) when a client tool the test needs is missing. */
export function requireTool(name: string): string {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin'])) {
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // keep looking
    }
  }
  throw new Error(`required tool '${name}' is not installed (run .ci/run or see README "Install")`);
}

const tmpDirs: string[] = [];
process.on('exit', () => {
  for (const d of tmpDirs) {
    try {
      fs.rmSync(d, { recursive: true, force: true });
    } catch {
      // still mounted or busy: leave it
    }
  }
});

/** A temporary directory, deleted when the test process exits. */
export function tmpDir(prefix = 'ferry-test-'): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tmpDirs.push(d);
  return d;
}

export interface StartOptions {
  dataDir?: string;
  args?: string[];
  env?: NodeJS.ProcessEnv;
}

export class Ferryd {
  proc!: ChildProcess;
  nbdHost = '127.0.0.1';
  nbdPort = 0;
  apiUrl = '';
  /** HOST:PORT of the replication listener. */
  replAddress = '';
  stdout = '';
  stderr = '';
  private exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> | null = null;

  constructor(
    readonly dataDir: string,
    readonly args: string[],
    readonly env: NodeJS.ProcessEnv,
  ) {}

  get token(): string {
    return fs.readFileSync(path.join(this.dataDir, 'api-token'), 'utf8').trim();
  }

  /** nbd:// URI of a disk (the export name is the disk name). */
  uri(disk: string): string {
    return `nbd://${this.nbdHost}:${this.nbdPort}/${disk}`;
  }

  get nbdAddress(): string {
    return `${this.nbdHost}:${this.nbdPort}`;
  }

  async start(): Promise<void> {
    this.stdout = '';
    this.stderr = '';
    const proc = spawn(process.execPath, [FERRY_BIN, 'serve', '--data', this.dataDir, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', '--repl', '127.0.0.1:0', ...this.args], {
      env: this.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    this.exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
    // stdout and stderr are two pipes, read in no set order: what recovery logged (stderr) may
    // arrive after the 'listening' lines (stdout). ferryd logs "ferryd started" after those
    // lines, so once it is read every earlier log line is too (unless the log level hides it).
    const logsStart = !this.args.some((a) => a === '--log-level' || a === '--log-format' || a === '--config');
    let onData = (): void => undefined;
    proc.stderr!.on('data', (b: Buffer) => {
      this.stderr += b.toString();
      onData();
    });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`ferryd did not start in 30 s\nstdout: ${this.stdout}\nstderr: ${this.stderr}`)), 30_000);
      onData = (): void => {
        const nbd = /NBD listening on (\S+):(\d+)/.exec(this.stdout);
        const api = /API listening on (http:\/\/\S+)/.exec(this.stdout);
        const repl = /replication listening on (\S+)/.exec(this.stdout);
        if (nbd && api && repl && (!logsStart || this.stderr.includes('"msg":"ferryd started"'))) {
          clearTimeout(timer);
          this.nbdHost = nbd[1]!;
          this.nbdPort = Number(nbd[2]);
          this.apiUrl = api[1]!;
          this.replAddress = repl[1]!;
          onData = () => undefined;
          resolve();
        }
      };
      proc.stdout!.on('data', (b: Buffer) => {
        this.stdout += b.toString();
        onData();
      });
      proc.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`ferryd exited with ${code} before listening\nstdout: ${this.stdout}\nstderr: ${this.stderr}`));
      });
    });
  }

  /** Runs the real CLI against this daemon. */
  cli(args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<RunResult> {
    return run(process.execPath, [FERRY_BIN, ...args], {
      env: { ...process.env, FERRY_API: this.apiUrl, FERRY_DATA: this.dataDir, ...opts.env },
      timeoutMs: opts.timeoutMs,
    });
  }

  /** Calls the REST API with the daemon's token. */
  async api(method: string, url: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: any }> {
    const res = await fetch(this.apiUrl + url, {
      method,
      headers: { authorization: `Bearer ${this.token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON
    }
    return { status: res.status, body: parsed };
  }

  /** Creates a virtual disk through the API and returns its info. */
  async createDisk(name: string, size: string | number): Promise<any> {
    const r = await this.api('POST', '/v1/disks', { name, size });
    if (r.status !== 201) throw new Error(`create disk ${name}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  }

  /** Graceful stop (SIGTERM by default); resolves with the exit status. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (!this.exited) return { code: 0, signal: null };
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill(signal);
    const r = await this.exited;
    this.exited = null;
    return r;
  }

  kill9(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.stop('SIGKILL');
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }
}

/** Starts ferryd with a fresh (or given) data directory. Call stop() in an after hook. */
export async function startFerryd(opts: StartOptions = {}): Promise<Ferryd> {
  const d = new Ferryd(opts.dataDir ?? tmpDir('ferry-data-'), opts.args ?? [], { ...process.env, ...opts.env });
  await d.start();
  return d;
}

/** Temp dirs, daemons, child processes and hooks to undo in `after()`. */
export class Cleanup {
  private readonly dirs: string[] = [];
  private readonly daemons: Ferryd[] = [];
  private readonly hooks: Array<() => Promise<void> | void> = [];
  private readonly children = new Set<ChildProcess>();

  /** `dirPrefix`: the prefix of the temp dirs of dir() (names the suite in /tmp). */
  constructor(private readonly dirPrefix = 'ferry-test-') {}

  dir(prefix = this.dirPrefix): string {
    const d = tmpDir(prefix);
    this.dirs.push(d);
    return d;
  }

  /** Starts a ferryd whose data directory is removed at cleanup. */
  async ferryd(opts: StartOptions = {}): Promise<Ferryd> {
    const d = await startFerryd({ ...opts, dataDir: opts.dataDir ?? this.dir('ferry-data-') });
    this.daemons.push(d);
    return d;
  }

  /** Runs `fn` at cleanup, before daemons stop (e.g. unmount what uses them). LIFO. */
  defer(fn: () => Promise<void> | void): void {
    this.hooks.push(fn);
  }

  /**
   * A small tmpfs mounted on a new directory `name` under a temp dir of this cleanup (a real
   * ENOSPC from the kernel when full; the tests run as root), unmounted at cleanup.
   */
  async tmpfs(name: string, size: string): Promise<string> {
    const dir = path.join(fs.realpathSync(this.dir()), name);
    fs.mkdirSync(dir);
    const mounted = await run('/usr/bin/mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]);
    assert.equal(mounted.code, 0, `mount a tmpfs (the tests run as root): ${mounted.stderr}`);
    this.defer(async () => void (await run('/usr/bin/umount', ['-l', dir])));
    return dir;
  }

  /** A child process killed at cleanup if it still runs. */
  track(child: ChildProcess): void {
    this.children.add(child);
    child.on('exit', () => this.children.delete(child));
  }

  async run(): Promise<void> {
    const errors: unknown[] = [];
    for (const c of this.children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const h of this.hooks.splice(0).reverse()) {
      try {
        await h();
      } catch (e) {
        errors.push(e);
      }
    }
    for (const d of this.daemons.splice(0)) {
      try {
        await d.stop();
      } catch (e) {
        errors.push(e);
      }
    }
    for (const dir of this.dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
    if (errors.length) throw errors[0];
  }
}

/** Writes `file` until its file system is full (ENOSPC, asserted): nothing more fits there. */
export function fillUntilFull(file: string): void {
  const fd = fs.openSync(file, 'w');
  try {
    const chunk = Buffer.alloc(1024 * 1024, 1);
    for (;;) fs.writeSync(fd, chunk);
  } catch (err) {
    assert.equal((err as NodeJS.ErrnoException).code, 'ENOSPC', `filling ${file}`);
  } finally {
    fs.closeSync(fd);
  }
}

/** A command and its result, for assertion messages. */
export function describeRun(cmd: string, args: string[], r: RunResult): string {
  return `${cmd} ${args.map((a) => (/[\s'"]/.test(a) ? JSON.stringify(a) : a)).join(' ')}\nexit ${r.code}${r.signal ? ` (signal ${r.signal})` : ''}\nstdout: ${r.stdout.slice(-4000)}\nstderr: ${r.stderr.slice(-4000)}`;
}

/** Parses the last JSON line of a program's output. */
export function lastJson<T = any>(stdout: string): T {
  const line = stdout
    .trim()
    .split('\n')
    .reverse()
    .find((l) => l.startsWith('{') || l.startsWith('['));
  assert.ok(line, `no JSON line in output:\n${stdout}`);
  return JSON.parse(line) as T;
}

/** Waits until `check` returns true, polling; fails after timeoutMs with `what`. */
export async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
