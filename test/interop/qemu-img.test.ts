// qemu-img against ferryd: convert a sparse random image into a disk and out again,
// compare byte for byte, and read the allocation map through NBD block status.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type { Ferryd } from '../harness.js';
import { Cleanup, fails, ok, qemuIoOk, sha256File, writeRandomFile, T } from './clients.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

interface MapEntry {
  start: number;
  length: number;
  zero: boolean;
  data: boolean;
}

describe('qemu-img', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let dir: string;
  let source: string;

  before(async () => {
    d = await cleanup.ferryd();
    dir = cleanup.dir();
    // A sparse image: random data at [0, 4M) and [12M, 16M) and [40M, 40M+100K), holes elsewhere.
    source = path.join(dir, 'source.img');
    writeRandomFile(source, 4 * MiB);
    const fd = fs.openSync(source, 'r+');
    for (const [at, len] of [
      [12 * MiB, 4 * MiB],
      [40 * MiB, 100 * 1024],
    ] as const) {
      const tmp = path.join(dir, 'chunk');
      writeRandomFile(tmp, len);
      fs.writeSync(fd, fs.readFileSync(tmp), 0, len, at);
    }
    fs.ftruncateSync(fd, SIZE);
    fs.closeSync(fd);
    await d.createDisk('target', SIZE);
    await d.createDisk('dirty', SIZE);
  }, T);
  after(() => cleanup.run(), T);

  async function map(uri: string): Promise<MapEntry[]> {
    return JSON.parse((await ok('qemu-img', ['map', '--output=json', '-f', 'raw', uri])).stdout) as MapEntry[];
  }

  it('qemu-img info sees the disk as a raw image of the right size', T, async () => {
    const r = await ok('qemu-img', ['info', '--output=json', '-f', 'raw', d.uri('target')]);
    const info = JSON.parse(r.stdout);
    assert.equal(info['virtual-size'], SIZE);
    assert.equal(info.format, 'raw');
  });

  it('convert -n copies a sparse random image in, and compare finds it identical', T, async () => {
    await ok('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source, d.uri('target')]);
    const r = await ok('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, d.uri('target')]);
    assert.match(r.stdout, /Images are identical/);
  });

  it('map --output=json reflects what was written: data where the source had data, zero holes elsewhere', T, async () => {
    const m = await map(d.uri('target'));
    assert.equal(m.at(-1)!.start + m.at(-1)!.length, SIZE);
    const at = (off: number): MapEntry => m.find((e) => e.start <= off && off < e.start + e.length)!;
    for (const off of [0, 4 * MiB - 1, 12 * MiB, 16 * MiB - 1, 40 * MiB, 40 * MiB + 100 * 1024 - 1]) {
      assert.equal(at(off).data, true, `data at ${off}: ${JSON.stringify(m)}`);
    }
    for (const off of [4 * MiB, 8 * MiB, 12 * MiB - 1, 16 * MiB, 39 * MiB, 41 * MiB, SIZE - 1]) {
      assert.equal(at(off).data, false, `no data at ${off}: ${JSON.stringify(m)}`);
      assert.equal(at(off).zero, true, `zero at ${off}`);
    }
    // The disk's file is as sparse as the map says: about 8.1 MiB allocated, not 64.
    const info = (await d.api('GET', '/v1/disks/target')).body;
    assert.ok(info.allocatedBytes >= 8 * MiB && info.allocatedBytes < 16 * MiB, `allocated ${info.allocatedBytes}`);
  });

  it('convert -n over a disk holding old data zeroes the source holes', T, async () => {
    await qemuIoOk(d.uri('dirty'), ['write -P 0xaa 0 64M']);
    await ok('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source, d.uri('dirty')]);
    await ok('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, d.uri('dirty')]);
  });

  it('compare notices a one-byte change made through NBD', T, async () => {
    await qemuIoOk(d.uri('dirty'), [`write -P 0x01 ${20 * MiB + 7} 1`]);
    const r = await fails('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, d.uri('dirty')]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stdout, /Content mismatch at offset/);
  });

  it('convert out of the disk to a new file gives the source bytes back', T, async () => {
    const out = path.join(dir, 'out.img');
    await ok('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', d.uri('target'), out]);
    assert.equal(fs.statSync(out).size, SIZE);
    assert.equal(sha256File(out), sha256File(source));
  });

  it('convert into a disk through qcow2 compression round trip (qemu-img as a pipeline stage)', T, async () => {
    const qcow = path.join(dir, 'mid.qcow2');
    await ok('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', d.uri('target'), qcow]);
    await d.createDisk('fromqcow', SIZE);
    await ok('qemu-img', ['convert', '-n', '-f', 'qcow2', '-O', 'raw', qcow, d.uri('fromqcow')]);
    await ok('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, d.uri('fromqcow')]);
  });
});
