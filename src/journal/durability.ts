// How far a journal's records have got: written (on every healthy copy, so readable and
// acknowledged, J3) and durable (synced on every healthy copy, so handed to consumers, J5),
// the syncs that move the durable mark (group commit: concurrent callers share one sync of
// every copy; a caller rides a sync already running when it began after the caller's
// newest record was written), and who waits for either mark. Invariant: durableSeq ≤
// writtenSeq, and both only move forward (except restart(), a mirror site's rebase, with
// nothing pending); asserted in written(), syncNow() and sync() (J3).
import assert from 'node:assert/strict';
import type { FerryError } from '../errors.js';
import { SyncBatcher } from '../disk/sync-batcher.js';

export class Durability {
  private writtenSeqValue: number;
  private durableSeqValue: number;
  private readonly syncer: SyncBatcher;
  /** Syncs of every copy in progress, each with the newest record it covers (written before it began). */
  private readonly syncsRunning = new Set<{ upTo: number; done: Promise<void> }>();
  private writtenWaiters: Array<() => void> = [];
  private durableWaiters: Array<() => void> = [];

  /**
   * `lastSeq`: the newest record recovery found (written and durable). `syncAll` syncs every
   * healthy copy; `failure` is the journal's failure, if it has failed.
   */
  constructor(
    lastSeq: number,
    private readonly syncAll: () => Promise<void>,
    private readonly failure: () => FerryError | null,
  ) {
    this.writtenSeqValue = lastSeq;
    this.durableSeqValue = lastSeq;
    this.syncer = new SyncBatcher(() => this.syncNow());
  }

  get writtenSeq(): number {
    return this.writtenSeqValue;
  }

  get durableSeq(): number {
    return this.durableSeqValue;
  }

  /** Records up to `seq` are written on every healthy copy. */
  written(seq: number): void {
    assert.ok(seq >= this.writtenSeqValue, 'the written mark only moves forward');
    this.writtenSeqValue = seq;
    for (const w of this.writtenWaiters.splice(0)) w();
  }

  /** Numbering starts over after `lastSeq` (a rebase; nothing is pending or waiting). */
  restart(lastSeq: number): void {
    assert.ok(this.durableSeqValue === this.writtenSeqValue, 'a restart comes with every record durable');
    this.writtenSeqValue = lastSeq;
    this.durableSeqValue = lastSeq;
  }

  /** One sync of every copy now (not shared with a running one): what a checkpoint needs after writing its block. */
  syncNow(): Promise<void> {
    const upTo = this.writtenSeqValue;
    const done = this.syncAll().then(() => {
      assert.ok(upTo <= this.writtenSeqValue, 'only written records become durable (durableSeq <= writtenSeq)');
      if (upTo > this.durableSeqValue) {
        this.durableSeqValue = upTo;
        for (const w of this.durableWaiters.splice(0)) w();
      }
    });
    const running = { upTo, done };
    this.syncsRunning.add(running);
    void done.then(
      () => this.syncsRunning.delete(running),
      () => this.syncsRunning.delete(running),
    );
    return done;
  }

  /**
   * Makes every written record durable on every healthy copy (NBD FLUSH). Nothing to do when
   * they already are; a sync already running that covers them all (it began after the newest
   * was written: a checkpoint's, the committer's) serves as well as a new one.
   */
  async sync(): Promise<void> {
    const failed = this.failure();
    if (failed) throw failed;
    const needed = this.writtenSeqValue;
    if (needed <= this.durableSeqValue) return;
    let covering: Promise<void> | null = null;
    for (const r of this.syncsRunning) if (r.upTo >= needed) covering = r.done;
    await (covering ?? this.syncer.sync());
    const failedAfter = this.failure();
    if (failedAfter) throw failedAfter;
    assert.ok(this.durableSeqValue >= needed, 'a FLUSH returns only once every record written before it is synced on every healthy copy (J3)');
  }

  /** Resolves once a record beyond `seq` has been written (or the journal has failed). */
  whenWrittenBeyond(seq: number): Promise<void> {
    if (this.writtenSeqValue > seq || this.failure()) return Promise.resolve();
    return new Promise((resolve) => this.writtenWaiters.push(resolve));
  }

  /** Resolves once a record beyond `seq` is durable (made so by a client flush or anyone's sync). */
  whenDurableBeyond(seq: number): Promise<void> {
    if (this.durableSeqValue > seq || this.failure()) return Promise.resolve();
    return new Promise((resolve) => this.durableWaiters.push(resolve));
  }
}
