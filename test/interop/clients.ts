// Shared helpers for the interop suite: start/stop a ferryd and remove its data,
// run the real NBD clients (qemu-io, nbdsh, ...) with bounded time, and small file
// utilities. Clients are always real programs; nothing here fakes the server.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { describeRun, requireTool, run, waitFor, type RunResult } from '../harness.js';

/** The runners and cleanup are the harness's; re-exported for the suites that import them from here. */
export { Cleanup, lastJson, run as runBounded, waitFor } from '../harness.js';

/** Default bound on one client run; every spawned tool gets one. */
export const TOOL_TIMEOUT_MS = 120_000;

/**
 * Options for every it() and hook: a bound on each, so a hung request (the harness's
 * fetch has no timeout) fails the test instead of stalling the suite. Generous: no
 * timing is asserted, machines are noisy.
 */
export const T = { timeout: 300_000 } as const;

/**
 * nbdsh is a shell script running `python3 -m nbd` from $PATH; the libnbd bindings
 * are installed for the system interpreter, which a pyenv or venv on $PATH would
 * shadow. Put /usr/bin first for it.
 */
export const SYSTEM_PYTHON_ENV: NodeJS.ProcessEnv = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` };

export interface ToolOptions {
  input?: string | Buffer;
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
  cwd?: string;
}

/** Runs a required tool (failing when missing), bounded in time. */
export async function tool(name: string, args: string[], opts: ToolOptions = {}): Promise<RunResult> {
  return run(requireTool(name), args, opts);
}

/** Runs a tool and asserts it exited 0; returns its output. */
export async function ok(name: string, args: string[], opts: ToolOptions = {}): Promise<RunResult> {
  const r = await tool(name, args, opts);
  assert.equal(r.code, 0, `expected success:\n${describeRun(name, args, r)}`);
  return r;
}

/** Runs a tool and asserts it failed (non-zero exit, not killed by our timeout). */
export async function fails(name: string, args: string[], opts: ToolOptions = {}): Promise<RunResult> {
  const r = await tool(name, args, opts);
  assert.ok(r.signal === null, `killed by ${r.signal} (timeout?):\n${describeRun(name, args, r)}`);
  assert.notEqual(r.code, 0, `expected failure:\n${describeRun(name, args, r)}`);
  return r;
}

/** qemu-io arguments: a raw image at `uri` (or --image-opts in `extra`), one -c per command. */
export function qemuIoArgs(uri: string, commands: string[], extra: string[] = []): string[] {
  const format = extra.includes('--image-opts') ? [] : ['-f', 'raw'];
  return [...format, ...extra, ...commands.flatMap((c) => ['-c', c]), uri];
}

export function qemuIo(uri: string, commands: string[], extra: string[] = []): Promise<RunResult> {
  return tool('qemu-io', qemuIoArgs(uri, commands, extra));
}

/** qemu-io that must succeed: exit 0 and no failed command or pattern mismatch. */
export async function qemuIoOk(uri: string, commands: string[], extra: string[] = []): Promise<RunResult> {
  const r = await qemuIo(uri, commands, extra);
  const args = qemuIoArgs(uri, commands, extra);
  assert.equal(r.code, 0, `qemu-io failed:\n${describeRun('qemu-io', args, r)}`);
  assert.doesNotMatch(r.stdout + r.stderr, /failed|error/i, `qemu-io reported a failure:\n${describeRun('qemu-io', args, r)}`);
  return r;
}

/**
 * Runs a Python script in nbdsh (libnbd's shell: `nbd` is imported). The script
 * should print what the test checks; a Python exception makes nbdsh exit non-zero,
 * which fails the test with the traceback.
 */
export async function nbdsh(script: string, timeoutMs = TOOL_TIMEOUT_MS): Promise<string> {
  const r = await tool('nbdsh', ['-c', script], { env: SYSTEM_PYTHON_ENV, timeoutMs });
  assert.equal(r.code, 0, `nbdsh script failed:\n${script}\nexit ${r.code} ${r.signal ?? ''}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r.stdout;
}

