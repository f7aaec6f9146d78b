// The journal layer: a disk's staging area. Writes are appended here as checksummed,
// sequence-numbered records (many concurrent requests share one sequential write and
// one flush: group commit); consumers (the committer that applies records to the
// primary disk, later mirrors) read them in order and each keeps its own durable
// position; space is reclaimed only behind every consumer's durable position.
//
// Invariants (asserted where data is written and read back):
//  J1 Sequence numbers are dense and strictly increasing; record n+1 carries the crc
//     of record n (hash chain), so recovery accepts exactly one successor per record.
//  J2 A record is written only into free ring space: never over a record some
//     consumer still needs according to the last DURABLE checkpoint, never over bytes
//     an in-flight read may still be reading.
//  J3 A write is acknowledged only after its record is written to every healthy copy;
//     a FUA write or FLUSH is acknowledged only after those copies are synced.
//  J4 A consumer position is checkpointed only after the consumer made the records
//     before it durable on its side (the committer syncs the primary first), and the
//     tail moves only after that checkpoint is durable on every healthy copy.
//  J5 A record is handed to a consumer only once it is durable in the staging area
//     (durableSeq), so a power loss can never leave the primary ahead of the journal.
//  J6 Records never straddle the end of the ring; a record that does not fit before the
//     end goes to ring offset 0.
//
// Memory is bounded whatever the staging size: the write queue by the NBD layer's
// in-flight limits, the batch by batchBytesMax, the cache of recent records by
// recentBytesMax; records themselves live in the staging area, not in memory.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import type { Store } from '../disk/store.js';
import {
  CHECKPOINT_OFFSETS,
  HEADER_AREA_BYTES,
  RECORD_HEADER_BYTES,
  encodeCheckpoint,
  encodeRecord,
  encodeSuperblock,
  recordSpan,
  type ConsumerPosition,
} from './format.js';
import { CopySet } from './copy-set.js';
import { CopyRebuilder } from './copy-rebuilder.js';
import { Durability } from './durability.js';
import type { AppendRequest, StagedRecord } from './staged-record.js';
import { ConsumerPositions } from './consumer-positions.js';
import { ReadTracker } from './read-tracker.js';
import { RecentCache } from './recent-cache.js';
import { recoverJournal, type RecoveryResult } from './recovery.js';

export type { AppendRequest, StagedRecord } from './staged-record.js';

/** Smallest staging area: the largest NBD write (32 MiB) must always fit with room to spare. */
export const STAGING_BYTES_MIN = 64 * 1024 * 1024;
const batchBytesMax = 8 * 1024 * 1024;
const recentBytesMax = 64 * 1024 * 1024;

interface Pending {
  req: AppendRequest;
  resolve: (r: StagedRecord) => void;
  reject: (e: Error) => void;
}

export interface JournalStats {
  areaBytes: number;
  ringBytes: number;
  usedBytes: number;
  nextSeq: number;
  writtenSeq: number;
  durableSeq: number;
  consumers: Array<{ name: string; nextSeq: number; pendingRecords: number }>;
  copies: Array<{ path: string; healthy: boolean; rebuilding: boolean; problem?: string }>;
}

export class Journal extends EventEmitter {
  readonly journalId: bigint;
  readonly areaBytes: number;
  readonly ringBytes: number;
  readonly recovery: RecoveryResult;
  private readonly copySet: CopySet;
  private readonly log: Logger;
  private headPos: number;
  private nextSeq: number;
  private lastCrc: number;
  /** The written and durable marks, the syncs that move them, and their waiters. */
  private readonly marks: Durability;
  private readonly consumers: ConsumerPositions;
  private tail: { seq: number; pos: number };
  private generation: number;
  private queue: Pending[] = [];
  private batchInWrite: Pending[] | null = null;
  private writing = false;
  private failure: FerryError | null = null;
  private spaceWaiters: Array<() => void> = [];
  private checkpointChain: Promise<void> = Promise.resolve();
  private batchLock: Promise<void> = Promise.resolve();
  private readonly recent = new RecentCache(recentBytesMax);
  private readonly reads = new ReadTracker();
  /** Rebuilds of failed copies: while any copies the ring, checkpoints do not move the tail (J2). */
  private readonly rebuilder: CopyRebuilder;
  /** Called synchronously for each written batch, before any append resolves (the overlay index). */
  onWritten: ((records: StagedRecord[]) => void) | null = null;
  /**
   * Asked when a record finds no free space: null to wait for space (backpressure), or the
   * error every waiting append fails with (a mirror's `--on-full fail`). Nothing is written.
   */
  fullPolicy: (() => FerryError | null) | null = null;

