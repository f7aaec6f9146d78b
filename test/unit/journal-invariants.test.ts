// The journal's invariants J1–J6 and the mirror site's R3, R5–R7, asserted in the code, on
// real data: a journal with two consumers that lap the ring several times (one lagging, so
// batches land right behind the tail), a writer waiting for a full ring, recovery after
// reopen on two copies (records read back from the media), and the mirror site's receiver
// taking records, a sync chunk and the news that the sync completed. None of the asserts
// fires; where a violation can be reached through the public API, the assert does.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Duplex, PassThrough } from 'node:stream';
import type tls from 'node:tls';
import { pino } from 'pino';
import { Journal, STAGING_BYTES_MIN, type StagedRecord } from '../../src/journal/journal.js';
import { RECORD_HEADER_BYTES, RecordType, type ConsumerPosition } from '../../src/journal/format.js';
import { FaultyStore, seededRng, type Rng } from '../../src/testing/faulty-store.js';
import { PRIMARY_CONSUMER } from '../../src/volume/committer.js';
import { StagedPath } from '../../src/volume/staged-path.js';
import type { Volume } from '../../src/volume/volume.js';
import type { PeerRow } from '../../src/control/store.js';
import { encodeFrame, FrameReader, FrameType, type Frame } from '../../src/replication/frame.js';
import { Receiver, type ReplicaHandle, type ReplicaHost } from '../../src/replication/receiver.js';

const log = pino({ level: 'silent' });
const AREA = STAGING_BYTES_MIN;
const MIRROR = 'mirror';
const KiB = 1024;
const MiB = 1024 * KiB;

/** A FaultyStore whose reads can be held (a slow read in flight), and which tells when a sync has completed. */
class HeldReadStore extends FaultyStore {
  private gate: Promise<void> | null = null;
  private syncWaiters: Array<() => void> = [];

  holdReads(): () => void {
    let release!: () => void;
    this.gate = new Promise((r) => (release = r));
    return () => {
      this.gate = null;
      release();
    };
  }

  override async read(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    if (this.gate) await this.gate;
    return super.read(buf, bufOffset, length, offset);
  }

  override async sync(): Promise<void> {
    await super.sync();
    for (const w of this.syncWaiters.splice(0)) w();
  }

  nextSync(): Promise<void> {
    return new Promise((r) => this.syncWaiters.push(r));
  }
}

async function fresh(copies = 1): Promise<{ stores: HeldReadStore[]; j: Journal }> {
  const stores = Array.from({ length: copies }, (_, i) => new HeldReadStore(`stg${i}`, AREA));
  await Journal.format(stores, 'd', PRIMARY_CONSUMER);
  return { stores, j: await Journal.open(stores, log) };
}

/** A payload whose every word is `tag`, so a record read back can be told from any other. */
function payload(tag: number, bytes: number): Buffer {
  const word = Buffer.alloc(4);
  word.writeUInt32LE(tag >>> 0);
  return Buffer.alloc(bytes, word);
}

interface Appended {
  type: number;
  diskOffset: number;
  length: number;
  tag: number;
}

/** Appends records of mixed kinds and sizes (WRITE up to `maxBytes`, ZERO, TRIM; some FUA); remembers what each seq must hold. */
class Writer {
  readonly expected = new Map<number, Appended>();
  private tag = 0;

  constructor(
    private readonly j: Journal,
    private readonly rng: Rng,
    private readonly maxBytes: number,
  ) {}

  append(): Promise<StagedRecord> {
    const r = this.rng();
    const tag = ++this.tag;
    const diskOffset = Math.floor(this.rng() * 1024) * 4096;
    const durable = this.rng() < 0.1;
    let p: Promise<StagedRecord>;
    if (r < 0.1) p = this.j.append({ type: RecordType.ZERO, flags: 0, diskOffset, length: 8192, payload: null, durable });
    else if (r < 0.15) p = this.j.append({ type: RecordType.TRIM, flags: 0, diskOffset, length: 4096, payload: null, durable });
    else {
      const length = 512 * (1 + Math.floor(this.rng() * (this.maxBytes / 512)));
      p = this.j.append({ type: RecordType.WRITE, flags: 0, diskOffset, length, payload: payload(tag, length), durable });
    }
    return p.then((rec) => {
      this.expected.set(rec.seq, { type: rec.type, diskOffset: rec.diskOffset, length: rec.length, tag });
      return rec;
    });
  }
}

