// The cross-disk causal workload (causal-workload.py) and its checker (causal-check.py) on
// real disks, and the negative control issue 16 asks for: two disks mirrored SEPARATELY
// (each its own staging area and local mirror) give, under a fault, mirror images that are
// each fine alone but together an image the application never had, and the checker says so.
//  - The workload on two disks: 8 writes in flight on each connection, the write after an
//    acknowledgement of one disk goes to the other; stopped gracefully, both disks (read over
//    NBD) hold every acknowledged write and pass the causal check.
//  - Separate mirrors: while the workload runs, disk 0's mirror is paused and disk 1's keeps
//    applying until it holds a write that depends on a disk-0 write acknowledged after the
//    pause (a condition on the log and the mirror file); kill -9 of ferryd. The two mirror
//    files: intact, only issued writes, no same-disk violation, and cross-disk violations
//    found (the missing write on disk 0, its dependent on disk 1). After a restart the
//    primaries hold every acknowledged write (--acked); once disk 0's mirror is resumed and
//    both drained, the mirror files pass too and equal their primaries.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type { Ferryd } from '../harness.js';
import { Cleanup, waitFor } from '../staging/helpers.js';
import { MiB, T, assertSameBytes, cliJson, mirrorStatus, waitDrained } from '../mirror/helpers.js';
import { assertCausal, causalCheck, highestCounterIn, readCausalLog, startCausalWorkload, seedFor, waitAcks } from './helpers.js';

const SIZE = 16 * MiB;
const BLOCKS = SIZE / 4096;
const DEPTH = 8;

