// The regions a disk changed since the two sites of its mirror relationship diverged (the
// first half of a delta failback, issue 14): one bit per 64 KiB granule of the disk (a
// 4 GiB disk needs 8 KiB; the bound is size / DIVERGENCE_GRANULE_BYTES bits), kept in
// `<data>/bitmaps/DISK.diverged` with the dirty-region bitmap's file format and atomic
// writes (mirror/dirty-map.ts). A failback resyncs the union of both sides' maps.
//
// What each side records (dr-control.ts decides when a map exists):
//   promoted site   every client write (data, zero, trim) after the promote. The records it had
//                   received from the old primary but not applied are not marked: a promote
//                   applies every record received before it ends the replica (replica-control.ts),
//                   and the old primary counts every record it staged that was never acknowledged
//                   (so a record received here and not acknowledged is in the other side's map).
//   old primary     when it learns it is fenced or in split brain: every record staged after its
//                   mirror consumer's position (the replica never acknowledged it), every region of
//                   its mirror's dirty bitmap if it fell back (4 MiB bits, each marks its granules),
//                   and from then on every client write it takes (split brain).
//
// Invariants (asserted where a write is admitted and where a map is loaded):
//   D1  a granule a client write touches is marked, durably, before the write reaches the
//       disk or the staging area: a write acknowledged after divergence is never missing.
//   D2  bits are only ever set; the map goes as a whole (the disk becomes its peer's replica
//       and the resync that copied the union completed, or the disk is removed).
//   D3  the file is always a whole, checked bitmap of this disk's size and granule (the
//       dirty map's temporary file, sync, rename, directory sync).
// Crash rule: a crash after a mark is persisted and before its write leaves a granule marked
// that was never written: more is resynced, never less. A map that cannot be read (damaged,
// or missing where one must exist) is replaced by one with every granule marked (a resync of
// the whole disk), never by an empty one.
import assert from 'node:assert';
import fs from 'node:fs';
import path from 'node:path';
import type { Journal } from '../journal/journal.js';
import { readRecords } from '../journal/record-cursor.js';
import { DirtyMap } from '../mirror/dirty-map.js';
import { FerryError } from '../errors.js';
import { MIRROR_CONSUMER } from '../volume/consumer.js';

export const DIVERGENCE_GRANULE_BYTES = 64 * 1024;

/** The scan of unacknowledged records reads this much at a time. */
const scanRecordsMax = 512;
const scanBytesMax = 8 * 1024 * 1024;

export interface ChangedRun {
  offset: number;
  length: number;
}

export class DivergenceMap {
  private constructor(
    private readonly bits: DirtyMap,
    readonly size: number,
  ) {}

  /** A new map with nothing marked, durable when this resolves (replacing any file there). */
  static async create(file: string, size: number): Promise<DivergenceMap> {
    const m = new DivergenceMap(DirtyMap.create(file, size, DIVERGENCE_GRANULE_BYTES), size);
    await m.bits.persist();
    return m;
  }

  /** The map on disk; null when there is none; a damaged one is replaced by a full map (crash rule). */
  static async open(file: string, size: number, onDamaged: (err: Error) => void): Promise<DivergenceMap | null> {
    let bits: DirtyMap | null;
    try {
      bits = DirtyMap.load(file, size, DIVERGENCE_GRANULE_BYTES);
    } catch (err) {
      onDamaged(err as Error);
      return DivergenceMap.full(file, size);
    }
    if (!bits) return null;
    assert.equal(bits.chunks, Math.ceil(size / DIVERGENCE_GRANULE_BYTES), 'D3: a map covers its disk at its granule');
    return new DivergenceMap(bits, size);
  }

  /** A map with every granule marked, durable (what a missing or damaged map stands for). */
  static async full(file: string, size: number): Promise<DivergenceMap> {
    const m = new DivergenceMap(DirtyMap.create(file, size, DIVERGENCE_GRANULE_BYTES), size);
    m.bits.mark(0, size);
    await m.bits.persist();
    return m;
  }

  static exists(file: string): boolean {
    return fs.existsSync(file);
  }

  get file(): string {
    return this.bits.file;
  }

  get granules(): number {
    return this.bits.chunks;
  }

  get changedGranules(): number {
    return this.bits.dirtyChunks;
  }

  /** Bytes of the granules marked (the last granule counted whole). */
  get changedBytes(): number {
    return this.bits.dirtyBytes;
  }

  has(granule: number): boolean {
    return this.bits.has(granule);
  }

  /**
   * A client write is about to change [offset, offset+length): null when its granules are
   * already durable in the map, else a promise that resolves once they are (D1).
   */
  admit(offset: number, length: number): Promise<void> | null {
    if (!this.bits.mark(offset, Math.max(1, length))) return this.bits.clean ? null : this.bits.persist();
    return this.bits.persist().then(() => this.assertMarked(offset, length));
  }

  /** Marks a range (an unacknowledged record, a region of a dirty bitmap); durable at persist(). */
  mark(offset: number, length: number): void {
    this.bits.mark(offset, Math.max(1, length));
  }

  persist(): Promise<void> {
    return this.bits.persist();
  }

  /** Marks every granule the other map marked (the union a failback resyncs). */
  union(other: DivergenceMap): void {
    assert.equal(other.granules, this.granules, 'D3: maps of one disk have the same granules');
    for (let g = 0; g < other.granules; g++) if (other.has(g)) this.bits.markChunk(g);
  }

