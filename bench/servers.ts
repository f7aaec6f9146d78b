// The NBD servers the benchmark compares. Each gets its own backing file (same size,
// same content, same file system) and serves it over loopback TCP. Add a server by
// appending to `servers`: a later issue adds Ferry variants (staged disk, mirrored
// disk) as further subjects with their own targets, via ferryServer(name, setup).
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { FERRY_BIN } from '../test/harness.js';
import { freePort, isRunning, run, spawnTracked, stopChild, waitFor } from './proc.js';

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
  opts: { setup?: (api: FerryApi) => Promise<void>; targets?: Target[]; role?: ServerDef['role']; bin?: string } = {},
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
    async start(ctx) {
      const dataDir = path.join(ctx.dir, 'data');
      fs.mkdirSync(dataDir);
      const nodeArgs = (process.env.BENCH_FERRY_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);
      const args = [...nodeArgs, bin, 'serve', '--data', dataDir, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0'];
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
        if (setup) await setup(api);
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

/** Every server in a run, in the order they are interleaved. The first subject is "ferry". */
export const servers: ServerDef[] = [
  ferryServer('ferry', ferryRoot ? { bin: path.resolve(ferryRoot, 'bin', 'ferry.cjs') } : {}),
  nbdkit,
  qemuNbd,
  ...alternates(),
];
