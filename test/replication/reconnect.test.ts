// Reconnect and delta failback (src/control/reconnect.ts), two real ferryd sites, each dialling
// the other through its own WAN proxy (src/testing/wan-proxy.ts) so every byte between them
// is counted:
//  - A lost mid-stream with records B never received (the link cut, writes at A, kill -9),
//    B promoted and written (1,000 scattered 4 KiB writes on a 4 GiB disk), A back (fenced):
//    `mirror reconnect` at A makes it B's replica; the bytes on the links during the resync
//    against the bytes of the granules changed on either side (target <= 1.1) and against
//    the disk (target < 2%); the images are byte-identical, B's writes are kept, A's lost
//    records are gone; then `mirror switchover` back: A is the primary again (the fail-back
//    of docs/CLI.md, command for command);
//  - split brain: refused at both sites until the administrator names the side to discard
//    (nothing changes meanwhile); `--discard-changes-at site-b` at B: A's writes win,
//    byte-identical, generations agree;
//  - kill -9 of the reconnecting site, then of the survivor, mid-resync (the link rate-limited):
//    after each restart the resync resumes and converges; the replica's undo log protects
//    its last image meanwhile.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { requireTool, run, waitFor, type Ferryd } from '../harness.js';
import { Cleanup } from '../staging/helpers.js';
import { WanProxy } from '../../src/testing/wan-proxy.js';
import { assertSchema } from '../api/helpers.js';
import { ReconnectSchema } from '../../src/api/dr-routes.js';
import { DIVERGENCE_GRANULE_BYTES } from '../../src/replication/divergence-map.js';
import { cliFails, cliJson, drOf, GiB, MiB, mirrorStatus, qemuIo, qemuIoOk, startSitesBothWays, waitStatus, type Sites } from './helpers.js';
import { scatteredOffsets } from '../../src/testing/scattered-offsets.js';

const G = DIVERGENCE_GRANULE_BYTES;
const LONG = { timeout: 600_000 } as const;

/** Waits until the site learns it diverged from its peer; the DR state it then has must be `state` (the figures in the message otherwise). */
async function learns(d: Ferryd, disk: string, ...states: Array<'fenced' | 'split-brain'>): Promise<void> {
  let last: any = null;
  try {
    await waitFor(`${disk} ${states.join(' or ')}`, async () => (last = await drOf(d, disk)).state !== 'normal', 60_000);
  } finally {
    assert.ok(states.includes(last?.state), `${disk}: ${JSON.stringify(last)}; mirror: ${JSON.stringify(await d.api('GET', `/v1/disks/${disk}/mirror`).then((r) => r.body))}`);
  }
}

function granulesOf(offsets: number[], length = 4096): Set<number> {
  return new Set(offsets.flatMap((o) => [Math.floor(o / G), Math.floor((o + length - 1) / G)]));
}

