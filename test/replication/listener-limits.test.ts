// The replication listener's connection limits (issue 12, "Connections"): plain TCP floods
// from one address and from many must not keep a paired peer out (its `peer show` check
// dials, does TLS and HELLO each time), refusals are logged, and a first frame declaring more
// than a few KiB is refused as soon as its header arrives, before anything of it is buffered.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type net from 'node:net';
import tls from 'node:tls';
import { Cleanup, waitFor, type Ferryd } from '../harness.js';
import { cliJson } from '../mirror/helpers.js';
import { connectFrom, logLines } from '../wire/source-address.js';

function hostPort(a: string): { host: string; port: number } {
  const i = a.lastIndexOf(':');
  return { host: a.slice(0, i), port: Number(a.slice(i + 1)) };
}

describe('replication listener limits', { timeout: 600_000 }, () => {
  const cleanup = new Cleanup('ferry-repllim-');
  let a: Ferryd;
  let b: Ferryd;
  const flood: net.Socket[] = [];

  before(async () => {
    [a, b] = await Promise.all([cleanup.ferryd({ args: ['--site', 'site-a'] }), cleanup.ferryd({ args: ['--site', 'site-b'] })]);
    const token = (await cliJson(b, ['peer', 'token'])).token as string;
    await cliJson(a, ['peer', 'add', 'site-b', '--address', b.replAddress, '--token', token]);
  });
  after(async () => {
    for (const s of flood) s.destroy();
    await cleanup.run();
  });

  /** Opens `count` plain TCP connections from `address` that send nothing. */
  async function openFlood(address: string, count: number): Promise<void> {
    const { host, port } = hostPort(b.replAddress);
    for (let i = 0; i < count; i++) {
      try {
        const s = await connectFrom(address, host, port);
        s.on('error', () => undefined);
        s.resume();
        flood.push(s);
      } catch {
        // refused at connect
      }
    }
  }

  async function peerReachable(times: number): Promise<void> {
    for (let i = 0; i < times; i++) {
      const show = await cliJson(a, ['peer', 'show', 'site-b'], 60_000);
      assert.equal(show.check.reachable, true, JSON.stringify(show));
      assert.equal(show.check.authenticated, true, JSON.stringify(show));
    }
  }

  test('60 plain TCP connections from one address: the paired peer still gets through, refusals are logged', { timeout: 120_000 }, async () => {
    await openFlood('127.0.0.2', 60);
    await peerReachable(5);
    await waitFor('a replication refusal line', () => logLines(b.stderr, /^replication connections refused/).length > 0, 15_000);
    const lines = logLines(b.stderr, /^replication connections refused/);
    assert.ok(lines.some((l) => l.evicted > 0), JSON.stringify(lines));
    assert.ok(flood.filter((s) => !s.destroyed && !s.closed).length <= 8, 'the flood was cut to a few pending connections');
    for (const s of flood.splice(0)) s.destroy();
  });

  test('4 plain TCP connections from each of 25 addresses (100, past the pending limit): the peer still gets through', { timeout: 120_000 }, async () => {
    for (let k = 0; k < 25; k++) await openFlood(`127.0.1.${k + 1}`, 4);
    await peerReachable(5);
    for (const s of flood.splice(0)) s.destroy();
  });

  test('a first frame declaring 1 MiB is refused at its header, before any of it is read', { timeout: 60_000 }, async () => {
    const { host, port } = hostPort(b.replAddress);
    const raw = await connectFrom('127.0.0.3', host, port);
    const socket = tls.connect({ socket: raw, rejectUnauthorized: false, minVersion: 'TLSv1.3' });
    socket.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', () => resolve());
      socket.once('error', reject);
    });
    let closed = false;
    socket.once('close', () => (closed = true));
    socket.resume();
    const head = Buffer.alloc(20);
    head.writeUInt32LE(0x4c505246, 0); // "FRPL"
    head.writeUInt8(4, 4); // PAIR
    head.writeUInt32LE(2, 8); // meta bytes
    head.writeUInt32LE(1024 * 1024, 12); // payload bytes: far more than any PAIR or HELLO
    socket.write(head);
    await waitFor('the listener to close the connection', () => closed, 30_000);
    // Refused for its size, not after the first-frame timeout with the payload still awaited.
    await waitFor('the refusal in the log', () => logLines(b.stderr, /refused/).some((l) => /first frame of \d+ bytes exceeds/.test(JSON.stringify(l))), 10_000);
    assert.ok(!logLines(b.stderr, /no PAIR or HELLO/).length, 'not refused by the timeout');
  });
});
