// Site B can always fall back to its last consistent image, and `mirror promote` hands it
// over when site A is lost:
//  - a bitmap resync rewrites B out of order; B keeps the image it had in an undo log
//    (src/replication/undo-log.ts). Site A is killed mid-resync (lost), site B is killed
//    and restarted too (its guard must be back before its staging area replays), and
//    `mirror promote` at B rolls the disk back: byte for byte the image B held before the
//    resync began, although resync chunks and streamed records had overwritten parts of it;
//  - fail-back: site A comes back fenced (B was promoted past it: writes refused), B is given
//    A's address (`peer set`) and mirrors the promoted disk back to A, which ends the fence;
//    a switchover run at A then makes A the primary again and B its replica (the fail-back
//    without `mirror reconnect`, for a disk whose mirror was removed: docs/CLI.md; the
//    reconnect itself is test/replication/reconnect.test.ts);
//  - a resync that completes deletes the undo log, and B equals A;
//  - `mirror remove --force` at A mid-resync releases B at its last consistent image;
//  - promoting an in-sync replica gives the newest image, and the primary site, still up,
//    is fenced at its next attach (writes refused); a replica that never completed
//    its first sync is refused unless forced; promote is refused on a primary and on a disk
//    that is no replica, changing nothing.
// The mirrors use --compress none so the WAN proxy's rate limit holds the resync open.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, run } from '../harness.js';
import { Cleanup } from '../staging/helpers.js';
import { cliFails, cliJson, diskPath, MiB, mirrorStatus, qemuIo, qemuIoOk, startSites, stopSitesBounded, waitCaughtUp, waitStatus, type Sites } from './helpers.js';

const DISK = 128 * MiB;
const LONG = { timeout: 300_000 } as const;



function sha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

const patternHash = (byte: number): string => createHash('sha256').update(Buffer.alloc(DISK, byte)).digest('hex');

