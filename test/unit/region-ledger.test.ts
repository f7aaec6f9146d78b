// The journal's ledger of which member each live record writes (src/journal/region-ledger.ts):
// its counts against a plain list of records, through runs, partial trims, growth, the bound
// (L3: unknown, never wrong) and a rebase.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { RegionLedger } from '../../src/journal/region-ledger.js';

const MiB = 1024 * 1024;
const BASES = [0, 64 * MiB, 192 * MiB, 256 * MiB];

interface Rec {
  seq: number;
  offset: number;
  span: number;
}

/** The count the ledger must give: every record at or after `fromSeq`, by the region its offset is in. */
function expected(records: Rec[], fromSeq: number): Array<{ records: number; bytes: number }> {
  const out = BASES.map(() => ({ records: 0, bytes: 0 }));
  for (const r of records) {
    if (r.seq < fromSeq) continue;
    let region = 0;
    while (region + 1 < BASES.length && BASES[region + 1]! <= r.offset) region++;
    out[region]!.records++;
    out[region]!.bytes += r.span;
  }
  return out;
}

/** A seeded stream of records: runs of one member with one span, of random lengths (xorshift, reproducible). */
function* workload(seed: number, firstSeq: number): Generator<Rec> {
  let x = seed >>> 0 || 1;
  const next = (n: number): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) % n;
  };
  for (let seq = firstSeq; ; ) {
    const region = next(BASES.length);
    const span = [4160, 65600, 64][next(3)]!;
    for (let n = 1 + next(4); n > 0; n--) yield { seq: seq++, offset: BASES[region]! + next(32) * 4096, span };
  }
}

describe('region ledger', () => {
  it('counts each region exactly from any position, through runs, growth and partial trims', () => {
    const ledger = new RegionLedger(BASES);
    const all: Rec[] = [];
    const gen = workload(7, 100);
    let trimmed = 100;
    for (let round = 0; round < 40; round++) {
      for (let i = 0; i < 500; i++) {
        const r = gen.next().value as Rec;
        all.push(r);
        ledger.add(r.seq, r.offset, r.span);
      }
      const head = all[all.length - 1]!.seq + 1;
      for (const from of [trimmed, trimmed + 1, Math.floor((trimmed + head) / 2), head - 1, head]) {
        assert.deepEqual(ledger.behind(from), expected(all, from), `round ${round}, from ${from}`);
      }
      // Consumers move on: often into the middle of a run.
      trimmed += 1 + (round * 37) % 400;
      ledger.trim(trimmed);
      assert.deepEqual(ledger.behind(trimmed), expected(all, trimmed), `round ${round}, trimmed to ${trimmed}`);
      assert.equal(ledger.behind(trimmed - 1), null, 'a position before the trim is not known any more');
    }
  });

  it('at its bound it starts again at the record that found no room: unknown before it, exact after', () => {
    const ledger = new RegionLedger(BASES, 8);
    const records: Rec[] = [];
    // Alternating members: every record a run of its own.
    for (let seq = 1; seq <= 8; seq++) records.push({ seq, offset: BASES[seq % 2]!, span: 4160 });
    for (const r of records) ledger.add(r.seq, r.offset, r.span);
    assert.deepEqual(ledger.behind(1), expected(records, 1));
    // The ninth run finds no room.
    records.push({ seq: 9, offset: BASES[3]!, span: 4160 });
    ledger.add(9, BASES[3]!, 4160);
    assert.equal(ledger.behind(1), null, 'records before the restart are unknown: null, never a wrong count');
    assert.equal(ledger.behind(8), null);
    assert.deepEqual(ledger.behind(9), expected(records, 9));
    ledger.add(10, BASES[3]! + 4096, 4160); // joins the run
    records.push({ seq: 10, offset: BASES[3]! + 4096, span: 4160 });
    assert.deepEqual(ledger.behind(9), expected(records, 9));
    assert.deepEqual(ledger.behind(10), expected(records, 10));
  });

  it('a record out of sequence is a bug (L1); a rebase restarts the numbering', () => {
    const ledger = new RegionLedger(BASES);
    ledger.add(5, 0, 64);
    assert.throws(() => ledger.add(7, 0, 64), /L1/);
    ledger.trim(6);
    ledger.restart(1000);
    assert.deepEqual(ledger.behind(1000), BASES.map(() => ({ records: 0, bytes: 0 })));
    assert.equal(ledger.behind(999), null);
    ledger.add(1000, 200 * MiB, 4160);
    assert.deepEqual(ledger.behind(1000), [{ records: 0, bytes: 0 }, { records: 0, bytes: 0 }, { records: 1, bytes: 4160 }, { records: 0, bytes: 0 }]);
  });

  it('refuses regions out of order', () => {
    assert.throws(() => new RegionLedger([0, 64 * MiB, 64 * MiB]));
    assert.throws(() => new RegionLedger([]));
  });
});
