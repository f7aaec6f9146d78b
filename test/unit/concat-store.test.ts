// ConcatStore (src/disk/concat-store.ts), a consistency group's address space over its
// members' devices, in-process on real files (the layout: concat-layout.ts). It splits every
// operation at member boundaries; gaps read zeroes and report HOLE|ZERO; a data write into a
// gap is refused before anything is written (C1); writeBatch keeps the caller's order across
// members (C3) on BlockDevices (one native job: BlockDevice.writeBatchAcross) and on other
// stores (one member's run after another, a failing member leaving a prefix); overlapping
// writes land last-wins; extents respects extentsMax.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { BlockDevice } from '../../src/disk/block-device.js';
import { ConcatStore } from '../../src/disk/concat-store.js';
import { WRITE_BATCH_BUFFERS_MAX } from '../../src/disk/native-io.js';
import type { DiskStore } from '../../src/disk/store.js';
import { FerryError } from '../../src/errors.js';
import { FaultyStore, seededRng } from '../../src/testing/faulty-store.js';
import { GAP1, HZ, KiB, LAYOUT, MiB, SIZE, assertTiles, fileBytes, locate, onDevices, onStores, randomCoveredRange, tagged, tmpFile } from './concat-layout.js';

describe('ConcatStore', () => {
  it('checks its layout (C2): members inside the space, not overlapping, each device holding its member', async () => {
    const s = onDevices();
    const [a, b] = s.stores as BlockDevice[];
    assert.throws(() => new ConcatStore('g', 2 * MiB, [{ name: 'a', base: 0, size: MiB, store: a! }, { name: 'b', base: MiB - 4096, size: 512 * KiB, store: b! }]), /C2: members a and b do not overlap/);
    assert.throws(() => new ConcatStore('g', MiB, [{ name: 'b', base: 512 * KiB, size: 768 * KiB, store: b! }]), /C2: member b lies inside/);
    assert.throws(() => new ConcatStore('g', 4 * MiB, [{ name: 'b', base: 0, size: MiB, store: b! }]), /C2: member b's device holds/);
    assert.equal(s.concat.kind, 'file');
    assert.equal(s.concat.readOnly, false);
    assert.deepEqual(s.concat.layout.map((m) => m.name), ['m0', 'm1', 'm2'], 'members sorted by base');
    await s.close();
    const ro = [new FaultyStore('r0', MiB), new FaultyStore('r1', 768 * KiB), new FaultyStore('r2', 512 * KiB)];
    Object.defineProperty(ro[1], 'readOnly', { value: true });
    assert.equal(onStores(ro).concat.readOnly, true, 'one read-only member makes the group read-only');
  });

  it('splits reads and writes at member boundaries; gaps read as zeroes', async () => {
    const s = onDevices(true);
    const files = s.files as string[];
    // A write across m0/m1 lands on both devices at the right offsets.
    const w = tagged(MiB - 12 * KiB, 20 * KiB, 1);
    await s.concat.write(w, 0, w.length, MiB - 12 * KiB);
    assert.deepEqual(fileBytes(files[0]!, MiB - 12 * KiB, 12 * KiB), w.subarray(0, 12 * KiB));
    assert.deepEqual(fileBytes(files[1]!, 0, 8 * KiB), w.subarray(12 * KiB));
    assert.deepEqual(fileBytes(files[0]!, MiB, 64 * KiB), Buffer.alloc(64 * KiB, 0xa0), "m0's device past its mapped size is untouched");
    assert.deepEqual(fileBytes(files[1]!, 8 * KiB, 4 * KiB), Buffer.alloc(4 * KiB, 0xa1));
    // writeSoon takes the same split.
    const w2 = tagged(MiB - 2 * KiB, 4 * KiB, 2);
    await s.concat.writeSoon(w2, 0, w2.length, MiB - 2 * KiB);
    assert.deepEqual(Buffer.concat([fileBytes(files[0]!, MiB - 2 * KiB, 2 * KiB), fileBytes(files[1]!, 0, 2 * KiB)]), w2);
    // A read over m1's end, the gap, m2 and the trailing gap, into a dirty buffer at an offset.
    const from = 1792 * KiB - 8 * KiB;
    const len = SIZE - from;
    const buf = Buffer.alloc(len + 100, 0xee);
    await s.concat.read(buf, 100, len, from);
    assert.deepEqual(buf.subarray(0, 100), Buffer.alloc(100, 0xee), 'nothing before bufOffset is touched');
    const expect = Buffer.alloc(len);
    for (let i = 0; i < len; i += 4 * KiB) {
      const l = locate(from + i);
      expect.fill(l ? 0xa0 + l.k : 0, i, i + 4 * KiB);
    }
    assert.deepEqual(buf.subarray(100), expect, 'members read from their devices, gaps as zeroes');
    // A read wholly inside a gap.
    const g = Buffer.alloc(4 * KiB, 0xee);
    await s.concat.read(g, 0, g.length, GAP1.from + 64 * KiB);
    assert.deepEqual(g, Buffer.alloc(4 * KiB));
    // Outside the address space: refused.
    await assert.rejects(async () => s.concat.read(Buffer.alloc(8 * KiB), 0, 8 * KiB, SIZE - 4 * KiB), /inside the group's/);
    await s.close();
  });

  it('refuses a data write into a gap (C1) before writing anything', async () => {
    const s = onDevices(true);
    const files = s.files as string[];
    const before = LAYOUT.map((m, k) => fileBytes(files[k]!, 0, m.fileBytes));
    // Crossing m1's end into the gap, wholly in a gap, and across a gap from one member to the next.
    for (const [offset, length] of [[1792 * KiB - 4 * KiB, 8 * KiB], [GAP1.from, 4 * KiB], [3584 * KiB - 4 * KiB, 8 * KiB], [1780 * KiB, 1400 * KiB]] as const) {
      await assert.rejects(async () => s.concat.write(Buffer.alloc(length, 0x55), 0, length, offset), /C1: data written at/);
      await assert.rejects(async () => s.concat.writeSoon(Buffer.alloc(length, 0x55), 0, length, offset), /C1: data written at/);
      // In a batch: a good write before the bad one is not made either.
      await assert.rejects(s.concat.writeBatch([Buffer.alloc(4 * KiB, 0x66), Buffer.alloc(length, 0x55)], [0, offset]), /C1: data written at/);
    }
    LAYOUT.forEach((m, k) => assert.deepEqual(fileBytes(files[k]!, 0, m.fileBytes), before[k], `${m.name} unchanged by refused writes`));
    await s.close();
  });

  it('zeroes and trims each member piece and passes over gaps', async () => {
    const s = onDevices(true);
    const files = s.files as string[];
    // From inside m1 across the gap into m2.
    await s.concat.zero(1536 * KiB, 1792 * KiB, false, false);
    assert.deepEqual(fileBytes(files[1]!, 0, 512 * KiB), Buffer.alloc(512 * KiB, 0xa1));
    assert.deepEqual(fileBytes(files[1]!, 512 * KiB, 256 * KiB), Buffer.alloc(256 * KiB));
    assert.deepEqual(fileBytes(files[2]!, 0, 256 * KiB), Buffer.alloc(256 * KiB));
    assert.deepEqual(fileBytes(files[2]!, 256 * KiB, 256 * KiB), Buffer.alloc(256 * KiB, 0xa2));
    // From m0 across m1 (trim on a file punches a hole: reads zeroes), and a trim wholly in a gap.
    await s.concat.trim(MiB - 64 * KiB, 128 * KiB);
    await s.concat.trim(GAP1.from, GAP1.to - GAP1.from);
    await s.concat.zero(3584 * KiB, 512 * KiB, true, true);
    assert.deepEqual(fileBytes(files[0]!, MiB - 64 * KiB, 128 * KiB), Buffer.concat([Buffer.alloc(64 * KiB), Buffer.alloc(64 * KiB, 0xa0)]), "m0 trimmed up to its mapped end only");
    assert.deepEqual(fileBytes(files[1]!, 0, 128 * KiB), Buffer.concat([Buffer.alloc(64 * KiB), Buffer.alloc(64 * KiB, 0xa1)]));
    const all = Buffer.alloc(SIZE);
    await s.concat.read(all, 0, SIZE, 0);
    assert.deepEqual(all.subarray(0, MiB - 64 * KiB), Buffer.alloc(MiB - 64 * KiB, 0xa0));
    await s.close();
  });

  it('reports extents across members and gaps, merged, bounded by extentsMax', async () => {
    const s = onDevices();
    // Data: m0 [64, 128) and its last 64 KiB, m1's first 4 KiB (joined to m0's across the boundary).
    await s.concat.write(Buffer.alloc(64 * KiB, 1), 0, 64 * KiB, 64 * KiB);
    await s.concat.write(Buffer.alloc(68 * KiB, 2), 0, 68 * KiB, MiB - 64 * KiB);
    const full = s.concat.extents(0, SIZE, 1000);
    assert.deepEqual(full, [
      { offset: 0, length: 64 * KiB, flags: HZ },
      { offset: 64 * KiB, length: 64 * KiB, flags: 0 },
      { offset: 128 * KiB, length: MiB - 192 * KiB, flags: HZ },
      { offset: MiB - 64 * KiB, length: 68 * KiB, flags: 0 },
      // m1's rest, the gap, m2 (never written) and the trailing gap: all holes, merged.
      { offset: MiB + 4 * KiB, length: SIZE - MiB - 4 * KiB, flags: HZ },
    ]);
    // Ranges starting and ending inside a gap, inside members, and empty.
    assert.deepEqual(s.concat.extents(GAP1.from + 4096, 4096, 4), [{ offset: GAP1.from + 4096, length: 4096, flags: HZ }]);
    assert.deepEqual(s.concat.extents(1500 * KiB, 2 * MiB, 4), [{ offset: 1500 * KiB, length: 2 * MiB, flags: HZ }]);
    assert.deepEqual(s.concat.extents(MiB - 4 * KiB, 12 * KiB, 4), [{ offset: MiB - 4 * KiB, length: 8 * KiB, flags: 0 }, { offset: MiB + 4 * KiB, length: 4 * KiB, flags: HZ }]);
    assert.deepEqual(s.concat.extents(100, 0, 4), []);
    // Data in m2 and at the end of m1: gaps between show as holes of their own.
    await s.concat.write(Buffer.alloc(4 * KiB, 3), 0, 4 * KiB, 1792 * KiB - 4 * KiB);
    await s.concat.write(Buffer.alloc(8 * KiB, 4), 0, 8 * KiB, 3 * MiB);
    const full2 = s.concat.extents(0, SIZE, 1000);
    assert.equal(assertTiles(full2, 0, 'full map'), SIZE);
    assert.deepEqual(full2.slice(4), [
      { offset: MiB + 4 * KiB, length: 768 * KiB - 8 * KiB, flags: HZ },
      { offset: 1792 * KiB - 4 * KiB, length: 4 * KiB, flags: 0 },
      { offset: 1792 * KiB, length: 3 * MiB - 1792 * KiB, flags: HZ },
      { offset: 3 * MiB, length: 8 * KiB, flags: 0 },
      { offset: 3 * MiB + 8 * KiB, length: SIZE - 3 * MiB - 8 * KiB, flags: HZ },
    ]);
    // Every limit, from every start: at most extentsMax, a prefix of the full map (the last possibly cut short).
    for (const start of [0, 64 * KiB, MiB - 4 * KiB, MiB + 2 * KiB, 1800 * KiB, 3 * MiB + 4 * KiB]) {
      const ref = s.concat.extents(start, SIZE - start, 1000);
      assert.equal(assertTiles(ref, start, `from ${start}`), SIZE);
      for (let max = 1; max <= ref.length + 1; max++) {
        const got = s.concat.extents(start, SIZE - start, max);
        const what = `from ${start}, max ${max}: ${JSON.stringify(got)} vs ${JSON.stringify(ref)}`;
        assert.ok(got.length >= 1 && got.length <= max, what);
        assertTiles(got, start, what);
        got.forEach((e, i) => {
          assert.equal(e.flags, ref[i]!.flags, what);
          if (i < got.length - 1) assert.equal(e.length, ref[i]!.length, what);
          else assert.ok(e.length <= ref[i]!.length, what);
        });
        // With room to spare the map is whole. (At exactly ref.length it may stop short: a gap
        // after the limit is not merged into the last extent. Allowed: the client asks again.)
        if (max > ref.length) assert.deepEqual(got, ref, what);
      }
    }
    await s.close();
  });

  it('writeBatch on BlockDevices: one native job with every piece in the caller\'s order (C3), last write wins', async (t) => {
    const s = onDevices();
    const spy = t.mock.method(BlockDevice, 'writeBatchAcross');
    const rng = seededRng(16);
    // More pieces than one native job takes (WRITE_BATCH_BUFFERS_MAX), overlapping, some across m0/m1.
    const n = WRITE_BATCH_BUFFERS_MAX + 700;
    const bufs: Buffer[] = [];
    const offs: number[] = [];
    const model = Buffer.alloc(SIZE);
    for (let i = 0; i < n; i++) {
      const r = i % 97 === 0 ? { offset: MiB - 2 * KiB, length: 4 * KiB } : randomCoveredRange(rng, 8 * KiB);
      const b = tagged(r.offset, r.length, i + 1);
      bufs.push(b);
      offs.push(r.offset);
      b.copy(model, r.offset);
    }
    await s.concat.writeBatch(bufs, offs);
    assert.equal(spy.mock.callCount(), 1, 'the whole batch went to BlockDevice.writeBatchAcross at once');
    const [devices, pieces, ats] = spy.mock.calls[0]!.arguments as [BlockDevice[], Buffer[], number[]];
    // The pieces are the caller's writes in order, each split at m0/m1 into m0's part then m1's.
    let p = 0;
    for (let i = 0; i < n; i++) {
      for (let at = offs[i]!; at < offs[i]! + bufs[i]!.length; ) {
        const l = locate(at)!;
        const m = LAYOUT[l.k]!;
        const len = Math.min(offs[i]! + bufs[i]!.length, m.base + m.size) - at;
        assert.equal(devices[p], s.stores[l.k], `piece ${p} (write ${i}) goes to ${m.name}`);
        assert.equal(ats[p], l.off, `piece ${p} (write ${i}) at its offset in ${m.name}`);
        assert.deepEqual(pieces[p], bufs[i]!.subarray(at - offs[i]!, at - offs[i]! + len));
        p++;
        at += len;
      }
    }
    assert.equal(p, pieces.length, 'no piece more than the writes make');
    const got = Buffer.alloc(SIZE);
    await s.concat.read(got, 0, SIZE, 0);
    assert.ok(got.equals(model), 'every overlapping write landed in order: the last one wins');
    const files = s.files as string[];
    LAYOUT.forEach((m, k) => assert.ok(fileBytes(files[k]!, 0, m.size).equals(model.subarray(m.base, m.base + m.size)), `${m.name}'s file holds its part`));
    await s.close();
  });

  it('writeBatch on other stores: one member\'s run after another, each in order (C3), last write wins', async (t) => {
    // Stores that take a random number of turns per write and log when each starts and ends.
    const events: Array<{ k: number; at: number; edge: 'start' | 'end' }> = [];
    const rng = seededRng(7);
    class SlowStore extends FaultyStore {
      constructor(
        readonly k: number,
        size: number,
      ) {
        super(`slow${k}`, size);
      }
      override async write(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
        events.push({ k: this.k, at: offset, edge: 'start' });
        for (let turns = Math.floor(rng() * 6); turns > 0; turns--) await new Promise((r) => setImmediate(r));
        await super.write(buf, bufOffset, length, offset);
        events.push({ k: this.k, at: offset, edge: 'end' });
      }
    }
    const stores = LAYOUT.map((m, k) => new SlowStore(k, m.size));
    const s = onStores(stores);
    const spy = t.mock.method(BlockDevice, 'writeBatchAcross');
    for (let round = 0; round < 20; round++) {
      events.length = 0;
      const bufs: Buffer[] = [];
      const offs: number[] = [];
      const model = Buffer.alloc(SIZE);
      await s.concat.read(model, 0, SIZE, 0);
      for (let i = 0; i < 60; i++) {
        const r = randomCoveredRange(rng, 16 * KiB);
        const b = tagged(r.offset, r.length, round * 1000 + i + 1);
        bufs.push(b);
        offs.push(r.offset);
        b.copy(model, r.offset);
      }
      await s.concat.writeBatch(bufs, offs);
      // The pieces in the caller's order, and their runs (consecutive pieces of one member).
      const order: Array<{ k: number; at: number }> = [];
      for (let i = 0; i < bufs.length; i++) {
        for (let at = offs[i]!; at < offs[i]! + bufs[i]!.length; ) {
          const l = locate(at)!;
          order.push({ k: l.k, at: l.off });
          at = Math.min(offs[i]! + bufs[i]!.length, LAYOUT[l.k]!.base + LAYOUT[l.k]!.size);
        }
      }
      const starts = events.filter((e) => e.edge === 'start').map(({ k, at }) => ({ k, at }));
      assert.deepEqual(starts, order, `round ${round}: writes started in the caller's order`);
      // No write of a run starts before every write of the previous run ended.
      let run = 0;
      let open = 0;
      let lastK = -1;
      for (const e of events) {
        if (e.edge === 'start') {
          if (e.k !== lastK) {
            assert.equal(open, 0, `round ${round}: a run of ${e.k} started while ${open} writes of the previous run (${lastK}) were in flight`);
            run++;
            lastK = e.k;
          }
          open++;
        } else open--;
      }
      assert.ok(run > 1, 'the batch had runs on several members');
      const got = Buffer.alloc(SIZE);
      await s.concat.read(got, 0, SIZE, 0);
      assert.ok(got.equals(model), `round ${round}: every overlapping write landed in order: the last one wins`);
    }
    assert.equal(spy.mock.callCount(), 0, 'not a native batch: the members are no BlockDevices');
    await s.close();
  });

  it('writeBatch applies the pieces in the caller\'s order across members (C3): seen in the bytes of two members on one file', async () => {
    // Two members whose devices are the same bytes: an order kept per member only would let a
    // write to one member overtake an earlier write to the other at the same place.
    const rng = seededRng(3);
    const batch = (): { bufs: Buffer[]; offs: number[]; model: Buffer } => {
      const bufs: Buffer[] = [];
      const offs: number[] = [];
      const model = Buffer.alloc(MiB);
      for (let i = 0; i < 3000; i++) {
        const length = 512 * (1 + Math.floor(rng() * 16));
        const at = 512 * Math.floor(rng() * ((64 * KiB - length) / 512 + 1)); // a 64 KiB region: many overlaps
        const member = rng() < 0.5 ? 0 : 1;
        const b = tagged(member * MiB + at, length, i + 1);
        bufs.push(b);
        offs.push(member * MiB + at);
        b.copy(model, at);
      }
      return { bufs, offs, model };
    };
    // Native: two BlockDevices on one file (the process may open a file twice: file-lock.ts).
    const f = tmpFile('alias.img');
    fs.writeFileSync(f, Buffer.alloc(MiB));
    const [a, b] = [BlockDevice.open(f), BlockDevice.open(f)];
    const native = new ConcatStore('group:alias', 2 * MiB, [{ name: 'a', base: 0, size: MiB, store: a }, { name: 'b', base: MiB, size: MiB, store: b }]);
    const n = batch();
    await native.writeBatch(n.bufs, n.offs);
    assert.ok(fs.readFileSync(f).equals(n.model), 'the file holds the batch applied in order across both members (native job)');
    await native.close();
    // Fallback: two stores over one in-memory disk, each write taking a random number of turns.
    const base = new FaultyStore('shared', MiB);
    const alias = (): DiskStore =>
      Object.assign(Object.create(base) as FaultyStore, {
        async write(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
          for (let turns = Math.floor(rng() * 4); turns > 0; turns--) await new Promise((r) => setImmediate(r));
          return base.write(buf, bufOffset, length, offset);
        },
      });
    const fallback = new ConcatStore('group:alias2', 2 * MiB, [{ name: 'a', base: 0, size: MiB, store: alias() }, { name: 'b', base: MiB, size: MiB, store: alias() }]);
    const m = batch();
    await fallback.writeBatch(m.bufs, m.offs);
    assert.ok(base.current.equals(m.model), 'the disk holds the batch applied in order across both members (fallback)');
  });

  it('writeBatch on a mix of a BlockDevice and other stores takes the fallback; a failing member leaves a prefix of the batch', async () => {
    const devs = onDevices().stores as BlockDevice[];
    await Promise.all([devs[1]!.close(), devs[2]!.close()]);
    const dev = devs[0]!;
    const others = [new FaultyStore('f1', 768 * KiB), new FaultyStore('f2', 512 * KiB)];
    const s = onStores([dev, ...others]);
    const a = Buffer.alloc(8 * KiB, 0x11);
    const b = Buffer.alloc(4 * KiB, 0x22);
    const c = Buffer.alloc(4 * KiB, 0x33);
    const d = Buffer.alloc(4 * KiB, 0x44);
    await s.concat.writeBatch([a, b, c, Buffer.alloc(4 * KiB, 0x55)], [MiB - 4 * KiB, 3 * MiB, 0, 0]);
    const got = Buffer.alloc(12 * KiB);
    await s.concat.read(got, 0, 8 * KiB, MiB - 4 * KiB);
    assert.deepEqual(got.subarray(0, 8 * KiB), a);
    await s.concat.read(got, 0, 4 * KiB, 0);
    assert.deepEqual(got.subarray(0, 4 * KiB), Buffer.alloc(4 * KiB, 0x55), 'the later write to block 0 won');
    assert.deepEqual(others[1]!.current.subarray(0, 4 * KiB), b);
    // m2 fails: m0's write before it lands, m1's after it is never made, and the batch fails.
    others[1]!.fail({ write: true });
    const m1Before = Buffer.from(others[0]!.current);
    await assert.rejects(s.concat.writeBatch([c, d, Buffer.alloc(4 * KiB, 0x66)], [8 * KiB, 3 * MiB + 8 * KiB, MiB + 16 * KiB]), (e: unknown) => e instanceof FerryError && e.code === 'IO_ERROR');
    await s.concat.read(got, 0, 4 * KiB, 8 * KiB);
    assert.deepEqual(got.subarray(0, 4 * KiB), c, "the failing member's predecessor in the batch was written");
    assert.deepEqual(others[0]!.current, m1Before, 'nothing after the failing member was written');
    await s.close();
  });
});

