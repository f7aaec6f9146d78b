// The divergence map (src/replication/divergence-map.ts): granules of 64 KiB marked durably
// before a write is taken (D1), only ever added (D2), a whole checked file (D3), and the crash
// rule: a damaged map becomes a full one, never an empty one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DIVERGENCE_GRANULE_BYTES, DivergenceMap } from '../../src/replication/divergence-map.js';

const G = DIVERGENCE_GRANULE_BYTES;
const GiB = 1024 * 1024 * 1024;

function tmpFile(): string {
  return path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-divmap-')), 'd.diverged');
}

test('a write is durable in the map before it is admitted, and a reopen finds it (D1)', async () => {
  const file = tmpFile();
  const size = 4 * GiB;
  const map = await DivergenceMap.create(file, size);
  assert.equal(map.granules, size / G, 'bounded: one bit per 64 KiB granule');
  assert.equal(fs.statSync(file).size, 24 + size / G / 8, 'a 4 GiB disk needs 8 KiB');
  // A 4 KiB write inside one granule, one across a granule boundary.
  const wait = map.admit(10 * G + 4096, 4096);
  assert.ok(wait, 'a new granule waits for the map to be durable');
  await wait;
  await map.admit(20 * G - 2048, 4096);
  assert.equal(map.admit(10 * G, 512), null, 'a granule already durable does not wait');
  assert.equal(map.changedGranules, 3);
  assert.equal(map.changedBytes, 3 * G);
  const reopened = await DivergenceMap.open(file, size, () => assert.fail('not damaged'));
  assert.ok(reopened);
  assert.deepEqual(reopened.runs(), [{ offset: 10 * G, length: G }, { offset: 19 * G, length: 2 * G }]);
});

test('1,000 scattered 4 KiB writes on a 4 GiB disk mark at most 1,000 granules (64 MiB, under 2% of the disk)', async () => {
  const map = await DivergenceMap.create(tmpFile(), 4 * GiB);
  let seed = 7;
  const rand = (): number => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (let i = 0; i < 1000; i++) {
    const w = map.admit(Math.floor(rand() * (4 * GiB / 4096)) * 4096, 4096);
    if (w) await w;
  }
  assert.ok(map.changedGranules <= 1000 && map.changedGranules > 900, `granules: ${map.changedGranules}`);
  assert.ok(map.changedBytes / (4 * GiB) < 0.02, `${map.changedBytes} bytes of 4 GiB`);
});

test('union of both sides, runs clipped to the disk size; a missing map is null, a damaged one is full (crash rule)', async () => {
  const size = 10 * G + 100; // the last granule is partial
  const a = await DivergenceMap.create(tmpFile(), size);
  const b = await DivergenceMap.create(tmpFile(), size);
  a.mark(0, 1);
  b.mark(G, G);
  b.mark(10 * G + 50, 10);
  a.union(b);
  assert.deepEqual(a.runs(), [{ offset: 0, length: 2 * G }, { offset: 10 * G, length: 100 }]);
  assert.equal(await DivergenceMap.open(tmpFile(), size, () => undefined), null);
  const file = tmpFile();
  const c = await DivergenceMap.create(file, size);
  c.mark(0, 1);
  await c.persist();
  const raw = fs.readFileSync(file);
  raw[raw.length - 1]! ^= 0xff; // a torn or damaged file: the checksum no longer matches
  fs.writeFileSync(file, raw);
  let damaged: Error | null = null;
  const full = await DivergenceMap.open(file, size, (err) => (damaged = err));
  assert.ok(damaged, 'the damage is reported');
  assert.equal(full!.changedGranules, full!.granules, 'every granule counts as changed, never none');
  // A map of another size is damaged too (D3: it covers its disk at its granule).
  let other: Error | null = null;
  const wrong = await DivergenceMap.open(file, 2 * size, (err) => (other = err));
  assert.ok(other);
  assert.equal(wrong!.changedGranules, wrong!.granules);
  full!.remove();
  assert.equal(fs.existsSync(file), false, 'the map goes as a whole (D2)');
});

test("a reconnect's union: a peer's snapshot adds its granules, and a snapshot of another disk's size is refused (D3)", async () => {
  const size = 10 * G + 4096; // the last granule is partial
  const mine = await DivergenceMap.create(tmpFile(), size);
  mine.mark(0, 4096);
  mine.mark(5 * G, 2 * G);
  const theirs = await DivergenceMap.create(tmpFile(), size);
  theirs.mark(5 * G + 100, 1);
  theirs.mark(10 * G, 4096);
  const snap = theirs.snapshot();
  assert.equal(snap.length, Math.ceil(theirs.granules / 8), 'one bit per granule');
  assert.equal(mine.unionBits(snap), 1, 'only the granule not marked here is added');
  assert.deepEqual(mine.runs(), [{ offset: 0, length: G }, { offset: 5 * G, length: 2 * G }, { offset: 10 * G, length: 4096 }]);
  assert.equal(mine.unionBits(snap), 0, 'bits are only added, once (D2)');
  // A snapshot round-trips: the same granules, whatever the map held before.
  const copy = await DivergenceMap.create(tmpFile(), size);
  copy.unionBits(mine.snapshot());
  assert.deepEqual(copy.runs(), mine.runs());
  const other = await DivergenceMap.create(tmpFile(), 64 * G);
  assert.throws(() => mine.unionBits(other.snapshot()), /does not cover this disk/);
  assert.equal(mine.changedGranules, 4, 'a refused snapshot changes nothing');
});
