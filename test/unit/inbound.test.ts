// The NBD receive side (src/nbd/inbound.ts) on its own: frames of random sizes sent in
// random pieces arrive intact, through a real TCP socket (reads into our buffers) and a
// plain Duplex ('data' chunks copied in), while the consumer pauses, stalls with the
// receive buffer full, and resumes. Payload buffers come from and go back to the pool.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import net from 'node:net';
import { PassThrough, type Duplex } from 'node:stream';
import { Inbound } from '../../src/nbd/inbound.js';
import { acquirePayload, releasePayload } from '../../src/nbd/payload-pool.js';

/** Frames: a 4-byte length, then that many bytes; sizes from 0 to 3 MiB, most small. */
function makeFrames(count: number, seed: number): Buffer[] {
  let x = seed;
  const rand = (): number => ((x = (x * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const frames: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    const r = rand();
    const len = r < 0.5 ? Math.floor(rand() * 8192) : r < 0.9 ? Math.floor(rand() * 300_000) : Math.floor(rand() * 3 * 1024 * 1024);
    const f = Buffer.allocUnsafe(4 + len);
    f.writeUInt32BE(len, 0);
    crypto.randomFillSync(f, 4);
    frames.push(f);
  }
  return frames;
}

/**
 * Parses frames from an Inbound; every few frames it pauses and resumes later (as the
 * transmission does at its in-flight bounds), or simply stops taking headers for a while
 * (the receive buffer fills up and the Inbound must stop reading by itself).
 */
function consume(stream: Duplex, expected: Buffer[]): Promise<void> {
  return new Promise((resolve, reject) => {
    let next = 0;
    let want: number | null = null;
    let stalled = false;
    let inbound: Inbound;
    const parse = (): void => {
      try {
        while (!stalled && next < expected.length) {
          if (want === null) {
            if (inbound.length < 4) return;
            want = inbound.take(4).readUInt32BE(0);
            if (want > 0) inbound.startPayload(acquirePayload(want));
          }
          let payload: Buffer;
          if (want === 0) payload = Buffer.alloc(0);
          else {
            const p = inbound.fillPayload();
            if (p === null) return;
            payload = p;
          }
          const f = expected[next]!;
          assert.ok(payload.equals(f.subarray(4)), `frame ${next} (${want} bytes) arrived intact`);
          if (payload.length) releasePayload(payload);
          want = null;
          next++;
          if (next === expected.length) return resolve();
          if (next % 7 === 0) {
            inbound.pause();
            setTimeout(() => inbound.resume(), 2);
          } else if (next % 11 === 0) {
            stalled = true;
            setTimeout(() => {
              stalled = false;
              parse();
              inbound.resume();
            }, 5);
          }
        }
      } catch (err) {
        reject(err);
      }
    };
    inbound = new Inbound(stream, parse);
    inbound.start(Buffer.alloc(0));
  });
}

/** Writes `data` in pieces of random sizes (1 byte to 200 KiB), respecting backpressure. */
async function sendInPieces(stream: Duplex, data: Buffer): Promise<void> {
  let at = 0;
  let x = 7;
  while (at < data.length) {
    x = (x * 1103515245 + 12345) >>> 0;
    const n = Math.min(data.length - at, 1 + (x % (200 * 1024)));
    const ok = stream.write(data.subarray(at, at + n));
    at += n;
    if (!ok) await new Promise((r) => stream.once('drain', r));
  }
}

test('frames arrive intact through a TCP socket (user-buffer reads) with pauses and stalls', async () => {
  const frames = makeFrames(300, 1);
  const server = net.createServer({ pauseOnConnect: true });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const sock = await accepted;
  try {
    const done = consume(sock, frames);
    await sendInPieces(client, Buffer.concat(frames));
    await done;
  } finally {
    client.destroy();
    sock.destroy();
    server.close();
  }
});

test('frames arrive intact through a plain Duplex (data events) with pauses and stalls', async () => {
  const frames = makeFrames(200, 2);
  const pipe = new PassThrough({ highWaterMark: 64 * 1024 });
  const done = consume(pipe, frames);
  await sendInPieces(pipe, Buffer.concat(frames));
  await done;
});

test('payload buffers are reused: acquire after release gives back the same memory', () => {
  const a = acquirePayload(1024 * 1024);
  const ab = a.buffer;
  releasePayload(a);
  const b = acquirePayload(1000 * 1000);
  assert.equal(b.buffer, ab);
  assert.equal(b.length, 1000 * 1000);
  releasePayload(b);
});
