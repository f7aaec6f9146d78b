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
import type { Extent } from '../disk/block-device.js';
import { writeInOrder, type DiskStore } from '../disk/store.js';
import type { TestScratch } from './test-scratch.js';

export class CowGuardStore implements DiskStore {
  private scratch: TestScratch | null;

  constructor(
    readonly raw: DiskStore,
    scratch: TestScratch,
  ) {
    this.scratch = scratch;
  }

  /** At test-end: nothing is preserved any more; the store passes everything through. */
  detach(): void {
    this.scratch = null;
  }

  get kind(): DiskStore['kind'] {
    return this.raw.kind;
  }

  get readOnly(): boolean {
    return this.raw.readOnly;
  }

  get path(): string {
    return this.raw.path;
  }

  get size(): number {
    return this.raw.size;
  }

  read(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    return this.raw.read(buf, bufOffset, length, offset);
  }

  async write(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    await this.preserved(offset, length);
    return this.raw.write(buf, bufOffset, length, offset);
  }

  /** Resolves once [offset, offset+length) may be overwritten: its old contents kept for the test, or nothing to keep (T2). */
  private async preserved(offset: number, length: number): Promise<void> {
    const s = this.scratch;
    if (!s) return;
    const saving = s.preserve(offset, length);
    if (saving) await saving;
    assert.ok(s.covers(offset, length), 'a replica granule is overwritten only once its contents as of the test start are kept, or the image is lost (T2)');
  }

  /** Every granule the batch touches is preserved (one wait for all), then the batch goes to the disk in order. */
  async writeBatch(buffers: Buffer[], offsets: number[]): Promise<void> {
    await Promise.all(buffers.map((b, i) => this.preserved(offsets[i]!, b.length)));
    return writeInOrder(this.raw, buffers, offsets);
  }

  async zero(offset: number, length: number, mayDeallocate: boolean, fastOnly: boolean): Promise<void> {
    await this.preserved(offset, length);
    return this.raw.zero(offset, length, mayDeallocate, fastOnly);
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.preserved(offset, length);
    return this.raw.trim(offset, length);
  }

  sync(): Promise<void> {
    return this.raw.sync();
  }

  extents(offset: number, length: number, extentsMax: number): Extent[] {
    return this.raw.extents(offset, length, extentsMax);
  }

  prefetch(offset: number, length: number): void {
    this.raw.prefetch(offset, length);
  }

  stillAtPath(): boolean {
    return this.raw.stillAtPath();
  }

  close(): Promise<void> {
    return this.raw.close();
  }
}
