// A staging area with two copies (--copy) on a real ferryd:
//  (a) a copy removed (rm) under a write workload (fio with inline crc32c verification,
//      plus the tagged workload.py): the next checkpoint notices, `staging show` reports
//      the copy failed, the clients see no error; `ferry staging repair` rebuilds it while
//      writes go on. Then the rebuilt copy alone must carry a kill -9: the original copy
//      is deleted before the restart and no acknowledged write may be missing.
//  (b) a copy corrupted while ferryd is down (random bytes over the live part of its
//      ring): recovery takes every record from the good copy and rewrites the bad one;
//      no acknowledged write is lost. Also with both copies corrupted in different places.
//  (c) both copies gone at start: the disk is unavailable with a clear error, not served
//      from its (stale) primary.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, type Ferryd } from '../harness.js';
import { CHECKPOINT_OFFSETS, HEADER_AREA_BYTES, decodeCheckpoint, type Checkpoint } from '../../src/journal/format.js';
import {
  Cleanup,
  MiB,
  PYTHON,
  SYSTEM_ENV,
  assertHealthy,
  checkDisk,
  cliFails,
  cliJson,
  lastJson,
  runBounded,
  sleep,
  stagingShow,
  startWorkload,
  waitFor,
  type Workload,
} from './helpers.js';

const DISK_BYTES = 64 * MiB;
const STAGING = '64M';

interface FioRun {
  stop(): Promise<any>;
  running(): boolean;
}

/**
 * fio's nbd engine writing random 4 KiB blocks of [offset, offset+size) until stopped
 * (SIGINT: fio then finishes gracefully), verifying what it wrote as it goes
 * (verify_backlog: every 256 writes are read back and checked; verify_fatal stops at the
 * first bad block). stop() asserts a clean exit and returns the job's JSON result.
 */
function startFio(cleanup: Cleanup, uri: string, offset: string, size: string): FioRun {
  const args = [
    '--name=mirrored',
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--rw=randwrite',
    '--bs=4k',
    '--iodepth=16',
    `--offset=${offset}`,
    `--size=${size}`,
    '--verify=crc32c',
    '--verify_backlog=256',
    '--verify_fatal=1',
    '--time_based',
    '--runtime=300',
    '--rate_iops=2000',
    '--output-format=json',
  ];
  const child = spawn(requireTool('fio'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  cleanup.track(child);
  let out = '';
  let err = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  return {
    running: () => child.exitCode === null && child.signalCode === null,
    async stop() {
      child.kill('SIGINT');
      const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
      const { code, signal } = await exited;
      clearTimeout(timer);
      const what = `fio ${args.join(' ')}\nexit ${code} ${signal ?? ''}\nstderr: ${err.slice(-4000)}\nstdout: ${out.slice(-2000)}`;
      // fio exits 128 when it stops on a signal, even after a clean run; the job's own error says how it went.
      assert.ok(code === 0 || code === 128, what);
      assert.doesNotMatch(err, /verify|bad magic|crc32c|error/i, what);
      const json = JSON.parse(out.slice(out.indexOf('{')));
      const job = json.jobs[0];
      assert.equal(job.error, 0, what);
      assert.ok(job.write.total_ios > 0, `fio wrote nothing: ${what}`);
      assert.ok(job.read.total_ios > 0, `fio verified nothing (no read-back): ${what}`);
      return job;
    },
  };
}

async function writeOps(d: Ferryd, disk: string): Promise<number> {
  const r = await d.api('GET', `/v1/disks/${disk}`);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body.stats?.writeOps ?? 0;
}

/** The daemon's log line for the staging area recovery of `disk` at its last start. */
function recoveryLine(d: Ferryd, disk: string): { records: number; bytes: number; end: any; rewritten: number } {
  const lines = (d.stdout + d.stderr)
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l))
    .filter((x) => x.disk === disk && /staging area recovered/.test(x.msg));
  assert.equal(lines.length, 1, `one recovery log line for ${disk}:\n${d.stdout}\n${d.stderr}`);
  return lines[0];
}

