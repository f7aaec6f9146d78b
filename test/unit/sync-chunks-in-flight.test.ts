// How many chunks the sync engine copies at once (src/mirror/sync-engine.ts): 4 for a plain
// target, what a target asks for through SyncTargetHints (a remote mirror: more, to cover the
// round trip), never more than SYNC_CHUNKS_IN_FLIGHT_LIMIT.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import pino from 'pino';
import type { DiskStore } from '../../src/disk/store.js';
import { SYNC_CHUNK_BYTES, SYNC_CHUNKS_IN_FLIGHT_LIMIT, SyncEngine } from '../../src/mirror/sync-engine.js';
import { REMOTE_SYNC_CHUNKS_IN_FLIGHT_MAX } from '../../src/replication/remote-store.js';

const log = pino({ level: 'silent' });
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A target whose writes take a while; counts the most that were in progress at once. */
function slowTarget(size: number, hint?: number): DiskStore & { data: Buffer; peak: number } {
  let now = 0;
  const t = {
    data: Buffer.alloc(size),
    peak: 0,
    ...(hint === undefined ? {} : { syncChunksInFlightMax: hint }),
    async write(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
      t.peak = Math.max(t.peak, ++now);
      await sleep(5);
      buf.copy(t.data, offset, bufOffset, bufOffset + length);
      now--;
    },
    async sync(): Promise<void> {},
    async zero(): Promise<void> {},
  };
  return t as unknown as DiskStore & { data: Buffer; peak: number };
}

async function syncWith(hint: number | undefined): Promise<{ peak: number; error: string | null }> {
  const bytes = crypto.randomBytes(24 * SYNC_CHUNK_BYTES);
  const target = slowTarget(bytes.length, hint);
  const engine = new SyncEngine(
    { size: bytes.length, read: async (b, o, l, off) => void bytes.copy(b, o, off, off + l), extents: (offset, length) => [{ offset, length, flags: 0 }] },
    target,
    { mode: 'full', targetIsZero: true, startCursor: 0, onCheckpoint: () => undefined, log },
  );
  await engine.start();
  if (engine.error === null) assert.ok(target.data.equals(bytes), 'the copy is exact');
  return { peak: target.peak, error: engine.error };
}

test('a plain target gets 4 chunks in flight, a remote one what it asks for', async () => {
  assert.equal((await syncWith(undefined)).peak, 4);
  assert.equal((await syncWith(REMOTE_SYNC_CHUNKS_IN_FLIGHT_MAX)).peak, REMOTE_SYNC_CHUNKS_IN_FLIGHT_MAX);
  assert.equal((await syncWith(1)).peak, 1);
});

test('a target asking for more than the limit is refused', async () => {
  const r = await syncWith(SYNC_CHUNKS_IN_FLIGHT_LIMIT + 1);
  assert.match(r.error ?? '', /bounded/);
  assert.equal(r.peak, 0);
});
