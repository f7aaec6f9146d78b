// The data path of a disk with a staging area: writes become journal records and are
// acknowledged from there; the overlay indexes what is staged but not yet on the
// primary; reads take the newest data (overlay over primary, also for partial
// overlaps); the committer applies records to the primary in the background.
import assert from 'node:assert/strict';
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import { ExtentFlag, type Extent } from '../disk/block-device.js';
import type { DiskStore } from '../disk/store.js';
import { RECORD_HEADER_BYTES, RecordType, type RecordTypeValue } from '../journal/format.js';
import type { Journal, StagedRecord } from '../journal/journal.js';
import { Committer, FLAG_NO_HOLE } from './committer.js';
import { ExtentKind, Overlay } from './overlay.js';

/** Overlay extents held in memory before writers wait for the committer (about 100 bytes each). */
export const overlayExtentsMax = 512 * 1024;

/** Regions whose write counters let an online verify tell "changed while compared" from "differs". */
const writeGenRegionsMax = 1 << 20;

export class StagedPath {
  readonly overlay = new Overlay();
  readonly committer: Committer;
  /** Writes started per region of genRegionBytes (wrapping counters; at most 4 MiB of memory). */
  readonly writeGen: Uint32Array;
  readonly genRegionBytes: number;
  /** A mirror's gate on the write path (bounded lag, dirty bitmap): what to wait for before a record is appended. */
  beforeAppend: ((offset: number, length: number) => Promise<void> | null) | null = null;
  /** While this says so, new writes wait for the committers (a swap about to hold requests paces writers first). */
  pace: (() => boolean) | null = null;
  /** Called with each written batch once it is indexed (before any of its appends resolves). */
  onIndexed: ((records: StagedRecord[]) => void) | null = null;

  constructor(
    readonly journal: Journal,
    private primary: DiskStore,
    log: Logger,
  ) {
    this.committer = new Committer(journal, primary, log, {
      onApplied: (records) => {
        for (const r of records) this.overlay.removeRecord(r.seq, r.diskOffset, r.diskOffset + r.length);
      },
    });
    journal.onWritten = (records) => this.index(records);
    this.genRegionBytes = Math.max(1024 * 1024, 2 ** Math.ceil(Math.log2(Math.max(1, primary.size / writeGenRegionsMax))));
    this.writeGen = new Uint32Array(Math.ceil(primary.size / this.genRegionBytes) + 1);
  }

  /** Points the data path at another primary (a swap of roles; the caller holds the I/O gate and has drained). */
  setPrimary(primary: DiskStore): void {
    this.primary = primary;
    this.committer.retarget(primary);
  }

  /** Replays what recovery found (records the primary has not checkpointed), then keeps applying in the background. */
  async start(): Promise<void> {
    this.committer.start();
    await this.committer.drain();
  }

  private index(records: StagedRecord[]): void {
    for (const r of records) {
      if (r.length === 0) continue;
      // Also counted when the write becomes visible (with writtenSeq, in this same tick): a write
      // counted only when it began could turn visible after a verify noted (counter, writtenSeq)
      // and read it, without changing the counter, and pass for a difference.
      this.bumpGen(r.diskOffset, r.length);
      const kind = r.type === RecordType.WRITE ? ExtentKind.DATA : ExtentKind.ZERO;
      this.overlay.insert({ start: r.diskOffset, end: r.diskOffset + r.length, seq: r.seq, kind, jpos: kind === ExtentKind.DATA ? r.pos + RECORD_HEADER_BYTES : -1 });
    }
    this.onIndexed?.(records);
  }

  private bumpGen(offset: number, length: number): void {
    const last = Math.floor((offset + length - 1) / this.genRegionBytes);
    for (let r = Math.floor(offset / this.genRegionBytes); r <= last; r++) this.writeGen[r] = (this.writeGen[r]! + 1) >>> 0;
  }

  private async append(type: RecordTypeValue, flags: number, offset: number, length: number, payload: Buffer | null, fua: boolean): Promise<void> {
    if (length > 0) this.bumpGen(offset, length);
    while (this.overlay.size >= overlayExtentsMax) {
      this.committer.kick();
      await this.committer.progress();
    }
    while (this.pace?.()) {
      this.committer.kick();
      await Promise.race([this.committer.progress(), new Promise((r) => setTimeout(r, 10))]);
    }
    const gate = this.beforeAppend?.(offset, length);
    if (gate) await gate;
    await this.journal.append({ type, flags, diskOffset: offset, length, payload, durable: fua });
  }

