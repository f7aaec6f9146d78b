// The journal's cache of recently written records: consumers that keep up (the committer,
// a mirror stream) read records from memory instead of the staging area. Bounded by
// bytesMax; a record leaves once every consumer has passed it, or when the cache is full
// (oldest first): a consumer that falls behind reads from the staging area instead.
//
// Records arrive in sequence order without gaps (J1), so the cache is a queue indexed by
// sequence number: lookup, insertion and trimming are O(1) per record. (A Map trimmed from
// its front walks the deleted entries it keeps until it rehashes: 10% of the event loop
// under 4 KiB writes.)
import assert from 'node:assert/strict';
import type { StagedRecord } from './staged-record.js';

export class RecentCache {
  /** records[head .. records.length) hold sequence numbers firstSeq, firstSeq+1, ... */
  private records: StagedRecord[] = [];
  private head = 0;
  private firstSeq = 0;
  private bytes = 0;

  constructor(private readonly bytesMax: number) {}

  get size(): number {
    return this.records.length - this.head;
  }

  get(seq: number): StagedRecord | undefined {
    const i = this.head + (seq - this.firstSeq);
    return i >= this.head && i < this.records.length ? this.records[i] : undefined;
  }

  /** Records are remembered in sequence order, without gaps (a gap, after a rebase, starts over). */
  remember(r: StagedRecord, minSeq: number): void {
    if (this.size > 0 && r.seq !== this.firstSeq + this.size) this.clear();
    if (this.size === 0) {
      this.records.length = 0;
      this.head = 0;
      this.firstSeq = r.seq;
    }
    assert.equal(r.seq, this.firstSeq + this.size, 'the recent cache holds consecutive records (J1)');
    this.records.push(r);
    this.bytes += r.span;
    this.trim(minSeq);
  }

  /** Drops records before `minSeq` (every consumer is past them) and the oldest beyond the bound. */
  trim(minSeq: number): void {
    while (this.head < this.records.length && (this.firstSeq < minSeq || this.bytes > this.bytesMax)) {
      this.bytes -= this.records[this.head]!.span;
      this.records[this.head] = undefined as unknown as StagedRecord;
      this.head++;
      this.firstSeq++;
    }
    // Compact once the dropped front is as large as what is kept: amortised O(1) per record.
    if (this.head > 1024 && this.head * 2 > this.records.length) {
      this.records = this.records.slice(this.head);
      this.head = 0;
    }
  }

  clear(): void {
    this.records = [];
    this.head = 0;
    this.bytes = 0;
  }
}
