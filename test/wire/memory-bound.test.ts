// Wire test of the bound on memory queued for all NBD clients together (issue 12, "Memory
// bounded in total"): 500 connections, from 8 source addresses, each ask for 8 READs of
// 32 MiB and never read a reply. Per-connection bounds alone let ferryd grow by ~96 MiB per
// such client (3.9 GiB with 40); with the total bound, the heaviest connections are paused
// once the bytes queued for all clients reach it. The test waits until ferryd reports every
// one of them paused (its memory-bound log line), asserts its RSS stayed under 1 GiB the
// whole time, and that a well-behaved client from another address (raw NBD, and nbdinfo)
// still writes and reads meanwhile.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Cleanup, describeRun, requireTool, run, waitFor, type Ferryd } from '../harness.js';
import { Cmd, encodeRequest, pattern, type RawNbd } from './raw-nbd.js';
import { attachedFrom, inWaves, logLines, rssBytes } from './source-address.js';

const MiB = 1024 * 1024;
const DISK = 'mem';
const DISK_SIZE = 1024 * MiB;
const READ_BYTES = 32 * MiB;
const READS_PER_CLIENT = 8;
const HOSTILE = 500;
const ADDRESSES = 8;
/** The stated bound on ferryd's RSS under this load. */
const RSS_BOUND_BYTES = 1024 * MiB;
/** Past this ferryd is killed: the test has failed, the machine must not swap. */
const RSS_KILL_BYTES = 3 * 1024 * MiB;

describe('memory queued for all NBD clients together is bounded', { timeout: 600_000 }, () => {
  const cleanup = new Cleanup('ferry-membound-');
  let d: Ferryd;
  const open: RawNbd[] = [];

  before(async () => {
    d = await cleanup.ferryd();
    await d.createDisk(DISK, DISK_SIZE);
  });
  after(async () => {
    for (const c of open) c.close();
    await cleanup.run();
  });

  test(`${HOSTILE} clients ask for large READs and never read: RSS stays under 1 GiB, a good client still works`, { timeout: 540_000 }, async (t) => {
    const nbdinfo = requireTool('nbdinfo');
    const pid = d.proc.pid!;
    const rssBefore = rssBytes(pid);
    let peak = rssBefore;
    const sample = (): number => {
      try {
        const now = rssBytes(pid);
        peak = Math.max(peak, now);
        if (now > RSS_KILL_BYTES) d.proc.kill('SIGKILL');
        return now;
      } catch {
        return 0; // gone: the waits below notice
      }
    };
    const sampler = setInterval(sample, 20);
    const overBound = (): void => assert.ok(peak < RSS_BOUND_BYTES, `ferryd RSS reached ${(peak / MiB).toFixed(0)} MiB (${(rssBefore / MiB).toFixed(0)} MiB before) with ${open.length} clients not reading`);
    try {
      // Attach the clients (a few at a time per address: negotiating connections are limited
      // per address), each sending its READs at once and then never reading.
      const slots = DISK_SIZE / READ_BYTES;
      await inWaves(
        Array.from({ length: HOSTILE }, (_, i) => i),
        24,
        async (i) => {
          overBound();
          const c = await attachedFrom(`127.0.0.${10 + (i % ADDRESSES)}`, d.nbdHost, d.nbdPort, DISK);
          open.push(c);
          c.socket.pause();
          const reqs = Array.from({ length: READS_PER_CLIENT }, (_, k) => encodeRequest({ type: Cmd.READ, cookie: BigInt(k), offset: ((i + k) % slots) * READ_BYTES, length: READ_BYTES }));
          await c.write(Buffer.concat(reqs));
        },
      );
      // Wait for ferryd to report every one of them paused: from then on it takes no new request from them.
      let report: Record<string, any> | undefined;
      await waitFor(
        `ferryd to report ${HOSTILE} connections paused`,
        () => {
          overBound();
          assert.equal(d.proc.exitCode ?? d.proc.signalCode, null, 'ferryd is running');
          report = logLines(d.stderr, /memory bound/).find((l) => l.paused >= HOSTILE);
          return report !== undefined;
        },
        240_000,
      ).catch((err: Error) => {
        throw new Error(`${err.message}; last report: ${JSON.stringify(logLines(d.stderr, /memory bound/).at(-1))}`);
      });
      assert.ok(report !== undefined);
      assert.ok(report.queuedBytes <= 2 * report.queuedBytesMax, `queued ${report.queuedBytes} bytes, bound ${report.queuedBytesMax}`);
      const rssPaused = sample();

      // A well-behaved client from another address writes and reads back; nbdinfo negotiates and reads.
      const good = await attachedFrom('127.0.0.3', d.nbdHost, d.nbdPort, DISK);
      open.push(good);
      const data = pattern(64 * 1024, 12);
      assert.equal(await good.writeAt(3 * MiB + 4096, data), 0);
      assert.ok((await good.readAt(3 * MiB + 4096, data.length)).equals(data), 'the good client reads back what it wrote');
      const args = ['--json', d.uri(DISK)];
      const info = await run(nbdinfo, args, { timeoutMs: 60_000 });
      assert.equal(info.code, 0, describeRun(nbdinfo, args, info));
      assert.equal(JSON.parse(info.stdout).exports[0]['export-size'], DISK_SIZE);
      sample();
      overBound();
      t.diagnostic(
        `ferryd RSS ${(rssBefore / MiB).toFixed(0)} MiB before, ${(rssPaused / MiB).toFixed(0)} MiB with all ${HOSTILE} clients paused, peak ${(peak / MiB).toFixed(0)} MiB; ` +
          `queued ${(report.queuedBytes / MiB).toFixed(0)} MiB of a ${(report.queuedBytesMax / MiB).toFixed(0)} MiB bound (share ${(report.shareBytes / 1024).toFixed(0)} KiB per connection)`,
      );
    } finally {
      clearInterval(sampler);
    }
    // Once they are gone, everything they held is released and the good client goes on.
    for (const c of open.splice(0)) c.close();
    const again = await attachedFrom('127.0.0.4', d.nbdHost, d.nbdPort, DISK);
    open.push(again);
    assert.equal((await again.readAt(0, READ_BYTES)).length, READ_BYTES);
  });
});