  /**
   * A mirror site's copies of a primary site's records: the same sequence numbers and times,
   * appended in one go (in order, sharing batches); resolves once all are written.
   */
  async appendMirrored(records: Array<{ seq: number; type: RecordTypeValue; flags: number; diskOffset: number; length: number; timeMs: number; payload: Buffer | null }>): Promise<void> {
    while (this.overlay.size >= overlayExtentsMax) {
      this.committer.kick();
      await this.committer.progress();
    }
    const appends = records.map((r) => {
      if (r.length > 0) this.bumpGen(r.diskOffset, r.length);
      return this.journal.append({ type: r.type, flags: r.flags, diskOffset: r.diskOffset, length: r.length, payload: r.payload, durable: false, timeMs: r.timeMs, expectSeq: r.seq });
    });
    await Promise.all(appends);
  }

  write(buf: Buffer, bufOffset: number, length: number, offset: number, fua: boolean): Promise<void> {
    if (length === 0) return fua ? this.journal.sync() : Promise.resolve();
    return this.append(RecordType.WRITE, 0, offset, length, buf.subarray(bufOffset, bufOffset + length), fua);
  }

  zero(offset: number, length: number, mayDeallocate: boolean, fua: boolean): Promise<void> {
    return this.append(RecordType.ZERO, mayDeallocate ? 0 : FLAG_NO_HOLE, offset, length, null, fua);
  }

  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.append(RecordType.TRIM, 0, offset, length, null, fua);
  }

  flush(): Promise<void> {
    return this.journal.sync();
  }

  /** Newest data wins: staged pieces from the journal, zeroed pieces as zeroes, the rest from the primary. */
  read(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    const end = offset + length;
    const pieces = this.overlay.lookup(offset, end);
    if (pieces.length === 0) return this.primary.read(buf, bufOffset, length, offset);
    // Every journal read is issued in this same tick as the lookup, so the checkpoint's
    // read drain covers it before the space can be reused (J2).
    const ops: Promise<void>[] = [];
    let at = offset;
    for (const p of pieces) {
      assert.ok(p.start >= at && p.end <= end, 'overlay pieces are ordered and inside the request');
      if (p.start > at) ops.push(this.primary.read(buf, bufOffset + (at - offset), p.start - at, at));
      if (p.kind === ExtentKind.DATA) ops.push(this.journal.readPayload(p.jpos, buf, bufOffset + (p.start - offset), p.end - p.start));
      else buf.fill(0, bufOffset + (p.start - offset), bufOffset + (p.end - offset));
      at = p.end;
    }
    if (at < end) ops.push(this.primary.read(buf, bufOffset + (at - offset), end - at, at));
    return Promise.all(ops).then(() => undefined);
  }

  /** Allocation as clients will see it: staged data is data, staged zeroes read as zero. */
  extents(offset: number, length: number, extentsMax: number): Extent[] {
    const base = this.primary.extents(offset, length, extentsMax);
    if (base.length === 0) return base;
    const covered = base[base.length - 1]!.offset + base[base.length - 1]!.length;
    const pieces = this.overlay.lookup(offset, covered);
    if (pieces.length === 0) return base;
    const out: Extent[] = [];
    const push = (e: Extent): void => {
      if (e.length <= 0) return;
      const last = out[out.length - 1];
      if (last && last.flags === e.flags && last.offset + last.length === e.offset) last.length += e.length;
      else out.push({ ...e });
    };
    let pi = 0;
    for (const b of base) {
      let at = b.offset;
      const bEnd = b.offset + b.length;
      while (at < bEnd) {
        while (pi < pieces.length && pieces[pi]!.end <= at) pi++;
        const p = pieces[pi];
        if (!p || p.start >= bEnd) {
          push({ offset: at, length: bEnd - at, flags: b.flags });
          break;
        }
        if (p.start > at) {
          push({ offset: at, length: p.start - at, flags: b.flags });
          at = p.start;
        }
        const e = Math.min(p.end, bEnd);
        push({ offset: at, length: e - at, flags: p.kind === ExtentKind.DATA ? 0 : ExtentFlag.ZERO });
        at = e;
      }
    }
    return out.slice(0, extentsMax);
  }

  /** Applies everything staged to the primary; the journal is then empty for the primary consumer. */
  drain(): Promise<void> {
    return this.committer.drain();
  }

  /** Stops without applying what is staged (a replica falling back to its last consistent image discards it). */
  async abandon(): Promise<void> {
    this.committer.pause();
    await this.committer.stop();
    this.journal.onWritten = null;
    await this.journal.close();
  }

  async close(): Promise<void> {
    await this.committer.drain().catch(() => undefined);
    await this.committer.stop();
    this.journal.onWritten = null;
    await this.journal.close();
  }

  get failure(): FerryError | null {
    return this.journal.failed;
  }
}
