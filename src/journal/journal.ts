// The journal layer: a disk's staging area. Writes are appended here as checksummed,
// sequence-numbered records (many concurrent requests share one sequential write and
// one flush: group commit); consumers (the committer that applies records to the
// primary disk, later mirrors) read them in order and each keeps its own durable
// position; space is reclaimed only behind every consumer's durable position.
//
// Invariants (asserted where data is written and read back):
//  J1 Sequence numbers are dense and strictly increasing; record n+1 carries the crc
//     of record n (hash chain), so recovery accepts exactly one successor per record.
//     Asserted in writeBatch (batch-encoder.ts), readRecord (cached) and copy-set.ts
//     readRecord, and recovery.ts.
//  J2 A record is written only into free ring space: never over a record some
//     consumer still needs according to the last DURABLE checkpoint, never over bytes
//     an in-flight read may still be reading.
//     Asserted in writeBatch (outside [tail, head)) and checkpointer.ts guardRead (no tail
//     move under a read).
//  J3 A write is acknowledged only after its record is written to every healthy copy;
//     a FUA write or FLUSH is acknowledged only after those copies are synced.
//     Asserted in writeBatch where appends resolve, and in durability.ts sync().
//  J4 A consumer position is checkpointed only after the consumer made the records
//     before it durable on its side (the committer syncs the primary first), and the
//     tail moves only after that checkpoint is durable on every healthy copy.
//     Asserted in advanceConsumer (consumer-positions.ts), and in checkpointer.ts
//     (checkpointNow, moveTail), which writes the checkpoints and moves the tail.
//  J5 A record is handed to a consumer only once it is durable in the staging area
//     (durableSeq), so a power loss can never leave the primary ahead of the journal.
//     Asserted in readRecord.
//  J6 Records never straddle the end of the ring; a record that does not fit before the
//     end goes to ring offset 0.
//     Asserted in writeBatch.
//
// Memory is bounded whatever the staging size: the write queue by the NBD layer's
// in-flight limits, the batch by batchBytesMax, the cache of recent records by
// recentBytesMax, a group's ledger of members by LEDGER_RUNS_MAX; records themselves
// live in the staging area, not in memory.
import { setTimeout as sleep } from 'node:timers/promises';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import type { Store } from '../disk/store.js';
import { HEADER_AREA_BYTES, recordSpan, type ConsumerPosition } from './format.js';
import { Checkpointer, type RingTail } from './checkpointer.js';
import { CopySet } from './copy-set.js';
import { CopyRebuilder } from './copy-rebuilder.js';
import { Durability } from './durability.js';
import type { AppendRequest, JournalListener, JournalStats, StagedRecord } from './staged-record.js';
import { outsideLiveRing, placeRecord } from './ring-space.js';
import { STAGING_BYTES_MIN, formatStagingArea } from './staging-format.js';
import { ConsumerPositions } from './consumer-positions.js';
import { encodeBatch } from './batch-encoder.js';
import { RecentCache } from './recent-cache.js';
import { RegionLedger, type RegionLag } from './region-ledger.js';
import { recoverJournal, type RecoveryResult } from './recovery.js';

export type { AppendRequest, JournalListener, JournalStats, StagedRecord } from './staged-record.js';

export { STAGING_BYTES_MIN };
const batchBytesMax = 8 * 1024 * 1024;
/** The cache of recent records consumers read from memory, per disk the staging area serves (a consistency group's: per member, up to 4). */
export const RECENT_BYTES_PER_DISK = 64 * 1024 * 1024;
const recentDisksMax = 4;