describe('site B falls back to its last consistent image; mirror promote', () => {
  const cleanup = new Cleanup();
  let s: Sites;
  let work: string;

  before(async () => {
    requireTool('qemu-io');
    requireTool('qemu-img');
    s = await startSites(cleanup);
    stopSitesBounded(cleanup, s);
    work = cleanup.dir('ferry-fallback-');
  }, LONG);
  after(() => cleanup.run(), LONG);

  async function mirrored(disk: string): Promise<void> {
    await s.a.createDisk(disk, DISK);
    await cliJson(s.a, ['mirror', 'create', disk, '--to', `${s.peer}:${disk}-dr`, '--staging', path.join(work, `${disk}.stg`), '--staging-size', '64M', '--on-full', 'bitmap', '--compress', 'none']);
    await qemuIoOk(s.a.uri(disk), ['write -P 0x11 0 128M']);
    await waitCaughtUp(s, disk, `${disk}-dr`);
  }

  /** Cuts the link, overflows A's staging area (bitmap fallback), restores the link at `bytesPerSec`. */
  async function overflowAndResync(disk: string, bytesPerSec: number): Promise<void> {
    s.proxy.cut();
    await qemuIoOk(s.a.uri(disk), Array.from({ length: 12 }, (_, i) => `write -P 0x22 ${i * 8}M 8M`));
    await waitStatus(s.a, disk, "state 'bitmap'", (st) => st.state === 'bitmap');
    assert.equal((await mirrorStatus(s.b, `${disk}-dr`)).fallback, null, 'no undo log before the resync begins');
    s.proxy.bytesPerSec = bytesPerSec;
    s.proxy.restore();
  }

  it('site A lost mid-resync (and site B restarted): promote rolls B back to its last consistent image', LONG, async (t) => {
    await mirrored('lost');
    const bFile = await diskPath(s.b, 'lost-dr');
    assert.equal(sha256(bFile), patternHash(0x11), 'B holds the image before the outage');
    await overflowAndResync('lost', 2 * MiB);
    const st = await waitStatus(s.b, 'lost-dr', 'an undo log with saved regions', (x) => x.fallback !== null && x.fallback.undoBytes > 4096 && x.consistent === false, 60_000);
    t.diagnostic(`resync under way: fallback image up to record ${st.fallback.seq}, undo log ${st.fallback.undoBytes} bytes`);
    // A record streamed during the resync (outside the dirty regions) is applied through the guard too.
    await qemuIoOk(s.a.uri('lost'), ['write -P 0x33 120M 1M']);
    await waitStatus(s.b, 'lost-dr', 'the record applied', (x) => x.appliedSeq > st.appliedSeq, 60_000);
    assert.equal((await mirrorStatus(s.a, 'lost')).state, 'resyncing', 'the kill lands mid-resync');
    assert.notEqual(sha256(bFile), patternHash(0x11), 'the resync has overwritten parts of B');

    assert.equal((await s.a.kill9()).signal, 'SIGKILL'); // site A is lost
    assert.equal((await s.b.kill9()).signal, 'SIGKILL'); // and site B crashes too
    await s.b.start();
    const after = await mirrorStatus(s.b, 'lost-dr');
    assert.equal(after.consistent, false);
    assert.ok(after.fallback && after.fallback.seq === st.fallback.seq, `the undo log is back after the restart: ${JSON.stringify(after.fallback)}`);

    const r = await cliJson(s.b, ['mirror', 'promote', 'lost-dr']);
    t.diagnostic(`promote: ${JSON.stringify(r)}`);
    assert.equal(r.image, 'rolled-back');
    assert.equal(r.seq, st.fallback.seq);
    assert.ok(r.restoredBytes > 0);
    assert.equal(sha256(bFile), patternHash(0x11), 'B is byte for byte its last consistent image');
    assert.ok(!fs.existsSync(path.join(s.b.dataDir, 'replica-staging', 'lost-dr.undo')), 'the undo log is gone');
    assert.ok(!fs.existsSync(path.join(s.b.dataDir, 'replica-staging', 'lost-dr.stg')), 'the replica staging area is gone');
    // A normal, writable disk now, and it stays so across a restart.
    assert.equal((await s.b.api('GET', '/v1/disks/lost-dr/mirror')).status, 409);
    await qemuIoOk(s.b.uri('lost-dr'), ['write -P 0x44 0 64k', 'read -P 0x44 0 64k', 'read -P 0x11 64k 64k']);
    await s.b.restart();
    await qemuIoOk(s.b.uri('lost-dr'), ['read -P 0x44 0 64k', 'read -P 0x11 1M 127M']);
    s.proxy.bytesPerSec = 0;
    await s.a.start(); // for the next tests (its mirror of 'lost' now finds no replica)
  });

  it('fail-back: site A returns, and the promoted disk at B is mirrored back to it', LONG, async (t) => {
    // At A: its mirror of 'lost' learns B was promoted past it (A is fenced); abandon it, free the disk.
    const fenced = await waitStatus(s.a, 'lost', 'the link reports the promoted replica', (st) => st.dr?.state === 'fenced' && /fenced/i.test(st.link?.lastError ?? ''), 60_000);
    assert.match(fenced.dr.reason, /site-b was promoted past this site/);
    assert.equal((await cliJson(s.a, ['mirror', 'generations', 'lost'])).state, 'fenced');
    const refused = await qemuIo(s.a.uri('lost'), ['write -P 0x55 0 4k']);
    assert.match(refused.stdout + refused.stderr, /Operation not permitted/, 'a fenced disk refuses writes');
    const abandoned = await cliJson(s.a, ['mirror', 'remove', 'lost', '--force']);
    // Never "up-to-date" when the mirror site did not confirm; its answer is the reason (no wait for a timeout).
    assert.equal(abandoned.copy, 'unknown', JSON.stringify(abandoned));
    assert.doesNotMatch(abandoned.unconfirmed ?? '', /within \d+ s/, `the peer's answer, not the removal deadline: ${abandoned.unconfirmed}`);
    await cliJson(s.a, ['staging', 'detach', 'lost']);
    // At B: A paired with B (it dialled), so B has no address for A until it is given one.
    const aPeer = await cliJson(s.b, ['peer', 'show', s.aName]);
    assert.equal(aPeer.address, null);
    const aSite = (await s.a.api('GET', '/v1/site')).body;
    await cliFails(s.b, ['peer', 'set', s.aName, '--address', 'not-an-address'], 'BAD_REQUEST');
    await cliFails(s.b, ['peer', 'set', 'nobody', '--address', aSite.replication], 'PEER_NOT_FOUND');
    const set = await cliJson(s.b, ['peer', 'set', s.aName, '--address', aSite.replication]);
    assert.equal(set.address, aSite.replication);
    assert.equal((await cliJson(s.b, ['peer', 'show', s.aName])).check.authenticated, true, 'B reaches A, both identities pinned');
    // B's disk (its rolled-back image plus what was written since) goes back to A's disk, checksum sync.
    await cliJson(s.b, ['mirror', 'create', 'lost-dr', '--to', `${s.aName}:lost`, '--staging', path.join(work, 'back.stg'), '--staging-size', '64M', '--sync', 'checksum', '--compress', 'none', '--wait']);
    const st = await waitStatus(s.b, 'lost-dr', 'in sync with A', (x) => x.state === 'in-sync' && x.consistent && x.lagRecords === 0, 120_000);
    t.diagnostic(`fail-back in sync: ${JSON.stringify(st.link)}`);
    const replicaAtA = await waitStatus(s.a, 'lost', 'A holds the replica', (x) => x.role === 'replica' && x.consistent && x.lagRecords === 0, 60_000);
    // The fence ended when the disk became B's replica; it follows B's generation now.
    assert.equal(replicaAtA.dr.state, 'normal');
    assert.equal(replicaAtA.dr.generation, (await mirrorStatus(s.b, 'lost-dr')).dr.generation);
    const cmp = await run(requireTool('qemu-img'), ['compare', '-f', 'raw', '-F', 'raw', s.b.uri('lost-dr'), s.a.uri('lost')], { timeoutMs: 120_000 });
    assert.equal(cmp.code, 0, `A's disk is B's again: ${cmp.stdout}${cmp.stderr}`);
    // The last step of the round trip (docs/CLI.md), run at A, the replica: a switchover makes
    // A the primary again and B its replica, with nothing copied.
    const back = await cliJson(s.a, ['mirror', 'switchover', 'lost', '--force']);
    t.diagnostic(`switched back: ${JSON.stringify(back)}`);
    assert.equal(back.primary, `${s.aName}:lost`);
    await qemuIoOk(s.a.uri('lost'), ['write -P 0x66 0 64k', 'read -P 0x66 0 64k']);
    const bNow = await waitStatus(s.b, 'lost-dr', 'B follows A again', (x) => x.role === 'replica' && x.consistent && x.lagRecords === 0, 60_000);
    assert.equal(bNow.target, `${s.aName}:lost`);
    const refusedAtB = await qemuIo(s.b.uri('lost-dr'), ['write -P 0x55 0 4k']);
    assert.match(refusedAtB.stdout + refusedAtB.stderr, /Operation not permitted|Permission denied/, 'B, a replica again, refuses writes');
    const cmp2 = await run(requireTool('qemu-img'), ['compare', '-f', 'raw', '-F', 'raw', s.a.uri('lost'), s.b.uri('lost-dr')], { timeoutMs: 120_000 });
    assert.equal(cmp2.code, 0, `B is A's again: ${cmp2.stdout}${cmp2.stderr}`);
  });

  it('a resync that completes deletes the undo log; promote in sync gives the newest image', LONG, async () => {
    await mirrored('done');
    await overflowAndResync('done', 0);
    const { a } = await waitCaughtUp(s, 'done', 'done-dr', 120_000);
    assert.equal(a.dirtyBytes, 0);
    const b = await mirrorStatus(s.b, 'done-dr');
    assert.equal(b.fallback, null, 'no fallback once consistent again');
    assert.ok(!fs.existsSync(path.join(s.b.dataDir, 'replica-staging', 'done-dr.undo')), 'the undo log was deleted');
    const cmp = await run(requireTool('qemu-img'), ['compare', '-f', 'raw', '-F', 'raw', s.a.uri('done'), s.b.uri('done-dr')], { timeoutMs: 120_000 });
    assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr);

    // Refusals change nothing: promote on the primary, on a disk that is no replica.
    await cliFails(s.a, ['mirror', 'promote', 'done'], 'BAD_REQUEST');
    await s.b.createDisk('plain', 16 * MiB);
    await cliFails(s.b, ['mirror', 'promote', 'plain'], 'NO_MIRROR');
    assert.equal((await mirrorStatus(s.b, 'done-dr')).role, 'replica');

    await qemuIoOk(s.a.uri('done'), ['write -P 0x55 4M 1M']);
    await waitCaughtUp(s, 'done', 'done-dr');
    const r = await cliJson(s.b, ['mirror', 'promote', 'done-dr']);
    assert.equal(r.image, 'newest');
    const cmp2 = await run(requireTool('qemu-img'), ['compare', '-f', 'raw', '-F', 'raw', s.a.uri('done'), s.b.uri('done-dr')], { timeoutMs: 120_000 });
    assert.equal(cmp2.code, 0, `the promoted disk holds every record: ${cmp2.stdout}${cmp2.stderr}`);
    // Site A's mirror learns at its next attach that B was promoted past it: A is fenced (no
    // two writable primaries), says so, and refuses writes; reads go on.
    const st = await waitStatus(s.a, 'done', 'the link reports the promote', (x) => x.dr?.state === 'fenced' && /fenced/i.test(x.link?.lastError ?? ''), 30_000);
    assert.notEqual(st.link.state, 'connected');
    const refused = await qemuIo(s.a.uri('done'), ['write -P 0x66 0 64k']);
    assert.match(refused.stdout + refused.stderr, /Operation not permitted/, 'the fenced disk refuses writes');
    await qemuIoOk(s.a.uri('done'), ['read -P 0x55 4M 1M']);
  });

  it('mirror remove --force at site A mid-resync releases the replica at its last consistent image', LONG, async () => {
    await mirrored('rm');
    const bFile = await diskPath(s.b, 'rm-dr');
    await overflowAndResync('rm', 2 * MiB);
    await waitStatus(s.b, 'rm-dr', 'an undo log with saved regions', (x) => x.fallback !== null && x.fallback.undoBytes > 4096, 60_000);
    // The release travels behind the chunks already sent; the resync is far from done when it arrives.
    s.proxy.bytesPerSec = 8 * MiB;
    const m = await cliJson(s.a, ['mirror', 'remove', 'rm', '--force']);
    s.proxy.bytesPerSec = 0;
    assert.equal(m.consistent, false, 'removed mid-resync');
    assert.equal(m.copy, 'incomplete');
    assert.equal((await s.b.api('GET', '/v1/disks/rm-dr/mirror')).status, 409, 'B holds a normal disk now');
    assert.equal(sha256(bFile), patternHash(0x11), 'the released disk is its last consistent image, not a half-resynced one');
    assert.ok(!fs.existsSync(path.join(s.b.dataDir, 'replica-staging', 'rm-dr.undo')));
  });

  it('a replica that never completed its first sync is promoted only with --force', LONG, async () => {
    await s.a.createDisk('fresh', DISK);
    await qemuIoOk(s.a.uri('fresh'), ['write -P 0x77 0 128M']);
    s.proxy.bytesPerSec = 1 * MiB;
    await cliJson(s.a, ['mirror', 'create', 'fresh', '--to', `${s.peer}:fresh-dr`, '--staging', path.join(work, 'fresh.stg'), '--staging-size', '64M', '--compress', 'none']);
    await waitStatus(s.b, 'fresh-dr', 'the replica syncing', (x) => x.role === 'replica' && x.consistent === false, 60_000);
    const msg = await cliFails(s.b, ['mirror', 'promote', 'fresh-dr'], 'MIRROR_NOT_IN_SYNC');
    assert.match(msg, /--force/);
    assert.equal((await mirrorStatus(s.b, 'fresh-dr')).role, 'replica', 'the refusal changed nothing');
    const r = await cliJson(s.b, ['mirror', 'promote', 'fresh-dr', '--force']);
    assert.equal(r.image, 'as-is');
    s.proxy.bytesPerSec = 0;
  });
});
