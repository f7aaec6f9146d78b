// The sync engine on its own, with in-memory source and target: the copy is exact
// (data, all-zero blocks, a short last chunk), every checkpointed cursor was durable on
// the target when it was recorded, and a failing read ends the sync with an error
// without checkpointing past the chunk that failed.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import pino from 'pino';
import type { Extent } from '../../src/disk/block-device.js';
import type { DiskStore } from '../../src/disk/store.js';
import { SYNC_CHUNK_BYTES, SyncEngine, type SyncSource } from '../../src/mirror/sync-engine.js';

const log = pino({ level: 'silent' });
const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

/** A target that remembers which bytes are durable: written bytes become durable at the next sync that starts after the write completed. */
class MemTarget {
  readonly data: Buffer;
  readonly durable: Buffer;
  /** Bytes whose write completed, not yet covered by a sync. */
  private pending: Array<{ offset: number; length: number }> = [];
  syncs = 0;
  constructor(readonly size: number) {
    this.data = Buffer.alloc(size);
    this.durable = Buffer.alloc(size);
  }
  async read(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    await tick();
    this.data.copy(buf, bufOffset, offset, offset + length);
  }
  async write(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    const copy = Buffer.from(buf.subarray(bufOffset, bufOffset + length));
    await tick();
    copy.copy(this.data, offset);
    this.pending.push({ offset, length });
  }
  async zero(offset: number, length: number): Promise<void> {
    await tick();
    this.data.fill(0, offset, offset + length);
    this.pending.push({ offset, length });
  }
  async sync(): Promise<void> {
    const covered = this.pending;
    this.pending = [];
    this.syncs++;
    await tick();
    await tick();
    for (const { offset, length } of covered) this.data.copy(this.durable, offset, offset, offset + length);
  }
}

function source(bytes: Buffer, failAt: number | null = null): SyncSource {
  return {
    size: bytes.length,
    async read(buf, bufOffset, length, offset) {
      await tick();
      if (failAt !== null && offset <= failAt && failAt < offset + length) throw new Error('EIO: injected read error');
      bytes.copy(buf, bufOffset, offset, offset + length);
    },
    extents(offset, length): Extent[] {
      return [{ offset, length, flags: 0 }];
    },
  };
}

/** Random data with all-zero stretches, and a size that is no multiple of a chunk. */
function image(chunks: number): Buffer {
  const b = crypto.randomBytes(chunks * SYNC_CHUNK_BYTES + 12345);
  b.fill(0, SYNC_CHUNK_BYTES + 65536, 3 * SYNC_CHUNK_BYTES);
  b.fill(0, 5 * SYNC_CHUNK_BYTES + 4096, 5 * SYNC_CHUNK_BYTES + 200_000);
  return b;
}

describe('sync engine', () => {
  it('copies the disk exactly; every checkpointed cursor was durable when recorded', async () => {
    const disk = image(40);
    const target = new MemTarget(disk.length);
    const cursors: number[] = [];
    const engine = new SyncEngine(source(disk), target as unknown as DiskStore, {
      mode: 'full',
      targetIsZero: true,
      startCursor: 0,
      log,
      onCheckpoint: (cursor) => {
        assert.ok(target.durable.subarray(0, cursor).equals(disk.subarray(0, cursor)), `checkpoint at ${cursor}: the target is not durable below it`);
        cursors.push(cursor);
      },
    });
    await engine.start();
    assert.equal(engine.error, null);
    assert.ok(engine.done);
    assert.ok(target.data.equals(disk), 'the target holds the disk');
    assert.ok(target.durable.equals(disk), 'and durably so');
    assert.ok(cursors.length >= 2, `checkpoints along the way: ${cursors.join(', ')}`);
    assert.deepEqual([...cursors].sort((a, b) => a - b), cursors, 'cursors only grow');
    assert.equal(cursors[cursors.length - 1], disk.length);
    assert.equal(engine.copiedBytes + engine.skippedBytes, disk.length);
  });

  it('checksum mode onto a copy that differs in places writes those places only', async () => {
    const disk = image(6);
    const target = new MemTarget(disk.length);
    disk.copy(target.data);
    target.data.fill(0xee, 3 * SYNC_CHUNK_BYTES + 100, 3 * SYNC_CHUNK_BYTES + 70_000);
    const engine = new SyncEngine(source(disk), target as unknown as DiskStore, { mode: 'checksum', targetIsZero: false, startCursor: 0, log, onCheckpoint: () => {} });
    await engine.start();
    assert.equal(engine.error, null);
    assert.ok(target.data.equals(disk));
    assert.equal(engine.copiedBytes, 2 * 65536, 'the two 64 KiB blocks that differ');
  });

  it('a failing read ends the sync with an error; no checkpoint covers the failed chunk', async () => {
    const disk = image(40);
    const target = new MemTarget(disk.length);
    const failAt = 21 * SYNC_CHUNK_BYTES + 5;
    const cursors: number[] = [];
    const engine = new SyncEngine(source(disk, failAt), target as unknown as DiskStore, {
      mode: 'full',
      targetIsZero: true,
      startCursor: 0,
      log,
      onCheckpoint: (cursor) => cursors.push(cursor),
    });
    await engine.start();
    assert.match(engine.error ?? '', /injected/);
    assert.equal(engine.done, false);
    assert.ok(cursors.every((c) => c <= 21 * SYNC_CHUNK_BYTES), `cursors ${cursors.join(', ')}`);
    assert.ok(engine.position <= 21 * SYNC_CHUNK_BYTES);
  });
});