interface Pending {
  req: AppendRequest;
  resolve: (r: StagedRecord) => void;
  reject: (e: Error) => void;
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
  /** Checkpoints, in their chain, and the tail they move (J2, J4). */
  private readonly checkpoints: Checkpointer;
  private queue: Pending[] = [];
  private batchInWrite: Pending[] | null = null;
  private writing = false;
  /** The writer is about to start (a microtask is queued). */
  private writerDue = false;
  private readonly startWriter = (): void => {
    this.writerDue = false;
    if (!this.writing) void this.writeLoop();
  };
  private failure: FerryError | null = null;
  private spaceWaiters: Array<() => void> = [];
  /** Set by refuseWaiting(): writes that find no space are refused with it instead of waiting. */
  private refusal: FerryError | null = null;
  private batchLock: Promise<void> = Promise.resolve();
  private readonly recent: RecentCache;
  /** Rebuilds of failed copies: while any copies the ring, checkpoints do not move the tail (J2). */
  private readonly rebuilder: CopyRebuilder;
  private readonly listener: JournalListener;
  /** Which region (a group's member) each live record writes, when several share the journal. */
  private readonly ledger: RegionLedger | null;

  private constructor(stores: Store[], r: RecoveryResult, log: Logger, listener: JournalListener, ledger: RegionLedger | null) {
    super();
    this.ledger = ledger;
    this.recent = new RecentCache(RECENT_BYTES_PER_DISK * Math.min(recentDisksMax, ledger?.regions ?? 1));
    this.log = log;
    this.listener = listener;
    this.recovery = r;
    this.journalId = r.superblock.journalId;
    this.areaBytes = r.superblock.areaBytes;
    this.ringBytes = this.areaBytes - HEADER_AREA_BYTES;
    this.copySet = new CopySet(stores, r.copies, this.ringBytes, log, {
      degraded: (path, problem) => this.emit('degraded', { path, problem }),
      lost: (err) => {
        this.failure ??= err;
        this.log.fatal({ err: err.message }, 'staging area lost: writes to this disk now fail; `ferry staging detach --force` serves it without the staging area');
        this.emit('failed', err);
        for (const w of this.spaceWaiters.splice(0)) w();
      },
    });
    this.headPos = r.headPos;
    this.nextSeq = r.nextSeq;
    this.lastCrc = r.lastCrc;
    this.marks = new Durability(r.nextSeq - 1, () => this.copySet.syncAll(), () => this.failure);
    this.consumers = new ConsumerPositions(r.checkpoint.consumers);
    const min = this.consumers.min();
    this.checkpoints = new Checkpointer(r.checkpoint.generation, { seq: min.nextSeq, pos: min.nextPos }, {
      journalId: this.journalId,
      copySet: this.copySet,
      marks: this.marks,
      consumers: this.consumers,
      failure: () => this.failure,
      rebuilding: () => this.rebuilder.busy,
      freed: () => {
        for (const w of this.spaceWaiters.splice(0)) w();
      },
    });
    this.rebuilder = new CopyRebuilder(this.copySet, this.areaBytes, this.ringBytes, log, {
      failure: () => this.failure,
      inCheckpointChain: (fn) => this.checkpoints.inChain(fn),
      underBatchLock: (fn) => this.underBatchLock(fn),
      liveRing: () => ({ from: this.tail.pos, to: this.headPos, empty: this.tail.seq === this.nextSeq }),
      checkpoint: () => this.checkpoint(),
      repaired: (path) => this.emit('repaired', { path }),
    });
  }

  /** The oldest record some consumer still needs (the start of the live ring), moved by checkpoints. */
  private get tail(): RingTail {
    return this.checkpoints.tail;
  }

  /** Formats new staging copies (see staging-format.ts). */
  static format(stores: Store[], diskName: string, consumer: string, firstSeq = 1): Promise<void> {
    return formatStagingArea(stores, diskName, consumer, firstSeq);
  }

