// Remote mirrors survive kill -9 of either site, mid-stream and mid-sync:
//  - site A killed while test/staging/workload.py writes and records stream to site B (several
//    rounds): after the restart every acknowledged write is on A (test/staging/check.py), A dials
//    B again by itself and the mirror carries on from where B's durable position was, with no
//    resync (the mirror stays consistent and in sync, syncProgress 1, no sync run), and once
//    caught up A and B read identical through NBD (qemu-img compare);
//  - site B killed while A writes: A keeps acknowledging (the workload sees no error), redials
//    with backoff on its own; B's replica, right after its restart, is still an image A had (a
//    snapshot taken with pause/copy/resume while the link is held cut, before A's backlog
//    arrives; check.py prefix-only); both end identical;
//  - site A killed during the initial sync of a disk holding 256 MiB of data (a workload
//    writing elsewhere on the disk meanwhile): the sync resumes from its durable checkpoint
//    (the cursor read from A's metadata after the kill; progress after the restart is reported),
//    nothing acknowledged is lost, and the sites end identical;
//  - site B killed during the initial sync: A keeps acknowledging, the sync completes once B is
//    back, and the sites end identical.
// The sync tests slow the link with the WAN proxy (src/testing/wan-proxy.ts) so that the kill
// lands mid-sync whatever the machine's speed. The tests that kill B give A a staging area large
// enough for what it takes while B restarts: a full staging area is the outage tests' subject.
// Each site must stop on SIGTERM at the end (bounded; a hung shutdown fails the cleanup).
// Schedules are random; FERRY_CRASH_SEED replays one.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { requireTool, run, type Ferryd } from '../harness.js';
import { seededRng } from '../../src/testing/faulty-store.js';
import { Cleanup, HERE as STAGING_DIR, PYTHON, SYSTEM_ENV, checkDisk, describeRun, lastJson, runBounded, startWorkload, type CheckSummary, type Workload, type WorkloadSummary } from '../staging/helpers.js';
import { fillPattern } from '../mirror/helpers.js';
import { MiB, cliJson, diskPath, mirrorStatus, startSites, stopSitesBounded, waitCaughtUp, waitStatus, type Sites } from './helpers.js';

const TEST = { timeout: 240_000 } as const;
const STREAM_DISK = 64 * MiB;
const STREAM_BLOCKS = STREAM_DISK / 4096;
/** Sync tests: 256 MiB of data, then 64 MiB the workload writes during the sync. */
const DATA = 256 * MiB;
const SYNC_DISK = DATA + 64 * MiB;
const TAIL_FIRST_BLOCK = DATA / 4096;
const TAIL_BLOCKS = (SYNC_DISK - DATA) / 4096;
/** The link's rate during the sync tests: the 256 MiB take several seconds. */
const SYNC_LINK_RATE = 40 * MiB;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function seedFor(t: { diagnostic(m: string): void }): number {
  const seed = process.env.FERRY_CRASH_SEED ? Number(process.env.FERRY_CRASH_SEED) : Math.floor(Math.random() * 2 ** 31);
  t.diagnostic(`FERRY_CRASH_SEED=${seed}`);
  return seed;
}

function assertCheck(c: CheckSummary, w: WorkloadSummary, where: string): void {
  assert.deepEqual(c.errors, [], `${where}: ${JSON.stringify(c)}`);
  assert.equal(c.torn, 0, where);
  assert.equal(c.prefixViolations, 0, where);
  assert.equal(c.issued, w.issued, `${where}: the log lists every issued write`);
  assert.equal(c.acked, w.acked, `${where}: the log lists every acknowledgement`);
}

/** ferryd's structured log lines (since its last start). */
function logLines(d: Ferryd): any[] {
  return (d.stdout + '\n' + d.stderr)
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => {
      try {
        return JSON.parse(l);
      } catch {
        return null;
      }
    })
    .filter((x) => x !== null);
}

/** What A and B serve over NBD is the same, byte for byte. */
async function assertIdentical(s: Sites, disk: string, replica: string, where: string): Promise<void> {
  const cmp = await run(requireTool('qemu-img'), ['compare', '-f', 'raw', '-F', 'raw', s.a.uri(disk), s.b.uri(replica)], { timeoutMs: 120_000 });
  assert.equal(cmp.code, 0, `${where}: qemu-img compare A:${disk} B:${replica}: ${cmp.stdout}${cmp.stderr}`);
}

