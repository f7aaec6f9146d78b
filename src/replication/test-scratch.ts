// The scratch area of a test failover (a DR drill) at the mirror site: a writable image of a
// replica as it was when the test started, kept while replication goes on writing the
// replica underneath. Copy-on-write at 64 KiB granules: before replication overwrites a
// granule of the replica for the first time since the test started, its old contents are
// copied into a slot of the scratch file ("preserved"); the test's own writes go to slots
// of the scratch file too (a partial granule is first filled from the test image). The
// test image reads a granule from the test's slot, else from its preserved slot, else from
// the replica. The replica is never written through this file.
//
// Memory: two maps of one Int32 per granule (slot or -1), allocated in pages of 64 Ki
// granules on first touch (granule-map.ts): 256 KiB per map for each 4 GiB region that
// replication or the test touched, so a test on a 1 TiB disk that touches little costs little;
// at most 128 KiB per GiB of disk, when it touched all of it. The scratch file is a fixed size
// given by the administrator; slots are handed out in order and never freed during a test.
//
// A full scratch area fails the test's writes (SCRATCH_FULL, ENOSPC on NBD), never
// replication: a preservation that finds no free slot (or whose copy fails) marks the test
// image lost (TEST_IMAGE_LOST, EIO on NBD, the reason in status), and from then on nothing
// is preserved and replication writes the replica as if no test ran.
//
// Invariants (asserted where the maps are read and written):
//   T1  The replica is never written by the test: test writes touch only scratch slots.
//   T2  A replica granule is overwritten only after its contents as of the test start are in
//       a preserved slot, or the test wrote the whole granule to its own slot, or the image is lost
//       (preserve() resolves only then; the guard store writes after it resolves).
//   T3  A granule is preserved at most once per test, so its slot holds the granule as of the
//       start: nothing overwrote it before the copy completed (T2).
//   T4  A slot is used by one granule of one map; slots in use never exceed the scratch size.
//   T5  A read of the test image that went to the replica is redone from the granule's
//       preserved slot, or its test slot, when one appeared meanwhile (replication may then have
//       written under the read: a granule with a test slot is no longer preserved).
// Crash: nothing here is durable on purpose. A restart of the mirror site ends the test
// (src/control/drill-control.ts): the replica is correct whatever the scratch file holds.
import assert from 'node:assert';
import fs from 'node:fs';
import type { DiskStore } from '../disk/store.js';
import { FerryError, fromSystemError } from '../errors.js';
import { GranuleMap } from './granule-map.js';

export const TEST_GRANULE_BYTES = 64 * 1024;
/** The smallest scratch area: 16 granules (1 MiB). */
export const SCRATCH_BYTES_MIN = 16 * TEST_GRANULE_BYTES;
const zeroes = Buffer.alloc(TEST_GRANULE_BYTES);

/**
 * Runs `piece` for each granule a range touches, all at once: granule `g`, the offset `at`
 * within it, `n` bytes, and `done`, the bytes of the range before this piece.
 */
function eachGranulePiece(offset: number, length: number, piece: (g: number, at: number, n: number, done: number) => Promise<void>): Promise<void> {
  const parts: Promise<void>[] = [];
  for (let pos = offset; pos < offset + length; ) {
    const g = Math.floor(pos / TEST_GRANULE_BYTES);
    const at = pos - g * TEST_GRANULE_BYTES;
    const n = Math.min(TEST_GRANULE_BYTES - at, offset + length - pos);
    parts.push(piece(g, at, n, pos - offset));
    pos += n;
  }
  return Promise.all(parts).then(() => undefined);
}

export interface TestScratchStats {
  scratchBytes: number;
  usedBytes: number;
  preservedBytes: number;
  writtenBytes: number;
  /** Memory of the two granule maps so far (their pages). */
  mapBytes: number;
  lostReason: string | null;
}

export class TestScratch {
  /** granule → slot holding its contents as of the test start, or -1. */
  private readonly preserved: GranuleMap;
  /** granule → slot holding the test's own contents of the granule, or -1. */
  private readonly written: GranuleMap;
  private readonly saving = new Map<number, Promise<void>>();
  private readonly filling = new Map<number, Promise<void>>();
  private readonly slotsMax: number;
  private slotsUsed = 0;
  private preservedCount = 0;
  private writtenCount = 0;
  private lost: string | null = null;
  private closed = false;

