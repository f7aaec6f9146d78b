// The journal on fault-injecting stores: recovery finds exactly the records written,
// in order, across wrap-around; a torn tail or a flipped bit ends the log and is
// reported; with two copies, a record bad on one copy is taken from the other and
// rewritten; stale records from before a recovery are never resurrected.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { Journal, STAGING_BYTES_MIN } from '../../src/journal/journal.js';
import { HEADER_AREA_BYTES, RecordType } from '../../src/journal/format.js';
import { FaultyStore, seededRng } from '../../src/testing/faulty-store.js';
import { PRIMARY_CONSUMER } from '../../src/volume/committer.js';

const log = pino({ level: 'silent' });
const AREA = STAGING_BYTES_MIN;

async function fresh(copies = 1): Promise<{ stores: FaultyStore[]; j: Journal }> {
  const stores = Array.from({ length: copies }, (_, i) => new FaultyStore(`stg${i}`, AREA));
  await Journal.format(stores, 'd', PRIMARY_CONSUMER);
  return { stores, j: await Journal.open(stores, log) };
}

function payload(tag: number, bytes = 4096): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 4) b.writeUInt32LE(tag, i);
  return b;
}

async function reopen(images: Buffer[]): Promise<Journal> {
  return Journal.open(images.map((img, i) => new FaultyStore(`stg${i}`, img)), log);
}

test('recovery finds every written record, in order, and nothing more', async () => {
  const { stores, j } = await fresh();
  for (let i = 1; i <= 100; i++) await j.append({ type: RecordType.WRITE, flags: 0, diskOffset: i * 4096, length: 4096, payload: payload(i), durable: false });
  const j2 = await reopen([stores[0]!.processCrash()]);
  assert.equal(j2.recovery.records, 100);
  assert.equal(j2.recovery.end.kind, 'clean');
  assert.equal(j2.headPosition().nextSeq, 101);
  let pos = j2.consumer(PRIMARY_CONSUMER);
  await j2.sync();
  for (let seq = 1; seq <= 100; seq++) {
    const r = await j2.readRecord(seq, pos.nextPos, pos.prevCrc);
    assert.equal(r.diskOffset, seq * 4096);
    assert.ok(r.payload!.equals(payload(seq)));
    pos = { name: PRIMARY_CONSUMER, nextSeq: seq + 1, nextPos: r.pos + r.span, prevCrc: r.crc };
  }
});

test('records wrap around the ring; space is reused only behind the durable checkpoint', async () => {
  const { stores, j } = await fresh();
  const big = 1024 * 1024;
  let consumer = j.consumer(PRIMARY_CONSUMER);
  let writes = 0;
  // Three laps of the ring, consuming (and checkpointing) as we go.
  const appendOne = async (i: number): Promise<void> => {
    await j.append({ type: RecordType.WRITE, flags: 0, diskOffset: 0, length: big, payload: payload(i, big), durable: true });
    writes++;
  };
  for (let i = 1; i <= Math.ceil((3 * AREA) / big); i++) {
    const pending = appendOne(i);
    // Consume everything durable so far, then checkpoint, so the writer never waits forever.
    await Promise.race([pending, new Promise((r) => setTimeout(r, 20))]);
    await j.sync();
    while (consumer.nextSeq <= j.durableSeq) {
      const r = await j.readRecord(consumer.nextSeq, consumer.nextPos, consumer.prevCrc);
      consumer = { name: PRIMARY_CONSUMER, nextSeq: r.seq + 1, nextPos: r.pos + r.span, prevCrc: r.crc };
    }
    j.advanceConsumer(PRIMARY_CONSUMER, consumer);
    await j.checkpoint();
    await pending;
  }
  assert.ok(writes > 150);
  const j2 = await reopen([stores[0]!.powerLoss(seededRng(1))]);
  // Everything was durable and consumed: nothing to replay, and the next record follows on.
  assert.equal(j2.recovery.records, 0);
  assert.equal(j2.headPosition().nextSeq, writes + 1);
});

