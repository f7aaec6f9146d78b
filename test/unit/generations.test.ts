// Generation identifiers (src/replication/generations.ts): every row of relate()'s decision
// table, the bound on a history, and the validation of a history a peer sends; then the
// disaster-recovery state kept by src/control/dr-control.ts on a real metadata store, in
// process: fencing is durable across a reopen and reaches the volume, a primary whose link
// is down starts one 'diverged' generation at its first write (and none while connected),
// a promote ends the replica and starts its generation in one transaction, and a promoted
// disk answers its former primary's attach with FENCED or SPLIT_BRAIN from the histories.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { FerryError } from '../../src/errors.js';
import { appendGeneration, GENERATIONS_MAX, newGeneration, parseHistory, relate, type Generation } from '../../src/replication/generations.js';
import { DrControl } from '../../src/control/dr-control.js';
import { MetadataStore } from '../../src/control/store.js';
import type { Volume } from '../../src/volume/volume.js';

const g = (id: string, reason: Generation['reason'] = 'create'): Generation => ({ id: id.padStart(16, '0'), reason, atMs: 1 });

test('relate: every row of the decision table', () => {
  const [a, b, c, d, e] = ['a', 'b', 'c', 'd', 'e'].map((x) => g(x));
  // row 1: either history empty
  assert.equal(relate([], [a!]), 'none');
  assert.equal(relate([a!], []), 'none');
  assert.equal(relate([], []), 'none');
  // row 2: same current generation (histories may differ in how far back they reach)
  assert.equal(relate([a!, b!], [a!, b!]), 'same');
  assert.equal(relate([b!], [a!, b!]), 'same');
  // row 3: the peer moved on from our current (a promote there): we are stale
  assert.equal(relate([a!, b!], [a!, b!, c!]), 'peer-ahead');
  assert.equal(relate([b!], [a!, b!, c!, d!]), 'peer-ahead');
  // row 4: we moved on from the peer's current: the peer is stale
  assert.equal(relate([a!, b!, c!], [a!, b!]), 'local-ahead');
  // row 5: both moved on from a common ancestor
  assert.equal(relate([a!, b!, c!], [a!, b!, d!]), 'split-brain');
  assert.equal(relate([a!, c!, e!], [a!, d!]), 'split-brain');
  // row 6: nothing in common (another disk, or the ancestor fell out of the bound)
  assert.equal(relate([a!, b!], [c!, d!]), 'unrelated');
});

test('a history keeps the last GENERATIONS_MAX generations; new ids are 16 hex digits and differ', () => {
  let h: Generation[] = [];
  for (let i = 0; i < GENERATIONS_MAX + 5; i++) h = appendGeneration(h, newGeneration('resync'));
  assert.equal(h.length, GENERATIONS_MAX);
  assert.equal(new Set(h.map((x) => x.id)).size, GENERATIONS_MAX);
  assert.ok(h.every((x) => /^[0-9a-f]{16}$/.test(x.id)));
});

test('parseHistory: a peer history is taken only when well formed and bounded', () => {
  const ok = [g('1'), g('2', 'promote')];
  assert.deepEqual(parseHistory(JSON.parse(JSON.stringify(ok))), ok);
  assert.deepEqual(parseHistory([]), []);
  assert.equal(parseHistory(undefined), null);
  assert.equal(parseHistory('x'), null);
  assert.equal(parseHistory([{ id: 'zz', reason: 'create', atMs: 1 }]), null, 'id not hex');
  assert.equal(parseHistory([g('1'), g('1')]), null, 'an id twice');
  assert.equal(parseHistory([{ ...g('1'), reason: 'boom' }]), null, 'unknown reason');
  assert.equal(parseHistory([{ ...g('1'), atMs: -1 }]), null, 'bad time');
  assert.equal(parseHistory(Array.from({ length: GENERATIONS_MAX + 1 }, (_, i) => g(String(i + 1)))), null, 'over the bound');
});

/** A volume stand-in that records the fence the control sets (the real Volume's setFence is a field write). */
function fakeVolume(): { volume: Volume; fence: () => string | null } {
  let fence: string | null = null;
  const volume = {
    setFence: (r: string | null) => void (fence = r),
    size: 1 << 20,
    trackChanges: () => undefined,
  } as unknown as Volume;
  return { volume, fence: () => fence };
}

function rig(): { dir: string; open(): { store: MetadataStore; dr: DrControl } } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-dr-'));
  return {
    dir,
    open() {
      const store = new MetadataStore(path.join(dir, 'ferry.db'));
      store.insertDisk({ name: 'd', kind: 'virtual', pool: null, path: path.join(dir, 'd.img'), size: 1 << 20, read_only: 0, created_at: 1 });
      return { store, dr: new DrControl(store, pino({ level: 'silent' }), path.join(dir, 'bitmaps')) };
    },
  };
}

