// Wire tests of the server's resource bounds: a client that pipelines far more than
// the server holds in flight (32 MiB WRITE payloads, or 32 MiB READs whose replies it
// does not read) must not make ferryd's memory grow with what it sends, and option
// floods in negotiation are cut off.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { startFerryd, type Ferryd } from '../harness.js';
import { Cmd, Errno, Opt, RawNbd, Rep, backingFile, encodeOption, encodeRequest, pattern } from './raw-nbd.js';

const MiB = 1024 * 1024;
const DISK = 'lim';
const DISK_SIZE = 256 * MiB;
const PAYLOAD = 32 * MiB;
/** Far above what 128 requests / 64 MiB in flight need, far below what the client pushes (2 GiB). */
const RSS_LIMIT_BYTES = 600 * MiB;

function rssBytes(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status);
  if (!m) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

/** Samples a process's RSS until stopped; returns the peak. */
function watchRss(pid: number): { stop: () => number; peak: () => number } {
  let peak = rssBytes(pid);
  const timer = setInterval(() => {
    try {
      peak = Math.max(peak, rssBytes(pid));
    } catch {
      // process gone: the test will notice
    }
  }, 25);
  return {
    peak: () => peak,
    stop: () => {
      clearInterval(timer);
      try {
        peak = Math.max(peak, rssBytes(pid));
      } catch {
        // ignore
      }
      return peak;
    },
  };
}

