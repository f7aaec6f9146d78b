// The consistency group measurement (issue 16, "Bench"): a group of 4 disks written at once by
// 4 clients costs no more per write than 4 separately mirrored disks (total IOPS, same run).
//
//   group-4-disks   one ferryd of its own serving 8 fully written disks of the same size
//                   (BENCH_GROUP_DISK_MIB, 512): s0..s3, each with its own staging area
//                   (BENCH_STAGING_SIZE) and its own local mirror (a file), and g0..g3, the
//                   members of one consistency group (`group create` with one staging area
//                   of the same total size, 4 × BENCH_STAGING_SIZE) with the group's local
//                   mirror (`mirror create --group --to local:DIR`: a file per member). Every
//                   mirror is synced before the first run. Each run: 4 fio processes at once,
//                   one per disk, the randwrite-4k-qd32 job of bench/rows.ts (same timing as
//                   the fio rows); total IOPS, the worst p99 of the 4, ferryd CPU per write,
//                   the staging areas' peak fill. The two configurations alternate (order
//                   swapped every repeat), each from steady state (mirrors in sync, staging
//                   areas drained) on a quiet machine; the verdict is the median of the
//                   group's total IOPS over the median of the separate disks' (≥ 1.00×).
//
// Profiling: BENCH_FERRY_NODE_ARGS (bench/servers.ts) applies to this ferryd as to every other;
// BENCH_GROUP_ONLY=separate|group runs one configuration alone (no verdict), so that a
// --cpu-prof profile holds one kind of write path.
import fs from 'node:fs';
import path from 'node:path';
import { runFio, type Measurement } from './fio.js';
import type { MirrorContext, MirrorResult } from './mirror-rows.js';
import { cpuSeconds, machineBusySeconds, sleep } from './proc.js';
import { rows as fioRows, type RowDef } from './rows.js';
import { BENCH_STAGING_SIZE, drained, ferryServer, waitInSync, type FerryApi } from './servers.js';

export const groupRows = [{ id: 'group-4-disks', title: '4 disks written at once by 4 clients: a consistency group vs 4 separately mirrored disks' }];

export interface GroupSection {
  results: MirrorResult[];
  /** How the ferryd and its disks were set up, for the report. */
  method: string;
}

const MiB = 1024 * 1024;
const DISKS = 4;
const GROUP = 'grp4';

type Config = 'separate' | 'group';

/** One run of a configuration: 4 fio processes at once. */
interface SetRun {
  iops: number;
  /** The worst p99 (µs) of the 4 processes, and their median. */
  p99MaxUs: number;
  p99MedUs: number;
  meanLatUs: number;
  /** ferryd over the whole run (all 4 processes), in cores; and per write, in µs. */
  serverCores: number;
  usPerWrite: number;
  fioCores: number;
  otherCores: number;
  /** Highest fill (0..1) of any of the configuration's staging areas, polled every second (one request per staging area). */
  stagingPeak: number;
  /** Some sample found writes waiting for space (a full staging area: the local mirrors throttle). */
  waitedForSpace: boolean;
  /** Records staged over the run (writtenSeq), ramp included. */
  staged: number;
}

const med = (v: number[]): number => {
  const s = [...v].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};
