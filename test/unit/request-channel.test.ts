// Requests on the replication link (src/replication/request-channel.ts): a request still
// being paced by the link's rate limit when the stream stops must fail, not wait forever
// for an answer that can no longer come.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError } from '../../src/errors.js';
import { LinkShaper } from '../../src/replication/link-shaper.js';
import { RequestChannel } from '../../src/replication/request-channel.js';

test('a request paced by the rate limit when the stream stops is refused, and nothing is left waiting', async () => {
  // 1 MiB/s and a 256 KiB payload: the frame waits about a quarter of a second for the bucket.
  const channel = new RequestChannel('site-b', 'disk', new LinkShaper(false, 1024 * 1024));
  const pending = channel.request({ op: 'write', offset: 0, length: 256 * 1024 }, Buffer.alloc(256 * 1024));
  await new Promise((resolve) => setTimeout(resolve, 20));
  channel.close(() => new FerryError('PEER_UNREACHABLE', 'the mirror is stopped'));
  await assert.rejects(pending, (err: unknown) => err instanceof FerryError && err.code === 'PEER_UNREACHABLE');
  assert.equal(channel.size, 0, 'no request is left waiting for an answer');
  await assert.rejects(channel.request({ op: 'sync' }), /stopped/, 'later requests fail at once');
});