test('a torn last record ends the log, is reported, and is never replayed', async () => {
  const { stores, j } = await fresh();
  for (let i = 1; i <= 10; i++) await j.append({ type: RecordType.WRITE, flags: 0, diskOffset: 0, length: 4096, payload: payload(i), durable: i <= 9 });
  const image = stores[0]!.processCrash();
  const tenth = j.headPosition().nextPos - 4096 - 64;
  image.fill(0xee, HEADER_AREA_BYTES + tenth + 1024, HEADER_AREA_BYTES + tenth + 1536); // one torn sector
  const j2 = await reopen([image]);
  assert.equal(j2.recovery.records, 9);
  assert.equal(j2.recovery.end.kind, 'torn');
  assert.match(j2.recovery.end.detail!, /record 10/);
});

test('a flipped bit inside the log is detected; the records after it are reported discarded', async () => {
  const { stores, j } = await fresh();
  for (let i = 1; i <= 20; i++) await j.append({ type: RecordType.WRITE, flags: 0, diskOffset: 0, length: 4096, payload: payload(i), durable: true });
  const image = stores[0]!.processCrash();
  const recordSpan = 4096 + 64;
  image[HEADER_AREA_BYTES + 4 * recordSpan + 64 + 100]! ^= 0x10; // inside record 5's payload
  const j2 = await reopen([image]);
  assert.equal(j2.recovery.records, 4);
  assert.equal(j2.recovery.end.kind, 'corrupt');
  assert.equal(j2.recovery.end.discardedRecords, 15);
});

test('with two copies, a record bad on one copy is taken from the other and rewritten', async () => {
  const { stores, j } = await fresh(2);
  for (let i = 1; i <= 20; i++) await j.append({ type: RecordType.WRITE, flags: 0, diskOffset: 0, length: 4096, payload: payload(i), durable: true });
  const a = stores[0]!.processCrash();
  const b = stores[1]!.processCrash();
  a[HEADER_AREA_BYTES + 3 * (4096 + 64) + 200]! ^= 1;
  b[HEADER_AREA_BYTES + 11 * (4096 + 64) + 200]! ^= 1;
  const j2 = await reopen([a, b]);
  assert.equal(j2.recovery.records, 20);
  assert.equal(j2.recovery.end.kind, 'clean');
  assert.equal(j2.recovery.rewrittenRecords, 2);
  assert.ok(j2.stats().copies.every((c) => c.healthy));
});

test('a stale record left after a torn one is never resurrected (hash chain)', async () => {
  const { stores, j } = await fresh();
  for (let i = 1; i <= 3; i++) await j.append({ type: RecordType.WRITE, flags: 0, diskOffset: 0, length: 4096, payload: payload(i), durable: true });
  // Corrupt record 2: recovery keeps record 1 only, and record 3 stays on the media.
  const image = stores[0]!.processCrash();
  image[HEADER_AREA_BYTES + (4096 + 64) + 300]! ^= 4;
  const s2 = new FaultyStore('stg0', image);
  const j2 = await Journal.open([s2], log);
  assert.equal(j2.recovery.records, 1);
  // A new record 2 of the same size lands where the old one was; the old record 3 still follows it.
  await j2.append({ type: RecordType.WRITE, flags: 0, diskOffset: 0, length: 4096, payload: payload(99), durable: true });
  const j3 = await reopen([s2.processCrash()]);
  assert.equal(j3.recovery.records, 2, 'the old record 3 does not chain to the new record 2');
});

test('a write larger than the free space waits for the consumer instead of overwriting', async () => {
  const { j } = await fresh();
  const big = 8 * 1024 * 1024;
  const done: number[] = [];
  const all = Array.from({ length: 12 }, (_, i) =>
    j.append({ type: RecordType.WRITE, flags: 0, diskOffset: 0, length: big, payload: payload(i, big), durable: false }).then(() => done.push(i)),
  );
  await new Promise((r) => setTimeout(r, 100));
  assert.ok(done.length < 12 && done.length >= 6, `only what fits is written (${done.length})`);
  await j.sync();
  let c = j.consumer(PRIMARY_CONSUMER);
  while (done.length < 12) {
    await j.sync();
    while (c.nextSeq <= j.durableSeq) {
      const r = await j.readRecord(c.nextSeq, c.nextPos, c.prevCrc);
      c = { name: PRIMARY_CONSUMER, nextSeq: r.seq + 1, nextPos: r.pos + r.span, prevCrc: r.crc };
    }
    j.advanceConsumer(PRIMARY_CONSUMER, c);
    await j.checkpoint();
    await new Promise((r) => setTimeout(r, 10));
  }
  await Promise.all(all);
});