  /**
   * Opens a formatted staging area, recovering the log (see recovery.ts for the decisions).
   * `listener`: what the disk's pipeline does with each written batch and when space runs out.
   * `regions`: the bases of the disks that write through it, when several do (a consistency
   * group's members, null for one disk): the cache of recent records grows with them, as four
   * separate staging areas would each have one, and lagByRegion() tells each one's share.
   */
  static async open(stores: Store[], log: Logger, listener: JournalListener = {}, regions: readonly number[] | null = null): Promise<Journal> {
    const ledger = regions ? new RegionLedger(regions) : null;
    const r = await recoverJournal(stores, log, (record, consumers) => {
      ledger?.add(record.seq, record.diskOffset, record.span);
      listener.recovered?.(record, consumers);
    });
    return new Journal(stores, r, log, listener, ledger);
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
    // In the checkpoint chain and under the batch lock: no checkpoint of the old positions can
    // complete after the restart, and no record is appended before the new positions are durable.
    await this.checkpoints.inChain(() =>
      this.underBatchLock(async () => {
        assert.ok(!this.writing && this.queue.length === 0, 'no append runs during a rebase');
        for (const c of this.consumers.snapshot()) assert.equal(c.nextSeq, this.nextSeq, 'every consumer is done before a rebase');
        await this.sync();
        // Records before firstSeq never come: the chain starts over at the head (J1 holds from here).
        this.nextSeq = firstSeq;
        this.lastCrc = 0;
        this.marks.restart(firstSeq - 1);
        this.consumers.restartAll(firstSeq, this.headPos);
        this.recent.clear();
        this.ledger?.restart(firstSeq);
        // The tail moves to the head once the restarted positions are durable (J4), after the reads in flight (J2).
        await this.checkpoints.checkpointNow();
      }),
    );
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
    // A consumer is done only with records it could read: durable ones (J4, J5).
    this.consumers.advance(name, pos, this.marks.durableSeq + 1);
    this.recent.trim(this.consumers.min().nextSeq);
    this.ledger?.trim(this.consumers.min().nextSeq);
  }