  private constructor(stores: Store[], r: RecoveryResult, log: Logger) {
    super();
    this.log = log;
    this.recovery = r;
    this.journalId = r.superblock.journalId;
    this.areaBytes = r.superblock.areaBytes;
    this.ringBytes = this.areaBytes - HEADER_AREA_BYTES;
    this.copySet = new CopySet(stores, r.copies, this.ringBytes, log, {
      degraded: (path, problem) => this.emit('degraded', { path, problem }),
      lost: (err) => {
        this.failure ??= err;
        this.log.fatal({ err: err.message }, 'staging area lost: writes to this disk now fail');
        this.emit('failed', err);
        for (const w of this.spaceWaiters.splice(0)) w();
      },
    });
    this.headPos = r.headPos;
    this.nextSeq = r.nextSeq;
    this.lastCrc = r.lastCrc;
    this.marks = new Durability(r.nextSeq - 1, () => this.copySet.syncAll(), () => this.failure);
    this.generation = r.checkpoint.generation;
    this.consumers = new ConsumerPositions(r.checkpoint.consumers);
    const min = this.consumers.min();
    this.tail = { seq: min.nextSeq, pos: min.nextPos };
    this.rebuilder = new CopyRebuilder(this.copySet, this.areaBytes, this.ringBytes, log, {
      failure: () => this.failure,
      inCheckpointChain: (fn) => this.inCheckpointChain(fn),
      underBatchLock: (fn) => this.underBatchLock(fn),
      liveRing: () => ({ from: this.tail.pos, to: this.headPos, empty: this.tail.seq === this.nextSeq }),
      checkpoint: () => this.checkpoint(),
      repaired: (path) => this.emit('repaired', { path }),
    });
  }

  /** Formats new staging copies (all the same size): superblock and a first checkpoint with one consumer. */
  static async format(stores: Store[], diskName: string, consumer: string, firstSeq = 1): Promise<void> {
    assert.ok(Number.isSafeInteger(firstSeq) && firstSeq >= 1, 'the first sequence number is a positive integer');
    const areaBytes = Math.min(...stores.map((s) => s.size));
    if (areaBytes < STAGING_BYTES_MIN) throw new FerryError('STAGING_TOO_SMALL', `a staging area needs at least ${STAGING_BYTES_MIN} bytes`);
    const journalId = crypto.randomBytes(8).readBigUInt64LE(0) || 1n;
    const sb = encodeSuperblock({ journalId, areaBytes, createdMs: Date.now(), diskName });
    const cp = encodeCheckpoint({ generation: 1, journalId, consumers: [{ name: consumer, nextSeq: firstSeq, nextPos: 0, prevCrc: 0 }] });
    const empty = Buffer.alloc(RECORD_HEADER_BYTES);
    for (const s of stores) {
      await s.write(sb, 0, sb.length, 0);
      await s.write(cp, 0, cp.length, CHECKPOINT_OFFSETS[1]);
      await s.write(empty, 0, empty.length, CHECKPOINT_OFFSETS[0]);
      await s.write(empty, 0, empty.length, HEADER_AREA_BYTES);
      await s.sync();
    }
  }

  /** Opens a formatted staging area, recovering the log (see recovery.ts for the decisions). */
  static async open(stores: Store[], log: Logger): Promise<Journal> {
    const r = await recoverJournal(stores, log);
    return new Journal(stores, r, log);
  }

  get writtenSeq(): number {
    return this.marks.writtenSeq;
  }

  get durableSeq(): number {
    return this.marks.durableSeq;
  }

  get failed(): FerryError | null {
    return this.failure;
  }

  consumer(name: string): ConsumerPosition {
    return this.consumers.get(name);
  }

  /**
   * Adds a consumer that starts at the head: it will see every record written from now on.
   * Durable at the next checkpoint (which this awaits).
   */
  async addConsumer(name: string): Promise<ConsumerPosition> {
    this.consumers.checkAdd(name);
    const pos = await this.underBatchLock(() => {
      const p: ConsumerPosition = { name, nextSeq: this.nextSeq, nextPos: this.headPos, prevCrc: this.lastCrc };
      this.consumers.set(p);
      return p;
    });
    await this.checkpoint();
    return { ...pos };
  }

