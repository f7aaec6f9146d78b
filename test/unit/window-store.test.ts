// The stores a consistency group's member is served from, in-process on real files (the
// layout: concat-layout.ts): WindowStore (src/volume/window-store.ts), a member's window onto
// a real Volume over the group's ConcatStore: requests bounded to the member and mapped to its
// base, its flush the group's, the group's read-only flag and held gate passed on; and
// FailedStore (src/disk/failed-store.ts), what a member serves when its group could not be
// rebuilt: every operation fails with its error, none waits.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FailedStore } from '../../src/disk/failed-store.js';
import type { DiskStore } from '../../src/disk/store.js';
import { FerryError } from '../../src/errors.js';
import { Volume } from '../../src/volume/volume.js';
import { WindowStore } from '../../src/volume/window-store.js';
import { HZ, KiB, MiB, assertTiles, fileBytes, onDevices, tagged } from './concat-layout.js';

describe('WindowStore', () => {
  it("maps a member's requests to its place in the group's volume and bounds them to the member", async () => {
    const s = onDevices(true);
    const files = s.files as string[];
    const group = new Volume('g', s.concat, false);
    assert.throws(() => new WindowStore(group, 3 * MiB, MiB + 4096, 'x'), /inside the group's/);
    const win = new WindowStore(group, MiB, 768 * KiB, files[1]!);
    assert.equal(win.groupVolume, group);
    assert.equal(win.size, 768 * KiB);
    // Writes at the window's start and end land at m1's start and end.
    const w0 = tagged(0, 8 * KiB, 1);
    const w1 = tagged(1, 8 * KiB, 2);
    await win.write(w0, 0, w0.length, 0);
    await win.writeFua(w1, 0, w1.length, 768 * KiB - 8 * KiB);
    assert.deepEqual(fileBytes(files[1]!, 0, 8 * KiB), w0);
    assert.deepEqual(fileBytes(files[1]!, 768 * KiB - 8 * KiB, 8 * KiB), w1);
    assert.deepEqual(fileBytes(files[0]!, MiB - 8 * KiB, 8 * KiB), Buffer.alloc(8 * KiB, 0xa0), 'the neighbour below is untouched');
    const r = Buffer.alloc(16 * KiB);
    await win.read(r, 0, 16 * KiB, 768 * KiB - 16 * KiB);
    assert.deepEqual(r, Buffer.concat([Buffer.alloc(8 * KiB, 0xa1), w1]));
    // A request past the member's end is refused (it would reach the gap or the next member), and changes nothing.
    const end = fileBytes(files[1]!, 0, 768 * KiB);
    for (const [off, len] of [[768 * KiB - 4 * KiB, 8 * KiB], [768 * KiB, 4 * KiB], [-4096, 4096]] as const) {
      await assert.rejects(async () => win.write(Buffer.alloc(len), 0, len, off), /inside member of/);
      await assert.rejects(async () => win.read(Buffer.alloc(len), 0, len, off), /inside member of/);
      await assert.rejects(async () => win.zero(off, len, true, false), /inside member of/);
      await assert.rejects(async () => win.trim(off, len), /inside member of/);
      assert.throws(() => win.extents(off, len, 4), /inside member of/);
    }
    assert.deepEqual(fileBytes(files[1]!, 0, 768 * KiB), end);
    // Zero and trim at window offsets.
    await win.zero(64 * KiB, 64 * KiB, false, false);
    await win.trim(256 * KiB, 64 * KiB);
    assert.deepEqual(fileBytes(files[1]!, 60 * KiB, 72 * KiB), Buffer.concat([Buffer.alloc(4 * KiB, 0xa1), Buffer.alloc(64 * KiB), Buffer.alloc(4 * KiB, 0xa1)]));
    assert.deepEqual(fileBytes(files[1]!, 256 * KiB, 64 * KiB), Buffer.alloc(64 * KiB));
    // Extents in the window's offsets, ending at the member's end (the gap after it is not the member's).
    const ext = win.extents(0, 768 * KiB, 16);
    assert.equal(assertTiles(ext, 0, 'window map'), 768 * KiB);
    assert.deepEqual(ext.find((e) => e.offset === 256 * KiB), { offset: 256 * KiB, length: 64 * KiB, flags: HZ });
    assert.equal(win.extents(0, 768 * KiB, 1).length, 1);
    // A member's own Volume over its window: its size is the member's, its flush the group's.
    const member = new Volume('m1', win, false);
    assert.equal(member.size, 768 * KiB);
    await member.write(Buffer.alloc(4 * KiB, 0x5a), 0, 4 * KiB, 4 * KiB, true);
    await member.flush();
    assert.deepEqual(fileBytes(files[1]!, 4 * KiB, 4 * KiB), Buffer.alloc(4 * KiB, 0x5a));
    assert.equal(group.stats.flushOps, 1, "the member's flush is the group's");
    assert.equal(group.stats.writeOps, 3, "every member write went through the group's volume");
    await s.close();
  });

  it("follows the group's read-only flag, and a held group holds its members' requests without failing them", async () => {
    const s = onDevices();
    const files = s.files as string[];
    const group = new Volume('g', s.concat, false);
    const member = new Volume('m2', new WindowStore(group, 3 * MiB, 512 * KiB, files[2]!), false);
    group.setReplicaHold(true);
    assert.equal(member.readOnly, true, "a read-only group makes its members read-only");
    await assert.rejects(member.write(Buffer.alloc(4096), 0, 4096, 0, false), (e: unknown) => e instanceof FerryError && e.code === 'READ_ONLY');
    group.setReplicaHold(false);
    assert.equal(member.readOnly, false);
    // Requests wait at the held group's gate, then complete once it is released.
    const release = await group.hold();
    let settled = false;
    const w = member.write(Buffer.alloc(4096, 0x77), 0, 4096, 8192, false).then(() => (settled = true));
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    assert.equal(settled, false, 'held while the group is held');
    assert.deepEqual(fileBytes(files[2]!, 8192, 4096), Buffer.alloc(4096), 'not written while held');
    release();
    await w;
    assert.deepEqual(fileBytes(files[2]!, 8192, 4096), Buffer.alloc(4096, 0x77));
    await s.close();
  });

  it("a member's client write (writeFrom, the NBD path) is handed to the group's volume: mapped, counted at both, held with the group, refused by a read-only group", async () => {
    const s = onDevices();
    const files = s.files as string[];
    const group = new Volume('g', s.concat, false);
    const member = new Volume('m1', new WindowStore(group, MiB, 768 * KiB, files[1]!), false);
    const writeFrom = (data: Buffer, offset: number, fua: boolean): Promise<void> =>
      new Promise((resolve, reject) => member.writeFrom(data, data.length, offset, fua, (err) => (err ? reject(err) : resolve())));
    const a = tagged(3, 8 * KiB, 9);
    await writeFrom(a, 16 * KiB, false);
    await writeFrom(a, 768 * KiB - 8 * KiB, true);
    assert.deepEqual(fileBytes(files[1]!, 16 * KiB, 8 * KiB), a);
    assert.deepEqual(fileBytes(files[1]!, 768 * KiB - 8 * KiB, 8 * KiB), a);
    assert.equal(member.stats.writeOps, 2);
    assert.equal(group.stats.writeOps, 2, "the writes went through the group's volume");
    // Past the member's end: refused, nothing written, counted as the member's error.
    await assert.rejects(writeFrom(Buffer.alloc(8 * KiB, 1), 768 * KiB - 4 * KiB, false), /inside member of/);
    assert.equal(member.stats.errors, 1);
    (await member.hold())(); // its gate was left: a hold of the member drains at once
    // Held with the group, then done once it is released.
    const release = await group.hold();
    let settled = false;
    const w = writeFrom(Buffer.alloc(4096, 0x66), 0, false).then(() => (settled = true));
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    assert.equal(settled, false, 'held while the group is held');
    release();
    await w;
    assert.deepEqual(fileBytes(files[1]!, 0, 4096), Buffer.alloc(4096, 0x66));
    // A read-only group refuses it, and the member's bytes stay.
    group.setReplicaHold(true);
    await assert.rejects(writeFrom(Buffer.alloc(4096, 0x55), 0, false), (e: unknown) => e instanceof FerryError && e.code === 'READ_ONLY');
    assert.deepEqual(fileBytes(files[1]!, 0, 4096), Buffer.alloc(4096, 0x66));
    await s.close();
  });
});

describe('FailedStore', () => {
  it('fails every operation with its error; a Volume over it fails requests, not hangs them', async () => {
    const err = new FerryError('DISK_UNAVAILABLE', "its consistency group 'g' is unavailable: test");
    const f: DiskStore = new FailedStore('/nowhere/m.img', MiB, err);
    const buf = Buffer.alloc(4096);
    for (const op of [() => f.read(buf, 0, 4096, 0), () => f.write(buf, 0, 4096, 0), () => f.trim(0, 4096), () => f.zero(0, 4096, true, false), () => f.sync()]) {
      await assert.rejects(op(), (e: unknown) => e === err);
    }
    assert.deepEqual(f.extents(4096, 8192, 4), [{ offset: 4096, length: 8192, flags: 0 }]);
    assert.equal(f.stillAtPath(), false);
    assert.equal(f.readOnly, false);
    assert.equal(f.size, MiB);
    await f.close();
    const v = new Volume('m', f, false);
    await assert.rejects(v.read(buf, 0, 4096, 0), (e: unknown) => e === err);
    await assert.rejects(v.write(buf, 0, 4096, 0, false), (e: unknown) => e === err);
    await assert.rejects(v.flush(), (e: unknown) => e === err);
    await new Promise<void>((resolve) => v.readTo(buf, 0, 4096, 0, (e) => (assert.equal(e, err), resolve())));
    await new Promise<void>((resolve) => v.writeFrom(buf, 4096, 0, false, (e) => (assert.equal(e, err), resolve())));
    assert.equal(v.stats.errors, 5);
    assert.equal(v.stats.readOps + v.stats.writeOps, 0);
  });
});

