// The read overlay against a byte-per-position model under random inserts and removals.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ExtentKind, Overlay } from '../../src/volume/overlay.js';
import { seededRng } from '../../src/testing/faulty-store.js';

const SIZE = 4096;

function check(o: Overlay, model: Int32Array): void {
  // model[i] = seq covering byte i, or 0. Overlay must agree everywhere, with no overlaps.
  let prevEnd = -1;
  for (const x of o.all()) {
    assert.ok(x.start >= prevEnd, 'extents are sorted and disjoint');
    prevEnd = x.end;
  }
  const seen = new Int32Array(SIZE);
  for (const p of o.lookup(0, SIZE)) for (let i = p.start; i < p.end; i++) seen[i] = p.seq;
  assert.deepEqual(seen, model);
}

test('overlay matches a byte model under random inserts, splits and removals', () => {
  const rng = seededRng(7);
  const o = new Overlay();
  const model = new Int32Array(SIZE);
  const live: Array<{ seq: number; start: number; end: number }> = [];
  const startOf = new Map<number, number>();
  for (let seq = 1; seq <= 3000; seq++) {
    const start = Math.floor(rng() * SIZE);
    const end = Math.min(SIZE, start + 1 + Math.floor(rng() * 200));
    o.insert({ start, end, seq, kind: ExtentKind.DATA, jpos: seq * 10_000 });
    model.fill(seq, start, end);
    live.push({ seq, start, end });
    startOf.set(seq, start);
    if (rng() < 0.45 && live.length) {
      // The committer applies records in order: remove the oldest.
      const r = live.shift()!;
      o.removeRecord(r.seq, r.start, r.end);
      for (let i = r.start; i < r.end; i++) if (model[i] === r.seq) model[i] = 0;
    }
    if (seq % 97 === 0) check(o, model);
  }
  check(o, model);
  // Lookups are clipped, and each piece's journal position follows its offset in the record.
  for (let i = 0; i < 200; i++) {
    const s = Math.floor(rng() * SIZE);
    const e = Math.min(SIZE, s + Math.floor(rng() * 300) + 1);
    for (const p of o.lookup(s, e)) {
      assert.ok(p.start >= s && p.end <= e && p.start < p.end);
      assert.equal(p.jpos, p.seq * 10_000 + (p.start - startOf.get(p.seq)!));
    }
  }
  while (live.length) {
    const r = live.shift()!;
    o.removeRecord(r.seq, r.start, r.end);
  }
  assert.equal(o.size, 0);
});

test('overlay stays fast with hundreds of thousands of extents', () => {
  const o = new Overlay();
  for (let i = 0; i < 200_000; i++) o.insert({ start: i * 8192, end: i * 8192 + 4096, seq: i + 1, kind: ExtentKind.DATA, jpos: 0 });
  assert.equal(o.size, 200_000);
  assert.equal(o.lookup(8192 * 1000, 8192 * 1001).length, 1);
  o.insert({ start: 0, end: 8192 * 200_000, seq: 300_000, kind: ExtentKind.ZERO, jpos: -1 });
  assert.equal(o.size, 1);
});