/** check.py, prefix-only (a mirror's image lags), on an image file served read-only by nbdkit. */
async function checkImagePrefix(file: string, log: string, range: { firstBlock?: number; blocks: number }, stateIn: string | null, out: string): Promise<CheckSummary> {
  const script = `${PYTHON} ${path.join(STAGING_DIR, 'check.py')} "$uri" ${log} ${range.firstBlock ?? 0} ${range.blocks} ${stateIn ?? '-'} ${out}`;
  const args = ['-r', '-U', '-', 'file', file, '--run', script];
  const r = await runBounded(requireTool('nbdkit'), args, { env: { ...SYSTEM_ENV, FERRY_CHECK_PREFIX_ONLY: '1' }, timeoutMs: 120_000 });
  assert.equal(r.code, 0, `checker failed:\n${describeRun('nbdkit', args, r)}`);
  return lastJson<CheckSummary>(r.stdout);
}

/**
 * Site B's image, frozen: hold B's apply (`ferry mirror pause` on B), wait until the apply
 * really stands still, copy B's disk file, resume. The wait is there because the hold does not
 * wait for the group of records being applied when it is asked (see order.test.ts, which checks
 * that the hold freezes the image at once); here what matters is the image B recovered to.
 */
async function snapshotReplica(s: Sites, replica: string, file: string): Promise<{ paused: any; settledSeq: number; movedAfterPause: boolean }> {
  const paused = await cliJson(s.b, ['mirror', 'pause', replica]);
  assert.equal(paused.state, 'paused', JSON.stringify(paused));
  try {
    let last = paused.appliedSeq as number;
    const deadline = Date.now() + 30_000;
    for (;;) {
      await sleep(400);
      const now = (await mirrorStatus(s.b, replica)).appliedSeq as number;
      if (now === last) break;
      assert.ok(Date.now() < deadline, `B's apply of ${replica} still moves 30 s after the pause`);
      last = now;
    }
    const src = await diskPath(s.b, replica);
    await run('cp', ['--sparse=always', src, file]);
    const still = await run('cmp', [src, file]);
    assert.equal(still.code, 0, `B's disk file changed while its apply was held: ${still.stdout}${still.stderr}`);
    return { paused, settledSeq: last, movedAfterPause: last !== paused.appliedSeq };
  } finally {
    await cliJson(s.b, ['mirror', 'resume', replica]);
  }
}

/** Collects a site's mirror status every 100 ms from now until stopped. */
function watchStatus(d: Ferryd, disk: string): { stop(): Promise<any[]> } {
  const seen: any[] = [];
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      const r = await d.api('GET', `/v1/disks/${disk}/mirror`).catch(() => null);
      if (r && r.status === 200) seen.push(r.body);
      await sleep(100);
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
      return seen;
    },
  };
}

/** What both sites say about a mirror, with their last log lines: for failure messages. */
async function explain(s: Sites, disk: string, replica: string): Promise<string> {
  const [a, st, b] = await Promise.all([
    s.a.api('GET', `/v1/disks/${disk}/mirror`).then((r) => r.body, (e) => String(e)),
    s.a.api('GET', `/v1/disks/${disk}/staging`).then((r) => r.body, (e) => String(e)),
    s.b.api('GET', `/v1/disks/${replica}/mirror`).then((r) => r.body, (e) => String(e)),
  ]);
  const tail = (d: Ferryd): string => (d.stdout + d.stderr).trim().split('\n').slice(-30).join('\n');
  return `A mirror: ${JSON.stringify(a)}\nA staging: ${JSON.stringify(st)}\nB replica: ${JSON.stringify(b)}\nA log:\n${tail(s.a)}\nB log:\n${tail(s.b)}`;
}

/** Awaits `p`; a failure says what both sites were doing. */
async function explained<T>(s: Sites, disk: string, replica: string, p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (err) {
    (err as Error).message += `\n${await explain(s, disk, replica)}`;
    throw err;
  }
}

