// The mirror layer owns mirrors: the sync engine that copies a disk onto its mirror
// while clients write, the mirror's record stream (a staging consumer), status, verify.
//
// The sync engine copies the disk as clients see it (overlay over primary) onto the
// target, chunk by chunk, while the mirror's committer applies every record written
// since the mirror was created. One rule makes the two converge: while a chunk is being
// copied (read, then written), the mirror committer applies no record touching it.
// Then each chunk ends as the copy (some state at or after the committer's position)
// followed by every later record in order, which is the disk's newest state.
// Holes and all-zero chunks are never copied as data: skipped on a fresh target,
// zeroed (fallocate or BLKZEROOUT) on a used one. In checksum mode, a chunk is read on
// both sides and only the parts that differ are written.
// Throughput: each worker reuses its chunk buffer (a new 4 MiB buffer per chunk made the
// garbage collector the largest cost of a sync), and checkpoints (sync the target, then
// record the cursor taken before that sync) run in the background, one at a time, while
// the workers go on copying. A target far away (a remote mirror: every chunk makes a round
// trip over the replication link and waits its turn at the mirror site) asks for more
// chunks in flight (SyncTargetHints), so the link never idles while chunks are read and sent.
// Page cache: a sync passes over the disk once, so it leaves the cache as it found it. A chunk
// that had at most an eighth of its pages cached before the engine came near it is released
// after its read: each chunk is asked (cachestat) coldLeadChunks ahead of the one being read,
// before the engine's reads and their read-ahead reach it, one bit per chunk kept. The target's
// pages are released once a checkpoint made them durable. Kept, they would crowd out the clients' pages,
// and being read ahead and written in large runs they are large folios, which make every
// small write the clients send afterwards dearer (docs/BENCHMARKS.md: the group row measured
// other CPU 0.66 cores and twice ferryd's CPU per write with them).
import assert from 'node:assert';
import type { Logger } from 'pino';
import type { Extent } from '../disk/block-device.js';
import type { DiskStore } from '../disk/store.js';
import { ChunkHolds, SYNC_CHUNK_BYTES } from './chunk-holds.js';

/** The page size cachedPages counts in. */
const pageBytes = 4096;
/** How far ahead of the chunk being read the cache is asked about (beyond any read-ahead: 256 MiB). */
const coldLeadChunks = 64;

export type SyncMode = 'full' | 'checksum';

/** What the engine reads: the disk as clients see it. */
export interface SyncSource {
  readonly size: number;
  read(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void>;
  extents(offset: number, length: number, extentsMax: number): Extent[];
  /** The page-cache hints of the disk under it (Store.cachedPages/dropCache); a source without them leaves the cache alone. */
  cachedPages?(offset: number, length: number): number;
  dropCache?(offset: number, length: number): void;
}

export interface SyncOptions {
  mode: SyncMode;
  /** The target is known to read as zeroes (a file Ferry just created): holes need no writes. */
  targetIsZero: boolean;
  /** Bytes below this were synced before (durably): resume from here. */
  startCursor: number;
  /** Called after the target is synced, with the new durable cursor. */
  onCheckpoint: (cursor: number) => void;
  /** A resync: only chunks for which this holds are copied (the dirty regions of a bitmap). */
  only?: (chunk: number) => boolean;
  /**
   * A delta resync (a failback: replication/divergence-map.ts): within each chunk only the
   * granules for which `has` holds are read and written; a chunk with none is skipped.
   * `bytes` divides SYNC_CHUNK_BYTES.
   */
  granules?: { bytes: number; has(granule: number): boolean };
  /** Called once a chunk is written on the target (durable at the next checkpoint). */
  onChunkCopied?: (chunk: number) => void;
  /** Where the chunks being copied are held against the mirror's stream (default: held nowhere else). */
  holds?: ChunkHolds;
  log: Logger;
}

/** What a target may tell the engine about itself (optional members; a plain store has none). */
export interface SyncTargetHints {
  /** Chunks copied at once (each holds a SYNC_CHUNK_BYTES buffer until its write is answered). */
  readonly syncChunksInFlightMax?: number;
}

export { SYNC_CHUNK_BYTES };
/** For a local target. */
const chunksInFlightMax = 4;
/** The most any target may ask for: bounds the engine's memory (64 MiB of chunk buffers). */
export const SYNC_CHUNKS_IN_FLIGHT_LIMIT = 16;
const compareBlockBytes = 64 * 1024;
/** A checkpoint after this many bytes written to the target (16 chunks)... */
const checkpointEveryBytes = 16 * SYNC_CHUNK_BYTES;
/** ...or this long after the last one, so that a run of holes (nothing written, nothing to sync) still moves the saved cursor. */
const checkpointEveryMs = 1000;

/** A worker's buffers, reused for every chunk it copies. */
interface ChunkBuffers {
  ours: Buffer;
  /** The target's copy (checksum mode only). */
  theirs: Buffer | null;
}

export class SyncEngine {
  private readonly holds: ChunkHolds;
  private cursor: number;
  private stopped = false;
  private running: Promise<void> | null = null;
  private checkpointing: Promise<void> = Promise.resolve();
  private checkpointRunning = false;
  private checkpointWanted = false;
  private checkpointError: Error | null = null;
  private readonly startedAt = Date.now();
  private readonly startedCursor: number;
  /** One bit per chunk hardly cached before the engine came near it: its pages are released after its read (null: the source cannot tell). */
  private cold: Uint8Array | null;
  /** Chunks below this were asked (from the cursor at the start on). */
  private coldAskedTo: number;
  /** The target's pages below this were released (after the checkpoint that made them durable). */
  private releasedTo: number;
  copiedBytes = 0;
  skippedBytes = 0;
  done = false;
  error: string | null = null;

