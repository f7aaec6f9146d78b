// Which region of the disk address space each live record of a journal writes, for a staging
// area several disks share (a consistency group: one region per member, at its base). It
// answers "how many records, and how many staging bytes, does a consumer at position P still
// have to apply for each member" exactly, without reading the staging area: the group's mirror
// status gives each member's share of its lag.
//
// Shape: runs of consecutive records (by sequence) that write the same region with the same
// span, oldest first, in a ring of typed arrays: a random 4 KiB workload makes short runs,
// a sequential one long ones. Fed with every record the journal writes and, at open, every
// record recovery finds; trimmed to the oldest consumer position.
//
// Invariants (asserted where they are kept):
//   L1  records arrive in sequence without a gap (a journal's rebase restarts the count), so
//       the runs hold every record from `knownFromSeq` on: a count from there misses none.
//   L2  a run holds records of one region and one span, so part of it is counted exactly.
//   L3  bounded: at most runsMax runs. A record that finds no room clears the ledger and
//       starts it again at its own sequence (`knownFromSeq`): counts from a position before
//       that are unknown (null), never wrong; they are exact again once the consumer asking
//       is past it. Records trimmed (every consumer past them) are unknown too.
import assert from 'node:assert/strict';

/** Most runs kept (17 bytes each: about 9 MiB); a workload that outruns it has unknown per-region counts for a while (L3). */
export const LEDGER_RUNS_MAX = 1 << 19;
const runsInitial = 1024;

export interface RegionLag {
  records: number;
  bytes: number;
}

export class RegionLedger {
  private seq: Float64Array;
  private count: Uint32Array;
  private span: Uint32Array;
  private region: Uint8Array;
  /** Ring indexes: the oldest run and how many there are. */
  private head = 0;
  private runs = 0;
  /**
   * The sequence the next record must have (L1; null until the first), and where the ledger's
   * knowledge starts: 0 at open, as the journal hands it every live record (recovery's scan).
   */
  private nextSeq: number | null = null;
  private knownFromSeq = 0;

  /**
   * `bases`: the first byte of each region in the address space, ascending (a group's member
   * bases); a record belongs to the region its offset falls in.
   */
  constructor(private readonly bases: readonly number[], private readonly runsMax = LEDGER_RUNS_MAX) {
    assert.ok(bases.length > 0 && bases.length <= 256 && bases.every((b, i) => i === 0 || b > bases[i - 1]!), 'regions: 1 to 256 ascending bases');
    const size = Math.min(runsInitial, runsMax);
    this.seq = new Float64Array(size);
    this.count = new Uint32Array(size);
    this.span = new Uint32Array(size);
    this.region = new Uint8Array(size);
  }

  get regions(): number {
    return this.bases.length;
  }

  private regionOf(offset: number): number {
    let lo = 0;
    let hi = this.bases.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.bases[mid]! <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** One record, in sequence order (the journal's written batches, recovery's scan). */
  add(seq: number, diskOffset: number, span: number): void {
    if (this.nextSeq !== null) assert.equal(seq, this.nextSeq, 'L1: records reach the ledger in sequence, without a gap');
    this.nextSeq = seq + 1;
    const region = this.regionOf(diskOffset);
    if (this.runs > 0) {
      const last = (this.head + this.runs - 1) % this.seq.length;
      if (this.region[last] === region && this.span[last] === span && this.count[last]! < 0xffffffff) {
        this.count[last]!++;
        return;
      }
    }
    if (this.runs === this.seq.length && !this.grow()) {
      // L3: no room. Start again from this record: what came before is unknown from now on.
      this.head = 0;
      this.runs = 0;
      this.knownFromSeq = seq;
    }
    const at = (this.head + this.runs) % this.seq.length;
    this.seq[at] = seq;
    this.count[at] = 1;
    this.span[at] = span;
    this.region[at] = region;
    this.runs++;
  }

  private grow(): boolean {
    const size = this.seq.length;
    if (size >= this.runsMax) return false;
    const next = Math.min(this.runsMax, size * 2);
    // Unrolled into the new arrays oldest first (the ring is full: head..size, then 0..head).
    const unroll = <A extends Float64Array | Uint32Array | Uint8Array>(from: A, to: A): A => {
      to.set(from.subarray(this.head));
      to.set(from.subarray(0, this.head), size - this.head);
      return to;
    };
    this.seq = unroll(this.seq, new Float64Array(next));
    this.count = unroll(this.count, new Uint32Array(next));
    this.span = unroll(this.span, new Uint32Array(next));
    this.region = unroll(this.region, new Uint8Array(next));
    this.head = 0;
    return true;
  }

  /** Forgets records before `seq` (every consumer is past them). */
  trim(seq: number): void {
    this.knownFromSeq = Math.max(this.knownFromSeq, seq);
    while (this.runs > 0) {
      const first = this.seq[this.head]!;
      const n = this.count[this.head]!;
      if (first + n > seq) {
        if (first < seq) {
          // L2: the run's records are alike, so its tail stays exact.
          this.count[this.head] = first + n - seq;
          this.seq[this.head] = seq;
        }
        return;
      }
      this.head = (this.head + 1) % this.seq.length;
      this.runs--;
    }
  }

  /** The journal's numbering starts over at `seq` (a rebase: every consumer was done). */
  restart(seq: number): void {
    this.head = 0;
    this.runs = 0;
    this.nextSeq = seq;
    this.knownFromSeq = seq;
  }

  /**
   * Per region, the records at or after `fromSeq` and their staging bytes; null when the
   * ledger does not know them all (L3: it started again after `fromSeq`).
   */
  behind(fromSeq: number): RegionLag[] | null {
    if (fromSeq < this.knownFromSeq) return null;
    const out = this.bases.map(() => ({ records: 0, bytes: 0 }));
    // Newest first, down to the run holding fromSeq: a consumer near the head costs a few runs.
    for (let i = this.runs - 1; i >= 0; i--) {
      const at = (this.head + i) % this.seq.length;
      const first = this.seq[at]!;
      const take = Math.min(this.count[at]!, first + this.count[at]! - fromSeq);
      if (take <= 0) break;
      const r = out[this.region[at]!]!;
      r.records += take;
      r.bytes += take * this.span[at]!;
    }
    return out;
  }
}
