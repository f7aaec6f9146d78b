// The mirror site's disk as the sync engine sees it: a DiskStore whose writes, zeroes and
// syncs are requests on the replication link (remote-stream.ts), in order with the
// records shipped on it. The mirror site writes a chunk only after applying every record
// it received before the chunk (R6). Requests survive a dropped link: they are sent again
// on the next one (every op is idempotent), so a link outage pauses the sync, no more.
// A chunk's write is a round trip that waits its turn at the mirror site, so the sync engine
// keeps more chunks in flight than for a local target (syncChunksInFlightMax); the written
// buffer is sent as it is, not copied (the engine does not touch it until the write returns).
import type { Extent } from '../disk/block-device.js';
import type { DiskStore } from '../disk/store.js';
import { FerryError } from '../errors.js';
import type { SyncTargetHints } from '../mirror/sync-engine.js';
import type { RemoteStream } from './remote-stream.js';

/** Sync chunks in flight on one link: each is a 4 MiB buffer at this site until the mirror site answers. */
export const REMOTE_SYNC_CHUNKS_IN_FLIGHT_MAX = 8;

export class RemoteStore implements DiskStore, SyncTargetHints {
  readonly kind = 'file' as const;
  readonly readOnly = false;
  readonly syncChunksInFlightMax = REMOTE_SYNC_CHUNKS_IN_FLIGHT_MAX;

  constructor(
    private readonly stream: RemoteStream,
    readonly path: string,
    readonly size: number,
  ) {}

  async read(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    const reply = await this.stream.request({ op: 'read', offset, length });
    if (reply.payload.length !== length) throw new FerryError('REPL_PROTOCOL', `read of ${length} bytes returned ${reply.payload.length}`);
    reply.payload.copy(buf, bufOffset);
  }

  async write(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    await this.stream.request({ op: 'write', offset, length }, buf.subarray(bufOffset, bufOffset + length));
  }

  async zero(offset: number, length: number, _mayDeallocate: boolean, _fua: boolean): Promise<void> {
    await this.stream.request({ op: 'zero', offset, length });
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.stream.request({ op: 'zero', offset, length });
  }

  async sync(): Promise<void> {
    await this.stream.request({ op: 'sync' });
  }

  extents(offset: number, length: number): Extent[] {
    return [{ offset, length, flags: 0 }];
  }

  prefetch(): void {}

  stillAtPath(): boolean {
    return true;
  }

  async close(): Promise<void> {}
}
