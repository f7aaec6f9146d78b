// A disk whose primary is full when ferryd restarts (issue 12, "a way out of every failure
// state"): the primary is a file on a small tmpfs (a real ENOSPC from the kernel), its
// staging area elsewhere. Writes acknowledged from the staging area while the primary is
// full must, after a kill -9 and a restart, be served from the staging area (the disk
// online, reads through the overlay), and reach the primary by themselves once space is
// freed (the committer's retry), with no operator help.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fillUntilFull, requireTool, type Ferryd } from '../harness.js';
import { qemuIoOk } from '../interop/clients.js';
import { Cleanup, MiB, assertFileBytes, cliJson, stagingShow, waitFor } from './helpers.js';

const T = { timeout: 300_000 };

describe('a disk whose primary is full at restart', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let work: string;
  let small: string;

  before(async () => {
    requireTool('qemu-io');
    d = await cleanup.ferryd();
    work = fs.realpathSync(cleanup.dir('ferry-primary-full-'));
    small = await cleanup.tmpfs('small', '48m');
  }, T);
  after(() => cleanup.run(), T);

  it('is served from its staging area after a restart and recovers by itself once space is freed', T, async (t) => {
    // A sparse 32 MiB primary on the tmpfs; a filler takes every block the primary would need.
    const primary = path.join(small, 'full.img');
    fs.writeFileSync(primary, '');
    fs.truncateSync(primary, 32 * MiB);
    await cliJson(d, ['disk', 'adopt', 'full', '--path', primary]);
    await cliJson(d, ['staging', 'attach', 'full', '--path', path.join(work, 'full.stg'), '--size', '64M']);
    await qemuIoOk(d.uri('full'), ['write -P 0x11 0 1M']);
    await waitFor('the first write on the primary', async () => (await stagingShow(d, 'full')).consumers.every((c: any) => c.pendingRecords === 0));
    const filler = path.join(small, 'filler');
    fillUntilFull(filler);

    // Acknowledged from the staging area; the committer cannot apply them (ENOSPC).
    await qemuIoOk(d.uri('full'), ['write -P 0x5a 4M 8M', 'flush']);
    await waitFor('the committer to report the full primary', async () => /space|ENOSPC/i.test((await stagingShow(d, 'full')).committerError ?? ''), 60_000);

    await d.kill9();
    await d.start();
    const disk = await cliJson(d, ['disk', 'show', 'full']);
    assert.equal(disk.state, 'online', `the disk is served after the restart: ${JSON.stringify(disk)}\n${d.stdout}${d.stderr}`);
    const s = await stagingShow(d, 'full');
    t.diagnostic(`after restart: committer error ${s.committerError}; pending ${JSON.stringify(s.consumers)}`);
    assert.match(s.committerError ?? '', /space|ENOSPC/i, 'the status says why the records wait');
    assert.ok(s.consumers.find((c: any) => c.name === 'primary').pendingRecords > 0, 'the records wait in the staging area');
    // Served from the staging area: the newest data, also where the primary has none.
    await qemuIoOk(d.uri('full'), ['read -P 0x11 0 1M', 'read -P 0x5a 4M 8M', 'read -P 0 12M 1M']);
    // Writes go on meanwhile.
    await qemuIoOk(d.uri('full'), ['write -P 0x6b 5M 1M', 'read -P 0x6b 5M 1M']);

    fs.rmSync(filler);
    await waitFor(
      'the committer to apply every record once space is back',
      async () => {
        const x = await stagingShow(d, 'full');
        return x.committerError === null && x.consumers.every((c: any) => c.pendingRecords === 0);
      },
      120_000,
    );
    assertFileBytes(primary, 0, MiB, 0x11, 'primary');
    assertFileBytes(primary, 4 * MiB, MiB, 0x5a, 'primary');
    assertFileBytes(primary, 5 * MiB, MiB, 0x6b, 'primary');
    assertFileBytes(primary, 6 * MiB, 6 * MiB, 0x5a, 'primary');
    await qemuIoOk(d.uri('full'), ['read -P 0x5a 4M 1M', 'read -P 0x6b 5M 1M', 'read -P 0x5a 6M 6M']);
  });
});
