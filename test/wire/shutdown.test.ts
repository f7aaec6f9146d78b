// Wire test of a server shutdown: requests in flight when ferryd gets SIGTERM are all
// answered (a raw TCP client checks every reply and its cookie), then the connection
// closes and the daemon exits 0.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startFerryd, type Ferryd } from '../harness.js';
import { Cmd, RawNbd, SIMPLE_REPLY_MAGIC, encodeRequest } from './raw-nbd.js';

const MiB = 1024 * 1024;

describe('NBD server shutdown over the wire', { timeout: 120_000 }, () => {
  let d: Ferryd;
  before(async () => {
    d = await startFerryd();
    await d.createDisk('sd', 64 * MiB);
  });
  after(async () => {
    await d?.stop();
  });

  test('SIGTERM with requests in flight: their replies arrive, then the server closes', async () => {
    const { c } = await RawNbd.attached(d.nbdHost, d.nbdPort, 'sd');
    const N = 8;
    const len = 4 * MiB;
    const reqs: Buffer[] = [];
    for (let i = 0; i < N; i++) reqs.push(encodeRequest({ type: Cmd.READ, cookie: BigInt(i + 1), offset: BigInt(i * len), length: len }));
    await c.write(Buffer.concat(reqs));
    // The server is working on them once the first reply bytes arrive; then stop reading and stop the server.
    await c.read(4, 30_000).then((b) => {
      assert.equal(b.readUInt32BE(0), SIMPLE_REPLY_MAGIC);
    });
    c.socket.pause();
    const stopped = d.stop();
    await new Promise((r) => setTimeout(r, 300));
    c.socket.resume();
    const first = await c.read(12, 30_000);
    assert.equal(first.readUInt32BE(0), 0);
    await c.read(len, 30_000);
    const seen = new Set<bigint>([first.readBigUInt64BE(4)]);
    for (let i = 1; i < N; i++) {
      const r = await c.readSimpleReply(len, 30_000);
      assert.equal(r.error, 0);
      seen.add(r.cookie);
    }
    assert.equal(seen.size, N);
    await c.expectDisconnect(30_000);
    const exit = await stopped;
    assert.equal(exit.code, 0);
  });
});
