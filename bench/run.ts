// `npm run bench`: Ferry against nbdkit and qemu-nbd, side by side in one run.
// Creates one backing file per server (same size and content, one temp directory),
// starts every server, runs each workload of bench/rows.ts against every server of
// bench/servers.ts (interleaved, repeated, median), then the mirror measurements of
// bench/mirror-rows.ts (sync, writes during a sync, swap) on a ferryd of their own and the
// remote mirror ones of bench/replication-rows.ts, prints markdown tables (with issue 11's
// cost of staging and mirroring: bench/report.ts) and writes docs/BENCHMARKS.md. Every process and temp file is
// removed at the end, on failure, on SIGINT/SIGTERM and when the watchdog fires.
//
//   npm run bench                    full run (BENCH_SECONDS=8, BENCH_RAMP=2, BENCH_REPEATS=3; about 35 min)
//   npm run bench -- --quick         3 s runs, 1 repeat, prints only
//   BENCH_ROWS=randwrite-4k-qd32 BENCH_SERVERS=ferry,nbdkit npm run bench -- --quick
//   BENCH_ROWS=mirror-sync-2g,mirror-swap-pause npm run bench -- --quick
//   BENCH_ROWS=randwrite-4k-qd8-fsync32 BENCH_SERVERS=ferry,ferry-staged,ferry-remote npm run bench -- --quick
//   BENCH_ROWS=group-4-disks npm run bench -- --quick   (issue 16: bench/group-rows.ts)
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT } from '../test/harness.js';
import { median, runFio, type Measurement, type Timing } from './fio.js';
import { mirrorRows as allMirrorRows, mirrorTable, runMirrorRows, type MirrorSection } from './mirror-rows.js';
import { replicationRows as allReplicationRows, runReplicationRows, type ReplicationSection } from './replication-rows.js';
import { drRows as allDrRows, runDrRows, type DrSection } from './dr-rows.js';
import { groupRows as allGroupRows, runGroupRows } from './group-rows.js';
import { dropPageCache, killAll, killAllSync, procStatusKiB, runOk, waitForQuiet } from './proc.js';
import { costTable, describeMachine, renderGenerated, resultsTable, verdicts, writeDoc, type Cell, type Results } from './report.js';
import { rows as allRows } from './rows.js';
import { ferryBin, servers as allServers, type ServerDef, type StartedServer } from './servers.js';