  constructor(
    readonly file: string,
    private readonly fd: number,
    /** The replica's disk as it was when the test started (never written here: T1). */
    private readonly replica: DiskStore,
    readonly diskBytes: number,
    readonly scratchBytes: number,
    /** Granules per page of the maps (tests use small pages to cross page boundaries on a small disk). */
    pageGranules?: number,
  ) {
    const granules = Math.ceil(diskBytes / TEST_GRANULE_BYTES);
    this.preserved = new GranuleMap(granules, pageGranules);
    this.written = new GranuleMap(granules, pageGranules);
    this.slotsMax = Math.floor(scratchBytes / TEST_GRANULE_BYTES);
    assert.ok(this.slotsMax < 2 ** 31, 'slots fit the maps (T4)');
  }

  get lostReason(): string | null {
    return this.lost;
  }

  stats(): TestScratchStats {
    return {
      scratchBytes: this.scratchBytes,
      usedBytes: this.slotsUsed * TEST_GRANULE_BYTES,
      preservedBytes: this.preservedCount * TEST_GRANULE_BYTES,
      writtenBytes: this.writtenCount * TEST_GRANULE_BYTES,
      mapBytes: this.preserved.bytes + this.written.bytes,
      lostReason: this.lost,
    };
  }

  private granuleBytes(g: number): number {
    return Math.min(TEST_GRANULE_BYTES, this.diskBytes - g * TEST_GRANULE_BYTES);
  }

  private takeSlot(): number | null {
    if (this.slotsUsed >= this.slotsMax) return null;
    const slot = this.slotsUsed++;
    assert.ok(slot < this.slotsMax, 'slots in use never exceed the scratch size (T4)');
    return slot;
  }

  private markLost(reason: string): void {
    if (this.lost) return;
    this.lost = reason;
  }

  private readScratch(buf: Buffer, at: number, length: number, pos: number): Promise<void> {
    return new Promise((resolve, reject) => {
      fs.read(this.fd, buf, at, length, pos, (err, n) => (err ? reject(fromSystemError(err, `reading the scratch file ${this.file}`)) : n !== length ? reject(new FerryError('IO_ERROR', `short read of the scratch file ${this.file} at ${pos}`)) : resolve()));
    });
  }

  private writeScratch(buf: Buffer, at: number, length: number, pos: number): Promise<void> {
    return new Promise((resolve, reject) => {
      fs.write(this.fd, buf, at, length, pos, (err, n) => (err ? reject(fromSystemError(err, `writing the scratch file ${this.file}`)) : n !== length ? reject(new FerryError('IO_ERROR', `short write to the scratch file ${this.file} at ${pos}`)) : resolve()));
    });
  }

  /**
   * Called before replication writes [offset, offset+length) of the replica: resolves once
   * every granule it touches is preserved (T2), or null when nothing needs saving. Never
   * rejects: a preservation that cannot be made loses the test image, not the write.
   */
  preserve(offset: number, length: number): Promise<void> | null {
    if (this.lost || this.closed || length <= 0) return null;
    const first = Math.floor(offset / TEST_GRANULE_BYTES);
    const last = Math.floor((offset + length - 1) / TEST_GRANULE_BYTES);
    const waits: Promise<void>[] = [];
    let run: { g: number; slot: number; n: number } | null = null;
    const startRun = (r: { g: number; slot: number; n: number }): void => {
      const p = this.copyRun(r.g, r.slot, r.n);
      for (let i = 0; i < r.n; i++) this.saving.set(r.g + i, p);
      waits.push(p);
    };
    for (let g = first; g <= last; g++) {
      if (this.preserved.get(g) >= 0 || this.written.get(g) >= 0) continue;
      const inFlight = this.saving.get(g);
      if (inFlight) {
        waits.push(inFlight);
        continue;
      }
      const slot = this.takeSlot();
      if (slot === null) {
        this.markLost(`the scratch area (${this.scratchBytes} bytes) is full: the replica's old contents at ${g * TEST_GRANULE_BYTES} could not be preserved`);
        break;
      }
      if (run && run.g + run.n === g && run.slot + run.n === slot) run.n++;
      else {
        if (run) startRun(run);
        run = { g, slot, n: 1 };
      }
    }
    if (run) startRun(run);
    if (waits.length === 0) return null;
    return Promise.all(waits).then(() => undefined);
  }

  /** Whether replication may now write [offset, offset+length) of the replica: every granule kept for the test, or nothing to keep (T2). */
  covers(offset: number, length: number): boolean {
    if (this.lost || this.closed || length <= 0) return true;
    const last = Math.floor((offset + length - 1) / TEST_GRANULE_BYTES);
    for (let g = Math.floor(offset / TEST_GRANULE_BYTES); g <= last; g++) if (this.preserved.get(g) < 0 && this.written.get(g) < 0) return false;
    return true;
  }

