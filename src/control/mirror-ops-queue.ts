// One operation at a time on the mirror of a disk: create, remove, swap, verify, promote,
// pause and resume each run alone. Two of them interleaved broke each other (two swaps
// closing one I/O gate twice, a pause under a swap's drain, a remove under a verify). A
// request that arrives while another runs is refused with MIRROR_BUSY, naming the one that
// runs, and changes nothing; only pause, resume and set (quick: no I/O, no drain) wait behind
// one another, in order, and at most opsWaitingMax of them per disk.
import { FerryError } from '../errors.js';

export type MirrorOp = 'create' | 'remove' | 'swap' | 'verify' | 'promote' | 'pause' | 'resume' | 'set' | 'switchover' | 'reconnect' | 'group add' | 'group remove' | 'group delete';

/** Pause and resume queued behind one another on one disk; more are refused as busy. */
const opsWaitingMax = 8;

const quickOps: ReadonlySet<MirrorOp> = new Set<MirrorOp>(['pause', 'resume', 'set']);

interface Slot {
  op: MirrorOp;
  waiting: Array<{ op: MirrorOp; start: () => void }>;
}

export class MirrorOpsQueue {
  private readonly slots = new Map<string, Slot>();

  /** Runs `fn` as the only operation on the mirror of `disk` (see the file comment). */
  async run<T>(disk: string, op: MirrorOp, fn: () => T | Promise<T>): Promise<T> {
    const slot = this.slots.get(disk);
    if (!slot) {
      this.slots.set(disk, { op, waiting: [] });
    } else {
      if (!quickOps.has(op) || !quickOps.has(slot.op) || slot.waiting.length >= opsWaitingMax) {
        throw new FerryError('MIRROR_BUSY', `a ${slot.op} of the mirror of disk '${disk}' is running${slot.waiting.length ? ` (${slot.waiting.length} more waiting)` : ''}; nothing was changed: ${op} again once it ends`);
      }
      await new Promise<void>((start) => slot.waiting.push({ op, start }));
    }
    try {
      return await fn();
    } finally {
      this.release(disk);
    }
  }

  private release(disk: string): void {
    const slot = this.slots.get(disk)!;
    const next = slot.waiting.shift();
    if (!next) {
      this.slots.delete(disk);
      return;
    }
    slot.op = next.op;
    next.start();
  }
}