/** A consumer reading records in order through Journal.readRecord, checking each against what was appended. */
class Consumer {
  pos: ConsumerPosition;
  readonly seen: StagedRecord[] = [];

  constructor(
    private readonly j: Journal,
    readonly name: string,
    private readonly expected: Map<number, Appended> | null,
  ) {
    this.pos = j.consumer(name);
  }

  async readTo(upTo: number): Promise<void> {
    while (this.pos.nextSeq <= upTo) {
      const r = await this.j.readRecord(this.pos.nextSeq, this.pos.nextPos, this.pos.prevCrc, this.name);
      assert.equal(r.seq, this.pos.nextSeq);
      const e = this.expected?.get(r.seq);
      if (e) {
        assert.deepEqual({ type: r.type, diskOffset: r.diskOffset, length: r.length }, { type: e.type, diskOffset: e.diskOffset, length: e.length }, `record ${r.seq}`);
        if (r.type === RecordType.WRITE) assert.ok(r.payload!.subarray(0, r.length).equals(payload(e.tag, r.length)), `payload of record ${r.seq}`);
      }
      this.seen.push(r);
      if (this.seen.length > 64) this.seen.shift();
      this.pos = { name: this.name, nextSeq: r.seq + 1, nextPos: r.pos + r.span, prevCrc: r.crc };
    }
  }

  advance(): void {
    this.j.advanceConsumer(this.name, this.pos);
  }
}

test('two consumers, several laps of the ring: every assert holds on real data', async () => {
  const { stores, j } = await fresh();
  await j.addConsumer(MIRROR);
  const w = new Writer(j, seededRng(11), MiB);
  const primary = new Consumer(j, PRIMARY_CONSUMER, w.expected);
  const mirror = new Consumer(j, MIRROR, w.expected);
  let laps = 0;
  let lastHead = j.headPosition().nextPos;
  let rounds = 0;
  while (laps < 3) {
    // A group of appends at once: they share batches (group commit).
    const group = 1 + Math.floor(seededRng(rounds)() * 16);
    await Promise.all(Array.from({ length: group }, () => w.append()));
    const head = j.headPosition().nextPos;
    if (head < lastHead) laps++;
    lastHead = head;
    rounds++;
    // At most 16 MiB per group: consuming once half the ring is used, the writer never waits.
    if (j.stats().usedBytes < j.ringBytes / 2) continue;
    await j.sync();
    await primary.readTo(j.durableSeq);
    // The mirror lags a few records behind: the tail sits inside the ring, not at the head.
    await mirror.readTo(Math.max(mirror.pos.nextSeq - 1, j.durableSeq - 8));
    primary.advance();
    mirror.advance();
    // A payload read of a record this checkpoint frees, held in flight: the tail waits for it (J2).
    const freed = mirror.seen.filter((r) => r.type === RecordType.WRITE).at(-1);
    const buf = freed ? Buffer.alloc(freed.length) : null;
    const usedBefore = j.stats().usedBytes;
    const release = stores[0]!.holdReads();
    const reading = freed ? j.readPayload(freed.pos + RECORD_HEADER_BYTES, buf!, 0, freed.length) : Promise.resolve();
    const synced = stores[0]!.nextSync();
    const checkpoint = j.checkpoint();
    // Once the checkpoint is durable, let it run as far as it can (everything it does next is in this turn of the loop).
    await synced;
    await new Promise((r) => setImmediate(r));
    assert.equal(j.stats().usedBytes, usedBefore, 'no space is freed while a read begun before is in flight (J2)');
    release();
    await Promise.all([reading, checkpoint]);
    assert.ok(j.stats().usedBytes <= usedBefore);
    if (freed) assert.ok(buf!.equals(freed.payload!.subarray(0, freed.length)), 'the read got the record, not what came after it');
  }
  assert.ok(laps >= 3 && rounds > 50, `${laps} laps in ${rounds} rounds`);
  const stats = j.stats();
  assert.equal(stats.consumers.find((c) => c.name === MIRROR)!.nextSeq, mirror.pos.nextSeq);
  await j.close();
});

