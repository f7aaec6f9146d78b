// Shared helpers for the mirror end-to-end tests: `ferry mirror ...` through the real CLI,
// status polling through the API (cheaper than a process per poll), waiting for a mirror to
// be in sync or drained, byte comparison of files with cmp, filling an image with non-zero
// data fast, and fio's nbd engine with inline crc32c verification as a background writer.
// Daemons, temp dirs, the Python workload and checker come from test/staging/helpers.ts;
// nbdfuse + loop device attachments from test/interop/clients.ts.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { requireTool, type Ferryd } from '../harness.js';
import { PYTHON, SYSTEM_ENV, describeRun, lastJson, runBounded, type Cleanup } from '../staging/helpers.js';

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

/** Options for every it() and hook: bounded, so a hung request fails the test instead of stalling it. */
export const T = { timeout: 170_000 } as const;

/** Runs `ferry ARGS --json` and asserts success; returns the parsed output. */
export async function cliJson(d: Ferryd, args: string[], timeoutMs = 120_000): Promise<any> {
  const r = await d.cli([...args, '--json'], { timeoutMs });
  assert.equal(r.code, 0, `ferry ${args.join(' ')} failed (exit ${r.code} ${r.signal ?? ''}):\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** Runs `ferry ARGS --json` expecting a refusal with `code` (exit 1); returns the message. */
export async function cliFails(d: Ferryd, args: string[], code: string): Promise<string> {
  const r = await d.cli([...args, '--json'], { timeoutMs: 60_000 });
  const what = `ferry ${args.join(' ')} → exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
  assert.equal(r.code, 1, `should have been refused with ${code}: ${what}`);
  const body = lastJson<{ error: { code: string; message: string } }>(r.stderr);
  assert.equal(body.error.code, code, what);
  assert.ok(body.error.message.length > 0, what);
  return body.error.message;
}

/** The mirror's status through the API (asserting 200). */
export async function mirrorStatus(d: Ferryd, disk: string): Promise<any> {
  const r = await d.api('GET', `/v1/disks/${disk}/mirror`);
  assert.equal(r.status, 200, `mirror status ${disk}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

export async function diskShow(d: Ferryd, disk: string): Promise<any> {
  const r = await d.api('GET', `/v1/disks/${disk}`);
  assert.equal(r.status, 200, `disk show ${disk}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

export async function stagingShow(d: Ferryd, disk: string): Promise<any> {
  const r = await d.api('GET', `/v1/disks/${disk}/staging`);
  assert.equal(r.status, 200, `staging show ${disk}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

async function poll<T>(what: string, timeoutMs: number, step: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    const v = await step().catch((e) => {
      last = e;
      return undefined;
    });
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Waits until the mirror is in sync (consistent). Fails at once on a sync or committer
 * error. `seen` collects every status observed, for assertions about what came before.
 */
export function waitInSync(d: Ferryd, disk: string, timeoutMs = 120_000, seen: any[] = []): Promise<any> {
  return poll(`the mirror of ${disk} to be in sync`, timeoutMs, async () => {
    const s = await mirrorStatus(d, disk);
    seen.push(s);
    assert.equal(s.syncError, null, `sync failed: ${JSON.stringify(s)}`);
    return s.consistent && s.state === 'in-sync' ? s : undefined;
  });
}

/** Waits until both the primary and the mirror have applied every staged record (no writer may be running). */
export function waitDrained(d: Ferryd, disk: string, timeoutMs = 60_000): Promise<any> {
  return poll(`the staging area of ${disk} to drain to primary and mirror`, timeoutMs, async () => {
    const m = await mirrorStatus(d, disk);
    const s = await stagingShow(d, disk);
    const pending = s.consumers.reduce((n: number, c: any) => n + c.pendingRecords, 0);
    return m.lagRecords === 0 && pending === 0 && s.overlayExtents === 0 ? m : undefined;
  });
}

/** cmp of two files (or the first `bytes` of them): null when identical, else cmp's report. */
export async function cmpFiles(a: string, b: string, bytes?: number): Promise<string | null> {
  const args = [...(bytes !== undefined ? ['-n', String(bytes)] : []), a, b];
  const r = await runBounded(requireTool('cmp'), args, { timeoutMs: 120_000 });
  assert.ok(r.code === 0 || r.code === 1, `cmp ${args.join(' ')} failed: ${r.code} ${r.signal ?? ''} ${r.stderr}`);
  return r.code === 0 ? null : `${r.stdout}${r.stderr}`.trim();
}

export async function assertSameBytes(a: string, b: string, what: string, bytes?: number): Promise<void> {
  const diff = await cmpFiles(a, b, bytes);
  assert.equal(diff, null, `${what}: ${a} and ${b} differ: ${diff}`);
}

/** Allocated bytes of a file (st_blocks × 512). */
export function allocatedBytes(file: string): number {
  return fs.statSync(file).blocks * 512;
}

/**
 * Writes [offset, offset+length) of a file (created if missing, never truncated) with a
 * non-zero pattern that differs per MiB (`seed` varies it), fast: for setting up images
 * that are then adopted, or targets that already hold data.
 */
export function fillPattern(file: string, offset: number, length: number, seed: number): void {
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  try {
    const buf = Buffer.alloc(MiB);
    for (let at = 0; at < length; at += MiB) {
      const n = Math.min(MiB, length - at);
      const mib = Math.floor((offset + at) / MiB);
      buf.fill(((mib * 31 + seed * 7) % 251) + 1);
      buf.writeUInt32LE(mib, 0);
      buf.writeUInt32LE(seed, 4);
      fs.writeSync(fd, buf, 0, n, offset + at);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Creates a sparse file of `size` bytes. */
export function sparseFile(file: string, size: number): void {
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  try {
    fs.ftruncateSync(fd, size);
  } finally {
    fs.closeSync(fd);
  }
}

/** Paths ferryd has open (its /proc fd table). */
export function openPaths(d: Ferryd): string[] {
  const dir = `/proc/${d.proc.pid}/fd`;
  const out: string[] = [];
  for (const fd of fs.readdirSync(dir)) {
    try {
      out.push(fs.readlinkSync(path.join(dir, fd)));
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

export interface FioRun {
  stop(): Promise<any>;
  running(): boolean;
}

/**
 * fio's nbd engine writing random 4 KiB blocks of [offset, offset+size) at queue depth 16
 * until stopped (SIGINT: fio finishes gracefully), verifying what it wrote as it goes
 * (crc32c, verify_backlog=1024, verify_fatal). It runs in its own working directory (fio
 * leaves verify state files there). stop() asserts a clean exit, no verify error, and that
 * it really wrote and read back; it returns the job's JSON result.
 */
export function startFio(cleanup: Cleanup, uri: string, opts: { name: string; cwd: string; offset?: string; size?: string; rateIops?: number }): FioRun {
  const args = [
    `--name=${opts.name}`,
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--rw=randwrite',
    '--bs=4k',
    '--iodepth=16',
    `--offset=${opts.offset ?? '0'}`,
    `--size=${opts.size ?? '64m'}`,
    '--verify=crc32c',
    '--verify_backlog=1024',
    '--verify_fatal=1',
    '--time_based',
    '--runtime=600',
    `--rate_iops=${opts.rateIops ?? 1500}`,
    '--output-format=json',
  ];
  const child = spawn(requireTool('fio'), args, { cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  cleanup.track(child);
  let out = '';
  let err = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  return {
    running: () => child.exitCode === null && child.signalCode === null,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
      const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
      const { code, signal } = await exited;
      clearTimeout(timer);
      const what = `fio ${args.join(' ')}\nexit ${code} ${signal ?? ''}\nstderr: ${err.slice(-4000)}\nstdout: ${out.slice(-2000)}`;
      // fio 3.x exits 128 after "terminating on signal 2" (our SIGINT) even when all went well;
      // a verify failure or an I/O error shows in the job's error and in its messages.
      assert.ok(code === 0 || code === 128, what);
      const chatter = err + out.slice(0, Math.max(0, out.indexOf('{')));
      assert.doesNotMatch(chatter, /verify|bad magic|crc32c|error|fail/i, what);
      const json = JSON.parse(out.slice(out.indexOf('{')));
      const job = json.jobs[0];
      assert.equal(job.error, 0, what);
      assert.ok(job.write.total_ios > 0, `fio wrote nothing: ${what}`);
      assert.ok(job.read.total_ios > 0, `fio verified nothing (no read-back): ${what}`);
      return job;
    },
  };
}

/** Waits until fio has written at least `ios` blocks since `before` (by the disk's write counter). */
export async function waitWrites(d: Ferryd, disk: string, ios: number, timeoutMs = 60_000): Promise<void> {
  const start = (await diskShow(d, disk)).stats.writeOps as number;
  await poll(`${ios} writes to ${disk}`, timeoutMs, async () => ((await diskShow(d, disk)).stats.writeOps - start >= ios ? true : undefined));
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface ImageCheck {
  highest: number;
  issued: number;
  writtenBlocks: number;
  torn: number;
  mismatches: number;
  errors: string[];
}

/**
 * Runs image_check.py: is `image` (read directly) exactly the disk after the first K writes of
 * a workload.py run, over what it held before (`base`, an image of it then; else zeroes)?
 */
export async function imageCheck(image: string, log: string, range: { firstBlock?: number; blocks: number }, base?: string): Promise<ImageCheck> {
  const args = [path.join(path.dirname(fileURLToPath(import.meta.url)), 'image_check.py'), image, log, String(range.firstBlock ?? 0), String(range.blocks), ...(base ? [base] : [])];
  const r = await runBounded(PYTHON, args, { env: SYSTEM_ENV, timeoutMs: 120_000 });
  assert.equal(r.code, 0, `image check failed:\n${describeRun('image_check.py', args, r)}`);
  return lastJson<ImageCheck>(r.stdout);
}
