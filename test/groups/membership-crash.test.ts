// kill -9 in the middle of a membership change under load (the crash column of the table at
// the head of src/control/group-control.ts): a disk being added, then a member being removed,
// while the cross-disk causal workload writes every member. After the restart the change
// either happened or did not, nothing acknowledged is lost on any disk, the group's mirror
// files (as the kill left them) are a causal cut, the change can be made again, and the
// mirror ends equal to every member.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, type Ferryd } from '../harness.js';
import { qemuIoOk } from '../interop/clients.js';
import { Cleanup, waitFor } from '../staging/helpers.js';
import { MiB, assertSameBytes, cliJson, diskShow, mirrorStatus, waitDrained, waitInSync } from '../mirror/helpers.js';
import { assertCausal, causalCheck, readCausalLog, startCausalWorkload, type CausalWorkload } from './helpers.js';

const T = { timeout: 300_000 } as const;
const SIZE = 32 * MiB;
const BLOCKS = (16 * MiB) / 4096;

describe('kill -9 during a consistency group membership change under load', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let work: string;
  let mdir: string;
  const file: Record<string, string> = {};

  before(async () => {
    requireTool('qemu-io');
    d = await cleanup.ferryd();
    work = fs.realpathSync(cleanup.dir('ferry-group-membership-crash-'));
    mdir = path.join(work, 'mirror');
    fs.mkdirSync(mdir);
  }, T);
  after(() => cleanup.run(), T);

  function seedFor(t: { diagnostic(m: string): void }): number {
    const seed = process.env.FERRY_CAUSAL_SEED ? Number(process.env.FERRY_CAUSAL_SEED) : Math.floor(Math.random() * 2 ** 31);
    t.diagnostic(`FERRY_CAUSAL_SEED=${seed}`);
    return seed;
  }

  async function workload(t: { diagnostic(m: string): void }, disks: string[], name: string): Promise<{ w: CausalWorkload; log: string }> {
    const log = path.join(work, `${name}.log`);
    const w = startCausalWorkload(cleanup, disks.map((x) => d.uri(x)), log, { blocks: BLOCKS, seed: seedFor(t), maxSeconds: 150, depth: 8 });
    assert.ok(await w.connected, 'the workload did not connect');
    await waitFor('1000 acknowledged writes', () => fs.existsSync(log) && readCausalLog(log).ackOrder.length >= 1000, 60_000);
    return { w, log };
  }

  async function members(): Promise<string[]> {
    return (await cliJson(d, ['group', 'show', 'G'])).members.map((m: any) => m.disk);
  }

  /** Whether the add killed in the first test had happened (read after the restart). */
  let addHappened = false;

  it('killed while a disk is added: after the restart the add happened or not; nothing acknowledged is lost; the mirror files are a causal cut', T, async (t) => {
    for (const name of ['D1', 'D2', 'D3']) file[name] = (await d.createDisk(name, SIZE)).path;
    await qemuIoOk(d.uri('D3'), [`write -P 0x5c 0 ${SIZE}`]);
    await cliJson(d, ['group', 'create', 'G', '--disks', 'D1,D2', '--staging', path.join(work, 'G.stg'), '--staging-size', '256M']);
    await cliJson(d, ['mirror', 'create', '--group', 'G', '--to', `local:${mdir}`, '--wait']);
    const { w, log } = await workload(t, ['D1', 'D2'], 'add');

    // The add creates D3's mirror file first (then holds, drains, commits): killed as soon as it appears.
    const appeared = new Promise<void>((resolve) => {
      const watcher = fs.watch(mdir, (_e, name) => {
        if (name === 'D3.img') {
          watcher.close();
          resolve();
        }
      });
    });
    const add = d.cli(['group', 'add', 'G', 'D3', '--json'], { timeoutMs: 60_000 });
    await appeared;
    assert.equal((await d.kill9()).signal, 'SIGKILL');
    const addResult = await add;
    const run = await w.done;
    t.diagnostic(`add killed: CLI exit ${addResult.code}; workload ${run.acked}/${run.issued} acknowledged`);
    assertCausal(await causalCheck(['D1', 'D2'].map((x) => path.join(mdir, `${x}.img`)), log, BLOCKS), "the group mirror's files after the kill");

    await d.start();
    assertCausal(await causalCheck(['D1', 'D2'].map((x) => d.uri(x)), log, BLOCKS, { acked: true }), 'the members after the restart');
    const now = await members();
    addHappened = now.includes('D3');
    t.diagnostic(`after the restart the members are ${now.join(',')}; ${mdir}: ${fs.readdirSync(mdir).sort().join(',')}`);
    if (!addHappened) {
      assert.deepEqual(now, ['D1', 'D2']);
      assert.equal((await diskShow(d, 'D3')).group, undefined);
      await qemuIoOk(d.uri('D3'), [`read -P 0x5c 0 ${SIZE}`], ['-r']);
      const s = await waitInSync(d, 'G');
      assert.deepEqual(s.members.map((m: any) => [m.disk, m.synced]), [['D1', true], ['D2', true]]);
    }
  });

  // The member's mirror file is created before the change is recorded (holding, draining and
  // closing the group come in between: hundreds of ms under load); a crash there leaves it. The
  // retry takes it as it is: empty (killed before it was sized) or exactly the member's size, no data extent (group-mirror.ts).
  it('an add the crash undid can be made again (its half-made mirror file does not block it)', T, async () => {
    if (addHappened) return;
    const again = await d.cli(['group', 'add', 'G', 'D3', '--json'], { timeoutMs: 60_000 });
    assert.equal(again.code, 0, `group add G D3 again after the crash: exit ${again.code}\n${again.stdout}\n${again.stderr}`);
  });

  it('the add made (again, once the left-over file is moved away if need be), killed while the mirror copies D3: the copy resumes and ends equal to every member', T, async (t) => {
    if (!(await members()).includes('D3')) {
      const orphan = path.join(mdir, 'D3.img');
      if (fs.existsSync(orphan)) {
        // What the refusal tells the operator to do.
        fs.renameSync(orphan, path.join(work, 'D3.img.left-over'));
        t.diagnostic(`moved ${orphan} (left by the add the crash undid) away`);
      }
      await cliJson(d, ['group', 'add', 'G', 'D3']);
      // Killed again while the mirror copies the new member (if it still does): the copy resumes after the restart.
      const copying = await mirrorStatus(d, 'G');
      t.diagnostic(`just after the add: mirror ${copying.state}, members ${JSON.stringify(copying.members.map((m: any) => [m.disk, m.synced]))}`);
      if (copying.state === 'syncing') {
        assert.equal((await d.kill9()).signal, 'SIGKILL');
        await d.start();
        const back = await mirrorStatus(d, 'G');
        t.diagnostic(`killed while D3 was being copied; after the restart: mirror ${back.state}, members ${JSON.stringify(back.members.map((m: any) => [m.disk, m.synced]))}`);
        assert.deepEqual(back.members.filter((m: any) => m.disk !== 'D3').map((m: any) => [m.disk, m.synced]), [['D1', true], ['D2', true]], 'the members copied before stay copied (only D3 is copied again)');
      }
    }
    assert.deepEqual(await members(), ['D1', 'D2', 'D3']);
    const s = await waitInSync(d, 'G');
    assert.deepEqual(s.members.map((m: any) => [m.disk, m.synced]), [['D1', true], ['D2', true], ['D3', true]]);
    await waitDrained(d, 'G');
    for (const x of ['D1', 'D2', 'D3']) await assertSameBytes(file[x]!, path.join(mdir, `${x}.img`), `${x} and its mirror file`);
  });

  it('killed while a member is removed: the removal happened or not; nothing acknowledged is lost; it can be made again', T, async (t) => {
    // The workload's blocks start as zeroes (the first workload wrote there), on the mirror too.
    for (const x of ['D1', 'D2', 'D3']) await qemuIoOk(d.uri(x), ['write -z 0 16M']);
    await waitDrained(d, 'G');
    const { w, log } = await workload(t, ['D1', 'D2', 'D3'], 'remove');
    const remove = d.cli(['group', 'remove', 'G', 'D1', '--json'], { timeoutMs: 60_000 });
    // The change suspends the group's mirror (step 2): killed once its status is gone.
    const deadline = Date.now() + 60_000;
    let status = 200;
    while (status === 200) {
      assert.ok(Date.now() < deadline, "the group's mirror was never suspended by the removal");
      status = (await d.api('GET', '/v1/disks/G/mirror')).status;
    }
    assert.equal((await d.kill9()).signal, 'SIGKILL');
    const removeResult = await remove;
    const run = await w.done;
    t.diagnostic(`remove killed (mirror status ${status}): CLI exit ${removeResult.code}; workload ${run.acked}/${run.issued} acknowledged`);

    await d.start();
    assertCausal(await causalCheck(['D1', 'D2', 'D3'].map((x) => d.uri(x)), log, BLOCKS, { acked: true }), 'D1, D2, D3 after the restart');
    const now = await members();
    t.diagnostic(`after the restart the members are ${now.join(',')}`);
    if (now.includes('D1')) {
      assert.deepEqual(now, ['D1', 'D2', 'D3']);
      const again = await d.cli(['group', 'remove', 'G', 'D1', '--json'], { timeoutMs: 60_000 });
      assert.equal(again.code, 0, `group remove G D1 again after the crash: exit ${again.code}\n${again.stdout}\n${again.stderr}`);
    }
    assert.deepEqual(await members(), ['D2', 'D3']);
    assert.equal((await diskShow(d, 'D1')).group, undefined);
    assertCausal(await causalCheck(['D1', 'D2', 'D3'].map((x) => d.uri(x)), log, BLOCKS, { acked: true }), 'D1 (its own disk), D2, D3');
    const s = await waitInSync(d, 'G');
    assert.deepEqual(s.members.map((m: any) => [m.disk, m.synced]), [['D2', true], ['D3', true]]);
    await waitDrained(d, 'G');
    for (const x of ['D2', 'D3']) await assertSameBytes(file[x]!, path.join(mdir, `${x}.img`), `${x} and its mirror file`);
    assert.ok(fs.existsSync(path.join(mdir, 'D1.img')), "the removed member's mirror file stays");
  });
});