test('a full ring: the writer waits, and batches land right behind the lagging consumer', async () => {
  const { j } = await fresh();
  await j.addConsumer(MIRROR);
  const w = new Writer(j, seededRng(5), 2 * MiB);
  const primary = new Consumer(j, PRIMARY_CONSUMER, w.expected);
  const mirror = new Consumer(j, MIRROR, w.expected);
  let spaceNeeded = 0;
  j.on('space-needed', () => spaceNeeded++);
  // Far more than the ring holds, all queued at once.
  const count = 200;
  let done = 0;
  const all = Promise.all(Array.from({ length: count }, () => w.append().then(() => done++)));
  while (done < count) {
    const written = j.writtenSeq;
    await j.sync();
    await primary.readTo(j.durableSeq);
    await mirror.readTo(Math.max(mirror.pos.nextSeq - 1, j.durableSeq - 3));
    primary.advance();
    mirror.advance();
    await j.checkpoint();
    // The checkpoint freed what the mirror passed: the writer goes on (or is done).
    await Promise.race([j.whenWrittenBeyond(written), all]);
  }
  await all;
  assert.ok(spaceNeeded > 0, 'the writer found the ring full');
  await j.close();
});

test('recovery after reopen on two copies: the chain is read back from the media, and goes on', async () => {
  const { stores, j } = await fresh(2);
  await j.addConsumer(MIRROR);
  const w = new Writer(j, seededRng(7), 256 * KiB);
  const primary = new Consumer(j, PRIMARY_CONSUMER, w.expected);
  const mirror = new Consumer(j, MIRROR, w.expected);
  for (let i = 0; i < 300; i++) await w.append();
  await j.sync();
  // The primary consumer checkpoints far ahead, the mirror a little: recovery scans from the mirror.
  await primary.readTo(250);
  await mirror.readTo(40);
  primary.advance();
  mirror.advance();
  await j.checkpoint();
  for (let i = 0; i < 20; i++) await w.append();
  await j.sync();

  const stores2 = stores.map((s) => new FaultyStore(s.path, s.processCrash()));
  const j2 = await Journal.open(stores2, log);
  assert.equal(j2.recovery.end.kind, 'clean');
  assert.equal(j2.recovery.records, 320 - 40);
  assert.equal(j2.headPosition().nextSeq, 321);
  // Nothing is cached after an open: both consumers read from the copies (copy-set.ts).
  const primary2 = new Consumer(j2, PRIMARY_CONSUMER, w.expected);
  const mirror2 = new Consumer(j2, MIRROR, w.expected);
  assert.equal(primary2.pos.nextSeq, 251);
  await primary2.readTo(320);
  await mirror2.readTo(320);
  // The chain goes on from the recovered head; new records are read from the cache.
  const w2 = new Writer(j2, seededRng(8), 256 * KiB);
  for (let i = 0; i < 30; i++) await w2.append();
  await j2.sync();
  for (const [seq, e] of w2.expected) w.expected.set(seq, e);
  await primary2.readTo(350);
  await mirror2.readTo(350);
  primary2.advance();
  mirror2.advance();
  await j2.checkpoint();
  const j3 = await Journal.open(stores2.map((s) => new FaultyStore(s.path, s.processCrash())), log);
  assert.equal(j3.recovery.records, 0);
  assert.equal(j3.headPosition().nextSeq, 351);
  await Promise.all([j.close(), j2.close(), j3.close()]);
});

test('a rebase (a mirror site skipping ahead) restarts the chain; its checkpoint and the tail stay in order', async () => {
  const { stores, j } = await fresh();
  const w = new Writer(j, seededRng(9), 128 * KiB);
  for (let i = 0; i < 50; i++) await w.append();
  await j.sync();
  const c = new Consumer(j, PRIMARY_CONSUMER, w.expected);
  await c.readTo(j.durableSeq);
  c.advance();
  // A checkpoint queued with the rebase: it completes before the numbering restarts, never after.
  await Promise.all([j.checkpoint(), j.rebase(1000)]);
  assert.equal(j.stats().usedBytes, 0, 'nothing is live after a rebase');
  assert.deepEqual(j.consumer(PRIMARY_CONSUMER), { ...j.headPosition(), name: PRIMARY_CONSUMER });
  const w2 = new Writer(j, seededRng(10), 128 * KiB);
  for (let i = 0; i < 20; i++) await w2.append();
  assert.deepEqual([...w2.expected.keys()].sort((a, b) => a - b)[0], 1000);
  await j.sync();
  const c2 = new Consumer(j, PRIMARY_CONSUMER, w2.expected);
  await c2.readTo(1010);
  c2.advance();
  await j.checkpoint();
  const j2 = await Journal.open([new FaultyStore('stg0', stores[0]!.processCrash())], log);
  assert.equal(j2.recovery.records, 9, 'records 1011..1019');
  assert.equal(j2.headPosition().nextSeq, 1020);
  await Promise.all([j.close(), j2.close()]);
});

