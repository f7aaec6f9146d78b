// The committer: a staging area consumer that applies durable records to a target disk
// in sequence order and checkpoints its position after syncing the target, which lets
// the journal reclaim the space behind it. The primary's committer also drops each
// record from the read overlay once it is on the primary; a local mirror's committer
// (src/mirror/) applies the same records to the mirror, holding back records that touch
// a region the sync engine is copying at that moment.
//
// Records are applied in groups: consecutive records whose ranges do not overlap are
// written concurrently (their order cannot matter); a record overlapping an earlier
// one in the group starts the next group, so overlapping writes land in order.
// A failing primary is retried with bounded backoff; acknowledged data stays safe in
// the staging area (and readable through the overlay) meanwhile.
import assert from 'node:assert/strict';
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import { writeSoon, type DiskStore } from '../disk/store.js';
import { RecordType, type ConsumerPosition } from '../journal/format.js';
import type { Journal, StagedRecord } from '../journal/journal.js';

export const PRIMARY_CONSUMER = 'primary';
/** Record flag: a ZERO record that must stay allocated (NBD_CMD_FLAG_NO_HOLE). */
export const FLAG_NO_HOLE = 1;

const recordsPerBatchMax = 512;
/** Target writes in flight at once: enough to keep a device busy, few enough to leave the thread pool to clients. */
const appliesInFlightMax = 8;
const bytesPerBatchMax = 16 * 1024 * 1024;
/** How long written records may gather before the committer applies them (unless many are pending or space is short). */
const applyDelayMs = 20;
const checkpointIntervalMs = 500;
/** Longest stretch the committer applies records without yielding to client requests (inline writes are synchronous). */
const applySliceMs = 2;
const retryMsMax = 30_000;
const drainRetriesMax = 5;

export interface CommitterOptions {
  /** The journal consumer this committer is (default: the primary). */
  consumer?: string;
  /** Called once a group of records is on the target (not yet synced). */
  onApplied?: (records: StagedRecord[]) => void;
  /** Resolves when a record may be applied now (null: at once). */
  admit?: (record: StagedRecord) => Promise<void> | null;
}

export class Committer {
  private pos: ConsumerPosition;
  private readonly consumerName: string;
  private paused = false;
  private stopped = false;
  private loop: Promise<void> | null = null;
  /** The step running now (its group may be half applied until it ends). */
  private stepping: Promise<void> = Promise.resolve();
  /** Drains waiting: records are applied at once, without the gathering delay. */
  private draining = 0;
  private dirty = false;
  private lastCheckpointMs = Date.now();
  private bytesSinceCheckpoint = 0;
  private progressWaiters: Array<() => void> = [];
  private kickWaiter: (() => void) | null = null;
  lastError: string | null = null;
  /** Time of the newest record applied, for lag reporting. */
  appliedTimeMs = 0;

  constructor(
    private readonly journal: Journal,
    private target: DiskStore,
    private readonly log: Logger,
    private readonly opts: CommitterOptions = {},
  ) {
    this.consumerName = opts.consumer ?? PRIMARY_CONSUMER;
    this.pos = journal.consumer(this.consumerName);
    journal.on('space-needed', () => this.kick());
  }

  get nextSeq(): number {
    return this.pos.nextSeq;
  }

  get position(): ConsumerPosition {
    return { ...this.pos };
  }

