// `ferry staging repair` rebuilds a failed copy while writes go on (Journal.rebuildCopy).
// The moment the rebuilt copy is declared healthy it must be a copy that could carry the
// disk alone: recovery from it by itself must find every record the other copy has.
// These interleavings are forced through a store whose writes can be held, so they
// happen every time instead of once in a while under load:
//  - a checkpoint completes between the rebuild reading the header area (superblock and
//    checkpoints) from the good copy and the new copy joining the writes;
//  - the consumer's checkpoint frees the ring while the rebuild copies it, and new
//    records land in the part being copied.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import type { Store } from '../../src/disk/store.js';
import { HEADER_AREA_BYTES, RecordType } from '../../src/journal/format.js';
import { Journal, STAGING_BYTES_MIN, type StagedRecord } from '../../src/journal/journal.js';
import { FaultyStore } from '../../src/testing/faulty-store.js';
import { PRIMARY_CONSUMER } from '../../src/volume/committer.js';
import { MiB, sleep } from './helpers.js';

const log = pino({ level: 'silent' });
const SIZE = STAGING_BYTES_MIN;

/** A FaultyStore whose next write matching a predicate waits until released. */
class HeldStore implements Store {
  private hold: { match: (offset: number) => boolean; onHeld: () => void; released: Promise<void> } | null = null;

  constructor(readonly inner: FaultyStore) {}

  get path(): string {
    return this.inner.path;
  }

  get size(): number {
    return this.inner.size;
  }

  /** Holds the next write at an offset matching `match`; `held` resolves once it waits. */
  holdNextWrite(match: (offset: number) => boolean): { held: Promise<void>; release: () => void } {
    let onHeld!: () => void;
    let release!: () => void;
    const held = new Promise<void>((r) => (onHeld = r));
    const released = new Promise<void>((r) => (release = r));
    this.hold = { match, onHeld, released };
    return { held, release };
  }

  async write(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    const h = this.hold;
    if (h && h.match(offset)) {
      this.hold = null;
      h.onHeld();
      await h.released;
    }
    return this.inner.write(buf, bufOffset, length, offset);
  }

  read(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    return this.inner.read(buf, bufOffset, length, offset);
  }

  sync(): Promise<void> {
    return this.inner.sync();
  }