  /** Removes a consumer; the space only it needed is freed at the checkpoint this awaits. */
  async removeConsumer(name: string): Promise<void> {
    if (!this.consumers.remove(name)) return;
    await this.checkpoint();
  }

  /** Disk ranges of appends not yet indexed (queued, or in the batch being written): a mirror's fallback marks them. */
  unindexedRanges(): Array<{ offset: number; length: number }> {
    return [...(this.batchInWrite ?? []), ...this.queue].map((p) => ({ offset: p.req.diskOffset, length: p.req.length }));
  }

  /**
   * A mirror site's staging area after its primary site skipped records (a resync from a
   * dirty bitmap): numbering restarts at `firstSeq` at the head. Only when every record is
   * done for every consumer and nothing is being appended; durable when this resolves.
   */
  async rebase(firstSeq: number): Promise<void> {
    assert.ok(Number.isSafeInteger(firstSeq) && firstSeq >= this.nextSeq, 'a rebase only moves the numbering forward');
    await this.underBatchLock(async () => {
      assert.ok(!this.writing && this.queue.length === 0, 'no append runs during a rebase');
      for (const c of this.consumers.snapshot()) assert.equal(c.nextSeq, this.nextSeq, 'every consumer is done before a rebase');
      await this.sync();
      // Records before firstSeq never come: the chain starts over at the head (J1 holds from here).
      this.nextSeq = firstSeq;
      this.lastCrc = 0;
      this.marks.restart(firstSeq - 1);
      this.consumers.restartAll(firstSeq, this.headPos);
      this.tail = { seq: firstSeq, pos: this.headPos };
      this.recent.clear();
    });
    await this.checkpoint();
  }

  /** Runs `fn` while no batch is being written and none can start (positions and the head hold still). */
  private async underBatchLock<T>(fn: () => T | Promise<T>): Promise<T> {
    let release!: () => void;
    const previous = this.batchLock;
    this.batchLock = new Promise((r) => (release = r));
    await previous;
    try {
      return await fn();
    } finally {
      release();
    }
  }

  hasConsumer(name: string): boolean {
    return this.consumers.has(name);
  }

  /** Records that `name` is done with every record before pos.nextSeq (durable on its side). Takes effect at the next checkpoint. */
  advanceConsumer(name: string, pos: ConsumerPosition): void {
    this.consumers.advance(name, pos, this.nextSeq);
    this.recent.trim(this.consumers.min().nextSeq);
  }

  /** Appends one record; resolves when it is written (and durable, for FUA) on every healthy copy. */
  append(req: AppendRequest): Promise<StagedRecord> {
    if (this.failure) return Promise.reject(this.failure);
    // The minimum staging size guarantees this for every NBD request; once the ring drains, it fits.
    assert.ok(recordSpan(req.payload?.length ?? 0) <= this.ringBytes, 'a record fits in the ring');
    return new Promise((resolve, reject) => {
      this.queue.push({ req, resolve, reject });
      if (!this.writing) void this.writeLoop();
    });
  }

  /** Where a record of `span` bytes can go with the head at `head`, or -1 when there is no free space (J2, J6). */
  private place(head: number, span: number, empty: boolean): number {
    const t = this.tail.pos;
    if (empty) return head + span <= this.ringBytes ? head : 0;
    if (head === t) return -1;
    if (head > t) {
      if (head + span <= this.ringBytes) return head;
      return span <= t ? 0 : -1;
    }
    return head + span <= t ? head : -1;
  }

  private async writeLoop(): Promise<void> {
    this.writing = true;
    try {
      while (this.queue.length > 0) {
        if (this.failure) {
          for (const p of this.queue.splice(0)) p.reject(this.failure);
          break;
        }
        let head = this.headPos;
        let start = -1;
        let bytes = 0;
        let count = 0;
        for (const p of this.queue) {
          const span = recordSpan(p.req.payload?.length ?? 0);
          if (count > 0 && bytes + span > batchBytesMax) break;
          const at = this.place(head, span, count === 0 && this.tail.seq === this.nextSeq);
          if (at < 0 || (count > 0 && at !== head)) break;
          if (count === 0) start = at;
          head = at + span;
          bytes += span;
          count++;
        }
        if (count === 0) {
          const refusal = this.fullPolicy?.() ?? null;
          if (refusal) {
            for (const p of this.queue.splice(0)) p.reject(refusal);
            break;
          }
          this.emit('space-needed');
          await new Promise<void>((resolve) => this.spaceWaiters.push(resolve));
          continue;
        }
        const batch = this.queue.splice(0, count);
        this.batchInWrite = batch;
        try {
          await this.writeBatch(batch, start, bytes);
        } finally {
          this.batchInWrite = null;
        }
      }
    } finally {
      this.writing = false;
    }
  }

