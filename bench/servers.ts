// The NBD servers the benchmark compares. Each gets its own backing file (same size,
// same content, same file system) and serves it over loopback TCP. Add a server by
// appending to `servers`. Ferry variants are further subjects with their own targets,
// via ferryServer(name, {setup}): `ferry-staged` (a staging area attached, issue 3) and
// `ferry-mirrored` (a local mirror, in sync before the first run: steady state, issue 4);
// a variant can be limited to the workloads it is about (`rows`).
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { FERRY_BIN } from '../test/harness.js';
import { freePort, isRunning, run, sleep, spawnTracked, stopChild, waitFor } from './proc.js';

export interface ServerContext {
  /** Scratch directory for this server (its data directory lives here if it needs one). */
  dir: string;
  /** The backing file to serve; already at its final size and fully written. */
  file: string;
  size: number;
}

export interface StartedServer {
  uri: string;
  pid: number;
  /** The command line that started it, for the report. */
  command: string;
  stop(): Promise<void>;
}

/** Throughput of `subject` divided by that of `baseline` must be >= ratio (> ratio when strict). */
export interface Target {
  baseline: string;
  ratio: number;
  strict?: boolean;
}

export interface ServerDef {
  name: string;
  /** Subjects are measured against baselines; ratio columns exist for subjects only. */
  role: 'subject' | 'baseline';
  targets?: Target[];
  /** Where the targets come from, for the report (e.g. "issue 3: faster than the disk written directly"). */
  targetNote?: string;
  /** Only these workloads (row ids); every workload when absent. */
  rows?: string[];
  /** How the server was set up after it started, for the report's method section. */
  setupNote?: string;
  start(ctx: ServerContext): Promise<StartedServer>;
}

const quote = (args: string[]): string => args.map((a) => (/^[\w./:=@,+-]+$/.test(a) ? a : `'${a}'`)).join(' ');

/** Waits until the export answers a real NBD handshake and has the expected size. */
async function waitForExport(uri: string, size: number, child: ChildProcess, stderr: () => string): Promise<void> {
  await waitFor(uri, 30_000, async () => {
    if (!isRunning(child)) throw new Error(`${uri}: server exited (${child.exitCode ?? child.signalCode})\n${stderr()}`);
    const r = await run('nbdinfo', ['--size', uri], 5_000);
    if (r.code !== 0) return false;
    if (Number(r.stdout.trim()) !== size) throw new Error(`${uri}: export size ${r.stdout.trim()}, expected ${size}`);
    return true;
  });
}

function captureStderr(child: ChildProcess): () => string {
  let text = '';
  child.stderr!.on('data', (b: Buffer) => {
    text = (text + b.toString()).slice(-16_384);
  });
  child.stdout!.resume();
  return () => text;
}

/**
 * ferryd as test/harness.ts starts it (node bin/ferry.cjs serve, ephemeral ports), with
 * the backing file adopted as disk `bench`. `setup` may reconfigure the disk through
 * the API before the benchmark starts (staging, mirrors…). BENCH_FERRY_NODE_ARGS are extra
 * node options for ferryd (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof", which NODE_OPTIONS refuses).
 */
