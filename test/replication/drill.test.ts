// Test failover (a DR drill) at the mirror site, with two real ferryd sites through the WAN
// proxy (src/control/drill-control.ts, src/replication/test-scratch.ts):
//  - while test/staging/workload.py writes tagged blocks at A, `ferry mirror test` at B serves
//    a writable image of the replica under a new export. The image, copied through NBD right
//    after the start, is a prefix of A's issue order holding no write issued after the start
//    returned (test/staging/check.py, prefix-only); copied again after replication has applied
//    many more records at B, the same bytes (the image stays fixed while the replica moves);
//    the test's writes (a region A never writes) read back from the export and never appear in
//    the replica's file; A's applied position advances during the test and its lag stays
//    bounded; both sites' status show the test (responses checked against the route schemas).
//    test-end disconnects a client still attached, the export is gone, the scratch file
//    deleted, and once caught up the replica reads identical to A (qemu-img compare);
//  - a scratch area of 2 MiB: the test's writes past it fail with ENOSPC; then A writes regions
//    whose old contents cannot be preserved: the image is lost (EIO, state `lost` with the
//    reason on both sites), replication goes on and the replica equals A;
//  - kill -9 of B during a test: at restart the test is ended (a log line, state `ended` on both
//    sites, scratch file deleted, export gone), the replica catches up and equals A; test-end
//    clears the note;
//  - a resync during a test (A's staging area overflows during a cut, bitmap fallback): the
//    test image reads the same before and during the resync (undo log's guard stacked on the
//    test's), test-end mid-resync, the resync completes and the replica equals A;
//  - a graceful restart of B during a test ends it the same way (its attached client dropped);
//  - `mirror remove` at A during a test: B ends the test first, then releases the disk, which
//    reads identical to A's;
//  - every refusal (not a replica, unknown disk, mid-resync, a test running, export name taken,
//    bad or too small scratch, test-end with no test) answers its registry code and changes
//    nothing (no export, no scratch file, no marker, status without a test); the mid-sync
//    replica is taken once in sync.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, run, waitFor } from '../harness.js';
import { Cleanup, HERE as STAGING_DIR, PYTHON, SYSTEM_ENV, describeRun, lastJson, runBounded, startWorkload, type CheckSummary } from '../staging/helpers.js';
import { assertSchema } from '../api/helpers.js';
import { MirrorSchema } from '../../src/api/routes.js';
import { TestEndSchema, TestFailoverDetailsSchema, TestFailoverSchema } from '../../src/api/drill-routes.js';
import type { TObject } from '@sinclair/typebox';
import { cliFails, cliJson, diskPath, MiB, mirrorStatus, qemuIo, qemuIoOk, startSites, stopSitesBounded, waitCaughtUp, waitStatus, type Sites } from './helpers.js';

const DISK = 64 * MiB;
/** The workload writes the first 48 MiB; the test writes the last 16 MiB, which A never writes. */
const WORKLOAD_BYTES = 48 * MiB;
const BLOCKS = WORKLOAD_BYTES / 4096;
const TEST_REGION = 56 * MiB;
const LONG = { timeout: 300_000 } as const;



async function copyExport(uri: string, file: string): Promise<void> {
  const r = await run(requireTool('qemu-img'), ['convert', '-f', 'raw', '-O', 'raw', uri, file], { timeoutMs: 120_000 });
  assert.equal(r.code, 0, `qemu-img convert ${uri}: ${r.stdout}${r.stderr}`);
}

/** check.py against an image file, served read-only by nbdkit; prefix-only: the image lags behind A's acknowledgements. */
async function checkImage(file: string, log: string, out: string): Promise<CheckSummary> {
  const script = `${PYTHON} ${path.join(STAGING_DIR, 'check.py')} "$uri" ${log} 0 ${BLOCKS} - ${out}`;
  const args = ['-r', '-U', '-', 'file', file, '--run', script];
  const r = await runBounded(requireTool('nbdkit'), args, { env: { ...SYSTEM_ENV, FERRY_CHECK_PREFIX_ONLY: '1' }, timeoutMs: 120_000 });
  assert.equal(r.code, 0, `checker failed:\n${describeRun('nbdkit', args, r)}`);
  return lastJson<CheckSummary>(r.stdout);
}

