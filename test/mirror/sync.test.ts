// Initial synchronization of a mirror (SPEC "Mirrors"): driven by the server while clients
// keep writing; data written before the mirror existed and during the sync both reach it;
// the mirror reports consistent:false until the sync is done; holes are never copied as
// data; --sync=checksum onto a file that already holds similar data writes only what
// differs (also at the very end of a disk whose size is no multiple of a chunk); an existing
// larger file works as a target (and stays usable after a swap and a restart); verify finds
// a region corrupted behind Ferry's back.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, type Ferryd } from '../harness.js';
import { ok, qemuIoOk } from '../interop/clients.js';
import { Cleanup, startWorkload } from '../staging/helpers.js';
import {
  GiB,
  MiB,
  T,
  allocatedBytes,
  assertSameBytes,
  cliFails,
  cliJson,
  diskShow,
  fillPattern,
  imageCheck,
  mirrorStatus,
  sleep,
  waitDrained,
  waitInSync,
  waitWrites,
} from './helpers.js';

/** The daemon's "mirror sync complete" log lines for `disk` (copied and skipped bytes). */
function syncLogs(d: Ferryd, disk: string): Array<{ copiedBytes: number; skippedBytes: number }> {
  return (d.stdout + d.stderr)
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l))
    .filter((x) => x.disk === disk && x.msg === 'mirror sync complete');
}

async function verify(d: Ferryd, disk: string): Promise<{ code: number | null; report: any }> {
  const r = await d.cli(['mirror', 'verify', disk, '--json'], { timeoutMs: 120_000 });
  assert.ok(r.code === 0 || r.code === 1, `mirror verify ${disk}: exit ${r.code}\n${r.stdout}\n${r.stderr}`);
  return { code: r.code, report: JSON.parse(r.stdout) };
}

