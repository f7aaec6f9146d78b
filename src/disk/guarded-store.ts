// A disk seen through a guard: every write, zero and trim first waits until the guard says
// the range may be overwritten (its old contents kept somewhere), then goes to the disk.
// Reads, syncs and extents pass straight through. The guards: a replica's undo log during a
// resync (replication/undo-guard-store.ts) and a test failover's copy-on-write
// (replication/cow-guard-store.ts). A guard never writes the disk itself.
import type { Extent } from './block-device.js';
import { writeInOrder, type DiskStore } from './store.js';

export abstract class GuardedStore implements DiskStore {
  constructor(readonly raw: DiskStore) {}

  /** Resolves once [offset, offset+length) may be overwritten; null: at once. */
  protected abstract beforeOverwrite(offset: number, length: number): Promise<void> | null;

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
    const w = this.beforeOverwrite(offset, length);
    if (w) await w;
    return this.raw.write(buf, bufOffset, length, offset);
  }

  /** Every range the batch touches is guarded (one wait for all), then the batch goes to the disk in order. */
  async writeBatch(buffers: Buffer[], offsets: number[]): Promise<void> {
    const waits: Array<Promise<void>> = [];
    for (let i = 0; i < buffers.length; i++) {
      const w = this.beforeOverwrite(offsets[i]!, buffers[i]!.length);
      if (w) waits.push(w);
    }
    await Promise.all(waits);
    return writeInOrder(this.raw, buffers, offsets);
  }

  async zero(offset: number, length: number, mayDeallocate: boolean, fastOnly: boolean): Promise<void> {
    const w = this.beforeOverwrite(offset, length);
    if (w) await w;
    return this.raw.zero(offset, length, mayDeallocate, fastOnly);
  }

  async trim(offset: number, length: number): Promise<void> {
    const w = this.beforeOverwrite(offset, length);
    if (w) await w;
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