/** The workload's summary, or (past `ms`) a failure that says what both sites were doing. */
async function workloadDone(s: Sites, w: Workload, disk: string, replica: string, ms: number, where: string): Promise<WorkloadSummary> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), ms)));
  const r = await Promise.race([w.done, late]).finally(() => clearTimeout(timer));
  if (r) return r;
  const why = await explain(s, disk, replica);
  w.child.kill('SIGKILL');
  await w.done.catch(() => undefined);
  assert.fail(`${where}: the workload at A has not finished ${ms / 1000} s after it should have (writes stall at A?)\n${why}`);
}

/** The mirror's row in a stopped site's metadata (read-only). */
function mirrorRow(d: Ferryd, disk: string): { sync_cursor: number; sync_done: number } | null {
  try {
    const db = new Database(path.join(d.dataDir, 'ferry.db'), { readonly: true, fileMustExist: true });
    try {
      return (db.prepare('SELECT sync_cursor, sync_done FROM mirrors WHERE disk = ?').get(disk) as { sync_cursor: number; sync_done: number } | undefined) ?? null;
    } finally {
      db.close();
    }
  } catch {
    return null;
  }
}

/** An adopted disk on A: 256 MiB of non-zero data (a pattern per MiB), then 64 MiB of zeroes for the workload. */
async function dataDisk(s: Sites, work: string, name: string, seed: number): Promise<void> {
  const image = path.join(work, `${name}.img`);
  fillPattern(image, 0, DATA, seed);
  fs.truncateSync(image, SYNC_DISK);
  const r = await s.a.api('POST', '/v1/disks/adopt', { name, path: image });
  assert.equal(r.status, 201, JSON.stringify(r.body));
}

/** Polls A's mirror status until the sync has passed `bytes` (and is not done). */
async function waitSyncPast(s: Sites, disk: string, bytes: number): Promise<any> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const st = await mirrorStatus(s.a, disk);
    assert.equal(st.consistent, false, `the sync finished before the kill: ${JSON.stringify(st)}`);
    assert.equal(st.syncError, null, JSON.stringify(st));
    if (st.syncBytes >= bytes) return st;
    if (Date.now() > deadline) throw new Error(`the sync of ${disk} did not pass ${bytes} bytes in 120 s: ${JSON.stringify(st)}`);
    await sleep(25);
  }
}

/** One round of a mid-stream crash test, as the site that was killed recovers. */
interface CrashRound {
  i: number;
  /** The round's workload at A, running since startedAt, and its log. */
  w: Workload;
  log: string;
  /** check.py's state after the rounds before (null: this is the first). */
  stateIn: string | null;
  startedAt: number;
  /** How long the workload ran before the kill. */
  delay: number;
  /** A's mirror status just before the kill. */
  before: any;
  killedAt: number;
}

