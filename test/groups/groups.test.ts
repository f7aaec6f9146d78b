// Consistency groups (issue 16): several disks share one staging area, so their writes get one
// sequence; the group's local mirror holds a file per member, all at one point of that
// sequence. Members stay NBD exports of their own; membership changes online; every mirror
// operation acts on the group; refusals change nothing.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, type Ferryd } from '../harness.js';
import { qemuIoOk } from '../interop/clients.js';
import { Cleanup } from '../staging/helpers.js';
import { MiB, T, assertSameBytes, cliFails, cliJson, diskShow, mirrorStatus, stagingShow, waitDrained, waitInSync } from '../mirror/helpers.js';

/** Writes a pattern byte over [offset, offset+length) of a disk through NBD. */
function write(d: Ferryd, disk: string, pattern: number, offset: number, length: number): Promise<unknown> {
  return qemuIoOk(d.uri(disk), [`write -P ${pattern} ${offset} ${length}`]);
}

/** Reads back and checks a pattern through NBD. */
function readBack(d: Ferryd, disk: string, pattern: number, offset: number, length: number): Promise<unknown> {
  return qemuIoOk(d.uri(disk), [`read -P ${pattern} ${offset} ${length}`], ['-r']);
}

describe('consistency groups', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let work: string;

  before(async () => {
    requireTool('qemu-io');
    d = await cleanup.ferryd();
    work = fs.realpathSync(cleanup.dir('ferry-groups-'));
  }, T);
  after(() => cleanup.run(), T);

  it('members share one staging area and one sequence; the group mirror holds every member; membership changes online; swap, restart, delete', T, async () => {
    await d.createDisk('log', '64M');
    await d.createDisk('data', '96M');
    await d.createDisk('extra', '32M');
    const staging = path.join(work, 'g1.stg');
    const g = await cliJson(d, ['group', 'create', 'g1', '--disks', 'log,data', '--staging', staging, '--staging-size', '128M']);
    assert.deepEqual(g.members.map((m: any) => [m.disk, m.base, m.size]), [['log', 0, 64 * MiB], ['data', 64 * MiB, 96 * MiB]]);
    assert.equal(g.staging.path, staging);
    assert.equal((await diskShow(d, 'log')).group, 'g1');

    // Refusals change nothing.
    await cliFails(d, ['group', 'create', 'g2', '--disks', 'log', '--staging', path.join(work, 'x.stg'), '--staging-size', '64M'], 'DISK_IN_GROUP');
    await cliFails(d, ['group', 'create', 'log', '--disks', 'extra', '--staging', path.join(work, 'x.stg'), '--staging-size', '64M'], 'DISK_EXISTS');
    await cliFails(d, ['group', 'create', 'g2', '--disks', 'extra,nosuch', '--staging', path.join(work, 'x.stg'), '--staging-size', '64M'], 'DISK_NOT_FOUND');
    await cliFails(d, ['group', 'create', 'g2', '--disks', 'extra', '--staging', staging, '--staging-size', '64M'], 'PATH_IN_USE');
    assert.equal(fs.existsSync(path.join(work, 'x.stg')), false);
    assert.equal((await diskShow(d, 'extra')).group, undefined, 'a refused create leaves the disk as it was');
    await cliFails(d, ['staging', 'attach', 'log', '--path', path.join(work, 'y.stg'), '--size', '64M'], 'DISK_IN_GROUP');
    await cliFails(d, ['mirror', 'create', 'log', '--to', `local:${path.join(work, 'log-m.img')}`], 'DISK_IN_GROUP');
    await cliFails(d, ['disk', 'remove', 'data'], 'DISK_IN_GROUP');
    await cliFails(d, ['group', 'show', 'log'], 'GROUP_NOT_FOUND');
    await cliFails(d, ['disk', 'show', 'g1'], 'DISK_NOT_FOUND');
    const exports = (await d.api('GET', '/v1/disks')).body.map((x: any) => x.name);
    assert.ok(!exports.includes('g1'), 'a group is no disk of its own');

    // Writes to both members: one staging area, one sequence (each member's write advances it).
    const seq = async (): Promise<number> => (await stagingShow(d, 'g1')).writtenSeq;
    const seq0 = await seq();
    await write(d, 'log', 0x11, 0, MiB);
    const seq1 = await seq();
    await write(d, 'data', 0x22, 0, MiB);
    const seq2 = await seq();
    assert.ok(seq0 < seq1 && seq1 < seq2, `one sequence for both members: ${seq0} < ${seq1} < ${seq2}`);
    await write(d, 'data', 0x23, 95 * MiB, MiB); // the end of the larger member
    await readBack(d, 'log', 0x11, 0, MiB);
    await readBack(d, 'data', 0x22, 0, MiB);
    await readBack(d, 'data', 0x23, 95 * MiB, MiB);
    await readBack(d, 'log', 0, MiB, MiB);

    // The group's mirror: a file per member, in sync, byte-identical once drained.
    const mdir = path.join(work, 'mirror');
    fs.mkdirSync(mdir);
    await cliFails(d, ['mirror', 'create', '--group', 'g1', '--to', `local:${path.join(work, 'nodir')}`], 'PATH_NOT_FOUND');
    const m = await cliJson(d, ['mirror', 'create', '--group', 'g1', '--to', `local:${mdir}`, '--wait']);
    assert.equal(m.consistent, true, JSON.stringify(m));
    assert.deepEqual(m.members.map((x: any) => [x.disk, x.synced]), [['data', true], ['log', true]]);
    await write(d, 'log', 0x31, 2 * MiB, MiB);
    await write(d, 'data', 0x32, 3 * MiB, MiB);
    await waitDrained(d, 'g1');
    const logPath = (await diskShow(d, 'log')).path;
    const dataPath = (await diskShow(d, 'data')).path;
    await assertSameBytes(logPath, path.join(mdir, 'log.img'), 'member log and its mirror file');
    await assertSameBytes(dataPath, path.join(mdir, 'data.img'), 'member data and its mirror file');
    assert.equal(fs.statSync(path.join(mdir, 'data.img')).size, 96 * MiB);
    // verify compares the whole group online (every member, at one point).
    const v = await d.cli(['mirror', 'verify', 'g1', '--json'], { timeoutMs: 120_000 });
    assert.equal(v.code, 0, `${v.stdout}${v.stderr}`);
    assert.deepEqual(JSON.parse(v.stdout).differences, [], v.stdout);
    // A member's mirror file damaged behind Ferry's back: the difference is told in that member's terms.
    const victim = path.join(mdir, 'data.img');
    const fd = fs.openSync(victim, 'r+');
    const saved = Buffer.alloc(4096);
    fs.readSync(fd, saved, 0, 4096, 5 * MiB);
    fs.writeSync(fd, Buffer.alloc(4096, 0xee), 0, 4096, 5 * MiB);
    const bad = await d.cli(['mirror', 'verify', 'g1', '--json'], { timeoutMs: 120_000 });
    assert.equal(bad.code, 1, `${bad.stdout}${bad.stderr}`);
    const diffs = JSON.parse(bad.stdout).differences;
    assert.equal(diffs.length, 1, bad.stdout);
    assert.equal(diffs[0].member, 'data', bad.stdout);
    assert.ok(diffs[0].offset <= 5 * MiB && diffs[0].offset + diffs[0].length >= 5 * MiB + 4096 && diffs[0].offset + diffs[0].length <= 96 * MiB, bad.stdout);
    fs.writeSync(fd, saved, 0, 4096, 5 * MiB);
    fs.closeSync(fd);
    // `ferry status`: the group is a row of its own, its members name it, its mirror's problems are listed.
    await cliJson(d, ['mirror', 'pause', 'g1']);
    const st = await cliJson(d, ['status']);
    assert.deepEqual(st.disks.find((x: any) => x.name === 'g1')?.members, ['log', 'data'], JSON.stringify(st));
    assert.equal(st.disks.find((x: any) => x.name === 'log')?.group, 'g1');
    assert.ok(st.problems.includes('g1: mirror paused'), JSON.stringify(st.problems));
    // Each member's share of the mirror's lag: 5 records for log, 2 for data written while it is paused;
    // the shares add up to the group's lag, and the same after a restart (the journal's ledger rebuilt at open).
    const shares = async (): Promise<{ group: [number, number]; members: Record<string, [number, number]> }> => {
      const s = await mirrorStatus(d, 'g1');
      return { group: [s.lagRecords, s.lagBytes], members: Object.fromEntries(s.members.map((x: any) => [x.disk, [x.lagRecords, x.lagBytes]])) };
    };
    const lag0 = await shares();
    await qemuIoOk(d.uri('log'), [0, 1, 2, 3, 4].map((i) => `write -P 0x61 ${8 * MiB + i * 8192} 4k`));
    await qemuIoOk(d.uri('data'), [`write -P 0x62 ${9 * MiB} 64k`, `write -P 0x63 ${10 * MiB} 64k`]);
    const lag1 = await shares();
    assert.equal(lag1.members.log![0] - lag0.members.log![0], 5, JSON.stringify({ lag0, lag1 }));
    assert.equal(lag1.members.data![0] - lag0.members.data![0], 2, JSON.stringify({ lag0, lag1 }));
    assert.ok(lag1.members.data![1] - lag0.members.data![1] > 2 * 64 * 1024 && lag1.members.log![1] - lag0.members.log![1] > 5 * 4096, JSON.stringify({ lag0, lag1 }));
    const addUp = (x: typeof lag1, where: string): void => {
      const sum = (i: 0 | 1): number => Object.values(x.members).reduce((n, m) => n + m[i], 0);
      assert.deepEqual([sum(0), sum(1)], x.group, `${where}: the members' shares add up to the group's lag: ${JSON.stringify(x)}`);
    };
    addUp(lag1, 'paused');
    await d.restart();
    // The mirror resumes from its last checkpointed position: the same, or older (more behind).
    const lag2 = await shares();
    addUp(lag2, 'after a restart (the mirror still paused)');
    assert.ok(lag2.members.log![0] >= lag1.members.log![0] && lag2.members.data![0] >= lag1.members.data![0], JSON.stringify({ lag1, lag2 }));
    await cliJson(d, ['mirror', 'resume', 'g1']);
    await waitDrained(d, 'g1');
    assert.deepEqual(Object.values((await shares()).members), [[0, 0], [0, 0]], 'drained: no member behind');
    // The mirror's policies are the group's.
    assert.equal((await cliJson(d, ['mirror', 'set', 'g1', '--rpo', '30s'])).policy.rpoMs, 30_000);

    // A member added online is copied into the mirror; the others keep their place.
    await write(d, 'extra', 0x44, 0, MiB); // before it joins: copied by the sync
    const added = await cliJson(d, ['group', 'add', 'g1', 'extra']);
    assert.deepEqual(added.members.map((x: any) => [x.disk, x.base]), [['log', 0], ['data', 64 * MiB], ['extra', 192 * MiB]]);
    await write(d, 'extra', 0x45, MiB, MiB);
    await waitInSync(d, 'g1');
    await waitDrained(d, 'g1');
    await assertSameBytes((await diskShow(d, 'extra')).path, path.join(mdir, 'extra.img'), 'the added member and its mirror file');
    await readBack(d, 'extra', 0x44, 0, MiB);

    // A removed member keeps its data and is a disk of its own (its mirror file stays).
    await cliFails(d, ['group', 'remove', 'g1', 'nosuch'], 'BAD_REQUEST');
    const removed = await cliJson(d, ['group', 'remove', 'g1', 'data']);
    assert.deepEqual(removed.members.map((x: any) => x.disk), ['log', 'extra']);
    assert.equal((await diskShow(d, 'data')).group, undefined);
    await readBack(d, 'data', 0x32, 3 * MiB, MiB);
    await write(d, 'data', 0x55, 0, MiB); // served on its own now
    await readBack(d, 'data', 0x55, 0, MiB);
    assert.ok(fs.existsSync(path.join(mdir, 'data.img')));

    // Swap of the group's roles: every member's path and its mirror file's exchange at once.
    const beforeSwap = [(await diskShow(d, 'log')).path, (await diskShow(d, 'extra')).path];
    await cliJson(d, ['mirror', 'swap', 'g1']);
    assert.deepEqual([(await diskShow(d, 'log')).path, (await diskShow(d, 'extra')).path], [path.join(mdir, 'log.img'), path.join(mdir, 'extra.img')]);
    await write(d, 'log', 0x61, 5 * MiB, MiB);
    await waitDrained(d, 'g1');
    await assertSameBytes(path.join(mdir, 'log.img'), beforeSwap[0]!, 'after the swap, the old primary is the mirror');

    // A restart opens the group, its members and its mirror again.
    await d.restart();
    await readBack(d, 'log', 0x61, 5 * MiB, MiB);
    await readBack(d, 'extra', 0x45, MiB, MiB);
    await write(d, 'extra', 0x71, 2 * MiB, MiB);
    await waitInSync(d, 'g1');
    await waitDrained(d, 'g1');
    await assertSameBytes(path.join(mdir, 'extra.img'), beforeSwap[1]!, 'after a restart the mirror still follows');

    // Delete: refused with a mirror; after it, members are disks of their own with their data.
    await cliFails(d, ['group', 'delete', 'g1'], 'DISK_BUSY');
    await cliJson(d, ['mirror', 'remove', 'g1']);
    const deleted = await cliJson(d, ['group', 'delete', 'g1']);
    assert.deepEqual(deleted.members.map((x: any) => x.disk), ['log', 'extra']);
    assert.equal(fs.existsSync(staging), false, "the group's staging area file goes with it");
    await readBack(d, 'extra', 0x71, 2 * MiB, MiB);
    await readBack(d, 'log', 0x61, 5 * MiB, MiB);
    assert.deepEqual((await cliJson(d, ['group', 'list'])), []);
    await d.restart();
    await readBack(d, 'extra', 0x71, 2 * MiB, MiB);
  });
});