test('a primary fenced by its peer refuses writes, and stays fenced after a reopen of its store', () => {
  const r = rig();
  const first = r.open();
  first.dr.ensureHistory('d');
  const mine = first.dr.history('d');
  const v = fakeVolume();
  let up = true;
  first.dr.watchPrimary('d', v.volume, () => up);
  // The peer refuses the attach with its history, one generation ahead (it was promoted).
  const theirs = appendGeneration(mine, newGeneration('promote'));
  first.dr.primaryFailed('d', 'site-b', new FerryError('FENCED', 'x', { remote: { generations: theirs } }));
  assert.equal(first.dr.status('d')!.state, 'fenced');
  assert.match(v.fence()!, /site-b was promoted past this site/);
  assert.equal(first.dr.held('d')!.code, 'FENCED', 'the stream holds');
  // A fenced disk starts no generation at a write (its writes are refused anyway).
  up = false;
  first.dr.beforeWrite('d');
  assert.equal(first.dr.history('d').length, 1);
  first.store.close();
  // Reopened (a restart): the fence is applied to the volume before anything is served.
  const v2 = fakeVolume();
  const store2 = new MetadataStore(path.join(r.dir, 'ferry.db'));
  const dr2 = new DrControl(store2, pino({ level: 'silent' }), path.join(r.dir, 'bitmaps'));
  dr2.openAtStart('d', v2.volume);
  assert.match(v2.fence()!, /promoted past this site/);
  // Becoming the peer's replica ends the fence and adopts the peer's history.
  dr2.replicaCreated('d', theirs);
  assert.equal(v2.fence(), null);
  assert.equal(dr2.status('d')!.state, 'normal');
  assert.deepEqual(dr2.history('d').map((x) => x.id), theirs.map((x) => x.id));
  store2.close();
});

test('a primary starts one diverged generation at its first write while its link is down, none while connected', () => {
  const { store, dr } = rig().open();
  dr.ensureHistory('d');
  const v = fakeVolume();
  let up: boolean | null = true;
  dr.watchPrimary('d', v.volume, () => up);
  dr.beforeWrite('d');
  assert.equal(dr.history('d').length, 1, 'connected: no new generation');
  up = false;
  dr.beforeWrite('d');
  dr.beforeWrite('d');
  assert.deepEqual(dr.history('d').map((x) => x.reason), ['create', 'diverged'], 'one per outage');
  // An accepted attach (the replica adopted our history) ends the outage; the next one starts another.
  dr.primaryAttached('d', 'site-b', dr.history('d'));
  dr.beforeWrite('d');
  assert.equal(dr.history('d').length, 3);
  up = null; // the stream stopped (mirror removed): no more generations
  dr.primaryAttached('d', 'site-b', dr.history('d'));
  dr.beforeWrite('d');
  assert.equal(dr.history('d').length, 3);
  store.close();
});

test('a promoted disk answers its former primary: FENCED when it is stale, SPLIT_BRAIN (recorded here) when both moved on', () => {
  const { store, dr } = rig().open();
  const origin = [newGeneration('create')];
  dr.replicaCreated('d', origin);
  store.insertReplica({ disk: 'd', peer: 'site-a', origin_disk: 'src', synced: 1, created_disk: 1, created_at: 1 });
  dr.replicaAttach('d', 'site-a', origin); // same: accepted
  // The promote: the replica row goes and the generation starts, together.
  const p = dr.promoted('d', 'site-a', 'src', () => store.deleteReplica('d'));
  assert.equal(store.replica('d'), undefined);
  assert.equal(dr.status('d')!.generation, p.id);
  assert.equal(dr.status('d')!.formerPrimary, 'site-a:src');
  // Its former primary, not written since: stale.
  assert.throws(() => dr.formerReplicaAttach('d', 'site-a', 'src', origin), (e: unknown) => e instanceof FerryError && e.code === 'FENCED' && Array.isArray(e.details?.generations));
  // Another peer or disk: not answered from the history.
  dr.formerReplicaAttach('d', 'site-c', 'src', origin);
  dr.formerReplicaAttach('d', 'site-a', 'other', origin);
  // Its former primary, written while cut off: split brain, recorded here too.
  const diverged = appendGeneration(origin, newGeneration('diverged'));
  assert.throws(() => dr.formerReplicaAttach('d', 'site-a', 'src', diverged), (e: unknown) => e instanceof FerryError && e.code === 'SPLIT_BRAIN');
  assert.equal(dr.status('d')!.state, 'split-brain');
  assert.equal(dr.held('d')!.code, 'SPLIT_BRAIN');
  store.close();
});

test('a replica adopts its primary history when the primary is ahead, and refuses a history that does not contain its own', () => {
  const { store, dr } = rig().open();
  const h1 = [newGeneration('create')];
  dr.replicaCreated('d', h1);
  const h2 = appendGeneration(h1, newGeneration('diverged'));
  dr.replicaAttach('d', 'site-a', h2);
  assert.equal(dr.status('d')!.generation, h2[1]!.id);
  assert.throws(() => dr.replicaAttach('d', 'site-a', [newGeneration('create')]), (e: unknown) => e instanceof FerryError && e.code === 'SPLIT_BRAIN');
  assert.throws(() => dr.replicaAttach('d', 'site-a', h1), (e: unknown) => e instanceof FerryError && e.code === 'SPLIT_BRAIN', 'the replica cannot be ahead of its primary');
  store.close();
});