describe('remote mirrors and kill -9 of either site', () => {
  const cleanup = new Cleanup();
  let s: Sites;
  let work: string;

  before(async () => {
    requireTool('nbdkit');
    requireTool('qemu-img');
    s = await startSites(cleanup);
    stopSitesBounded(cleanup, s);
    work = fs.realpathSync(cleanup.dir('ferry-repl-crash-'));
  }, TEST);
  after(() => cleanup.run(), TEST);

  /**
   * A mid-stream crash test: a new disk at A mirrored to B, then `rounds` rounds. In each, the
   * workload writes to A, and after a random delay `victim` is killed; `recover` restarts it,
   * checks what its case is about and returns the round's workload summary; then every write A
   * acknowledged must be on A (check.py, its state carried from round to round) and A and B
   * must read the same. Returns each round's summary.
   */
  async function crashRounds(
    t: { diagnostic(m: string): void },
    disk: string,
    plan: { victim: 'a' | 'b'; stagingSize: string; rounds: number; workloadSeconds: number; delayMsMax: number },
    recover: (round: CrashRound, rand: () => number) => Promise<{ wr: WorkloadSummary; where: string }>,
  ): Promise<WorkloadSummary[]> {
    const rand = seededRng(seedFor(t));
    const replica = `${disk}-dr`;
    await s.a.createDisk(disk, STREAM_DISK);
    await cliJson(s.a, ['mirror', 'create', disk, '--to', `${s.peer}:${replica}`, '--staging', path.join(work, `${disk}.stg`), '--staging-size', plan.stagingSize]);
    await waitCaughtUp(s, disk, replica);
    let next = 1;
    let state: string | null = null;
    const summaries: WorkloadSummary[] = [];
    for (let i = 0; i < plan.rounds; i++) {
      const log = path.join(work, `${disk}-${i}.log`);
      const w = startWorkload(cleanup, { uri: s.a.uri(disk), log, firstCounter: next, blocks: STREAM_BLOCKS, seed: Math.floor(rand() * 2 ** 31), maxSeconds: plan.workloadSeconds });
      assert.ok(await w.connected, `workload ${i} did not connect`);
      const startedAt = Date.now();
      const delay = 500 + Math.floor(rand() * plan.delayMsMax);
      await sleep(delay);
      const before = await mirrorStatus(s.a, disk);
      assert.equal((await s[plan.victim].kill9()).signal, 'SIGKILL');
      const killedAt = Date.now();
      const { wr, where } = await recover({ i, log, w, stateIn: state, startedAt, delay, before, killedAt }, rand);

      // Nothing acknowledged is lost at A, and A and B converge.
      const stateOut = path.join(work, `${disk}-state-${i}`);
      assertCheck(await checkDisk(s.a.uri(disk), log, { blocks: STREAM_BLOCKS }, state, stateOut), wr, `${where}, site A`);
      await assertIdentical(s, disk, replica, where);
      state = stateOut;
      next = wr.next;
      summaries.push(wr);
    }
    return summaries;
  }

  it('site A killed mid-stream: nothing acknowledged lost, no resync, A and B converge', TEST, async (t) => {
    const rounds = await crashRounds(t, 'cra', { victim: 'a', stagingSize: '64M', rounds: 3, workloadSeconds: 60, delayMsMax: 2000 }, async ({ i, w, delay, before }) => {
      const wr = await w.done;
      assert.ok(wr.error, `workload ${i} finished before the kill (${JSON.stringify(wr)})`);
      const bBefore = await mirrorStatus(s.b, 'cra-dr');
      await s.a.start();
      const watchA = watchStatus(s.a, 'cra');
      const watchB = watchStatus(s.b, 'cra-dr');
      const where = `A crash ${i} (kill after ${delay} ms, B ${before.lagRecords} records behind, ${wr.acked}/${wr.issued} acknowledged)`;

      // The mirror carries on: consistent and in sync all along, no sync run (no full resync).
      const caughtUp = await explained(s, 'cra', 'cra-dr', waitCaughtUp(s, 'cra', 'cra-dr')).finally(() => Promise.all([watchA.stop(), watchB.stop()]));
      const [seenA, seenB] = [await watchA.stop(), await watchB.stop()];
      assert.ok(seenA.length > 0, `${where}: no status seen after the restart`);
      const bad = seenA.filter((a) => a.state !== 'in-sync' || a.consistent !== true || a.syncProgress !== 1);
      assert.deepEqual(bad, [], `${where}: A's mirror left the in-sync state after the restart (a resync)`);
      assert.ok(seenB.every((b) => b.consistent === true), `${where}: B's replica stopped being consistent: ${JSON.stringify(seenB.find((b) => !b.consistent))}`);
      const syncRuns = logLines(s.a).filter((l) => l.disk === 'cra' && /sync/.test(l.msg ?? '') && !/replica/.test(l.msg ?? ''));
      assert.deepEqual(syncRuns.map((l) => l.msg), [], `${where}: A ran a sync after the restart`);
      t.diagnostic(
        `${where}: B had made durable ${bBefore.appliedSeq + bBefore.lagRecords} / applied ${bBefore.appliedSeq} at the kill; ` +
          `A's mirror right after the restart: ${seenA[0]?.state}, link ${seenA[0]?.link?.state}, ${seenA[0]?.lagRecords} records behind; ` +
          `caught up (A applied ${caughtUp.a.appliedSeq}, B ${caughtUp.b.appliedSeq}); ${seenA.length} statuses seen, states ${[...new Set(seenA.map((x) => `${x.state}/${x.link?.state}`))].join(', ')}`,
      );
      return { wr, where };
    });
    const acked = rounds.reduce((n, wr) => n + wr.acked, 0);
    const resyncs = logLines(s.b).filter((l) => l.disk === 'cra-dr' && /resyncing/.test(l.msg ?? ''));
    assert.deepEqual(resyncs, [], 'B was never told to resync');
    t.diagnostic(`${acked} writes acknowledged over ${rounds.length} crashes of site A`);
    assert.ok(acked > 300, `only ${acked} writes acknowledged`);
  });

  it('site B killed mid-stream: A keeps acknowledging, reconnects by itself; B stays consistent; they converge', TEST, async (t) => {
    // A staging area that holds what A writes while B restarts: this test is about the crash, not a full staging area.
    const plan = { victim: 'b', stagingSize: '256M', rounds: 2, workloadSeconds: 15, delayMsMax: 1500 } as const;
    await crashRounds(t, 'crb', plan, async ({ i, log, w, stateIn, startedAt, delay, before, killedAt }, rand) => {
      const reconnectsBefore = before.link.reconnects as number;
      const writesBefore = (await s.a.api('GET', '/v1/disks/crb')).body.stats.writeOps as number;
      // A notices the link is gone and keeps acknowledging meanwhile.
      const down = await waitStatus(s.a, 'crb', 'the link to be down', (st) => st.link?.state !== 'connected', 30_000);
      await sleep(1000 + Math.floor(rand() * 1500));
      const writesDuring = (await s.a.api('GET', '/v1/disks/crb')).body.stats.writeOps - writesBefore;
      const lagDuring = (await mirrorStatus(s.a, 'crb')).lagRecords;
      // B's image as it recovered, before A's backlog arrives: the link stays cut until the snapshot is taken.
      s.proxy.cut();
      await s.b.start();
      const where = `B crash ${i} (kill after ${delay} ms, down ${((Date.now() - killedAt) / 1000).toFixed(1)} s)`;
      assert.ok(writesDuring > 0, `${where}: A acknowledged no write while B was down`);
      const snap = path.join(work, `crb-snap-${i}.img`);
      let snapped: Awaited<ReturnType<typeof snapshotReplica>>;
      try {
        snapped = await snapshotReplica(s, 'crb-dr', snap);
      } finally {
        s.proxy.restore();
      }
      const { paused, settledSeq, movedAfterPause } = snapped;
      assert.equal(paused.consistent, true, `${where}: B's replica is not consistent after its restart: ${JSON.stringify(paused)}`);
      if (movedAfterPause) t.diagnostic(`${where}: B's apply moved after the pause answered (${paused.appliedSeq} → ${settledSeq}) before it stood still`);

      // Checked now (the log already holds the issue line of every write the image can hold).
      const c = await checkImagePrefix(snap, log, { blocks: STREAM_BLOCKS }, stateIn, path.join(work, `crb-snap-state-${i}`));
      fs.rmSync(snap, { force: true });
      t.diagnostic(`${where}: B's image after its restart (applied ${settledSeq}) holds writes up to ${c.highestSurvivor} of this round; ${c.torn} torn, ${c.prefixViolations} prefix violations`);
      assert.equal(c.torn, 0, `${where}: B's image after restart has torn blocks: ${JSON.stringify(c.errors.slice(0, 5))}`);
      assert.equal(c.prefixViolations, 0, `${where}: B's image after restart is not a prefix of A's issue order: ${JSON.stringify(c.errors.slice(0, 5))}`);
      assert.deepEqual(c.errors, [], where);

      const wr = await workloadDone(s, w, 'crb', 'crb-dr', Math.max(5_000, startedAt + 15_000 - Date.now() + 30_000), where);
      assert.equal(wr.error, null, `${where}: the workload at A saw an error: ${JSON.stringify(wr)}`);
      assert.equal(wr.failed, 0, `${where}: writes failed at A`);
      const caught = await explained(s, 'crb', 'crb-dr', waitCaughtUp(s, 'crb', 'crb-dr', 120_000));
      assert.ok(caught.a.link.reconnects > reconnectsBefore, `${where}: A did not redial (${reconnectsBefore} → ${caught.a.link.reconnects})`);
      t.diagnostic(
        `${where}: link ${down.link.state} (${down.link.lastError ?? ''}); A acknowledged ${writesDuring} writes and was ${lagDuring} records ahead while B was down; ` +
          `${wr.acked}/${wr.issued} acknowledged in the round; A redialled ${caught.a.link.reconnects - reconnectsBefore} times; caught up with A at state ${caught.a.state}`,
      );
      return { wr, where };
    });
  });

  it('site A killed mid-sync: the sync resumes from its checkpoint, nothing acknowledged lost, identical', TEST, async (t) => {
    const rand = seededRng(seedFor(t));
    await dataDisk(s, work, 'syn', 31);
    s.proxy.bytesPerSec = SYNC_LINK_RATE;
    try {
      await cliJson(s.a, ['mirror', 'create', 'syn', '--to', `${s.peer}:syn-dr`, '--staging', path.join(work, 'syn.stg'), '--staging-size', '64M']);
      const log = path.join(work, 'syn-0.log');
      const w = startWorkload(cleanup, { uri: s.a.uri('syn'), log, firstCounter: 1, firstBlock: TAIL_FIRST_BLOCK, blocks: TAIL_BLOCKS, seed: Math.floor(rand() * 2 ** 31), maxSeconds: 60 });
      assert.ok(await w.connected, 'the workload did not connect');
      // Past the first durable checkpoint (every 64 MiB of the disk) but not done.
      const before = await waitSyncPast(s, 'syn', 96 * MiB + Math.floor(rand() * 32 * MiB));
      assert.equal((await s.a.kill9()).signal, 'SIGKILL');
      const wr = await w.done;
      assert.ok(wr.error, `the workload finished before the kill (${JSON.stringify(wr)})`);
      const row = mirrorRow(s.a, 'syn');
      await s.a.start();
      const resumed = await mirrorStatus(s.a, 'syn');
      const where = `killed at ${(before.syncBytes / MiB).toFixed(0)} MiB of the sync (${wr.acked}/${wr.issued} writes acknowledged)`;
      t.diagnostic(
        `${where}; durable sync cursor ${row ? `${(row.sync_cursor / MiB).toFixed(0)} MiB` : 'unreadable'}; right after the restart: ` +
          `${(resumed.syncBytes / MiB).toFixed(0)} MiB (${(resumed.syncProgress * 100).toFixed(1)}%, ${resumed.state}, consistent ${resumed.consistent})`,
      );
      assert.equal(resumed.consistent, false, 'a mirror killed mid-sync is not consistent after the restart');
      assert.ok(row, 'the mirror row is readable in A\'s metadata');
      assert.equal(row.sync_done, 0);
      assert.ok(row.sync_cursor <= before.syncBytes, 'the durable checkpoint is never ahead of the sync');
      assert.ok(resumed.syncBytes >= row.sync_cursor, `${where}: the sync restarts below its durable checkpoint (${resumed.syncBytes} < ${row.sync_cursor})`);
      if (row.sync_cursor > 0) assert.ok(resumed.syncProgress > 0, `${where}: the sync starts over instead of resuming: ${JSON.stringify(resumed)}`);

      // Nothing acknowledged is lost at A.
      assertCheck(await checkDisk(s.a.uri('syn'), log, { firstBlock: TAIL_FIRST_BLOCK, blocks: TAIL_BLOCKS }, null, path.join(work, 'syn-state-0')), wr, where);

      // The rest of the sync with writes again, then at full speed.
      const log1 = path.join(work, 'syn-1.log');
      const w1 = startWorkload(cleanup, { uri: s.a.uri('syn'), log: log1, firstCounter: wr.next, firstBlock: TAIL_FIRST_BLOCK, blocks: TAIL_BLOCKS, seed: Math.floor(rand() * 2 ** 31), maxSeconds: 4 });
      assert.ok(await w1.connected, 'the second workload did not connect');
      const seen: any[] = [];
      await waitStatus(s.a, 'syn', 'a little more of the sync', (st) => (seen.push(st), st.syncBytes > resumed.syncBytes || st.consistent), 60_000);
      s.proxy.bytesPerSec = 0;
      const wr1 = await w1.done;
      assert.equal(wr1.error, null, JSON.stringify(wr1));
      await explained(s, 'syn', 'syn-dr', waitStatus(s.a, 'syn', 'in sync', (st) => (seen.push(st), assert.equal(st.syncError, null, JSON.stringify(st)), st.consistent && st.state === 'in-sync'), 120_000));
      const low = Math.min(...seen.map((x) => x.syncBytes));
      const done = logLines(s.a).filter((l) => l.disk === 'syn' && l.msg === 'mirror sync complete');
      t.diagnostic(`after the restart: lowest sync position seen ${(low / MiB).toFixed(0)} MiB; sync runs completed: ${JSON.stringify(done.map((l) => ({ copiedBytes: l.copiedBytes, skippedBytes: l.skippedBytes, seconds: l.seconds })))}`);
      assert.ok(low >= (row.sync_cursor ?? 0), `the sync went back below its checkpoint (${low} < ${row.sync_cursor})`);
      assert.equal(done.length, 1, 'one sync completed since the restart');
      const caught = await explained(s, 'syn', 'syn-dr', waitCaughtUp(s, 'syn', 'syn-dr'));
      assert.equal(caught.b.consistent, true);
      assertCheck(await checkDisk(s.a.uri('syn'), log1, { firstBlock: TAIL_FIRST_BLOCK, blocks: TAIL_BLOCKS }, path.join(work, 'syn-state-0'), path.join(work, 'syn-state-1')), wr1, 'second workload');
      await assertIdentical(s, 'syn', 'syn-dr', 'after the resumed sync');
    } finally {
      s.proxy.bytesPerSec = 0;
    }
  });

  it('site B killed mid-sync: A keeps acknowledging, the sync completes once B is back, identical', TEST, async (t) => {
    const rand = seededRng(seedFor(t));
    await dataDisk(s, work, 'synb', 47);
    s.proxy.bytesPerSec = SYNC_LINK_RATE;
    try {
      // A staging area that holds what A writes while B restarts: this test is about the crash, not a full staging area.
      await cliJson(s.a, ['mirror', 'create', 'synb', '--to', `${s.peer}:synb-dr`, '--staging', path.join(work, 'synb.stg'), '--staging-size', '256M']);
      const log = path.join(work, 'synb.log');
      const w = startWorkload(cleanup, { uri: s.a.uri('synb'), log, firstCounter: 1, firstBlock: TAIL_FIRST_BLOCK, blocks: TAIL_BLOCKS, seed: Math.floor(rand() * 2 ** 31), maxSeconds: 12 });
      assert.ok(await w.connected, 'the workload did not connect');
      const startedAt = Date.now();
      const before = await waitSyncPast(s, 'synb', 64 * MiB + Math.floor(rand() * 64 * MiB));
      assert.equal((await s.b.kill9()).signal, 'SIGKILL');
      await waitStatus(s.a, 'synb', 'the link to be down', (st) => st.link?.state !== 'connected', 30_000);
      await sleep(1000 + Math.floor(rand() * 1000));
      const during = await mirrorStatus(s.a, 'synb');
      await s.b.start();
      const replica = await mirrorStatus(s.b, 'synb-dr');
      t.diagnostic(
        `killed B at ${(before.syncBytes / MiB).toFixed(0)} MiB of the sync; while B was down A's sync stood at ${(during.syncBytes / MiB).toFixed(0)} MiB (link ${during.link.state}); ` +
          `B's replica after its restart: ${replica.state}, consistent ${replica.consistent}`,
      );
      assert.equal(replica.role, 'replica');
      assert.equal(replica.consistent, false, 'a replica killed mid-sync is not consistent');
      s.proxy.bytesPerSec = 0;
      const wr = await workloadDone(s, w, 'synb', 'synb-dr', Math.max(5_000, startedAt + 12_000 - Date.now() + 30_000), 'B killed mid-sync');
      assert.equal(wr.error, null, `the workload at A saw an error: ${JSON.stringify(wr)}`);
      assert.equal(wr.failed, 0);
      const synced = await explained(s, 'synb', 'synb-dr', waitStatus(s.a, 'synb', 'in sync', (st) => (assert.equal(st.syncError, null, JSON.stringify(st)), st.consistent && st.state === 'in-sync'), 120_000));
      assert.equal(synced.syncProgress, 1);
      const caught = await explained(s, 'synb', 'synb-dr', waitCaughtUp(s, 'synb', 'synb-dr'));
      assert.equal(caught.b.consistent, true);
      t.diagnostic(`${wr.acked} writes acknowledged at A during the sync; A redialled ${caught.a.link.reconnects} times`);
      assertCheck(await checkDisk(s.a.uri('synb'), log, { firstBlock: TAIL_FIRST_BLOCK, blocks: TAIL_BLOCKS }, null, path.join(work, 'synb-state')), wr, 'site A');
      await assertIdentical(s, 'synb', 'synb-dr', 'after the sync');
    } finally {
      s.proxy.bytesPerSec = 0;
    }
  });
});
