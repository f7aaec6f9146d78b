// Helpers for the consistency group tests: the cross-disk causal workload
// (causal-workload.py) in the background, and its checker (causal-check.py) over the images
// of the disks it wrote, both run with /usr/bin/python3 (it has the libnbd bindings). The
// block format is also here (causalBlock) so in-process tests can build images the checker
// reads, and the log is parsed here (readCausalLog) for tests that wait on what the workload
// did (a condition on the log, never a sleep).
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';
import { describeRun, lastJson, run, waitFor, type Cleanup } from '../harness.js';
import { PYTHON, SYSTEM_ENV, TOOL_TIMEOUT_MS } from '../staging/helpers.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const CAUSAL_WORKLOAD = path.join(HERE, 'causal-workload.py');
export const CAUSAL_CHECK = path.join(HERE, 'causal-check.py');
export const BLOCK_BYTES = 4096;

export interface CausalWorkload {
  child: ChildProcess;
  /** Resolves true once every handle is connected (false: it exited first). */
  connected: Promise<boolean>;
  /** Resolves with the summary when it exits (asserting exit 0). */
  done: Promise<CausalWorkloadSummary>;
  /** SIGINT: it stops issuing, drains, flushes every disk and disconnects; resolves like `done`. */
  stop(): Promise<CausalWorkloadSummary>;
}

export interface CausalWorkloadSummary {
  disks: number;
  issued: number;
  acked: number;
  failed: number;
  /** Writes issued, in response to an acknowledgement, to another disk than the acknowledging one. */
  chained: number;
  /** Per disk (in the order of the URIs): writes issued and acknowledged, most in flight at once. */
  perDisk: Array<{ issued: number; acked: number; maxInFlight: number }>;
  /** Why it ended early (a connection died: the server was killed), else null. */
  error: string | null;
  /** The counter the next write would have had (counters start at 1). */
  next: number;
}

export interface CausalWorkloadOptions {
  /** Blocks of 4 KiB written on each disk: [0, blocks). */
  blocks: number;
  seed: number;
  maxSeconds: number;
  /** Writes in flight on each disk's connection (default 8). */
  depth?: number;
}

/**
 * Starts causal-workload.py on `uris` (disk k = uris[k]) appending to `log` (see the
 * script's header for the log format and the causality it builds). Killed at cleanup if
 * still running, and after maxSeconds + 60 s whatever happens.
 */
export function startCausalWorkload(cleanup: Cleanup, uris: string[], log: string, opts: CausalWorkloadOptions): CausalWorkload {
  assert.ok(uris.length > 0 && uris.every((u) => !u.includes(',')), `bad URIs: ${uris.join(' ')}`);
  const args = [CAUSAL_WORKLOAD, uris.join(','), log, String(opts.blocks), String(opts.seed), String(opts.maxSeconds), String(opts.depth ?? 8)];
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
    assert.equal(code, 0, `causal workload failed: exit ${code} ${signal ?? ''}\nstdout: ${out.slice(-2000)}\nstderr: ${err.slice(-4000)}`);
    return lastJson<CausalWorkloadSummary>(out);
  });
  return {
    child,
    connected,
    done,
    stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
      return done;
    },
  };
}

export interface CausalViolation {
  /** The acknowledged write the cut lacks; `shows` is the write its block holds instead (0: zeroes). */
  missing: { disk: number; block: number; counter: number; ackIndex: number; shows: number };
  /** The earliest write of the cut issued after that acknowledgement (it depends on it). */
  dependent: { disk: number; block: number; counter: number; acks: number };
  /** True when the dependent write is on another disk and no write of the missing one's disk in the cut needs it. */
  crossDisk: boolean;
}

export interface CausalCheck {
  disks: number;
  issued: number;
  acked: number;
  failed: number;
  /** The largest `acks` value of a write in the cut: the first maxAcks acknowledged writes must be in it. */
  maxAcks: number;
  /** Acknowledged writes in the cut. */
  ackedInCut: number;
  perDisk: Array<{ issued: number; writtenBlocks: number; highest: number; maxAcks: number }>;
  torn: number;
  unissued: number;
  causalViolations: number;
  sameDiskViolations: number;
  crossDiskViolations: number;
  /** With `acked`: acknowledged writes not in the cut. */
  lostAcked: number;
  /** The log breaks what the rules assume (then nothing else can be trusted). */
  logErrors: number;
  /** The first causal violations (up to 10). */
  violations: CausalViolation[];
  /** The first problems of every kind, in words (up to 50). */
  errors: string[];
}

/**
 * Runs causal-check.py over `images` (disk k = images[k]: files or nbd:// URIs), blocks
 * [0, blocks) of each, against the workload's `log`. `acked`: every acknowledged write must
 * be in the images too (a primary after kill -9). Asserts only that the checker ran; the
 * caller asserts on the summary (assertCausal for "all is well").
 */
export async function causalCheck(images: string[], log: string, blocks: number, opts: { acked?: boolean } = {}): Promise<CausalCheck> {
  const args = [CAUSAL_CHECK, images.join(','), log, String(blocks), ...(opts.acked ? ['--acked'] : [])];
  const r = await run(PYTHON, args, { env: SYSTEM_ENV, timeoutMs: TOOL_TIMEOUT_MS });
  assert.equal(r.code, 0, `causal checker failed:\n${describeRun('causal-check.py', args, r)}`);
  return lastJson<CausalCheck>(r.stdout);
}