/** The newest valid checkpoint of a staging copy, read from its file. */
function readCheckpoint(file: string): Checkpoint {
  const head = Buffer.alloc(HEADER_AREA_BYTES);
  const fd = fs.openSync(file, 'r');
  try {
    fs.readSync(fd, head, 0, head.length, 0);
  } finally {
    fs.closeSync(fd);
  }
  const slots = CHECKPOINT_OFFSETS.map((o) => decodeCheckpoint(head.subarray(o))).filter((c): c is Checkpoint => typeof c !== 'string');
  assert.ok(slots.length > 0, `no valid checkpoint in ${file}`);
  return slots.reduce((a, b) => (b.generation > a.generation ? b : a));
}

/** Overwrites ring bytes [pos, pos+length) of a staging copy (wrapping at the ring's end) with random bytes. */
function scribble(file: string, pos: number, length: number): void {
  const ring = fs.statSync(file).size - HEADER_AREA_BYTES;
  const fd = fs.openSync(file, 'r+');
  try {
    let at = pos % ring;
    for (let left = length; left > 0; ) {
      const n = Math.min(left, ring - at, 4 * MiB);
      fs.writeSync(fd, crypto.randomBytes(n), 0, n, HEADER_AREA_BYTES + at);
      left -= n;
      at = (at + n) % ring;
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Stops a workload.py gracefully (SIGINT: drain, flush, disconnect); asserts it saw no error. */
async function stopWorkload(w: Workload): Promise<{ next: number; acked: number }> {
  w.child.kill('SIGINT');
  const s = await w.done;
  assert.equal(s.error, null, `workload error: ${JSON.stringify(s)}`);
  assert.equal(s.failed, 0, `workload had failed writes: ${JSON.stringify(s)}`);
  assert.ok(s.acked > 0 && s.acked === s.issued, JSON.stringify(s));
  return s;
}

describe('staging area with two copies (--copy)', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let devA: string;
  let devB: string;

  before(async () => {
    requireTool('fio');
    d = await cleanup.ferryd();
    // Two directories stand for the two devices the copies would live on.
    devA = cleanup.dir('ferry-dev-a-');
    devB = cleanup.dir('ferry-dev-b-');
  });
  after(() => cleanup.run());

  it('(a) a copy removed under writes: degraded and reported, no client error, repaired online; the rebuilt copy alone carries a kill -9', { timeout: 300_000 }, async (t) => {
    const A = path.join(devA, 'ma.stg');
    const B = path.join(devB, 'ma.stg-copy');
    const work = cleanup.dir('ferry-ma-');
    await d.createDisk('ma', DISK_BYTES);
    const s0 = await cliJson(d, ['staging', 'attach', 'ma', '--path', A, '--size', STAGING, '--copy', B]);
    assert.equal(s0.copyPath, B);
    assertHealthy(s0, 2);

    // fio on the first half of the disk, the tagged workload on the second half.
    const fio = startFio(cleanup, d.uri('ma'), '0', '32M');
    const log1 = path.join(work, 'run-1.log');
    const w1 = startWorkload(cleanup, { uri: d.uri('ma'), log: log1, firstCounter: 1, firstBlock: 8192, blocks: 8192, seed: 11, maxSeconds: 240, depth: 8 });
    assert.ok(await w1.connected, 'workload did not connect');
    const ops0 = await writeOps(d, 'ma');
    await waitFor('writes to flow', async () => (await writeOps(d, 'ma')) >= ops0 + 2000, 60_000);

    fs.rmSync(B);
    await waitFor('a checkpoint to notice the removed copy', async () => (await stagingShow(d, 'ma')).degraded === true, 30_000);
    const s1 = await stagingShow(d, 'ma');
    assert.deepEqual(
      s1.copies.map((c: any) => [c.path, c.healthy]),
      [
        [A, true],
        [B, false],
      ],
    );
    assert.match(s1.copies[1].problem, /removed|replaced/);
    assert.equal(s1.committerError, null);
    const human = await d.cli(['staging', 'show', 'ma']);
    assert.match(human.stdout, /DEGRADED/);
    assert.ok(fio.running() && w1.child.exitCode === null, 'the clients keep running on a degraded staging area');

    const opsBeforeRepair = await writeOps(d, 'ma');
    const repaired = await cliJson(d, ['staging', 'repair', 'ma'], 120_000);
    assertHealthy(repaired, 2);
    assert.equal(fs.statSync(B).size, 64 * MiB, 'the copy is a new preallocated file');
    assert.ok((await writeOps(d, 'ma')) > opsBeforeRepair, 'writes went on during the repair');
    const opsAfterRepair = await writeOps(d, 'ma');
    await waitFor('writes to go on after the repair', async () => (await writeOps(d, 'ma')) >= opsAfterRepair + 2000, 60_000);
    assert.ok(fio.running() && w1.child.exitCode === null, 'the clients never saw an error');

    const job = await fio.stop();
    const run1 = await stopWorkload(w1);
    t.diagnostic(`fio: ${job.write.total_ios} writes, ${job.read.total_ios} verified; workload: ${run1.acked} acknowledged writes`);
    const state1 = path.join(work, 'state-1');
    const c1 = await checkDisk(d.uri('ma'), log1, { firstBlock: 8192, blocks: 8192 }, null, state1);
    assert.deepEqual(c1.errors, [], JSON.stringify(c1));
    assert.equal(c1.acked, run1.acked);
    assertHealthy(await stagingShow(d, 'ma'), 2);

    // The rebuilt copy must be a real copy: crash with records pending, lose the original, recover from the rebuilt one.
    const log2 = path.join(work, 'run-2.log');
    const w2 = startWorkload(cleanup, { uri: d.uri('ma'), log: log2, firstCounter: run1.next, firstBlock: 8192, blocks: 8192, seed: 12, maxSeconds: 60 });
    assert.ok(await w2.connected);
    const ops2 = await writeOps(d, 'ma');
    await waitFor('the second run to write', async () => (await writeOps(d, 'ma')) >= ops2 + 1000, 60_000);
    await d.kill9();
    const run2 = await w2.done;
    assert.ok(run2.error, 'the workload was cut off by the kill');
    fs.rmSync(A);
    await d.start();
    const rec = recoveryLine(d, 'ma');
    t.diagnostic(`recovered from the rebuilt copy alone: ${JSON.stringify(rec)}`);
    const s2 = await stagingShow(d, 'ma');
    assert.equal(s2.degraded, true);
    assert.deepEqual(
      s2.copies.map((c: any) => [c.path, c.healthy]),
      [
        [A, false],
        [B, true],
      ],
    );
    assert.match(s2.copies[0].problem, /missing|unreadable|no such/i);
    const c2 = await checkDisk(d.uri('ma'), log2, { firstBlock: 8192, blocks: 8192 }, state1, path.join(work, 'state-2'));
    assert.deepEqual(c2.errors, [], JSON.stringify(c2));
    assert.equal(c2.acked, run2.acked);
    assertHealthy(await cliJson(d, ['staging', 'repair', 'ma'], 120_000), 2);
    assert.ok(fs.existsSync(A));
  });

  it('(b) a corrupted copy: recovery takes the records from the good copy; no acknowledged write lost', { timeout: 300_000 }, async (t) => {
    const A = path.join(devA, 'mb.stg');
    const B = path.join(devB, 'mb.stg-copy');
    const work = cleanup.dir('ferry-mb-');
    await d.createDisk('mb', DISK_BYTES);
    assertHealthy(await cliJson(d, ['staging', 'attach', 'mb', '--path', A, '--size', STAGING, '--copy', B]), 2);

    let state: string | null = null;
    let next = 1;
    const cases: Array<{ name: string; corrupt: (cp: Checkpoint) => void }> = [
      { name: 'the copy', corrupt: (cp) => scribble(B, cp.consumers[0]!.nextPos, 24 * MiB) },
      { name: 'the main path', corrupt: (cp) => scribble(A, cp.consumers[0]!.nextPos, 24 * MiB) },
      {
        name: 'both, in different places',
        // 192 KiB zones, alternately on each copy, 320 KiB apart: no record (at most 64 KiB here) touches zones of both.
        corrupt: (cp) => {
          const p = cp.consumers[0]!.nextPos;
          for (let k = 0; k < 48; k++) scribble(k % 2 ? A : B, p + k * 512 * 1024, 192 * 1024);
        },
      },
    ];
    for (const [i, cse] of cases.entries()) {
      const log = path.join(work, `run-${i}.log`);
      const w = startWorkload(cleanup, { uri: d.uri('mb'), log, firstCounter: next, blocks: 16384, seed: 100 + i, maxSeconds: 60 });
      assert.ok(await w.connected);
      const ops = await writeOps(d, 'mb');
      await waitFor('the workload to write', async () => (await writeOps(d, 'mb')) >= ops + 1000, 60_000);
      await sleep(50 + Math.floor(Math.random() * 400));
      await d.kill9();
      const run = await w.done;
      assert.ok(run.error, 'the workload was cut off by the kill');
      // Recovery reads the records after the newest checkpoint (of either copy: the kill may
      // fall between its two writes): that is where the damage goes.
      const cps = [readCheckpoint(A), readCheckpoint(B)];
      cse.corrupt(cps[0]!.generation >= cps[1]!.generation ? cps[0]! : cps[1]!);
      await d.start();

      const rec = recoveryLine(d, 'mb');
      t.diagnostic(`${cse.name} corrupted: ${JSON.stringify(rec)}`);
      assert.equal(rec.end.kind, 'clean', `the log ends cleanly: every record was found on some copy (${JSON.stringify(rec)})`);
      if (rec.records > 0) assert.ok(rec.rewritten > 0, `records were rewritten onto the corrupted copy: ${JSON.stringify(rec)}`);
      const s = await stagingShow(d, 'mb');
      assertHealthy(s, 2);
      const out = path.join(work, `state-${i}`);
      const c = await checkDisk(d.uri('mb'), log, { blocks: 16384 }, state, out);
      assert.deepEqual(c.errors, [], `${cse.name}: ${JSON.stringify(c)}`);
      assert.equal(c.acked, run.acked);
      state = out;
      next = run.next;
    }
  });

  it('(c) both copies gone at start: the disk is unavailable with a clear error, never served stale', { timeout: 120_000 }, async () => {
    const A = path.join(devA, 'mc.stg');
    const B = path.join(devB, 'mc.stg-copy');
    await d.createDisk('mc', 8 * MiB);
    assertHealthy(await cliJson(d, ['staging', 'attach', 'mc', '--path', A, '--size', STAGING, '--copy', B]), 2);
    const qemu = await runBounded(requireTool('qemu-io'), ['-f', 'raw', '-c', 'write -P 0x5c 0 1M', d.uri('mc')]);
    assert.equal(qemu.code, 0, qemu.stderr);
    await d.kill9();
    fs.rmSync(A);
    fs.rmSync(B);
    await d.start();

    const info = await d.api('GET', '/v1/disks/mc');
    assert.equal(info.status, 200, JSON.stringify(info.body));
    assert.equal(info.body.state, 'unavailable');
    assert.match(info.body.error, /staging area/);
    assert.ok(info.body.error.includes(A) && info.body.error.includes(B), `the error names both missing copies: ${info.body.error}`);
    const shown = await cliJson(d, ['disk', 'show', 'mc']);
    assert.equal(shown.state, 'unavailable');
    const listed: any[] = await cliJson(d, ['disk', 'list']);
    for (const x of listed) assert.equal(x.state, x.name === 'mc' ? 'unavailable' : 'online', JSON.stringify(x));
    await cliFails(d, ['staging', 'show', 'mc'], 'DISK_UNAVAILABLE');
    await cliFails(d, ['staging', 'repair', 'mc'], 'DISK_UNAVAILABLE');
    await cliFails(d, ['staging', 'detach', 'mc'], 'DISK_UNAVAILABLE');

    // Not served: an NBD client cannot open it (its primary alone may be stale).
    const r = await runBounded(PYTHON, ['-c', `import nbd, json\nh = nbd.NBD()\ntry:\n    h.connect_uri(${JSON.stringify(d.uri('mc'))})\n    print(json.dumps({"connected": True, "first": h.pread(16, 0).hex()}))\nexcept nbd.Error as e:\n    print(json.dumps({"connected": False, "error": str(e)}))`], { env: SYSTEM_ENV });
    assert.equal(r.code, 0, r.stderr);
    const res = lastJson(r.stdout);
    assert.equal(res.connected, false, `the disk was served: ${r.stdout}`);
    // The other disks are served as usual.
    const other = await runBounded(requireTool('qemu-io'), ['-f', 'raw', '-c', 'read 0 4k', d.uri('mb')]);
    assert.equal(other.code, 0, other.stderr);
    // Nothing was recreated behind the administrator's back.
    assert.ok(!fs.existsSync(A) && !fs.existsSync(B));
  });
});
