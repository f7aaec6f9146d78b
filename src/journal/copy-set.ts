// The copies of a staging area (one, or two with `staging attach --copy`): every write and
// sync goes to each healthy copy (and to one being rebuilt); a copy that fails an I/O, or
// holds a record that does not verify, is dropped loudly and the staging area goes on
// degraded on the other; with none left the staging area is lost, which the journal
// turns into a failure of every write (J3). Reads go to a healthy copy, falling back to
// the other on an error or a record that does not verify; the record handed on is the one
// expected (J1, asserted in readRecord).
import assert from 'node:assert/strict';
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import { writeSoon, type Store } from '../disk/store.js';
import { HEADER_AREA_BYTES } from './format.js';
import { RingWindow, readRecordAt, type Expectation, type VerifiedRecord } from './record-reader.js';

export interface Copy {
  store: Store;
  healthy: boolean;
  rebuilding: boolean;
  problem?: string;
}

export interface CopyEvents {
  /** A copy failed; the staging area goes on with the others. */
  degraded(path: string, problem: string): void;
  /** No healthy copy is left (called once). */
  lost(err: FerryError): void;
}

export class CopySet {
  readonly copies: Copy[];
  private lostError: FerryError | null = null;
  private readonly readerWindows = new Map<string, { store: Store; window: RingWindow; loadedAt: number }>();

  constructor(
    stores: Store[],
    state: Array<{ usable: boolean; problem?: string }>,
    private readonly ringBytes: number,
    private readonly log: Logger,
    private readonly events: CopyEvents,
  ) {
    this.copies = stores.map((store, i) => ({ store, healthy: state[i]!.usable, rebuilding: false, problem: state[i]!.problem }));
    for (const c of this.copies) if (!c.healthy) this.log.error({ copy: c.store.path, problem: c.problem }, 'staging copy unusable at open: run `ferry staging repair`');
  }

  /** The copies that take writes: healthy ones and one being rebuilt. */
  private live(): Copy[] {
    return this.copies.filter((c) => c.healthy || c.rebuilding);
  }

  /** Writes to every live copy; a copy that fails is dropped loudly; none left is fatal. */
  async writeAll(buf: Buffer, offset: number): Promise<void> {
    await Promise.all(this.live().map((c) => writeSoon(c.store, buf, 0, buf.length, offset).catch((err) => this.markFailed(c, `write failed: ${(err as Error).message}`))));
    this.checkAlive();
  }

  async syncAll(): Promise<void> {
    await Promise.all(this.live().map((c) => c.store.sync().catch((err) => this.markFailed(c, `sync failed: ${(err as Error).message}`))));
    this.checkAlive();
  }

  /** A copy whose file was removed or replaced underneath us is failed (it no longer takes our writes). */
  checkPaths(): void {
    for (const c of this.live()) if (!c.store.stillAtPath()) this.markFailed(c, 'the file was removed or replaced');
    this.checkAlive();
  }

  markFailed(c: Copy, problem: string): void {
    if (!c.healthy && !c.rebuilding) return;
    c.healthy = false;
    c.rebuilding = false;
    c.problem = problem;
    if (this.copies.some((x) => x.healthy)) this.log.error({ copy: c.store.path, problem }, 'STAGING COPY FAILED: the staging area is degraded to its other copy; run `ferry staging repair`');
    else this.log.error({ copy: c.store.path, problem }, 'STAGING COPY FAILED: no copy is left; `ferry staging detach --force` serves the disk without it');
    this.events.degraded(c.store.path, problem);
  }

  /** The error once no copy is healthy (reported through `lost` the first time). */
  checkAlive(): FerryError | null {
    if (!this.lostError && !this.copies.some((c) => c.healthy)) {
      this.lostError = new FerryError('STAGING_FAILED', `every copy of the staging area failed (${this.copies.map((c) => `${c.store.path}: ${c.problem}`).join('; ')})`);
      this.events.lost(this.lostError);
    }
    return this.lostError;
  }

  firstHealthy(): Copy | undefined {
    return this.copies.find((c) => c.healthy);
  }

  /**
   * The record `exp.seq` at `pos` (or at ring start, if it wrapped), verified on the first
   * healthy copy that holds it; copies where it does not verify are failed. null when none does.
   */
  async readRecord(pos: number, exp: Expectation, reader: string | undefined, writtenSeq: number): Promise<VerifiedRecord | null> {
    const bad: Copy[] = [];
    let found: VerifiedRecord | null = null;
    for (const c of this.copies.filter((x) => x.healthy)) {
      const w = this.readerWindow(c, exp.seq, reader, writtenSeq);
      let r = await readRecordAt(w, pos, exp);
      if (!r.ok && pos !== 0) r = await readRecordAt(w, 0, exp);
      if (r.ok) {
        found = r.record;
        break;
      }
      bad.push(c);
    }
    if (found) {
      // What readRecordAt verified, checked where it is handed on: the expected successor, where its predecessor ends (J1).
      assert.ok(found.header.seq === exp.seq && (exp.prevCrc === undefined || found.header.prevCrc === exp.prevCrc >>> 0), 'the record read has the sequence number and chain link expected (J1)');
      assert.ok(found.pos === pos || found.pos === 0, 'the record read lies where its predecessor ends, or at the ring start (J1, J6)');
      for (const c of bad) this.markFailed(c, `record ${exp.seq} does not verify on this copy`);
    }
    return found;
  }

  /**
   * A consumer reading in order gets a read-ahead window per copy. Window bytes are trusted
   * only for records written before the window was loaded (a later lap may have rewritten
   * the rest), so it is reloaded when a newer record is asked for.
   */
  private readerWindow(c: Copy, seq: number, reader: string | undefined, writtenSeq: number): RingWindow {
    if (!reader) return new RingWindow(c.store, this.ringBytes, 256 * 1024);
    const key = `${reader}@${this.copies.indexOf(c)}`;
    let e = this.readerWindows.get(key);
    if (!e || e.store !== c.store) {
      e = { store: c.store, window: new RingWindow(c.store, this.ringBytes), loadedAt: -1 };
      this.readerWindows.set(key, e);
    }
    if (seq > e.loadedAt) {
      e.window.invalidate();
      e.loadedAt = writtenSeq;
    }
    return e.window;
  }

  /** Ring bytes [pos, pos+length) from a healthy copy, failing over to the other on an error. */
  async readPayload(pos: number, buf: Buffer, bufOffset: number, length: number): Promise<void> {
    for (;;) {
      const c = this.firstHealthy();
      if (!c) throw this.lostError ?? new FerryError('STAGING_FAILED', 'no healthy staging copy');
      try {
        await c.store.read(buf, bufOffset, length, HEADER_AREA_BYTES + pos);
        return;
      } catch (err) {
        this.markFailed(c, `read failed: ${(err as Error).message}`);
        this.checkAlive();
      }
    }
  }

  stats(): Array<{ path: string; healthy: boolean; rebuilding: boolean; problem?: string }> {
    return this.copies.map((c) => ({ path: c.store.path, healthy: c.healthy, rebuilding: c.rebuilding, ...(c.problem ? { problem: c.problem } : {}) }));
  }

  indexOf(path: string): number {
    return this.copies.findIndex((c) => c.store.path === path);
  }

  async closeAll(): Promise<void> {
    await Promise.all(this.copies.map((c) => c.store.close().catch(() => undefined)));
  }
}
