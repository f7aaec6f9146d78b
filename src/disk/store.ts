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
  /**
   * Writes each buffer whole at its offset, in order (a later one over an earlier one wins),
   * in one go: what a journal consumer applies at once. Optional; see writeInOrder().
   */
  writeBatch?(buffers: Buffer[], offsets: number[]): Promise<void>;
  /**
   * A write durable when it resolves, where the store does that cheaper than write() then
   * sync() (a consistency group member's window: one staged record made durable with it).
   * Optional: a FUA write is a write and a sync without it.
   */
  writeFua?(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void>;
  /**
   * Page-cache hints for a one-off pass over the store (a mirror's sync): `cachedPages` counts the
   * range's pages the page cache holds now (-1: unknown), `dropCache` says they are not needed
   * again (clean ones leave the cache, dirty ones are written back first). Advisory: a store
   * without a page cache of its own has neither.
   */
  cachedPages?(offset: number, length: number): number;
  dropCache?(offset: number, length: number): void;
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

/** Writes in flight at once when a store has no writeBatch: enough for a device, few enough to leave the thread pool to clients. */
const fallbackWritesInFlightMax = 8;

/**
 * Writes each buffer at its offset so that, where two overlap, the later one lands last:
 * through the store's writeBatch() when it has one (one thread-pool job), else with up to
 * eight writes at once, a write waiting for any earlier one in flight that it overlaps.
 */
export async function writeInOrder(store: Store, buffers: Buffer[], offsets: number[]): Promise<void> {
  if (buffers.length === 0) return;
  if (store.writeBatch) return store.writeBatch(buffers, offsets);
  const inflight = new Map<number, Promise<void>>();
  const overlaps = (i: number, j: number): boolean => offsets[i]! < offsets[j]! + buffers[j]!.length && offsets[j]! < offsets[i]! + buffers[i]!.length;
  let failure: unknown = null;
  for (let i = 0; i < buffers.length && failure === null; i++) {
    for (;;) {
      let blocked = inflight.size >= fallbackWritesInFlightMax;
      if (!blocked) for (const j of inflight.keys()) if (overlaps(i, j)) blocked = true;
      if (!blocked) break;
      await Promise.race(inflight.values());
    }
    const b = buffers[i]!;
    inflight.set(
      i,
      writeSoon(store, b, 0, b.length, offsets[i]!).then(
        () => void inflight.delete(i),
        (err) => {
          inflight.delete(i);
          failure ??= err;
        },
      ),
    );
  }
  await Promise.all(inflight.values());
  if (failure !== null) throw failure;
}

/** Everything a volume needs from its primary disk. */
export type DiskStore = Store &
  Pick<BlockDevice, 'kind' | 'readOnly' | 'trim' | 'zero' | 'extents' | 'prefetch'> & {
    /**
     * A client's write handed on, callback style, to another volume's data path (a consistency
     * group member's window onto its group): `done` once that path acknowledges it (durable
     * when `fua`). `data` is the payload from offset 0. Every error goes to `done`, none is
     * thrown. Optional: it spares the member's volume its own promise chain (volume.ts writeFrom).
     */
    forwardWrite?(data: Buffer, length: number, offset: number, fua: boolean, done: (err: unknown) => void): void;
  };