  constructor(
    private readonly source: SyncSource,
    private readonly target: DiskStore,
    private readonly opts: SyncOptions,
  ) {
    this.cursor = Math.min(opts.startCursor, source.size);
    this.startedCursor = this.cursor;
    this.releasedTo = this.cursor;
    this.cold = source.cachedPages ? new Uint8Array(Math.ceil(Math.ceil(source.size / SYNC_CHUNK_BYTES) / 8)) : null;
    this.coldAskedTo = Math.floor(this.cursor / SYNC_CHUNK_BYTES);
    this.holds = opts.holds ?? new ChunkHolds();
    if (opts.granules) assert.ok(opts.granules.bytes > 0 && SYNC_CHUNK_BYTES % opts.granules.bytes === 0, 'granules divide a sync chunk');
  }

  /** The granule runs of a chunk to copy: the whole chunk without a granule filter. */
  private runsOf(chunk: number): Array<{ offset: number; length: number }> {
    const start = chunk * SYNC_CHUNK_BYTES;
    const end = Math.min(this.source.size, start + SYNC_CHUNK_BYTES);
    const g = this.opts.granules;
    if (!g) return [{ offset: start, length: end - start }];
    const runs: Array<{ offset: number; length: number }> = [];
    for (let at = start; at < end; at += g.bytes) {
      if (!g.has(at / g.bytes)) continue;
      const len = Math.min(g.bytes, end - at);
      const last = runs[runs.length - 1];
      if (last && last.offset + last.length === at) last.length += len;
      else runs.push({ offset: at, length: len });
    }
    return runs;
  }

  /** Bytes of the disk already synced (durable or in progress below the cursor). */
  get position(): number {
    return this.cursor;
  }

  get progress(): number {
    return this.source.size === 0 ? 1 : this.done ? 1 : this.cursor / this.source.size;
  }

  /** Bytes per second of disk covered since this run started. */
  get rateBytesPerSec(): number {
    const s = (Date.now() - this.startedAt) / 1000;
    return s > 0 ? (this.cursor - this.startedCursor) / s : 0;
  }

  get etaSeconds(): number | null {
    if (this.done) return 0;
    const r = this.rateBytesPerSec;
    return r > 0 ? (this.source.size - this.cursor) / r : null;
  }

  start(): Promise<void> {
    this.askCold(Math.floor(this.cursor / SYNC_CHUNK_BYTES) + coldLeadChunks);
    this.running ??= this.run().catch((err) => {
      this.error = (err as Error).message;
      this.opts.log.error({ err: this.error }, 'mirror sync failed; it resumes from its checkpoint when restarted');
    });
    return this.running;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.running;
  }