  /** Appends one record; resolves when it is written (and durable, for FUA) on every healthy copy. */
  append(req: AppendRequest): Promise<StagedRecord> {
    if (this.failure) return Promise.reject(this.failure);
    // The minimum staging size guarantees this for every NBD request; once the ring drains, it fits.
    assert.ok(recordSpan(req.payload?.length ?? 0) <= this.ringBytes, 'a record fits in the ring');
    return new Promise((resolve, reject) => {
      this.queue.push({ req, resolve, reject });
      // The writer starts after the current task: the other requests parsed from the same
      // socket read join this batch instead of waiting for the next one.
      if (!this.writing && !this.writerDue) {
        this.writerDue = true;
        queueMicrotask(this.startWriter);
      }
    });
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
          const at = placeRecord(head, span, this.tail.pos, this.ringBytes, count === 0 && this.tail.seq === this.nextSeq);
          if (at < 0 || (count > 0 && at !== head)) break;
          if (count === 0) start = at;
          head = at + span;
          bytes += span;
          count++;
        }
        if (count === 0) {
          const refusal = this.refusal ?? this.listener.whenFull?.() ?? null;
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
        // Where the batch goes is checked before anything moves: a violation fails this batch only.
        assert.ok(start >= 0 && start + bytes <= this.ringBytes, 'a batch never straddles the end of the ring (J6)');
        assert.ok(outsideLiveRing(start, start + bytes, this.tail.pos, this.headPos, this.tail.seq === this.nextSeq), 'a batch is written only into free ring space, never over a record a consumer still needs (J2)');
        assert.equal(this.nextSeq, this.marks.writtenSeq + 1, 'a batch continues the log right after the last written record (J1)');
        // The head (sequence number, chain link, position) moves only once the whole batch is encoded.
        const { buf, records, nextSeq, lastCrc } = encodeBatch(
          batch.map((p) => p.req),
          start,
          bytes,
          this.journalId,
          { seq: this.nextSeq, prevCrc: this.lastCrc },
          (seq) => this.recent.get(seq),
        );
        this.nextSeq = nextSeq;
        this.lastCrc = lastCrc;
        this.headPos = start + bytes;
        await this.copySet.writeAll(buf, HEADER_AREA_BYTES + start);
        if (this.failure) throw this.failure;
        const minSeq = this.consumers.min().nextSeq;
        for (const r of records) this.recent.remember(r, minSeq);
        const lastSeq = records[records.length - 1]!.seq;
        this.marks.written(lastSeq);
        if (this.ledger) for (const r of records) this.ledger.add(r.seq, r.diskOffset, r.span);
        this.listener.written?.(records);
        // Plain writes are acknowledged now (J3); FUA writes once a sync started after this write ends.
        // The sync is not awaited here, so the next batch is written while it runs.
        assert.ok(this.marks.writtenSeq >= lastSeq, 'a write is acknowledged only once written on every healthy copy (J3)');
        const durable: number[] = [];
        batch.forEach((p, i) => (p.req.durable ? durable.push(i) : p.resolve(records[i]!)));
        if (durable.length) {
          const lastDurable = records[durable[durable.length - 1]!]!.seq;
          this.sync()
            .then(() => {
              assert.ok(this.marks.durableSeq >= lastDurable, 'a FUA write is acknowledged only once synced on every healthy copy (J3)');
              durable.forEach((i) => batch[i]!.resolve(records[i]!));
            })
            .catch((err: Error) => durable.forEach((i) => batch[i]!.reject(err)));
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
    if (cached) {
      // The chain link of a cached record is the crc of the one before it, when that one is cached too.
      const before = this.recent.get(seq - 1);
      assert.ok(cached.seq === seq && (cached.pos === pos || cached.pos === 0), 'the record read is the one expected, where its predecessor ends (J1)');
      assert.ok(before === undefined || before.crc === prevCrc, 'the record read carries the crc of the record before it (J1)');
      return cached;
    }
    const found = await this.copySet.readRecord(pos, { journalId: this.journalId, seq, prevCrc, ringBytes: this.ringBytes }, reader, this.marks.writtenSeq);
    if (!found) throw new FerryError('STAGING_CORRUPT', `record ${seq} at ring offset ${pos} does not verify on any copy of the staging area`);
    const h = found.header;
    return { seq, pos: found.pos, span: found.span, type: h.type, flags: h.flags, diskOffset: h.diskOffset, length: h.length, crc: h.crc, timeMs: h.timeMs, payload: found.payload };
  }

  /** Reads staged payload bytes at ring position `pos` (for the read overlay). */
  async readPayload(pos: number, buf: Buffer, bufOffset: number, length: number): Promise<void> {
    assert.ok(pos >= 0 && pos + length <= this.ringBytes, 'staged payload lies inside the ring');
    // No tail move frees these bytes while they are read (J2).
    await this.checkpoints.guardRead(() => this.copySet.readPayload(pos, buf, bufOffset, length));
  }

  /** Makes the consumer positions durable on every copy, then frees the space behind them (J4; see checkpointer.ts). */
  checkpoint(): Promise<void> {
    return this.checkpoints.checkpoint();
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
   * From now on a write that finds the ring full is refused with `err` (never acknowledged, so
   * nothing is lost) instead of waiting: at shutdown, when space may never come back.
   */
  refuseWaiting(err: FerryError): void {
    this.refusal = err;
    for (const w of this.spaceWaiters.splice(0)) w();
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

  /** Per region (lagBehind's records and bytes, split by the disk each writes); null for one disk, or while not all are known (region-ledger.ts L3). */
  lagByRegion(fromSeq: number): RegionLag[] | null {
    return this.ledger?.behind(fromSeq) ?? null;
  }

  /** The head: where the next record goes and the chain link it will carry. */
  headPosition(): ConsumerPosition {
    return { name: '', nextSeq: this.nextSeq, nextPos: this.headPos, prevCrc: this.lastCrc };
  }

  async close(): Promise<void> {
    while (this.writing) await sleep(5);
    await this.checkpoints.idle();
    if (!this.failure) await this.sync().catch(() => undefined);
    await this.copySet.closeAll();
  }
}

