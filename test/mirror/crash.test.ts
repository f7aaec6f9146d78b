// Mirrors survive kill -9 of ferryd:
//  - during the initial sync (1 GiB of data): after a restart the sync resumes from its
//    durable checkpoint (progress is above zero at once, and less than the whole disk is
//    copied again) and the mirror ends byte-identical to the disk;
//  - during steady mirroring under a tagged write workload (test/staging/workload.py, every
//    acknowledgement logged): every acknowledged write is on the primary after the restart
//    (test/staging/check.py), and once drained primary and mirror are byte-identical;
//  - while `mirror swap` runs in a loop under that workload: a swap cannot be stopped between
//    its steps from outside, so ferryd is killed at random moments of back-to-back swaps.
//    After each restart exactly one file is the primary and the other the mirror, no
//    acknowledged write is lost, and once drained both files are identical.
// The schedules are random; FERRY_CRASH_SEED replays one (the seed is printed).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type { Ferryd } from '../harness.js';
import { seededRng } from '../../src/testing/faulty-store.js';
import { Cleanup, checkDisk, startWorkload, waitFor, type CheckSummary, type WorkloadSummary } from '../staging/helpers.js';
import { GiB, MiB, T, assertSameBytes, cliJson, diskShow, fillPattern, mirrorStatus, sleep, waitDrained, waitInSync, waitWrites } from './helpers.js';


function seedFor(t: { diagnostic(m: string): void }): number {
  const seed = process.env.FERRY_CRASH_SEED ? Number(process.env.FERRY_CRASH_SEED) : Math.floor(Math.random() * 2 ** 31);
  t.diagnostic(`FERRY_CRASH_SEED=${seed}`);
  return seed;
}

function assertCheck(c: CheckSummary, run: WorkloadSummary, where: string): void {
  assert.deepEqual(c.errors, [], `${where}: ${JSON.stringify(c)}`);
  assert.equal(c.torn, 0, where);
  assert.equal(c.prefixViolations, 0, where);
  assert.equal(c.issued, run.issued, `${where}: the log lists every issued write`);
  assert.equal(c.acked, run.acked, `${where}: the log lists every acknowledgement`);
}

