// A staged disk's admission chain: what a write waits for before its record is appended to
// the staging area. The chain is built with the disk's pipeline (staged-path.ts), in this
// order, each step a small object that says what it waits for:
//
//   step            waits while                                        owner of the rule
//   overlay-bound   the read overlay holds overlayExtentsMax extents   the primary committer frees them
//   bounded-lag     the mirror is further behind than --max-lag        the mirror (link up, not paused)
//   dirty-bitmap    (bitmap mode) the write's region is not yet        the mirror's persistent bitmap
//                   durable in the dirty-region bitmap
//   swap-pacing     a swap prepares and a committer is far behind      the swap (control/mirror-swap.ts)
//   divergence      (never waits) a remote mirror's link is down and   disaster recovery (control/dr-control.ts):
//                   no generation was started since: one is, durably   the write may be one the peer never has
//
// A step answers null when the write may go on now (the common case: no promise, no
// allocation), else a promise that resolves when it may, or rejects with the error the
// write fails with. The steps are asked in order; after any wait the whole chain is asked
// again, and the record is appended in the same tick as the pass that admitted it.
// The fifth rule of the write path, what a full staging area does (`--on-full`), decides at
// the moment a record finds no space, so the journal asks it (MirrorSlot.refuseWhenFull).
//
// A disk has at most one mirror; the steps that depend on it ask the pipeline's MirrorSlot,
// which the mirror joins and leaves in one call each (attach, detach), so no step is
// installed or replaced from another folder.
import type { FerryError } from '../errors.js';
import type { StagedRecord } from '../journal/staged-record.js';

export interface AdmissionStep {
  readonly name: string;
  /** null: admitted now; else resolves when the write may go on (a rejection fails the write). */
  admit(offset: number, length: number): Promise<void> | null;
}

/** What the write path asks of the disk's mirror, when it has one. */
export interface MirrorGate {
  /** Bounded lag: null, or resolves once the mirror is within --max-lag again. */
  lagWait(): Promise<void> | null;
  /** Bitmap mode: null, or resolves once the region's dirty bit is durable. */
  bitmapWait(offset: number, length: number): Promise<void> | null;
  /** The staging area has no space for the next record: null to wait for space, or the error it fails with. */
  refuseWhenFull(): FerryError | null;
  /** A batch of records was written and indexed (before any of its writes is acknowledged). */
  indexed(records: readonly StagedRecord[]): void;
}

/** The one place a mirror plugs into its disk's write path. */
export class MirrorSlot {
  private gate: MirrorGate | null = null;

  get current(): MirrorGate | null {
    return this.gate;
  }

  attach(gate: MirrorGate): void {
    if (this.gate !== null && this.gate !== gate) throw new Error('a disk has at most one mirror on its write path');
    this.gate = gate;
  }

  detach(gate: MirrorGate): void {
    if (this.gate === gate) this.gate = null;
  }

  refuseWhenFull(): FerryError | null {
    return this.gate?.refuseWhenFull() ?? null;
  }

  indexed(records: readonly StagedRecord[]): void {
    this.gate?.indexed(records);
  }
}

export class BoundedLagStep implements AdmissionStep {
  readonly name = 'bounded-lag';
  constructor(private readonly slot: MirrorSlot) {}
  admit(): Promise<void> | null {
    return this.slot.current?.lagWait() ?? null;
  }
}

export class DirtyBitmapStep implements AdmissionStep {
  readonly name = 'dirty-bitmap';
  constructor(private readonly slot: MirrorSlot) {}
  admit(offset: number, length: number): Promise<void> | null {
    return this.slot.current?.bitmapWait(offset, length) ?? null;
  }
}

/** Writers wait while `behind()` says a committer is too far behind (a swap about to hold requests). */
export class SwapPacingStep implements AdmissionStep {
  readonly name = 'swap-pacing';
  private behind: (() => boolean) | null = null;

  constructor(
    /** Resolves at the next progress of any committer, or after a short while. */
    private readonly progress: () => Promise<void>,
  ) {}

  /** Paces writers with `behind` until the returned function is called. */
  pace(behind: () => boolean): () => void {
    this.behind = behind;
    return () => {
      if (this.behind === behind) this.behind = null;
    };
  }

  admit(): Promise<void> | null {
    if (this.behind === null || !this.behind()) return null;
    return this.waitWhileBehind();
  }

  private async waitWhileBehind(): Promise<void> {
    while (this.behind?.()) await this.progress();
  }
}

/** Writers wait while `full()` (the overlay's extent bound); `progress` waits for the committer to apply some records. */
export class OverlayBoundStep implements AdmissionStep {
  readonly name = 'overlay-bound';
  constructor(
    private readonly full: () => boolean,
    private readonly progress: () => Promise<void>,
  ) {}

  admit(): Promise<void> | null {
    return this.full() ? this.waitWhileFull() : null;
  }

  private async waitWhileFull(): Promise<void> {
    while (this.full()) await this.progress();
  }
}

/**
 * Calls `beforeWrite` (given when the staging area is opened: the control layer's divergence
 * check), synchronously, before each write is appended: a primary whose link is down starts a
 * new generation (durably) at the first write it may hold alone. Never waits; a throw fails
 * the write.
 */
export class DivergenceStep implements AdmissionStep {
  readonly name = 'divergence';

  constructor(private readonly beforeWrite: (() => void) | null) {}

  admit(): null {
    this.beforeWrite?.();
    return null;
  }
}

export class AdmissionChain {
  constructor(readonly steps: readonly AdmissionStep[]) {}

  /**
   * One pass over the steps, in order: null when every step admits the write now, else the
   * first step's wait. The caller asks again after each wait (admitted()), so a write is
   * appended in the same tick as the pass that admitted it: no step's state (a mirror falling
   * back to its bitmap, say) can change between that pass and the append.
   */
  admit(offset: number, length: number): Promise<void> | null {
    for (let i = 0; i < this.steps.length; i++) {
      const wait = this.steps[i]!.admit(offset, length);
      if (wait) return wait;
    }
    return null;
  }

  step<T extends AdmissionStep>(name: string): T {
    const s = this.steps.find((x) => x.name === name);
    if (!s) throw new Error(`no admission step '${name}'`);
    return s as T;
  }
}
