// The acknowledgement window of a remote stream (remote-stream.ts): the frames of records it
// shipped that the mirror site has not acknowledged yet, the position it acknowledged so far,
// and the checkpoints that make that position the stream's durable consumer position. The
// window bounds what a slow or cut link holds here (unackedBytesMax, unackedFramesMax); the
// acknowledged position is all this site may free of its staging area. A dropped link empties
// the window: its frames are shipped again from the acknowledged position on the next link.
//
// Invariant kept here (R1-R7 are listed at the head of remote-stream.ts):
//   R4  The acknowledged position only moves forward, to the end of a shipped frame whose
//       last record the mirror site acknowledged, never past the acknowledged seq + 1: the
//       stream's consumer position (checkpointed from it) never passes what the mirror site
//       made durable. Asserted in ack().
import assert from 'node:assert';
import type { Logger } from 'pino';
import type { ConsumerPosition } from '../journal/format.js';
import type { Journal } from '../journal/journal.js';

/** Shipped but unacknowledged: bounds what a slow or cut link holds in memory here. */
const unackedBytesMax = 64 * 1024 * 1024;
const unackedFramesMax = 64;
/** How often an acknowledged position is checkpointed (sooner when writers wait for space). */
const checkpointIntervalMs = 500;

export interface AckWindowOptions {
  journal: Journal;
  /** The stream's consumer name in the journal. */
  consumer: string;
  /** Whether the position may be checkpointed now (false: the stream fell back to its dirty bitmap and left the journal). */
  attached: () => boolean;
  log: Logger;
}

/** One frame of records on the link, awaiting its acknowledgement. */
export interface ShippedFrame {
  /** The sequence number of its last record. */
  lastSeq: number;
  /** The position right after its last record: the acknowledged position once it is acknowledged. */
  end: ConsumerPosition;
  /** Its length on the wire. */
  bytes: number;
  /** When its last record was written. */
  lastTimeMs: number;
}

export class AckWindow {
  private frames: ShippedFrame[] = [];
  private bytes = 0;
  /** When the newest record the mirror site acknowledged was written, for lag reporting. */
  appliedTimeMs = 0;
  /** The acknowledged position moved since the last checkpoint. */
  private dirty = false;
  private lastCheckpointMs = Date.now();
  private checkpointing: Promise<void> | null = null;

  constructor(
    private ackedPos: ConsumerPosition,
    private readonly opts: AckWindowOptions,
  ) {}

  /** The position after the last record the mirror site acknowledged: where shipping resumes on a new link. */
  get acked(): ConsumerPosition {
    return this.ackedPos;
  }

  /** Frames on the link that are not acknowledged yet. */
  get size(): number {
    return this.frames.length;
  }

  /** Another frame may be shipped without passing the window's bounds. */
  get hasRoom(): boolean {
    return this.bytes < unackedBytesMax && this.frames.length < unackedFramesMax;
  }

  /** A frame went out on the link. */
  shipped(frame: ShippedFrame): void {
    this.frames.push(frame);
    this.bytes += frame.bytes;
  }

  /** The link dropped: its frames go again from the acknowledged position on the next one. */
  clear(): void {
    this.frames = [];
    this.bytes = 0;
  }

  /** An attach found that the mirror site already made durable the records before `pos`: the position moves there (checkpointed later). */
  skipTo(pos: ConsumerPosition): void {
    this.ackedPos = pos;
    this.dirty = true;
  }

  /** The consumer was re-added (a resync): shipping starts again from its position. */
  restartAt(pos: ConsumerPosition): void {
    this.ackedPos = pos;
  }

  /**
   * The mirror site made every record up to `durableSeq` durable: acknowledges the frames it
   * covers, and checkpoints the new position when one is due. Whether the position moved.
   */
  ack(durableSeq: number): boolean {
    let moved = false;
    while (this.frames.length > 0 && this.frames[0]!.lastSeq <= durableSeq) {
      const s = this.frames.shift()!;
      this.bytes -= s.bytes;
      assert.ok(s.end.nextSeq > this.ackedPos.nextSeq && s.end.nextSeq <= durableSeq + 1, 'the position moves forward, never past the acknowledged seq + 1 (R4)');
      this.ackedPos = s.end;
      this.appliedTimeMs = s.lastTimeMs;
      moved = true;
    }
    if (!moved) return false;
    this.dirty = true;
    const due = Date.now() - this.lastCheckpointMs >= checkpointIntervalMs || this.opts.journal.hasWaitersForSpace;
    if (due && !this.checkpointing) void this.checkpoint().catch((err) => this.opts.log.error({ err: (err as Error).message }, 'mirror consumer checkpoint failed'));
    return true;
  }

  /** The position moved and the last checkpoint is old enough, and none runs: the ship loop checkpoints between frames. */
  get checkpointDue(): boolean {
    return this.dirty && Date.now() - this.lastCheckpointMs >= checkpointIntervalMs && !this.checkpointing;
  }

  /** The checkpoint running now, if any (a stopping stream waits for it). */
  get checkpointInProgress(): Promise<void> | null {
    return this.checkpointing;
  }

  /** Makes the acknowledged position this consumer's durable one, freeing staging space (R4). */
  checkpoint(): Promise<void> {
    if (this.checkpointing) return this.checkpointing.then(() => this.checkpoint());
    const run = async (): Promise<void> => {
      const j = this.opts.journal;
      if (!this.dirty || !this.opts.attached() || !j.hasConsumer(this.opts.consumer)) return;
      this.dirty = false;
      j.advanceConsumer(this.opts.consumer, this.ackedPos);
      await j.checkpoint();
      this.lastCheckpointMs = Date.now();
    };
    this.checkpointing = run().finally(() => (this.checkpointing = null));
    return this.checkpointing;
  }
}
