// The test failover's copy-on-write (src/replication/test-scratch.ts, cow-guard-store.ts,
// test-image-store.ts) in-process, against byte models: a replica written by "replication"
// through the guard while "the test" reads and writes its image at the same time, on a
// replica store that delays every call a random number of turns (so reads of the replica
// race writes under them: T5; and one such race forced step by step: a read held while the
// granule gets the test's own slot and replication rewrites it unpreserved). The test image
// always reads as the snapshot plus the test's own writes; the replica always ends as replication wrote it (T1); a full scratch area
// fails the test's writes (SCRATCH_FULL) and, when a preservation cannot fit, loses the
// image (TEST_IMAGE_LOST) without failing replication. The granule maps are paged
// (granule-map.ts): these tests use pages of 8 granules, so ranges cross page boundaries and
// pages are allocated mid-test; a 1 TiB disk (a sparse file) that a test touches in a few
// places costs a few pages of map, and reads right at page edges and at its end.
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { DiskStore } from '../../src/disk/store.js';
import { FerryError } from '../../src/errors.js';
import { CowGuardStore } from '../../src/replication/cow-guard-store.js';
import { TestImageStore } from '../../src/replication/test-image-store.js';
import { TEST_GRANULE_BYTES, TestScratch } from '../../src/replication/test-scratch.js';
import { GRANULE_MAP_PAGE_GRANULES, GranuleMap } from '../../src/replication/granule-map.js';
import { BlockDevice } from '../../src/disk/block-device.js';
import { FaultyStore, seededRng, type Rng } from '../../src/testing/faulty-store.js';

const G = TEST_GRANULE_BYTES;
const DISK = 48 * G + 12 * 1024; // a short last granule
/** Granules per page of the scratch maps here: 49 granules make 7 pages, the last of one granule. */
const PAGE = 8;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-scratch-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A replica whose every call waits 0-3 event-loop turns first (a read up to `readTurnsMax`). */
function slow(inner: FaultyStore, rng: Rng, readTurnsMax = 3): DiskStore {
  const turns = async (max: number): Promise<void> => {
    for (let i = Math.floor(rng() * (max + 1)); i > 0; i--) await new Promise((r) => setImmediate(r));
  };
  return new Proxy(inner, {
    get(target, prop, recv) {
      const v = Reflect.get(target, prop, recv);
      if (typeof v !== 'function' || !['read', 'write', 'zero', 'trim'].includes(String(prop))) return v;
      return async (...args: unknown[]) => {
        await turns(prop === 'read' ? readTurnsMax : 3);
        return (v as (...a: unknown[]) => Promise<void>).apply(target, args);
      };
    },
  }) as DiskStore;
}

let n = 0;
function setup(seed: number, scratchBytes: number, readTurnsMax = 3): { replica: FaultyStore; scratch: TestScratch; guard: CowGuardStore; image: TestImageStore; rng: Rng } {
  const rng = seededRng(seed);
  const init = Buffer.alloc(DISK);
  for (let i = 0; i < DISK; i += 512) init.fill(Math.floor(rng() * 256), i, i + 512);
  const replica = new FaultyStore('replica', init);
  const file = path.join(dir, `scratch-${++n}`);
  const fd = fs.openSync(file, 'w+');
  fs.ftruncateSync(fd, scratchBytes);
  const raw = slow(replica, rng, readTurnsMax);
  const scratch = new TestScratch(file, fd, raw, DISK, scratchBytes, PAGE);
  return { replica, scratch, guard: new CowGuardStore(raw, scratch), image: new TestImageStore(scratch), rng };
}

function range(rng: Rng): { offset: number; length: number } {
  const offset = Math.floor(rng() * (DISK / 512)) * 512;
  const length = Math.min(DISK - offset, (1 + Math.floor(rng() * 300)) * 512);
  return { offset, length };
}