  stillAtPath(): boolean {
    return this.inner.stillAtPath();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

const ringWrite = (offset: number): boolean => offset >= HEADER_AREA_BYTES;

function write(j: Journal, bytes: number, fill: number): Promise<StagedRecord> {
  return j.append({ type: RecordType.WRITE, flags: 0, diskOffset: 0, length: bytes, payload: Buffer.alloc(bytes, fill), durable: false });
}

/** What recovery from this image alone finds: where the log ends. */
async function recoveredEnd(image: Buffer): Promise<number> {
  const j = await Journal.open([new FaultyStore('alone', image)], log);
  const next = j.recovery.nextSeq;
  await j.close();
  return next;
}

/** A journal on copies A (held-able) and B, with B failed by a write error. */
async function degradedJournal(): Promise<{ j: Journal; a: HeldStore }> {
  const a = new HeldStore(new FaultyStore('A', SIZE));
  const b = new FaultyStore('B', SIZE);
  await Journal.format([a, b], 'd', PRIMARY_CONSUMER);
  const j = await Journal.open([a, b], log);
  await write(j, 4096, 1);
  b.fail({ write: true });
  await write(j, 4096, 2);
  assert.equal(j.stats().copies[1]!.healthy, false, 'copy B failed');
  return { j, a };
}

/**
 * Rebuilds copy B onto `b2` and, at the moment b2 is declared healthy, checks that b2
 * alone recovers as far as A. Returns the rebuild's promise.
 */
function rebuildAndWatch(j: Journal, a: HeldStore, b2: HeldStore): { done: Promise<void>; verdict: Promise<{ alone: number; reference: number }> } {
  let resolveVerdict!: (v: { alone: number; reference: number }) => void;
  const verdict = new Promise<{ alone: number; reference: number }>((r) => (resolveVerdict = r));
  j.once('repaired', () => {
    // Synchronously, at the moment of the claim: images as both copies hold them now.
    const imageA = Buffer.from(a.inner.current);
    const imageB = Buffer.from(b2.inner.current);
    void Promise.all([recoveredEnd(imageB), recoveredEnd(imageA)]).then(([alone, reference]) => resolveVerdict({ alone, reference }));
  });
  return { done: j.rebuildCopy(1, b2), verdict };
}

test('a checkpoint between the rebuild reading the header area and the copy joining the writes', { timeout: 60_000 }, async () => {
  const { j, a } = await degradedJournal();
  const records: StagedRecord[] = [];
  for (let i = 0; i < 10; i++) records.push(await write(j, 64 * 1024, 10 + i));
  await j.sync();
  // A batch in progress (its write to A held) keeps the batch lock the rebuild waits for.
  const hold = a.holdNextWrite(ringWrite);
  const inFlight = write(j, 4096, 99);
  await hold.held;
  const b2 = new HeldStore(new FaultyStore('B2', SIZE));
  const rebuild = rebuildAndWatch(j, a, b2);
  await sleep(20); // the rebuild reads the header area, then waits for the batch lock
  // The consumer is done with the ten records; its checkpoint moves the tail past them.
  const last = records[records.length - 1]!;
  j.advanceConsumer(PRIMARY_CONSUMER, { name: PRIMARY_CONSUMER, nextSeq: last.seq + 1, nextPos: last.pos + last.span, prevCrc: last.crc });
  const checkpoint = j.checkpoint();
  await Promise.race([checkpoint, sleep(300)]);
  hold.release();
  await inFlight;
  await checkpoint;
  await rebuild.done;
  const v = await rebuild.verdict;
  assert.equal(v.alone, v.reference, `the rebuilt copy alone recovers to record ${v.alone}, the good copy to ${v.reference}`);
  await j.close();
});

test('the ring freed and written again while the rebuild copies it', { timeout: 60_000 }, async () => {
  const { j, a } = await degradedJournal();
  // Fill the ring to near its end: the next 1 MiB record will not fit there and goes to offset 0.
  let last!: StagedRecord;
  while (j.headPosition().nextPos + 2 * (MiB + 64) <= j.ringBytes) last = await write(j, MiB, 3);
  await j.sync();
  const b2 = new HeldStore(new FaultyStore('B2', SIZE));
  // Hold the rebuild's first ring write: the chunk at the tail is read from A, not yet written to B2.
  const hold = b2.holdNextWrite(ringWrite);
  const rebuild = rebuildAndWatch(j, a, b2);
  await hold.held;
  // The consumer catches up; its checkpoint frees the whole ring; new records go to its start.
  j.advanceConsumer(PRIMARY_CONSUMER, { name: PRIMARY_CONSUMER, nextSeq: last.seq + 1, nextPos: last.pos + last.span, prevCrc: last.crc });
  await j.checkpoint();
  const more = Promise.all([0xe1, 0xe2, 0xe3].map((f) => write(j, MiB, f)));
  await Promise.race([more, sleep(300)]);
  hold.release();
  await rebuild.done;
  const written = await more;
  assert.ok(written.some((r) => r.pos < 4 * MiB), 'new records went to the start of the ring');
  const v = await rebuild.verdict;
  assert.equal(v.alone, v.reference, `the rebuilt copy alone recovers to record ${v.alone}, the good copy to ${v.reference}`);
  // And after the new records: still a full copy.
  await j.sync();
  await j.checkpoint();
  assert.equal(await recoveredEnd(Buffer.from(b2.inner.current)), await recoveredEnd(Buffer.from(a.inner.current)));
  await j.close();
});
