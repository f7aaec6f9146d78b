// A consistency group mirrored to a paired site (issue 16): `mirror create --group G --to
// PEER:PREFIX` makes, at the peer, a group PREFIX+G whose members are new disks PREFIX+MEMBER
// at the same bases, fed by one stream of the group's one sequence. Site A is killed while the
// cross-disk causal workload runs (QD8 on each member) and B lags behind (a rate-limited
// link); the group is promoted at B: the union of B's member images is one causal cut of the
// group's acknowledged order, taken mid-stream, and every member is writable there. Before
// that, a test failover of the group at B, mid-stream: one export per member (EXPORT.MEMBER),
// together one causal cut, writable, ended while replication goes on.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Cleanup, waitFor } from '../staging/helpers.js';
import { spawn } from 'node:child_process';
import { requireTool, run as runCmd } from '../harness.js';
import { MiB, T, cliFails, cliJson, drOf, mirrorStatus, qemuIoOk, startSitesBothWays, waitCaughtUp, waitStatus, type Sites } from '../replication/helpers.js';
import { assertCausal, causalCheck, readCausalLog, startCausalWorkload } from './helpers.js';

const SIZE = 16 * MiB;
const BLOCKS = SIZE / 4096;

describe('a consistency group mirrored to another site', () => {
  const cleanup = new Cleanup();
  let s: Sites & { back: unknown };
  let work: string;

  before(async () => {
    s = await startSitesBothWays(cleanup);
    work = fs.realpathSync(cleanup.dir('ferry-group-remote-'));
  }, T);
  after(() => cleanup.run(), T);

  it('site A killed mid-stream, the group promoted at B: B holds one causal cut of the group, every member writable', T, async (t) => {
    const { a, b } = s;
    const disks = ['gr0', 'gr1'];
    for (const disk of disks) await a.createDisk(disk, SIZE);
    await cliJson(a, ['group', 'create', 'rg', '--disks', disks.join(','), '--staging', path.join(work, 'rg.stg'), '--staging-size', '256M']);
    await cliFails(a, ['mirror', 'create', '--group', 'rg', '--to', 'nosuch:b-'], 'PEER_NOT_FOUND');
    await cliFails(a, ['mirror', 'create', '--group', 'rg', '--to', `${s.peer}:bad/prefix`], 'INVALID_TARGET');
    const m = await cliJson(a, ['mirror', 'create', '--group', 'rg', '--to', `${s.peer}:b-`, '--wait'], 170_000);
    assert.equal(m.consistent, true, JSON.stringify(m));
    assert.deepEqual(m.members.map((x: any) => [x.disk, x.target]), [['gr0', `${s.peer}:b-gr0`], ['gr1', `${s.peer}:b-gr1`]]);
    // At B: a group of new disks at the same bases, held as the replica.
    const g = await cliJson(b, ['group', 'show', 'b-rg']);
    assert.deepEqual(g.members.map((x: any) => [x.disk, x.base, x.size]), [['b-gr0', 0, SIZE], ['b-gr1', 64 * MiB, SIZE]]);
    assert.equal((await mirrorStatus(b, 'b-rg')).role, 'replica');
    const refused = await qemuIoOk(b.uri('b-gr0'), ['write -P 1 0 4096']).then(() => 'taken', (e) => String(e));
    assert.notEqual(refused, 'taken', 'a member of the replica group refuses writes');
    await waitCaughtUp(s, 'rg', 'b-rg');
    s.proxy.bytesPerSec = 1_500_000;

    // The causal workload at A; the link is slow, so B lags; A is killed mid-stream.
    const log = path.join(work, 'remote.log');
    const seed = Math.floor(Math.random() * 2 ** 31);
    t.diagnostic(`seed ${seed}`);
    const w = startCausalWorkload(cleanup, disks.map((d) => a.uri(d)), log, { blocks: BLOCKS, seed, maxSeconds: 150, depth: 8 });
    assert.ok(await w.connected, 'the workload did not connect');
    await waitFor('2000 acknowledged writes', () => fs.existsSync(log) && readCausalLog(log).ackOrder.length >= 2000, 90_000);
    // A test failover of the group at B while the workload streams: one writable image per member, all at one point.
    const scratch = path.join(work, 'drill.scratch');
    await b.createDisk('x.b-gr1', MiB);
    await cliFails(b, ['mirror', 'test', 'b-rg', '--export', 'x', '--scratch', scratch, '--scratch-size', '64M'], 'EXPORT_EXISTS');
    assert.equal(fs.existsSync(scratch), false, 'a refused test creates nothing');
    const test = await cliJson(b, ['mirror', 'test', 'b-rg', '--export', 'drill', '--scratch', scratch, '--scratch-size', '256M']);
    assert.deepEqual(test.exports, ['drill.b-gr0', 'drill.b-gr1']);
    const drillCut = await causalCheck(disks.map((d) => b.uri(`drill.b-${d}`)), log, BLOCKS);
    t.diagnostic(`test image at B: ${JSON.stringify({ ...drillCut, errors: drillCut.errors.slice(0, 3), violations: drillCut.violations.slice(0, 3) })}`);
    assertCausal(drillCut, "the group's test failover image at B");
    assert.ok(drillCut.perDisk.every((x) => x.writtenBlocks > 0), 'the test image holds workload writes on both members');
    for (const d of disks) await qemuIoOk(b.uri(`drill.b-${d}`), ['write -P 9 0 4096']); // writable, never reaching the replica
    const ended = await cliJson(b, ['mirror', 'test-end', 'b-rg']);
    assert.equal(ended.export, 'drill');
    await waitFor('6000 acknowledged writes', () => fs.existsSync(log) && readCausalLog(log).ackOrder.length >= 6000, 90_000);
    await waitStatus(b, 'b-rg', 'B received part of the workload', (st) => st.appliedSeq > 0 && st.lagRecords >= 0);
    const lagAtKill = (await mirrorStatus(a, 'rg')).lagRecords;
    assert.equal((await a.kill9()).signal, 'SIGKILL');
    const run = await w.done;
    t.diagnostic(`A killed ${lagAtKill} records ahead of B; ${run.acked}/${run.issued} acknowledged`);
    assert.ok(lagAtKill > 0, 'B was behind when A died');

    // Promote the group at B: every record received applied, one point for both members.
    const p = await cliJson(b, ['mirror', 'promote', 'b-rg']);
    assert.equal(p.image, 'newest', JSON.stringify(p));
    const cut = await causalCheck(disks.map((d) => b.uri(`b-${d}`)), log, BLOCKS);
    t.diagnostic(`B after promote: ${JSON.stringify({ ...cut, errors: cut.errors.slice(0, 3), violations: cut.violations.slice(0, 3) })}`);
    assertCausal(cut, "the promoted group's members at B");
    assert.ok(cut.perDisk.every((x) => x.writtenBlocks > 0), 'both members hold workload writes');
    assert.ok(cut.ackedInCut < run.acked, `promoted mid-stream: B holds ${cut.ackedInCut} of ${run.acked} acknowledged writes`);
    // Writable at B now, each member.
    for (const d of disks) await qemuIoOk(b.uri(`b-${d}`), ['write -P 7 0 4096']);
    s.proxy.bytesPerSec = 0;

    // A comes back fenced; `mirror reconnect` makes A's group B's replica (the delta of both sides' changes).
    await a.start();
    await waitFor('A fenced', async () => (await drOf(a, 'rg')).state === 'fenced', 60_000);
    const rec = await cliJson(a, ['mirror', 'reconnect', 'rg', '--wait'], 170_000);
    t.diagnostic(`reconnect: ${JSON.stringify(rec)}`);
    await waitStatus(b, 'b-rg', 'B in sync with A', (x) => x.role === 'primary' && x.state === 'in-sync' && x.consistent && x.lagRecords === 0 && x.link?.state === 'connected', 120_000);
    await waitStatus(a, 'rg', 'A caught up', (x) => x.role === 'replica' && x.consistent && x.lagRecords === 0, 120_000);
    for (const d of disks) {
      const r = await runCmd(requireTool('qemu-img'), ['compare', '-f', 'raw', '-F', 'raw', a.uri(d), b.uri(`b-${d}`)], { timeoutMs: 120_000 });
      assert.equal(r.code, 0, `${d} at A and b-${d} at B after the reconnect: ${r.stdout}${r.stderr}`);
    }
  });
});

