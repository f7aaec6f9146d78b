// The check issue 16 asks of a consistency group, against the negative control of
// separate-disks.test.ts: the same cross-disk causal workload (QD8 on each member, writes
// chained to the other member's acknowledgements), the group's local mirror made to lag
// (paused while thousands of records arrive), resumed, and ferryd killed with -9 while the
// mirror is catching up. The member files of the group's mirror, as the kill left them, are
// one causal cut of the group's acknowledged order: the mirror applies the group's one
// sequence, across members in order (concat-store.ts C3), so no member is ever ahead of
// another. The cut is taken mid-stream (it holds writes from after the pause and lacks
// acknowledged ones). After a restart the members hold every acknowledged write and the
// mirror catches up to byte-identical files.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type { Ferryd } from '../harness.js';
import { Cleanup, waitFor } from '../staging/helpers.js';
import { MiB, T, assertSameBytes, cliJson, mirrorStatus, waitDrained, waitInSync } from '../mirror/helpers.js';
import { assertCausal, causalCheck, readCausalLog, startCausalWorkload, seedFor, waitAcks } from './helpers.js';

const SIZE = 16 * MiB;
const BLOCKS = SIZE / 4096;

describe('a consistency group under the cross-disk causal workload', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let work: string;

  before(async () => {
    d = await cleanup.ferryd();
    work = fs.realpathSync(cleanup.dir('ferry-group-causal-'));
  }, T);
  after(() => cleanup.run(), T);

  it("kill -9 while the group's local mirror catches up: its member files are one causal cut of the group's order", T, async (t) => {
    const disks = ['cg0', 'cg1'];
    const primaries: string[] = [];
    for (const disk of disks) primaries.push((await d.createDisk(disk, SIZE)).path);
    await cliJson(d, ['group', 'create', 'cg', '--disks', disks.join(','), '--staging', path.join(work, 'cg.stg'), '--staging-size', '256M']);
    const mdir = path.join(work, 'mirror');
    fs.mkdirSync(mdir);
    await cliJson(d, ['mirror', 'create', '--group', 'cg', '--to', `local:${mdir}`, '--wait']);
    const targets = disks.map((disk) => path.join(mdir, `${disk}.img`));

    const log = path.join(work, 'group.log');
    const w = startCausalWorkload(cleanup, disks.map((disk) => d.uri(disk)), log, { blocks: BLOCKS, seed: seedFor(t), maxSeconds: 150, depth: 8 });
    assert.ok(await w.connected, 'the workload did not connect');
    await waitAcks(log, 1000);
    // The same fault as the negative control: the mirror stops applying (here: the group's, both members at once).
    await cliJson(d, ['mirror', 'pause', 'cg']);
    const pausedAt = readCausalLog(log).lastCounter;
    await waitAcks(log, readCausalLog(log).ackOrder.length + 6000);
    const lagAtResume = (await mirrorStatus(d, 'cg')).lagRecords;
    await cliJson(d, ['mirror', 'resume', 'cg']);
    // Killed mid-stream: the mirror has applied some of the backlog, not all of it.
    let lagAtKill = 0;
    await waitFor('the group mirror to be catching up', async () => {
      lagAtKill = (await mirrorStatus(d, 'cg')).lagRecords;
      return lagAtKill < lagAtResume;
    }, 60_000);
    assert.equal((await d.kill9()).signal, 'SIGKILL');
    const run = await w.done;
    t.diagnostic(`paused after write ${pausedAt}; ${lagAtResume} records behind at resume, ${lagAtKill} at the kill; ${run.acked}/${run.issued} acknowledged`);

    const mirrors = await causalCheck(targets, log, BLOCKS);
    t.diagnostic(`the group mirror's files: ${JSON.stringify({ ...mirrors, errors: mirrors.errors.slice(0, 3), violations: mirrors.violations.slice(0, 3) })}`);
    assertCausal(mirrors, "the group mirror's member files after kill -9");
    assert.ok(mirrors.perDisk.every((p) => p.highest > pausedAt), `the mirror applied writes from after the pause on both members: ${JSON.stringify(mirrors.perDisk)}`);
    assert.ok(mirrors.ackedInCut < run.acked, `the kill came mid-stream (the mirror lacked acknowledged writes): ${mirrors.ackedInCut} of ${run.acked}`);

    // Restarted: the members hold every acknowledged write; the mirror catches up and equals them.
    await d.start();
    assertCausal(await causalCheck(disks.map((disk) => d.uri(disk)), log, BLOCKS, { acked: true }), 'the members after a restart');
    await waitInSync(d, 'cg');
    await waitDrained(d, 'cg');
    assertCausal(await causalCheck(targets, log, BLOCKS, { acked: true }), 'the mirror once drained');
    for (const [i, disk] of disks.entries()) await assertSameBytes(primaries[i]!, targets[i]!, `${disk} and its mirror file once drained`);
  });
});