test('violations reachable through the API fire their assert', async () => {
  const { j } = await fresh();
  const w = new Writer(j, seededRng(3), 64 * KiB);
  const a = await j.append({ type: RecordType.WRITE, flags: 0, diskOffset: 0, length: 4096, payload: payload(1, 4096), durable: true });
  const b = await j.append({ type: RecordType.WRITE, flags: 0, diskOffset: 4096, length: 4096, payload: payload(2, 4096), durable: true });
  assert.equal(b.seq, a.seq + 1);
  // J1: the chain link or the place a consumer expects is not the record's.
  await assert.rejects(j.readRecord(b.seq, b.pos, a.crc ^ 1), (e: Error) => e.name === 'AssertionError' && /J1/.test(e.message));
  await assert.rejects(j.readRecord(b.seq, b.pos + 64, a.crc), (e: Error) => e.name === 'AssertionError' && /J1/.test(e.message));
  const ok = await j.readRecord(b.seq, b.pos, a.crc);
  assert.equal(ok.crc, b.crc);
  // J4: a consumer never moves back...
  const after = { name: PRIMARY_CONSUMER, nextSeq: b.seq + 1, nextPos: b.pos + b.span, prevCrc: b.crc };
  j.advanceConsumer(PRIMARY_CONSUMER, after);
  await j.checkpoint();
  assert.throws(() => j.advanceConsumer(PRIMARY_CONSUMER, { name: PRIMARY_CONSUMER, nextSeq: a.seq + 1, nextPos: a.pos + a.span, prevCrc: a.crc }), (e: Error) => e.name === 'AssertionError' && /J4/.test(e.message));
  // ... nor past a record that is written but not durable (it cannot have been read, J5).
  const c = await j.append({ type: RecordType.WRITE, flags: 0, diskOffset: 0, length: 4096, payload: payload(3, 4096), durable: false });
  assert.ok(j.durableSeq < c.seq && j.writtenSeq >= c.seq);
  assert.throws(() => j.advanceConsumer(PRIMARY_CONSUMER, { name: PRIMARY_CONSUMER, nextSeq: c.seq + 1, nextPos: c.pos + c.span, prevCrc: c.crc }), (e: Error) => e.name === 'AssertionError' && /J4/.test(e.message));
  // J5 (already asserted before): a record not yet durable is not handed out.
  await assert.rejects(j.readRecord(c.seq, c.pos, b.crc), (e: Error) => e.name === 'AssertionError' && /J5/.test(e.message));
  // Nothing was harmed: the journal goes on.
  await w.append();
  await j.sync();
  const cons = new Consumer(j, PRIMARY_CONSUMER, null);
  await cons.readTo(j.durableSeq);
  cons.advance();
  await j.checkpoint();
  await j.close();
});

// ---- The mirror site: R3, R5, R6, R7 in the receiver ----

const DISK = 8 * MiB;

/** Frames the receiver sends, read as they come; waits for one that matches. */
class FrameLog {
  readonly frames: Frame[] = [];
  private waiters: Array<{ match: (f: Frame) => boolean; resolve: (f: Frame) => void; reject: (e: Error) => void }> = [];
  private ended = false;

  constructor(reader: FrameReader) {
    void (async () => {
      for (;;) {
        const f = await reader.next().catch(() => null);
        if (f === null) break;
        this.frames.push(f);
        this.waiters = this.waiters.filter((w) => {
          if (!w.match(f)) return true;
          w.resolve(f);
          return false;
        });
      }
      this.ended = true;
      for (const w of this.waiters.splice(0)) w.reject(new Error('the session ended before the frame came'));
    })();
  }

  next(match: (f: Frame) => boolean): Promise<Frame> {
    const found = this.frames.find(match);
    if (found) return Promise.resolve(found);
    if (this.ended) return Promise.reject(new Error('the session ended before the frame came'));
    return new Promise((resolve, reject) => this.waiters.push({ match, resolve, reject }));
  }
}

