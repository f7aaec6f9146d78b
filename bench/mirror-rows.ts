// The mirror measurements (issue 4): not one fio job per server like bench/rows.ts, but
// sequences of API calls, each timed, against one ferryd of their own serving a fully
// written disk (BENCH_MIRROR_SIZE_MIB, 2048) with a staging area attached:
//
//   mirror-sync-2g          mirror create → in-sync of the fully written disk, in MiB/s
//   mirror-sync-thin-100g   mirror create → in-sync of an empty 100 GiB thin disk, in seconds
//   mirror-write-during-sync  4 KiB random write QD32 IOPS while syncs run back to back,
//                           over the same workload with the mirror in sync (steady state)
//   mirror-swap-pause       lastSwapPauseMs of `mirror swap`, idle and under that fio load
//
// Each has a target and a verdict; BENCH_ROWS selects them by id like the fio rows.
import fs from 'node:fs';
import path from 'node:path';
import { runFio, type Measurement, type Timing } from './fio.js';
import { sleep } from './proc.js';
import { rows as fioRows, type RowDef } from './rows.js';
import { BENCH_STAGING_SIZE, ferryServer, waitInSync, type FerryApi, type StartedServer } from './servers.js';

export interface MirrorRowDef {
  id: string;
  title: string;
}

export const mirrorRows: MirrorRowDef[] = [
  { id: 'mirror-sync-thin-100g', title: 'Sync of an empty 100 GiB thin disk' },
  { id: 'mirror-sync-2g', title: 'Sync of a fully written disk onto a local mirror' },
  { id: 'mirror-write-during-sync', title: '4 KiB random write QD32 while a sync runs, vs in sync' },
  { id: 'mirror-swap-pause', title: 'Swap pause (requests held)' },
];

export interface MirrorResult {
  id: string;
  title: string;
  /** The median (or the deciding value), formatted with its unit. */
  result: string;
  /** Every run, formatted. */
  runs: string;
  target: string;
  met: boolean;
  /** What else was measured (the baseline, the fraction of time a sync ran…). */
  detail: string;
  /** The result as a number in the target's unit, when other sections quote it (issue 11). */
  value?: number;
  /** Every run, as numbers. */
  values?: number[];
}

export interface MirrorContext {
  dir: string;
  sizeMiB: number;
  pattern: Buffer;
  timing: Timing;
  repeats: number;
  fioDir: string;
  bin: string;
  log: (msg: string) => void;
  /** Called before every measured step: flush dirty pages, wait for a quiet machine (within the run's budget). */
  settle: (file: string) => Promise<void>;
  /** Registers the ferryd so that the run's cleanup stops it. */
  register: (name: string, s: StartedServer) => void;
  fill: (file: string, bytes: number, pattern: Buffer) => void;
}

export interface MirrorSection {
  results: MirrorResult[];
  command: string;
  sizeMiB: number;
}

const MiB = 1024 * 1024;
const med = (v: number[]): number => {
  const s = [...v].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};
const f0 = (n: number): string => Math.round(n).toLocaleString('en-US');
const f1 = (n: number): string => n.toFixed(1);
const f2 = (n: number): string => n.toFixed(2);
const qd32 = (): RowDef => {
  const row = fioRows.find((r) => r.id === 'randwrite-4k-qd32');
  if (!row) throw new Error('bench/rows.ts has no randwrite-4k-qd32 row');
  return row;
};

