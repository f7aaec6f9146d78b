// The replication link through the userspace WAN proxy (src/testing/wan-proxy.ts):
//  - distance: with 50 ms one-way delay, site A's 4 KiB write latency (fio, nbd engine, QD1)
//    stays far below the 100 ms round trip a synchronous mirror would add, and site B's lag
//    in steady state is of the order of the delay;
//  - outage: a 30 s cut of the link while fio writes (with crc32c verification) at site A:
//    no error at A, the link reported down on both sites, then reconnection by itself and
//    byte-identical convergence;
//  - resets: every connection reset several times mid-stream; replication resumes from
//    the last record site B made durable, and converges.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, run } from '../harness.js';
import { Cleanup } from '../staging/helpers.js';
import { startFio, waitWrites } from '../mirror/helpers.js';
import { MiB, T, cliJson, mirrorStatus, startSites, waitCaughtUp, waitStatus, type Sites } from './helpers.js';

const DISK = 128 * MiB;
const LONG = { timeout: 300_000 } as const;

async function identical(s: Sites, disk: string, replica: string): Promise<void> {
  const cmp = await run(requireTool('qemu-img'), ['compare', '-f', 'raw', '-F', 'raw', s.a.uri(disk), s.b.uri(replica)], { timeoutMs: 120_000 });
  assert.equal(cmp.code, 0, `qemu-img compare: ${cmp.stdout}${cmp.stderr}`);
}

/** fio 4 KiB random writes at QD1 for `seconds`; returns the job's JSON. */
async function fioQd1(uri: string, seconds: number, cwd: string): Promise<any> {
  const out = path.join(cwd, `qd1-${Date.now()}.json`);
  const r = await run(requireTool('fio'), ['--name=qd1', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=4k', '--iodepth=1', '--size=64m', '--time_based', `--runtime=${seconds}`, '--output-format=json', `--output=${out}`], { timeoutMs: (seconds + 60) * 1000, cwd });
  assert.equal(r.code, 0, `fio: ${r.stderr}`);
  return JSON.parse(fs.readFileSync(out, 'utf8')).jobs[0];
}

describe('the replication link: distance, outage, resets', () => {
  const cleanup = new Cleanup();
  let s: Sites;
  let work: string;

  before(async () => {
    requireTool('fio');
    requireTool('qemu-img');
    s = await startSites(cleanup);
    work = cleanup.dir('ferry-link-');
    await s.a.createDisk('far', DISK);
    await cliJson(s.a, ['mirror', 'create', 'far', '--to', `${s.peer}:far-dr`, '--staging', path.join(work, 'far.stg'), '--staging-size', '256M']);
    await waitCaughtUp(s, 'far', 'far-dr');
  }, T);
  after(() => cleanup.run(), T);

  it('50 ms one-way delay: site A write latency does not include the distance; lag is about the delay', LONG, async (t) => {
    const near = await fioQd1(s.a.uri('far'), 5, work);
    s.proxy.delayMs = 50;
    const far = await fioQd1(s.a.uri('far'), 5, work);
    const lat = (j: any): number => j.write.clat_ns.mean / 1e6;
    t.diagnostic(`4k QD1 write latency at site A: ${lat(near).toFixed(3)} ms without delay, ${lat(far).toFixed(3)} ms with 50 ms one-way delay (a synchronous mirror would add >= 100 ms)`);
    // Not a performance threshold: a write that waited for site B could not finish in under a round trip.
    assert.ok(far.write.clat_ns.percentile['50.000000'] / 1e6 < 50, `median write latency ${far.write.clat_ns.percentile['50.000000'] / 1e6} ms: writes wait for site B`);
    // Steady state under a light writer: lag of the order of the delay.
    const cwd = cleanup.dir('ferry-fio-');
    const fio = startFio(cleanup, s.a.uri('far'), { name: 'far', cwd, size: '64m', rateIops: 400 });
    await waitWrites(s.a, 'far', 1500);
    const lags: number[] = [];
    for (let i = 0; i < 10; i++) {
      lags.push((await mirrorStatus(s.a, 'far')).lagSeconds);
      await new Promise((r) => setTimeout(r, 300));
    }
    await fio.stop();
    lags.sort((x, y) => x - y);
    t.diagnostic(`lag at site A with 50 ms delay, 400 writes/s: median ${(lags[5]! * 1000).toFixed(0)} ms, max ${(lags[9]! * 1000).toFixed(0)} ms`);
    assert.ok(lags[5]! > 0, 'with 50 ms delay the mirror is some time behind');
    s.proxy.delayMs = 0;
    await waitCaughtUp(s, 'far', 'far-dr');
    await identical(s, 'far', 'far-dr');
  });

  it('a 30 s cut: writes go on at site A, both sites report the link down, then it converges', LONG, async (t) => {
    const cwd = cleanup.dir('ferry-fio-');
    const fio = startFio(cleanup, s.a.uri('far'), { name: 'cut', cwd, size: '64m', rateIops: 800 });
    await waitWrites(s.a, 'far', 500);
    s.proxy.cut();
    const cutAt = Date.now();
    const downA = await waitStatus(s.a, 'far', 'link down at site A', (st) => st.link.state !== 'connected', 40_000);
    t.diagnostic(`site A saw the link down after ${((Date.now() - cutAt) / 1000).toFixed(1)} s: ${downA.link.lastError}`);
    while (Date.now() - cutAt < 30_000) await new Promise((r) => setTimeout(r, 500));
    const during = await mirrorStatus(s.a, 'far');
    assert.ok(during.lagRecords > 0, 'writes went on during the cut');
    const atB = await mirrorStatus(s.b, 'far-dr');
    t.diagnostic(`after 30 s cut: site A lag ${during.lagRecords} records / ${(during.lagBytes / MiB).toFixed(1)} MiB / ${during.lagSeconds.toFixed(1)} s; site B link ${atB.link.state}, lag ${atB.lagSeconds.toFixed(1)} s`);
    assert.equal(atB.link.state, 'down', 'site B shows the link down');
    assert.ok(atB.lagSeconds >= 10, `site B's lag grows with the silence (${atB.lagSeconds} s)`);
    s.proxy.restore();
    const job = await fio.stop();
    t.diagnostic(`fio through the cut: ${job.write.total_ios} writes, ${job.read.total_ios} verified reads, no error`);
    const { a } = await waitCaughtUp(s, 'far', 'far-dr', 180_000);
    t.diagnostic(`reconnected (${a.link.reconnects} reconnects)`);
    await identical(s, 'far', 'far-dr');
  });

  it('connections reset mid-stream: replication resumes where site B stands, and converges', LONG, async (t) => {
    const cwd = cleanup.dir('ferry-fio-');
    const fio = startFio(cleanup, s.a.uri('far'), { name: 'reset', cwd, size: '64m', rateIops: 1500 });
    await waitWrites(s.a, 'far', 500);
    for (let i = 0; i < 5; i++) {
      s.proxy.resetAll();
      await new Promise((r) => setTimeout(r, 700 + i * 300));
    }
    await fio.stop();
    const { a } = await waitCaughtUp(s, 'far', 'far-dr', 120_000);
    t.diagnostic(`after 5 resets: ${a.link.reconnects} reconnects`);
    assert.ok(a.link.reconnects >= 1);
    await identical(s, 'far', 'far-dr');
  });
});
