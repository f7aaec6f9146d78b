// A device that is gone: every operation fails with the error it was made with. What a
// consistency group's member serves when its group's data path could not be rebuilt after a
// membership change (group-control.ts): its clients get an error, never data that bypassed
// the group's staging area, and never a request that waits forever.
import type { Extent } from './block-device.js';
import type { DiskStore } from './store.js';
import type { FerryError } from '../errors.js';

export class FailedStore implements DiskStore {
  readonly kind = 'file' as const;
  readonly readOnly = false;

  constructor(
    readonly path: string,
    readonly size: number,
    private readonly error: FerryError,
  ) {}

  read(): Promise<void> {
    return Promise.reject(this.error);
  }

  write(): Promise<void> {
    return Promise.reject(this.error);
  }

  trim(): Promise<void> {
    return Promise.reject(this.error);
  }

  zero(): Promise<void> {
    return Promise.reject(this.error);
  }

  sync(): Promise<void> {
    return Promise.reject(this.error);
  }

  extents(offset: number, length: number): Extent[] {
    return [{ offset, length, flags: 0 }];
  }

  prefetch(): void {}

  stillAtPath(): boolean {
    return false;
  }

  async close(): Promise<void> {}
}
