// The sync engine's delta resync (SyncOptions.granules, the copy a failback makes of the
// regions changed since divergence: replication/divergence-map.ts):
//  - only the marked granules are read and written: a region that differs but is not marked
//    is left as it is, the marked ones end equal to the source, and the bytes copied are the
//    marked granules' bytes;
//  - the failback figure on real files: 1,000 scattered 4 KiB writes on a 4 GiB sparse disk,
//    marked in a divergence map as the write path marks them, then a delta resync onto the
//    old image: byte-identical afterwards (qemu-img compare), bytes copied over the bytes of
//    the changed granules, and over the disk size.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { BlockDevice } from '../../src/disk/block-device.js';
import type { DiskStore } from '../../src/disk/store.js';
import { SyncEngine } from '../../src/mirror/sync-engine.js';
import { DIVERGENCE_GRANULE_BYTES, DivergenceMap } from '../../src/replication/divergence-map.js';
import { requireTool, run } from '../harness.js';

const log = pino({ level: 'silent' });
const G = DIVERGENCE_GRANULE_BYTES;
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-delta-'));
}

function sparseFile(file: string, size: number): BlockDevice {
  fs.writeFileSync(file, '');
  fs.truncateSync(file, size);
  return BlockDevice.open(file);
}

describe('sync engine: delta resync of granules', () => {
  it('copies only the marked granules, exactly', async () => {
    const dir = tmpDir();
    const size = 12 * MiB + 3 * G + 100; // a short last chunk and granule
    const src = sparseFile(path.join(dir, 'src'), size);
    const dst = sparseFile(path.join(dir, 'dst'), size);
    const data = crypto.randomBytes(size);
    await src.write(data, 0, size, 0);
    await dst.write(data, 0, size, 0);
    const map = await DivergenceMap.create(path.join(dir, 'map'), size);
    // Changed at the source, marked: these must be copied.
    const marked = [0, 5 * MiB + 7, 8 * MiB - 10, size - 50];
    for (const o of marked) {
      const n = Math.min(4096, size - o);
      await src.write(crypto.randomBytes(n), 0, n, o);
      map.mark(o, n);
    }
    // Different at the target but not marked: a delta resync must leave it alone.
    const unmarked = 10 * MiB;
    await dst.write(Buffer.alloc(4096, 0xee), 0, 4096, unmarked);
    const engine = new SyncEngine(src, dst as DiskStore, { mode: 'full', targetIsZero: false, startCursor: 0, onCheckpoint: () => undefined, granules: { bytes: G, has: (g) => map.has(g) }, log });
    await engine.start();
    assert.ok(engine.done, engine.error ?? 'done');
    assert.equal(engine.copiedBytes, map.changedBytes - (G - (size % G)), 'the bytes copied are the marked granules (the last one short)');
    const a = Buffer.alloc(size);
    const b = Buffer.alloc(size);
    await src.read(a, 0, size, 0);
    await dst.read(b, 0, size, 0);
    for (let g = 0; g * G < size; g++) {
      const [s, e] = [g * G, Math.min(size, (g + 1) * G)];
      const same = a.compare(b, s, e, s, e) === 0;
      if (g === unmarked / G) assert.equal(same, false, 'an unmarked granule is not written');
      else assert.equal(same, true, `granule ${g} equals the source`);
    }
    await src.close();
    await dst.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('1,000 scattered 4 KiB writes on a 4 GiB sparse disk: the resync copies the changed granules only', async (t) => {
    const qemuImg = requireTool('qemu-img');
    const dir = tmpDir();
    try {
      const size = 4 * GiB;
      const src = sparseFile(path.join(dir, 'src.img'), size);
      const dst = sparseFile(path.join(dir, 'dst.img'), size);
      // The common image before divergence: some data on both.
      const base = crypto.randomBytes(8 * MiB);
      await src.write(base, 0, base.length, GiB);
      await dst.write(base, 0, base.length, GiB);
      const map = await DivergenceMap.create(path.join(dir, 'src.diverged'), size);
      let seed = 42;
      const rand = (): number => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
      for (let i = 0; i < 1000; i++) {
        const o = Math.floor(rand() * (size / 4096)) * 4096;
        const w = map.admit(o, 4096); // as the write path does: marked durably, then written
        if (w) await w;
        await src.write(crypto.randomBytes(4096), 0, 4096, o);
      }
      await src.sync();
      const engine = new SyncEngine(src, dst as DiskStore, { mode: 'full', targetIsZero: false, startCursor: 0, onCheckpoint: () => undefined, granules: { bytes: G, has: (g) => map.has(g) }, log });
      await engine.start();
      assert.ok(engine.done, engine.error ?? 'done');
      await src.close();
      await dst.close();
      const cmp = await run(qemuImg, ['compare', '-f', 'raw', '-F', 'raw', path.join(dir, 'src.img'), path.join(dir, 'dst.img')], { timeoutMs: 300_000 });
      assert.equal(cmp.code, 0, `byte-identical after the delta resync: ${cmp.stdout}${cmp.stderr}`);
      const ratio = engine.copiedBytes / map.changedBytes;
      const ofDisk = engine.copiedBytes / size;
      t.diagnostic(`1000 x 4 KiB on 4 GiB: ${map.changedGranules} granules changed (${map.changedBytes} B), resync copied ${engine.copiedBytes} B: ${ratio.toFixed(3)} of the changed granules, ${(ofDisk * 100).toFixed(2)} % of the disk`);
      assert.ok(ratio <= 1.1, `copied / changed granules = ${ratio}`);
      assert.ok(ofDisk < 0.02, `copied / disk = ${ofDisk}`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