export function sha256File(file: string): string {
  const h = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** Writes `bytes` of random data (from the kernel's CSPRNG) to a new file. */
export function writeRandomFile(file: string, bytes: number): void {
  const fd = fs.openSync(file, 'w');
  try {
    const chunk = 1 << 20;
    for (let done = 0; done < bytes; done += chunk) fs.writeSync(fd, crypto.randomBytes(Math.min(chunk, bytes - done)));
  } finally {
    fs.closeSync(fd);
  }
}

/** Python literal of a string (JSON strings are valid Python strings for our inputs). */
export function py(s: string): string {
  return JSON.stringify(s);
}

/** One attachment of a Ferry disk as a block device: nbdfuse → file → loop device → (ext4 mount). Needs root and /dev/fuse. */
export class Attachment {
  private fuse: ChildProcess | null = null;
  private fuseExited: Promise<void> = Promise.resolve();
  private fuseLog = '';
  loop: string | null = null;
  mounted = false;

  constructor(
    readonly fuseDir: string,
    readonly mountDir: string,
    /** Size of the disk: the attachment is ready once nbdfuse's file has it. */
    readonly size: number,
  ) {}

  get file(): string {
    return path.join(this.fuseDir, 'nbd');
  }

  async attach(uri: string): Promise<string> {
    const pidFile = path.join(path.dirname(this.fuseDir), `${path.basename(this.fuseDir)}.pid`);
    fs.rmSync(pidFile, { force: true });
    const proc = spawn(requireTool('nbdfuse'), ['-P', pidFile, this.fuseDir, uri], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.fuse = proc;
    this.fuseExited = new Promise((resolve) => proc.on('exit', () => resolve()));
    proc.stdout!.on('data', (b: Buffer) => (this.fuseLog += b.toString()));
    proc.stderr!.on('data', (b: Buffer) => (this.fuseLog += b.toString()));
    let exited = false;
    void this.fuseExited.then(() => (exited = true));
    await waitFor('nbdfuse to serve its file', () => {
      if (exited) throw new Error(`nbdfuse exited early: ${this.fuseLog}`);
      return fs.existsSync(pidFile) && fs.existsSync(this.file) && fs.statSync(this.file).size === this.size;
    });
    this.loop = (await ok('losetup', ['-f', '--show', this.file])).stdout.trim();
    assert.match(this.loop, /^\/dev\/loop\d+$/);
    return this.loop;
  }

  async mount(): Promise<void> {
    await ok('mount', ['-t', 'ext4', this.loop!, this.mountDir]);
    this.mounted = true;
  }

  async unmount(): Promise<void> {
    if (!this.mounted) return;
    const r = await tool('umount', [this.mountDir]);
    if (r.code !== 0) await ok('umount', ['-l', this.mountDir]);
    this.mounted = false;
  }

  /** Undoes everything that was done, in reverse; safe to call at any point and twice. */
  async detach(): Promise<void> {
    await this.unmount();
    if (this.loop) {
      const loop = this.loop;
      await tool('blockdev', ['--flushbufs', loop]);
      await ok('losetup', ['-d', loop]);
      const backing = `/sys/block/${path.basename(loop)}/loop/backing_file`;
      await waitFor(`${loop} to detach`, () => !fs.existsSync(backing), 15_000);
      this.loop = null;
    }
    if (this.fuse) {
      const proc = this.fuse;
      let done = false;
      void this.fuseExited.then(() => (done = true));
      for (let i = 0; i < 20 && !done; i++) {
        const r = await tool('fusermount3', ['-u', this.fuseDir]);
        if (r.code === 0) break;
        await new Promise((res) => setTimeout(res, 250));
      }
      await waitFor('nbdfuse to exit', () => done, 10_000).catch(() => undefined);
      if (!done) {
        await tool('fusermount3', ['-uz', this.fuseDir]);
        proc.kill('SIGKILL');
        await this.fuseExited;
      }
      this.fuse = null;
    }
  }
}
