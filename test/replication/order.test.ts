// Order test for the remote mirror: site B's disk is, at every moment, an image site A's disk
// really had (R5: B applies records strictly in A's sequence order).
//  - A remote mirror A:ord → B:ord-dr in steady state; test/staging/workload.py writes at
//    site A (every block tagged with the counter of the write that wrote it, issue and
//    acknowledgement logged).
//  - At random moments while it writes (seeded; FERRY_ORDER_SEED replays a schedule), site B's
//    image is snapshotted: `ferry mirror pause ord-dr` on B holds B's apply (records keep
//    arriving and are made durable in B's staging area), B's disk file is copied, and
//    `ferry mirror resume ord-dr` lets B apply again. The first snapshot goes through the
//    CLI, the rest through the same API route it calls (a CLI process per call is too slow
//    to snapshot often on a busy machine).
//  - Each snapshot, served read-only by nbdkit, is checked by test/staging/check.py in
//    prefix-only mode (B legitimately lags behind A's acknowledgements): no torn block, no
//    block holding a write never issued to it, and a prefix of A's issue order (if write K is
//    in the image, every write issued before K is there or was superseded).
//  - While the apply is held, B's applied position and file must not move (the hold's promise:
//    a fixed image).
//  - The snapshots are not all the same (the mirror really moved between them), and once
//    caught up, A and B read identical through NBD (qemu-img compare), A holding every
//    acknowledged write.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, run } from '../harness.js';
import { sha256File as sha256 } from '../interop/clients.js';
import { seededRng } from '../../src/testing/faulty-store.js';
import { Cleanup, HERE as STAGING_DIR, PYTHON, SYSTEM_ENV, checkDisk, describeRun, lastJson, runBounded, startWorkload, type CheckSummary } from '../staging/helpers.js';
import { MiB, cliJson, diskPath, mirrorStatus, startSites, stopSitesBounded, waitCaughtUp, type Sites } from './helpers.js';

const DISK = 64 * MiB;
const BLOCKS = DISK / 4096;
/** The workload writes this long at least, and longer if the snapshots need it (a busy machine). */
const WORKLOAD_SECONDS = 25;
const WORKLOAD_SECONDS_MAX = 90;
const SNAPSHOTS_MIN = 8;
const SNAPSHOTS_MAX = 14;
const TEST = { timeout: 290_000 } as const;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** check.py against an image file, served read-only by nbdkit; prefix-only: the image may lag behind the acknowledgements. */
async function checkImage(file: string, log: string, blocks: number, out: string): Promise<CheckSummary> {
  const script = `${PYTHON} ${path.join(STAGING_DIR, 'check.py')} "$uri" ${log} 0 ${blocks} - ${out}`;
  const args = ['-r', '-U', '-', 'file', file, '--run', script];
  const r = await runBounded(requireTool('nbdkit'), args, { env: { ...SYSTEM_ENV, FERRY_CHECK_PREFIX_ONLY: '1' }, timeoutMs: 120_000 });
  assert.equal(r.code, 0, `checker failed:\n${describeRun('nbdkit', args, r)}`);
  return lastJson<CheckSummary>(r.stdout);
}

interface Snapshot {
  i: number;
  file: string;
  atMs: number;
  /** B's applied seq in the pause reply, and again after the copy (still paused). */
  appliedAtPause: number;
  appliedAfterCopy: number;
  hashAfterCopy: string;
  hashOfFileBeforeResume: string;
  lagRecordsAtA: number;
}