  /** Copies granules [g, g+n) of the replica into slots [slot, slot+n); marks them preserved (T3). */
  private async copyRun(g: number, slot: number, n: number): Promise<void> {
    try {
      const bytes = Math.min(n * TEST_GRANULE_BYTES, this.diskBytes - g * TEST_GRANULE_BYTES);
      const buf = Buffer.allocUnsafe(bytes);
      await this.replica.read(buf, 0, bytes, g * TEST_GRANULE_BYTES);
      await this.writeScratch(buf, 0, bytes, slot * TEST_GRANULE_BYTES);
      for (let i = 0; i < n; i++) {
        assert.ok(this.preserved.get(g + i) === -1, 'a granule is preserved at most once per test (T3)');
        this.preserved.set(g + i, slot + i);
      }
      this.preservedCount += n;
    } catch (err) {
      this.markLost(`preserving the replica's old contents failed: ${(err as Error).message}`);
    } finally {
      for (let i = 0; i < n; i++) this.saving.delete(g + i);
    }
  }

  private usable(): void {
    if (this.closed) throw new FerryError('TEST_IMAGE_LOST', 'the test failover has ended');
    if (this.lost) throw new FerryError('TEST_IMAGE_LOST', `the test image is lost: ${this.lost}`);
  }

  /** Reads granule g's piece [at, at+length) of the image as of the test start (not the test's writes). */
  private async readBase(g: number, buf: Buffer, bufOffset: number, at: number, length: number): Promise<void> {
    const base = g * TEST_GRANULE_BYTES;
    let slot = this.preserved.get(g);
    if (slot < 0) {
      await this.replica.read(buf, bufOffset, length, base + at);
      // Preserved while we read, or given the test's own slot (replication then stops preserving
      // it): a replication write may have landed under the read. Both slots hold the snapshot's
      // bytes outside what the test wrote (T5).
      slot = this.preserved.get(g) >= 0 ? this.preserved.get(g) : this.written.get(g);
      if (slot < 0) return;
    }
    await this.readScratch(buf, bufOffset, length, slot * TEST_GRANULE_BYTES + at);
  }

  /** Reads the test image: the test's writes, else the preserved old contents, else the replica. */
  async read(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    this.usable();
    await eachGranulePiece(offset, length, (g, at, n, done) => {
      const into = bufOffset + done;
      const slot = this.written.get(g);
      return slot >= 0 ? this.readScratch(buf, into, n, slot * TEST_GRANULE_BYTES + at) : this.readBase(g, buf, into, at, n);
    });
    // A preservation that failed during the read may have let the replica change under it.
    this.usable();
  }

  /** Writes to the test image: only scratch slots (T1); SCRATCH_FULL when no slot is left. */
  async write(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    this.usable();
    await eachGranulePiece(offset, length, (g, at, n, done) => this.writePiece(g, buf.subarray(bufOffset + done, bufOffset + done + n), at));
  }

  /** Zeroes (or trims: the test image reads zeroes there) a range of the test image. */
  async zero(offset: number, length: number): Promise<void> {
    this.usable();
    await eachGranulePiece(offset, length, (g, at, n) => this.writePiece(g, zeroes.subarray(0, n), at));
  }

  private async writePiece(g: number, data: Buffer, at: number): Promise<void> {
    for (;;) {
      this.usable();
      const slot = this.written.get(g);
      if (slot >= 0) return this.writeScratch(data, 0, data.length, slot * TEST_GRANULE_BYTES + at);
      const pending = this.filling.get(g);
      if (!pending) break;
      await pending.catch(() => undefined);
    }
    const slot = this.takeSlot();
    if (slot === null) throw new FerryError('SCRATCH_FULL', `the scratch area of the test failover (${this.scratchBytes} bytes) is full`);
    const fill = (async () => {
      const size = this.granuleBytes(g);
      const whole = Buffer.allocUnsafe(size);
      if (at !== 0 || data.length !== size) await this.readBase(g, whole, 0, 0, size);
      data.copy(whole, at);
      await this.writeScratch(whole, 0, size, slot * TEST_GRANULE_BYTES);
      assert.ok(this.written.get(g) === -1, 'a slot is used by one granule of one map (T4)');
      this.written.set(g, slot);
      this.writtenCount++;
    })();
    this.filling.set(g, fill);
    try {
      await fill;
    } finally {
      this.filling.delete(g);
    }
  }

  sync(): Promise<void> {
    return new Promise((resolve, reject) => fs.fdatasync(this.fd, (err) => (err ? reject(fromSystemError(err, `syncing the scratch file ${this.file}`)) : resolve())));
  }

  /** Ends the test: nothing is preserved any more, the image refuses I/O; waits for copies in flight. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.saving.values(), ...[...this.filling.values()].map((p) => p.catch(() => undefined))]);
    fs.closeSync(this.fd);
  }
}
