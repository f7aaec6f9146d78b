// The data path of a disk with a staging area, and the composition root of its write
// pipeline. One WRITE, in order (read the files in this order to follow it):
//
//   nbd/transmission.ts  → volume/volume.ts (I/O gate)
//   → admission.ts       the admission chain: overlay bound, bounded lag, dirty bitmap, swap pacing, divergence
//   → journal/journal.ts append: group commit, one pwrite per batch, durability marks
//   → written(records)   indexed here in the read overlay (and told to the mirror), then acknowledged
//   → consumers          volume/committer.ts applies records to the primary (and, for a local
//                        mirror, to its target); replication/remote-stream.ts ships them to a peer;
//                        each reads every record once, from memory, in order, and checkpoints
//                        its durable position, after which the journal frees the space behind it.
//
// Reads take the newest data: the overlay (staged, not yet on the primary) over the primary,
// also for partial overlaps. StagedPath.open() builds every piece and hands each its
// collaborators at construction; the mirror, which comes and goes while the disk is served,
// joins through the MirrorSlot (admission.ts) in one call.
import assert from 'node:assert/strict';
import type { Logger } from 'pino';
import { systemClock, type Clock } from '../clock.js';
import { FerryError } from '../errors.js';
import { ExtentFlag, type Extent } from '../disk/block-device.js';
import type { DiskStore, Store } from '../disk/store.js';
import { RECORD_HEADER_BYTES, RecordType, type RecordTypeValue } from '../journal/format.js';
import { Journal, type StagedRecord } from '../journal/journal.js';
import { AdmissionChain, BoundedLagStep, DirtyBitmapStep, DivergenceStep, MirrorSlot, OverlayBoundStep, SwapPacingStep } from './admission.js';
import { Committer, FLAG_NO_HOLE, PRIMARY_CONSUMER } from './committer.js';
import { ExtentKind, Overlay } from './overlay.js';

/** Overlay extents held in memory before writers wait for the committer (about 100 bytes each). */
export const overlayExtentsMax = 512 * 1024;

/** Regions whose write counters let an online verify tell "changed while compared" from "differs". */
const writeGenRegionsMax = 1 << 20;
/** A paced writer looks again at least this often (the committers may progress without telling). */
const paceRecheckMs = 10;

/** What is staged but not on the primary (the overlay), and per-region write counters for verify. */
class StagedIndex {
  readonly overlay = new Overlay();
  /** Writes started per region of genRegionBytes (wrapping counters; at most 4 MiB of memory). */
  readonly writeGen: Uint32Array;
  readonly genRegionBytes: number;

  constructor(diskBytes: number) {
    this.genRegionBytes = Math.max(1024 * 1024, 2 ** Math.ceil(Math.log2(Math.max(1, diskBytes / writeGenRegionsMax))));
    this.writeGen = new Uint32Array(Math.ceil(diskBytes / this.genRegionBytes) + 1);
  }

  /** A written batch, in sequence order: newer extents replace older ones. */
  index(records: readonly StagedRecord[]): void {
    for (const r of records) {
      if (r.length === 0) continue;
      // Also counted when the write becomes visible (with writtenSeq, in this same tick): a write
      // counted only when it began could turn visible after a verify noted (counter, writtenSeq)
      // and read it, without changing the counter, and pass for a difference.
      this.bumpGen(r.diskOffset, r.length);
      const kind = r.type === RecordType.WRITE ? ExtentKind.DATA : ExtentKind.ZERO;
      this.overlay.insert({ start: r.diskOffset, end: r.diskOffset + r.length, seq: r.seq, kind, jpos: kind === ExtentKind.DATA ? r.pos + RECORD_HEADER_BYTES : -1 });
    }
  }

  /** Records now on the primary: their extents (exactly theirs, not newer ones) leave the overlay. */
  applied(records: readonly StagedRecord[]): void {
    for (const r of records) this.overlay.removeRecord(r.seq, r.diskOffset, r.diskOffset + r.length);
  }

  bumpGen(offset: number, length: number): void {
    const last = Math.floor((offset + length - 1) / this.genRegionBytes);
    for (let r = Math.floor(offset / this.genRegionBytes); r <= last; r++) this.writeGen[r] = (this.writeGen[r]! + 1) >>> 0;
  }
}

export interface StagedPathParts {
  journal: Journal;
  primary: DiskStore;
  index: StagedIndex;
  committer: Committer;
  admission: AdmissionChain;
  /** The chain's first step; a mirror site's copies of records pass only this one. */
  overlayBound: OverlayBoundStep;
  mirrorSlot: MirrorSlot;
  log: Logger;
}

export class StagedPath {
  readonly journal: Journal;
  readonly committer: Committer;
  readonly admission: AdmissionChain;
  private readonly overlayBound: OverlayBoundStep;
  /** Where the disk's mirror joins the write path (at most one). */
  readonly mirrorSlot: MirrorSlot;
  private readonly index: StagedIndex;
  private primary: DiskStore;
  private readonly log: Logger;

