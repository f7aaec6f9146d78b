// Wire tests of the NBD and REST API listeners' connection limits (issue 12, "Connections"):
// each listener is flooded from one source address (127.0.0.x: all of 127/8 is loopback) past
// its limits, and a client from another address must still get through; the refusals must be
// logged. The defaults under test (ulimit -n 20000 here): NBD 512 connections, 128 per address,
// 32 negotiating per address; API 256 connections, 64 per address, 16 pending per address.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { Cleanup, type Ferryd } from '../harness.js';
import { eventually, pattern, type RawNbd } from './raw-nbd.js';
import { attachedFrom, connectFrom, inWaves, logLines } from './source-address.js';

const MiB = 1024 * 1024;
const DISK = 'lim';

/** Attaches from `address`, or null when the server refused (closed the connection). */
async function tryAttach(address: string, d: Ferryd): Promise<RawNbd | null> {
  try {
    return await attachedFrom(address, d.nbdHost, d.nbdPort, DISK);
  } catch {
    return null;
  }
}

/** A good client from `address`: attaches, writes, reads back. */
async function goodClientWorks(address: string, d: Ferryd, seed: number): Promise<void> {
  const c = await attachedFrom(address, d.nbdHost, d.nbdPort, DISK);
  try {
    const data = pattern(64 * 1024, seed);
    assert.equal(await c.writeAt(seed * MiB, data), 0);
    assert.ok((await c.readAt(seed * MiB, data.length)).equals(data));
  } finally {
    c.close();
  }
}

/** Resolves true once the socket is closed (by either side). */
function closedFlag(s: net.Socket): { closed: boolean } {
  const f = { closed: false };
  s.on('error', () => undefined);
  s.once('close', () => (f.closed = true));
  s.resume(); // read, so the server's close is seen
  return f;
}

describe('listener connection limits: NBD and API', { timeout: 600_000 }, () => {
  const cleanup = new Cleanup('ferry-connlim-');
  let d: Ferryd;
  const sockets: net.Socket[] = [];
  const clients: RawNbd[] = [];

  before(async () => {
    d = await cleanup.ferryd();
    await d.createDisk(DISK, 64 * MiB);
  });
  after(async () => {
    for (const c of clients) c.close();
    for (const s of sockets) s.destroy();
    await cleanup.run();
  });

  test('600 negotiated NBD sessions from one address: it is held to its share, another client still attaches', { timeout: 300_000 }, async (t) => {
    const results = await inWaves(
      Array.from({ length: 600 }, (_, i) => i),
      8,
      async () => tryAttach('127.0.0.2', d),
    );
    const attached = results.filter((c): c is RawNbd => c !== null);
    clients.push(...attached);
    t.diagnostic(`${attached.length} of 600 sessions from 127.0.0.2 attached`);
    assert.ok(attached.length >= 16, `only ${attached.length} sessions attached`);
    assert.ok(attached.length <= 256, `${attached.length} sessions from one address attached: it may take half the server`);
    await goodClientWorks('127.0.0.3', d, 3);
    await eventually(() => logLines(d.stderr, /^NBD connections refused/).some((l) => l.perAddress > 0), 15_000);
    const line = logLines(d.stderr, /^NBD connections refused/).find((l) => l.perAddress > 0);
    assert.ok(line, `no rate-limited refusal line for NBD; log tail:\n${d.stderr.slice(-2000)}`);
    assert.ok(logLines(d.stderr, /^NBD connections refused/).length <= 3, 'refusals are logged rate-limited, not one line each');
    for (const c of clients.splice(0)) c.close();
  });

  test('300 raw connections from one address that never negotiate: the oldest are dropped, another client still attaches', { timeout: 120_000 }, async () => {
    const flags: Array<{ closed: boolean }> = [];
    for (let i = 0; i < 300; i++) {
      let s: net.Socket;
      try {
        s = await connectFrom('127.0.0.4', d.nbdHost, d.nbdPort);
      } catch {
        continue; // refused at connect: as good
      }
      sockets.push(s);
      flags.push(closedFlag(s));
    }
    await goodClientWorks('127.0.0.5', d, 5);
    await eventually(() => logLines(d.stderr, /^NBD connections refused/).some((l) => l.evicted > 0), 15_000);
    assert.ok(logLines(d.stderr, /^NBD connections refused/).some((l) => l.evicted > 0), 'dropping negotiating connections is logged');
    assert.ok(await eventually(() => flags.filter((f) => !f.closed).length <= 32, 15_000), `${flags.filter((f) => !f.closed).length} raw connections from one address still open`);
    for (const s of sockets.splice(0)) s.destroy();
  });

  test('API: 200 idle connections and 100 keep-alive clients from one address; another client still creates a disk', { timeout: 120_000 }, async (t) => {
    const port = Number(new URL(d.apiUrl).port);
    const idle: Array<{ closed: boolean }> = [];
    for (let i = 0; i < 200; i++) {
      try {
        const s = await connectFrom('127.0.0.6', '127.0.0.1', port);
        sockets.push(s);
        idle.push(closedFlag(s));
      } catch {
        // refused at connect
      }
    }
    // Keep-alive clients that did send a request: established, held to the per-address limit.
    let served = 0;
    await inWaves(
      Array.from({ length: 100 }, (_, i) => i),
      4,
      async () => {
        let s: net.Socket;
        try {
          s = await connectFrom('127.0.0.7', '127.0.0.1', port);
        } catch {
          return;
        }
        sockets.push(s);
        const answer = await new Promise<string>((resolve) => {
          let got = '';
          s.on('data', (b: Buffer) => {
            got += b.toString();
            if (got.includes('\r\n\r\n')) resolve(got);
          });
          s.on('close', () => resolve(got));
          s.on('error', () => resolve(got));
          s.write('GET /v1/health HTTP/1.1\r\nHost: ferry\r\n\r\n');
        });
        if (answer.startsWith('HTTP/1.1 200')) served++;
      },
    );
    t.diagnostic(`${idle.filter((f) => !f.closed).length} of 200 idle connections still open; ${served} of 100 keep-alive clients served`);
    assert.ok(await eventually(() => idle.filter((f) => !f.closed).length <= 16, 15_000), `${idle.filter((f) => !f.closed).length} idle API connections from one address still open`);
    assert.ok(served >= 1 && served <= 64, `${served} keep-alive API clients from one address were served`);
    const r = await d.api('POST', '/v1/disks', { name: 'after-flood', size: '1M' });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    await goodClientWorks('127.0.0.8', d, 8);
    await eventually(() => logLines(d.stderr, /^API connections refused/).length > 0, 15_000);
    const lines = logLines(d.stderr, /^API connections refused/);
    assert.ok(lines.some((l) => l.perAddress > 0) || lines.length > 0, 'API refusals are logged');
    assert.ok(lines.some((l) => l.evicted > 0 || l.perAddress > 0), JSON.stringify(lines));
    for (const s of sockets.splice(0)) s.destroy();
  });
});