describe('mirrors and kill -9 of ferryd', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let work: string;

  before(async () => {
    d = await cleanup.ferryd();
    work = fs.realpathSync(cleanup.dir('ferry-mirror-crash-'));
  }, T);
  after(() => cleanup.run(), T);

  it('killed during the initial sync, the sync resumes from its checkpoint and ends identical', T, async (t) => {
    // 1 GiB of data (a different pattern in every MiB), adopted as a disk.
    const image = path.join(work, 'sync.img');
    fillPattern(image, 0, GiB, 21);
    assert.equal((await d.api('POST', '/v1/disks/adopt', { name: 'sync', path: image })).status, 201);
    const target = path.join(work, 'sync-mirror.img');
    await cliJson(d, ['mirror', 'create', 'sync', '--to', `local:${target}`, '--staging', path.join(work, 'sync-staging'), '--staging-size', '64M']);
    // Past the first durable checkpoint (every 256 MiB) but not done.
    let before: any;
    for (;;) {
      before = await mirrorStatus(d, 'sync');
      assert.equal(before.consistent, false, `the sync finished before the kill: ${JSON.stringify(before)}`);
      if (before.syncProgress >= 0.5) break;
      await sleep(20);
    }
    const exit = await d.kill9();
    assert.equal(exit.signal, 'SIGKILL');
    await d.start();
    const resumed = await mirrorStatus(d, 'sync');
    t.diagnostic(`killed at ${(before.syncProgress * 100).toFixed(1)}%; right after the restart: ${(resumed.syncProgress * 100).toFixed(1)}% (${resumed.state})`);
    assert.ok(resumed.syncProgress > 0, `the sync starts over instead of resuming: ${JSON.stringify(resumed)}`);
    assert.ok(resumed.syncProgress <= before.syncProgress, 'the durable checkpoint is never ahead of the sync');
    assert.equal(resumed.consistent, false);
    await waitInSync(d, 'sync');
    const copied = (d.stdout + d.stderr)
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l))
      .filter((x) => x.disk === 'sync' && x.msg === 'mirror sync complete');
    assert.equal(copied.length, 1, 'one sync completed since the restart');
    // Not all of it again (the checkpointed part is skipped), but at least what was not synced before the kill.
    const again = copied[0].copiedBytes as number;
    assert.ok(again < GiB && again >= GiB - before.syncBytes, `copied again ${again} bytes; ${before.syncBytes} were synced before the kill`);
    await waitDrained(d, 'sync');
    await assertSameBytes(image, target, 'after the resumed sync');
  });

  it('killed during steady mirroring under writes: every acknowledged write survives, primary and mirror end identical', T, async (t) => {
    const rand = seededRng(seedFor(t));
    const size = 64 * MiB;
    const blocks = size / 4096;
    const info = await d.createDisk('steady', size);
    const target = path.join(work, 'steady-mirror.img');
    await cliJson(d, ['mirror', 'create', 'steady', '--to', `local:${target}`, '--staging', path.join(work, 'steady-staging'), '--staging-size', '64M', '--wait']);
    let next = 1;
    let state: string | null = null;
    let acked = 0;
    for (let i = 0; i < 4; i++) {
      const log = path.join(work, `steady-${i}.log`);
      const w = startWorkload(cleanup, { uri: d.uri('steady'), log, firstCounter: next, blocks, seed: Math.floor(rand() * 2 ** 31), maxSeconds: 60 });
      assert.ok(await w.connected, `workload ${i} did not connect`);
      const delay = 300 + Math.floor(rand() * 1500);
      await sleep(delay);
      const lag = (await mirrorStatus(d, 'steady')).lagRecords;
      assert.equal((await d.kill9()).signal, 'SIGKILL');
      const run = await w.done;
      assert.ok(run.error, `workload ${i} finished before the kill (${JSON.stringify(run)})`);
      await d.start();
      const where = `crash ${i} (kill after ${delay} ms, mirror ${lag} records behind, ${run.acked}/${run.issued} acknowledged)`;
      const stateOut = path.join(work, `steady-state-${i}`);
      assertCheck(await checkDisk(d.uri('steady'), log, { blocks }, state, stateOut), run, where);
      const m = await mirrorStatus(d, 'steady');
      assert.equal(m.consistent, true, `${where}: ${JSON.stringify(m)}`);
      await waitDrained(d, 'steady');
      await assertSameBytes(info.path, target, `${where}, once drained`);
      state = stateOut;
      next = run.next;
      acked += run.acked;
    }
    t.diagnostic(`${acked} writes acknowledged over 4 crashes`);
    assert.ok(acked > 1000, `only ${acked} writes acknowledged`);
  });

  it('killed at random moments of back-to-back swaps under writes: one primary, nothing acknowledged lost, both files identical', T, async (t) => {
    const rand = seededRng(seedFor(t));
    const size = 64 * MiB;
    const blocks = size / 4096;
    const a = (await d.createDisk('swp', size)).path as string;
    const b = path.join(work, 'swp-other.img');
    await cliJson(d, ['mirror', 'create', 'swp', '--to', `local:${b}`, '--staging', path.join(work, 'swp-staging'), '--staging-size', '64M', '--wait']);
    let next = 1;
    let state: string | null = null;
    const pauses: number[] = [];
    let swaps = 0;
    const rounds = 6;
    for (let i = 0; i < rounds; i++) {
      const log = path.join(work, `swp-${i}.log`);
      const w = startWorkload(cleanup, { uri: d.uri('swp'), log, firstCounter: next, blocks, seed: Math.floor(rand() * 2 ** 31), maxSeconds: 60 });
      assert.ok(await w.connected, `workload ${i} did not connect`);
      await waitWrites(d, 'swp', 200);
      // Swaps back to back (through the API: no process start between them) until the kill.
      let killed = false;
      let refused: unknown = null;
      const loop = (async () => {
        while (!killed) {
          const r = await d.api('POST', '/v1/disks/swp/mirror/swap').catch(() => null);
          if (!r) return; // the daemon is gone
          if (r.status !== 200) {
            refused = r.body;
            return;
          }
          swaps++;
          pauses.push(r.body.pauseMs);
        }
      })();
      // At least one swap of this round first (a loaded machine must not make the round swap-free), then a random moment.
      const before = swaps;
      await waitFor(`a swap of round ${i}`, () => swaps > before || refused !== null, 60_000);
      const delay = Math.floor(rand() * 1500);
      await sleep(delay);
      killed = true;
      assert.equal((await d.kill9()).signal, 'SIGKILL');
      await loop;
      assert.equal(refused, null, `a swap in sync was refused: ${JSON.stringify(refused)}`);
      const run = await w.done;
      assert.ok(run.error, `workload ${i} finished before the kill (${JSON.stringify(run)})`);
      await d.start();
      const where = `swap crash ${i} (kill after ${delay} ms, ${swaps} swaps so far, ${run.acked}/${run.issued} acknowledged)`;
      const primary = (await diskShow(d, 'swp')).path;
      assert.ok(primary === a || primary === b, `${where}: the primary is ${primary}`);
      const other = primary === a ? b : a;
      const m = await mirrorStatus(d, 'swp');
      assert.equal(m.target, `local:${other}`, `${where}: the mirror is the other file`);
      assert.equal(m.consistent, true, `${where}: ${JSON.stringify(m)}`);
      const stateOut = path.join(work, `swp-state-${i}`);
      assertCheck(await checkDisk(d.uri('swp'), log, { blocks }, state, stateOut), run, where);
      await waitDrained(d, 'swp');
      await assertSameBytes(a, b, `${where}, once drained`);
      state = stateOut;
      next = run.next;
    }
    const sorted = [...pauses].sort((x, y) => x - y);
    const pct = (p: number): string => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!.toFixed(1) : '-');
    t.diagnostic(`${swaps} swaps completed over ${rounds} crashes; requests held (ms): median ${pct(0.5)}, p90 ${pct(0.9)}, max ${pct(1)}`);
    assert.ok(swaps >= rounds, `only ${swaps} swaps completed`);
  });
});