  /**
   * The composition root of a staged disk: opens (and recovers) the journal on `stores` and
   * wires the overlay, the primary's committer and the admission chain. Not started.
   */
  /** `beforeWrite`: the divergence check each write passes first (DivergenceStep), if any. */
  /** `regions`: the bases of the disks that write through this path, when several do (a consistency group's members; Journal.open). */
  static async open(stores: Store[], primary: DiskStore, log: Logger, clock: Clock = systemClock, beforeWrite: (() => void) | null = null, regions: readonly number[] | null = null): Promise<StagedPath> {
    const index = new StagedIndex(primary.size);
    const mirrorSlot = new MirrorSlot();
    let unappliedFrom: number | null = null;
    const journal = await Journal.open(stores, log, {
      written: (records) => {
        index.index(records);
        mirrorSlot.indexed(records);
      },
      whenFull: () => mirrorSlot.refuseWhenFull(),
      // What the primary has not applied is read from the staging area until it is, as while
      // running: the replay below may fail (a full primary) and the disk is still served.
      recovered: (record, consumers) => {
        unappliedFrom ??= consumers.find((c) => c.name === PRIMARY_CONSUMER)?.nextSeq ?? Infinity;
        if (record.seq >= unappliedFrom) index.index([record]);
      },
    }, regions);
    const committer = new Committer(journal, primary, log, { onApplied: (records) => index.applied(records), clock });
    const progressOrRecheck = (): Promise<void> => {
      committer.kick();
      return new Promise((resolve) => {
        const t = clock.timeout(paceRecheckMs, resolve);
        void committer.progress().then(() => {
          t.cancel();
          resolve();
        });
      });
    };
    const overlayBound = new OverlayBoundStep(
      () => index.overlay.size >= overlayExtentsMax,
      () => {
        committer.kick();
        return committer.progress();
      },
    );
    const admission = new AdmissionChain([
      overlayBound,
      new BoundedLagStep(mirrorSlot),
      new DirtyBitmapStep(mirrorSlot),
      new SwapPacingStep(progressOrRecheck),
      new DivergenceStep(beforeWrite),
    ]);
    return new StagedPath({ journal, primary, index, committer, admission, overlayBound, mirrorSlot, log });
  }

  constructor(parts: StagedPathParts) {
    this.journal = parts.journal;
    this.primary = parts.primary;
    this.index = parts.index;
    this.committer = parts.committer;
    this.admission = parts.admission;
    this.overlayBound = parts.overlayBound;
    this.mirrorSlot = parts.mirrorSlot;
    this.log = parts.log;
  }

  get overlay(): Overlay {
    return this.index.overlay;
  }

  get writeGen(): Uint32Array {
    return this.index.writeGen;
  }

  get genRegionBytes(): number {
    return this.index.genRegionBytes;
  }

  /** Paces new writes while `behind()` (a swap about to hold requests); until the returned function is called. */
  pace(behind: () => boolean): () => void {
    return this.admission.step<SwapPacingStep>('swap-pacing').pace(behind);
  }

  /** Points the data path at another primary (a swap of roles; the caller holds the I/O gate and has drained). */
  setPrimary(primary: DiskStore): void {
    this.primary = primary;
    this.committer.retarget(primary);
  }

  /**
   * Replays what recovery found (records the primary has not checkpointed), then keeps applying
   * in the background. A primary that cannot take them now (full, failing) does not stop the
   * disk: the records stay in the staging area, reads take them from the overlay, and the
   * committer retries with backoff, as while running. Throws only when the staging area itself
   * failed; the caller then abandons this path (abandon(): no loop outlives it).
   */
  async start(): Promise<void> {
    this.committer.start();
    try {
      await this.committer.drain();
    } catch (err) {
      if (this.journal.failed) throw err;
      this.log.error({ err: (err as Error).message, pending: this.journal.writtenSeq - this.committer.nextSeq + 1 }, 'staged records cannot be applied to the primary yet: served from the staging area; the committer retries');
    }
  }

  private async append(type: RecordTypeValue, flags: number, offset: number, length: number, payload: Buffer | null, fua: boolean): Promise<void> {
    if (length > 0) this.index.bumpGen(offset, length);
    // Asked again after every wait: the append below runs in the tick of the pass that admitted it.
    for (let wait = this.admission.admit(offset, length); wait !== null; wait = this.admission.admit(offset, length)) await wait;
    await this.journal.append({ type, flags, diskOffset: offset, length, payload, durable: fua });
  }

  /**
   * A mirror site's copies of a primary site's records: the same sequence numbers and times,
   * appended in one go (in order, sharing batches); resolves once all are written.
   */
  async appendMirrored(records: Array<{ seq: number; type: RecordTypeValue; flags: number; diskOffset: number; length: number; timeMs: number; payload: Buffer | null }>): Promise<void> {
    // Only the overlay bound: a replica has no mirror of its own on this path.
    for (let wait = this.overlayBound.admit(); wait !== null; wait = this.overlayBound.admit()) await wait;
    const appends = records.map((r) => {
      if (r.length > 0) this.index.bumpGen(r.diskOffset, r.length);
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
    await this.journal.close();
  }

  async close(): Promise<void> {
    await this.committer.drain().catch(() => undefined);
    await this.committer.stop();
    await this.journal.close();
  }

  get failure(): FerryError | null {
    return this.journal.failed;
  }
}
