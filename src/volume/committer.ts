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
import { sleepOn, systemClock, type Clock } from '../clock.js';
import { FerryError } from '../errors.js';
import { writeInOrder, type DiskStore } from '../disk/store.js';
import { RecordType, type ConsumerPosition } from '../journal/format.js';
import type { Journal, StagedRecord } from '../journal/journal.js';
import { readRecords } from '../journal/record-cursor.js';
import { PRIMARY_CONSUMER, type JournalConsumer } from './consumer.js';

export { PRIMARY_CONSUMER };
/** Record flag: a ZERO record that must stay allocated (NBD_CMD_FLAG_NO_HOLE). */
export const FLAG_NO_HOLE = 1;

/** Records applied per step: their WRITE runs go to the target as at most one batch (one thread-pool job) each. */
const recordsPerBatchMax = 512;
const bytesPerBatchMax = 16 * 1024 * 1024;
/** How long written records may gather before the committer applies them (unless many are pending or space is short). */
const applyDelayMs = 20;
/**
 * When the committer syncs its target and checkpoints its position (J4). A checkpoint costs a
 * sync of the target (the random pages written since the last one go to the device: on this
 * kind of machine that write-back is most of what a staged write costs beyond an unstaged one)
 * and a sync of the staging area, so it follows what it is for, not the clock:
 *  - space: half of the ring applied since the last one, or a writer waiting for space now;
 *  - recovery time: a restart replays what was applied since, at most checkpointRecordsMax
 *    records (about one pwrite each: 128 Ki 4 KiB records replay in two or three seconds here)
 *    or checkpointBytesMax bytes;
 *  - age: at most checkpointIntervalMsMax, so a slowly written disk's checkpoint is not days old.
 */
const checkpointRecordsMax = 128 * 1024;
const checkpointBytesMax = 512 * 1024 * 1024;
const checkpointIntervalMsMax = 30_000;
const retryMsMax = 30_000;
const drainRetriesMax = 5;

export interface CommitterOptions {
  /** The journal consumer this committer is (default: the primary). */
  consumer?: string;
  /** Called once a group of records is on the target (not yet synced). */
  onApplied?: (records: StagedRecord[]) => void;
  /** Resolves when a record may be applied now (null: at once). */
  admit?: (record: StagedRecord) => Promise<void> | null;
  /** Time and timers (default: the system clock; tests pass a fake one). */
  clock?: Clock;
}