const argv = process.argv.slice(2);
const flag = (name: string): boolean => argv.includes(name);
const option = (name: string): string | undefined => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const envNum = (name: string, dflt: number): number => {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number, got '${v}'`);
  return n;
};
/** The subset of `all` named in env var `env` (every one when unset); names in `others` are known too. */
const pick = <T extends { id?: string; name?: string }>(all: T[], env: string, others: string[] = []): T[] => {
  const want = process.env[env]?.split(',').filter(Boolean);
  if (!want) return all;
  const got = all.filter((x) => want.includes((x.id ?? x.name)!));
  const unknown = want.filter((w) => !all.some((x) => (x.id ?? x.name) === w) && !others.includes(w));
  if (unknown.length) throw new Error(`${env}: unknown name(s) '${unknown.join(',')}'`);
  return got;
};

// Issue 5's `remote-mirrored-qd32` is the `ferry-remote` subject of the fio rows since issue 11.
if (process.env.BENCH_ROWS?.split(',').includes('remote-mirrored-qd32'))
  throw new Error('BENCH_ROWS: remote-mirrored-qd32 is now the ferry-remote subject of every fio row, e.g. BENCH_ROWS=randwrite-4k-qd32 BENCH_SERVERS=ferry,ferry-remote,nbdkit');
const quick = flag('--quick');
const keep = flag('--keep');
const timing: Timing = { seconds: envNum('BENCH_SECONDS', quick ? 3 : 8), rampSeconds: envNum('BENCH_RAMP', quick ? 1 : 2) };
const repeats = Math.round(envNum('BENCH_REPEATS', quick ? 1 : 3));
const sizeMiB = Math.round(envNum('BENCH_SIZE_MIB', 1024));
const rows = pick(allRows, 'BENCH_ROWS', [...allMirrorRows, ...allReplicationRows, ...allDrRows, ...allGroupRows].map((r) => r.id));
const mirrorIds = pick(allMirrorRows, 'BENCH_ROWS', [...allRows, ...allReplicationRows, ...allDrRows, ...allGroupRows].map((r) => r.id)).map((r) => r.id);
const replicationIds = pick(allReplicationRows, 'BENCH_ROWS', [...allRows, ...allMirrorRows, ...allDrRows, ...allGroupRows].map((r) => r.id)).map((r) => r.id);
const drIds = pick(allDrRows, 'BENCH_ROWS', [...allRows, ...allMirrorRows, ...allReplicationRows, ...allGroupRows].map((r) => r.id)).map((r) => r.id);
const groupIds = pick(allGroupRows, 'BENCH_ROWS', [...allRows, ...allMirrorRows, ...allReplicationRows, ...allDrRows].map((r) => r.id)).map((r) => r.id);
/** The servers a workload runs against: narrowed by the row's `servers` (where `ferry` goes, a `ferry@name` baseline goes too) and the server's `rows`. */
const rowServers = (row: (typeof rows)[number], among: ServerDef[]): ServerDef[] =>
  among.filter((s) => (!row.servers || row.servers.includes(s.name) || (s.name.startsWith('ferry@') && row.servers.includes('ferry'))) && (!s.rows || s.rows.includes(row.id)));
const pickedServers = pick(allServers, 'BENCH_SERVERS');
// Only servers some selected workload runs against are started.
const servers = pickedServers.filter((s) => rows.some((row) => rowServers(row, [s]).length > 0));
const partial = rows.length !== allRows.length || pickedServers.length !== allServers.length || mirrorIds.length !== allMirrorRows.length || replicationIds.length !== allReplicationRows.length || drIds.length !== allDrRows.length || groupIds.length !== allGroupRows.length;
const mirrorSizeMiB = Math.round(envNum('BENCH_MIRROR_SIZE_MIB', 2048));
const outFile = option('--out') ?? (quick || partial ? undefined : path.join(ROOT, 'docs', 'BENCHMARKS.md'));

const log = (msg: string): void => void process.stderr.write(`[bench] ${msg}\n`);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-'));
const started = new Map<string, StartedServer>();
let cleaned = false;

async function cleanup(): Promise<void> {
  if (cleaned) return;
  cleaned = true;
  await Promise.all([...started.values()].map((s) => s.stop().catch(() => undefined)));
  await killAll();
  if (!keep) fs.rmSync(tmp, { recursive: true, force: true });
  else log(`kept ${tmp}`);
}

process.on('exit', () => {
  killAllSync();
  if (!keep) fs.rmSync(tmp, { recursive: true, force: true });
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    log(`${sig}: cleaning up`);
    void cleanup().finally(() => process.exit(130));
  });
}

// Before each run, wait up to BENCH_QUIET_WAIT seconds (default 20; 0 = never) for the
// machine to be nearly idle (< 0.25 cores busy), so bursts of unrelated work miss most runs.
const quietWaitS = process.env.BENCH_QUIET_WAIT === '0' ? 0 : envNum('BENCH_QUIET_WAIT', quick ? 5 : 20);
const noiseMax = envNum('BENCH_NOISE_MAX', 0.3);
// Waiting for quiet and measuring disturbed runs again both come out of one budget for the
// whole run (BENCH_NOISE_BUDGET seconds), so a busy machine cannot stretch the run much.
const noiseBudgetS = process.env.BENCH_NOISE_BUDGET === '0' ? 0 : envNum('BENCH_NOISE_BUDGET', quick ? 30 : 120);
let noiseSpentS = 0;
const noiseLeftS = (): number => Math.max(0, noiseBudgetS - noiseSpentS);
/** Flushes dirty pages of the file's file system, then waits for a quiet machine within the budget. */
async function settle(file: string): Promise<void> {
  await runOk('sync', ['-f', file], 120_000);
  const waitS = Math.min(quietWaitS, noiseLeftS());
  if (waitS <= 0) return;
  const t = Date.now();
  await waitForQuiet(0.25, waitS * 1000);
  noiseSpentS += (Date.now() - t) / 1000;
}
const fioRuns = rows.reduce((n, row) => n + rowServers(row, servers).length, 0) * repeats;
// Watchdog: the whole run is bounded, whatever hangs.
// (+30 s a run for a mirror to catch up and a staging area to drain before and after it.)
const budgetS = fioRuns * 2 * (timing.seconds + timing.rampSeconds + 20) + fioRuns * 30 + noiseBudgetS + (mirrorIds.length ? 600 + repeats * 4 * (timing.seconds + timing.rampSeconds + 60) : 0) + (replicationIds.length ? 600 + repeats * 6 * (timing.seconds + timing.rampSeconds + 60) : 0) + drIds.length * 900 + (groupIds.length ? 900 + repeats * 2 * (timing.seconds + timing.rampSeconds + 60) : 0) + 300;
const watchdog = setTimeout(() => {
  log(`watchdog: run exceeded ${budgetS} s, aborting`);
  void cleanup().finally(() => process.exit(3));
}, budgetS * 1000);

/**
 * Writes the file once, fully (no holes, no unwritten extents), with the same bytes for every
 * server, then drops its pages from the page cache (dd's `oflag=nocache`: POSIX_FADV_DONTNEED
 * on the whole file, after the fdatasync). Kept, the pages of a file written sequentially are
 * large folios, more so for the files filled first (memory least fragmented): a server whose
 * file was filled first then measured up to 1.47x slower at 4 KiB random writes, whatever the
 * server (BENCHMARKS.md, "Finding: the unmirrored QD32..."). Dropped, every file starts alike.
 */
function fill(file: string, bytes: number, pattern: Buffer): void {
  const fd = fs.openSync(file, 'wx');
  try {
    for (let off = 0; off < bytes; off += pattern.length) fs.writeSync(fd, pattern, 0, Math.min(pattern.length, bytes - off), off);
    fs.fdatasyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  dropPageCache(file);
}

/**
 * Runs `fn` (one fio run) while polling the server's probe every 500 ms: the staging area's
 * highest fill, the mirror states seen, the mirror's lag when fio ended. Two small API
 * requests a second: a negligible load next to the I/O.
 */
async function watched(h: StartedServer, fn: () => Promise<Measurement>): Promise<Measurement> {
  const probe = h.probe;
  if (!probe) return fn();
  let stop = false;
  let peak: number | undefined;
  const states: string[] = [];
  const note = (p: Awaited<ReturnType<NonNullable<StartedServer['probe']>>>): void => {
    if (p.stagingFill !== undefined) peak = Math.max(peak ?? 0, p.stagingFill);
    if (p.mirrorState !== undefined && !states.includes(p.mirrorState)) states.push(p.mirrorState);
  };
  const poll = (async () => {
    while (!stop) {
      const t = Date.now();
      note(await probe().catch(() => ({})));
      while (!stop && Date.now() - t < 500) await new Promise((r) => setTimeout(r, 50));
    }
  })();
  try {
    const m = await fn();
    stop = true;
    await poll;
    const last = await probe().catch(() => ({}) as Awaited<ReturnType<typeof probe>>);
    note(last);
    return { ...m, ...(peak !== undefined ? { stagingPeak: peak } : {}), ...(states.length ? { mirrorStates: states } : {}), ...(last.lagSeconds !== undefined ? { lagAfterS: last.lagSeconds } : {}) };
  } finally {
    stop = true;
    await poll;
  }
}

async function main(): Promise<void> {
  log(`temp dir ${tmp}; ${rows.length} workloads, ${servers.length} servers, ${fioRuns} fio runs of (${timing.rampSeconds}+${timing.seconds}) s; mirror: ${mirrorIds.join(', ') || 'none'}; remote: ${replicationIds.join(', ') || 'none'}; dr: ${drIds.join(', ') || 'none'}; group: ${groupIds.join(', ') || 'none'}; noise budget ${noiseBudgetS} s; watchdog ${budgetS} s`);
  const machine = await describeMachine(tmp);
  const loadBefore = os.loadavg();
  const size = sizeMiB * 1024 * 1024;
  const pattern = Buffer.alloc(1024 * 1024);
  for (let i = 0; i < pattern.length; i += 4) pattern.writeUInt32LE((Math.random() * 2 ** 32) >>> 0, i);
  const t0 = Date.now();
  const files = new Map<string, string>();
  for (const s of servers) {
    const dir = path.join(tmp, s.name);
    fs.mkdirSync(dir);
    const file = path.join(tmp, `${s.name}.img`);
    fill(file, size, pattern);
    files.set(s.name, file);
  }
  const fillNote = `Each file is written once in full with the same incompressible 1 MiB pattern and fdatasync'ed before the servers start (no holes or unwritten extents, so writes never measure block allocation; then its pages are dropped from the page cache, so every file starts with none: the page cache a sequential fill leaves made the write rows depend on which file was filled first).`;
  log(`filled ${servers.length} × ${sizeMiB} MiB in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

  const commands: Record<string, string> = {};
  for (const s of servers) {
    const h = await s.start({ dir: path.join(tmp, s.name), file: files.get(s.name)!, size });
    started.set(s.name, h);
    commands[s.name] = h.command;
    log(`${s.name}: ${h.uri} (pid ${h.pid})`);
  }

  const fioDir = path.join(tmp, 'fio');
  fs.mkdirSync(fioDir);
  const cells = new Map<string, Map<string, Cell>>();
  for (const row of rows) {
    const runs = new Map<string, Measurement[]>();
    const these = rowServers(row, servers);
    for (let rep = 0; rep < repeats; rep++) {
      // Rotate the order each repeat so no server always runs first (or right after a writer).
      const order = these.map((_, i) => these[(i + rep) % these.length]!);
      for (const s of order) {
        const h = started.get(s.name)!;
        // Steady state first (a staging area drained, a mirror caught up), then a quiet machine.
        const ready = async (): Promise<void> => {
          if (h.prepare) await h.prepare();
          await settle(files.get(s.name)!);
        };
        await ready();
        const tag = `${row.id}.${s.name}.${rep}`;
        // One retry: a fio failure on a shared machine is more often a hiccup than a server fault.
        const once = (attempt: number): Promise<Measurement> =>
          watched(h, () => runFio(row, h.uri, timing, fioDir, `${tag}.${attempt}`, h.pid, h.peer?.pid)).catch((err) => {
            log(`${tag}: ${String(err).split('\n')[0]}; retrying once`);
            return watched(h, () => runFio(row, h.uri, timing, fioDir, `${tag}.${attempt}.retry`, h.pid, h.peer?.pid));
          });
        // A run that other work on the machine disturbed (other CPU above BENCH_NOISE_MAX cores)
        // is measured again, at most twice, while the noise budget lasts; the least disturbed attempt counts.
        let m = await once(0);
        const runS = timing.seconds + timing.rampSeconds;
        for (let attempt = 1, last = m; attempt <= 2 && last.otherCores > noiseMax; attempt++) {
          if (noiseLeftS() < runS) {
            log(`${tag}: other work used ${last.otherCores.toFixed(2)} cores; noise budget spent, keeping it`);
            break;
          }
          log(`${tag}: other work used ${last.otherCores.toFixed(2)} cores during attempt ${attempt}; measuring again`);
          noiseSpentS += runS;
          await ready();
          last = await once(attempt);
          if (last.otherCores < m.otherCores) m = last;
        }
        // Back to steady state before the next server runs: site B catching up (or a staging
        // area draining) would otherwise be noise in someone else's run.
        const t = Date.now();
        if (h.prepare) await h.prepare();
        const extra = [
          m.peerCores !== undefined ? `${h.peer?.name ?? 'peer'} ${m.peerCores.toFixed(2)}` : '',
          m.stagingPeak !== undefined ? `staging peak ${(m.stagingPeak * 100).toFixed(0)}%` : '',
          m.mirrorStates?.length ? `mirror ${m.mirrorStates.join('/')}` : '',
          m.lagAfterS !== undefined ? `lag after ${m.lagAfterS.toFixed(1)} s` : '',
          h.prepare ? `steady again in ${((Date.now() - t) / 1000).toFixed(1)} s` : '',
        ].filter(Boolean);
        log(`${row.id} #${rep + 1} ${s.name.padEnd(9)} ${m.iops.toFixed(0).padStart(7)} IOPS ${m.mibps.toFixed(1).padStart(7)} MiB/s  mean ${m.meanLatUs.toFixed(1)} µs  p99 ${m.p99LatUs.toFixed(0)} µs  cpu ${m.serverCores.toFixed(2)}  fio ${m.clientCores.toFixed(2)}  other ${m.otherCores.toFixed(2)}${extra.length ? `  ${extra.join('  ')}` : ''}`);
        runs.set(s.name, [...(runs.get(s.name) ?? []), m]);
      }
    }
    cells.set(row.id, new Map([...runs].map(([name, ms]) => [name, { median: median(ms), runs: ms }])));
  }

  // The mirror and remote-mirror sections share their context and report their verdicts alike.
  const sectionContext = (dir: string) => ({
    dir: path.join(tmp, dir),
    sizeMiB: mirrorSizeMiB,
    pattern,
    timing,
    repeats,
    fioDir,
    bin: ferryBin,
    log,
    settle,
    register: (name: string, h: Parameters<typeof started.set>[1]) => started.set(name, h),
    fill,
  });
  const logVerdicts = (results: Array<{ met: boolean; title: string; result: string; target: string }>): void => {
    for (const r of results) log(`${r.met ? 'met   ' : 'MISSED'} ${r.title}: ${r.result} (target ${r.target})`);
  };
  const mirror: MirrorSection | null = mirrorIds.length ? await runMirrorRows(mirrorIds, sectionContext('mirror')) : null;
  if (mirror) logVerdicts(mirror.results);
  const replication: ReplicationSection | null = replicationIds.length ? await runReplicationRows(replicationIds, sectionContext('remote')) : null;
  if (replication) logVerdicts(replication.results);
  const dr: DrSection | null = drIds.length ? await runDrRows(drIds, sectionContext('dr')) : null;
  if (dr) logVerdicts(dr.results);
  const group = groupIds.length ? await runGroupRows(groupIds, sectionContext('group')) : null;
  if (group) logVerdicts(group.results);

  const ferry = started.get('ferry');
  const ferryRss = ferry ? { rssKiB: procStatusKiB(ferry.pid, 'VmRSS'), hwmKiB: procStatusKiB(ferry.pid, 'VmHWM') } : { rssKiB: null, hwmKiB: null };
  // The other Ferry subjects' ferryds too (and site B of ferry-remote), for the report.
  const subjectRss = servers
    .filter((s) => s.name !== 'ferry' && s.name.startsWith('ferry') && started.has(s.name))
    .flatMap((s) => {
      const h = started.get(s.name)!;
      const one = (name: string, pid: number) => ({ name, rssKiB: procStatusKiB(pid, 'VmRSS'), hwmKiB: procStatusKiB(pid, 'VmHWM') });
      return [one(h.peer ? `${s.name} (site A)` : s.name, h.pid), ...(h.peer ? [one(`${s.name} (${h.peer.name})`, h.peer.pid)] : [])];
    });
  const results: Results = {
    machine,
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    quick,
    seconds: timing.seconds,
    rampSeconds: timing.rampSeconds,
    repeats,
    quietWaitS,
    noiseMax,
    sizeMiB,
    fill: fillNote,
    commands,
    rows,
    servers,
    cells,
    mirror,
    replication,
    dr,
    group,
    noiseBudgetS,
    noiseSpentS,
    ferryRss,
    subjectRss,
    loadBefore,
    loadAfter: os.loadavg(),
  };
  process.stdout.write(`\n${resultsTable(results)}\n\n`);
  if (mirror) process.stdout.write(`${mirrorTable(mirror)}\n\n`);
  if (replication) process.stdout.write(`${mirrorTable(replication)}\n\n`);
  if (dr) process.stdout.write(`${mirrorTable(dr)}\n\n`);
  if (group?.results.length) process.stdout.write(`${mirrorTable(group)}\n\n`);
  const cost = costTable(results);
  if (cost) process.stdout.write(`${cost}\n\n`);
  for (const v of verdicts(results)) process.stdout.write(`${v.met ? 'met   ' : 'MISSED'} ${v.row}: ${v.subject}/${v.baseline} = ${v.ratio.toFixed(2)} (target ${v.wanted})\n`);
  if (ferryRss.rssKiB !== null) process.stdout.write(`ferryd VmRSS ${(ferryRss.rssKiB / 1024).toFixed(0)} MiB (peak ${((ferryRss.hwmKiB ?? 0) / 1024).toFixed(0)} MiB)\n`);
  for (const x of subjectRss) if (x.rssKiB !== null) process.stdout.write(`${x.name}: VmRSS ${(x.rssKiB / 1024).toFixed(0)} MiB (peak ${((x.hwmKiB ?? 0) / 1024).toFixed(0)} MiB)\n`);
  if (outFile) {
    fs.mkdirSync(path.dirname(outFile), { recursive: true });
    writeDoc(outFile, renderGenerated(results));
    log(`wrote ${path.relative(process.cwd(), outFile) || outFile}`);
  }
}

main()
  .then(cleanup, async (err) => {
    log(`failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    await cleanup();
    process.exitCode = 1;
  })
  .finally(() => clearTimeout(watchdog));
