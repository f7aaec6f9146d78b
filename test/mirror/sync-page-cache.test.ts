// A mirror's sync leaves the page cache as it found it (src/mirror/sync-engine.ts): it reads the
// disk and writes the target once, and the pages it would leave behind (read ahead, written in
// large runs: large folios) make the clients' small writes dearer afterwards
// (docs/BENCHMARKS.md). Measured with util-linux `fincore` on the real files:
//  - a disk not in the cache before the sync: after it, neither the disk nor its mirror file
//    holds more than a small part of its pages in the cache;
//  - a disk whose pages are all cached (an application's hot data): the sync leaves them.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { requireTool, run, type Ferryd } from '../harness.js';
import { Cleanup } from '../staging/helpers.js';
import { MiB, T, assertSameBytes, cliJson, fillPattern } from './helpers.js';

const SIZE = 256 * MiB;

/** Bytes of the file the page cache holds (fincore). */
async function resident(file: string): Promise<number> {
  const r = await run(requireTool('fincore'), ['--bytes', '--noheadings', '--output', 'RES', file]);
  assert.equal(r.code, 0, r.stderr);
  return Number(r.stdout.trim());
}

/** Drops the file's clean pages from the page cache (another descriptor: the cache is the file's). */
async function dropCache(file: string): Promise<void> {
  const r = await run(requireTool('dd'), ['if=/dev/null', `of=${file}`, 'oflag=nocache', 'conv=notrunc,fdatasync', 'count=0']);
  assert.equal(r.code, 0, r.stderr);
}

describe("a mirror's sync and the page cache", () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let work: string;

  before(async () => {
    d = await cleanup.ferryd();
    work = fs.realpathSync(cleanup.dir('ferry-sync-cache-'));
  }, T);
  after(() => cleanup.run(), T);

  it('a disk not cached before the sync: after it, little of the disk or of its mirror file is in the cache', T, async (t) => {
    const image = path.join(work, 'cold.img');
    fillPattern(image, 0, SIZE, 3);
    await dropCache(image);
    assert.equal((await d.api('POST', '/v1/disks/adopt', { name: 'cold', path: image })).status, 201);
    const before = await resident(image);
    const target = path.join(work, 'cold-mirror.img');
    await cliJson(d, ['mirror', 'create', 'cold', '--to', `local:${target}`, '--staging', path.join(work, 'cold.stg'), '--staging-size', '64M', '--wait']);
    const disk = await resident(image);
    const mirror = await resident(target);
    t.diagnostic(`resident before the sync ${before} bytes; after it: disk ${disk}, mirror file ${mirror} (of ${SIZE})`);
    // Telling a cold chunk from a hot one takes cachestat(2) (Linux 6.5); an older kernel keeps the disk's pages.
    const [major, minor] = os.release().split('.').map(Number) as [number, number];
    if (major > 6 || (major === 6 && minor >= 5)) assert.ok(disk <= SIZE / 8, `the sync left ${disk} of the disk's ${SIZE} bytes in the cache`);
    assert.ok(mirror <= SIZE / 8, `the sync left ${mirror} of the mirror file's ${SIZE} bytes in the cache`);
    await assertSameBytes(image, target, 'the disk and its mirror');
  });

  it("a disk whose pages are cached (an application's hot data): the sync leaves them in the cache", T, async (t) => {
    const image = path.join(work, 'hot.img');
    fillPattern(image, 0, SIZE, 4);
    fs.readFileSync(image); // every page read: cached
    assert.equal((await d.api('POST', '/v1/disks/adopt', { name: 'hot', path: image })).status, 201);
    const before = await resident(image);
    assert.ok(before >= SIZE * 0.9, `the disk's pages are cached before the sync: ${before}`);
    await cliJson(d, ['mirror', 'create', 'hot', '--to', `local:${path.join(work, 'hot-mirror.img')}`, '--staging', path.join(work, 'hot.stg'), '--staging-size', '64M', '--wait']);
    const after = await resident(image);
    t.diagnostic(`resident: ${before} bytes before the sync, ${after} after`);
    assert.ok(after >= SIZE * 0.9, `the sync dropped the disk's cached pages: ${after} of ${before} left`);
  });
});
