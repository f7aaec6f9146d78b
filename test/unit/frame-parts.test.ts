// Replication framing without copies (src/replication/frame.ts): a frame encoded as parts
// is byte for byte the one-buffer frame; the reader rebuilds frames split anywhere, keeps at
// most one whole frame buffered ahead of its caller, and reads the next one while the caller
// handles the last (the mirror site's chunk writes then never wait for the link).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { PassThrough } from 'node:stream';
import { encodeFrame, encodeFrameParts, frameBytes, FrameReader, FrameType, writeFrameParts } from '../../src/replication/frame.js';

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

test('a frame as parts is the one-buffer frame, and a large payload is not copied', () => {
  for (const bytes of [0, 100, 64 * 1024, 64 * 1024 + 1, 4 * 1024 * 1024]) {
    const payload = bytes ? crypto.randomBytes(bytes) : undefined;
    const meta = { op: 'write', id: 7, offset: 4096, text: 'é' };
    const parts = encodeFrameParts(FrameType.REQUEST, meta, payload, 1);
    assert.deepEqual(Buffer.concat(parts), encodeFrame(FrameType.REQUEST, meta, payload, 1));
    assert.equal(frameBytes(parts), Buffer.concat(parts).length);
    assert.equal(parts.length, bytes > 64 * 1024 ? 2 : 1);
    if (parts.length === 2) assert.equal(parts[1], payload, 'the payload goes as it is');
  }
});

test('the reader rebuilds frames split at any byte, in order, checksums verified', async () => {
  const s = new PassThrough();
  const reader = new FrameReader(s);
  const payloads = [crypto.randomBytes(3 * 1024 * 1024), crypto.randomBytes(10), Buffer.alloc(0), crypto.randomBytes(200 * 1024)];
  const wire = Buffer.concat(payloads.flatMap((p, i) => encodeFrameParts(FrameType.REQUEST, { i }, p.length ? p : undefined)));
  for (let at = 0; at < wire.length; ) {
    const n = Math.min(wire.length - at, 1 + crypto.randomInt(70_000));
    s.write(wire.subarray(at, at + n));
    at += n;
  }
  s.end();
  for (const [i, p] of payloads.entries()) {
    const f = await reader.next();
    assert.ok(f);
    assert.equal(f.meta.i, i);
    assert.ok(f.payload.equals(p));
  }
  assert.equal(await reader.next(), null);
});

test('the reader reads the next frame while its caller handles one, and holds at most one ahead', async () => {
  const s = new PassThrough();
  const reader = new FrameReader(s);
  const frame = (i: number): Buffer[] => encodeFrameParts(FrameType.REQUEST, { i }, crypto.randomBytes(256 * 1024));
  // Two whole frames arrive before anyone asks: the reader pauses with the first one whole.
  writeFrameParts(s, frame(0));
  writeFrameParts(s, frame(1));
  await tick();
  assert.equal(s.isPaused(), true);
  assert.equal((await reader.next())?.meta.i, 0);
  // Taken: nothing whole is buffered, so the stream flows while the caller works on frame 0 ...
  assert.equal(s.isPaused(), false);
  await tick();
  // ... until frame 1 is whole (one frame ahead, no more).
  assert.equal(s.isPaused(), true);
  assert.equal((await reader.next())?.meta.i, 1);
  assert.equal(s.isPaused(), false);
  writeFrameParts(s, frame(2));
  await tick();
  assert.equal(s.isPaused(), true);
  assert.equal((await reader.next())?.meta.i, 2);
  s.end();
  assert.equal(await reader.next(), null);
});

test('the reader refuses a corrupted frame', async () => {
  const s = new PassThrough();
  const reader = new FrameReader(s);
  const parts = encodeFrameParts(FrameType.REQUEST, { i: 1 }, crypto.randomBytes(100 * 1024));
  const bad = Buffer.from(parts[1]!);
  bad[5000] ^= 1;
  s.write(parts[0]);
  s.write(bad);
  await assert.rejects(reader.next(), /checksum/);
});
