// The chunks a mirror's sync engine is copying right now, and the rule that makes the copy
// and the record stream converge: while a chunk is being copied (read, then written), no
// record touching it is applied to the mirror or shipped to it (R6). Created with the mirror,
// before its stream: the sync engine holds chunks here, and the stream (a committer for a
// local target, the remote stream for a peer) asks here before each record.
/** The unit of a mirror's sync: the engine copies, and holds, one chunk at a time per worker. */
export const SYNC_CHUNK_BYTES = 4 * 1024 * 1024;

export class ChunkHolds {
  private readonly held = new Map<number, Promise<void>>();

  get size(): number {
    return this.held.size;
  }

  /** Holds `chunk` until the returned function is called. */
  hold(chunk: number): () => void {
    let release!: () => void;
    this.held.set(chunk, new Promise<void>((r) => (release = r)));
    return () => {
      this.held.delete(chunk);
      release();
    };
  }

  /** For the mirror's stream: null when a record over [offset, offset+length) may go now, else when it may. */
  admit(offset: number, length: number): Promise<void> | null {
    if (this.held.size === 0 || length === 0) return null;
    const first = Math.floor(offset / SYNC_CHUNK_BYTES);
    const last = Math.floor((offset + length - 1) / SYNC_CHUNK_BYTES);
    const waits: Promise<void>[] = [];
    for (const [chunk, p] of this.held) if (chunk >= first && chunk <= last) waits.push(p);
    return waits.length ? Promise.all(waits).then(() => undefined) : null;
  }
}
