// The NBD servers the benchmark compares. Each gets its own backing file (same size,
// same content, same file system) and serves it over loopback TCP. Add a server by
// appending to `servers`. Ferry variants are further subjects with their own targets,
// via ferryServer(name, {setup}): `ferry-staged` (a staging area attached, issue 3),
// `ferry-mirrored` (a local mirror, in sync before the first run: steady state, issue 4) and
// `ferry-remote` (site A of a remote mirror to a second ferryd, site B, started with it on
// loopback and caught up before every run: issues 5 and 11); a variant can be limited to the
// workloads it is about (`rows`), a target to some rows (`Target.rows`).
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { FERRY_BIN } from '../test/harness.js';
import { freePort, isRunning, run, sleep, spawnTracked, stopChild, waitFor } from './proc.js';
import { caughtUp, pairSites, RemoteMirrors, replicationAddress } from './sites.js';

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
  /** Ferry's API (ferryd only). */
  api?: FerryApi;
  /** Another process that works for this subject (site B of a remote mirror): its CPU is measured over each run beside the server's, and is not counted as noise. */
  peer?: { name: string; pid: number };
  /** Brings the server back to its steady state (staging area drained, mirror caught up); the run calls it before and after each fio run. */
  prepare?(): Promise<void>;
  /** What the run polls while fio runs: the staging area's fill (0..1), the mirror's state and lag. */
  probe?(): Promise<Probe>;
}

export interface Probe {
  /** Bytes of the staging area's ring some consumer still needs, over the ring's size. */
  stagingFill?: number;
  /** The mirror's state (in-sync, bitmap, resyncing…). */
  mirrorState?: string;
  lagSeconds?: number;
}

/** Throughput of `subject` divided by that of `baseline` must be >= ratio (> ratio when strict). */
export interface Target {
  baseline: string;
  ratio: number;
  strict?: boolean;
  /** Only on these workloads (row ids); every row the subject runs when absent. */
  rows?: string[];
}

/** The target of subject `s` against `baseline` on workload `row`, if any. */
export const targetFor = (s: ServerDef, row: string, baseline: string): Target | undefined => s.targets?.find((t) => t.baseline === baseline && (!t.rows || t.rows.includes(row)));

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
    /** What prepare() waits for and probe() reads: a staging area, a local or remote mirror of disk `bench`. */
    watch?: { staging?: boolean; mirror?: 'local' | 'remote' };
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
        const w = opts.watch;
        return {
          uri,
          pid: child.pid!,
          command: `\`node ${quote(args.map((a) => (a === bin ? path.relative(process.cwd(), bin) : a)))}\`, then \`POST /v1/disks/adopt {name, path}\` (UV_THREADPOOL_SIZE ${process.env.UV_THREADPOOL_SIZE ?? '16, the bin/ferry.cjs default'})`,
          stop,
          api,
          ...(w?.staging || w?.mirror
            ? {
                prepare: async () => {
                  if (w.mirror === 'remote') await caughtUp(api, 'bench', 300_000);
                  else if (w.mirror === 'local') await waitInSync(api, 'bench', 300_000, 50);
                  if (w.staging || w.mirror) await drained(api, 'bench');
                },
                probe: async () => {
                  const p: Probe = {};
                  if (w.staging || w.mirror) {
                    const st = await api('GET', '/v1/disks/bench/staging');
                    p.stagingFill = st.usedBytes / st.ringBytes;
                  }
                  if (w.mirror) {
                    const m = await api('GET', '/v1/disks/bench/mirror');
                    p.mirrorState = m.state;
                    p.lagSeconds = m.lagSeconds;
                  }
                  return p;
                },
              }
            : {}),
        };
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

/**
 * Staging area of the staged and mirrored subjects (and of the mirror and remote mirror
 * measurements, and of site B's replicas). A full staging area makes writes wait for space
 * (or, for a remote mirror with its default `onFull: bitmap`, falls back to a dirty bitmap):
 * a legitimate measurement, but one to know about, so the run polls each subject's fill and
 * the report shows its peak per row and subject (bench/report.ts, the issue 11 section).
 */
export const BENCH_STAGING_SIZE = '1G';

/** Waits until every consumer of `disk`'s staging area has taken every record, or until none has moved for 2 s (at most 60 s). */
export async function drained(api: FerryApi, disk: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  let since = Date.now();
  for (;;) {
    const st = await api('GET', `/v1/disks/${disk}/staging`);
    const consumers = st.consumers as Array<{ nextSeq: number; pendingRecords: number }>;
    if (consumers.every((c) => c.pendingRecords === 0)) return;
    const now = Date.now();
    const key = consumers.map((c) => c.nextSeq).join(',');
    if (key !== last) {
      last = key;
      since = now;
    } else if (now - since > 2_000 || now > deadline) return;
    await sleep(50);
  }
}

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

/** Issue 3: a disk with a staging area attached. Every row (issue 11); issue 3's target on the rows it had. */
const ferryStaged = ferryServer('ferry-staged', {
  bin: ferryBin,
  watch: { staging: true },
  targets: [{ baseline: 'ferry', ratio: 1.0, strict: true, rows: ['randwrite-4k-qd32', 'randwrite-4k-qd1-fsync'] }],
  targetNote: 'issue 3: writes through the staging area faster than to the disk directly (> 1.0× ferry), on the 4 KiB QD32 and QD1 fsync=1 rows; issue 11\'s targets for every row are in their own section below',
  setupNote: `\`POST /v1/disks/bench/staging {path, size: ${BENCH_STAGING_SIZE}}\` (a preallocated staging file in the same directory)`,
  setup: async (api, ctx) => {
    await api('POST', '/v1/disks/bench/staging', { path: path.join(ctx.dir, 'staging.img'), size: BENCH_STAGING_SIZE });
  },
});

