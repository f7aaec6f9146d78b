import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { WanProxy } from '../../src/testing/wan-proxy.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A loopback server; `sockets` holds its side of every connection. */
async function serve(onConn: (s: net.Socket) => void): Promise<{ port: number; sockets: net.Socket[]; close: () => Promise<void> }> {
  const sockets: net.Socket[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    sockets.push(s);
    s.on('error', () => {});
    onConn(s);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  const close = async (): Promise<void> => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  };
  return { port, sockets, close };
}

const echo = (s: net.Socket): void => void s.pipe(s);

async function connect(port: number): Promise<net.Socket> {
  const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  await once(s, 'connect');
  return s;
}

/** Collects exactly n bytes from a socket. */
function readN(s: net.Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let got = 0;
    const onData = (b: Buffer): void => {
      parts.push(b);
      got += b.length;
      if (got >= n) {
        s.off('data', onData);
        s.off('error', reject);
        resolve(Buffer.concat(parts));
      }
    };
    s.on('data', onData);
    s.once('error', reject);
  });
}

async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

test('bytes pass intact both ways, FIN travels, counters add up', async () => {
  const srv = await serve(echo);
  const proxy = await WanProxy.start({ targetPort: srv.port, delayMs: 5 });
  try {
    const N = 4 * 2 ** 20;
    const run = async (): Promise<void> => {
      const c = await connect(proxy.port);
      const data = randomBytes(N);
      const back = readN(c, N);
      const ended = once(c, 'end');
      for (let off = 0; off < N; ) {
        const len = Math.min(N - off, 1 + Math.floor(Math.random() * 200_000));
        c.write(data.subarray(off, off + len));
        off += len;
      }
      c.end();
      const got = await back;
      assert.equal(got.length, N);
      assert.equal(sha(got), sha(data));
      await ended; // the echo server's FIN came back through the proxy
      c.destroy();
    };
    await Promise.all([run(), run()]);
    await until(() => proxy.stats().activeConnections === 0, 'connections to retire');
    const st = proxy.stats();
    assert.equal(st.connectionsAccepted, 2);
    assert.equal(st.bytesUp, 2 * N);
    assert.equal(st.bytesDown, 2 * N);
    assert.equal(st.bufferedUp + st.bufferedDown, 0);
  } finally {
    await proxy.close();
    await srv.close();
  }
});

test('a round trip takes at least twice the one-way delay, and the delay can change live', async () => {
  const srv = await serve(echo);
  const proxy = await WanProxy.start({ targetPort: srv.port, delayMs: 100 });
  try {
    const c = await connect(proxy.port);
    const ping = async (): Promise<number> => {
      const t0 = performance.now();
      const r = readN(c, 1);
      c.write('x');
      await r;
      return performance.now() - t0;
    };
    for (let i = 0; i < 3; i++) assert.ok((await ping()) >= 199, 'rtt under 2 × 100 ms');
    proxy.delayMs = 40;
    assert.ok((await ping()) >= 79, 'rtt under 2 × 40 ms');
    // Many chunks in flight: 20 pings sent at once all come back (order kept).
    const burst = Buffer.from('abcdefghijklmnopqrst');
    const r = readN(c, burst.length);
    for (const ch of burst) c.write(Buffer.from([ch]));
    assert.deepEqual(await r, burst);
    c.destroy();
  } finally {
    await proxy.close();
    await srv.close();
  }
});

test('bandwidth is limited per direction and shared by connections', async () => {
  const R = 256 * 1024;
  const N = 384 * 1024; // per direction, split over two connections
  const half = N / 2;
  const srv = await serve((s) => {
    s.write(randomBytes(half));
    let got = 0;
    s.on('data', (b: Buffer) => {
      got += b.length;
      if (got >= half) s.end();
    });
  });
  const proxy = await WanProxy.start({ targetPort: srv.port, bytesPerSec: R });
  try {
    const t0 = performance.now();
    const one = async (): Promise<void> => {
      const c = await connect(proxy.port);
      const down = readN(c, half);
      const ended = once(c, 'end');
      c.write(randomBytes(half));
      await down;
      await ended; // the server has read all we sent
      c.destroy();
    };
    await Promise.all([one(), one()]);
    const elapsed = performance.now() - t0;
    const floor = ((N - proxy.burstBytes) / R) * 1000;
    assert.ok(elapsed >= floor - 5, `took ${elapsed.toFixed(0)} ms, expected at least ${floor.toFixed(0)}`);
    assert.equal(proxy.stats().bytesUp, N);
    assert.equal(proxy.stats().bytesDown, N);
  } finally {
    await proxy.close();
    await srv.close();
  }
});

