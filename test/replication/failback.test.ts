// Delta failback, part 1: the regions each side changed since the sites diverged
// (src/replication/divergence-map.ts, kept by src/control/dr-control.ts), with two real
// ferryd sites through the WAN proxy:
//  - site A lost mid-stream with records B never received (the link cut, writes at A, kill -9
//    of A), B promoted and written (scattered 4 KiB writes): B's map holds exactly the
//    granules it wrote, and keeps them across a kill -9 of B; A back, fenced: its map holds
//    exactly the granules of the records B never acknowledged;
//  - split brain (A written after the link went down, B promoted and written, the link back):
//    each side's map holds its own writes since divergence, and A's grows with every write
//    it still takes (durably before the write: a kill -9 right after loses none).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { requireTool, waitFor } from '../harness.js';
import { Cleanup } from '../staging/helpers.js';
import { DIVERGENCE_GRANULE_BYTES } from '../../src/replication/divergence-map.js';
import { MiB, cliJson, drOf, qemuIoOk, startSites, stopSitesBounded, waitCaughtUp, waitStatus, type Sites } from './helpers.js';

const DISK = 64 * MiB;
const G = DIVERGENCE_GRANULE_BYTES;
const LONG = { timeout: 240_000 } as const;

describe('delta failback: changed regions since divergence', () => {
  const cleanup = new Cleanup();
  let s: Sites;
  let work: string;

  before(async () => {
    requireTool('qemu-io');
    s = await startSites(cleanup);
    stopSitesBounded(cleanup, s);
    work = cleanup.dir('ferry-failback-');
  }, LONG);
  after(() => cleanup.run(), LONG);

  it('A lost with records B never received, B promoted and written: each side tracks exactly the granules it changed', LONG, async (t) => {
    await s.a.createDisk('fb', DISK);
    await cliJson(s.a, ['mirror', 'create', 'fb', '--to', `${s.peer}:fb-dr`, '--staging', path.join(work, 'fb.stg'), '--staging-size', '128M']);
    await qemuIoOk(s.a.uri('fb'), [`write -P 0x11 0 ${DISK}`]);
    await waitCaughtUp(s, 'fb', 'fb-dr');
    assert.equal((await drOf(s.a, 'fb')).changed ?? null, null, 'nothing is tracked while the pair is whole');

    // Records B never receives: written at A into a cut link, then A is lost.
    s.proxy.cut();
    const lost = [8 * MiB, 40 * MiB + 3 * G + 512];
    await qemuIoOk(s.a.uri('fb'), lost.map((o) => `write -P 0x66 ${o} 4k`));
    assert.equal((await s.a.kill9()).signal, 'SIGKILL');

    await cliJson(s.b, ['mirror', 'promote', 'fb-dr']);
    const promoted = await drOf(s.b, 'fb-dr');
    assert.deepEqual(promoted.changed, { granuleBytes: G, granules: 0, bytes: 0 }, 'a promote starts an empty map');
    // Scattered 4 KiB writes, one straddling a granule boundary.
    const writes = [0, 5 * MiB + 4096, 17 * MiB, 17 * MiB + 8192, 30 * MiB + G - 2048, 63 * MiB];
    await qemuIoOk(s.b.uri('fb-dr'), writes.map((o) => `write -P 0x22 ${o} 4k`));
    const granules = new Set(writes.flatMap((o) => [Math.floor(o / G), Math.floor((o + 4095) / G)]));
    const b = await drOf(s.b, 'fb-dr');
    t.diagnostic(`B: ${JSON.stringify(b.changed)} for ${writes.length} writes`);
    assert.deepEqual(b.changed, { granuleBytes: G, granules: granules.size, bytes: granules.size * G }, "B's map holds exactly the granules written since the promote");

    // The map is durable before each write is taken: a kill -9 of B loses none of it.
    assert.equal((await s.b.kill9()).signal, 'SIGKILL');
    await s.b.restart();
    assert.deepEqual((await drOf(s.b, 'fb-dr')).changed, b.changed, 'the map survives a kill -9');
    await qemuIoOk(s.b.uri('fb-dr'), ['write -P 0x23 0 4k']);
    assert.equal((await drOf(s.b, 'fb-dr')).changed.granules, granules.size, 'a granule already marked is not counted twice');

    // A comes back: fenced, and its map holds the granules of the records B never acknowledged.
    s.proxy.restore();
    await s.a.restart();
    await waitFor('A learns B was promoted past it', async () => (await drOf(s.a, 'fb')).state === 'fenced', 60_000);
    await waitFor("A's changed regions are recorded", async () => ((await drOf(s.a, 'fb')).changed?.granules ?? 0) > 0, 60_000);
    const a = await drOf(s.a, 'fb');
    t.diagnostic(`A: ${JSON.stringify(a.changed)}`);
    assert.deepEqual(a.changed, { granuleBytes: G, granules: lost.length, bytes: lost.length * G }, "A's map holds exactly its unacknowledged records' granules");
    // And again from its own staging area after a restart (bits only added: the same map).
    await s.a.restart();
    await waitFor('A fenced again', async () => (await drOf(s.a, 'fb')).state === 'fenced', 60_000);
    assert.deepEqual((await drOf(s.a, 'fb')).changed, a.changed);
  });

  it('split brain: each side tracks its own writes since divergence, and A keeps tracking the writes it takes', LONG, async (t) => {
    await s.a.createDisk('sb', DISK);
    await cliJson(s.a, ['mirror', 'create', 'sb', '--to', `${s.peer}:sb-dr`, '--staging', path.join(work, 'sb.stg'), '--staging-size', '128M']);
    await qemuIoOk(s.a.uri('sb'), [`write -P 0x33 0 ${DISK}`]);
    await waitCaughtUp(s, 'sb', 'sb-dr');
    s.proxy.cut();
    await qemuIoOk(s.a.uri('sb'), ['write -P 0x66 2M 4k']); // shipped into the cut, never received
    await waitStatus(s.a, 'sb', 'the link is down', (st) => st.link?.state !== 'connected', 60_000);
    await qemuIoOk(s.a.uri('sb'), ['write -P 0x44 20M 4k', 'write -P 0x44 21M 4k']); // after divergence
    await cliJson(s.b, ['mirror', 'promote', 'sb-dr']);
    await qemuIoOk(s.b.uri('sb-dr'), ['write -P 0x55 1M 4k', 'write -P 0x55 40M 4k', 'write -P 0x55 50M 4k']);
    s.proxy.restore();
    await waitFor('split brain at A', async () => (await drOf(s.a, 'sb')).state === 'split-brain', 60_000);
    await waitFor("A's changed regions are recorded", async () => ((await drOf(s.a, 'sb')).changed?.granules ?? 0) > 0, 60_000);
    const a = await drOf(s.a, 'sb');
    const b = await drOf(s.b, 'sb-dr');
    t.diagnostic(`A: ${JSON.stringify(a.changed)}  B: ${JSON.stringify(b.changed)}`);
    assert.equal(a.changed.granules, 3, "A: its record B never received and its two writes after divergence");
    assert.equal(b.changed.granules, 3, "B: its three writes since the promote");
    // A still takes writes in split brain; each is marked before it is taken.
    await qemuIoOk(s.a.uri('sb'), ['write -P 0x77 60M 4k']);
    assert.equal((await drOf(s.a, 'sb')).changed.granules, 4);
    assert.equal((await s.a.kill9()).signal, 'SIGKILL');
    await s.a.restart();
    await waitFor('A in split brain again', async () => (await drOf(s.a, 'sb')).state === 'split-brain', 60_000);
    assert.equal((await drOf(s.a, 'sb')).changed.granules, 4, 'the map and the staged records agree after a kill -9');
  });
});
