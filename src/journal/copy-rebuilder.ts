// The online rebuild of a failed staging copy (`ferry staging repair`) while writes go on:
// from the next batch on the new copy receives every write (and every checkpoint); then
// the live part of the ring is copied over from a healthy copy; once synced it is healthy
// again. The header area is taken in the journal's checkpoint chain, so it holds the newest
// durable checkpoint and no checkpoint can pass between it and the copy joining; while any
// rebuild runs the journal's checkpoints do not move the tail, so no record is written into
// the part being copied (J2); the last rebuild to end runs the checkpoint that frees it.
import assert from 'node:assert/strict';
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import type { Store } from '../disk/store.js';
import { HEADER_AREA_BYTES } from './format.js';
import type { CopySet } from './copy-set.js';

/** What a rebuild needs from its journal. */
export interface RebuildHost {
  /** The staging area's failure, once it is lost. */
  failure(): FerryError | null;
  /** Runs `fn` in the checkpoint chain (no checkpoint runs meanwhile). */
  inCheckpointChain(fn: () => Promise<void>): Promise<void>;
  /** Runs `fn` while no batch is being written and none can start (positions and the head hold still). */
  underBatchLock(fn: () => Promise<void>): Promise<void>;
  /** The live part of the ring: from the tail to the head, and whether no record is live. */
  liveRing(): { from: number; to: number; empty: boolean };
  checkpoint(): Promise<void>;
  repaired(path: string): void;
}

export class CopyRebuilder {
  /** Rebuilds copying the ring: while any runs, checkpoints do not move the tail (J2). */
  private running = 0;

  constructor(
    private readonly copySet: CopySet,
    private readonly areaBytes: number,
    private readonly ringBytes: number,
    private readonly log: Logger,
    private readonly host: RebuildHost,
  ) {}

  /** Whether any rebuild is copying the ring (the tail must hold still). */
  get busy(): boolean {
    return this.running > 0;
  }

  async rebuild(index: number, store: Store): Promise<void> {
    const c = this.copySet.copies[index];
    assert.ok(c, `no staging copy ${index}`);
    if (c.healthy) throw new FerryError('BAD_REQUEST', `staging copy ${c.store.path} is healthy; nothing to repair`);
    if (store.size < this.areaBytes) throw new FerryError('STAGING_TOO_SMALL', `${store.path} is smaller than the staging area (${this.areaBytes} bytes)`);
    let source = this.copySet.firstHealthy();
    if (!source) throw this.host.failure() ?? new FerryError('STAGING_FAILED', 'no healthy copy to rebuild from');
    this.running++;
    try {
      let from = 0;
      let to = 0;
      let empty = true;
      await this.host.inCheckpointChain(async () => {
        source = this.copySet.firstHealthy();
        if (!source) throw this.host.failure() ?? new FerryError('STAGING_FAILED', 'no healthy copy to rebuild from');
        const header = Buffer.alloc(HEADER_AREA_BYTES);
        await source.store.read(header, 0, HEADER_AREA_BYTES, 0);
        await this.host.underBatchLock(async () => {
          await store.write(header, 0, HEADER_AREA_BYTES, 0);
          void c.store.close().catch(() => undefined);
          c.store = store;
          c.rebuilding = true;
          c.problem = 'rebuilding';
          ({ from, to, empty } = this.host.liveRing());
        });
      });
      const ranges: Array<[number, number]> = empty ? [] : to > from ? [[from, to]] : [[from, this.ringBytes], [0, to]];
      const chunk = Buffer.allocUnsafe(4 * 1024 * 1024);
      for (const [a, b] of ranges) {
        for (let p = a; p < b; p += chunk.length) {
          const n = Math.min(chunk.length, b - p);
          await source.store.read(chunk, 0, n, HEADER_AREA_BYTES + p);
          await store.write(chunk, 0, n, HEADER_AREA_BYTES + p);
        }
      }
      await store.sync();
      if (!c.rebuilding) throw new FerryError('STAGING_FAILED', `${store.path} failed while it was being rebuilt: ${c.problem}`);
      c.rebuilding = false;
      c.healthy = true;
      delete c.problem;
      this.log.warn({ copy: store.path }, 'staging copy rebuilt: two healthy copies again');
      this.host.repaired(store.path);
    } finally {
      this.running--;
      // The space consumers finished with during the copy is freed now (the tail moves here).
      if (this.running === 0 && !this.host.failure()) await this.host.checkpoint().catch(() => undefined);
    }
  }
}