  /**
   * The bits as they are now, one per granule, least significant bit first: what a site sends
   * its peer at a reconnect (control/reconnect.ts), and what unionBits() takes.
   */
  snapshot(): Buffer {
    const out = Buffer.alloc(Math.ceil(this.granules / 8));
    for (let g = 0; g < this.granules; g++) if (this.has(g)) out[g >> 3]! |= 1 << (g & 7);
    return out;
  }

  /** Marks every granule set in a peer's snapshot of the same disk (not persisted); how many it added. */
  unionBits(bits: Buffer): number {
    if (bits.length !== Math.ceil(this.granules / 8)) {
      throw new FerryError('BAD_REQUEST', `a map of ${bits.length * 8} granules does not cover this disk's ${this.granules} (D3: both sides track one disk at ${DIVERGENCE_GRANULE_BYTES} bytes)`);
    }
    let added = 0;
    for (let i = 0; i < bits.length; i++) {
      const byte = bits[i]!;
      if (byte === 0) continue;
      for (let b = 0; b < 8; b++) {
        const g = i * 8 + b;
        if ((byte & (1 << b)) === 0 || g >= this.granules) continue;
        if (!this.has(g)) {
          this.bits.markChunk(g);
          added++;
        }
      }
    }
    return added;
  }

  /** The marked granules as runs of bytes, in order, clipped to the disk's size. */
  runs(): ChangedRun[] {
    const out: ChangedRun[] = [];
    for (let g = 0; g < this.granules; g++) {
      if (!this.has(g)) continue;
      const offset = g * DIVERGENCE_GRANULE_BYTES;
      const end = Math.min(this.size, offset + DIVERGENCE_GRANULE_BYTES);
      const last = out[out.length - 1];
      if (last && last.offset + last.length === offset) last.length = end - last.offset;
      else out.push({ offset, length: end - offset });
    }
    return out;
  }

  /** The map goes as a whole (D2). */
  remove(): void {
    this.bits.remove();
  }

  private assertMarked(offset: number, length: number): void {
    const first = Math.floor(offset / DIVERGENCE_GRANULE_BYTES);
    const last = Math.floor((offset + Math.max(1, length) - 1) / DIVERGENCE_GRANULE_BYTES);
    for (let g = first; g <= Math.min(last, this.granules - 1); g++) assert.ok(this.has(g), 'D1: a write is marked in the divergence map before it is taken');
    assert.ok(this.bits.clean || this.bits.dirtyChunks > 0, 'D1: the mark is durable before the write is taken');
  }
}

/**
 * The base of a divergence: the last record of the old primary's order the promoted disk holds
 * (every record up to it applied there, identical on both sides), kept beside the map in
 * `DISK.diverged.seq` (written atomically). The promoted site writes it before its promote
 * (only when the promote took the newest image), and sends it with its refusals; the old
 * primary keeps what it was sent. None known: the old primary counts from its mirror
 * consumer's durable position (more, never less).
 */
export function writeBaseSeq(mapFile: string, seq: number | null): void {
  const file = `${mapFile}.seq`;
  if (seq === null) {
    fs.rmSync(file, { force: true });
    return;
  }
  assert.ok(Number.isSafeInteger(seq) && seq >= 0, 'a base is a record sequence number');
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, 'w', 0o600);
  try {
    fs.writeSync(fd, JSON.stringify({ seq }));
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  const dir = fs.openSync(path.dirname(file), 'r');
  try {
    fs.fsyncSync(dir);
  } finally {
    fs.closeSync(dir);
  }
}

export function readBaseSeq(mapFile: string): number | null {
  try {
    const v = (JSON.parse(fs.readFileSync(`${mapFile}.seq`, 'utf8')) as { seq?: unknown }).seq;
    return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : null;
  } catch {
    return null;
  }
}

/**
 * The old primary's side: marks every record staged after the mirror consumer's position
 * (never acknowledged by the replica), and every region of the mirror's dirty bitmap file
 * (it fell back) when there is one; records at or below `baseSeq` (the promoted disk holds
 * them) are left out. Does not persist.
 */
export async function markUnacknowledged(map: DivergenceMap, journal: Journal | null, dirtyFile: string, dirtyChunkBytes: number, baseSeq: number | null): Promise<number> {
  let records = 0;
  if (journal?.hasConsumer(MIRROR_CONSUMER)) {
    let pos = journal.consumer(MIRROR_CONSUMER);
    const upTo = journal.durableSeq;
    while (pos.nextSeq <= upTo) {
      const read = await readRecords(journal, pos, { upTo, recordsMax: scanRecordsMax, bytesMax: scanBytesMax }, 'divergence-scan');
      for (const r of read.records) {
        if (baseSeq !== null && r.seq <= baseSeq) continue;
        map.mark(r.diskOffset, r.length);
        records++;
      }
      pos = read.end;
    }
  }
  const dirty = DirtyMap.load(dirtyFile, map.size, dirtyChunkBytes);
  if (dirty) for (let c = 0; c < dirty.chunks; c++) if (dirty.has(c)) map.mark(c * dirtyChunkBytes, dirtyChunkBytes);
  return records;
}
