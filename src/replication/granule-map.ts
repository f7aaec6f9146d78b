// A map from the granules of a disk to scratch slots (test-scratch.ts), allocated in pages on
// first touch: a test failover pays memory for the parts of the disk replication or the test
// touched, not for the whole disk from its start. Each page holds one Int32 per granule (the
// slot, or -1: none) for 64 Ki granules (256 KiB of map for 4 GiB of a disk at 64 KiB granules);
// the page table is one pointer per page (256 for a 1 TiB disk). An untouched page reads as all
// -1. Pages are never freed while the map lives: it lives for one test, bounded by the disk's
// size like the flat map it replaces, and by what the test touched.
import assert from 'node:assert';

/** Granules per page: 64 Ki (256 KiB of Int32). */
export const GRANULE_MAP_PAGE_GRANULES = 64 * 1024;

export class GranuleMap {
  private readonly pages: Array<Int32Array | undefined>;
  private pagesUsed = 0;
  private allocatedBytes = 0;

  constructor(
    /** Granules of the disk: the map's keys are 0 ... granules - 1. */
    readonly granules: number,
    private readonly pageGranules = GRANULE_MAP_PAGE_GRANULES,
  ) {
    assert.ok(Number.isSafeInteger(granules) && granules >= 0 && pageGranules > 0, 'a granule map has a size');
    this.pages = new Array<Int32Array | undefined>(Math.ceil(granules / pageGranules));
  }

  /** The slot of granule `g`, or -1. */
  get(g: number): number {
    assert.ok(g >= 0 && g < this.granules, 'a granule of the disk');
    const page = this.pages[Math.floor(g / this.pageGranules)];
    return page === undefined ? -1 : page[g % this.pageGranules]!;
  }

  /** Sets the slot of granule `g` (allocating its page on first touch). */
  set(g: number, slot: number): void {
    assert.ok(g >= 0 && g < this.granules, 'a granule of the disk');
    const p = Math.floor(g / this.pageGranules);
    let page = this.pages[p];
    if (page === undefined) {
      // The last page is only as long as the granules it covers.
      page = new Int32Array(Math.min(this.pageGranules, this.granules - p * this.pageGranules)).fill(-1);
      this.pages[p] = page;
      this.pagesUsed++;
      this.allocatedBytes += page.byteLength;
    }
    page[g % this.pageGranules] = slot;
  }

  /** Bytes of map allocated so far (the pages; the page table aside). */
  get bytes(): number {
    return this.allocatedBytes;
  }

  /** Pages allocated so far. */
  get pageCount(): number {
    return this.pagesUsed;
  }
}