  /** Stops applying (records wait in the staging area) until resume(). */
  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    this.kick();
  }

  get isPaused(): boolean {
    return this.paused;
  }

  /** Pauses and resolves once no group is being applied: the target then stops changing. */
  async pauseSettled(): Promise<void> {
    this.pause();
    this.kick();
    await this.stepping.catch(() => undefined);
  }

  /** Takes the journal's position again (after Journal.rebase on a mirror site: nothing was pending). */
  reposition(): void {
    assert.ok(this.journal.writtenSeq < this.journal.consumer(this.consumerName).nextSeq, 'a committer is repositioned only with nothing pending');
    this.pos = this.journal.consumer(this.consumerName);
    this.dirty = false;
  }

  /** Points the committer at another target (a swap of roles; the caller holds the I/O gate and has drained). */
  retarget(target: DiskStore): void {
    this.target = target;
  }

  /** Ends the current wait of the loop early (space or overlay pressure, new records, stop). */
  kick(): void {
    const k = this.kickWaiter;
    this.kickWaiter = null;
    k?.();
  }

  private waitFor(event: Promise<void>, ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = ms > 0 ? setTimeout(resolve, ms) : null;
      this.kickWaiter = resolve;
      void event.then(resolve);
    }).finally(() => {
      this.kickWaiter = null;
    });
  }

  start(): void {
    this.loop ??= this.run();
  }

  /** Resolves at the next progress (a group applied), to pace writers waiting on the overlay bound. */
  progress(): Promise<void> {
    return new Promise((resolve) => this.progressWaiters.push(resolve));
  }

  private async run(): Promise<void> {
    let retryMs = 100;
    while (!this.stopped) {
      try {
        this.stepping = this.step();
        await this.stepping;
        retryMs = 100;
        this.lastError = null;
      } catch (err) {
        if (this.stopped) break;
        this.lastError = (err as Error).message;
        this.log.error({ err: this.lastError, retryMs }, 'committer could not apply staged records to the primary; retrying');
        await this.waitFor(new Promise<void>(() => undefined), retryMs); // a drain() may cut the backoff short
        retryMs = Math.min(retryMs * 2, retryMsMax);
        if (this.journal.failed) break;
      }
    }
  }

  private async step(): Promise<void> {
    if (this.paused) {
      if (this.dirty) return this.checkpoint();
      return this.waitFor(new Promise<void>(() => undefined), 1000);
    }
    if (this.pos.nextSeq > this.journal.writtenSeq) {
      if (this.dirty) return this.checkpoint();
      return this.waitFor(this.journal.whenWrittenBeyond(this.pos.nextSeq - 1), 0);
    }
    // Let records gather for a moment unless many are pending or space is short: one sync and
    // one concurrent apply then serve many records. Only durable records are applied (J5); a
    // client FLUSH or FUA has often made them so already.
    if (this.journal.writtenSeq - this.pos.nextSeq + 1 < recordsPerBatchMax && !this.journal.hasWaitersForSpace && this.draining === 0) {
      await this.waitFor(new Promise<void>(() => undefined), applyDelayMs);
    }
    if (this.pos.nextSeq > this.journal.durableSeq) await this.journal.sync();
    const upTo = this.journal.durableSeq;
    const records: StagedRecord[] = [];
    let bytes = 0;
    let pos = this.pos;
    while (pos.nextSeq <= upTo && records.length < recordsPerBatchMax && bytes < bytesPerBatchMax) {
      const r = await this.journal.readRecord(pos.nextSeq, pos.nextPos, pos.prevCrc, this.consumerName);
      records.push(r);
      bytes += r.span;
      pos = { name: this.consumerName, nextSeq: r.seq + 1, nextPos: r.pos + r.span, prevCrc: r.crc };
    }
    await this.apply(records);
    this.pos = pos;
    this.dirty = true;
    this.bytesSinceCheckpoint += bytes;
    for (const w of this.progressWaiters.splice(0)) w();
    const due = Date.now() - this.lastCheckpointMs >= checkpointIntervalMs || this.bytesSinceCheckpoint >= this.journal.ringBytes / 4 || this.journal.hasWaitersForSpace;
    if (due) await this.checkpoint();
  }

  /**
   * Applies records with at most appliesInFlightMax writes in flight (the thread pool must
   * stay free for client I/O), never two overlapping records at once: a record waits for
   * any earlier in-flight record it overlaps, so overlapping writes land in order.
   */
  private async apply(records: StagedRecord[]): Promise<void> {
    const inflight = new Map<StagedRecord, Promise<void>>();
    const overlaps = (a: StagedRecord, b: StagedRecord): boolean => a.diskOffset < b.diskOffset + b.length && b.diskOffset < a.diskOffset + a.length;
    let failure: unknown = null;
    let sliceStartMs = performance.now();
    for (const r of records) {
      if (failure) break;
      // Inline writes complete synchronously: give the event loop back now and then, so a
      // group of records never holds client requests for long.
      if (performance.now() - sliceStartMs >= applySliceMs) {
        await new Promise((resolve) => setImmediate(resolve));
        sliceStartMs = performance.now();
      }
      for (;;) {
        let blocked = inflight.size >= appliesInFlightMax;
        if (!blocked) for (const x of inflight.keys()) if (overlaps(x, r)) blocked = true;
        if (!blocked) break;
        await Promise.race(inflight.values());
      }
      inflight.set(
        r,
        this.applyOne(r).then(
          () => void inflight.delete(r),
          (err) => {
            inflight.delete(r);
            failure ??= err;
          },
        ),
      );
    }
    await Promise.all(inflight.values());
    if (failure) throw failure;
    this.opts.onApplied?.(records);
    if (records.length) this.appliedTimeMs = records[records.length - 1]!.timeMs;
  }

  private async applyOne(r: StagedRecord): Promise<void> {
    const wait = this.opts.admit?.(r);
    if (wait) await wait;
    switch (r.type) {
      case RecordType.WRITE:
        // A device takes small records inline (see Store.writeSoon).
        return writeSoon(this.target, r.payload!, 0, r.length, r.diskOffset);
      case RecordType.ZERO:
        return this.target.zero(r.diskOffset, r.length, (r.flags & FLAG_NO_HOLE) === 0, false);
      case RecordType.TRIM:
        return this.target.trim(r.diskOffset, r.length);
      default:
        throw new Error(`unknown record type ${String(r.type)}`);
    }
  }

  /** Target first, then the position (J4). */
  private async checkpoint(): Promise<void> {
    const pos = this.pos;
    await this.target.sync();
    this.journal.advanceConsumer(this.consumerName, pos);
    await this.journal.checkpoint();
    if (this.pos === pos) this.dirty = false;
    this.lastCheckpointMs = Date.now();
    this.bytesSinceCheckpoint = 0;
  }

  /** Applies everything written so far and checkpoints: the target then holds every staged write. */
  async drain(): Promise<void> {
    if (this.paused) throw new FerryError('BAD_REQUEST', `the ${this.consumerName} consumer is paused; resume it first`);
    const target = this.journal.writtenSeq;
    this.draining++;
    this.kick();
    try {
      await this.drainTo(target);
    } finally {
      this.draining--;
    }
    await this.checkpoint();
  }

  private async drainTo(target: number): Promise<void> {
    let retries = 0;
    while (this.pos.nextSeq <= target) {
      if (this.journal.failed) throw this.journal.failed;
      if (this.lastError) {
        // Retry now rather than at the end of the backoff; give up if the target still fails.
        if (++retries > drainRetriesMax) throw new FerryError('IO_ERROR', `cannot apply staged writes to ${this.target.path}: ${this.lastError}`);
        this.kick();
        await new Promise((r) => setTimeout(r, 100 * retries));
        continue;
      }
      await Promise.race([this.progress(), new Promise((r) => setTimeout(r, 50))]);
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.kick();
    for (const w of this.progressWaiters.splice(0)) w();
    await this.loop;
  }
}