/** Runs the selected mirror measurements (ids of mirrorRows) on a ferryd of their own. */
export async function runMirrorRows(ids: string[], ctx: MirrorContext): Promise<MirrorSection> {
  const want = (id: string): boolean => ids.includes(id);
  const size = ctx.sizeMiB * MiB;
  fs.mkdirSync(ctx.dir, { recursive: true });
  const file = path.join(ctx.dir, 'disk.img');
  const t0 = Date.now();
  ctx.fill(file, size, ctx.pattern);
  ctx.log(`mirror: filled ${ctx.sizeMiB} MiB in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  let api!: FerryApi;
  const srvDir = path.join(ctx.dir, 'ferryd');
  fs.mkdirSync(srvDir);
  const server = await ferryServer('ferry-mirror', {
    bin: ctx.bin,
    setup: async (a) => {
      api = a;
    },
  }).start({ dir: srvDir, file, size });
  ctx.register('ferry-mirror', server);
  await api('POST', '/v1/disks/bench/staging', { path: path.join(ctx.dir, 'staging.img'), size: BENCH_STAGING_SIZE });
  const results: MirrorResult[] = [];
  let targets = 0;
  const newTarget = (): string => path.join(ctx.dir, `mirror-${targets++}.img`);
  const removeMirror = async (disk: string, target: string): Promise<void> => {
    await api('DELETE', `/v1/disks/${disk}/mirror`);
    fs.rmSync(target, { force: true });
  };
  let inSyncTarget: string | null = null;

  if (want('mirror-sync-thin-100g')) {
    await api('POST', '/v1/disks', { name: 'thin', size: '100G' });
    await api('POST', '/v1/disks/thin/staging', { path: path.join(ctx.dir, 'thin-staging.img'), size: '64M' });
    const secs: number[] = [];
    for (let rep = 0; rep < ctx.repeats; rep++) {
      const target = newTarget();
      await ctx.settle(file);
      const t = process.hrtime.bigint();
      await api('POST', '/v1/disks/thin/mirror', { to: `local:${target}` });
      await waitInSync(api, 'thin', 600_000, 10);
      secs.push(Number(process.hrtime.bigint() - t) / 1e9);
      ctx.log(`mirror-sync-thin-100g #${rep + 1}: ${secs[rep]!.toFixed(2)} s`);
      await removeMirror('thin', target);
    }
    await api('DELETE', '/v1/disks/thin/staging');
    await api('DELETE', '/v1/disks/thin?purge=true');
    const m = med(secs);
    results.push({
      id: 'mirror-sync-thin-100g',
      title: 'Sync of an empty 100 GiB thin disk',
      result: `${f2(m)} s`,
      runs: secs.map(f2).join(', '),
      target: '≤ 10 s',
      met: m <= 10,
      detail: '`mirror create` (staging area already attached) until the status reads `in-sync`',
    });
  }

  if (want('mirror-sync-2g')) {
    const rates: number[] = [];
    for (let rep = 0; rep < ctx.repeats; rep++) {
      if (inSyncTarget) await removeMirror('bench', inSyncTarget);
      const target = newTarget();
      await ctx.settle(file);
      const t = process.hrtime.bigint();
      await api('POST', '/v1/disks/bench/mirror', { to: `local:${target}` });
      await waitInSync(api, 'bench', 600_000, 10);
      const s = Number(process.hrtime.bigint() - t) / 1e9;
      inSyncTarget = target;
      rates.push(size / MiB / s);
      ctx.log(`mirror-sync-2g #${rep + 1}: ${s.toFixed(2)} s, ${rates[rep]!.toFixed(0)} MiB/s`);
    }
    const m = med(rates);
    results.push({
      id: 'mirror-sync-2g',
      title: `Sync of a fully written ${ctx.sizeMiB >= 1024 ? `${ctx.sizeMiB / 1024} GiB` : `${ctx.sizeMiB} MiB`} disk onto a local mirror`,
      result: `${f0(m)} MiB/s`,
      runs: rates.map(f0).join(', '),
      target: '≥ 500 MiB/s',
      met: m >= 500,
      detail: 'disk size over the time from `mirror create` (staging area already attached; a new sparse target file) until the status reads `in-sync`',
    });
  }

  const ensureInSync = async (): Promise<void> => {
    if (inSyncTarget) return;
    inSyncTarget = newTarget();
    await api('POST', '/v1/disks/bench/mirror', { to: `local:${inSyncTarget}` });
    await waitInSync(api, 'bench', 600_000, 50);
  };

  if (want('mirror-write-during-sync')) {
    await ensureInSync();
    const idle: Measurement[] = [];
    const busy: Measurement[] = [];
    const syncShare: number[] = [];
    let syncsDone = 0;
    for (let rep = 0; rep < ctx.repeats; rep++) {
      await ctx.settle(file);
      idle.push(await runFio(qd32(), server.uri, ctx.timing, ctx.fioDir, `mirror-idle.${rep}`, server.pid));
      await ctx.settle(file);
      // Syncs back to back for the whole fio run: remove the mirror (in sync), create it anew.
      let stop = false;
      const spans: Array<[number, number]> = [];
      const loop = (async () => {
        while (!stop) {
          const old = inSyncTarget!;
          inSyncTarget = null;
          await removeMirror('bench', old);
          const target = newTarget();
          const t = Date.now();
          await api('POST', '/v1/disks/bench/mirror', { to: `local:${target}` });
          inSyncTarget = target;
          await waitInSync(api, 'bench', 600_000, 10);
          spans.push([t, Date.now()]);
          syncsDone++;
        }
      })();
      const from = Date.now() + ctx.timing.rampSeconds * 1000;
      const m = await runFio(qd32(), server.uri, ctx.timing, ctx.fioDir, `mirror-syncing.${rep}`, server.pid).finally(() => (stop = true));
      const to = Date.now();
      await loop;
      // Share of the measured part of the fio run during which a sync was running.
      const overlap = spans.reduce((n, [a, b]) => n + Math.max(0, Math.min(b, to) - Math.max(a, from)), 0);
      syncShare.push(overlap / Math.max(1, to - from));
      busy.push(m);
      ctx.log(`mirror-write-during-sync #${rep + 1}: in sync ${f0(idle[rep]!.iops)} IOPS, syncing ${f0(m.iops)} IOPS (a sync ran ${(syncShare[rep]! * 100).toFixed(0)}% of the time)`);
    }
    const ratios = busy.map((b, i) => b.iops / idle[i]!.iops);
    const mi = med(idle.map((x) => x.iops));
    const mb = med(busy.map((x) => x.iops));
    results.push({
      id: 'mirror-write-during-sync',
      title: '4 KiB random write QD32 while a sync runs, vs the mirror in sync',
      result: `${f2(mb / mi)}× (${f0(mb)} vs ${f0(mi)} IOPS)`,
      runs: ratios.map((r) => `${f2(r)}×`).join(', '),
      target: '≥ 0.50×',
      met: mb / mi >= 0.5,
      detail: `the same fio job as the rows (${ctx.timing.rampSeconds}+${ctx.timing.seconds} s), interleaved: mirror in sync (no sync running), then syncs of the whole disk back to back (\`mirror remove\`, \`mirror create\` onto a new file) for the whole run; a sync ran ${syncShare.map((s) => `${(s * 100).toFixed(0)}%`).join(', ')} of each run (${syncsDone} syncs in all); p99 latency ${f0(med(idle.map((x) => x.p99LatUs)))} µs in sync, ${f0(med(busy.map((x) => x.p99LatUs)))} µs syncing`,
    });
  }

  if (want('mirror-swap-pause')) {
    await ensureInSync();
    const swap = async (): Promise<number> => {
      const r = await api('POST', '/v1/disks/bench/mirror/swap');
      const st = await api('GET', '/v1/disks/bench/mirror');
      return typeof st.lastSwapPauseMs === 'number' ? st.lastSwapPauseMs : r.pauseMs;
    };
    await ctx.settle(file);
    const idle: number[] = [];
    for (let i = 0; i < 5; i++) {
      idle.push(await swap());
      await sleep(300);
    }
    await ctx.settle(file);
    const loaded: number[] = [];
    let stop = false;
    const fio = runFio(qd32(), server.uri, ctx.timing, ctx.fioDir, 'mirror-swap-load', server.pid).finally(() => (stop = true));
    await sleep(ctx.timing.rampSeconds * 1000 + 500);
    const until = Date.now() + ctx.timing.seconds * 1000 - 1500;
    while (!stop && Date.now() < until) {
      loaded.push(await swap());
      await sleep(700);
    }
    const load = await fio;
    ctx.log(`mirror-swap-pause: idle ${idle.map(f1).join(', ')} ms; under fio ${loaded.map(f1).join(', ')} ms (${f0(load.iops)} IOPS)`);
    const maxIdle = Math.max(...idle);
    const maxLoad = loaded.length ? Math.max(...loaded) : NaN;
    results.push({
      id: 'mirror-swap-pause',
      title: 'Swap pause, idle',
      result: `max ${f1(maxIdle)} ms (median ${f1(med(idle))})`,
      runs: idle.map(f1).join(', '),
      target: '< 100 ms (every swap)',
      met: maxIdle < 100,
      detail: '`mirror swap` back and forth, 300 ms apart, no client I/O; `lastSwapPauseMs` of the status',
    });
    results.push({
      id: 'mirror-swap-pause',
      title: 'Swap pause under 4 KiB random write QD32',
      result: loaded.length ? `max ${f1(maxLoad)} ms (median ${f1(med(loaded))})` : 'no swap',
      runs: loaded.map(f1).join(', '),
      target: '< 100 ms (every swap)',
      met: loaded.length > 0 && maxLoad < 100,
      detail: `swaps 700 ms apart during the measured part of one fio run (${f0(load.iops)} IOPS while swapping)`,
    });
  }

  await server.stop();
  return { results, command: server.command, sizeMiB: ctx.sizeMiB };
}

/** The markdown of the mirror section. */
export function mirrorTable(s: Pick<MirrorSection, 'results'>): string {
  const lines = ['| Measurement | Result | Runs | Target | Met |', '| --- | ---: | --- | ---: | --- |'];
  for (const r of s.results) lines.push(`| ${r.title} | ${r.result} | ${r.runs} | ${r.target} | ${r.met ? 'yes ✅' : '**no** ❌'} |`);
  return lines.join('\n');
}