describe('the causal workload and checker on separately mirrored disks', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let work: string;

  before(async () => {
    d = await cleanup.ferryd();
    work = fs.realpathSync(cleanup.dir('ferry-causal-'));
  }, T);
  after(() => cleanup.run(), T);

  it('keeps 8 writes in flight per disk, chains acknowledgements across disks, and its disks pass the checker', T, async (t) => {
    await d.createDisk('cw0', SIZE);
    await d.createDisk('cw1', SIZE);
    const log = path.join(work, 'plain.log');
    const w = startCausalWorkload(cleanup, [d.uri('cw0'), d.uri('cw1')], log, { blocks: BLOCKS, seed: seedFor(t), maxSeconds: 120, depth: DEPTH });
    assert.ok(await w.connected, 'the workload did not connect');
    await waitAcks(log, 4000);
    const run = await w.stop();
    t.diagnostic(`workload: ${JSON.stringify(run)}`);
    assert.equal(run.error, null, JSON.stringify(run));
    assert.equal(run.failed, 0);
    assert.equal(run.acked, run.issued, 'a graceful stop drains every write');
    assert.deepEqual(
      run.perDisk.map((p) => p.maxInFlight),
      [DEPTH, DEPTH],
      `${DEPTH} writes in flight on each connection: ${JSON.stringify(run.perDisk)}`,
    );
    // Chained: nearly every write after the first DEPTH per disk answers an acknowledgement from the other disk.
    const answers = run.issued - 2 * DEPTH;
    assert.ok(run.chained >= 0.75 * answers, `${run.chained} of ${answers} writes chained to the other disk`);
    // And the log shows it: a write of one disk carries dependencies on the other disk's writes acknowledged since that disk's previous write.
    const l = readCausalLog(log);
    assert.equal(l.writes.size, run.issued);
    assert.equal(l.ackOrder.length, run.acked);
    const prevAcks = [0, 0];
    let fresh = 0;
    for (const [, wr] of [...l.writes.entries()].sort((a, b) => a[0] - b[0])) {
      if (l.ackOrder.slice(prevAcks[wr.disk], wr.acks).some((c) => l.writes.get(c)!.disk !== wr.disk)) fresh++;
      prevAcks[wr.disk] = wr.acks;
    }
    t.diagnostic(`${run.chained} of ${answers} writes chained to the other disk; ${fresh} of ${run.issued} depend on other-disk writes acknowledged since their disk's previous write`);
    assert.ok(fresh >= 0.75 * answers, `${fresh} of ${run.issued} writes carry fresh cross-disk dependencies`);
    // Both disks over NBD: every acknowledged write, a causal cut.
    const c = await causalCheck([d.uri('cw0'), d.uri('cw1')], log, BLOCKS, { acked: true });
    assertCausal(c, 'the disks after a graceful stop');
    assert.equal(c.ackedInCut, run.acked);
    assert.ok(c.maxAcks > 0 && c.maxAcks <= c.acked, JSON.stringify(c));
    assert.ok(c.perDisk.every((p) => p.writtenBlocks > 0 && p.highest > 0), JSON.stringify(c.perDisk));
  });

  it('two disks mirrored separately, one mirror paused, kill -9: the checker finds the cross-disk violation', T, async (t) => {
    const primaries = [(await d.createDisk('sep0', SIZE)).path as string, (await d.createDisk('sep1', SIZE)).path as string];
    const disks = ['sep0', 'sep1'];
    const targets = disks.map((disk) => path.join(work, `${disk}-mirror.img`));
    for (const [i, disk] of disks.entries()) {
      await cliJson(d, ['mirror', 'create', disk, '--to', `local:${targets[i]}`, '--staging', path.join(work, `${disk}-staging`), '--staging-size', '128M', '--wait']);
    }
    const log = path.join(work, 'separate.log');
    const w = startCausalWorkload(cleanup, disks.map((disk) => d.uri(disk)), log, { blocks: BLOCKS, seed: seedFor(t), maxSeconds: 120, depth: DEPTH });
    assert.ok(await w.connected, 'the workload did not connect');
    await waitAcks(log, 1000);

    // The fault: disk 0's mirror stops applying; every write issued from now on (counter > pausedAt) stays out of it.
    await cliJson(d, ['mirror', 'pause', 'sep0']);
    assert.equal((await mirrorStatus(d, 'sep0')).state, 'paused');
    const pausedAt = readCausalLog(log).lastCounter;
    // Wait until disk 1's mirror holds a write issued after the acknowledgement of a disk-0 write issued after the pause.
    let needed = 0;
    await waitFor(
      "disk 1's mirror to apply a write that depends on a disk-0 write its paused mirror lacks",
      () => {
        if (!needed) {
          const l = readCausalLog(log);
          const x = [...l.writes.entries()].find(([c, wr]) => c > pausedAt && wr.disk === 0 && wr.ackIndex !== null);
          const dep = x && [...l.writes.entries()].find(([, wr]) => wr.disk === 1 && wr.acks > x[1].ackIndex!);
          if (!dep) return false;
          needed = dep[0];
        }
        return highestCounterIn(targets[1]!, 1, BLOCKS) >= needed;
      },
      60_000,
    );
    const lag = (await mirrorStatus(d, 'sep0')).lagRecords;
    assert.equal((await d.kill9()).signal, 'SIGKILL');
    const run = await w.done;
    assert.ok(run.error, `the workload ended before the kill: ${JSON.stringify(run)}`);
    t.diagnostic(`paused after write ${pausedAt}; killed once disk 1's mirror held write ${needed} or later (disk 0's mirror ${lag} records behind); ${run.acked}/${run.issued} acknowledged`);

    // The mirror files, as the kill left them: each intact and a prefix of its own disk's order, together not causal.
    const mirrors = await causalCheck(targets, log, BLOCKS);
    t.diagnostic(`mirrors: ${mirrors.crossDiskViolations} cross-disk violations, e.g. ${JSON.stringify(mirrors.violations[0])}`);
    const what = JSON.stringify(mirrors);
    assert.equal(mirrors.logErrors, 0, what);
    assert.equal(mirrors.torn, 0, what);
    assert.equal(mirrors.unissued, 0, what);
    assert.equal(mirrors.sameDiskViolations, 0, what);
    assert.ok(mirrors.crossDiskViolations > 0, `the checker missed the cross-disk violation: ${what}`);
    assert.equal(mirrors.causalViolations, mirrors.crossDiskViolations, what);
    // What is missing is disk 0's (its mirror was paused: the writes not applied by then, and all issued after), needed by disk 1's.
    for (const v of mirrors.violations) assert.ok(v.crossDisk && v.missing.disk === 0 && v.dependent.disk === 1, `${JSON.stringify(v)} in ${what}`);

    // The primaries after a restart: every acknowledged write (and so a causal cut).
    await d.start();
    const prim = await causalCheck(disks.map((disk) => d.uri(disk)), log, BLOCKS, { acked: true });
    assertCausal(prim, 'the primaries after kill -9 and a restart');
    assert.equal(prim.ackedInCut, run.acked);

    // Resumed and drained, the mirrors catch up: causal, every acknowledged write, equal to their primaries.
    await cliJson(d, ['mirror', 'resume', 'sep0']);
    for (const disk of disks) await waitDrained(d, disk);
    assertCausal(await causalCheck(targets, log, BLOCKS, { acked: true }), 'the mirrors once resumed and drained');
    for (const [i, disk] of disks.entries()) await assertSameBytes(primaries[i]!, targets[i]!, `${disk}, once drained`);
  });
});
