// Runs one fio job (nbd engine, time-based) against one server and reads its JSON
// output: IOPS, bandwidth, mean and p99 total latency (lat_percentiles=1, so the
// percentiles are of submission-to-completion latency, not just completion).
import fs from 'node:fs';
import path from 'node:path';
import { cpuSeconds, machineBusySeconds, run } from './proc.js';
import type { RowDef } from './rows.js';

export interface Timing {
  seconds: number;
  rampSeconds: number;
}

export interface Measurement {
  iops: number;
  /** MiB/s */
  mibps: number;
  meanLatUs: number;
  p99LatUs: number;
  /** Server CPU over the fio run (user+system, all threads), in cores (1.0 = one core busy). */
  serverCores: number;
  /** fio's own CPU (the client), in cores. */
  clientCores: number;
  /** Everything else busy on the machine during the run, in cores: noise from other work. */
  otherCores: number;
  /** The server's peer (site B of a remote mirror) over the run, in cores; not in otherCores. */
  peerCores?: number;
  /** Highest fill of the server's staging area seen while fio ran (0..1), when polled. */
  stagingPeak?: number;
  /** Mirror states seen while fio ran (in-sync, bitmap…), when polled. */
  mirrorStates?: string[];
  /** The mirror's lagSeconds when fio ended, when polled. */
  lagAfterS?: number;
}

export function fioArgs(row: RowDef, uri: string, t: Timing, output: string): string[] {
  return [
    `--name=${row.id}`,
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--rw=${row.rw}`,
    `--bs=${row.bs}`,
    `--iodepth=${row.iodepth}`,
    '--numjobs=1',
    '--time_based',
    `--runtime=${t.seconds}`,
    `--ramp_time=${t.rampSeconds}`,
    '--norandommap',
    '--randrepeat=1', // the same offsets for every server
    '--lat_percentiles=1',
    '--output-format=json',
    `--output=${output}`,
    ...(row.extra ?? []),
  ];
}

/** One fio run; throws on any fio error or an empty result. `serverPid` (and `peerPid`, when given) are sampled for CPU time. */
export async function runFio(row: RowDef, uri: string, t: Timing, outDir: string, tag: string, serverPid: number, peerPid?: number): Promise<Measurement> {
  const output = path.join(outDir, `${tag}.json`);
  const args = fioArgs(row, uri, t, output);
  const peer0 = peerPid === undefined ? 0 : cpuSeconds(peerPid);
  const cpu0 = cpuSeconds(serverPid);
  const busy0 = machineBusySeconds();
  const wall0 = process.hrtime.bigint();
  const r = await run('fio', args, (t.seconds + t.rampSeconds + 60) * 1000);
  const wall = Number(process.hrtime.bigint() - wall0) / 1e9;
  const cpu = cpuSeconds(serverPid) - cpu0;
  const busy = machineBusySeconds() - busy0;
  const peer = peerPid === undefined ? 0 : cpuSeconds(peerPid) - peer0;
  if (r.code !== 0) throw new Error(`fio ${tag}: ${r.timedOut ? 'timed out' : `exit ${r.code ?? r.signal}`}\n${r.stderr.slice(-2000)}${r.stdout.slice(-2000)}`);
  const json = JSON.parse(fs.readFileSync(output, 'utf8'));
  const job = json.jobs?.[0];
  if (!job) throw new Error(`fio ${tag}: no job in output`);
  if (job.error) throw new Error(`fio ${tag}: job error ${job.error}`);
  const side = row.rw.includes('read') && !row.rw.includes('write') ? job.read : job.write;
  if (!side || !(side.total_ios > 0)) throw new Error(`fio ${tag}: no I/O completed`);
  const p99 = side.lat_ns?.percentile?.['99.000000'];
  return {
    iops: side.iops,
    mibps: side.bw_bytes / (1024 * 1024),
    meanLatUs: side.lat_ns.mean / 1000,
    p99LatUs: typeof p99 === 'number' ? p99 / 1000 : NaN,
    serverCores: cpu / wall,
    clientCores: ((job.usr_cpu ?? 0) + (job.sys_cpu ?? 0)) / 100,
    otherCores: Math.max(0, (busy - cpu - peer) / wall - ((job.usr_cpu ?? 0) + (job.sys_cpu ?? 0)) / 100),
    ...(peerPid === undefined ? {} : { peerCores: peer / wall }),
  };
}

/** Per-field median of repeated measurements. */
export function median(ms: Measurement[]): Measurement {
  const med = (k: 'iops' | 'mibps' | 'meanLatUs' | 'p99LatUs' | 'serverCores' | 'clientCores' | 'otherCores' | 'peerCores'): number => {
    const v = ms.map((m) => m[k] ?? NaN).sort((a, b) => a - b);
    const mid = v.length >> 1;
    return v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
  };
  const m: Measurement = { iops: med('iops'), mibps: med('mibps'), meanLatUs: med('meanLatUs'), p99LatUs: med('p99LatUs'), serverCores: med('serverCores'), clientCores: med('clientCores'), otherCores: med('otherCores') };
  if (ms.every((x) => x.peerCores !== undefined)) m.peerCores = med('peerCores');
  if (ms.some((x) => x.stagingPeak !== undefined)) m.stagingPeak = Math.max(...ms.map((x) => x.stagingPeak ?? 0)); // the highest, not the median
  return m;
}