/** The highest write counter the workload's log shows issued so far. */
function issuedMax(log: string): number {
  let max = 0;
  for (const line of fs.readFileSync(log, 'utf8').split('\n')) {
    const p = line.split(' ');
    if (p[0] === 'I' && p.length >= 4) max = Math.max(max, Number(p[1]));
  }
  return max;
}

async function exportServed(uri: string): Promise<boolean> {
  const r = await run(requireTool('nbdinfo'), ['--size', uri], { timeoutMs: 30_000 });
  return r.code === 0;
}

/** The response matches the route's schema and carries no field it does not declare (see test/api/response-schemas.test.ts). */
function assertExactly(schema: TObject, value: Record<string, unknown>, what: string): void {
  assertSchema(schema, value, what);
  assert.deepEqual(Object.keys(value).filter((k) => !(k in schema.properties)), [], `${what}: fields the schema does not declare`);
}

/** An NBD client (libnbd in Python) that reads once, then stays attached until told to read again. */
function attachedClient(uri: string): { ready: Promise<void>; readAgain: () => Promise<string> } {
  const script = [
    'import nbd, sys',
    'h = nbd.NBD()',
    'h.connect_uri(sys.argv[1])',
    'h.pread(4096, 0)',
    'print("ready", flush=True)',
    'sys.stdin.readline()',
    'try:',
    '    h.pread(4096, 0)',
    '    print("still-connected", flush=True)',
    'except Exception as e:',
    '    print("disconnected", str(e).replace("\\n", " "), flush=True)',
  ].join('\n');
  const child = spawn(PYTHON, ['-c', script, uri], { env: SYSTEM_ENV, stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<void>((resolve) => child.on('close', () => resolve()));
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      if (out.includes('ready\n')) resolve();
    });
    void exited.then(() => reject(new Error(`the NBD client exited: ${out}${err}`)));
  });
  return {
    ready,
    async readAgain() {
      child.stdin!.end('\n');
      await exited;
      return out.replace(/^ready\n/, '');
    },
  };
}

async function compareSites(s: Sites, disk: string, replica: string): Promise<void> {
  await waitCaughtUp(s, disk, replica);
  const cmp = await run(requireTool('qemu-img'), ['compare', '-f', 'raw', '-F', 'raw', s.a.uri(disk), s.b.uri(replica)], { timeoutMs: 120_000 });
  assert.equal(cmp.code, 0, `qemu-img compare A:${disk} B:${replica}: ${cmp.stdout}${cmp.stderr}`);
}

