// Mirror-and-swap migration with an application writing the whole time (SPEC "Roles"):
// mirror create onto a new file → wait in sync → swap → remove → the old file is retired.
//  (a) fio's nbd engine with inline crc32c verification writes throughout; it must see no
//      error and no bad block; after the swap the disk lives on the new file; the old file
//      is left a whole copy (identical to the new primary once writes stop before remove)
//      and ferryd no longer holds it open. Without writes, both files are byte-identical
//      right after a swap, and again after swapping back.
//  (b) the same under ext4 (nbdfuse + loop device) with files written during every step;
//      then umount, e2fsck -fn clean, every file's checksum right after a remount.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, type Ferryd } from '../harness.js';
import { Attachment, ok, qemuIoOk, sha256File } from '../interop/clients.js';
import { Cleanup } from '../staging/helpers.js';
import { MiB, T, assertSameBytes, cliFails, cliJson, diskShow, mirrorStatus, openPaths, sleep, startFio, waitInSync, waitWrites } from './helpers.js';

const DISK = 256 * MiB;

describe('mirror-and-swap migration with an application writing the whole time', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let work: string;

  before(async () => {
    requireTool('fio');
    requireTool('qemu-io');
    requireTool('cmp');
    d = await cleanup.ferryd();
    work = fs.realpathSync(cleanup.dir('ferry-migration-'));
  }, T);
  after(() => cleanup.run(), T);

  /** A disk with some data written before the migration starts (so the sync copies something). */
  async function diskWithData(name: string): Promise<string> {
    const info = await d.createDisk(name, DISK);
    await qemuIoOk(d.uri(name), ['write -P 0x61 0 24M', 'write -P 0x62 100M 8M', `write -P 0x63 ${DISK - MiB} 1M`]);
    return info.path;
  }

  /** `ferry mirror swap`; reports how long requests were held (never asserted: machines are noisy). */
  async function swap(t: { diagnostic(m: string): void }, name: string): Promise<any> {
    const r = await cliJson(d, ['mirror', 'swap', name]);
    assert.equal(typeof r.pauseMs, 'number');
    t.diagnostic(`swap of ${name}: requests held ${r.pauseMs.toFixed(1)} ms`);
    return r;
  }

  it('(a) fio writes throughout create → sync → swap → remove: no error, no bad block; the disk ends on the new file', T, async (t) => {
    const oldPath = await diskWithData('mig');
    const newPath = path.join(work, 'mig-new.img');
    const cwd = cleanup.dir('ferry-fio-');
    const fio = startFio(cleanup, d.uri('mig'), { name: 'mig', cwd, size: `${DISK / MiB}m` });
    await waitWrites(d, 'mig', 500);

    const created = await cliJson(d, ['mirror', 'create', 'mig', '--to', `local:${newPath}`, '--staging', path.join(work, 'mig-staging'), '--staging-size', '64M']);
    assert.equal(created.target, `local:${newPath}`);
    assert.equal(created.consistent, false, 'a mirror is not consistent before its sync');
    const seen: any[] = [];
    await waitInSync(d, 'mig', 120_000, seen);
    for (const s of seen.slice(0, -1)) assert.equal(s.consistent, false, JSON.stringify(s));
    assert.ok(fio.running(), 'fio is still writing');

    // Online verify under the workload: nothing may differ (busy regions may be skipped).
    const v = await d.cli(['mirror', 'verify', 'mig', '--json'], { timeoutMs: 120_000 });
    assert.equal(v.code, 0, `${v.stdout}\n${v.stderr}`);
    const report = JSON.parse(v.stdout);
    assert.deepEqual(report.differences, [], JSON.stringify(report));
    assert.ok(report.regionsVerified > 0, JSON.stringify(report));

    await waitWrites(d, 'mig', 200);
    const s = await swap(t, 'mig');
    assert.equal(s.primary, newPath);
    assert.equal(s.mirror, oldPath);
    const shown = await cliJson(d, ['disk', 'show', 'mig']);
    assert.equal(shown.path, newPath, '`disk show` names the new file after the swap');
    assert.equal(shown.size, DISK);
    const st = await mirrorStatus(d, 'mig');
    assert.equal(st.target, `local:${oldPath}`);
    assert.equal(st.state, 'in-sync');
    assert.equal(st.consistent, true);
    assert.equal(st.lastSwapPauseMs, s.pauseMs);

    await waitWrites(d, 'mig', 200);
    assert.ok(fio.running(), 'fio is still writing after the swap');
    const removed = await cliJson(d, ['mirror', 'remove', 'mig']);
    assert.equal(removed.consistent, true);
    assert.equal(removed.target, `local:${oldPath}`);
    await waitWrites(d, 'mig', 200);
    const job = await fio.stop();
    t.diagnostic(`fio: ${job.write.total_ios} writes, ${job.read.total_ios} verified reads`);

    await cliFails(d, ['mirror', 'status', 'mig'], 'NO_MIRROR');
    assert.equal((await diskShow(d, 'mig')).path, newPath);
    assert.ok(!openPaths(d).includes(oldPath), 'ferryd no longer holds the retired file open');
    assert.ok(openPaths(d).includes(newPath));
    assert.ok(fs.existsSync(oldPath), 'the old file is left in place, not deleted');
  });

  it('(a) writes stop before remove: the retired file is identical to the new primary', T, async (t) => {
    const oldPath = await diskWithData('mig2');
    const newPath = path.join(work, 'mig2-new.img');
    const cwd = cleanup.dir('ferry-fio-');
    const fio = startFio(cleanup, d.uri('mig2'), { name: 'mig2', cwd, size: `${DISK / MiB}m` });
    await waitWrites(d, 'mig2', 500);
    await cliJson(d, ['mirror', 'create', 'mig2', '--to', `local:${newPath}`, '--staging', path.join(work, 'mig2-staging'), '--staging-size', '64M']);
    await waitInSync(d, 'mig2');
    await waitWrites(d, 'mig2', 200);
    const s = await swap(t, 'mig2');
    assert.equal(s.primary, newPath);
    await waitWrites(d, 'mig2', 200);
    await fio.stop();
    // Every record reaches the mirror before it is removed.
    await cliJson(d, ['mirror', 'remove', 'mig2']);
    await waitDrainedPrimary(d, 'mig2');
    await assertSameBytes(oldPath, newPath, 'after remove with writes stopped');
  });

  it('(a) without writes both files are byte-identical right after a swap, and after swapping back', T, async (t) => {
    const oldPath = await diskWithData('quiet');
    const newPath = path.join(work, 'quiet-new.img');
    await cliJson(d, ['mirror', 'create', 'quiet', '--to', `local:${newPath}`, '--staging', path.join(work, 'quiet-staging'), '--staging-size', '64M', '--wait']);
    // Writes while in sync, then the swap: the mirror must hold them too.
    await qemuIoOk(d.uri('quiet'), ['write -P 0x71 1M 3M', `write -P 0x72 ${DISK - 4096} 4096`, 'write -z 2M 64k']);
    const s = await swap(t, 'quiet');
    assert.equal(s.primary, newPath);
    await assertSameBytes(oldPath, newPath, 'right after the swap');
    await qemuIoOk(d.uri('quiet'), ['read -P 0x71 1M 1M', 'read -P 0 2M 64k', `read -P 0x72 ${DISK - 4096} 4096`, 'read -P 0x62 100M 8M']);

    await qemuIoOk(d.uri('quiet'), ['write -P 0x73 50M 5M']);
    const back = await swap(t, 'quiet');
    assert.equal(back.primary, oldPath);
    assert.equal(back.mirror, newPath);
    assert.equal((await diskShow(d, 'quiet')).path, oldPath);
    await assertSameBytes(oldPath, newPath, 'right after swapping back');

    await qemuIoOk(d.uri('quiet'), ['write -P 0x74 60M 1M']);
    await cliJson(d, ['mirror', 'remove', 'quiet']);
    await waitDrainedPrimary(d, 'quiet');
    await assertSameBytes(oldPath, newPath, 'after remove');
  });

  describe('(b) ext4 through nbdfuse and a loop device', () => {
    let att: Attachment;
    const expected = new Map<string, string>();
    let writer: { stop: () => Promise<number> } | null = null;

    before(async () => {
      for (const x of ['nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4', 'e2fsck', 'mount', 'umount', 'blockdev']) requireTool(x);
      assert.ok(fs.existsSync('/dev/fuse'), '/dev/fuse is missing');
      await d.createDisk('fs', DISK);
      const base = cleanup.dir('ferry-migration-ext4-');
      fs.mkdirSync(path.join(base, 'fuse'));
      fs.mkdirSync(path.join(base, 'mnt'));
      att = new Attachment(path.join(base, 'fuse'), path.join(base, 'mnt'), DISK);
      cleanup.defer(async () => {
        await writer?.stop().catch(() => undefined);
        await att.detach();
      });
    }, T);

    /**
     * Writes files of varied sizes until stopped: at most 240 names (about 100 MiB on a 256 MiB
     * file system), so later files replace earlier ones; some are fsynced, some deleted.
     */
    function startWriter(): { stop: () => Promise<number> } {
      let stopping = false;
      let n = 0;
      const loop = (async () => {
        while (!stopping) {
          const rel = `w/${n % 8}/f${n % 240}`;
          const data = crypto.randomBytes(1 + ((n * 7919) % (800 * 1024)));
          const p = path.join(att.mountDir, rel);
          await fs.promises.mkdir(path.dirname(p), { recursive: true });
          const fh = await fs.promises.open(p, 'w');
          try {
            await fh.writeFile(data);
            if (n % 5 === 0) await fh.sync();
          } finally {
            await fh.close();
          }
          expected.set(rel, crypto.createHash('sha256').update(data).digest('hex'));
          if (n % 17 === 16) {
            const victim = `w/${(n - 3) % 8}/f${(n - 3) % 240}`;
            await fs.promises.rm(path.join(att.mountDir, victim), { force: true });
            expected.delete(victim);
          }
          n++;
          if (n % 20 === 0) await sleep(10);
        }
      })();
      void loop.catch(() => undefined); // a failure surfaces through stop()
      return {
        stop: async () => {
          stopping = true;
          await loop;
          return n;
        },
      };
    }

    it('files written during create, sync, swap and remove: e2fsck clean, every checksum right', T, async (t) => {
      const loop = await att.attach(d.uri('fs'));
      await ok('mkfs.ext4', ['-q', '-F', '-L', 'ferry', loop], { timeoutMs: 120_000 });
      await att.mount();
      const oldPath = (await diskShow(d, 'fs')).path;
      const newPath = path.join(work, 'fs-new.img');
      writer = startWriter();
      await sleep(500);
      const created = await cliJson(d, ['mirror', 'create', 'fs', '--to', `local:${newPath}`, '--staging', path.join(work, 'fs-staging'), '--staging-size', '128M']);
      assert.equal(created.consistent, false);
      await waitInSync(d, 'fs');
      await sleep(500);
      const s = await swap(t, 'fs');
      assert.equal(s.primary, newPath);
      assert.equal((await diskShow(d, 'fs')).path, newPath);
      await sleep(500);
      await cliJson(d, ['mirror', 'remove', 'fs']);
      await sleep(500);
      const files = await writer.stop();
      writer = null;
      t.diagnostic(`${files} files written, ${expected.size} kept`);
      assert.ok(files > 20, `the writer wrote only ${files} files`);

      await ok('sync', ['-f', path.join(att.mountDir, 'w')]);
      await att.unmount();
      const fsck = await ok('e2fsck', ['-fn', loop]);
      assert.match(fsck.stdout, /files.*blocks/);
      await att.mount();
      for (const [rel, sum] of expected) assert.equal(sha256File(path.join(att.mountDir, rel)), sum, `${rel} changed`);
      await att.detach();
      assert.equal((await diskShow(d, 'fs')).path, newPath);
      assert.ok(!openPaths(d).includes(oldPath), 'ferryd no longer holds the retired file open');
    });
  });
});

/** After a mirror is removed: waits until the primary has applied every staged record. */
async function waitDrainedPrimary(d: Ferryd, disk: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const r = await d.api('GET', `/v1/disks/${disk}/staging`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    if (r.body.consumers.every((c: any) => c.pendingRecords === 0) && r.body.overlayExtents === 0) return;
    if (Date.now() > deadline) throw new Error(`the staging area of ${disk} did not drain: ${JSON.stringify(r.body)}`);
    await sleep(100);
  }
}