  private writeBatch(batch: Pending[], start: number, bytes: number): Promise<void> {
    return this.underBatchLock(async () => {
      try {
        const buf = Buffer.allocUnsafe(bytes);
        const records: StagedRecord[] = [];
        const now = Date.now();
        let at = 0;
        for (const p of batch) {
          const { req } = p;
          const seq = this.nextSeq++;
          assert.ok(req.expectSeq === undefined || req.expectSeq === seq, 'a mirrored record keeps its sequence number');
          const timeMs = req.timeMs ?? now;
          const crc = encodeRecord(buf, at, { type: req.type, flags: req.flags, seq, journalId: this.journalId, diskOffset: req.diskOffset, length: req.length, timeMs, prevCrc: this.lastCrc }, req.payload);
          const span = recordSpan(req.payload?.length ?? 0);
          this.lastCrc = crc;
          const payload = req.payload ? buf.subarray(at + RECORD_HEADER_BYTES, at + RECORD_HEADER_BYTES + req.payload.length) : null;
          records.push({ seq, pos: start + at, span, type: req.type, flags: req.flags, diskOffset: req.diskOffset, length: req.length, crc, timeMs, payload });
          at += span;
        }
        assert.equal(at, bytes);
        assert.ok(start >= 0 && start + bytes <= this.ringBytes, 'a batch never straddles the end of the ring (J6)');
        this.headPos = start + bytes;
        await this.copySet.writeAll(buf, HEADER_AREA_BYTES + start);
        if (this.failure) throw this.failure;
        const minSeq = this.consumers.min().nextSeq;
        for (const r of records) this.recent.remember(r, minSeq);
        this.marks.written(records[records.length - 1]!.seq);
        this.onWritten?.(records);
        // Plain writes are acknowledged now (J3); FUA writes once a sync started after this write ends.
        // The sync is not awaited here, so the next batch is written while it runs.
        const durable: number[] = [];
        batch.forEach((p, i) => (p.req.durable ? durable.push(i) : p.resolve(records[i]!)));
        if (durable.length) {
          this.sync().then(
            () => durable.forEach((i) => batch[i]!.resolve(records[i]!)),
            (err) => durable.forEach((i) => batch[i]!.reject(err)),
          );
        }
      } catch (err) {
        const e = err instanceof FerryError ? err : new FerryError('STAGING_FAILED', `staging write failed: ${(err as Error).message}`);
        for (const p of batch) p.reject(e);
      }
    });
  }


  /**
   * Makes every written record durable on every healthy copy (NBD FLUSH), sharing a sync
   * that is running or about to (see durability.ts).
   */
  sync(): Promise<void> {
    return this.marks.sync();
  }

  /** Resolves once a record beyond `seq` has been written. */
  whenWrittenBeyond(seq: number): Promise<void> {
    return this.marks.whenWrittenBeyond(seq);
  }

  /** Resolves once a record beyond `seq` is durable (made so by a client flush or anyone's sync). */
  whenDurableBeyond(seq: number): Promise<void> {
    return this.marks.whenDurableBeyond(seq);
  }

  /** When record `seq` was written, if it is still in the recent cache. */
  recordTime(seq: number): number | null {
    return this.recent.get(seq)?.timeMs ?? null;
  }


  /**
   * The record `seq` expected at `pos` (or at ring start, if it wrapped), verified. From the
   * recent cache when possible; otherwise read from a healthy copy, falling back to the other
   * copy on a checksum mismatch (the bad copy is marked failed). Only durable records (J5).
   */
  async readRecord(seq: number, pos: number, prevCrc: number, reader?: string): Promise<StagedRecord> {
    assert.ok(seq <= this.marks.durableSeq, 'consumers only read durable records (J5)');
    const cached = this.recent.get(seq);
    if (cached) return cached;
    const found = await this.copySet.readRecord(pos, { journalId: this.journalId, seq, prevCrc, ringBytes: this.ringBytes }, reader, this.marks.writtenSeq);
    if (!found) throw new FerryError('STAGING_CORRUPT', `record ${seq} at ring offset ${pos} does not verify on any copy of the staging area`);
    const h = found.header;
    return { seq, pos: found.pos, span: found.span, type: h.type, flags: h.flags, diskOffset: h.diskOffset, length: h.length, crc: h.crc, timeMs: h.timeMs, payload: found.payload };
  }