/** Issue 4: a disk with a local mirror, synced before the first run (steady state). Every row (issue 11); issue 4's target on the row it had. */
const ferryMirrored = ferryServer('ferry-mirrored', {
  bin: ferryBin,
  watch: { staging: true, mirror: 'local' },
  targets: [{ baseline: 'nbdkit', ratio: 0.8, rows: ['randwrite-4k-qd32'] }],
  targetNote: 'issue 4: a mirrored disk in steady state; the target is the 0.8× nbdkit of every row (a verdict on the 4 KiB QD32 row, the one it ran before issue 11)',
  setupNote: `\`POST /v1/disks/bench/mirror {to: local:…/mirror.img, staging, stagingSize: ${BENCH_STAGING_SIZE}}\`, then polled until \`in-sync\``,
  setup: async (api, ctx) => {
    await api('POST', '/v1/disks/bench/mirror', { to: `local:${path.join(ctx.dir, 'mirror.img')}`, staging: path.join(ctx.dir, 'staging.img'), stagingSize: BENCH_STAGING_SIZE });
    await waitInSync(api, 'bench', 300_000, 100);
  },
});

/**
 * Site B of a remote mirror: a ferryd in its own data directory whose own `bench` disk is a
 * 1 MiB placeholder (the ferryd helper adopts one); replicas are new disks in its pool.
 */
export async function startSiteB(dir: string, bin: string, name = 'site-b'): Promise<{ server: StartedServer; api: FerryApi }> {
  fs.mkdirSync(dir, { recursive: true });
  const placeholder = path.join(dir, 'placeholder.img');
  const fd = fs.openSync(placeholder, 'wx');
  try {
    fs.writeSync(fd, Buffer.alloc(1024 * 1024), 0, 1024 * 1024, 0);
    fs.fdatasyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  let api!: FerryApi;
  const server = await ferryServer(name, { bin, setup: async (a) => void (api = a) }).start({ dir, file: placeholder, size: 1024 * 1024 });
  return { server, api };
}

const remoteNote = `site B: the same command in \`site-b/\` of its directory (a 1 MiB placeholder disk); paired through the API (\`ferry peer token\` on B, \`ferry peer add site-b --address B's replication listener --token T\` on A, TLS); \`POST /v1/disks/bench/staging {path, size: ${BENCH_STAGING_SIZE}}\`, then \`POST /v1/disks/bench/mirror {to: site-b:replica-0}\` (B creates the replica with a ${BENCH_STAGING_SIZE} staging area; zstd, onFull bitmap: the defaults), then polled until caught up (in sync, consistent, lag 0, link connected)`;

/**
 * Issues 5 and 11: site A of a remote mirror in steady state. Starts site B, pairs the two
 * (bench/sites.ts, as the remote mirror measurements do), mirrors `bench` onto a replica at B
 * and waits for the initial sync. Site B's CPU is measured over every run (`peer`); before
 * and after every run the mirror is caught up again. Issue 5's target on the row it had.
 */
const ferryRemoteDef = (setup?: (api: FerryApi, ctx: ServerContext) => Promise<void>): ServerDef =>
  ferryServer('ferry-remote', {
    bin: ferryBin,
    watch: { staging: true, mirror: 'remote' },
    targets: [{ baseline: 'nbdkit', ratio: 0.8, rows: ['randwrite-4k-qd32'] }],
    targetNote: 'issue 5: writes at site A of a remote mirror in steady state; the target is the 0.8× nbdkit of every row (a verdict on the 4 KiB QD32 row, the one `remote-mirrored-qd32` measured before issue 11)',
    setupNote: remoteNote,
    setup,
  });
const ferryRemote: ServerDef = {
  ...ferryRemoteDef(),
  async start(ctx) {
    const b = await startSiteB(path.join(ctx.dir, 'site-b'), ferryBin, 'ferry-remote-site-b');
    try {
      const a = await ferryRemoteDef(async (apiA) => {
        await apiA('POST', '/v1/disks/bench/staging', { path: path.join(ctx.dir, 'staging.img'), size: BENCH_STAGING_SIZE });
        await pairSites(apiA, b.api, await replicationAddress(b.api));
        await new RemoteMirrors(apiA, b.api).create('bench');
        await caughtUp(apiA, 'bench', 600_000);
      }).start(ctx);
      return {
        ...a,
        command: a.command,
        peer: { name: 'site B', pid: b.server.pid },
        // The mirror is left as it is (no drain): stopping site A, then B, ends the run.
        stop: async () => {
          await a.stop();
          await b.server.stop();
        },
      };
    } catch (err) {
      await b.server.stop();
      throw err;
    }
  },
};

/** Every server in a run, in the order they are interleaved. The first subject is "ferry". */
export const servers: ServerDef[] = [ferryServer('ferry', { bin: ferryBin }), ferryStaged, ferryMirrored, ferryRemote, nbdkit, qemuNbd, nodeFloor, ...alternates()];