  private async run(): Promise<void> {
    const size = this.source.size;
    const chunks = Math.ceil(size / SYNC_CHUNK_BYTES);
    let next = Math.floor(this.cursor / SYNC_CHUNK_BYTES);
    const finished = new Set<number>();
    let lowest = next; // every chunk below this one is finished
    let copiedAtCheckpoint = this.copiedBytes;
    let checkpointAtMs = Date.now();
    let failure: Error | null = null;
    const worker = async (): Promise<void> => {
      // One buffer per worker for the whole run: a fresh 4 MiB buffer per chunk is 4 MiB of
      // external memory each time, and the garbage collection it triggers costs more than the copy.
      const bufs: ChunkBuffers = { ours: Buffer.allocUnsafeSlow(SYNC_CHUNK_BYTES), theirs: null };
      try {
        while (!this.stopped && failure === null && this.checkpointError === null && next < chunks) {
          const chunk = next++;
          const runs = this.opts.only && !this.opts.only(chunk) ? [] : this.runsOf(chunk);
          if (runs.length > 0) {
            if (this.opts.granules) await this.copyRuns(chunk, runs, bufs);
            else await this.copyChunk(chunk, bufs);
            this.opts.onChunkCopied?.(chunk);
          }
          finished.add(chunk);
          while (finished.has(lowest)) finished.delete(lowest++);
          this.cursor = Math.min(size, lowest * SYNC_CHUNK_BYTES);
          // Each checkpoint syncs the target and writes the metadata store: for what was written,
          // not once per chunk of holes (an empty 100 GiB disk is 25,600 chunks).
          if (this.copiedBytes - copiedAtCheckpoint >= checkpointEveryBytes || Date.now() - checkpointAtMs >= checkpointEveryMs) {
            copiedAtCheckpoint = this.copiedBytes;
            checkpointAtMs = Date.now();
            // In the background: the workers keep copying while the target syncs.
            this.checkpointSoon();
          }
        }
      } catch (err) {
        // The other workers stop after their current chunk; the cursor stays below this one.
        failure ??= err as Error;
      }
    };
    const workers = (this.target as DiskStore & SyncTargetHints).syncChunksInFlightMax ?? chunksInFlightMax;
    assert.ok(Number.isSafeInteger(workers) && workers >= 1 && workers <= SYNC_CHUNKS_IN_FLIGHT_LIMIT, 'chunks in flight are bounded');
    await Promise.all(Array.from({ length: workers }, worker));
    await this.checkpointing;
    if (failure !== null) throw failure;
    if (this.checkpointError !== null) throw this.checkpointError;
    if (this.stopped) return;
    await this.checkpoint();
    this.done = true;
    this.opts.log.info({ copiedBytes: this.copiedBytes, skippedBytes: this.skippedBytes, seconds: (Date.now() - this.startedAt) / 1000 }, 'mirror sync complete');
  }

  /**
   * Starts a checkpoint unless one is running; one asked for while another runs starts when
   * that one ends (its cursor is taken then). Checkpoints never overlap, so cursors only grow.
   */
  private checkpointSoon(): void {
    if (this.checkpointRunning) {
      this.checkpointWanted = true;
      return;
    }
    this.checkpointRunning = true;
    const loop = async (): Promise<void> => {
      try {
        do {
          this.checkpointWanted = false;
          await this.checkpoint();
        } while (this.checkpointWanted && !this.stopped);
      } catch (err) {
        this.checkpointError = err as Error;
      } finally {
        this.checkpointRunning = false;
      }
    };
    this.checkpointing = loop();
  }

  /**
   * Syncs the target, then records the cursor taken before the sync: every chunk below it
   * was written completely before the sync began, so the sync made it durable.
   */
  private async checkpoint(): Promise<void> {
    const cursor = this.cursor;
    await this.target.sync();
    this.opts.onCheckpoint(cursor);
    // What the sync made durable is not needed in the cache (clean now: it leaves at once).
    if (cursor > this.releasedTo) this.target.dropCache?.(this.releasedTo, cursor - this.releasedTo);
    this.releasedTo = Math.max(this.releasedTo, cursor);
  }

  private async copyChunk(chunk: number, bufs: ChunkBuffers): Promise<void> {
    const offset = chunk * SYNC_CHUNK_BYTES;
    const length = Math.min(SYNC_CHUNK_BYTES, this.source.size - offset);
    const extents = this.source.extents(offset, length, 1024);
    const allHole = extents.every((e) => e.flags & 2) && extents.reduce((n, e) => n + e.length, 0) >= length;
    if (allHole && this.opts.targetIsZero) {
      // Nothing to write, so nothing to race with: no lock needed.
      this.skippedBytes += length;
      return;
    }
    const release = this.holds.hold(chunk);
    try {
      await this.copyRange(offset, length, bufs);
    } finally {
      release();
    }
  }