describe('remote mirror: site B always holds a prefix of site A\'s write order', () => {
  const cleanup = new Cleanup();
  let s: Sites;
  let work: string;

  before(async () => {
    requireTool('nbdkit');
    requireTool('qemu-img');
    s = await startSites(cleanup);
    stopSitesBounded(cleanup, s);
    work = fs.realpathSync(cleanup.dir('ferry-order-'));
  }, TEST);
  after(() => cleanup.run(), TEST);

  it('every snapshot of site B taken during streaming is a prefix of site A\'s issue order', TEST, async (t) => {
    const seed = process.env.FERRY_ORDER_SEED ? Number(process.env.FERRY_ORDER_SEED) : Math.floor(Math.random() * 2 ** 31);
    t.diagnostic(`FERRY_ORDER_SEED=${seed}`);
    const rand = seededRng(seed);

    await s.a.createDisk('ord', DISK);
    await cliJson(s.a, ['mirror', 'create', 'ord', '--to', `${s.peer}:ord-dr`, '--staging', path.join(work, 'ord.stg'), '--staging-size', '128M']);
    await waitCaughtUp(s, 'ord', 'ord-dr');
    const bFile = await diskPath(s.b, 'ord-dr');

    const log = path.join(work, 'ord.log');
    const w = startWorkload(cleanup, { uri: s.a.uri('ord'), log, firstCounter: 1, blocks: BLOCKS, seed: Math.floor(rand() * 2 ** 31), maxSeconds: WORKLOAD_SECONDS_MAX });
    assert.ok(await w.connected, 'the workload did not connect');
    let running = true;
    void w.done.catch(() => undefined).finally(() => (running = false));
    const started = Date.now();

    const snaps: Snapshot[] = [];
    const wanted = (): boolean => {
      const secs = (Date.now() - started) / 1000;
      return snaps.length < SNAPSHOTS_MAX && (secs < WORKLOAD_SECONDS || snaps.length < SNAPSHOTS_MIN) && secs < WORKLOAD_SECONDS_MAX - 10;
    };
    while (running && wanted()) {
      await sleep(300 + Math.floor(rand() * 1500));
      if (!running) break;
      const i = snaps.length;
      const lagRecordsAtA = (await mirrorStatus(s.a, 'ord')).lagRecords as number;
      let paused: any;
      if (i === 0) paused = await cliJson(s.b, ['mirror', 'pause', 'ord-dr']);
      else {
        const r = await s.b.api('POST', '/v1/disks/ord-dr/mirror/pause');
        assert.equal(r.status, 200, `pause ${i}: ${JSON.stringify(r.body)}`);
        paused = r.body;
      }
      assert.equal(paused.state, 'paused', JSON.stringify(paused));
      assert.equal(paused.role, 'replica');
      assert.equal(paused.consistent, true);
      const file = path.join(work, `snap-${i}.img`);
      const atMs = Date.now() - started;
      await run('cp', ['--sparse=always', bFile, file]);
      const afterCopy = await mirrorStatus(s.b, 'ord-dr');
      const hashAfterCopy = sha256(file);
      const hashOfFileBeforeResume = sha256(bFile);
      if (i === 0) await cliJson(s.b, ['mirror', 'resume', 'ord-dr']);
      else {
        const r = await s.b.api('POST', '/v1/disks/ord-dr/mirror/resume');
        assert.equal(r.status, 200, `resume ${i}: ${JSON.stringify(r.body)}`);
        assert.notEqual(r.body.state, 'paused');
      }
      snaps.push({ i, file, atMs, appliedAtPause: paused.appliedSeq, appliedAfterCopy: afterCopy.appliedSeq, hashAfterCopy, hashOfFileBeforeResume, lagRecordsAtA });
    }
    w.child.kill('SIGINT'); // the workload drains, flushes and disconnects
    const run1 = await w.done;
    t.diagnostic(`workload: ${run1.acked}/${run1.issued} writes acknowledged, ${run1.flushes} flushes, ${run1.failed} failed; ${snaps.length} snapshots`);
    assert.equal(run1.error, null, `the workload saw an error: ${JSON.stringify(run1)}`);
    assert.equal(run1.failed, 0);
    assert.ok(snaps.length >= SNAPSHOTS_MIN, `only ${snaps.length} snapshots during the workload`);

    // Every snapshot: intact, only issued writes, a prefix of A's issue order.
    const results: Array<{ snap: Snapshot; c: CheckSummary }> = [];
    for (const snap of snaps) {
      const c = await checkImage(snap.file, log, BLOCKS, path.join(work, `snap-${snap.i}.state`));
      results.push({ snap, c });
      t.diagnostic(
        `snapshot ${snap.i} at ${(snap.atMs / 1000).toFixed(1)} s: B applied ${snap.appliedAtPause} at pause, ${snap.appliedAfterCopy} after the copy; ` +
          `A ${snap.lagRecordsAtA} records behind; image holds writes up to ${c.highestSurvivor} (${c.writtenBlocks} blocks written, ${c.torn} torn, ${c.prefixViolations} prefix violations)`,
      );
      fs.rmSync(snap.file, { force: true });
    }
    // Judged after convergence below, so one run reports everything.
    const problems: string[] = [];
    for (const { snap, c } of results) {
      const where = `snapshot ${snap.i} (taken ${(snap.atMs / 1000).toFixed(1)} s into the workload, B applied ${snap.appliedAtPause} at pause / ${snap.appliedAfterCopy} after the copy, image holds writes up to ${c.highestSurvivor})`;
      if (c.torn !== 0) problems.push(`${where}: ${c.torn} torn blocks: ${JSON.stringify(c.errors.slice(0, 3))}`);
      if (c.prefixViolations !== 0) problems.push(`${where}: not a prefix of site A's issue order (${c.prefixViolations} blocks): ${JSON.stringify(c.errors.slice(0, 3))}`);
      else if (c.errors.length) problems.push(`${where}: ${JSON.stringify(c.errors.slice(0, 3))}`);
      // While the apply was held, B's image stayed fixed (what `mirror pause` on a replica promises).
      if (snap.appliedAfterCopy !== snap.appliedAtPause) problems.push(`${where}: B applied records after \`mirror pause\` answered 'paused'`);
      if (snap.hashOfFileBeforeResume !== snap.hashAfterCopy) problems.push(`${where}: B's disk file changed while its apply was held (the copy differs from the file before resume)`);
    }
    // The mirror moved between snapshots.
    const distinct = new Set(snaps.map((x) => x.hashAfterCopy));
    t.diagnostic(`${distinct.size} distinct images among ${snaps.length} snapshots`);
    assert.ok(distinct.size > 1, 'every snapshot is the same image: the mirror did not move');
    assert.ok(results.some((x) => x.c.highestSurvivor > 0), 'no snapshot holds any write of the workload');

    // Caught up: both sites read the same, and A holds every acknowledged write.
    const caught = await waitCaughtUp(s, 'ord', 'ord-dr');
    t.diagnostic(`caught up: A applied ${caught.a.appliedSeq}, B applied ${caught.b.appliedSeq}`);
    const cmp = await run(requireTool('qemu-img'), ['compare', '-f', 'raw', '-F', 'raw', s.a.uri('ord'), s.b.uri('ord-dr')], { timeoutMs: 120_000 });
    assert.equal(cmp.code, 0, `qemu-img compare A:ord B:ord-dr: ${cmp.stdout}${cmp.stderr}`);
    const onA = await checkDisk(s.a.uri('ord'), log, { blocks: BLOCKS }, null, path.join(work, 'a.state'));
    assert.deepEqual(onA.errors, [], `site A: ${JSON.stringify(onA)}`);
    assert.equal(onA.acked, run1.acked);

    for (const p of problems) t.diagnostic(`PROBLEM ${p}`);
    assert.deepEqual(problems, [], 'every snapshot of site B must be a fixed image that is a prefix of site A\'s issue order');
  });
});
