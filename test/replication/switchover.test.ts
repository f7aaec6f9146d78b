// Planned switchover of a remote mirror (src/control/switchover.ts), two real ferryd sites,
// each dialling the other through its own WAN proxy (src/testing/wan-proxy.ts), so every
// byte between them is counted:
//  - A → B under a verifying client (test/staging/workload.py writing to A: the switchover
//    refuses while it is attached, --force disconnects it), then the same client writing
//    at B, then B → A under it: every acknowledged write is on the new primary at each step
//    (check.py, its state carried over), the old primary refuses writes (a replica) and both
//    sites read identical; the roles and the new generation are recorded on both sites; no
//    data is copied: the bytes on both links during an idle switchover are a few frames, and
//    under the workload, once the client is stopped, no more than the records staged and not
//    yet acknowledged then (the link is held cut meanwhile so that there are some); an idle
//    switchover back is run at the replica site (it asks the primary site);
//  - refusals (no mirror, a local mirror, a sync not complete, the link down) change nothing;
//  - kill -9 at each step (FERRY_FAILPOINT, src/control/failpoint.ts) of either site, then a
//    restart: never two writable primaries, exactly one once the site that status names
//    `switching` runs `mirror switchover` again (or by itself when the peer had taken over),
//    and the pair converges (identical, writes at the new primary reach the replica);
//  - a switchover stopped at step 2 with its peer unreachable: `mirror unfence --force` (refused
//    without) abandons it and takes writes; the peer, back, adopts the new generation.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { requireTool, run, waitFor, type Ferryd, type RunResult } from '../harness.js';
import { Cleanup, checkDisk, startWorkload, type CheckSummary, type WorkloadSummary } from '../staging/helpers.js';
import { WanProxy } from '../../src/testing/wan-proxy.js';
import { assertSchema } from '../api/helpers.js';
import { SwitchoverSchema } from '../../src/api/dr-routes.js';
import { cliFails, cliJson, drOf, MiB, mirrorStatus, qemuIo, qemuIoOk, startSitesBothWays, waitStatus, type Sites } from './helpers.js';

const DISK = 64 * MiB;
/** The workload writes the first half (check.py reads it: blocks it never wrote must read as zeroes); the second half holds a pattern. */
const BLOCKS = DISK / 2 / 4096;
const LONG = { timeout: 600_000 } as const;



function assertCheck(c: CheckSummary, w: WorkloadSummary, where: string): void {
  assert.deepEqual(c.errors, [], `${where}: ${JSON.stringify(c)}`);
  assert.equal(c.torn, 0, where);
  assert.equal(c.acked, w.acked, `${where}: the log lists every acknowledgement`);
}