test('cut holds data both ways and holds new connections silent; restore delivers it', async () => {
  let received = 0;
  const srv = await serve((s) => {
    s.on('data', (b: Buffer) => (received += b.length));
    s.pipe(s);
  });
  const proxy = await WanProxy.start({ targetPort: srv.port, delayMs: 2 });
  try {
    const c1 = await connect(proxy.port);
    const warm = readN(c1, 1);
    c1.write('w');
    await warm;
    const c3 = await connect(proxy.port); // will reset its end during the cut
    await until(() => srv.sockets.length === 2, 'server side of c3');
    const s3 = srv.sockets[1]!;
    proxy.cut();
    c3.resetAndDestroy();
    assert.equal(proxy.isCut, true);
    const d1 = randomBytes(64 * 1024);
    let c1Got = 0;
    c1.on('data', (b: Buffer) => (c1Got += b.length));
    const back1 = readN(c1, d1.length);
    c1.write(d1);
    const c2 = await connect(proxy.port); // accepted ...
    const d2 = randomBytes(10_000);
    const back2 = readN(c2, d2.length);
    c2.write(d2);
    await until(() => proxy.stats().bufferedUp === d1.length + d2.length, 'the proxy to read what was sent');
    await sleep(200);
    assert.equal(received, 1, 'nothing reached the server during the cut');
    assert.equal(c1Got, 0, 'nothing came back during the cut');
    assert.equal(srv.sockets.length, 2, '... but the target is not dialled during the cut');
    assert.equal(s3.closed, false, 'the reset is held by the cut too');
    const s3Closed = new Promise((r) => s3.once('close', r));
    proxy.restore();
    assert.equal(sha(await back1), sha(d1));
    assert.equal(sha(await back2), sha(d2));
    assert.equal(srv.sockets.length, 3);
    await s3Closed;
    c1.destroy();
    c2.destroy();
  } finally {
    await proxy.close();
    await srv.close();
  }
});

test('resetAll resets both sides of every connection', async () => {
  const srv = await serve(echo);
  const proxy = await WanProxy.start({ targetPort: srv.port });
  try {
    const clients = [await connect(proxy.port), await connect(proxy.port)];
    for (const c of clients) {
      const r = readN(c, 2);
      c.write('hi');
      await r;
    }
    await until(() => srv.sockets.length === 2, 'server side');
    const ends = [...clients, ...srv.sockets];
    const errors: string[] = [];
    for (const s of ends) s.on('error', (e: NodeJS.ErrnoException) => errors.push(e.code ?? e.message));
    const closed = ends.map((s) => new Promise((r) => (s.closed ? r(null) : s.once('close', r))));
    proxy.resetAll();
    await Promise.all(closed);
    assert.ok(ends.every((s) => s.destroyed));
    assert.ok(errors.length > 0, 'a reset, not a clean FIN');
    for (const e of errors) assert.equal(e, 'ECONNRESET');
    await until(() => proxy.stats().activeConnections === 0, 'connections to retire');
  } finally {
    await proxy.close();
    await srv.close();
  }
});

test('a reader that stalls bounds what the proxy buffers; reading again drains it all', async () => {
  const limit = 1024 * 1024;
  const slack = 256 * 1024; // one socket read plus the destination's write buffer
  let server: net.Socket | undefined;
  const srv = await serve((s) => {
    server = s;
    s.pause();
  });
  const proxy = await WanProxy.start({ targetPort: srv.port, maxBufferedBytes: limit });
  try {
    const c = await connect(proxy.port);
    const N = 48 * 2 ** 20;
    const data = randomBytes(N);
    c.write(data);
    let peak = 0;
    let last = -1;
    let stable = 0;
    // Wait until the proxy stops taking more (its queue is full and the source paused).
    while (stable < 20) {
      await sleep(25);
      const b = proxy.stats().maxBufferedOneWay;
      peak = Math.max(peak, b);
      stable = b === last ? stable + 1 : 0;
      last = b;
    }
    assert.ok(peak <= limit + slack, `proxy buffered ${peak} bytes`);
    assert.ok(peak >= limit / 2, `proxy buffered only ${peak} bytes`);
    assert.ok(c.writableLength > 0, 'the writer is held back');
    assert.ok(proxy.stats().bytesUp < N);
    const all = readN(server!, N);
    server!.resume();
    assert.equal(sha(await all), sha(data));
    assert.equal(proxy.stats().bufferedUp, 0);
    c.destroy();
  } finally {
    await proxy.close();
    await srv.close();
  }
});
