// A replica disk seen through its undo log (undo-log.ts): every write, zero and trim first
// waits until the old contents of the granules it touches are durable in the log (U1, U2),
// then goes to the disk. Reads and syncs pass straight through. The mirror site puts it in
// place of the replica's disk for as long as a resync runs (the staging area's committer
// and the sync chunks both write through it) and takes it away when the log is deleted.
import { GuardedStore } from '../disk/guarded-store.js';
import type { DiskStore } from '../disk/store.js';
import type { UndoLog } from './undo-log.js';

export class UndoGuardStore extends GuardedStore {
  constructor(
    raw: DiskStore,
    readonly undo: UndoLog,
  ) {
    super(raw);
  }

  /** The old contents of every granule the range touches durable in the log first (U1, U2). */
  protected beforeOverwrite(offset: number, length: number): Promise<void> | null {
    return this.undo.protect(offset, length);
  }

  /** Closes the disk and the log (the log stays on disk: it is deleted only by remove()). */
  override async close(): Promise<void> {
    await this.undo.close();
    await this.raw.close();
  }
}
