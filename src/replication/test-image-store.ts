// The test failover's image (test-scratch.ts) as a disk an NBD export can serve: reads and
// writes go to the scratch area and, for granules neither the test nor replication has
// touched, reads go to the replica. Writes never reach the replica (T1). A full scratch area
// fails a write with SCRATCH_FULL (ENOSPC); a lost image fails everything with
// TEST_IMAGE_LOST (EIO). Closing it closes nothing: the drill control owns the scratch area.
import type { Extent } from '../disk/block-device.js';
import type { DiskStore } from '../disk/store.js';
import { FerryError } from '../errors.js';
import type { TestScratch } from './test-scratch.js';

export class TestImageStore implements DiskStore {
  constructor(private readonly scratch: TestScratch) {}

  get kind(): DiskStore['kind'] {
    return 'file';
  }

  get readOnly(): boolean {
    return false;
  }

  get path(): string {
    return this.scratch.file;
  }

  get size(): number {
    return this.scratch.diskBytes;
  }

  read(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    return this.scratch.read(buf, bufOffset, length, offset);
  }

  write(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    return this.scratch.write(buf, bufOffset, length, offset);
  }

  /** Zeroes are written to scratch slots: never fast (`fastOnly` fails with NOT_SUPPORTED, as the NBD FAST_ZERO flag asks). */
  async zero(offset: number, length: number, _mayDeallocate: boolean, fastOnly: boolean): Promise<void> {
    if (fastOnly) throw new FerryError('NOT_SUPPORTED', 'the test image cannot zero a range quickly');
    return this.scratch.zero(offset, length);
  }

  trim(offset: number, length: number): Promise<void> {
    return this.scratch.zero(offset, length);
  }

  sync(): Promise<void> {
    return this.scratch.sync();
  }

  /** Everything reads as data: the image mixes three sources and tracks no holes. */
  extents(offset: number, length: number): Extent[] {
    return [{ offset, length, flags: 0 }];
  }

  prefetch(): void {}

  stillAtPath(): boolean {
    return true;
  }

  async close(): Promise<void> {}
}