export class Committer implements JournalConsumer {
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
  private lastCheckpointMs: number;
  private bytesSinceCheckpoint = 0;
  private recordsSinceCheckpoint = 0;
  /** The checkpoint running now, if any (step() starts them without waiting). */
  private checkpointing: Promise<void> | null = null;
  private progressWaiters: Array<() => void> = [];
  private kickWaiter: (() => void) | null = null;
  private readonly clock: Clock;
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
    this.clock = opts.clock ?? systemClock;
    this.lastCheckpointMs = this.clock.nowMs();
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
    let timer: { cancel(): void } | null = null;
    return new Promise<void>((resolve) => {
      if (ms > 0) timer = this.clock.timeout(ms, resolve);
      this.kickWaiter = resolve;
      void event.then(resolve);
    }).finally(() => {
      timer?.cancel();
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
    const { records, end: pos, bytes } = await readRecords(this.journal, this.pos, { upTo: this.journal.durableSeq, recordsMax: recordsPerBatchMax, bytesMax: bytesPerBatchMax }, this.consumerName);
    await this.apply(records);
    this.pos = pos;
    this.dirty = true;
    this.bytesSinceCheckpoint += bytes;
    this.recordsSinceCheckpoint += records.length;
    for (const w of this.progressWaiters.splice(0)) w();
    const due =
      this.journal.hasWaitersForSpace ||
      this.bytesSinceCheckpoint >= Math.min(this.journal.ringBytes / 2, checkpointBytesMax) ||
      this.recordsSinceCheckpoint >= checkpointRecordsMax ||
      this.clock.nowMs() - this.lastCheckpointMs >= checkpointIntervalMsMax;
    // In the background: the next records are applied while the target syncs (a sync after
    // 128 Ki random records writes back hundreds of MiB; waiting for it stalled the pipeline).
    if (due) this.checkpointInBackground();
  }

  /**
   * Applies records in sequence order. Runs of WRITE records go to the target as one batch
   * (BlockDevice: one thread-pool job writing them in order, so the event loop never waits
   * for a pwrite and a later record over an earlier one lands last); a ZERO or TRIM record,
   * or a record the sync engine holds back (admit), first lets the writes before it land.
   */
  private async apply(records: StagedRecord[]): Promise<void> {
    let buffers: Buffer[] = [];
    let offsets: number[] = [];
    const flush = async (): Promise<void> => {
      if (buffers.length === 0) return;
      const b = buffers;
      const o = offsets;
      buffers = [];
      offsets = [];
      await writeInOrder(this.target, b, o);
    };
    let expectSeq = this.pos.nextSeq;
    for (const r of records) {
      assert.equal(r.seq, expectSeq, 'a consumer applies every record once, in sequence order (J1, R5)');
      expectSeq++;
      // Checked in order as the batch is built: a record admitted here was staged (and so is
      // in whatever the sync engine reads from now on) before the engine took its chunk.
      const wait = this.opts.admit?.(r) ?? null;
      if (wait) {
        await flush();
        await wait;
      }
      switch (r.type) {
        case RecordType.WRITE:
          assert.ok(r.payload !== null && r.payload.length >= r.length, 'a WRITE record carries its payload');
          if (r.length > 0) {
            buffers.push(r.payload.length === r.length ? r.payload : r.payload.subarray(0, r.length));
            offsets.push(r.diskOffset);
          }
          break;
        case RecordType.ZERO:
          await flush();
          await this.target.zero(r.diskOffset, r.length, (r.flags & FLAG_NO_HOLE) === 0, false);
          break;
        case RecordType.TRIM:
          await flush();
          await this.target.trim(r.diskOffset, r.length);
          break;
        default:
          throw new Error(`unknown record type ${String(r.type)}`);
      }
    }
    await flush();
    this.opts.onApplied?.(records);
    if (records.length) this.appliedTimeMs = records[records.length - 1]!.timeMs;
  }

  /**
   * Syncs the target, then checkpoints the position taken before the sync began (J4): every
   * record before it was applied before the sync, so the sync made it durable. One at a
   * time: a caller while one runs waits for it, then checkpoints what it has by then.
   */
  private async checkpoint(): Promise<void> {
    while (this.checkpointing) await this.checkpointing.catch(() => undefined);
    const run = this.checkpointOnce();
    this.checkpointing = run;
    try {
      await run;
    } finally {
      if (this.checkpointing === run) this.checkpointing = null;
    }
  }

  private async checkpointOnce(): Promise<void> {
    const pos = this.pos;
    this.lastCheckpointMs = this.clock.nowMs();
    this.bytesSinceCheckpoint = 0;
    this.recordsSinceCheckpoint = 0;
    await this.target.sync();
    this.journal.advanceConsumer(this.consumerName, pos);
    await this.journal.checkpoint();
    if (this.pos === pos) this.dirty = false;
  }

  /** A checkpoint the loop does not wait for (none starts while one runs); a failure is logged and the next one retries. */
  private checkpointInBackground(): void {
    if (this.checkpointing) return;
    void this.checkpoint().catch((err) => {
      this.lastError = (err as Error).message;
      this.log.error({ err: this.lastError, consumer: this.consumerName }, 'committer could not sync its target for a checkpoint; the next checkpoint retries');
    });
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
      // A stopped committer applies nothing more: waiting for it would poll forever.
      if (this.stopped) throw new FerryError('IO_ERROR', `the ${this.consumerName} committer stopped before applying every staged write to ${this.target.path}`);
      if (this.lastError) {
        // Retry now rather than at the end of the backoff; give up if the target still fails.
        if (++retries > drainRetriesMax) throw new FerryError('IO_ERROR', `cannot apply staged writes to ${this.target.path}: ${this.lastError}`);
        this.kick();
        await sleepOn(this.clock, 100 * retries);
        continue;
      }
      await Promise.race([this.progress(), sleepOn(this.clock, 50)]);
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.kick();
    for (const w of this.progressWaiters.splice(0)) w();
    await this.loop;
    await this.checkpointing?.catch(() => undefined);
  }
}
