// Compression on the replication link (src/replication/link-shaper.ts, zstd-pool.ts): a
// payload whose sample zstd cannot shrink goes as it is, without a trip to the worker pool;
// a compressible one is compressed and comes back intact; small ones are always tried.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { FrameFlag } from '../../src/replication/frame.js';
import { LinkShaper } from '../../src/replication/link-shaper.js';
import { PROBE_PAYLOAD_BYTES_MIN, worthCompressing, zstdPool } from '../../src/replication/zstd-pool.js';

after(() => zstdPool().close());

function textLike(bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let at = 0, i = 0; at < bytes; i++) at += b.write(`${i} INFO request served in ${(i * 37) % 1000} ms path=/v1/disks/${i % 17}\n`, at);
  return b;
}

test('the sample tells random data from compressible data', () => {
  assert.equal(worthCompressing(crypto.randomBytes(4 * 1024 * 1024)), false);
  assert.equal(worthCompressing(textLike(4 * 1024 * 1024)), true);
  assert.equal(worthCompressing(crypto.randomBytes(PROBE_PAYLOAD_BYTES_MIN - 1)), true, 'small payloads are always tried');
});

test('random payloads go as they are, compressible ones compressed and intact', async () => {
  const shaper = new LinkShaper(true, 0);
  const random = crypto.randomBytes(4 * 1024 * 1024);
  const r = await shaper.pack(random);
  assert.equal(r.flags, 0);
  assert.equal(r.data, random, 'not copied');
  const text = textLike(4 * 1024 * 1024);
  const t = await shaper.pack(text);
  assert.equal(t.flags, FrameFlag.ZSTD);
  assert.ok(t.data!.length < text.length / 4);
  assert.ok((await zstdPool().decompress(t.data!, text.length)).equals(text));
  assert.equal(shaper.rawBytes, 8 * 1024 * 1024);
  assert.equal(shaper.wireBytes, random.length + t.data!.length);
  // A small incompressible payload is tried, and still goes as it is when it does not shrink.
  const small = crypto.randomBytes(4096);
  assert.deepEqual(await shaper.pack(small), { data: small, flags: 0 });
});

test('compression off: payloads go as they are', async () => {
  const shaper = new LinkShaper(false, 0);
  const text = textLike(1024 * 1024);
  assert.deepEqual(await shaper.pack(text), { data: text, flags: 0 });
});