describe('planned switchover of a remote mirror', () => {
  const cleanup = new Cleanup();
  let s: Sites;
  /** B → A: B dials A's replication port through it. */
  let back: WanProxy;
  let work: string;
  const site = (x: 'a' | 'b'): Ferryd => (x === 'a' ? s.a : s.b);

  before(async () => {
    requireTool('qemu-io');
    requireTool('qemu-img');
    const both = await startSitesBothWays(cleanup);
    s = both;
    back = both.back;
    work = cleanup.dir('ferry-switchover-');
  }, LONG);
  after(() => cleanup.run(), LONG);

  const linkBytes = (): number => s.proxy.stats().bytesUp + s.proxy.stats().bytesDown + back.stats().bytesUp + back.stats().bytesDown;

  async function identical(primary: Ferryd, pDisk: string, replica: Ferryd, rDisk: string, where: string): Promise<void> {
    await waitStatus(primary, pDisk, 'caught up', (x) => x.role === 'primary' && x.state === 'in-sync' && x.lagRecords === 0 && x.link?.state === 'connected', 60_000);
    await waitStatus(replica, rDisk, 'replica caught up', (x) => x.role === 'replica' && x.consistent && x.lagRecords === 0, 60_000);
    const cmp = await run(requireTool('qemu-img'), ['compare', '-f', 'raw', '-F', 'raw', primary.uri(pDisk), replica.uri(rDisk)], { timeoutMs: 120_000 });
    assert.equal(cmp.code, 0, `${where}: ${cmp.stdout}${cmp.stderr}`);
  }

  it('A → B under a verifying client, writes at B, B → A: data verifies at each step, no data copied', LONG, async (t) => {
    await s.a.createDisk('sw', DISK);
    await cliJson(s.a, ['mirror', 'create', 'sw', '--to', `${s.peer}:sw-dr`, '--staging', path.join(work, 'sw.stg'), '--staging-size', '64M', '--compress', 'none']);
    await qemuIoOk(s.a.uri('sw'), [`write -P 0x11 ${DISK / 2} ${DISK / 2}`]);
    await identical(s.a, 'sw', s.b, 'sw-dr', 'before');
    const g0 = (await mirrorStatus(s.a, 'sw')).dr.generation;

    // Idle: only control frames cross (both links counted).
    let bytes0 = linkBytes();
    const idle = await cliJson(s.a, ['mirror', 'switchover', 'sw']);
    const idleBytes = linkBytes() - bytes0;
    t.diagnostic(`idle switchover A → B: ${JSON.stringify(idle)}; ${idleBytes} bytes on the links`);
    assertSchema(SwitchoverSchema, idle, 'switchover report');
    assert.equal(idle.primary, `${s.peer}:sw-dr`);
    assert.ok(idleBytes < 256 * 1024, `an idle switchover copies no data: ${idleBytes} bytes`);
    const atA = await mirrorStatus(s.a, 'sw');
    const atB = await mirrorStatus(s.b, 'sw-dr');
    assert.equal(atA.role, 'replica');
    assert.equal(atB.role, 'primary');
    assert.equal(atB.target, `${s.aName}:sw`);
    assert.equal(atA.dr.generation, idle.generation);
    assert.equal(atB.dr.generation, idle.generation);
    assert.deepEqual(atB.dr.generations.map((g: any) => g.id).slice(-2), [g0, idle.generation]);
    const refused = await qemuIo(s.a.uri('sw'), ['write -P 0x22 0 4k']);
    assert.match(refused.stdout + refused.stderr, /Operation not permitted|read-only|Permission denied/i, 'the old primary refuses writes (a replica: a read-only export)');
    await identical(s.b, 'sw-dr', s.a, 'sw', 'after A → B (idle)');
    // Back to A, idle.
    bytes0 = linkBytes();
    // This one is run at the replica site: A asks B, the primary, to switch over.
    const idleBack = await cliJson(s.a, ['mirror', 'switchover', 'sw']);
    assert.equal(idleBack.primary, `${s.aName}:sw`);
    t.diagnostic(`idle switchover B → A: ${JSON.stringify(idleBack)}; ${linkBytes() - bytes0} bytes on the links`);
    await identical(s.a, 'sw', s.b, 'sw-dr', 'after B → A (idle)');

    // Under a verifying client at A.
    let state: string | null = null;
    let next = 1;
    for (const [i, from, to, fromDisk, toDisk] of [
      [0, 'a', 'b', 'sw', 'sw-dr'],
      [1, 'b', 'a', 'sw-dr', 'sw'],
    ] as const) {
      const log = path.join(work, `sw-${i}.log`);
      const w = startWorkload(cleanup, { uri: site(from).uri(fromDisk), log, firstCounter: next, blocks: BLOCKS, seed: 1000 + i, maxSeconds: 120, depth: 8 });
      assert.ok(await w.connected, 'the workload connected');
      await waitStatus(site(from), fromDisk, 'the workload writes', (x) => x.appliedSeq > 200, 60_000);
      await cliFails(site(from), ['mirror', 'switchover', fromDisk], 'DISK_BUSY');
      // The link to the current primary's replica is held cut while the switchover stops the
      // client: what A staged and B has not acknowledged piles up, and once the link is back
      // the links carry only that (and frames) until the switch ends.
      const forward = from === 'a' ? s.proxy : back;
      forward.cut();
      const running = site(from).cli(['mirror', 'switchover', fromDisk, '--force', '--json'], { timeoutMs: 120_000 });
      const wr = await w.done; // disconnected by --force: writes are refused from here on
      const bytes1 = linkBytes();
      forward.restore();
      const out = await running;
      assert.equal(out.code, 0, `switchover ${from} → ${to}: ${out.stdout}${out.stderr}`);
      const r = JSON.parse(out.stdout);
      const switchBytes = linkBytes() - bytes1;
      t.diagnostic(`switchover ${from} → ${to} under the workload: ${JSON.stringify(r)}; ${switchBytes} bytes on the links after the client stopped (${r.drainedBytes} bytes of records were staged and unacknowledged then); workload ${wr.acked}/${wr.issued} acknowledged (${wr.error})`);
      assert.equal(r.disconnected, 1);
      assert.ok(wr.acked > 0);
      assert.ok(r.drainedBytes > 0, 'records were left to ship when writes stopped');
      // Only the staged records and frames: never a copy of the disk.
      assert.ok(switchBytes <= r.drainedBytes * 1.05 + 256 * 1024, `only the staged records cross the links: ${switchBytes} bytes for ${r.drainedBytes} staged`);
      // Every write the client had acknowledged is at the new primary.
      const stateOut = path.join(work, `sw-state-${i}`);
      assertCheck(await checkDisk(site(to).uri(toDisk), log, { blocks: BLOCKS }, state, stateOut), wr, `after the switchover ${from} → ${to}, at ${to}`);
      state = stateOut;
      next = wr.next;
      await identical(site(to), toDisk, site(from), fromDisk, `after ${from} → ${to}`);
    }
  });

  it('refusals change nothing: no mirror, a local mirror, not in sync, link down', LONG, async () => {
    await s.a.createDisk('plain', 16 * MiB);
    await cliFails(s.a, ['mirror', 'switchover', 'plain'], 'NO_MIRROR');
    await cliFails(s.a, ['mirror', 'switchover', 'nosuch'], 'DISK_NOT_FOUND');
    await s.a.createDisk('loc', 16 * MiB);
    await cliJson(s.a, ['mirror', 'create', 'loc', '--to', `local:${path.join(work, 'loc-mirror.img')}`, '--staging', path.join(work, 'loc.stg'), '--staging-size', '64M']);
    await cliFails(s.a, ['mirror', 'switchover', 'loc'], 'BAD_REQUEST');
    // Still syncing (a slow link holds the first sync open).
    s.proxy.bytesPerSec = 256 * 1024;
    await s.a.createDisk('slow', DISK);
    await qemuIoOk(s.a.uri('slow'), [`write -P 0x5a 0 ${DISK}`]);
    await cliJson(s.a, ['mirror', 'create', 'slow', '--to', `${s.peer}:slow-dr`, '--staging', path.join(work, 'slow.stg'), '--staging-size', '64M', '--compress', 'none']);
    await cliFails(s.a, ['mirror', 'switchover', 'slow'], 'MIRROR_NOT_IN_SYNC');
    s.proxy.bytesPerSec = 0;
    await waitStatus(s.a, 'slow', 'in sync', (x) => x.state === 'in-sync' && x.lagRecords === 0 && x.link?.state === 'connected', 120_000);
    // The link down.
    s.proxy.cut();
    try {
      await qemuIoOk(s.a.uri('slow'), ['write -P 0x5b 0 64k']);
      await waitStatus(s.a, 'slow', 'link down', (x) => x.link?.state !== 'connected', 60_000);
      await cliFails(s.a, ['mirror', 'switchover', 'slow'], 'PEER_UNREACHABLE');
    } finally {
      s.proxy.restore();
    }
    const st = await waitStatus(s.a, 'slow', 'in sync again', (x) => x.state === 'in-sync' && x.lagRecords === 0 && x.link?.state === 'connected', 60_000);
    assert.equal(st.role, 'primary');
    assert.equal(st.dr.state, 'normal', 'nothing changed');
    await qemuIoOk(s.a.uri('slow'), ['write -P 0x5c 0 64k']);
    assert.equal((await mirrorStatus(s.b, 'slow-dr')).role, 'replica');
  });

  it('kill -9 at each step of a switchover, either site: never two primaries, one after a restart, and the pair converges', LONG, async (t) => {
    await s.a.createDisk('kx', DISK);
    await cliJson(s.a, ['mirror', 'create', 'kx', '--to', `${s.peer}:kx-dr`, '--staging', path.join(work, 'kx.stg'), '--staging-size', '64M', '--compress', 'none']);
    await qemuIoOk(s.a.uri('kx'), [`write -P 0x31 0 ${DISK}`]);
    const disks = { a: 'kx', b: 'kx-dr' } as const;
    let primary: 'a' | 'b' = 'a';
    await identical(s.a, 'kx', s.b, 'kx-dr', 'before');

    /** Sites where the disk is a writable primary now (a switching disk refuses writes). */
    async function primaries(): Promise<Array<'a' | 'b'>> {
      const out: Array<'a' | 'b'> = [];
      for (const x of ['a', 'b'] as const) {
        const d = (await site(x).api('GET', `/v1/disks/${disks[x]}`)).body;
        const m = await site(x).api('GET', `/v1/disks/${disks[x]}/mirror`);
        const role = m.status === 200 ? m.body.role : 'none';
        if (role !== 'replica' && d.dr?.state === 'normal' && !d.readOnly) out.push(x);
      }
      return out;
    }

    const steps: Array<{ point: string; victim: 'primary' | 'replica' }> = [
      { point: 'switchover-fenced', victim: 'primary' },
      { point: 'switchover-drained', victim: 'primary' },
      { point: 'switchover-replica-took-over', victim: 'replica' },
      { point: 'switchover-peer-took-over', victim: 'primary' },
      { point: 'switchover-before-replica-commit', victim: 'primary' },
    ];
    let pattern = 0x40;
    for (const step of steps) {
      const from: 'a' | 'b' = primary;
      const other: 'a' | 'b' = from === 'a' ? 'b' : 'a';
      const victim: 'a' | 'b' = step.victim === 'primary' ? from : other;
      const v = site(victim);
      v.env.FERRY_FAILPOINT = step.point;
      await v.restart();
      await identical(site(from), disks[from], site(other), disks[other], `${step.point}: before`);
      const running: Promise<RunResult> = site(from).cli(['mirror', 'switchover', disks[from], '--json'], { timeoutMs: 120_000 });
      await waitFor(`${step.point}: site ${victim} killed itself`, () => v.proc.exitCode !== null || v.proc.signalCode !== null, 60_000);
      assert.equal(v.proc.signalCode, 'SIGKILL', `${step.point}: the failpoint killed site ${victim}`);
      delete v.env.FERRY_FAILPOINT;
      await v.start();
      const answer: RunResult = await running;
      const during = await primaries();
      assert.ok(during.length <= 1, `${step.point}: never two writable primaries (${during.join(', ')})`);
      // The site whose status says 'switching' completes it with the same command (unless the peer already made it do so).
      const fromDr = (await site(from).api('GET', `/v1/disks/${disks[from]}/dr`)).body;
      if (fromDr.state === 'switching') await cliJson(site(from), ['mirror', 'switchover', disks[from]]);
      const now = await primaries();
      t.diagnostic(`${step.point} (kill ${victim}, switchover run at ${from}: exit ${answer.code}): primary before the rerun ${during.join(',') || 'none'}, after ${now.join(',')}`);
      // The command answered (success) unless its own site was killed under it.
      if (victim !== from) assert.equal(answer.code, 0, `${step.point}: the switchover at ${from} completes once ${victim} is back: ${answer.stdout}${answer.stderr}`);
      assert.deepEqual(now, [other], `${step.point}: exactly one primary, the new one`);
      primary = other;
      // Writes at the new primary reach the replica; the two read identical.
      await qemuIoOk(site(primary).uri(disks[primary]), [`write -P ${pattern} 0 1M`]);
      pattern++;
      await identical(site(primary), disks[primary], site(from), disks[from], `${step.point}: after`);
    }
  });

  it('a switchover whose peer is lost: mirror unfence --force abandons it (refused without), and the peer, back, adopts the primary', LONG, async () => {
    await s.a.createDisk('ab', 16 * MiB);
    await cliJson(s.a, ['mirror', 'create', 'ab', '--to', `${s.peer}:ab-dr`, '--staging', path.join(work, 'ab.stg'), '--staging-size', '64M', '--compress', 'none']);
    await qemuIoOk(s.a.uri('ab'), ['write -P 0x11 0 16M']);
    await identical(s.a, 'ab', s.b, 'ab-dr', 'before');
    // A stops writes (step 2, durable) and dies there; B is unreachable when it comes back.
    s.a.env.FERRY_FAILPOINT = 'switchover-fenced';
    await s.a.restart();
    await identical(s.a, 'ab', s.b, 'ab-dr', 'after the restart');
    const running = s.a.cli(['mirror', 'switchover', 'ab', '--json'], { timeoutMs: 120_000 });
    await waitFor('A killed itself at step 2', () => s.a.proc.exitCode !== null || s.a.proc.signalCode !== null, 60_000);
    delete s.a.env.FERRY_FAILPOINT;
    await running;
    let generation = '';
    s.proxy.cut();
    try {
      await s.a.start();
      assert.equal((await drOf(s.a, 'ab')).state, 'switching');
      const refused = await qemuIo(s.a.uri('ab'), ['write -P 0x22 0 4k']);
      assert.match(refused.stdout + refused.stderr, /Operation not permitted/, 'a switching disk refuses writes');
      await cliFails(s.a, ['mirror', 'unfence', 'ab'], 'BAD_REQUEST');
      assert.equal((await drOf(s.a, 'ab')).state, 'switching', 'a refused unfence changes nothing');
      generation = (await cliJson(s.a, ['mirror', 'unfence', 'ab', '--force'])).generation;
      const now = await drOf(s.a, 'ab');
      assert.equal(now.state, 'normal');
      assert.equal(now.generation, generation);
      await qemuIoOk(s.a.uri('ab'), ['write -P 0x22 0 4k']);
    } finally {
      s.proxy.restore();
    }
    // B never took over: its replica adopts A's new generation and receives the write.
    await identical(s.a, 'ab', s.b, 'ab-dr', 'after the unfence');
    assert.equal((await drOf(s.b, 'ab-dr')).generation, generation);
    await qemuIoOk(s.b.uri('ab-dr'), ['read -P 0x22 0 4k'], 120_000, true);
  });
});