  /** Copies a range within one chunk (its chunk held by the caller): read, its pages dropped after if it was cold, then written. */
  private async copyRange(offset: number, length: number, bufs: ChunkBuffers): Promise<void> {
    const buf = bufs.ours.subarray(0, length);
    const cold = this.isCold(offset);
    await this.source.read(buf, 0, length, offset);
    if (cold) this.source.dropCache?.(offset, length);
    if (this.opts.mode === 'checksum') await this.writeDiffering(buf, offset, (bufs.theirs ??= Buffer.allocUnsafeSlow(SYNC_CHUNK_BYTES)).subarray(0, length));
    else await this.writeData(buf, offset);
  }

  /** Whether the range was hardly cached before the sync read it (see the head of this file); unknown: no. */
  private isCold(offset: number): boolean {
    const chunk = Math.floor(offset / SYNC_CHUNK_BYTES);
    this.askCold(chunk + coldLeadChunks);
    return this.cold !== null && (this.cold[chunk >> 3]! & (1 << (chunk & 7))) !== 0;
  }

  /** Asks the source which chunks up to `last` are hardly cached (see the head of this file); stops for good where it cannot tell. */
  private askCold(last: number): void {
    const cold = this.cold;
    if (!cold || !this.source.cachedPages) return;
    const end = Math.min(last + 1, Math.ceil(this.source.size / SYNC_CHUNK_BYTES));
    for (; this.coldAskedTo < end; this.coldAskedTo++) {
      const c = this.coldAskedTo;
      const offset = c * SYNC_CHUNK_BYTES;
      const length = Math.min(SYNC_CHUNK_BYTES, this.source.size - offset);
      const pages = this.source.cachedPages(offset, length);
      if (pages < 0) {
        this.cold = null;
        return;
      }
      if (pages * pageBytes <= length / 8) cold[c >> 3]! |= 1 << (c & 7);
    }
  }

  /** A delta resync's chunk: only its granule runs are read and written (held as a whole chunk). */
  private async copyRuns(chunk: number, runs: Array<{ offset: number; length: number }>, bufs: ChunkBuffers): Promise<void> {
    const release = this.holds.hold(chunk);
    try {
      for (const r of runs) {
        assert.ok(Math.floor(r.offset / SYNC_CHUNK_BYTES) === chunk && r.offset + r.length <= (chunk + 1) * SYNC_CHUNK_BYTES, 'a granule run stays within its chunk');
        await this.copyRange(r.offset, r.length, bufs);
      }
    } finally {
      release();
    }
  }

  /** Writes the chunk, turning all-zero blocks into zeroed ranges (or nothing, on a zero target). */
  private async writeData(buf: Buffer, offset: number): Promise<void> {
    for (let at = 0; at < buf.length; ) {
      const n = Math.min(compareBlockBytes, buf.length - at);
      const zero = isZero(buf, at, n);
      let end = at + n;
      while (end < buf.length && isZero(buf, end, Math.min(compareBlockBytes, buf.length - end)) === zero) end += Math.min(compareBlockBytes, buf.length - end);
      const run = end - at;
      if (zero) {
        if (!this.opts.targetIsZero) await this.target.zero(offset + at, run, true, false);
        this.skippedBytes += run;
      } else {
        await this.target.write(buf, at, run, offset + at);
        this.copiedBytes += run;
      }
      at = end;
    }
  }

  /** Reads the target's copy of the chunk and writes only the blocks that differ. */
  private async writeDiffering(buf: Buffer, offset: number, theirs: Buffer): Promise<void> {
    await this.target.read(theirs, 0, buf.length, offset);
    for (let at = 0; at < buf.length; at += compareBlockBytes) {
      const n = Math.min(compareBlockBytes, buf.length - at);
      if (buf.compare(theirs, at, at + n, at, at + n) === 0) {
        this.skippedBytes += n;
        continue;
      }
      await this.target.write(buf, at, n, offset + at);
      this.copiedBytes += n;
    }
  }
}

const zeroBlock = Buffer.alloc(compareBlockBytes);

function isZero(buf: Buffer, at: number, length: number): boolean {
  return buf.compare(zeroBlock, 0, length, at, at + length) === 0;
}
