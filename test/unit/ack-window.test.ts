// A remote stream's acknowledgement window (src/replication/ack-window.ts) in-process, on a real
// journal over in-memory stores: acknowledgements move the position only over whole frames and
// only forward (R4, asserted), the window's bounds, a dropped link emptying it, and checkpoints
// that make the acknowledged position the consumer's durable one (reopening the journal finds it),
// never while the stream is detached.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { Journal, STAGING_BYTES_MIN } from '../../src/journal/journal.js';
import { RecordType, type ConsumerPosition } from '../../src/journal/format.js';
import { FaultyStore } from '../../src/testing/faulty-store.js';
import { AckWindow, type ShippedFrame } from '../../src/replication/ack-window.js';
import { REMOTE_CONSUMER } from '../../src/replication/remote-stream.js';

const log = pino({ level: 'silent' });

/** A journal whose only consumer is the remote stream's, with `n` durable records; the position after each. */
async function staged(n: number): Promise<{ store: FaultyStore; j: Journal; after: ConsumerPosition[] }> {
  const store = new FaultyStore('stg', STAGING_BYTES_MIN);
  await Journal.format([store], 'd', REMOTE_CONSUMER);
  const j = await Journal.open([store], log);
  const after: ConsumerPosition[] = [j.consumer(REMOTE_CONSUMER)];
  for (let i = 1; i <= n; i++) {
    await j.append({ type: RecordType.WRITE, flags: 0, diskOffset: i * 4096, length: 4096, payload: Buffer.alloc(4096, i), durable: true });
    after.push({ ...j.headPosition(), name: REMOTE_CONSUMER });
  }
  return { store, j, after };
}

/** The frame of records first..last (their positions from `after`). */
function frame(after: ConsumerPosition[], first: number, last: number, timeMs = last * 1000): ShippedFrame {
  assert.ok(first >= 1);
  return { lastSeq: last, end: after[last]!, bytes: (last - first + 1) * 4096, lastTimeMs: timeMs };
}

test('an acknowledgement moves the position over whole frames only, and only forward (R4)', async () => {
  const { j, after } = await staged(10);
  const w = new AckWindow(j.consumer(REMOTE_CONSUMER), { journal: j, consumer: REMOTE_CONSUMER, attached: () => true, log });
  w.shipped(frame(after, 1, 3));
  w.shipped(frame(after, 4, 6));
  w.shipped(frame(after, 7, 10));
  assert.equal(w.size, 3);
  assert.equal(w.ack(2), false, 'part of a frame acknowledged: the position stays');
  assert.equal(w.acked.nextSeq, 1);
  assert.equal(w.ack(7), true, 'two frames covered');
  assert.deepEqual([w.acked.nextSeq, w.size, w.appliedTimeMs], [7, 1, 6000]);
  assert.equal(w.ack(5), false, 'an older acknowledgement again: nothing');
  // A frame that ends behind the acknowledged position (shipped from a stale position) trips R4.
  w.clear();
  assert.equal(w.size, 0, 'a dropped link empties the window');
  w.shipped(frame(after, 1, 3));
  assert.throws(() => w.ack(3), /never past the acknowledged seq \+ 1 \(R4\)/);
});

test('the window is bounded in frames and in bytes; clearing it makes room again', async () => {
  const { j, after } = await staged(1);
  const w = new AckWindow(j.consumer(REMOTE_CONSUMER), { journal: j, consumer: REMOTE_CONSUMER, attached: () => true, log });
  let frames = 0;
  while (w.hasRoom) {
    w.shipped({ ...frame(after, 1, 1), bytes: 1 });
    frames++;
    assert.ok(frames <= 1000, 'the window has a bound');
  }
  assert.equal(frames, 64);
  w.clear();
  assert.ok(w.hasRoom);
  // A few large frames fill it by bytes first.
  let big = 0;
  while (w.hasRoom) {
    w.shipped({ ...frame(after, 1, 1), bytes: 8 * 1024 * 1024 });
    big++;
  }
  assert.equal(big, 8);
});

test('checkpoints make the acknowledged position durable, never while detached', async () => {
  const { store, j, after } = await staged(6);
  let attached = true;
  const w = new AckWindow(j.consumer(REMOTE_CONSUMER), { journal: j, consumer: REMOTE_CONSUMER, attached: () => attached, log });
  w.shipped(frame(after, 1, 3));
  w.shipped(frame(after, 4, 6));
  assert.ok(w.ack(3));
  await w.checkpoint();
  assert.equal(j.consumer(REMOTE_CONSUMER).nextSeq, 4, 'checkpointed at the acknowledged position');
  assert.equal(w.checkpointInProgress, null);
  // Detached (fallen back to the dirty bitmap): the position moves, the journal's consumer does not.
  attached = false;
  assert.ok(w.ack(6));
  await w.checkpoint();
  assert.equal(j.consumer(REMOTE_CONSUMER).nextSeq, 4);
  // Attached again: the pending move is checkpointed, and is what a restart finds.
  attached = true;
  await w.checkpoint();
  assert.equal(j.consumer(REMOTE_CONSUMER).nextSeq, 7);
  const reopened = await Journal.open([new FaultyStore('stg', store.processCrash())], log);
  assert.equal(reopened.consumer(REMOTE_CONSUMER).nextSeq, 7, 'the checkpoint is durable');
});

test('an attach that finds the mirror site ahead moves the position to be checkpointed; a re-added consumer does not', async () => {
  const { j, after } = await staged(6);
  const w = new AckWindow(j.consumer(REMOTE_CONSUMER), { journal: j, consumer: REMOTE_CONSUMER, attached: () => true, log });
  w.restartAt(after[0]!);
  await w.checkpoint();
  assert.equal(j.consumer(REMOTE_CONSUMER).nextSeq, 1, 'a restart at the consumer\'s own position: nothing to checkpoint');
  w.skipTo(after[5]!);
  assert.equal(w.acked.nextSeq, 6);
  await w.checkpoint();
  assert.equal(j.consumer(REMOTE_CONSUMER).nextSeq, 6, 'what the mirror site already holds is freed here');
});
