// A 30 s cut of the link while more is written than the staging area holds, for each
// `--on-full` policy at once (three disks, one link):
//  - bitmap: writes never stall; the mirror falls back to its persistent dirty-region bitmap
//    (state 'bitmap'), and when the link returns it resyncs those regions, then streams;
//  - throttle: writes wait for space while the link is down, and complete once it returns;
//  - fail: writes that find the staging area full fail with ENOSPC; what was acknowledged
//    stays.
// After the link returns every replica converges to the primary's bytes (qemu-img compare).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { requireTool, run } from '../harness.js';
import { Cleanup } from '../staging/helpers.js';
import { cliJson, MiB, mirrorStatus, qemuIo, startSites, waitCaughtUp, waitStatus, type Sites } from './helpers.js';

const DISK = 256 * MiB;
const LONG = { timeout: 400_000 } as const;


describe('a 30 s link cut with the staging area overflowing, under each --on-full policy', () => {
  const cleanup = new Cleanup();
  let s: Sites;
  let work: string;

  before(async () => {
    requireTool('qemu-io');
    requireTool('qemu-img');
    s = await startSites(cleanup);
    work = cleanup.dir('ferry-outage-');
    for (const policy of ['bitmap', 'throttle', 'fail']) {
      await s.a.createDisk(policy, DISK);
      await cliJson(s.a, ['mirror', 'create', policy, '--to', `${s.peer}:${policy}-dr`, '--staging', path.join(work, `${policy}.stg`), '--staging-size', '64M', '--on-full', policy]);
      await waitCaughtUp(s, policy, `${policy}-dr`);
    }
  }, LONG);
  after(() => cleanup.run(), LONG);

  it('writes go on (bitmap), wait (throttle) or fail cleanly (fail); all converge when the link returns', LONG, async (t) => {
    s.proxy.cut();
    const cutAt = Date.now();
    // 96 MiB each, in 8 MiB writes: more than the 64 MiB staging area holds.
    const writes = Array.from({ length: 12 }, (_, i) => `write -P ${0x41 + i} ${i * 16}M 8M`);

    const bitmap = await qemuIo(s.a.uri('bitmap'), writes, 300_000);
    assert.equal(bitmap.code, 0, `bitmap: writes must never stall or fail: ${bitmap.stderr}`);
    t.diagnostic(`bitmap: 96 MiB written ${((Date.now() - cutAt) / 1000).toFixed(1)} s into the cut`);
    const bm = await waitStatus(s.a, 'bitmap', "state 'bitmap'", (st) => st.state === 'bitmap');
    assert.equal(bm.consistent, false);
    assert.ok(bm.dirtyBytes > 0, 'dirty regions are tracked');

    const throttle = qemuIo(s.a.uri('throttle'), writes, 300_000);
    const fail = await qemuIo(s.a.uri('fail'), writes, 300_000);
    assert.match(fail.stdout + fail.stderr, /No space left on device|ENOSPC/i, `fail: a write finds the staging area full: ${fail.stdout}${fail.stderr}`);
    t.diagnostic(`fail policy: ${(fail.stdout + fail.stderr).split('\n').find((l) => /space/i.test(l)) ?? ''}`);

    // While the link is down, neither `mirror status` nor `status` shows a mirror as plain in-sync.
    await waitStatus(s.a, 'fail', 'the link seen down', (st) => st.link !== null && st.link.state !== 'connected');
    const text = await s.a.cli(['mirror', 'status']);
    assert.equal(text.code, 0, text.stderr);
    for (const line of text.stdout.split('\n').filter((l) => /^(bitmap|throttle|fail)\s/.test(l))) {
      assert.match(line, /\s(primary)\s/, `the role column: ${line}`);
      if (line.startsWith('bitmap')) assert.match(line, /\sbitmap(\s|$)|link (down|connecting)/, `the bitmap fallback or the cut link is shown: ${line}`);
      else assert.match(line, /\((link (down|connecting))[,)]/, `a cut link is shown beside the state: ${line}`);
      assert.doesNotMatch(line, /\sconnected\s/, line);
    }
    const overview = await cliJson(s.a, ['status']);
    assert.ok(overview.problems.some((p: string) => /^fail: link to \S+ (down|connecting)/.test(p)), JSON.stringify(overview.problems));

    let throttleDone = false;
    void throttle.then(() => (throttleDone = true));
    while (Date.now() - cutAt < 30_000) await new Promise((r) => setTimeout(r, 500));
    assert.equal(throttleDone, false, 'throttle: writes wait while the link is down and the staging area is full');
    const atB = await mirrorStatus(s.b, 'bitmap-dr');
    assert.equal(atB.consistent, true, 'site B still holds its last consistent image');
    s.proxy.restore();

    const th = await throttle;
    assert.equal(th.code, 0, `throttle: the writes complete once the link returns: ${th.stderr}`);
    t.diagnostic(`throttle: writes completed ${((Date.now() - cutAt) / 1000).toFixed(1)} s after the cut began`);
    for (const policy of ['bitmap', 'throttle', 'fail']) {
      const { a } = await waitCaughtUp(s, policy, `${policy}-dr`, 180_000);
      assert.equal(a.dirtyBytes, 0);
      const cmp = await run(requireTool('qemu-img'), ['compare', '-f', 'raw', '-F', 'raw', s.a.uri(policy), s.b.uri(`${policy}-dr`)], { timeoutMs: 120_000 });
      assert.equal(cmp.code, 0, `${policy}: ${cmp.stdout}${cmp.stderr}`);
    }
    // The fallback does not make the staging area the mirror's again: it streams (in sync) with a consumer.
    const st = await cliJson(s.a, ['staging', 'show', 'bitmap']);
    assert.ok(st.consumers.some((c: any) => c.name === 'mirror'));
  });
});