describe('reconnect and delta failback', () => {
  const cleanup = new Cleanup();
  let s: Sites;
  /** B → A: B dials A's replication port through it. */
  let back: WanProxy;
  let work: string;

  before(async () => {
    requireTool('qemu-io');
    requireTool('qemu-img');
    const both = await startSitesBothWays(cleanup);
    s = both;
    back = both.back;
    work = cleanup.dir('ferry-reconnect-');
  }, LONG);
  after(() => cleanup.run(), LONG);

  const linkBytes = (): number => s.proxy.stats().bytesUp + s.proxy.stats().bytesDown + back.stats().bytesUp + back.stats().bytesDown;

  async function identical(primary: Ferryd, pDisk: string, replica: Ferryd, rDisk: string, where: string, timeoutMs = 120_000): Promise<void> {
    await waitStatus(primary, pDisk, `${where}: in sync`, (x) => x.role === 'primary' && x.state === 'in-sync' && x.consistent && x.lagRecords === 0 && x.link?.state === 'connected', timeoutMs);
    await waitStatus(replica, rDisk, `${where}: replica caught up`, (x) => x.role === 'replica' && x.consistent && x.lagRecords === 0 && x.fallback === null, timeoutMs);
    const cmp = await run(requireTool('qemu-img'), ['compare', '-f', 'raw', '-F', 'raw', primary.uri(pDisk), replica.uri(rDisk)], { timeoutMs: 300_000 });
    assert.equal(cmp.code, 0, `${where}: ${cmp.stdout}${cmp.stderr}`);
  }

  /** Mirror A → B of a new disk, a base pattern written and shipped. */
  async function mirrored(disk: string, size: number, base: number): Promise<void> {
    s.proxy.restore(); // left cut by a test that failed midway
    back.bytesPerSec = 0;
    await s.a.createDisk(disk, size);
    await cliJson(s.a, ['mirror', 'create', disk, '--to', `${s.peer}:${disk}-dr`, '--staging', path.join(work, `${disk}.stg`), '--staging-size', '128M', '--compress', 'none']);
    await qemuIoOk(s.a.uri(disk), [`write -P 0x11 0 ${base}`]);
    await waitStatus(s.a, disk, 'caught up', (x) => x.state === 'in-sync' && x.lagRecords === 0 && x.link?.state === 'connected', 120_000);
    await waitStatus(s.b, `${disk}-dr`, 'replica caught up', (x) => x.consistent && x.lagRecords === 0, 120_000);
  }

  it('fenced A reconnects as the replica of promoted B: only the changed granules cross the link; then B → A switchover', LONG, async (t) => {
    const SIZE = 4 * GiB;
    await mirrored('fb', SIZE, 8 * MiB);
    // Records B never receives: written at A into a cut link, then A is lost.
    s.proxy.cut();
    const lost = scatteredOffsets(20, SIZE, 7);
    await qemuIoOk(s.a.uri('fb'), lost.map((o) => `write -P 0x66 ${o} 4k`));
    assert.equal((await s.a.kill9()).signal, 'SIGKILL');
    await cliJson(s.b, ['mirror', 'promote', 'fb-dr']);
    // B's applications write 1,000 scattered 4 KiB blocks.
    const written = scatteredOffsets(1000, SIZE, 42);
    await qemuIoOk(s.b.uri('fb-dr'), written.map((o) => `write -P 0x22 ${o} 4k`));
    s.proxy.restore();
    await s.a.restart();
    await learns(s.a, 'fb', 'fenced'); // B was promoted past it
    await waitFor("A's changed regions are recorded", async () => ((await drOf(s.a, 'fb')).changed?.granules ?? 0) >= granulesOf(lost).size, 60_000);

    const problems = (await cliJson(s.a, ['status'])).problems as string[];
    assert.ok(problems.some((p) => p.startsWith('fb: fenced') && p.includes('ferry mirror reconnect fb')), `ferry status names the fence and its command: ${JSON.stringify(problems)}`);

    // Refusals change nothing.
    await cliFails(s.a, ['mirror', 'reconnect', 'fb', '--discard-changes-at', 'nowhere'], 'BAD_REQUEST');
    await cliFails(s.a, ['mirror', 'reconnect', 'fb', '--discard-changes-at', s.peer], 'BAD_REQUEST');
    await cliFails(s.b, ['mirror', 'reconnect', 'fb-dr'], 'BAD_REQUEST'); // the survivor is not fenced
    await cliFails(s.a, ['mirror', 'reconnect', 'nosuch'], 'DISK_NOT_FOUND');
    assert.equal((await drOf(s.a, 'fb')).state, 'fenced');
    assert.equal((await mirrorStatus(s.a, 'fb')).role, 'primary', "A's own mirror is still recorded");

    const union = new Set([...granulesOf(written), ...granulesOf(lost)]);
    const bytes0 = linkBytes();
    // The fail-back of docs/CLI.md, command for command (names aside).
    assert.equal((await cliJson(s.a, ['mirror', 'generations', 'fb'])).state, 'fenced');
    const rep = await cliJson(s.a, ['mirror', 'reconnect', 'fb', '--wait']);
    assertSchema(ReconnectSchema, rep, 'reconnect report');
    t.diagnostic(`reconnect: ${JSON.stringify(rep)}`);
    assert.equal(rep.primary, `${s.peer}:fb-dr`);
    assert.equal(rep.discardedAt, s.aName);
    assert.equal(rep.changedHereBytes, granulesOf(lost).size * G, "A's map: the granules of its records B never received");
    assert.equal(rep.changedThereBytes, granulesOf(written).size * G, "B's map: the granules it wrote since the promote");
    assert.equal(rep.resyncBytes, union.size * G, 'the resync copies their union');
    const resynced = await mirrorStatus(s.a, 'fb');
    assert.ok(resynced.role === 'replica' && resynced.consistent && resynced.fallback === null, `--wait returns once A is a consistent replica: ${JSON.stringify(resynced)}`);
    await identical(s.b, 'fb-dr', s.a, 'fb', 'after the reconnect');
    const sent = linkBytes() - bytes0;
    const ratio = sent / rep.resyncBytes;
    t.diagnostic(`failback over the links: ${sent} bytes for ${union.size} changed granules (${rep.resyncBytes} bytes): ratio ${ratio.toFixed(3)}; ${((100 * sent) / SIZE).toFixed(2)}% of the ${SIZE}-byte disk`);
    assert.ok(ratio <= 1.1, `bytes sent / changed granule bytes = ${ratio.toFixed(3)} (target <= 1.1)`);
    assert.ok(sent < 0.02 * SIZE, `${sent} bytes is under 2% of the disk`);

    // B's writes are kept; A's lost records are gone (the base pattern, or zeroes past it).
    await qemuIoOk(s.a.uri('fb'), written.map((o) => `read -P 0x22 ${o} 4k`), 120_000, true);
    const bGranules = granulesOf(written);
    const gone = lost.filter((o) => !bGranules.has(Math.floor(o / G)));
    await qemuIoOk(s.a.uri('fb'), gone.map((o) => `read -P ${o < 8 * MiB ? '0x11' : '0x00'} ${o} 4k`), 120_000, true);
    const [ga, gb] = [await drOf(s.a, 'fb'), await drOf(s.b, 'fb-dr')];
    assert.equal(ga.state, 'normal');
    assert.equal(ga.generation, gb.generation, 'both sites hold the generation B started');
    assert.equal(ga.generation, rep.generation);
    assert.equal(gb.changed ?? null, null, "B's map is deleted once the changed regions are copied (D2)");
    const refused = await qemuIo(s.a.uri('fb'), ['write -P 0x33 0 4k']);
    assert.match(refused.stdout + refused.stderr, /Operation not permitted|read-only|Permission denied/i, 'A is a replica: it refuses writes');

    // The round trip ends at A: a switchover back, no data copied.
    const sw = await cliJson(s.a, ['mirror', 'switchover', 'fb', '--force']);
    assert.equal(sw.primary, `${s.aName}:fb`);
    await identical(s.a, 'fb', s.b, 'fb-dr', 'after the switchover back');
    await qemuIoOk(s.a.uri('fb'), ['write -P 0x44 0 4k', 'read -P 0x44 0 4k']);
  });

  it('split brain: refused until the side to discard is named; then that side becomes the replica and the other wins', LONG, async (t) => {
    const SIZE = 64 * MiB;
    await mirrored('sb', SIZE, SIZE);
    s.proxy.cut();
    await qemuIoOk(s.a.uri('sb'), ['write -P 0x66 2M 4k']); // shipped into the cut, never received (an idle primary learns of the cut when it waits for an answer)
    await waitStatus(s.a, 'sb', 'the link is down', (st) => st.link?.state !== 'connected', 60_000);
    await qemuIoOk(s.a.uri('sb'), ['write -P 0x44 20M 4k', 'write -P 0x44 21M 4k']); // A, after divergence
    await cliJson(s.b, ['mirror', 'promote', 'sb-dr']);
    await qemuIoOk(s.b.uri('sb-dr'), ['write -P 0x55 1M 4k', 'write -P 0x55 40M 4k']); // B, since the promote
    s.proxy.restore();
    await waitFor('split brain at A', async () => (await drOf(s.a, 'sb')).state === 'split-brain', 60_000);
    await waitFor('split brain at B', async () => (await drOf(s.b, 'sb-dr')).state === 'split-brain', 60_000);
    const problemsB = (await cliJson(s.b, ['status'])).problems as string[];
    assert.ok(problemsB.some((p) => p.startsWith('sb-dr: split brain') && p.includes('--discard-changes-at')), `ferry status at B: ${JSON.stringify(problemsB)}`);

    // Nothing is resolved silently: refused at both sites without a choice, or with a wrong one.
    await cliFails(s.a, ['mirror', 'reconnect', 'sb'], 'SPLIT_BRAIN');
    await cliFails(s.b, ['mirror', 'reconnect', 'sb-dr'], 'SPLIT_BRAIN');
    await cliFails(s.a, ['mirror', 'reconnect', 'sb', '--discard-changes-at', s.peer], 'BAD_REQUEST'); // run it at B
    await cliFails(s.b, ['mirror', 'reconnect', 'sb-dr', '--discard-changes-at', 'elsewhere'], 'BAD_REQUEST');
    assert.equal((await drOf(s.a, 'sb')).state, 'split-brain');
    assert.equal((await drOf(s.b, 'sb-dr')).state, 'split-brain');
    await qemuIoOk(s.a.uri('sb'), ['write -P 0x46 22M 4k']); // A still takes writes
    await qemuIoOk(s.b.uri('sb-dr'), ['write -P 0x56 41M 4k']); // and so does B

    // The administrator discards B's writes: B becomes A's replica.
    const rep = await cliJson(s.b, ['mirror', 'reconnect', 'sb-dr', '--discard-changes-at', s.peer]);
    t.diagnostic(`split brain resolved at B: ${JSON.stringify(rep)}`);
    assert.equal(rep.primary, `${s.aName}:sb`);
    assert.equal(rep.discardedAt, s.peer);
    assert.equal(rep.resyncBytes, 7 * G, "the union: A's four writes (one never received) and B's three");
    await identical(s.a, 'sb', s.b, 'sb-dr', 'after the split brain');
    await qemuIoOk(s.b.uri('sb-dr'), ['read -P 0x66 2M 4k', 'read -P 0x44 20M 4k', 'read -P 0x44 21M 4k', 'read -P 0x46 22M 4k', 'read -P 0x11 1M 4k', 'read -P 0x11 40M 4k', 'read -P 0x11 41M 4k'], 120_000, true);
    const [ga, gb] = [await drOf(s.a, 'sb'), await drOf(s.b, 'sb-dr')];
    assert.equal(ga.state, 'normal');
    assert.equal(gb.state, 'normal');
    assert.equal(ga.generation, gb.generation);
    await qemuIoOk(s.a.uri('sb'), ['write -P 0x47 0 4k']);
    await identical(s.a, 'sb', s.b, 'sb-dr', 'writes at A reach B again');
  });

  it("killed after dropping its own mirror (step 3), the reconnect run again gives the survivor's mirror the policy A's mirror had", LONG, async () => {
    await mirrored('kp', 64 * MiB, 8 * MiB);
    await cliJson(s.a, ['mirror', 'set', 'kp', '--bandwidth', '40M', '--rpo', '90s']);
    s.proxy.cut();
    assert.equal((await s.a.kill9()).signal, 'SIGKILL');
    await cliJson(s.b, ['mirror', 'promote', 'kp-dr']);
    await qemuIoOk(s.b.uri('kp-dr'), ['write -P 0x22 1M 64k']);
    s.proxy.restore();
    s.a.env.FERRY_FAILPOINT = 'reconnect-dropped';
    try {
      await s.a.restart();
      await learns(s.a, 'kp', 'fenced');
      const cut = await s.a.cli(['mirror', 'reconnect', 'kp', '--json'], { timeoutMs: 120_000 });
      await waitFor('A killed itself after dropping its mirror', () => s.a.proc.exitCode !== null || s.a.proc.signalCode !== null, 60_000);
      assert.equal(s.a.proc.signalCode, 'SIGKILL', `the failpoint killed A (CLI exit ${cut.code})`);
    } finally {
      delete s.a.env.FERRY_FAILPOINT;
    }
    await s.a.start();
    const gone = await s.a.api('GET', '/v1/disks/kp/mirror');
    assert.equal(gone.body?.error?.code, 'NO_MIRROR', `A's own mirror was dropped before the kill: ${JSON.stringify(gone.body)}`);
    assert.equal((await drOf(s.a, 'kp')).state, 'fenced', 'A stays fenced, waiting for the survivor');
    await cliJson(s.a, ['mirror', 'reconnect', 'kp', '--wait']);
    const atB = await mirrorStatus(s.b, 'kp-dr');
    assert.equal(atB.role, 'primary');
    assert.equal(atB.policy.bandwidth, 40 * MiB, `the policy recorded at step 2 went on: ${JSON.stringify(atB.policy)}`);
    assert.equal(atB.policy.rpoMs, 90_000);
    await identical(s.b, 'kp-dr', s.a, 'kp', 'after the reconnect run again');
  });

  it('kill -9 of the reconnecting site, then of the survivor, mid-resync: it resumes and converges', LONG, async (t) => {
    const SIZE = 256 * MiB;
    await mirrored('kr', SIZE, SIZE);
    s.proxy.cut();
    await qemuIoOk(s.a.uri('kr'), ['write -P 0x66 3M 4k']);
    assert.equal((await s.a.kill9()).signal, 'SIGKILL');
    await cliJson(s.b, ['mirror', 'promote', 'kr-dr']);
    // 48 MiB changed at B: long enough to copy at 4 MiB/s to be caught mid-way.
    await qemuIoOk(s.b.uri('kr-dr'), ['write -P 0x22 100M 48M']);
    s.proxy.restore();
    await s.a.restart();
    // Fenced; or split brain when A's write into the cut came after over 5 s of silence (a loaded machine): the same command names A.
    await learns(s.a, 'kr', 'fenced', 'split-brain');
    back.bytesPerSec = 4 * MiB;
    const rep = await cliJson(s.a, ['mirror', 'reconnect', 'kr', '--discard-changes-at', s.aName]);
    assert.equal(rep.resyncBytes, 48 * MiB + G);

    const midway = (d: Ferryd, disk: string) => waitStatus(d, disk, 'the resync runs', (x) => x.state === 'syncing' && x.syncProgress > 0.05 && x.syncProgress < 0.9, 120_000);
    await midway(s.b, 'kr-dr');
    const atA = await mirrorStatus(s.a, 'kr');
    assert.equal(atA.role, 'replica');
    assert.ok(atA.fallback, `A's undo log keeps its last image while the resync runs: ${JSON.stringify(atA)}`);
    assert.equal((await s.a.kill9()).signal, 'SIGKILL');
    await s.a.restart();
    assert.ok((await mirrorStatus(s.a, 'kr')).fallback, 'the undo log is back after the restart');
    await midway(s.b, 'kr-dr');
    assert.equal((await s.b.kill9()).signal, 'SIGKILL');
    await s.b.restart();
    back.bytesPerSec = 0;
    await identical(s.b, 'kr-dr', s.a, 'kr', 'after both crashes', 240_000);
    await qemuIoOk(s.a.uri('kr'), ['read -P 0x22 100M 48M', 'read -P 0x11 3M 4k'], 120_000, true);
    assert.equal((await drOf(s.b, 'kr-dr')).changed ?? null, null, "B's map is deleted once the resync completes");
    t.diagnostic('the resync resumed after each kill -9 and converged');
  });

  it('the survivor lost mid-resync: a promote at the reconnecting site rolls back to its own last image; then the other way round', LONG, async (t) => {
    const SIZE = 128 * MiB;
    await mirrored('lr', SIZE, SIZE);
    s.proxy.cut();
    await qemuIoOk(s.a.uri('lr'), ['write -P 0x66 3M 4k']); // A's last write, never received by B
    assert.equal((await s.a.kill9()).signal, 'SIGKILL');
    await cliJson(s.b, ['mirror', 'promote', 'lr-dr']);
    await qemuIoOk(s.b.uri('lr-dr'), ['write -P 0x22 64M 32M']);
    s.proxy.restore();
    await s.a.restart();
    await learns(s.a, 'lr', 'fenced', 'split-brain'); // as above
    back.bytesPerSec = 2 * MiB;
    await cliJson(s.a, ['mirror', 'reconnect', 'lr', '--discard-changes-at', s.aName]);
    await waitStatus(s.b, 'lr-dr', 'the resync runs', (x) => x.state === 'syncing' && x.syncProgress > 0.05 && x.syncProgress < 0.9, 120_000);
    assert.equal((await s.b.kill9()).signal, 'SIGKILL'); // the survivor is lost mid-resync

    const promoted = await cliJson(s.a, ['mirror', 'promote', 'lr']);
    t.diagnostic(`promote at A mid-resync: ${JSON.stringify(promoted)}`);
    assert.equal(promoted.image, 'rolled-back', "A's undo log gives back the image it had before the reconnect");
    assert.ok(promoted.restoredBytes > 0);
    await qemuIoOk(s.a.uri('lr'), ['read -P 0x66 3M 4k', 'read -P 0x11 64M 32M', 'write -P 0x77 0 4k']);

    // B comes back: A was promoted past it, so B is fenced, and reconnects as A's replica.
    back.bytesPerSec = 0;
    await s.b.restart();
    await learns(s.b, 'lr-dr', 'fenced');
    const rep = await cliJson(s.b, ['mirror', 'reconnect', 'lr-dr', '--wait']);
    t.diagnostic(`B reconnects to A: ${JSON.stringify(rep)}`);
    assert.equal(rep.primary, `${s.aName}:lr`);
    assert.equal(rep.resyncBytes, SIZE, 'a rolled-back promote does not know what differs: the whole disk');
    await identical(s.a, 'lr', s.b, 'lr-dr', 'B follows A again');
    await qemuIoOk(s.b.uri('lr-dr'), ['read -P 0x77 0 4k', 'read -P 0x66 3M 4k'], 120_000, true);
  });
});