describe('mirror initial synchronization', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let work: string;

  before(async () => {
    requireTool('qemu-io');
    requireTool('cmp');
    d = await cleanup.ferryd();
    work = fs.realpathSync(cleanup.dir('ferry-sync-'));
  }, T);
  after(() => cleanup.run(), T);

  it('data written before the mirror and during the sync (and while it is paused) all reach the mirror', T, async (t) => {
    // An adopted 1 GiB image full of data, so the sync has a good while to run.
    const image = path.join(work, 'busy.img');
    fillPattern(image, 0, GiB, 1);
    assert.equal((await d.api('POST', '/v1/disks/adopt', { name: 'busy', path: image })).status, 201);
    const target = path.join(work, 'busy-mirror.img');
    const created = await cliJson(d, ['mirror', 'create', 'busy', '--to', `local:${target}`, '--staging', path.join(work, 'busy-staging'), '--staging-size', '128M']);
    assert.equal(created.state, 'syncing');
    assert.equal(created.consistent, false);
    // Paused right away (the API: no process to start first): writes go on, the sync waits.
    const pause = await d.api('POST', '/v1/disks/busy/mirror/pause');
    assert.equal(pause.status, 200, JSON.stringify(pause.body));
    assert.equal(pause.body.state, 'paused');
    assert.equal(pause.body.consistent, false, `the sync of 1 GiB ended before it could be paused: ${JSON.stringify(pause.body)}`);
    const log = path.join(work, 'busy.log');
    const w = startWorkload(cleanup, { uri: d.uri('busy'), log, firstCounter: 1, blocks: GiB / 4096, seed: 7, maxSeconds: 120 });
    assert.ok(await w.connected, 'the workload connected');
    await waitWrites(d, 'busy', 2000);
    const stillPaused = await mirrorStatus(d, 'busy');
    assert.equal(stillPaused.state, 'paused');
    assert.ok(stillPaused.lagRecords > 0, 'records wait in the staging area while paused');
    const resumed = await cliJson(d, ['mirror', 'resume', 'busy']);
    assert.equal(resumed.state, 'syncing');
    // Writes go on while it syncs; every status on the way says it is not consistent yet.
    const seen: any[] = [];
    await waitInSync(d, 'busy', 150_000, seen);
    // (At 100% copied it still says syncing until the records up to the end of the copy are applied.)
    for (const s of seen.slice(0, -1)) {
      assert.equal(s.consistent, false, JSON.stringify(s));
      assert.equal(s.state, 'syncing', JSON.stringify(s));
    }
    const during = seen.filter((s) => s.state === 'syncing' && s.syncProgress > 0 && s.syncProgress < 1);
    t.diagnostic(`${seen.length} statuses while syncing, ${during.length} mid-sync; last: ${JSON.stringify(seen[seen.length - 1])}`);
    await waitWrites(d, 'busy', 500);
    w.child.kill('SIGINT');
    const summary = await w.done;
    assert.equal(summary.error, null, JSON.stringify(summary));
    assert.ok(summary.acked > 2000, JSON.stringify(summary));
    await waitDrained(d, 'busy');
    await assertSameBytes(image, target, 'after the sync and a drain');
    const v = await verify(d, 'busy');
    assert.equal(v.code, 0, JSON.stringify(v.report));
    assert.deepEqual(v.report.differences, []);
    assert.equal(v.report.regionsSkipped, 0);
    assert.equal(v.report.bytesCompared, GiB);
  });

  it('the moment it first says consistent, the mirror is an image the disk really had (writes going on)', T, async (t) => {
    // An adopted 1 GiB image full of data (a copy kept as what it held before the writes):
    // the sync writes a lot to the mirror while the workload's records stream to it too.
    const image = path.join(work, 'order.img');
    const base = path.join(work, 'order-base.img');
    fillPattern(image, 0, GiB, 5);
    fs.copyFileSync(image, base);
    assert.equal((await d.api('POST', '/v1/disks/adopt', { name: 'order', path: image })).status, 201);
    const log = path.join(work, 'order.log');
    const blocks = GiB / 4096;
    const w = startWorkload(cleanup, { uri: d.uri('order'), log, firstCounter: 1, blocks, seed: 11, maxSeconds: 150 });
    assert.ok(await w.connected, 'the workload connected');
    await waitWrites(d, 'order', 5000);
    const target = path.join(work, 'order-mirror.img');
    await cliJson(d, ['mirror', 'create', 'order', '--to', `local:${target}`, '--staging', path.join(work, 'order-staging'), '--staging-size', '128M']);
    let first: any;
    for (;;) {
      const s = await mirrorStatus(d, 'order');
      assert.equal(s.syncError, null);
      if (s.consistent) {
        first = s;
        break;
      }
    }
    // Hold the mirror right there (the API: no process to start first); the committer finishes
    // the group of records it is applying.
    const held = await d.api('POST', '/v1/disks/order/mirror/pause');
    assert.equal(held.status, 200, JSON.stringify(held.body));
    let applied = -1;
    for (;;) {
      const s = await mirrorStatus(d, 'order');
      if (s.appliedSeq === applied) break;
      applied = s.appliedSeq;
      await sleep(300);
    }
    const c = await imageCheck(target, log, { blocks }, base);
    t.diagnostic(`first consistent status: ${JSON.stringify(first)}; image: ${JSON.stringify({ ...c, errors: c.errors.length })}`);
    assert.deepEqual(c.errors, [], JSON.stringify(c));
    assert.ok(c.highest > 0 && c.writtenBlocks > 0, JSON.stringify(c));
    await cliJson(d, ['mirror', 'resume', 'order']);
    w.child.kill('SIGINT');
    const summary = await w.done;
    assert.equal(summary.error, null, JSON.stringify(summary));
    await waitDrained(d, 'order');
    await assertSameBytes(image, target, 'after resume and drain');
    fs.rmSync(base);
  });

  it('paused and resumed again and again while it syncs under writes, the mirror still ends identical', T, async (t) => {
    const image = path.join(work, 'flip.img');
    fillPattern(image, 0, GiB, 6);
    assert.equal((await d.api('POST', '/v1/disks/adopt', { name: 'flip', path: image })).status, 201);
    const w = startWorkload(cleanup, { uri: d.uri('flip'), log: path.join(work, 'flip.log'), firstCounter: 1, blocks: GiB / 4096, seed: 13, maxSeconds: 150 });
    assert.ok(await w.connected, 'the workload connected');
    const target = path.join(work, 'flip-mirror.img');
    await cliJson(d, ['mirror', 'create', 'flip', '--to', `local:${target}`, '--staging', path.join(work, 'flip-staging'), '--staging-size', '128M']);
    // Each resume comes while the chunks the pause stopped may still be in flight.
    let flips = 0;
    for (let i = 0; i < 40; i++) {
      const p = await d.api('POST', '/v1/disks/flip/mirror/pause');
      assert.equal(p.status, 200, JSON.stringify(p.body));
      if (p.body.consistent) break;
      await sleep(i % 4);
      const r = await d.api('POST', '/v1/disks/flip/mirror/resume');
      assert.equal(r.status, 200, JSON.stringify(r.body));
      flips++;
      await sleep(50 + (i % 5) * 40);
    }
    const s = await mirrorStatus(d, 'flip');
    if (s.state === 'paused') await cliJson(d, ['mirror', 'resume', 'flip']);
    t.diagnostic(`${flips} pause/resume cycles during the sync`);
    assert.ok(flips > 0, 'the sync ended before it could be paused');
    await waitInSync(d, 'flip');
    w.child.kill('SIGINT');
    const summary = await w.done;
    assert.equal(summary.error, null, JSON.stringify(summary));
    await waitDrained(d, 'flip');
    await assertSameBytes(image, target, 'after the sync with pauses');
  });

  it('holes are not copied as data: 8 MiB written on a 1 GiB thin disk leaves a small mirror file', T, async () => {
    const info = await d.createDisk('thin', GiB);
    await qemuIoOk(d.uri('thin'), ['write -P 0x11 0 2M', 'write -P 0x22 300M 4M', `write -P 0x33 ${GiB - 2 * MiB} 2M`]);
    const target = path.join(work, 'thin-mirror.img');
    await cliJson(d, ['mirror', 'create', 'thin', '--to', `local:${target}`, '--staging', path.join(work, 'thin-staging'), '--staging-size', '64M', '--wait']);
    const st = await mirrorStatus(d, 'thin');
    assert.equal(st.consistent, true);
    assert.equal(fs.statSync(target).size, GiB);
    const allocated = allocatedBytes(target);
    assert.ok(allocated <= 12 * MiB, `the mirror file has ${allocated} bytes allocated for 8 MiB of data`);
    await assertSameBytes(info.path, target, 'thin disk and its mirror');
    const [log] = syncLogs(d, 'thin');
    assert.ok(log, 'the sync logged its completion');
    assert.equal(log.copiedBytes, 8 * MiB, JSON.stringify(log));
  });

  it('an empty 100 GiB thin disk syncs (nothing to copy) and its mirror allocates nothing', T, async () => {
    const info = await d.createDisk('huge', 100 * GiB);
    const target = path.join(work, 'huge-mirror.img');
    await cliJson(d, ['mirror', 'create', 'huge', '--to', `local:${target}`, '--staging', path.join(work, 'huge-staging'), '--staging-size', '64M', '--wait'], 150_000);
    const st = await mirrorStatus(d, 'huge');
    assert.equal(st.consistent, true);
    assert.equal(st.syncBytes, 100 * GiB);
    assert.equal(fs.statSync(target).size, 100 * GiB);
    assert.ok(allocatedBytes(target) <= MiB, `${allocatedBytes(target)} bytes allocated`);
    assert.equal(syncLogs(d, 'huge')[0]?.copiedBytes, 0);
    // Still mirrors what is written now (read back from the mirror file: a verify would read 100 GiB).
    await qemuIoOk(d.uri('huge'), ['write -P 0x44 50G 1M']);
    await waitDrained(d, 'huge');
    const back = Buffer.alloc(MiB + 8192);
    const fd = fs.openSync(target, 'r');
    fs.readSync(fd, back, 0, back.length, 50 * GiB - 4096);
    fs.closeSync(fd);
    assert.ok(back.subarray(0, 4096).equals(Buffer.alloc(4096)), 'zeroes before the write');
    assert.ok(back.subarray(4096, 4096 + MiB).equals(Buffer.alloc(MiB, 0x44)), 'the write reached the mirror');
    assert.ok(back.subarray(4096 + MiB).equals(Buffer.alloc(4096)), 'zeroes after the write');
    assert.ok(allocatedBytes(target) <= 2 * MiB, `${allocatedBytes(target)} bytes allocated`);
    assert.equal(info.size, 100 * GiB);
  });

  it('--sync=checksum onto a file holding the same data except a few chunks (one at the very end) ends identical, writing only those', T, async () => {
    // 256 MiB + 12 KiB: the last 4 MiB chunk and the last 64 KiB block are partial.
    const size = 256 * MiB + 12 * 1024;
    const image = path.join(work, 'ck.img');
    fillPattern(image, 0, size, 3);
    const target = path.join(work, 'ck-mirror.img');
    fs.copyFileSync(image, target);
    // Differences: two chunks in the middle, a 4 KiB block, the last 512 bytes of the disk.
    const diffs: Array<[number, number]> = [
      [10 * MiB, 64 * 1024],
      [100 * MiB + 4096, 4096],
      [200 * MiB, 3 * 64 * 1024],
      [size - 512, 512],
    ];
    const fd = fs.openSync(target, 'r+');
    for (const [at, n] of diffs) fs.writeSync(fd, crypto.randomBytes(n), 0, n, at);
    fs.closeSync(fd);
    assert.equal((await d.api('POST', '/v1/disks/adopt', { name: 'ck', path: image })).status, 201);
    assert.equal((await diskShow(d, 'ck')).size, size);
    const m = await cliJson(d, ['mirror', 'create', 'ck', '--to', `local:${target}`, '--sync', 'checksum', '--staging', path.join(work, 'ck-staging'), '--staging-size', '64M', '--wait']);
    assert.equal(m.syncMode, 'checksum');
    assert.equal(m.consistent, true);
    await assertSameBytes(image, target, 'checksum sync');
    const [log] = syncLogs(d, 'ck');
    assert.ok(log, 'the sync logged its completion');
    // Only the 64 KiB blocks holding a difference are written (the last one is 12 KiB).
    assert.equal(log.copiedBytes, 64 * 1024 + 64 * 1024 + 3 * 64 * 1024 + 12 * 1024, JSON.stringify(log));
    const v = await verify(d, 'ck');
    assert.deepEqual(v.report.differences, []);
  });

  it('an existing larger file is a target: the disk-sized part is synced, the rest untouched; swap and restart keep the disk size', T, async (t) => {
    const info = await d.createDisk('big', 64 * MiB);
    await qemuIoOk(d.uri('big'), ['write -P 0x55 0 8M', 'write -P 0x56 40M 1M']);
    const target = path.join(work, 'big-target.img');
    // Old data all over a file 32 MiB larger than the disk; zeroes on the disk must become zeroes there.
    fillPattern(target, 0, 96 * MiB, 9);
    const tailBefore = await tailHash(target, 64 * MiB);
    // Old data there: a full sync overwrites it only when asked (--force).
    const refusedCreate = await cliFails(d, ['mirror', 'create', 'big', '--to', `local:${target}`, '--staging', path.join(work, 'big-staging'), '--staging-size', '64M'], 'TARGET_HOLDS_DATA');
    assert.match(refusedCreate, /--force/);
    const m = await cliJson(d, ['mirror', 'create', 'big', '--to', `local:${target}`, '--staging', path.join(work, 'big-staging'), '--staging-size', '64M', '--force', '--wait']);
    assert.equal(m.consistent, true);
    assert.equal(fs.statSync(target).size, 96 * MiB, 'the target is neither truncated nor extended');
    await assertSameBytes(info.path, target, 'the disk-sized part of the larger target', 64 * MiB);
    assert.equal(await tailHash(target, 64 * MiB), tailBefore, 'bytes past the disk are not touched');

    const s = await cliJson(d, ['mirror', 'swap', 'big']);
    t.diagnostic(`swap onto the larger file: requests held ${s.pauseMs.toFixed(1)} ms`);
    assert.equal(s.primary, target);
    assert.equal((await diskShow(d, 'big')).size, 64 * MiB, 'the disk keeps its size after the swap');
    await qemuIoOk(d.uri('big'), ['write -P 0x57 63M 1M']);
    await d.stop();
    await d.start();
    const shown = await diskShow(d, 'big');
    assert.equal(shown.path, target);
    assert.equal(shown.size, 64 * MiB, 'the disk keeps its size after a restart');
    await qemuIoOk(d.uri('big'), ['read -P 0x57 63M 1M', 'read -P 0x55 0 8M', 'write -P 0x58 62M 1M']);
    await waitDrained(d, 'big');
    const st = await mirrorStatus(d, 'big');
    assert.equal(st.committerError, null);
    await assertSameBytes(info.path, target, 'old primary (now the mirror) and the larger file', 64 * MiB);
    assert.equal(await tailHash(target, 64 * MiB), tailBefore);
  });

  it('verify reports a region of the mirror corrupted behind Ferry\'s back, and only that', T, async () => {
    await d.createDisk('vf', 64 * MiB);
    await qemuIoOk(d.uri('vf'), ['write -P 0x66 0 16M', 'write -P 0x67 32M 16M']);
    const target = path.join(work, 'vf-mirror.img');
    await cliJson(d, ['mirror', 'create', 'vf', '--to', `local:${target}`, '--staging', path.join(work, 'vf-staging'), '--staging-size', '64M', '--wait']);
    await waitDrained(d, 'vf');
    const clean = await verify(d, 'vf');
    assert.equal(clean.code, 0);
    assert.deepEqual(clean.report.differences, []);
    // 8 KiB of garbage at 5 MiB + 4 KiB (data) and 4 KiB at 20 MiB (a hole on the disk).
    await ok('dd', ['if=/dev/urandom', `of=${target}`, 'bs=4096', `seek=${(5 * MiB) / 4096 + 1}`, 'count=2', 'conv=notrunc'], { timeoutMs: 30_000 });
    await ok('dd', ['if=/dev/urandom', `of=${target}`, 'bs=4096', `seek=${(20 * MiB) / 4096}`, 'count=1', 'conv=notrunc'], { timeoutMs: 30_000 });
    const bad = await verify(d, 'vf');
    assert.equal(bad.code, 1, 'verify exits 1 when something differs');
    assert.deepEqual(bad.report.differences, [
      { offset: 5 * MiB + 4096, length: 8192 },
      { offset: 20 * MiB, length: 4096 },
    ]);
    const human = await d.cli(['mirror', 'verify', 'vf']);
    assert.equal(human.code, 1);
    assert.match(human.stdout, /2 differing range/);
    // The disk itself is untouched by all this.
    await qemuIoOk(d.uri('vf'), ['read -P 0x66 0 16M', 'read -P 0 16M 16M']);
    assert.equal((await mirrorStatus(d, 'vf')).consistent, true);
  });
});

/** sha256 of a file from `from` to its end. */
async function tailHash(file: string, from: number): Promise<string> {
  const h = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(MiB);
    for (let at = from; ; at += buf.length) {
      const n = fs.readSync(fd, buf, 0, buf.length, at);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}
