// The journal's cache of recently written records: consumers that keep up (the committer,
// a mirror stream) read records from memory instead of the staging area. Bounded by
// bytesMax; a record leaves once every consumer has passed it, or when the cache is full
// (oldest first): a consumer that falls behind reads from the staging area instead.
import type { StagedRecord } from './journal.js';

export class RecentCache {
  private readonly records = new Map<number, StagedRecord>();
  private bytes = 0;

  constructor(private readonly bytesMax: number) {}

  get(seq: number): StagedRecord | undefined {
    return this.records.get(seq);
  }

  /** Records are remembered in sequence order (the map keeps insertion order). */
  remember(r: StagedRecord, minSeq: number): void {
    this.records.set(r.seq, r);
    this.bytes += r.span;
    this.trim(minSeq);
  }

  /** Drops records before `minSeq` (every consumer is past them) and the oldest beyond the bound. */
  trim(minSeq: number): void {
    for (const [seq, r] of this.records) {
      if (seq >= minSeq && this.bytes <= this.bytesMax) break;
      this.records.delete(seq);
      this.bytes -= r.span;
    }
  }

  clear(): void {
    this.records.clear();
    this.bytes = 0;
  }
}