export function ferryServer(
  name: string,
  opts: {
    setup?: (api: FerryApi, ctx: ServerContext) => Promise<void>;
    targets?: Target[];
    targetNote?: string;
    rows?: string[];
    setupNote?: string;
    role?: ServerDef['role'];
    bin?: string;
  } = {},
): ServerDef {
  const { setup, targets } = opts;
  const bin = opts.bin ?? FERRY_BIN;
  return {
    name,
    role: opts.role ?? 'subject',
    targets: targets ?? [
      { baseline: 'nbdkit', ratio: 0.8 },
      { baseline: 'qemu-nbd', ratio: 1.0, strict: true },
    ],
    targetNote: opts.targetNote ?? 'at least 0.8× nbdkit on every row and ahead of qemu-nbd (> 1.0×) for an unmirrored disk',
    rows: opts.rows,
    setupNote: opts.setupNote,
    async start(ctx) {
      const dataDir = path.join(ctx.dir, 'data');
      fs.mkdirSync(dataDir);
      const nodeArgs = (process.env.BENCH_FERRY_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);
      const args = [...nodeArgs, bin, 'serve', '--data', dataDir, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', ...(hasReplListener(bin) ? ['--repl', '127.0.0.1:0'] : [])];
      const child = spawnTracked(process.execPath, args);
      const stderr = captureStderr(child);
      let stdout = '';
      const listening = await new Promise<{ nbd: string; api: string }>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`ferryd did not start in 30 s\n${stdout}\n${stderr()}`)), 30_000);
        const onData = (b: Buffer): void => {
          stdout += b.toString();
          const nbd = /NBD listening on (\S+:\d+)/.exec(stdout);
          const api = /API listening on (http:\/\/\S+)/.exec(stdout);
          if (nbd && api) {
            clearTimeout(timer);
            child.stdout!.off('data', onData);
            resolve({ nbd: nbd[1]!, api: api[1]! });
          }
        };
        child.stdout!.on('data', onData);
        child.once('exit', (code) => {
          clearTimeout(timer);
          reject(new Error(`ferryd exited with ${code} before listening\n${stdout}\n${stderr()}`));
        });
      });
      const stop = () => stopChild(child, 15_000);
      try {
        const token = fs.readFileSync(path.join(dataDir, 'api-token'), 'utf8').trim();
        const api: FerryApi = async (method, url, body) => {
          const res = await fetch(listening.api + url, {
            method,
            headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
            body: body === undefined ? undefined : JSON.stringify(body),
            signal: AbortSignal.timeout(30_000),
          });
          const text = await res.text();
          if (res.status >= 300) throw new Error(`ferryd ${method} ${url}: ${res.status} ${text}`);
          return text ? JSON.parse(text) : undefined;
        };
        await api('POST', '/v1/disks/adopt', { name: 'bench', path: ctx.file });
        if (setup) await setup(api, ctx);
        const uri = `nbd://${listening.nbd}/bench`;
        await waitForExport(uri, ctx.size, child, stderr);
        return { uri, pid: child.pid!, command: `\`node ${quote(args.map((a) => (a === bin ? path.relative(process.cwd(), bin) : a)))}\`, then \`POST /v1/disks/adopt {name, path}\` (UV_THREADPOOL_SIZE ${process.env.UV_THREADPOOL_SIZE ?? '16, the bin/ferry.cjs default'})`, stop };
      } catch (err) {
        await stop();
        throw err;
      }
    },
  };
}

/** Checkouts with site-to-site replication listen on a third port (default 7401): every ferryd of a run needs its own. */
function hasReplListener(bin: string): boolean {
  try {
    return fs.readFileSync(path.resolve(path.dirname(bin), '..', 'src', 'cli', 'main.ts'), 'utf8').includes("'--repl <");
  } catch {
    return false;
  }
}

export type FerryApi = (method: string, url: string, body?: unknown) => Promise<any>;

/** A server that takes a port on its command line and runs in the foreground. */
function externalServer(name: string, argv: (port: number, file: string) => string[], exportName = ''): ServerDef {
  return {
    name,
    role: 'baseline',
    async start(ctx) {
      const port = await freePort();
      const args = argv(port, ctx.file);
      const child = spawnTracked(args[0]!, args.slice(1));
      const stderr = captureStderr(child);
      const stop = () => stopChild(child, 10_000);
      try {
        const uri = `nbd://127.0.0.1:${port}/${exportName}`;
        await waitForExport(uri, ctx.size, child, stderr);
        return { uri, pid: child.pid!, command: `\`${quote(args)}\``, stop };
      } catch (err) {
        await stop();
        throw err;
      }
    },
  };
}

// nbdkit's file plugin: page cache (cache=default), default 16 threads, flush = fdatasync.
export const nbdkit = externalServer('nbdkit', (port, file) => ['nbdkit', '-f', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(port), 'file', file]);

// qemu-nbd: raw, page cache (cache=writeback: no O_DIRECT, flush = fdatasync), libuv-like thread pool for I/O.
export const qemuNbd = externalServer(
  'qemu-nbd',
  (port, file) => ['qemu-nbd', '-f', 'raw', '-x', 'bench', '-b', '127.0.0.1', '-p', String(port), '--cache=writeback', '--aio=threads', '-t', file],
  'bench',
);

