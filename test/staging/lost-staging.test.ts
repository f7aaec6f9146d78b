// A single-copy staging area whose only file is deleted (issue 12, "a way out of every
// failure state"). Running: the staging area is lost at its next checkpoint; the status
// says so and points at `staging detach --force` (not `staging repair`, which cannot
// rebuild from nothing and is refused creating nothing); a plain detach is refused; the
// forced detach serves the disk without the staging area and reports how many acknowledged
// writes were not on the disk. After a restart (the disk unavailable: its staging area is
// gone) the forced detach brings the disk back, and `disk remove` removes such a disk.
// Every refusal creates no file. The data acknowledged and applied before the loss reads back.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, type Ferryd } from '../harness.js';
import { qemuIoOk } from '../interop/clients.js';
import { Cleanup, MiB, assertFileBytes, cliFails, cliJson, stagingShow, waitFor } from './helpers.js';

const T = { timeout: 300_000 };

describe('a single-copy staging area whose file is deleted', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let work: string;

  before(async () => {
    requireTool('qemu-io');
    d = await cleanup.ferryd();
    work = fs.realpathSync(cleanup.dir('ferry-lost-staging-'));
  }, T);
  after(() => cleanup.run(), T);

  /** A disk with a staging area, 4 MiB of 0x5a written and applied to the disk; returns the staging file. */
  async function stagedDisk(name: string): Promise<string> {
    await d.createDisk(name, 32 * MiB);
    const stg = path.join(work, `${name}.stg`);
    await cliJson(d, ['staging', 'attach', name, '--path', stg, '--size', '64M']);
    await qemuIoOk(d.uri(name), ['write -P 0x5a 0 4M', 'flush']);
    await waitFor(`${name}: every record on the disk`, async () => (await stagingShow(d, name)).unappliedRecords === 0);
    return stg;
  }

  it('while running: the status points at detach --force; repair and detach are refused creating nothing; detach --force brings the disk back', T, async (t) => {
    const stg = await stagedDisk('lost');
    const stg3 = await stagedDisk('lost3');
    fs.rmSync(stg);
    fs.rmSync(stg3);
    // A write after the deletion is acknowledged (the open file still takes it) and applied; the
    // loss is noticed at the committer's next checkpoint (at most 30 s after the previous one).
    await qemuIoOk(d.uri('lost'), ['write -P 0x6b 8M 1M', 'flush']);
    await qemuIoOk(d.uri('lost3'), ['write -P 0x6b 8M 1M', 'flush']);
    await waitFor('the staging areas to be reported lost', async () => (await stagingShow(d, 'lost')).failed === true && (await stagingShow(d, 'lost3')).failed === true, 60_000);
    // A disk whose staging area is lost is removed as it is (its file kept: no --purge).
    const file3 = (await cliJson(d, ['disk', 'show', 'lost3'])).path;
    await cliJson(d, ['disk', 'remove', 'lost3']);
    await cliFails(d, ['disk', 'show', 'lost3'], 'DISK_NOT_FOUND');
    assertFileBytes(file3, 0, 4 * MiB, 0x5a, 'the removed disk file');
    assertFileBytes(file3, 8 * MiB, MiB, 0x6b, 'the removed disk file');
    const s = await stagingShow(d, 'lost');
    assert.equal(s.copies[0].healthy, false);
    assert.equal(s.unappliedRecords, 0, 'every acknowledged write was applied before the loss');
    const shown = await d.cli(['staging', 'show', 'lost']);
    assert.match(shown.stdout, /staging detach lost --force/, shown.stdout);
    assert.doesNotMatch(shown.stdout, /staging repair/, 'the advice is what works');

    const repairMsg = await cliFails(d, ['staging', 'repair', 'lost'], 'STAGING_FAILED');
    assert.match(repairMsg, /detach lost --force/);
    assert.equal(fs.existsSync(stg), false, 'a refused repair creates no file');
    const detachMsg = await cliFails(d, ['staging', 'detach', 'lost'], 'STAGING_FAILED');
    assert.match(detachMsg, /--force/);
    assert.equal(fs.existsSync(stg), false);

    const r = await cliJson(d, ['staging', 'detach', 'lost', '--force']);
    t.diagnostic(`detach --force: ${r.message}`);
    assert.equal(r.unappliedRecords, 0);
    assert.match(r.message, /nothing is lost/);
    assert.equal((await cliJson(d, ['disk', 'show', 'lost'])).state, 'online');
    await cliFails(d, ['staging', 'show', 'lost'], 'NO_STAGING');
    await qemuIoOk(d.uri('lost'), ['read -P 0x5a 0 4M', 'read -P 0x6b 8M 1M', 'write -P 0x7c 12M 1M', 'read -P 0x7c 12M 1M']);
    // Unstaged from now on, also after a restart.
    await d.restart();
    assert.equal((await cliJson(d, ['disk', 'show', 'lost'])).state, 'online');
    await qemuIoOk(d.uri('lost'), ['read -P 0x5a 0 4M', 'read -P 0x6b 8M 1M', 'read -P 0x7c 12M 1M']);
    const file = (await cliJson(d, ['disk', 'show', 'lost'])).path;
    assertFileBytes(file, 0, 4 * MiB, 0x5a, 'the disk file');
    assertFileBytes(file, 8 * MiB, MiB, 0x6b, 'the disk file (written after the deletion)');
    // A healthy staging area is never discarded by force.
    const stg2 = path.join(work, 'lost-2.stg');
    await cliJson(d, ['staging', 'attach', 'lost', '--path', stg2, '--size', '64M']);
    await cliFails(d, ['staging', 'detach', 'lost', '--force'], 'BAD_REQUEST');
    assert.equal((await stagingShow(d, 'lost')).failed, false);
    await cliJson(d, ['staging', 'detach', 'lost']);
    assert.equal(fs.existsSync(stg2), false);
  });

  it('after a restart: the disk is unavailable with advice; repair is refused creating nothing; detach --force brings it back', T, async () => {
    const stg = await stagedDisk('gone');
    const stgKeep = await stagedDisk('gone2');
    fs.rmSync(stg);
    fs.rmSync(stgKeep);
    await d.kill9();
    await d.start();
    const disk = await cliJson(d, ['disk', 'show', 'gone']);
    assert.equal(disk.state, 'unavailable');
    assert.match(disk.error, /staging detach gone --force/, disk.error);
    const repairMsg = await cliFails(d, ['staging', 'repair', 'gone'], 'DISK_UNAVAILABLE');
    assert.match(repairMsg, /--force/);
    assert.equal(fs.existsSync(stg), false, 'a refused repair creates no file');

    const r = await cliJson(d, ['staging', 'detach', 'gone', '--force']);
    assert.equal(r.unappliedRecords, null, 'the staging area could not be read to count');
    assert.match(r.message, /lost/);
    assert.equal((await cliJson(d, ['disk', 'show', 'gone'])).state, 'online');
    await qemuIoOk(d.uri('gone'), ['read -P 0x5a 0 4M', 'write -P 0x6b 8M 1M', 'read -P 0x6b 8M 1M']);

    // The other one is removed as it is (its file kept: no --purge).
    const file2 = (await cliJson(d, ['disk', 'show', 'gone2'])).path;
    await cliJson(d, ['disk', 'remove', 'gone2']);
    await cliFails(d, ['disk', 'show', 'gone2'], 'DISK_NOT_FOUND');
    assertFileBytes(file2, 0, 4 * MiB, 0x5a, 'the removed disk file');
    assert.equal(fs.existsSync(stgKeep), false);

    await d.restart();
    assert.equal((await cliJson(d, ['disk', 'show', 'gone'])).state, 'online');
    await cliFails(d, ['disk', 'show', 'gone2'], 'DISK_NOT_FOUND');
    await qemuIoOk(d.uri('gone'), ['read -P 0x5a 0 4M', 'read -P 0x6b 8M 1M']);
  });
});