test('the mirror site: acknowledged only when durable, staged and applied in order, consistent only when told', async () => {
  const staging = new FaultyStore('replica-staging', AREA);
  await Journal.format([staging], 'r', PRIMARY_CONSUMER, 1);
  const disk = new FaultyStore('replica', DISK);
  const staged = await StagedPath.open([staging], disk, log);
  const j = staged.journal;
  await staged.start();
  const volume = { size: DISK, primaryStore: disk } as unknown as Volume;
  const handle: ReplicaHandle = {
    disk: 'r',
    volume,
    staged,
    link: { connected: false, peer: 'a', lastHeardMs: 0, originHeadSeq: 0, durableSeq: j.durableSeq, receivedBytes: 0, originLag: null, originRpoMs: null },
    dropSession: null,
    released: false,
    test: null,
  };
  const told: boolean[] = [];
  const host: ReplicaHost = {
    attach: async () => ({ handle, created: false }),
    markSynced: async (_disk, synced) => void told.push(synced),
    beginResync: async () => undefined,
    release: async () => undefined,
    generations: () => [],
    switchover: async () => ({}),
  };
  const toB = new PassThrough();
  const fromB = new PassThrough();
  const socket = Duplex.from({ readable: toB, writable: fromB }) as unknown as tls.TLSSocket;
  const receiver = new Receiver({ peer: { name: 'a' } as PeerRow, socket, reader: new FrameReader(socket), hello: {} }, host, log);
  const served = receiver.run();
  const out = new FrameLog(new FrameReader(fromB));
  const response = (id: number): Promise<Frame> => out.next((f) => f.type === FrameType.RESPONSE && f.meta.id === id);
  const ackOf = (seq: number): Promise<Frame> => out.next((f) => f.type === FrameType.ACK && (f.meta.durableSeq as number) >= seq);

  toB.write(encodeFrame(FrameType.REQUEST, { id: 1, op: 'attach', disk: 'r', originDisk: 'd', size: DISK, firstSeq: 1, synced: false }));
  assert.equal((await response(1)).meta.durableSeq, 0);
  assert.deepEqual(told, [false]);

  // Records 1..30 in three frames; the third repeats 15..20 (sent again after a dropped link) before 21..30.
  const rng = seededRng(21);
  const sent: Array<{ seq: number; offset: number; data: Buffer }> = [];
  for (let seq = 1; seq <= 30; seq++) sent.push({ seq, offset: Math.floor(rng() * 64) * 4096, data: payload(1000 + seq, 4096 * (1 + Math.floor(rng() * 4))) });
  const framesOf = (from: number, to: number): Buffer => {
    const list = sent.filter((r) => r.seq >= from && r.seq <= to);
    return encodeFrame(
      FrameType.RECORDS,
      { disk: 'r', firstSeq: from, headSeq: 30, records: list.map((r) => [RecordType.WRITE, 0, r.offset, r.data.length, 1_000 + r.seq]) },
      Buffer.concat(list.map((r) => r.data)),
    );
  };
  toB.write(framesOf(1, 10));
  toB.write(framesOf(11, 20));
  toB.write(framesOf(15, 30));
  const ack = await ackOf(30);
  assert.equal(ack.meta.durableSeq, 30);
  assert.ok(j.durableSeq >= 30, 'acknowledged records are durable here (R3)');
  for (const f of out.frames) if (f.type === FrameType.ACK) assert.ok((f.meta.durableSeq as number) <= 30);

  // A sync chunk: every record before it is applied first (R6), in order (R5), then the chunk lands.
  const chunk = payload(0xc0ffee, 64 * KiB);
  const chunkAt = 6 * MiB;
  toB.write(encodeFrame(FrameType.REQUEST, { id: 2, op: 'write', disk: 'r', offset: chunkAt, length: chunk.length }, chunk));
  assert.equal((await response(2)).meta.error, undefined);
  assert.ok(staged.committer.position.nextSeq > 30, 'the records were applied before the chunk');
  const image = Buffer.alloc(DISK);
  for (const r of sent) r.data.copy(image, r.offset);
  chunk.copy(image, chunkAt);
  assert.ok(disk.current.equals(image), 'the disk holds the records applied in order, then the chunk');

  // The primary site says the sync completed: only now is the replica consistent (R7).
  toB.write(encodeFrame(FrameType.REQUEST, { id: 3, op: 'synced', disk: 'r', synced: true }));
  await response(3);
  assert.deepEqual(told, [false, true]);

  toB.end();
  await served;
  await staged.close();
});