describe('NBD resource bounds over the wire', { timeout: 300_000 }, () => {
  let d: Ferryd;
  const open: RawNbd[] = [];

  before(async () => {
    d = await startFerryd();
    await d.createDisk(DISK, DISK_SIZE);
  });
  after(async () => {
    for (const c of open) c.close();
    await d?.stop();
  });

  test('pipelined 32 MiB WRITEs whose replies are never read: ferryd RSS stays bounded', { timeout: 180_000 }, async (t) => {
    const { c } = await RawNbd.attached(d.nbdHost, d.nbdPort, DISK);
    open.push(c);
    const pid = d.proc.pid!;
    const before = rssBytes(pid);
    const rss = watchRss(pid);
    c.socket.pause(); // never read a reply while pushing
    const slots = DISK_SIZE / PAYLOAD;
    const payloads = Array.from({ length: slots }, (_, i) => pattern(PAYLOAD, 1000 + i));
    const total = 2048 * MiB;
    const count = total / PAYLOAD;
    const deadline = Date.now() + 120_000; // bound the push; the assertion is on memory, not on speed
    let sent = 0;
    for (; sent < count && Date.now() < deadline && !c.isEnded; sent++) {
      const slot = sent % slots;
      await c.writeFlowing(encodeRequest({ type: Cmd.WRITE, cookie: BigInt(sent), offset: slot * PAYLOAD, length: PAYLOAD }));
      await c.writeFlowing(payloads[slot]!);
      assert.ok(rss.peak() < RSS_LIMIT_BYTES, `ferryd RSS reached ${(rss.peak() / MiB).toFixed(0)} MiB after ${sent} writes (${(before / MiB).toFixed(0)} MiB before)`);
    }
    assert.ok(sent >= 16, `only ${sent} writes went out before the deadline`);
    // Now take the replies: every write is answered, successfully.
    c.socket.resume();
    for (let i = 0; i < sent; i++) {
      const r = await c.readSimpleReply(0, 60_000);
      assert.equal(r.error, 0, `write ${r.cookie}`);
    }
    const peak = rss.stop();
    t.diagnostic(`ferryd RSS ${(before / MiB).toFixed(0)} MiB before, peak ${(peak / MiB).toFixed(0)} MiB, ${sent} writes of 32 MiB`);
    assert.ok(peak < RSS_LIMIT_BYTES, `ferryd RSS peaked at ${(peak / MiB).toFixed(0)} MiB (${(before / MiB).toFixed(0)} MiB before) while a client pushed ${(sent * PAYLOAD) / MiB} MiB`);
    // The last write to each slot is what the disk holds.
    const file = await backingFile(d, DISK);
    for (let slot = 0; slot < Math.min(slots, sent); slot++) {
      assert.ok(file.subarray(slot * PAYLOAD, (slot + 1) * PAYLOAD).equals(payloads[slot]!), `slot ${slot}`);
    }
    c.close();
  });

  test('pipelined 32 MiB READs whose replies are not read: ferryd RSS stays bounded', { timeout: 180_000 }, async (t) => {
    const { c } = await RawNbd.attached(d.nbdHost, d.nbdPort, DISK);
    open.push(c);
    const pid = d.proc.pid!;
    const before = rssBytes(pid);
    const rss = watchRss(pid);
    c.socket.pause();
    const count = 64; // 2 GiB of replies, asked for in one 1792-byte segment
    const reqs: Buffer[] = [];
    for (let i = 0; i < count; i++) reqs.push(encodeRequest({ type: Cmd.READ, cookie: BigInt(i), offset: (i % (DISK_SIZE / PAYLOAD)) * PAYLOAD, length: PAYLOAD }));
    await c.write(Buffer.concat(reqs));
    // Give the server every chance to overreach while nobody reads (an observation window, not a timing assertion).
    await new Promise((r) => setTimeout(r, 3000));
    assert.ok(rss.peak() < RSS_LIMIT_BYTES, `ferryd RSS reached ${(rss.peak() / MiB).toFixed(0)} MiB with nobody reading (${(before / MiB).toFixed(0)} MiB before)`);
    c.socket.resume();
    const seen = new Set<bigint>();
    for (let i = 0; i < count; i++) {
      const r = await c.readSimpleReply(PAYLOAD, 60_000);
      assert.equal(r.error, 0);
      seen.add(r.cookie);
    }
    assert.equal(seen.size, count);
    const peak = rss.stop();
    t.diagnostic(`ferryd RSS ${(before / MiB).toFixed(0)} MiB before, peak ${(peak / MiB).toFixed(0)} MiB, ${count} READs of 32 MiB`);
    assert.ok(peak < RSS_LIMIT_BYTES, `ferryd RSS peaked at ${(peak / MiB).toFixed(0)} MiB (${(before / MiB).toFixed(0)} MiB before) serving ${(count * PAYLOAD) / MiB} MiB of READs`);
    c.close();
  });

  test('many small requests in one segment are all answered (parsing resumes after back-pressure)', { timeout: 120_000 }, async () => {
    const { c } = await RawNbd.attached(d.nbdHost, d.nbdPort, DISK);
    open.push(c);
    const count = 5000; // far above the 128 requests the server keeps in flight
    const reqs: Buffer[] = [];
    for (let i = 0; i < count; i++) {
      reqs.push(i % 3 === 0 ? encodeRequest({ type: Cmd.FLUSH, cookie: BigInt(i) }) : encodeRequest({ type: Cmd.READ, cookie: BigInt(i), offset: i * 512, length: 512 }));
    }
    await c.writeFlowing(Buffer.concat(reqs));
    const seen = new Set<bigint>();
    for (let i = 0; i < count; i++) {
      const r = await c.readSimpleReply((k) => (Number(k) % 3 === 0 ? 0 : 512), 30_000);
      assert.equal(r.error, 0);
      seen.add(r.cookie);
    }
    assert.equal(seen.size, count);
    const last = await c.request({ type: Cmd.FLUSH, cookie: 999_999n });
    assert.equal(last.error, Errno.OK);
    c.close();
  });

  test('more than 1024 options in one negotiation: disconnect', { timeout: 60_000 }, async () => {
    const c = await RawNbd.negotiating(d.nbdHost, d.nbdPort);
    open.push(c);
    const one = encodeOption(4242);
    await c.writeFlowing(Buffer.concat(Array.from({ length: 1100 }, () => one)));
    let answered = 0;
    for (;;) {
      try {
        const r = await c.readOptionReply();
        assert.equal(r.type, Rep.ERR_UNSUP);
        answered++;
      } catch {
        break;
      }
    }
    assert.ok(c.isEnded, 'the server hung up');
    assert.equal(answered, 1024);
  });

  test('1024 options are allowed: a client may still choose its export after 1023 refused ones', { timeout: 60_000 }, async () => {
    const c = await RawNbd.negotiating(d.nbdHost, d.nbdPort);
    open.push(c);
    await c.writeFlowing(Buffer.concat(Array.from({ length: 1023 }, () => encodeOption(Opt.STARTTLS))));
    for (let i = 0; i < 1023; i++) assert.equal((await c.readOptionReply()).type, Rep.ERR_POLICY);
    await c.go(DISK);
    assert.equal((await c.readAt(0, 512)).length, 512);
    c.close();
  });
});
