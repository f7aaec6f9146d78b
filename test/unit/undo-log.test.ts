// The replica undo log (src/replication/undo-log.ts) on real files: old contents are durable
// before a guarded write reaches the disk (U2), each granule is saved once (U3), a torn tail
// is cut at open (U4), and a rollback restores the image the log began with, also when a
// crash interrupts it and it is repeated (U6).
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BlockDevice } from '../../src/disk/block-device.js';
import type { DiskStore } from '../../src/disk/store.js';
import { UndoGuardStore } from '../../src/replication/undo-guard-store.js';
import { UNDO_GRANULE_BYTES, UndoLog, UndoState } from '../../src/replication/undo-log.js';

const G = UNDO_GRANULE_BYTES;
// A disk whose last granule is short, to cover the padding.
const DISK = 40 * G + 12 * 1024;

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-undo-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

let n = 0;
function setup(): { diskFile: string; logFile: string; original: Buffer; disk: BlockDevice } {
  const diskFile = path.join(dir, `disk-${++n}.img`);
  const original = randomBytes(DISK);
  fs.writeFileSync(diskFile, original);
  return { diskFile, logFile: path.join(dir, `disk-${n}.undo`), original, disk: BlockDevice.open(diskFile) };
}

async function scribble(store: DiskStore): Promise<void> {
  // Overlapping writes, a zero and a trim across granule borders, and the short last granule.
  await store.write(Buffer.alloc(3 * G, 0xaa), 0, 3 * G, G / 2);
  await Promise.all([store.write(Buffer.alloc(4096, 0xbb), 0, 4096, 2 * G), store.write(Buffer.alloc(G, 0xcc), 0, G, 10 * G + 100)]);
  await store.zero(20 * G, 5 * G, true, false);
  await store.trim(30 * G - 10, 20);
  await store.write(Buffer.alloc(DISK - 39 * G, 0xdd), 0, DISK - 39 * G, 39 * G);
}

describe('replica undo log', () => {
  it('saves each granule once before it is written, and a rollback restores the image exactly', async () => {
    const { diskFile, logFile, original, disk } = setup();
    const undo = UndoLog.create(logFile, disk, DISK, 1234);
    const guard = new UndoGuardStore(disk, undo);
    await scribble(guard);
    assert.notDeepEqual(fs.readFileSync(diskFile), original);
    const st = undo.stats();
    // Granules touched: 0-3, 10-11, 20-24, 29-30, 39-40.
    assert.equal(st.granules, 4 + 2 + 5 + 2 + 2);
    assert.equal(undo.protect(0, G), null, 'a saved granule needs no second save');
    await scribble(guard); // the same granules again: nothing new is saved
    assert.equal(undo.stats().granules, st.granules);
    const r = await undo.rollback();
    assert.equal(r.granules, st.granules);
    assert.deepEqual(fs.readFileSync(diskFile), original);
    await undo.remove();
    assert.ok(!fs.existsSync(logFile));
    await disk.close();
  });

  it('survives a restart: saved granules are known again, a torn tail is cut', async () => {
    const { diskFile, logFile, original, disk } = setup();
    const undo = UndoLog.create(logFile, disk, DISK, 7);
    await scribble(new UndoGuardStore(disk, undo));
    const saved = undo.stats().granules;
    await undo.close();
    // A torn append: half an entry of garbage after the last valid one.
    const size = fs.statSync(logFile).size;
    fs.appendFileSync(logFile, randomBytes((32 + G) / 2));
    const again = UndoLog.open(logFile, disk, DISK);
    assert.equal(again.baseSeq, 7);
    assert.equal(again.stats().granules, saved);
    assert.equal(fs.statSync(logFile).size, size, 'the torn tail was cut');
    assert.equal(again.protect(0, 4 * G), null, 'granules saved before the restart stay saved');
    // New granules after the restart append where the valid log ends.
    const guard = new UndoGuardStore(disk, again);
    await guard.write(Buffer.alloc(G, 0xee), 0, G, 15 * G);
    assert.equal(again.stats().granules, saved + 1);
    await again.rollback();
    assert.deepEqual(fs.readFileSync(diskFile), original);
    await again.remove();
    await disk.close();
  });

  it('a rollback cut short by a crash is finished at the next open', async () => {
    const { diskFile, logFile, original, disk } = setup();
    const undo = UndoLog.create(logFile, disk, DISK, 9);
    await scribble(new UndoGuardStore(disk, undo));
    await undo.close();
    // The crash: a disk that fails after three writes of the rollback.
    let writes = 0;
    const failing: DiskStore = Object.create(disk, {
      write: {
        value: (buf: Buffer, off: number, len: number, pos: number) => (++writes > 3 ? Promise.reject(new Error('power lost')) : disk.write(buf, off, len, pos)),
      },
    });
    const first = UndoLog.open(logFile, failing, DISK);
    await assert.rejects(first.rollback(), /power lost/);
    await first.close();
    const second = UndoLog.open(logFile, disk, DISK);
    assert.equal(second.state, UndoState.ROLLING_BACK, 'the log remembers the rollback it began');
    await assert.rejects(Promise.resolve(second.protect(0, 1)), /rolling back/, 'nothing writes through a log being rolled back');
    await second.rollback();
    assert.deepEqual(fs.readFileSync(diskFile), original);
    await second.remove();
    await disk.close();
  });

  it('a failed save stops the guarded write, leaves the disk unchanged, and a later attempt succeeds', async () => {
    const { diskFile, logFile, original, disk } = setup();
    let failures = 2;
    const flaky = Object.create(disk, {
      read: { value: (b: Buffer, o: number, l: number, p: number) => (failures-- > 0 ? Promise.reject(new Error('EIO')) : disk.read(b, o, l, p)) },
    }) as DiskStore;
    const undo = UndoLog.create(logFile, flaky, DISK, 1);
    const guard = new UndoGuardStore(disk, undo);
    await assert.rejects(guard.write(Buffer.alloc(G, 1), 0, G, 0), /undo log/);
    await assert.rejects(guard.write(Buffer.alloc(G, 1), 0, G, 5 * G), /undo log/);
    assert.deepEqual(fs.readFileSync(diskFile), original, 'nothing reached the disk unprotected');
    assert.equal(undo.stats().granules, 0);
    await guard.write(Buffer.alloc(G, 2), 0, G, 5 * G); // the store reads again: saved, then written
    assert.equal(undo.stats().granules, 1);
    await undo.close();
    const again = UndoLog.open(logFile, disk, DISK);
    assert.equal(again.stats().granules, 1, 'the log holds exactly the saved entry');
    await again.rollback();
    assert.deepEqual(fs.readFileSync(diskFile), original);
    await again.remove();
    await disk.close();
  });

  it('refuses a file that is not an undo log, or one made for another disk size', () => {
    const { logFile, disk } = setup();
    fs.writeFileSync(logFile, randomBytes(8192));
    assert.throws(() => UndoLog.open(logFile, disk, DISK), /not a valid undo log/);
    fs.rmSync(logFile);
    const undo = UndoLog.create(logFile, disk, DISK, 1);
    void undo.close();
    assert.throws(() => UndoLog.open(logFile, disk, DISK + G), /made for a disk of/);
  });
});
