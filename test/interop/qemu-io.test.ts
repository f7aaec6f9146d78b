// qemu-io (QEMU's NBD block driver) against ferryd: pattern writes and reads, byte
// granularity, FUA, write-zeroes, discard, the edges of the disk.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import type { Ferryd } from '../harness.js';
import { Cleanup, ok, qemuIo, qemuIoOk, T } from './clients.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

describe('qemu-io', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let backing: string;
  let uri: string;

  before(async () => {
    d = await cleanup.ferryd();
    backing = (await d.createDisk('qio', SIZE)).path;
    uri = d.uri('qio');
  }, T);
  after(() => cleanup.run(), T);

  /** Bytes of the backing file, read directly (the disk passes writes straight through). */
  function backingBytes(offset: number, length: number): Buffer {
    const fd = fs.openSync(backing, 'r');
    try {
      const b = Buffer.alloc(length);
      fs.readSync(fd, b, 0, length, offset);
      return b;
    } finally {
      fs.closeSync(fd);
    }
  }

  it('writes a pattern and reads it back', T, async () => {
    await qemuIoOk(uri, ['write -P 0xab 0 64k', 'read -P 0xab 0 64k']);
    // In a new connection too, and in the backing file.
    await qemuIoOk(uri, ['read -P 0xab 0 64k']);
    assert.ok(backingBytes(0, 65536).equals(Buffer.alloc(65536, 0xab)));
  });

  it('a wrong pattern is detected (the check itself works)', T, async () => {
    const r = await qemuIo(uri, ['read -P 0xcd 0 64k']);
    assert.notEqual(r.code, 0);
    assert.match(r.stdout + r.stderr, /Pattern verification failed/);
  });

  it('reads of never-written regions are zeroes', T, async () => {
    await qemuIoOk(uri, ['read -P 0 1M 8M', 'read -P 0 60M 4M', 'read -P 0 1234567 6789']);
  });

  it('byte-granular unaligned writes change exactly their bytes', T, async () => {
    await qemuIoOk(uri, [
      'write -P 0x11 2M 8k',
      'write -P 0x22 2101249 3', // 2M + 4097
      'write -P 0x33 2105343 2', // straddles the 4 KiB boundary at 2M + 8192
      'write -P 0x44 2097152 1', // first byte
      'read -P 0x44 2097152 1',
      'read -P 0x11 2097153 4096',
      'read -P 0x22 2101249 3',
      'read -P 0x11 2101252 4091',
      'read -P 0x33 2105343 2',
      'read -P 0 2105345 4095',
    ]);
    const b = backingBytes(2 * MiB + 4096, 4);
    assert.deepEqual([...b], [0x11, 0x22, 0x22, 0x22]);
  });

  it('odd-sized writes at odd offsets, many in one session', T, async () => {
    const cmds: string[] = [];
    for (let i = 0; i < 32; i++) {
      const off = 3 * MiB + i * 10007;
      const len = 1 + ((i * 977) % 9000);
      cmds.push(`write -P ${i + 1} ${off} ${len}`);
    }
    for (let i = 0; i < 32; i++) {
      const off = 3 * MiB + i * 10007;
      const len = Math.min(1 + ((i * 977) % 9000), 10007);
      cmds.push(`read -P ${i + 1} ${off} ${len}`);
    }
    await qemuIoOk(uri, cmds);
  });

  it('FUA writes (write -f) are acknowledged and stored', T, async () => {
    await qemuIoOk(uri, ['write -f -P 0x5f 5M 64k', 'write -f -P 0x6f 5242881 100', 'read -P 0x5f 5M 1', 'read -P 0x6f 5242881 100']);
    assert.ok(backingBytes(5 * MiB + 1, 100).equals(Buffer.alloc(100, 0x6f)));
    const stats = (await d.api('GET', '/v1/disks/qio')).body.stats;
    assert.ok(stats.writeOps >= 2);
  });

  it('flush after writes (aio writes then flush)', T, async () => {
    await qemuIoOk(uri, ['aio_write -P 0x71 6M 4k', 'aio_write -P 0x72 6295552 4k', 'aio_flush', 'flush', 'read -P 0x71 6M 4k', 'read -P 0x72 6295552 4k']);
  });

  it('write -z zeroes a written range, with and without unmap', T, async () => {
    const at = 7 * MiB;
    await qemuIoOk(uri, [
      `write -P 0x99 ${at} 256k`,
      `write -z ${at} 64k`,
      `write -z -u ${at + 65536} 64k`,
      `read -P 0 ${at} 128k`,
      `read -P 0x99 ${at + 131072} 128k`,
    ]);
    // Unaligned zeroing inside a block keeps the bytes around it.
    await qemuIoOk(uri, ['write -P 0x42 8M 4k', 'write -z 8389633 10', 'read -P 0x42 8M 1025', 'read -P 0 8389633 10', 'read -P 0x42 8389643 3061']);
  });

  it('discard makes a range read as zeroes and deallocates it', T, async () => {
    await qemuIoOk(uri, ['write -P 0x77 16M 1M', 'discard 16M 1M', 'read -P 0 16M 1M']);
    const map = JSON.parse((await ok('nbdinfo', ['--map', '--json', uri])).stdout) as Array<{ offset: number; length: number; type: number }>;
    const covering = map.find((e) => e.offset <= 16 * MiB && e.offset + e.length > 16 * MiB)!;
    assert.equal(covering.type, 3, `16M should be a hole after discard: ${JSON.stringify(map)}`);
    assert.ok(covering.offset + covering.length >= 17 * MiB);
  });

  it('writes and reads the very last byte and the last block', T, async () => {
    await qemuIoOk(uri, [`write -P 0xee ${SIZE - 1} 1`, `read -P 0xee ${SIZE - 1} 1`, `write -P 0xdd ${SIZE - 4096} 4095`, `read -P 0xdd ${SIZE - 4096} 4095`, `read -P 0xee ${SIZE - 1} 1`]);
    assert.equal(backingBytes(SIZE - 1, 1)[0], 0xee);
    assert.equal(fs.statSync(backing).size, SIZE, 'the backing file did not grow');
  });

  it('a read or write past the end fails and changes nothing', T, async () => {
    const r = await qemuIo(uri, [`read ${SIZE - 4} 8`]);
    assert.notEqual(r.code, 0);
    assert.match(r.stdout + r.stderr, /read failed/);
    const w = await qemuIo(uri, [`write -P 1 ${SIZE} 512`]);
    assert.notEqual(w.code, 0);
    assert.match(w.stdout + w.stderr, /write failed/);
    assert.equal(fs.statSync(backing).size, SIZE);
    await qemuIoOk(uri, [`read -P 0xee ${SIZE - 1} 1`]);
  });

  it('a 4 TiB sparse disk: 64-bit offsets beyond 4 GiB and at the very end', T, async () => {
    const TiB4 = 4 * 1024 * 1024 * MiB;
    await d.createDisk('huge', TiB4);
    const u = d.uri('huge');
    const at = 2 ** 32 + 5; // just past the 32-bit boundary
    await qemuIoOk(u, [`write -P 0x12 ${at} 100`, `write -P 0x11 ${TiB4 - 65536} 64k`, `read -P 0x12 ${at} 100`, `read -P 0 ${at - 5} 5`, `read -P 0x11 ${TiB4 - 65536} 64k`]);
    const map = JSON.parse((await ok('nbdinfo', ['--map', '--json', u])).stdout) as Array<{ offset: number; length: number; type: number }>;
    assert.deepEqual(
      map.map((e) => e.type),
      [3, 0, 3, 0],
      JSON.stringify(map),
    );
    assert.equal(map[1]!.offset, 2 ** 32);
    assert.equal(map[3]!.offset + map[3]!.length, TiB4);
    const info = (await d.api('GET', '/v1/disks/huge')).body;
    assert.ok(info.allocatedBytes < 4 * MiB, `a sparse disk stays sparse: ${info.allocatedBytes}`);
  });

  it('a large 32 MiB write (the advertised maximum) in one request', T, async () => {
    await qemuIoOk(uri, ['write -P 0x3c 32M 32M', 'read -P 0x3c 32M 32M']);
  });
});
