// The storage contracts the layers above the disk layer program against. BlockDevice
// implements both; src/testing/ has fault-injecting implementations (torn and lost
// writes, bit flips, failing copies) for crash and power-loss tests.
import type { BlockDevice } from './block-device.js';

/** Byte-addressed storage with a durability barrier: what a staging area copy needs. */
export interface Store {
  readonly path: string;
  readonly size: number;
  read(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void>;
  write(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void>;
  /**
   * write() the store may take inline when it is small and the device answers quickly (no
   * thread-pool hop): for data made durable by a later sync(). Optional; see writeSoon().
   */
  writeSoon?(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void>;
  /** Makes every write completed before the call durable. */
  sync(): Promise<void>;
  /** False once the path no longer names the open file (removed or replaced underneath us). */
  stillAtPath(): boolean;
  close(): Promise<void>;
}

/** A write through the store's writeSoon() when it has one (BlockDevice), else its write(). */
export function writeSoon(store: Store, buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
  return store.writeSoon ? store.writeSoon(buf, bufOffset, length, offset) : store.write(buf, bufOffset, length, offset);
}

/** Everything a volume needs from its primary disk. */
export type DiskStore = Store & Pick<BlockDevice, 'kind' | 'readOnly' | 'trim' | 'zero' | 'extents' | 'prefetch'>;
