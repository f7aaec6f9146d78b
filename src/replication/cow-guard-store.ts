// A replica disk during a test failover (test-scratch.ts): every write, zero and trim first
// waits until the old contents of the granules it touches are preserved in the test's
// scratch area (T2), then goes to the disk. Reads and syncs pass straight through. The
// mirror site puts it in place of the replica's disk when a test starts (the committer
// applying records and the receiver's sync chunks both write through it) and takes it away
// at test-end; if an undo log's guard (undo-guard-store.ts) was stacked on it meanwhile (a
// resync began during the test), it stays under that guard as a plain pass-through until
// the guard goes. It never fails a write for the test's sake: a preservation that cannot be
// made loses the test image instead (test-scratch.ts).
import assert from 'node:assert';
import { GuardedStore } from '../disk/guarded-store.js';
import type { DiskStore } from '../disk/store.js';
import type { TestScratch } from './test-scratch.js';

export class CowGuardStore extends GuardedStore {
  private scratch: TestScratch | null;

  constructor(raw: DiskStore, scratch: TestScratch) {
    super(raw);
    this.scratch = scratch;
  }

  /** At test-end: nothing is preserved any more; the store passes everything through. */
  detach(): void {
    this.scratch = null;
  }

  protected beforeOverwrite(offset: number, length: number): Promise<void> | null {
    return this.scratch ? this.preserved(this.scratch, offset, length) : null;
  }

  /** Resolves once [offset, offset+length) may be overwritten: its old contents kept for the test, or nothing to keep (T2). */
  private async preserved(s: TestScratch, offset: number, length: number): Promise<void> {
    const saving = s.preserve(offset, length);
    if (saving) await saving;
    assert.ok(s.covers(offset, length), 'a replica granule is overwritten only once its contents as of the test start are kept, or the image is lost (T2)');
  }
}
