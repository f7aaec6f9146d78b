// A replica disk seen through its undo log (undo-log.ts): every write, zero and trim first
// waits until the old contents of the granules it touches are durable in the log (U1, U2),
// then goes to the disk. Reads and syncs pass straight through. The mirror site puts it in
// place of the replica's disk for as long as a resync runs (the staging area's committer
// and the sync chunks both write through it) and takes it away when the log is deleted.
import type { Extent } from '../disk/block-device.js';
import { writeInOrder, type DiskStore } from '../disk/store.js';
import type { UndoLog } from './undo-log.js';

export class UndoGuardStore implements DiskStore {
  constructor(
    readonly raw: DiskStore,
    readonly undo: UndoLog,
  ) {}

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
    const saving = this.undo.protect(offset, length);
    if (saving) await saving;
    return this.raw.write(buf, bufOffset, length, offset);
  }

  /** Every granule the batch touches is saved (one wait for all), then the batch goes to the disk in order. */
  async writeBatch(buffers: Buffer[], offsets: number[]): Promise<void> {
    const savings: Promise<void>[] = [];
    for (let i = 0; i < buffers.length; i++) {
      const saving = this.undo.protect(offsets[i]!, buffers[i]!.length);
      if (saving) savings.push(saving);
    }
    await Promise.all(savings);
    return writeInOrder(this.raw, buffers, offsets);
  }

  async zero(offset: number, length: number, mayDeallocate: boolean, fastOnly: boolean): Promise<void> {
    const saving = this.undo.protect(offset, length);
    if (saving) await saving;
    return this.raw.zero(offset, length, mayDeallocate, fastOnly);
  }

  async trim(offset: number, length: number): Promise<void> {
    const saving = this.undo.protect(offset, length);
    if (saving) await saving;
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

  /** Closes the disk and the log (the log stays on disk: it is deleted only by remove()). */
  async close(): Promise<void> {
    await this.undo.close();
    await this.raw.close();
  }
}
