// Crash safety is tested by crashing. A 64 MiB disk behind a 64 MiB staging area (so the
// ring wraps many times) takes a tagged write workload (workload.py: 16 requests in
// flight, runs of 1..16 blocks, some FUA, occasional FLUSH, every acknowledgement logged)
// while ferryd is killed with SIGKILL at a random moment, again and again. After each
// restart on the same data directory (every fourth time after one more kill while it
// starts up, recovers and replays) the whole disk is read and checked (check.py):
// every acknowledged write is there or superseded by a later one (kill -9 keeps the page
// cache, so this holds for every acknowledged write, not only flushed or FUA ones), the
// image is a prefix of the issue order, and no block is torn. The staging area must
// then report itself healthy, and the workload goes on with new counters.
//
// The schedule is random; FERRY_CRASH_SEED replays one (the seed is printed).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import type { Ferryd } from '../harness.js';
import { seededRng } from '../../src/testing/faulty-store.js';
import { Cleanup, MiB, assertHealthy, checkDisk, cliJson, sleep, stagingShow, startWorkload } from './helpers.js';

const DISK_BYTES = 64 * MiB;
const STAGING_BYTES = 64 * MiB;
const BLOCKS = DISK_BYTES / 4096;
const CRASHES = 24;


describe('staging area: crash safety by crashing (kill -9 under a write workload)', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let work: string;

  before(async () => {
    d = await cleanup.ferryd();
    work = cleanup.dir('ferry-crash-');
    await d.createDisk('crash', DISK_BYTES);
    const s = await cliJson(d, ['staging', 'attach', 'crash', '--path', path.join(work, 'staging'), '--size', '64M']);
    assert.equal(s.size, STAGING_BYTES);
    assertHealthy(s, 1);
  });
  after(() => cleanup.run());

  it(`every acknowledged write survives ${CRASHES} kills at random moments; the image is a prefix of the issue order`, { timeout: 360_000 }, async (t) => {
    const seed = process.env.FERRY_CRASH_SEED ? Number(process.env.FERRY_CRASH_SEED) : Math.floor(Math.random() * 2 ** 31);
    t.diagnostic(`FERRY_CRASH_SEED=${seed}`);
    const rand = seededRng(seed);
    let next = 1;
    let state: string | null = null;
    const totals = { issued: 0, acked: 0, fuaAcked: 0, flushedAcked: 0, survivedUnacked: 0, lostUnacked: 0 };
    let ringBytes = 0;
    let firstSeq = 0;
    let lastSeq = 0;
    for (let i = 0; i < CRASHES; i++) {
      const log = path.join(work, `run-${i}.log`);
      const w = startWorkload(cleanup, { uri: d.uri('crash'), log, firstCounter: next, blocks: BLOCKS, seed: Math.floor(rand() * 2 ** 31), maxSeconds: 30 });
      assert.ok(await w.connected, `workload ${i} did not connect`);
      const delay = 100 + Math.floor(rand() * 1400);
      await sleep(delay);
      const exit = await d.kill9();
      assert.equal(exit.signal, 'SIGKILL');
      const run = await w.done;
      assert.ok(run.error, `workload ${i} finished before the kill (${JSON.stringify(run)})`);
      if (i % 4 === 3) {
        // Crash again while the daemon starts: before, during or after recovery and replay.
        const starting = d.start();
        await sleep(Math.floor(rand() * 1500));
        d.proc.kill('SIGKILL');
        await starting.catch(() => undefined);
        await d.kill9();
      }
      await d.start();

      const stateOut = path.join(work, `state-${i}`);
      const c = await checkDisk(d.uri('crash'), log, { blocks: BLOCKS }, state, stateOut);
      const where = `crash ${i} (seed ${seed}, kill after ${delay} ms, ${run.acked}/${run.issued} writes acknowledged)`;
      assert.deepEqual(c.errors, [], `${where}: ${JSON.stringify(c)}`);
      assert.equal(c.torn, 0);
      assert.equal(c.prefixViolations, 0);
      assert.equal(c.issued, run.issued, `${where}: the log lists every issued write`);
      assert.equal(c.acked, run.acked, `${where}: the log lists every acknowledgement`);

      const s = await stagingShow(d, 'crash');
      assertHealthy(s, 1);
      ringBytes = s.ringBytes;
      if (i === 0) firstSeq = s.nextSeq;
      lastSeq = s.nextSeq;

      for (const k of Object.keys(totals) as Array<keyof typeof totals>) totals[k] += (c as any)[k];
      state = stateOut;
      next = run.next;
    }
    t.diagnostic(`totals: ${JSON.stringify(totals)}; staging records ${firstSeq}..${lastSeq}`);
    // The workload must really have exercised acknowledgement kinds and the ring.
    assert.ok(totals.acked > 1000, `only ${totals.acked} writes acknowledged`);
    assert.ok(totals.fuaAcked > 0 && totals.flushedAcked > 0, JSON.stringify(totals));
    const stagedBytes = (lastSeq - 1) * 4160;
    assert.ok(stagedBytes > 2 * ringBytes, `the ring should have wrapped: at least ${stagedBytes} bytes staged in a ${ringBytes}-byte ring`);
  });
});