describe("a group's planned switchover and mirror removal", () => {
  const cleanup = new Cleanup();
  let s: Sites & { back: unknown };
  let work: string;

  before(async () => {
    s = await startSitesBothWays(cleanup);
    work = fs.realpathSync(cleanup.dir('ferry-group-switch-'));
  }, T);
  after(() => cleanup.run(), T);

  it('switchover A → B → A moves the whole group (no data copied), refused with attached clients unless forced; remove releases every member at B', T, async () => {
    const { a, b } = s;
    for (const disk of ['sw0', 'sw1']) await a.createDisk(disk, SIZE);
    await cliJson(a, ['group', 'create', 'sg', '--disks', 'sw0,sw1', '--staging', path.join(work, 'sg.stg'), '--staging-size', '128M']);
    await qemuIoOk(a.uri('sw0'), ['write -P 0x21 0 1M']);
    await qemuIoOk(a.uri('sw1'), ['write -P 0x22 1M 1M']);
    await cliJson(a, ['mirror', 'create', '--group', 'sg', '--to', s.peer, '--wait'], 170_000);
    await waitCaughtUp(s, 'sg', 'sg');
    // A client attached to a member counts as attached to the group.
    const client = spawn(requireTool('qemu-io'), ['-f', 'raw', a.uri('sw1')], { stdio: ['pipe', 'ignore', 'ignore'] });
    cleanup.defer(() => void client.kill('SIGKILL'));
    await waitFor('the client attached to sw1', async () => (await a.api('GET', '/v1/disks/sw1')).body.clients === 1);
    await cliFails(a, ['mirror', 'switchover', 'sg'], 'DISK_BUSY');
    const sw = await cliJson(a, ['mirror', 'switchover', 'sg', '--force']);
    assert.equal(sw.disconnected, 1, JSON.stringify(sw));
    // B is the primary now: its members take writes, A's are a replica's (read-only).
    assert.equal((await mirrorStatus(a, 'sg')).role, 'replica');
    await qemuIoOk(b.uri('sw0'), ['read -P 0x21 0 1M'], 120_000, true);
    await qemuIoOk(b.uri('sw1'), ['write -P 0x31 2M 1M']);
    assert.notEqual(await qemuIoOk(a.uri('sw1'), ['write -P 1 0 4096']).then(() => 'taken', (e) => String(e)), 'taken');
    await waitCaughtUp({ ...s, a: b, b: a }, 'sg', 'sg');
    await qemuIoOk(a.uri('sw1'), ['read -P 0x31 2M 1M'], 120_000, true);
    // And back, asked at the replica site.
    await cliJson(a, ['mirror', 'switchover', 'sg']);
    await qemuIoOk(a.uri('sw0'), ['write -P 0x41 3M 1M']);
    await waitCaughtUp(s, 'sg', 'sg');
    await qemuIoOk(b.uri('sw0'), ['read -P 0x41 3M 1M'], 120_000, true);
    // Removing the mirror releases the group at B: every member a writable disk there.
    await cliJson(a, ['mirror', 'remove', 'sg']);
    await waitFor('B released the group', async () => (await b.api('GET', '/v1/disks/sg/mirror')).status !== 200);
    for (const m of ['sw0', 'sw1']) await qemuIoOk(b.uri(m), ['write -P 0x51 4M 4096']);
    assert.equal((await cliJson(b, ['group', 'show', 'sg'])).members.length, 2);
  });
});