describe('test failover copy-on-write', () => {
  for (const seed of [1, 2, 3, 4, 5]) {
    it(`the test image is the snapshot plus the test's writes while replication rewrites the replica (seed ${seed})`, async () => {
      const { replica, scratch, guard, image, rng } = setup(seed, DISK * 3);
      const testModel = Buffer.from(replica.current);
      const replModel = Buffer.from(replica.current);
      let stop = false;
      // Replication: in order, one at a time (the committer), writes, zeroes and trims.
      const replication = (async () => {
        for (let i = 0; i < 300; i++) {
          const { offset, length } = range(rng);
          const kind = rng();
          if (kind < 0.8) {
            const data = Buffer.alloc(length, 1 + (i % 250));
            await guard.writeBatch([data], [offset]);
            data.copy(replModel, offset);
          } else if (kind < 0.9) {
            await guard.zero(offset, length, true, false);
            replModel.fill(0, offset, offset + length);
          } else {
            await guard.trim(offset, length);
            replModel.fill(0, offset, offset + length);
          }
        }
        stop = true;
      })();
      // The test: its own writes and reads, each checked against the model.
      let reads = 0;
      let writes = 0;
      while (!stop) {
        const { offset, length } = range(rng);
        if (rng() < 0.4) {
          const data = Buffer.alloc(length, 0xa0 + (writes % 16));
          await image.write(data, 0, length, offset);
          data.copy(testModel, offset);
          writes++;
        } else {
          const buf = Buffer.alloc(length);
          await image.read(buf, 0, length, offset);
          assert.ok(buf.equals(testModel.subarray(offset, offset + length)), `test read ${offset}+${length} differs from the snapshot plus the test's writes`);
          reads++;
        }
      }
      await replication;
      const all = Buffer.alloc(DISK);
      await image.read(all, 0, DISK, 0);
      assert.ok(all.equals(testModel), 'the whole test image is the snapshot plus the test writes');
      assert.ok(replica.current.equals(replModel), 'the replica holds exactly what replication wrote (T1)');
      const st = scratch.stats();
      assert.equal(st.lostReason, null);
      assert.ok(st.usedBytes <= st.scratchBytes);
      assert.ok(reads > 10 && writes > 5, `${reads} reads, ${writes} writes`);
      await scratch.close();
    });
  }

  for (const seed of [21, 22, 23, 24]) {
    it(`a test read of a granule the test is writing elsewhere at the same time reads the snapshot there (seed ${seed})`, async () => {
      // The test writes first halves of granules while it reads second halves, and replication
      // rewrites everything: second halves must always read as the snapshot, although the
      // granule gets the test's own slot (and replication stops preserving it) during the read.
      const { replica, scratch, guard, image, rng } = setup(seed, DISK * 3, 60);
      const snapshot = Buffer.from(replica.current);
      const H = G / 2;
      const granules = Math.floor(DISK / G);
      let stop = false;
      const replication = (async () => {
        for (let i = 0; i < 400; i++) {
          const { offset, length } = range(rng);
          await guard.write(Buffer.alloc(length, 1 + (i % 250)), 0, length, offset);
        }
        stop = true;
      })();
      const writer = (async () => {
        while (!stop) {
          const g = Math.floor(rng() * granules);
          await image.write(Buffer.alloc(512, 0xee), 0, 512, g * G + Math.floor(rng() * (H / 512)) * 512);
        }
      })();
      let reads = 0;
      while (!stop) {
        const batch = Array.from({ length: 4 }, async () => {
          const g = Math.floor(rng() * granules);
          const at = g * G + H;
          const buf = Buffer.alloc(H);
          await image.read(buf, 0, H, at);
          assert.ok(buf.equals(snapshot.subarray(at, at + H)), `second half of granule ${g} is not the snapshot`);
          reads++;
        });
        await Promise.all(batch);
      }
      await Promise.all([replication, writer]);
      assert.ok(reads > 20, `${reads} reads`);
      await scratch.close();
    });
  }

  it('a test read that went to the replica is redone from the test\'s own slot when one appeared under it (T5)', async () => {
    // Deterministic: the test reads the second half of granule 5 and its replica read is held;
    // meanwhile the test writes the first half (the granule gets its own slot, filled from the
    // snapshot) and replication then rewrites the whole granule without preserving it (the
    // test's slot covers it); only then does the held read copy the replica's bytes.
    const replica = new FaultyStore('replica', Buffer.alloc(DISK, 0x11));
    let held: { at: number; go: Promise<void>; release: () => void } | null = null;
    const gated = new Proxy(replica, {
      get(target, prop, recv) {
        const v = Reflect.get(target, prop, recv);
        if (prop !== 'read') return typeof v === 'function' ? v.bind(target) : v;
        return async (buf: Buffer, bufOffset: number, length: number, offset: number) => {
          if (held && offset === held.at) {
            const h = held;
            held = null;
            await h.go;
          }
          return target.read(buf, bufOffset, length, offset);
        };
      },
    }) as DiskStore;
    const file = path.join(dir, `scratch-${++n}`);
    const fd = fs.openSync(file, 'w+');
    fs.ftruncateSync(fd, 32 * G);
    const scratch = new TestScratch(file, fd, gated, DISK, 32 * G, PAGE);
    const guard = new CowGuardStore(gated, scratch);
    const image = new TestImageStore(scratch);
    let release!: () => void;
    const go = new Promise<void>((r) => (release = r));
    held = { at: 5 * G + G / 2, go, release };
    const buf = Buffer.alloc(G / 2);
    const reading = image.read(buf, 0, G / 2, 5 * G + G / 2);
    await image.write(Buffer.alloc(512, 0xee), 0, 512, 5 * G);
    await guard.write(Buffer.alloc(G, 0x99), 0, G, 5 * G);
    assert.equal(replica.current[5 * G + G / 2], 0x99, 'replication rewrote the granule');
    release();
    await reading;
    assert.ok(buf.every((b) => b === 0x11), `the test read ${buf[0]!.toString(16)}, not the snapshot's 11`);
    await scratch.close();
  });

  it('a full scratch area fails the test\'s writes, then loses the image, never replication', async () => {
    const { replica, scratch, guard, image } = setup(9, 16 * G);
    // The test fills 10 slots (partial granules: filled from the snapshot first).
    for (let g = 0; g < 10; g++) await image.write(Buffer.alloc(512, 7), 0, 512, g * G + 1024);
    // Replication overwrites 6 other granules: preserved, the scratch is now full.
    for (let g = 20; g < 26; g++) await guard.write(Buffer.alloc(G, 9), 0, G, g * G);
    assert.equal(scratch.stats().usedBytes, 16 * G);
    // A test write to a new granule: SCRATCH_FULL (ENOSPC); one to its own granule still works.
    await assert.rejects(image.write(Buffer.alloc(512, 8), 0, 512, 40 * G), (e: unknown) => e instanceof FerryError && e.code === 'SCRATCH_FULL' && e.nbdErrno === 28);
    await image.write(Buffer.alloc(512, 8), 0, 512, 3 * G);
    const back = Buffer.alloc(G);
    await image.read(back, 0, G, 21 * G);
    assert.notEqual(back[0], 9, 'the test still reads the preserved old contents');
    // Replication needs one more preservation: it cannot fit, the image is lost, the write goes on.
    await guard.write(Buffer.alloc(G, 11), 0, G, 30 * G);
    assert.equal(replica.current[30 * G], 11, 'replication wrote the replica');
    assert.match(scratch.stats().lostReason ?? '', /full/);
    await assert.rejects(image.read(back, 0, 512, 0), (e: unknown) => e instanceof FerryError && e.code === 'TEST_IMAGE_LOST' && e.nbdErrno === 5);
    await assert.rejects(image.write(back, 0, 512, 0), (e: unknown) => e instanceof FerryError && e.code === 'TEST_IMAGE_LOST');
    // From then on replication is not slowed by preservation at all.
    const before = replica.writes;
    await guard.write(Buffer.alloc(G, 12), 0, G, 31 * G);
    assert.equal(replica.writes, before + 1);
    await scratch.close();
  });

  it('a preservation that fails to read loses the image, and the replication write still lands', async () => {
    const { replica, scratch, guard, image } = setup(10, 32 * G);
    replica.fail({ read: true });
    await guard.write(Buffer.alloc(G, 5), 0, G, 2 * G).catch(() => assert.fail('replication must not fail for the test'));
    replica.fail({ read: false });
    assert.equal(replica.current[2 * G], 5);
    assert.match(scratch.stats().lostReason ?? '', /failed/);
    await assert.rejects(image.read(Buffer.alloc(512), 0, 512, 0), (e: unknown) => e instanceof FerryError && e.code === 'TEST_IMAGE_LOST');
    await scratch.close();
  });

  it('the test image zeroes into its own slots, never fast (FAST_ZERO answers NOT_SUPPORTED); the replica is not touched', async () => {
    const { replica, scratch, image } = setup(12, 32 * G);
    const before = Buffer.from(replica.current);
    await assert.rejects(image.zero(G + 512, 4096, true, true), (e: unknown) => e instanceof FerryError && e.code === 'NOT_SUPPORTED');
    await image.zero(G + 512, 4096, true, false);
    await image.trim(3 * G, 2 * G);
    const back = Buffer.alloc(6 * G);
    await image.read(back, 0, back.length, 0);
    const want = Buffer.from(before.subarray(0, 6 * G));
    want.fill(0, G + 512, G + 512 + 4096);
    want.fill(0, 3 * G, 5 * G);
    assert.ok(back.equals(want));
    assert.ok(replica.current.equals(before), 'the replica is never written by the test (T1)');
    await scratch.close();
  });

  it('the granule map: untouched pages read -1 and cost nothing; a page is allocated on first set; the last one is short', () => {
    const m = new GranuleMap(21, 8);
    assert.deepEqual([m.get(0), m.get(20), m.bytes, m.pageCount], [-1, -1, 0, 0]);
    m.set(9, 4);
    assert.deepEqual([m.get(8), m.get(9), m.get(10), m.get(7), m.get(16)], [-1, 4, -1, -1, -1]);
    assert.deepEqual([m.bytes, m.pageCount], [8 * 4, 1]);
    m.set(20, 0);
    assert.deepEqual([m.get(20), m.get(16), m.bytes, m.pageCount], [0, -1, 8 * 4 + 5 * 4, 2], 'the last page holds 5 granules');
    assert.throws(() => m.get(21), /a granule of the disk/);
    assert.throws(() => m.set(-1, 0), /a granule of the disk/);
  });

  it('a test on a 1 TiB disk that touches a few places costs a few pages of map, and reads right there', async () => {
    const TIB = 1024 ** 4;
    const size = TIB + 12 * 1024; // a short last granule
    const diskFile = path.join(dir, `replica-1t-${++n}`);
    fs.closeSync(fs.openSync(diskFile, 'w'));
    fs.truncateSync(diskFile, size); // sparse: reads as zeroes
    const replica = BlockDevice.open(diskFile);
    const file = path.join(dir, `scratch-${++n}`);
    const fd = fs.openSync(file, 'w+');
    fs.ftruncateSync(fd, 64 * G);
    const scratch = new TestScratch(file, fd, replica, size, 64 * G);
    const guard = new CowGuardStore(replica, scratch);
    const image = new TestImageStore(scratch);
    const pageBytes = GRANULE_MAP_PAGE_GRANULES * G; // 4 GiB of disk per page
    const edge = 100 * pageBytes; // a page boundary: the granules either side are in two pages
    const last = Math.floor(size / G) * G; // the short last granule
    try {
      assert.equal(scratch.stats().mapBytes, 0, 'no map before anything is touched');
      // Replication writes across the page boundary (preserving both granules), the test writes
      // at the start and in the last granule.
      await guard.write(Buffer.alloc(2 * G, 0x55), 0, 2 * G, edge - G);
      await image.write(Buffer.alloc(4096, 0xaa), 0, 4096, 0);
      await image.write(Buffer.alloc(1024, 0xbb), 0, 1024, last + 2048);
      const st = scratch.stats();
      // preserved: pages 99 and 100; written: page 0 and the last page (one granule long).
      assert.equal(st.mapBytes, 3 * GRANULE_MAP_PAGE_GRANULES * 4 + 4, JSON.stringify(st));
      assert.ok(st.mapBytes < 1024 * 1024, 'under 1 MiB of map, where flat maps would take 128 MiB');
      assert.deepEqual([st.preservedBytes, st.writtenBytes], [2 * G, 2 * G]);
      // The test image: the snapshot (zeroes) plus the test's writes; the replica: replication's bytes.
      const across = Buffer.alloc(2 * G, 1);
      await image.read(across, 0, 2 * G, edge - G);
      assert.ok(across.every((b) => b === 0), 'the test image across the page boundary is the snapshot');
      const head = Buffer.alloc(8192);
      await image.read(head, 0, 8192, 0);
      assert.ok(head.subarray(0, 4096).every((b) => b === 0xaa) && head.subarray(4096).every((b) => b === 0));
      const tail = Buffer.alloc(size - last);
      await image.read(tail, 0, tail.length, last);
      assert.ok(tail.subarray(2048, 3072).every((b) => b === 0xbb) && tail.subarray(0, 2048).every((b) => b === 0) && tail.subarray(3072).every((b) => b === 0));
      const repl = Buffer.alloc(2 * G);
      await replica.read(repl, 0, 2 * G, edge - G);
      assert.ok(repl.every((b) => b === 0x55), 'the replica holds what replication wrote (T1)');
      const untouched = Buffer.alloc(4096, 1);
      await image.read(untouched, 0, 4096, 200 * pageBytes);
      assert.ok(untouched.every((b) => b === 0));
      assert.equal(scratch.stats().mapBytes, st.mapBytes, 'reads allocate no map');
    } finally {
      await scratch.close();
      await replica.close();
      fs.rmSync(diskFile, { force: true });
    }
  });

  it('after detach the guard passes every write through and preserves nothing', async () => {
    const { replica, scratch, guard } = setup(11, 32 * G);
    guard.detach();
    await guard.write(Buffer.alloc(G, 3), 0, G, 0);
    assert.equal(scratch.stats().usedBytes, 0);
    assert.equal(replica.current[0], 3);
    await scratch.close();
  });
});