/** Asserts a check found nothing wrong: intact, issued, causal (and, if checked, nothing acknowledged lost). */
export function assertCausal(c: CausalCheck, where: string): void {
  const what = `${where}: ${JSON.stringify(c)}`;
  assert.deepEqual(c.errors, [], what);
  assert.equal(c.logErrors, 0, what);
  assert.equal(c.torn, 0, what);
  assert.equal(c.unissued, 0, what);
  assert.equal(c.causalViolations, 0, what);
  assert.equal(c.lostAcked, 0, what);
}

/** The bytes of a block written by the workload: write `counter` to block `block` of disk `disk` (the format causal-workload.py writes). */
export function causalBlock(disk: number, block: number, counter: number): Buffer {
  const mask = (1n << 64n) - 1n;
  const buf = Buffer.alloc(BLOCK_BYTES);
  buf.write('FERRYCW1', 0, 'latin1');
  buf.writeBigUInt64LE(BigInt(disk), 8);
  buf.writeBigUInt64LE(BigInt(block), 16);
  buf.writeBigUInt64LE(BigInt(counter), 24);
  const c = BigInt(counter);
  const pattern = Buffer.alloc(16);
  pattern.writeBigUInt64LE((c * 0x9e3779b97f4a7c15n) & mask, 0);
  pattern.writeBigUInt64LE(((BigInt(block) * 0xc2b2ae3d27d4eb4fn) ^ (BigInt(disk) << 56n) ^ c) & mask, 8);
  for (let at = 32; at < BLOCK_BYTES - 4; at += 16) pattern.copy(buf, at, 0, Math.min(16, BLOCK_BYTES - 4 - at));
  buf.writeUInt32LE(zlib.crc32(buf.subarray(0, BLOCK_BYTES - 4)), BLOCK_BYTES - 4);
  return buf;
}

export interface CausalLog {
  /** Issued writes by counter. */
  writes: Map<number, { disk: number; block: number; acks: number; ackIndex: number | null }>;
  /** Counters in acknowledgement order. */
  ackOrder: number[];
  /** The highest counter issued (0: none). */
  lastCounter: number;
}

/** Parses a causal workload log (complete lines only: it may still be growing). */
export function readCausalLog(log: string): CausalLog {
  const writes: CausalLog['writes'] = new Map();
  const ackOrder: number[] = [];
  let lastCounter = 0;
  const text = fs.readFileSync(log, 'utf8');
  for (const line of text.slice(0, text.lastIndexOf('\n') + 1).split('\n')) {
    const p = line.split(' ');
    if (p[0] === 'I') {
      const c = Number(p[1]);
      writes.set(c, { disk: Number(p[2]), block: Number(p[3]), acks: Number(p[4]), ackIndex: null });
      lastCounter = Math.max(lastCounter, c);
    } else if (p[0] === 'A') {
      const w = writes.get(Number(p[1]));
      assert.ok(w, `log ${log}: acknowledgement of unissued write ${p[1]}`);
      w.ackIndex = ackOrder.length;
      ackOrder.push(Number(p[1]));
    }
  }
  return { writes, ackOrder, lastCounter };
}

/** The highest write counter an image file shows in blocks [0, blocks) (0: none), skipping anything not a whole tagged block of `disk`. */
export function highestCounterIn(file: string, disk: number, blocks: number): number {
  const fd = fs.openSync(file, 'r');
  const chunk = Buffer.alloc(256 * BLOCK_BYTES);
  let highest = 0;
  try {
    for (let first = 0; first < blocks; first += 256) {
      const n = fs.readSync(fd, chunk, 0, Math.min(256, blocks - first) * BLOCK_BYTES, first * BLOCK_BYTES);
      for (let at = 0; at + BLOCK_BYTES <= n; at += BLOCK_BYTES) {
        if (chunk.toString('latin1', at, at + 8) !== 'FERRYCW1' || chunk.readBigUInt64LE(at + 8) !== BigInt(disk)) continue;
        const c = Number(chunk.readBigUInt64LE(at + 24));
        if (c > highest) highest = c;
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return highest;
}

/** The workload's seed: FERRY_CAUSAL_SEED, or a random one; told in the test's output either way (a failure is replayed with it). */
export function seedFor(t: { diagnostic(m: string): void }): number {
  const seed = process.env.FERRY_CAUSAL_SEED ? Number(process.env.FERRY_CAUSAL_SEED) : Math.floor(Math.random() * 2 ** 31);
  t.diagnostic(`FERRY_CAUSAL_SEED=${seed}`);
  return seed;
}

/** Waits until the log has at least `acks` acknowledgements. */
export function waitAcks(log: string, acks: number, timeoutMs = 60_000): Promise<void> {
  return waitFor(`${acks} acknowledged writes in ${log}`, () => fs.existsSync(log) && readCausalLog(log).ackOrder.length >= acks, timeoutMs);
}