  /** Reads staged payload bytes at ring position `pos` (for the read overlay). */
  async readPayload(pos: number, buf: Buffer, bufOffset: number, length: number): Promise<void> {
    assert.ok(pos >= 0 && pos + length <= this.ringBytes, 'staged payload lies inside the ring');
    const gen = this.reads.begin();
    try {
      await this.copySet.readPayload(pos, buf, bufOffset, length);
    } finally {
      this.reads.end(gen);
    }
  }

  /** Makes the consumer positions durable on every copy, then frees the space behind them (J4). */
  checkpoint(): Promise<void> {
    const run = async (): Promise<void> => {
      if (this.failure) throw this.failure;
      this.copySet.checkPaths();
      const consumers = this.consumers.snapshot();
      const generation = this.generation + 1;
      const buf = encodeCheckpoint({ generation, journalId: this.journalId, consumers });
      await this.copySet.writeAll(buf, CHECKPOINT_OFFSETS[generation % 2]!);
      await this.marks.syncNow();
      if (this.failure) throw this.failure;
      this.generation = generation;
      const min = consumers.reduce((a, b) => (b.nextSeq < a.nextSeq ? b : a));
      if (min.nextSeq !== this.tail.seq && !this.rebuilder.busy) {
        await this.reads.drain();
        this.tail = { seq: min.nextSeq, pos: min.nextPos };
        for (const w of this.spaceWaiters.splice(0)) w();
      }
    };
    return this.inCheckpointChain(run);
  }

  /** Runs `fn` once every checkpoint (or rebuild join) queued before it is done; the next waits for it. */
  private inCheckpointChain(fn: () => Promise<void>): Promise<void> {
    const p = this.checkpointChain.then(fn, fn);
    this.checkpointChain = p.catch(() => undefined);
    return p;
  }

  /** Rebuilds a failed copy onto `store` while writes go on (see copy-rebuilder.ts). */
  rebuildCopy(index: number, store: Store): Promise<void> {
    return this.rebuilder.rebuild(index, store);
  }

  stats(): JournalStats {
    const empty = this.tail.seq === this.nextSeq;
    const used = empty ? 0 : this.headPos > this.tail.pos ? this.headPos - this.tail.pos : this.ringBytes - this.tail.pos + this.headPos;
    return {
      areaBytes: this.areaBytes,
      ringBytes: this.ringBytes,
      usedBytes: used,
      nextSeq: this.nextSeq,
      writtenSeq: this.marks.writtenSeq,
      durableSeq: this.marks.durableSeq,
      consumers: this.consumers.stats(this.nextSeq),
      copies: this.copySet.stats(),
    };
  }

  copyIndexOf(path: string): number {
    return this.copySet.indexOf(path);
  }

  get hasWaitersForSpace(): boolean {
    return this.spaceWaiters.length > 0;
  }

  /**
   * How far a consumer at `pos` is behind the head: records, their bytes in the ring, and the
   * age of the oldest (its time from the recent cache, else `fallbackTimeMs` when known).
   */
  lagBehind(pos: ConsumerPosition, fallbackTimeMs: number): { records: number; bytes: number; seconds: number } {
    const records = this.nextSeq - pos.nextSeq;
    if (records <= 0) return { records: 0, bytes: 0, seconds: 0 };
    const bytes = (this.headPos - pos.nextPos + this.ringBytes) % this.ringBytes || this.ringBytes;
    const oldest = this.recordTime(pos.nextSeq) ?? (fallbackTimeMs || null);
    return { records, bytes, seconds: oldest === null ? 0 : Math.max(0, (Date.now() - oldest) / 1000) };
  }

  /** The head: where the next record goes and the chain link it will carry. */
  headPosition(): ConsumerPosition {
    return { name: '', nextSeq: this.nextSeq, nextPos: this.headPos, prevCrc: this.lastCrc };
  }

  async close(): Promise<void> {
    while (this.writing) await new Promise((r) => setTimeout(r, 5));
    await this.checkpointChain;
    if (!this.failure) await this.sync().catch(() => undefined);
    await this.copySet.closeAll();
  }
}

