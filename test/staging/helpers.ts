// Shared helpers for the staging-area end-to-end tests: daemons and temp dirs removed at
// cleanup, bounded runs of real tools, the Python workload and checker (workload.py,
// check.py, run with /usr/bin/python3 which has the libnbd bindings), and `ferry staging`
// through the real CLI.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeRun, lastJson, requireTool, run, type Cleanup, type Ferryd, type RunResult } from '../harness.js';

/** The runners and cleanup are the harness's; re-exported for the suites that import them from here. */
export { Cleanup, describeRun, lastJson, run as runBounded, waitFor } from '../harness.js';

/** The nbdfuse + loop device attachment is the interop suite's; the staging tests use the same one. */
export { Attachment } from '../interop/clients.js';

export const MiB = 1024 * 1024;
export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const PYTHON = '/usr/bin/python3';
/** The libnbd bindings belong to the system interpreter; keep /usr/bin first for nbdsh too. */
export const SYSTEM_ENV: NodeJS.ProcessEnv = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` };
export const TOOL_TIMEOUT_MS = 120_000;

/** Runs a required tool and asserts it exited 0. */
export async function ok(name: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; input?: string | Buffer } = {}): Promise<RunResult> {
  const r = await run(requireTool(name), args, opts);
  assert.equal(r.code, 0, `expected success:\n${describeRun(name, args, r)}`);
  return r;
}

/** Runs a Python script (inline) with the system interpreter; asserts exit 0; returns its last JSON line. */
export async function python<T = any>(script: string, args: string[] = [], timeoutMs = TOOL_TIMEOUT_MS): Promise<T> {
  const r = await run(PYTHON, ['-c', script, ...args], { env: SYSTEM_ENV, timeoutMs });
  assert.equal(r.code, 0, `python failed:\n${script}\nexit ${r.code} ${r.signal ?? ''}\nstdout: ${r.stdout.slice(-4000)}\nstderr: ${r.stderr.slice(-4000)}`);
  return lastJson<T>(r.stdout);
}

export interface Workload {
  child: ChildProcess;
  /** Resolves once the workload is connected (or has exited). */
  connected: Promise<boolean>;
  /** Resolves with the workload's summary when it exits. */
  done: Promise<WorkloadSummary>;
}

export interface WorkloadSummary {
  first: number;
  next: number;
  issued: number;
  acked: number;
  failed: number;
  flushes: number;
  fua: number;
  error: string | null;
}

/** Starts workload.py in the background (see its header for the arguments and log format). */
export function startWorkload(
  cleanup: Cleanup,
  opts: { uri: string; log: string; firstCounter: number; firstBlock?: number; blocks: number; seed: number; maxSeconds: number; depth?: number },
): Workload {
  const args = [
    path.join(HERE, 'workload.py'),
    opts.uri,
    opts.log,
    String(opts.firstCounter),
    String(opts.firstBlock ?? 0),
    String(opts.blocks),
    String(opts.seed),
    String(opts.maxSeconds),
    String(opts.depth ?? 16),
  ];
  const child = spawn(PYTHON, args, { env: SYSTEM_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
  cleanup.track(child);
  let out = '';
  let err = '';
  const timer = setTimeout(() => child.kill('SIGKILL'), (opts.maxSeconds + 60) * 1000);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal });
    }),
  );
  const connected = new Promise<boolean>((resolve) => {
    child.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      if (out.includes('connected\n')) resolve(true);
    });
    void exited.then(() => resolve(false));
  });
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const done = exited.then(({ code, signal }) => {
    assert.equal(code, 0, `workload failed: exit ${code} ${signal ?? ''}\nstdout: ${out.slice(-2000)}\nstderr: ${err.slice(-4000)}`);
    return lastJson<WorkloadSummary>(out);
  });
  return { child, connected, done };
}

export interface CheckSummary {
  issued: number;
  acked: number;
  flushedAcked: number;
  fuaAcked: number;
  highestSurvivor: number;
  survivedUnacked: number;
  lostUnacked: number;
  writtenBlocks: number;
  torn: number;
  prefixViolations: number;
  errors: string[];
}

/** Runs check.py: reads blocks [firstBlock, firstBlock+blocks) and checks them against one workload log (see check.py). */
export async function checkDisk(uri: string, log: string, range: { firstBlock?: number; blocks: number }, stateIn: string | null, stateOut: string): Promise<CheckSummary> {
  const args = [path.join(HERE, 'check.py'), uri, log, String(range.firstBlock ?? 0), String(range.blocks), stateIn ?? '-', stateOut];
  const r = await run(PYTHON, args, { env: SYSTEM_ENV, timeoutMs: TOOL_TIMEOUT_MS });
  assert.equal(r.code, 0, `checker failed:\n${describeRun('check.py', args, r)}`);
  return lastJson<CheckSummary>(r.stdout);
}

/** `ferry staging show DISK --json` through the real CLI. */
export async function stagingShow(d: Ferryd, disk: string): Promise<any> {
  const r = await d.cli(['staging', 'show', disk, '--json']);
  assert.equal(r.code, 0, `staging show failed:\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** Runs `ferry ARGS --json` and asserts success; returns the parsed output. */
export async function cliJson(d: Ferryd, args: string[], timeoutMs?: number): Promise<any> {
  const r = await d.cli([...args, '--json'], { timeoutMs });
  assert.equal(r.code, 0, `ferry ${args.join(' ')} failed:\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** Runs `ferry ARGS --json` expecting failure with `code`; returns the error message. */
export async function cliFails(d: Ferryd, args: string[], code: string): Promise<string> {
  const r = await d.cli([...args, '--json']);
  assert.notEqual(r.code, 0, `ferry ${args.join(' ')} should have failed with ${code}:\n${r.stdout}`);
  const body = lastJson<{ error: { code: string; message: string } }>(r.stderr);
  assert.equal(body.error.code, code, `ferry ${args.join(' ')}: ${r.stderr}`);
  return body.error.message;
}

/** A staging area in good health: every copy healthy, nothing failed, no committer error. */
export function assertHealthy(s: any, copies: number): void {
  assert.equal(s.degraded, false, `staging area degraded: ${JSON.stringify(s.copies)}`);
  assert.equal(s.copies.length, copies, JSON.stringify(s.copies));
  for (const c of s.copies) assert.ok(c.healthy && !c.rebuilding && !c.problem, `copy not healthy: ${JSON.stringify(c)}`);
  assert.equal(s.committerError, null);
  assert.ok(s.durableSeq <= s.writtenSeq && s.writtenSeq < s.nextSeq, JSON.stringify(s));
  assert.ok(s.usedBytes >= 0 && s.usedBytes <= s.ringBytes, JSON.stringify(s));
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Asserts every byte of `file` in [offset, offset+length) is `value`. */
export function assertFileBytes(file: string, offset: number, length: number, value: number, what: string): void {
  const buf = Buffer.alloc(length);
  const fd = fs.openSync(file, 'r');
  try {
    fs.readSync(fd, buf, 0, length, offset);
  } finally {
    fs.closeSync(fd);
  }
  const bad = buf.findIndex((b) => b !== value);
  assert.equal(bad, -1, `${what}: byte ${offset + bad} is ${buf[bad]}, expected ${value}`);
}