// node-floor (bench/node-floor.ts): the least a Node.js NBD server does per request (sleeping
// between requests), for the QD1 rows only: Ferry's own cost per request, and its polling's gain.
export const nodeFloor: ServerDef = {
  ...externalServer('node-floor', (port, file) => [process.execPath, '--import', 'tsx', path.join(import.meta.dirname, 'node-floor.ts'), file, String(port)]),
  rows: ['randwrite-4k-qd1', 'randwrite-4k-qd1-fsync'],
};

/**
 * Ferry builds from other checkouts, for A/B measurements of a change in the same run:
 * BENCH_FERRY_ALT="base=/path/to/checkout[,name=/path…]" adds each as a baseline server
 * "ferry@name" (so every subject gets a "vs ferry@name" column); BENCH_FERRY_ROOT runs
 * the "ferry" subject itself from another checkout.
 */
function alternates(): ServerDef[] {
  return (process.env.BENCH_FERRY_ALT ?? '')
    .split(',')
    .filter(Boolean)
    .map((spec) => {
      const [name, root] = spec.split('=');
      if (!name || !root) throw new Error(`BENCH_FERRY_ALT: expected name=/path, got '${spec}'`);
      return ferryServer(`ferry@${name}`, { role: 'baseline', bin: path.resolve(root, 'bin', 'ferry.cjs'), targets: [] });
    });
}

const ferryRoot = process.env.BENCH_FERRY_ROOT;
/** The ferry.cjs every Ferry subject runs (BENCH_FERRY_ROOT: another checkout's). */
export const ferryBin = ferryRoot ? path.resolve(ferryRoot, 'bin', 'ferry.cjs') : FERRY_BIN;

/** Staging area of the staged and mirrored subjects: large enough that 10 s of 4 KiB QD32 writes never wait for space. */
export const BENCH_STAGING_SIZE = '1G';

/** Polls the mirror of `disk` until it is in sync; returns the last status. */
export async function waitInSync(api: FerryApi, disk: string, timeoutMs: number, pollMs = 20): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const st = await api('GET', `/v1/disks/${disk}/mirror`);
    if (st.state === 'in-sync') return st;
    if (st.syncError || st.committerError) throw new Error(`mirror of ${disk}: ${st.syncError ?? st.committerError}`);
    if (Date.now() > deadline) throw new Error(`mirror of ${disk} not in sync after ${timeoutMs} ms: ${JSON.stringify(st)}`);
    await sleep(pollMs);
  }
}

/** Issue 3: a disk with a staging area attached. */
const ferryStaged = ferryServer('ferry-staged', {
  bin: ferryBin,
  rows: ['randwrite-4k-qd32', 'randwrite-4k-qd1-fsync'],
  targets: [{ baseline: 'ferry', ratio: 1.0, strict: true }],
  targetNote: 'issue 3: writes through the staging area faster than to the disk directly (> 1.0× ferry)',
  setupNote: `\`POST /v1/disks/bench/staging {path, size: ${BENCH_STAGING_SIZE}}\` (a preallocated staging file in the same directory)`,
  setup: async (api, ctx) => {
    await api('POST', '/v1/disks/bench/staging', { path: path.join(ctx.dir, 'staging.img'), size: BENCH_STAGING_SIZE });
  },
});

/** Issue 4: a disk with a local mirror, synced before the first run (steady state). */
const ferryMirrored = ferryServer('ferry-mirrored', {
  bin: ferryBin,
  rows: ['randwrite-4k-qd32'],
  targets: [{ baseline: 'nbdkit', ratio: 0.8 }],
  targetNote: 'issue 4: a mirrored disk in steady state; the target is the 0.8× nbdkit of every row',
  setupNote: `\`POST /v1/disks/bench/mirror {to: local:…/mirror.img, staging, stagingSize: ${BENCH_STAGING_SIZE}}\`, then polled until \`in-sync\``,
  setup: async (api, ctx) => {
    await api('POST', '/v1/disks/bench/mirror', { to: `local:${path.join(ctx.dir, 'mirror.img')}`, staging: path.join(ctx.dir, 'staging.img'), stagingSize: BENCH_STAGING_SIZE });
    await waitInSync(api, 'bench', 300_000, 100);
  },
});

/** Every server in a run, in the order they are interleaved. The first subject is "ferry". */
export const servers: ServerDef[] = [ferryServer('ferry', { bin: ferryBin }), ferryStaged, ferryMirrored, nbdkit, qemuNbd, nodeFloor, ...alternates()];