describe('test failover (DR drill) at the mirror site', () => {
  const cleanup = new Cleanup();
  let s: Sites;
  let work: string;

  before(async () => {
    for (const tool of ['nbdkit', 'qemu-img', 'qemu-io', 'nbdinfo']) requireTool(tool);
    s = await startSites(cleanup);
    stopSitesBounded(cleanup, s);
    work = fs.realpathSync(cleanup.dir('ferry-drill-'));
    await s.a.createDisk('dr', DISK);
    await cliJson(s.a, ['mirror', 'create', 'dr', '--to', `${s.peer}:dr-r`, '--staging', path.join(work, 'dr.stg'), '--staging-size', '128M']);
    await waitCaughtUp(s, 'dr', 'dr-r');
  }, LONG);
  after(() => cleanup.run(), LONG);

  it('the test image is a fixed write-order prefix while replication goes on; its writes never reach the replica; test-end leaves the replica identical to A', LONG, async (t) => {
    const log = path.join(work, 'dr.log');
    const w = startWorkload(cleanup, { uri: s.a.uri('dr'), log, firstCounter: 1, blocks: BLOCKS, seed: 7, maxSeconds: 120 });
    assert.ok(await w.connected, 'the workload did not connect');
    await waitStatus(s.b, 'dr-r', 'B applied some of the workload', (st) => st.appliedSeq > 300);

    const scratch = path.join(work, 'dr.scratch');
    const bReceived = (await s.b.api('GET', '/v1/disks/dr-r/staging')).body.writtenSeq as number;
    const started = await cliJson(s.b, ['mirror', 'test', 'dr-r', '--export', 'dr-test', '--scratch', scratch, '--scratch-size', '256M']);
    const issuedAtStart = issuedMax(log);
    assert.equal(started.state, 'running');
    // The latest consistent point: at least every record B had received when the command came.
    assert.ok(started.seq >= bReceived, `the image ends at record ${started.seq}, before ${bReceived} that B had received`);
    assertExactly(TestFailoverDetailsSchema, started, 'POST .../mirror/test');
    assert.equal(started.export, 'dr-test');
    assert.ok(fs.existsSync(scratch), 'the scratch file exists');
    const snap1 = path.join(work, 'snap1.img');
    await copyExport(`nbd://127.0.0.1:${s.b.nbdPort}/dr-test`, snap1);
    const bAtSnap1 = (await mirrorStatus(s.b, 'dr-r')).appliedSeq as number;
    const aAtStart = await mirrorStatus(s.a, 'dr');
    t.diagnostic(`test started at record ${started.seq}; ${issuedAtStart} writes issued when the start returned; B applied ${bAtSnap1} after the first copy`);

    // Both sites show the test.
    const bSt = await mirrorStatus(s.b, 'dr-r');
    assert.equal(bSt.test?.export, 'dr-test');
    assert.equal(bSt.test?.state, 'running');
    const aSt = await waitStatus(s.a, 'dr', 'A learns of the test over the link', (st) => st.test?.export === 'dr-test');
    assert.equal(aSt.test.state, 'running');
    assert.equal(aSt.test.seq, started.seq);
    assertExactly(MirrorSchema, bSt, 'mirror status at B');
    assertExactly(TestFailoverSchema, bSt.test, 'the test in mirror status at B');
    assertExactly(MirrorSchema, aSt, 'mirror status at A');
    assertExactly(TestFailoverSchema, aSt.test, 'the test in mirror status at A');

    // The test writes a region A never writes; it reads back from the export, not from the replica.
    await qemuIoOk(`nbd://127.0.0.1:${s.b.nbdPort}/dr-test`, [`write -P 0x5a ${TEST_REGION} 1M`, `write -P 0x5b ${TEST_REGION + 2 * MiB + 512} 4k`, 'flush']);
    await qemuIoOk(`nbd://127.0.0.1:${s.b.nbdPort}/dr-test`, [`read -P 0x5a ${TEST_REGION} 1M`, `read -P 0x5b ${TEST_REGION + 2 * MiB + 512} 4k`, `read -P 0 ${TEST_REGION + 2 * MiB} 512`]);
    const replicaFile = await diskPath(s.b, 'dr-r');
    const fd = fs.openSync(replicaFile, 'r');
    const tail = Buffer.alloc(4 * MiB);
    fs.readSync(fd, tail, 0, tail.length, TEST_REGION);
    fs.closeSync(fd);
    assert.ok(tail.every((b) => b === 0), "the test's writes reached the replica's file");

    // Replication goes on: B applies many more records and A's applied position advances; lag bounded.
    const lagSeen: number[] = [];
    const moved = await waitStatus(s.b, 'dr-r', 'B applies more records during the test', (st) => st.appliedSeq > bAtSnap1 + 500, 120_000);
    const aMoved = await waitStatus(s.a, 'dr', "A's applied position advances during the test", (st) => {
      lagSeen.push(st.lagSeconds);
      return st.appliedSeq > aAtStart.appliedSeq + 500;
    });
    assert.ok(Math.max(...lagSeen) < 30, `A's lag during the test: up to ${Math.max(...lagSeen)} s`);
    const snap2 = path.join(work, 'snap2.img');
    await copyExport(`nbd://127.0.0.1:${s.b.nbdPort}/dr-test`, snap2);
    const head = (f: string): string => {
      const b = Buffer.alloc(WORKLOAD_BYTES);
      const h = fs.openSync(f, 'r');
      fs.readSync(h, b, 0, b.length, 0);
      fs.closeSync(h);
      return sha256FromBuffer(b);
    };
    assert.equal(head(snap2), head(snap1), 'the test image changed while replication applied records underneath');
    t.diagnostic(`during the test B applied ${moved.appliedSeq - bAtSnap1} more records, A's applied position moved ${aMoved.appliedSeq - aAtStart.appliedSeq}; A's lag up to ${Math.max(...lagSeen).toFixed(2)} s`);
    const during = await cliJson(s.b, ['mirror', 'test-status', 'dr-r']);
    assertExactly(TestFailoverDetailsSchema, during, 'GET .../mirror/test');
    // The human forms of test-status and mirror status say it too.
    const shown = await s.b.cli(['mirror', 'test-status', 'dr-r']);
    assert.equal(shown.code, 0, shown.stderr);
    assert.match(shown.stdout, /export:\s+dr-test/);
    assert.match(shown.stdout, /state:\s+running/);
    for (const site of [s.a, s.b]) {
      const table = await site.cli(['mirror', 'status']);
      assert.match(table.stdout, /test failover on export dr-test/, `mirror status: ${table.stdout}`);
    }
    const pauseLine = (s.b.stdout + s.b.stderr).split('\n').find((l) => l.includes('test failover started'));
    assert.ok(pauseLine, 'the start is logged');
    t.diagnostic(`start: apply paused ${JSON.parse(pauseLine).applyPausedMs.toFixed(1)} ms, reads held ${JSON.parse(pauseLine).readsHeldMs.toFixed(1)} ms`);
    assert.ok(during.preservedBytes > 0, 'replication overwrote regions: their old contents were preserved');
    t.diagnostic(`scratch: ${during.scratchUsedBytes} bytes used, ${during.preservedBytes} preserved, ${during.writtenBytes} written by the test`);

    w.child.kill('SIGINT');
    const summary = await w.done;
    assert.equal(summary.error, null);

    // The image: a prefix of A's issue order, no write issued after the start returned.
    const c = await checkImage(snap1, log, path.join(work, 'snap1.state'));
    t.diagnostic(`test image holds writes up to ${c.highestSurvivor} (${c.writtenBlocks} blocks written, ${c.torn} torn, ${c.prefixViolations} prefix violations)`);
    assert.equal(c.torn, 0, JSON.stringify(c.errors.slice(0, 3)));
    assert.equal(c.prefixViolations, 0, JSON.stringify(c.errors.slice(0, 3)));
    assert.deepEqual(c.errors, []);
    assert.ok(c.highestSurvivor > 0, 'the test image holds some of the workload');
    assert.ok(c.highestSurvivor <= issuedAtStart, `the test image holds write ${c.highestSurvivor}, issued after the test started (${issuedAtStart})`);

    // A client still attached at test-end is disconnected.
    const client = attachedClient(`nbd://127.0.0.1:${s.b.nbdPort}/dr-test`);
    await client.ready;
    const ended = await cliJson(s.b, ['mirror', 'test-end', 'dr-r']);
    assert.equal(ended.endedBy, 'test-end');
    assertExactly(TestEndSchema, ended, 'DELETE .../mirror/test');
    assert.equal(ended.clientsDisconnected, 1);
    assert.match(await client.readAgain(), /^disconnected/, 'the attached client was disconnected');
    assert.equal(ended.lostReason, null);
    assert.ok(!fs.existsSync(scratch), 'the scratch file is deleted');
    assert.equal(await exportServed(`nbd://127.0.0.1:${s.b.nbdPort}/dr-test`), false, 'the export is gone');
    assert.equal((await mirrorStatus(s.b, 'dr-r')).test, null);
    await waitStatus(s.a, 'dr', 'A learns the test ended', (st) => st.test === null);
    await compareSites(s, 'dr', 'dr-r');
  });

  it('a full scratch area fails the test\'s writes with ENOSPC, then loses the image (EIO) while replication goes on', LONG, async () => {
    const scratch = path.join(work, 'small.scratch');
    await cliJson(s.b, ['mirror', 'test', 'dr-r', '--export', 'dr-small', '--scratch', scratch, '--scratch-size', '2M']);
    const uri = `nbd://127.0.0.1:${s.b.nbdPort}/dr-small`;
    await qemuIoOk(uri, [`write -P 0x11 ${TEST_REGION} 1M`]);
    const full = await qemuIo(uri, [`write -P 0x12 ${TEST_REGION + 4 * MiB} 2M`]);
    assert.match(full.stdout + full.stderr, /No space left on device/, 'a test write past the scratch area fails with ENOSPC');
    await qemuIoOk(uri, [`read -P 0x11 ${TEST_REGION} 1M`]);
    // A rewrites 4 MiB the replica holds: their old contents cannot all be preserved.
    await qemuIoOk(s.a.uri('dr'), ['write -P 0x33 0 4M', 'flush']);
    const lost = await waitStatus(s.b, 'dr-r', 'the test image is lost', (st) => st.test?.state === 'lost');
    assert.match(lost.test.reason, /full/);
    const aLost = await waitStatus(s.a, 'dr', 'A learns the test image is lost', (st) => st.test?.state === 'lost');
    assert.match(aLost.test.reason, /full/);
    const r = await qemuIo(uri, [`read 0 4k`]);
    assert.match(r.stdout + r.stderr, /Input\/output error/, 'a lost image answers EIO');
    await compareSites(s, 'dr', 'dr-r'); // replication went on
    const ended = await cliJson(s.b, ['mirror', 'test-end', 'dr-r']);
    assert.match(ended.lostReason, /full/);
    assert.ok(!fs.existsSync(scratch));
  });

  it('kill -9 of the mirror site during a test: the test is ended at restart, the replica is right', LONG, async (t) => {
    const scratch = path.join(work, 'crash.scratch');
    await cliJson(s.b, ['mirror', 'test', 'dr-r', '--export', 'dr-crash', '--scratch', scratch, '--scratch-size', '64M']);
    await qemuIoOk(`nbd://127.0.0.1:${s.b.nbdPort}/dr-crash`, [`write -P 0x77 ${TEST_REGION} 2M`]);
    await qemuIoOk(s.a.uri('dr'), ['write -P 0x44 8M 8M']); // replication preserves under the test
    await waitStatus(s.b, 'dr-r', 'the scratch area preserved old contents', (st) => st.test?.scratchUsedBytes > 2 * MiB);
    assert.equal((await s.b.kill9()).signal, 'SIGKILL');
    await qemuIoOk(s.a.uri('dr'), ['write -P 0x45 20M 4M']); // A writes on while B is down
    await s.b.start();
    assert.match(s.b.stdout + s.b.stderr, /test failover ended at start/);
    assert.ok(!fs.existsSync(scratch), 'the scratch file is deleted at start');
    assert.equal(await exportServed(`nbd://127.0.0.1:${s.b.nbdPort}/dr-crash`), false, 'the export is not served after the restart');
    const st = await mirrorStatus(s.b, 'dr-r');
    assert.equal(st.test?.state, 'ended');
    assert.match(st.test.reason, /restarted/);
    await waitStatus(s.a, 'dr', 'A learns the test ended at the restart', (x) => x.test?.state === 'ended');
    await compareSites(s, 'dr', 'dr-r');
    const tail = Buffer.alloc(2 * MiB);
    const fd = fs.openSync(await diskPath(s.b, 'dr-r'), 'r');
    fs.readSync(fd, tail, 0, tail.length, TEST_REGION);
    fs.closeSync(fd);
    assert.ok(tail.every((b) => b === 0), "the test's writes reached the replica's file");
    const ended = await cliJson(s.b, ['mirror', 'test-end', 'dr-r']);
    assert.equal(ended.endedBy, 'restart');
    assert.equal((await mirrorStatus(s.b, 'dr-r')).test, null);
    await waitStatus(s.a, 'dr', 'A sees no test', (x) => x.test === null);
    t.diagnostic('B restarted during a test: ended at start, replica identical to A');
  });

  it('a graceful restart of the mirror site during a test (a client attached) ends it the same way', LONG, async () => {
    const scratch = path.join(work, 'stop.scratch');
    await cliJson(s.b, ['mirror', 'test', 'dr-r', '--export', 'dr-stop', '--scratch', scratch, '--scratch-size', '16M']);
    const client = attachedClient(`nbd://127.0.0.1:${s.b.nbdPort}/dr-stop`);
    await client.ready;
    await s.b.restart();
    assert.match(await client.readAgain(), /^disconnected/);
    assert.match(s.b.stdout + s.b.stderr, /test failover ended at start/);
    assert.ok(!fs.existsSync(scratch), 'the scratch file is deleted at start');
    assert.equal((await mirrorStatus(s.b, 'dr-r')).test?.state, 'ended');
    assert.equal((await cliJson(s.b, ['mirror', 'test-end', 'dr-r'])).endedBy, 'restart');
    await compareSites(s, 'dr', 'dr-r');
  });

  it('a release by the primary site (mirror remove) ends a running test first; the disk it leaves is A\'s', LONG, async () => {
    await s.a.createDisk('rel', 16 * MiB);
    await qemuIoOk(s.a.uri('rel'), ['write -P 0x61 0 16M']);
    await cliJson(s.a, ['mirror', 'create', 'rel', '--to', `${s.peer}:rel-r`, '--staging', path.join(work, 'rel.stg'), '--staging-size', '64M']);
    await waitCaughtUp(s, 'rel', 'rel-r');
    const scratch = path.join(work, 'rel.scratch');
    await cliJson(s.b, ['mirror', 'test', 'rel-r', '--export', 'rel-test', '--scratch', scratch, '--scratch-size', '8M']);
    await qemuIoOk(`nbd://127.0.0.1:${s.b.nbdPort}/rel-test`, ['write -P 0x62 0 1M']);
    await qemuIoOk(s.a.uri('rel'), ['write -P 0x63 4M 1M', 'flush']);
    await cliJson(s.a, ['mirror', 'remove', 'rel']);
    assert.match(s.b.stdout + s.b.stderr, /its test failover ends first/);
    assert.ok(!fs.existsSync(scratch), 'the scratch file is deleted');
    assert.equal(await exportServed(`nbd://127.0.0.1:${s.b.nbdPort}/rel-test`), false, 'the export is gone');
    assert.equal((await s.b.api('GET', '/v1/disks/rel-r/mirror')).status, 409, 'rel-r is no replica any more');
    const cmp = await run(requireTool('qemu-img'), ['compare', '-f', 'raw', '-F', 'raw', s.a.uri('rel'), s.b.uri('rel-r')], { timeoutMs: 120_000 });
    assert.equal(cmp.code, 0, `the released disk differs from A's: ${cmp.stdout}${cmp.stderr}`);
  });

  it('a resync during a test (bitmap fallback at A): the test image stays fixed under the undo log; test-end mid-resync; the replica converges', LONG, async (t) => {
    const size = 128 * MiB;
    await s.a.createDisk('rs', size);
    await cliJson(s.a, ['mirror', 'create', 'rs', '--to', `${s.peer}:rs-r`, '--staging', path.join(work, 'rs.stg'), '--staging-size', '64M', '--on-full', 'bitmap', '--compress', 'none']);
    await qemuIoOk(s.a.uri('rs'), ['write -P 0x11 0 128M']);
    await waitCaughtUp(s, 'rs', 'rs-r');
    const scratch = path.join(work, 'rs.scratch');
    await cliJson(s.b, ['mirror', 'test', 'rs-r', '--export', 'rs-test', '--scratch', scratch, '--scratch-size', '160M']);
    const uri = `nbd://127.0.0.1:${s.b.nbdPort}/rs-test`;
    await qemuIoOk(uri, ['write -P 0x5a 127M 1M']);
    const img1 = path.join(work, 'rs1.img');
    await copyExport(uri, img1);
    // Cut the link, overflow A's staging area: A falls back to its bitmap, then resyncs B.
    s.proxy.cut();
    await qemuIoOk(s.a.uri('rs'), Array.from({ length: 12 }, (_, i) => `write -P 0x22 ${i * 8}M 8M`));
    await waitStatus(s.a, 'rs', "state 'bitmap'", (st) => st.state === 'bitmap');
    s.proxy.bytesPerSec = 8 * MiB;
    s.proxy.restore();
    try {
      const mid = await waitStatus(s.b, 'rs-r', 'a resync with its undo log', (x) => x.fallback !== null && x.consistent === false, 60_000);
      assert.equal(mid.test?.state, 'running', 'the test runs on through the resync');
      const img2 = path.join(work, 'rs2.img');
      await copyExport(uri, img2);
      assert.equal(sha256FromBuffer(fs.readFileSync(img2)), sha256FromBuffer(fs.readFileSync(img1)), 'the test image changed during the resync');
      const stillResyncing = (await mirrorStatus(s.b, 'rs-r')).consistent === false;
      const ended = await cliJson(s.b, ['mirror', 'test-end', 'rs-r']);
      t.diagnostic(`test-end ${stillResyncing ? 'mid-resync' : 'after the resync'}: ${ended.preservedBytes} bytes preserved, undo log ${mid.fallback.undoBytes}+ bytes`);
      assert.equal(ended.lostReason, null);
      assert.ok(!fs.existsSync(scratch));
    } finally {
      s.proxy.bytesPerSec = 0;
    }
    await compareSites(s, 'rs', 'rs-r');
    const after = await mirrorStatus(s.b, 'rs-r');
    assert.equal(after.fallback, null, 'the undo log is gone once the resync completed');
    assert.equal(after.test, null);
  });

  it('refusals answer registry codes and change nothing', LONG, async () => {
    const scratch = path.join(work, 'r.scratch');
    const nothingChanged = async (what: string): Promise<void> => {
      assert.ok(!fs.existsSync(scratch), `${what}: a scratch file was created`);
      assert.equal((await mirrorStatus(s.b, 'dr-r')).test, null, `${what}: status shows a test`);
      assert.deepEqual(fs.existsSync(path.join(s.b.dataDir, 'drills')) ? fs.readdirSync(path.join(s.b.dataDir, 'drills')) : [], [], `${what}: a marker was left`);
      assert.equal(await exportServed(`nbd://127.0.0.1:${s.b.nbdPort}/r-test`), false, `${what}: an export is served`);
    };
    const args = (disk: string, extra: string[] = []): string[] => ['mirror', 'test', disk, '--export', 'r-test', '--scratch', scratch, '--scratch-size', '16M', ...extra];
    await s.b.createDisk('plain', 8 * MiB);
    const cases: Array<[string, string[], string, Sites['a']?]> = [
      ['the primary, at site A', args('dr'), 'NO_MIRROR', s.a],
      ['a disk that is no replica', args('plain'), 'NO_MIRROR'],
      ['an unknown disk', args('nosuch'), 'DISK_NOT_FOUND'],
      ['an export named like a disk', ['mirror', 'test', 'dr-r', '--export', 'plain', '--scratch', scratch, '--scratch-size', '16M'], 'EXPORT_EXISTS'],
      ['an invalid export name', ['mirror', 'test', 'dr-r', '--export', '../x', '--scratch', scratch, '--scratch-size', '16M'], 'INVALID_NAME'],
      ['a relative scratch path', ['mirror', 'test', 'dr-r', '--export', 'r-test', '--scratch', 'rel.scratch', '--scratch-size', '16M'], 'INVALID_PATH'],
      ['a scratch path in a missing directory', ['mirror', 'test', 'dr-r', '--export', 'r-test', '--scratch', path.join(work, 'nodir', 'x'), '--scratch-size', '16M'], 'PATH_NOT_FOUND'],
      ['a scratch path in the data directory', ['mirror', 'test', 'dr-r', '--export', 'r-test', '--scratch', path.join(s.b.dataDir, 'x.scratch'), '--scratch-size', '16M'], 'INVALID_PATH'],
      ['a scratch area under 1 MiB', ['mirror', 'test', 'dr-r', '--export', 'r-test', '--scratch', scratch, '--scratch-size', '512K'], 'SCRATCH_TOO_SMALL'],
      ['a scratch area larger than its file system', ['mirror', 'test', 'dr-r', '--export', 'r-test', '--scratch', scratch, '--scratch-size', '1024T'], 'SCRATCH_TOO_SMALL'],
      ['a bad scratch size', ['mirror', 'test', 'dr-r', '--export', 'r-test', '--scratch', scratch, '--scratch-size', 'lots'], 'INVALID_SIZE'],
      ['test-end with no test', ['mirror', 'test-end', 'dr-r'], 'NO_TEST'],
    ];
    for (const [what, argv, code, site] of cases) {
      const msg = await cliFails(site ?? s.b, argv, code);
      assert.ok(msg.length > 10, what);
      await nothingChanged(what);
    }
    // An existing file as the scratch path: Ferry only creates its own.
    fs.writeFileSync(scratch, 'someone else\n');
    await cliFails(s.b, args('dr-r'), 'PATH_IN_USE');
    assert.equal(fs.readFileSync(scratch, 'utf8'), 'someone else\n');
    fs.rmSync(scratch);
    await nothingChanged('an existing scratch file');

    // A test already running.
    const other = path.join(work, 'running.scratch');
    await cliJson(s.b, ['mirror', 'test', 'dr-r', '--export', 'run-test', '--scratch', other, '--scratch-size', '16M']);
    await cliFails(s.b, args('dr-r'), 'TEST_RUNNING');
    // Its export name is taken for another replica's test (rs-r, from the resync test above).
    await cliFails(s.b, ['mirror', 'test', 'rs-r', '--export', 'run-test', '--scratch', scratch, '--scratch-size', '16M'], 'EXPORT_EXISTS');
    assert.equal((await mirrorStatus(s.b, 'rs-r')).test, null);
    assert.ok(!fs.existsSync(scratch));
    assert.equal(await exportServed(`nbd://127.0.0.1:${s.b.nbdPort}/r-test`), false);
    assert.equal((await mirrorStatus(s.b, 'dr-r')).test.export, 'run-test');
    // While it runs, its scratch file is a path in use and its export name no disk's name.
    const disksBefore = (await s.b.api('GET', '/v1/disks')).body.length;
    assert.match(await cliFails(s.b, ['disk', 'adopt', 'stolen', '--path', other], 'PATH_IN_USE'), /scratch area of the test failover of disk 'dr-r'/);
    assert.match(await cliFails(s.b, ['disk', 'create', 'run-test', '--size', '8M'], 'EXPORT_EXISTS'), /test failover of disk 'dr-r'/);
    assert.equal((await s.b.api('GET', '/v1/disks')).body.length, disksBefore, 'no disk was created');
    await cliJson(s.b, ['mirror', 'test-end', 'dr-r']);
    await nothingChanged('after ending the running test');

    // Mid-sync (its first sync, held open by the mirror's rate limit): not consistent, and the refusal says so.
    // (A rate that drains the chunks in flight within seconds: a stop waits for them.)
    await s.a.createDisk('slow', 64 * MiB);
    await qemuIoOk(s.a.uri('slow'), ['write -P 0x21 0 64M']);
    await cliJson(s.a, ['mirror', 'create', 'slow', '--to', `${s.peer}:slow-r`, '--staging', path.join(work, 'slow.stg'), '--staging-size', '64M', '--bandwidth', '4M', '--compress', 'none']);
    await waitFor('the replica slow-r exists at B', async () => (await s.b.api('GET', '/v1/disks/slow-r/mirror')).status === 200, 60_000);
    const msg = await cliFails(s.b, args('slow-r'), 'MIRROR_NOT_IN_SYNC');
    assert.match(msg, /not consistent/);
    assert.equal((await mirrorStatus(s.b, 'slow-r')).consistent, false, 'the refusal came while the replica was mid-sync');
    await nothingChanged('a replica mid-sync');
    // Once in sync, the same request is taken.
    await waitCaughtUp(s, 'slow', 'slow-r');
    await cliJson(s.b, args('slow-r'));
    await qemuIoOk(`nbd://127.0.0.1:${s.b.nbdPort}/r-test`, ['read -P 0x21 0 64M']);
    await cliJson(s.b, ['mirror', 'test-end', 'slow-r']);
    await nothingChanged('after a test of slow-r');
  });
});

function sha256FromBuffer(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}
