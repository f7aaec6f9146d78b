// The journal's checkpoints and its tail: a checkpoint writes every consumer position to the
// older of the two checkpoint slots of every healthy copy and syncs them; only then does the
// tail (the oldest record some consumer still needs) move up to the oldest position in it, once
// every payload read begun before has ended. Checkpoints run one at a time, in a chain that
// the journal's rebase and a copy rebuild join to hold them off (see journal.ts, copy-rebuilder.ts).
//
// Invariants kept here (the journal's list is at the head of journal.ts):
//  J2 Ring space is freed (the tail moves) only after the payload reads begun before have
//     ended, so no record is written over bytes a read may still be reading (asserted in
//     guardRead()); and never while a copy is being rebuilt (copy-rebuilder.ts).
//  J4 A checkpoint never lists a consumer past the durable records, and the tail moves only
//     forward, never past a record some consumer still needs, and only to a checkpoint durable
//     on every healthy copy. Asserted in checkpointNow() and moveTail().
import assert from 'node:assert/strict';
import type { FerryError } from '../errors.js';
import { CHECKPOINT_OFFSETS, encodeCheckpoint } from './format.js';
import type { ConsumerPositions } from './consumer-positions.js';
import type { CopySet } from './copy-set.js';
import type { Durability } from './durability.js';
import { ReadTracker } from './read-tracker.js';

/** Where the ring's live part starts: the oldest record some consumer still needs, at its ring offset. */
export interface RingTail {
  seq: number;
  pos: number;
}

/** What the checkpoints need from their journal. */
export interface CheckpointHost {
  journalId: bigint;
  copySet: CopySet;
  /** The written and durable marks (a checkpoint syncs every copy through them). */
  marks: Durability;
  consumers: ConsumerPositions;
  /** The staging area's failure, once it is lost. */
  failure(): FerryError | null;
  /** A failed copy is being rebuilt: the tail holds still (J2). */
  rebuilding(): boolean;
  /** The tail moved: ring space was freed. */
  freed(): void;
}

export class Checkpointer {
  private chain: Promise<void> = Promise.resolve();
  private readonly reads = new ReadTracker();
  /** Drains of the read tracker begun so far, and the one the tail last moved after (J2, see guardRead). */
  private readDrains = 0;
  private tailMovedAfterDrain = 0;

  constructor(
    /** The generation of the newest durable checkpoint (its slot: generation % 2). */
    private generation: number,
    private ringTail: RingTail,
    private readonly host: CheckpointHost,
  ) {}

  get tail(): RingTail {
    return this.ringTail;
  }

  /** Makes the consumer positions durable on every copy, then frees the space behind them (J4). */
  checkpoint(): Promise<void> {
    return this.inChain(() => this.checkpointNow());
  }

  /** Runs `fn` once every checkpoint (or rebuild join) queued before it is done; the next waits for it. */
  inChain(fn: () => Promise<void>): Promise<void> {
    const p = this.chain.then(fn, fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  /** Resolves once every checkpoint queued so far has run (failed or not). */
  idle(): Promise<void> {
    return this.chain;
  }

  /** A checkpoint's work; runs in the chain. */
  async checkpointNow(): Promise<void> {
    const h = this.host;
    const failure = h.failure();
    if (failure) throw failure;
    h.copySet.checkPaths();
    const consumers = h.consumers.snapshot();
    const generation = this.generation + 1;
    const buf = encodeCheckpoint({ generation, journalId: h.journalId, consumers });
    await h.copySet.writeAll(buf, CHECKPOINT_OFFSETS[generation % 2]!);
    await h.marks.syncNow();
    const failed = h.failure();
    if (failed) throw failed;
    this.generation = generation;
    for (const c of consumers) assert.ok(c.nextSeq <= h.marks.durableSeq + 1, 'a durable checkpoint never lists a consumer past the durable records (J4)');
    const min = consumers.reduce((a, b) => (b.nextSeq < a.nextSeq ? b : a));
    if (min.nextSeq !== this.ringTail.seq && !h.rebuilding()) {
      assert.ok(min.nextSeq > this.ringTail.seq, 'the tail only moves forward (J4)');
      assert.ok(h.consumers.min().nextSeq >= min.nextSeq, 'the tail never passes a record some consumer still needs (J4)');
      await this.moveTail({ seq: min.nextSeq, pos: min.nextPos }, generation);
    }
  }

  /**
   * Frees the ring behind `to`, the oldest position in checkpoint `generation` (durable on every
   * healthy copy), once every payload read begun before now has ended (J2, J4).
   */
  private async moveTail(to: RingTail, generation: number): Promise<void> {
    const drain = ++this.readDrains;
    await this.reads.drain();
    assert.equal(this.generation, generation, 'the tail moves only to a checkpoint durable on every healthy copy (J4)');
    this.tailMovedAfterDrain = drain;
    this.ringTail = to;
    this.host.freed();
  }

  /** Runs a read of staged payload bytes that no tail move may free under it (J2). */
  async guardRead(read: () => Promise<void>): Promise<void> {
    const drainsBefore = this.readDrains;
    const gen = this.reads.begin();
    try {
      await read();
    } finally {
      this.reads.end(gen);
    }
    // A tail move waits for the reads begun before its drain: none freed these bytes under us.
    assert.ok(this.tailMovedAfterDrain <= drainsBefore, 'ring space is freed only after the reads begun before have ended (J2)');
  }
}