const f0 = (n: number): string => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : 'n/a');
const f1 = (n: number): string => (Number.isFinite(n) ? n.toFixed(1) : 'n/a');
const f2 = (n: number): string => (Number.isFinite(n) ? n.toFixed(2) : 'n/a');
const qd32 = (): RowDef => {
  const row = fioRows.find((r) => r.id === 'randwrite-4k-qd32');
  if (!row) throw new Error('bench/rows.ts has no randwrite-4k-qd32 row');
  return row;
};
const envMiB = (name: string, dflt: number): number => {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${name} must be a positive whole number of MiB, got '${v}'`);
  return n;
};
/** BENCH_STAGING_SIZE ('1G') in MiB. */
const stagingMiB = (): number => {
  const m = /^(\d+)([MG])$/.exec(BENCH_STAGING_SIZE);
  if (!m) throw new Error(`BENCH_STAGING_SIZE '${BENCH_STAGING_SIZE}': expected NNNM or NNNG`);
  return Number(m[1]) * (m[2] === 'G' ? 1024 : 1);
};

/** Runs the consistency group measurement on a ferryd of its own. */
export async function runGroupRows(ids: string[], ctx: MirrorContext): Promise<GroupSection> {
  if (!ids.includes('group-4-disks')) return { results: [], method: '' };
  const only = process.env.BENCH_GROUP_ONLY;
  if (only !== undefined && only !== 'separate' && only !== 'group') throw new Error(`BENCH_GROUP_ONLY must be 'separate' or 'group', got '${only}'`);
  const configs: Config[] = only ? [only] : ['separate', 'group'];
  const diskMiB = envMiB('BENCH_GROUP_DISK_MIB', 512);
  const perStagingMiB = stagingMiB();
  const size = diskMiB * MiB;
  const dir = ctx.dir;
  fs.mkdirSync(dir, { recursive: true });

  // Eight fully written disks of the same size and content: s0..s3 and g0..g3 (those of the configurations run).
  const separate = Array.from({ length: DISKS }, (_, i) => `s${i}`);
  const members = Array.from({ length: DISKS }, (_, i) => `g${i}`);
  const used = [...(configs.includes('separate') ? separate : []), ...(configs.includes('group') ? members : [])];
  const t0 = Date.now();
  const files = new Map<string, string>();
  for (const disk of used) {
    const file = path.join(dir, `${disk}.img`);
    ctx.fill(file, size, ctx.pattern);
    files.set(disk, file);
  }
  ctx.log(`group: filled ${used.length} × ${diskMiB} MiB in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

  // One ferryd; its own `bench` disk is a 1 MiB placeholder (the ferryd helper adopts one).
  const srvDir = path.join(dir, 'ferryd');
  fs.mkdirSync(srvDir);
  const placeholder = path.join(srvDir, 'placeholder.img');
  ctx.fill(placeholder, MiB, ctx.pattern);
  let api!: FerryApi;
  const server = await ferryServer('ferry-group', { bin: ctx.bin, setup: async (a) => void (api = a) }).start({ dir: srvDir, file: placeholder, size: MiB });
  ctx.register('ferry-group', server);
  const uri = (disk: string): string => server.uri.replace(/\/bench$/, `/${disk}`);
  for (const disk of used) await api('POST', '/v1/disks/adopt', { name: disk, path: files.get(disk)! });

  const t1 = Date.now();
  if (configs.includes('separate')) {
    for (const disk of separate) {
      await api('POST', `/v1/disks/${disk}/staging`, { path: path.join(dir, `${disk}.stg`), size: `${perStagingMiB}M` });
      await api('POST', `/v1/disks/${disk}/mirror`, { to: `local:${path.join(dir, `${disk}-mirror.img`)}` });
    }
  }
  if (configs.includes('group')) {
    await api('POST', '/v1/groups', { name: GROUP, disks: members, staging: path.join(dir, `${GROUP}.stg`), stagingSize: `${DISKS * perStagingMiB}M` });
    const mdir = path.join(dir, `${GROUP}-mirror`);
    fs.mkdirSync(mdir);
    await api('POST', `/v1/groups/${GROUP}/mirror`, { to: `local:${mdir}` });
  }
  // The staging areas and mirrors of a configuration: the 4 disks, or the group.
  const owners = (c: Config): string[] => (c === 'separate' ? separate : [GROUP]);
  const steady = async (c: Config): Promise<void> => {
    for (const o of owners(c)) {
      await waitInSync(api, o, 600_000, 50);
      await drained(api, o);
    }
  };
  for (const o of configs.flatMap(owners)) {
    await waitInSync(api, o, 600_000, 50);
    ctx.log(`group: mirror of ${o} in sync after ${((Date.now() - t1) / 1000).toFixed(1)} s`);
  }
  for (const c of configs) await steady(c);
  // Each staging area feeds its disk(s) and a mirror: two consumers at least, or this measures something else.
  for (const o of configs.flatMap(owners)) {
    const st = await api('GET', `/v1/disks/${o}/staging`);
    if (st.consumers.length < 2) throw new Error(`group-4-disks: the staging area of ${o} has consumers ${JSON.stringify(st.consumers)}, expected the disk's and a mirror's`);
  }
  ctx.log(`group: ${configs.map((c) => `${owners(c).length} mirror(s) of ${c}`).join(', ')} in sync in ${((Date.now() - t1) / 1000).toFixed(1)} s`);

  const settle = async (): Promise<void> => {
    await ctx.settle(files.get(used[0]!)!);
  };

  /** The 4 fio processes of one configuration at once, with ferryd's CPU and the staging fill over the run. */
  const runSet = async (c: Config, tag: string): Promise<SetRun> => {
    const disks = c === 'separate' ? separate : members;
    let stop = false;
    let peak = 0;
    let waited = false;
    const poll = (async () => {
      while (!stop) {
        const t = Date.now();
        for (const o of owners(c)) {
          try {
            const st = await api('GET', `/v1/disks/${o}/staging`);
            peak = Math.max(peak, st.usedBytes / st.ringBytes);
            if (st.waitingForSpace) waited = true;
          } catch {
            // a missed sample is no measurement error
          }
        }
        while (!stop && Date.now() - t < 1000) await sleep(50);
      }
    })();
    const writtenSeq = async (): Promise<number> => {
      let n = 0;
      for (const o of owners(c)) n += (await api('GET', `/v1/disks/${o}/staging`)).writtenSeq as number;
      return n;
    };
    const seq0 = await writtenSeq();
    const cpu0 = cpuSeconds(server.pid);
    const busy0 = machineBusySeconds();
    const wall0 = process.hrtime.bigint();
    let ms: Measurement[];
    try {
      ms = await Promise.all(disks.map((disk, i) => runFio(qd32(), uri(disk), ctx.timing, ctx.fioDir, `${tag}.${i}`, server.pid)));
    } finally {
      stop = true;
      await poll;
    }
    const wall = Number(process.hrtime.bigint() - wall0) / 1e9;
    const serverCores = (cpuSeconds(server.pid) - cpu0) / wall;
    const fioCores = ms.reduce((n, m) => n + m.clientCores, 0);
    const iops = ms.reduce((n, m) => n + m.iops, 0);
    // Every write went through the configuration's staging area(s): records staged over the run
    // (ramp included) at least the writes fio counted in its measured part.
    const staged = (await writtenSeq()) - seq0;
    if (staged < 0.95 * iops * ctx.timing.seconds) throw new Error(`group-4-disks ${tag}: ${staged} records staged for about ${Math.round(iops * ctx.timing.seconds)} writes measured: the writes did not go through the staging area`);
    return {
      iops,
      p99MaxUs: Math.max(...ms.map((m) => m.p99LatUs)),
      p99MedUs: med(ms.map((m) => m.p99LatUs)),
      meanLatUs: ms.reduce((n, m) => n + m.meanLatUs * m.iops, 0) / iops,
      serverCores,
      usPerWrite: (serverCores / iops) * 1e6,
      fioCores,
      otherCores: Math.max(0, (machineBusySeconds() - busy0) / wall - serverCores - fioCores),
      stagingPeak: peak,
      waitedForSpace: waited,
      staged,
    };
  };

  const runs: Record<Config, SetRun[]> = { separate: [], group: [] };
  for (let rep = 0; rep < ctx.repeats; rep++) {
    // Alternating: the configuration that ran first runs second in the next repeat.
    const order = rep % 2 === 0 ? configs : [...configs].reverse();
    for (const c of order) {
      await steady(c);
      await settle();
      const r = await runSet(c, `group-4-disks.${c}.${rep}`);
      runs[c].push(r);
      ctx.log(
        `group-4-disks #${rep + 1} ${c.padEnd(8)} ${f0(r.iops).padStart(7)} IOPS total  mean ${f1(r.meanLatUs)} µs  p99 ${f0(r.p99MedUs)} µs (worst disk ${f0(r.p99MaxUs)})  ferryd ${f2(r.serverCores)} cores = ${f1(r.usPerWrite)} µs/write  fio ${f2(r.fioCores)}  other ${f2(r.otherCores)}  staging peak ${(r.stagingPeak * 100).toFixed(0)}%, ${f0(r.staged)} records staged${r.waitedForSpace ? '  (writes waited for space)' : ''}`,
      );
    }
  }
  await server.stop();

  const method = `One ferryd of its own (${server.command}) serving ${2 * DISKS} fully written ${diskMiB} MiB disks (same fill as above; BENCH_GROUP_DISK_MIB), adopted: s0..s3, each with its own ${perStagingMiB} MiB staging area (\`POST /v1/disks/sN/staging\`) and its own local mirror onto a new file (\`POST /v1/disks/sN/mirror {to: local:FILE}\`), and g0..g3, the members of one consistency group with one staging area of the same total size (\`POST /v1/groups {name, disks, staging, stagingSize: ${DISKS * perStagingMiB}M}\`, as \`ferry group create\` does) and the group's local mirror (\`POST /v1/groups/${GROUP}/mirror {to: local:DIR}\`, as \`ferry mirror create --group --to local:DIR\` does: a file per member); every mirror synced before the first run (the syncs leave the page cache as they found it: src/mirror/sync-engine.ts). A run is 4 fio processes at once, one per disk (the 4 KiB random write QD32 job of the rows, ${ctx.timing.rampSeconds}+${ctx.timing.seconds} s); the two configurations alternate, the order swapped every repeat, each run from steady state (mirrors in sync, staging areas drained, \`sync -f\`, a quiet machine). ${ctx.repeats} repeat(s); medians`;
  if (configs.length < 2) {
    ctx.log(`group-4-disks: BENCH_GROUP_ONLY=${only}: one configuration, no verdict`);
    return { results: [], method };
  }
  const s = runs.separate;
  const g = runs.group;
  const ratio = med(g.map((x) => x.iops)) / med(s.map((x) => x.iops));
  const detail = (rs: SetRun[]): string =>
    `${f0(med(rs.map((x) => x.iops)))} IOPS (runs ${rs.map((x) => f0(x.iops)).join(', ')}), mean latency ${f1(med(rs.map((x) => x.meanLatUs)))} µs, p99 ${f0(med(rs.map((x) => x.p99MedUs)))} µs (the worst disk's ${f0(med(rs.map((x) => x.p99MaxUs)))} µs), ferryd ${f2(med(rs.map((x) => x.serverCores)))} cores = ${f1(med(rs.map((x) => x.usPerWrite)))} µs of CPU per write, the 4 fio processes ${f2(med(rs.map((x) => x.fioCores)))} cores, other work ${f2(med(rs.map((x) => x.otherCores)))} cores, staging peak ${(Math.max(...rs.map((x) => x.stagingPeak)) * 100).toFixed(0)}%${rs.some((x) => x.waitedForSpace) ? ', writes waited for space' : ''}`;
  return {
    method,
    results: [
      {
        id: 'group-4-disks',
        title: '4 disks × 4 KiB random write QD32 at once, a consistency group / 4 separately mirrored disks (total IOPS)',
        result: `${f2(ratio)}× (${f0(med(g.map((x) => x.iops)))} vs ${f0(med(s.map((x) => x.iops)))} IOPS)`,
        runs: g.map((x, i) => `${f2(x.iops / s[i]!.iops)}×`).join(', '),
        target: '≥ 1.00× (issue 16: no more per write)',
        met: ratio >= 1,
        detail: `group: ${detail(g)}; separate: ${detail(s)}; CPU per write group / separate ${f2(med(g.map((x) => x.usPerWrite)) / med(s.map((x) => x.usPerWrite)))}×`,
        value: ratio,
        values: g.map((x, i) => x.iops / s[i]!.iops),
      },
    ],
  };
}
