// A member removed while the group's mirror is still copying it (it was just added): the
// other members' files are in sync and must stay so. The group's mirror copies only the
// members not yet copied (group-mirror.ts unsyncedChunks); once the one being copied is gone,
// nothing is left to copy.
//
// Once every remaining member is copied, the sync has nothing left: a group mirror with member
// rows and none pending copies no chunk (unsyncedChunks), never the whole address space again.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, type Ferryd } from '../harness.js';
import { qemuIoOk } from '../interop/clients.js';
import { Cleanup } from '../staging/helpers.js';
import { MiB, assertSameBytes, cliJson, mirrorStatus, waitInSync } from '../mirror/helpers.js';

const T = { timeout: 300_000 } as const;

describe('a member removed while the group mirror copies it', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let work: string;

  before(async () => {
    requireTool('qemu-io');
    d = await cleanup.ferryd();
    work = fs.realpathSync(cleanup.dir('ferry-group-membership-sync-'));
  }, T);
  after(() => cleanup.run(), T);

  it('leaves the other members\' mirror files alone (no recopy) and the mirror in sync', T, async (t) => {
    const paths: Record<string, string> = {};
    for (const [name, size] of [['A', '256M'], ['B', '256M'], ['C', '1G']] as const) paths[name] = (await d.createDisk(name, size)).path;
    await qemuIoOk(d.uri('A'), ['write -P 0x11 0 256M']);
    await qemuIoOk(d.uri('B'), ['write -P 0x22 0 256M']);
    await qemuIoOk(d.uri('C'), ['write -P 0x33 0 1G']); // long enough to copy that the removal comes first
    await cliJson(d, ['group', 'create', 'G', '--disks', 'A,B', '--staging', path.join(work, 'G.stg'), '--staging-size', '128M']);
    const mdir = path.join(work, 'mirror');
    fs.mkdirSync(mdir);
    await cliJson(d, ['mirror', 'create', '--group', 'G', '--to', `local:${mdir}`, '--wait']);
    const mtimes = ['A', 'B'].map((x) => fs.statSync(path.join(mdir, `${x}.img`)).mtimeMs);

    // Through the API (no CLI start-up between): added, then removed while still being copied.
    const add = await d.api('POST', '/v1/groups/G/members', { disk: 'C' });
    assert.equal(add.status, 200, JSON.stringify(add.body));
    const copying = await mirrorStatus(d, 'G');
    const remove = await d.api('DELETE', '/v1/groups/G/members/C');
    assert.equal(remove.status, 200, JSON.stringify(remove.body));
    const seen: any[] = [];
    const s = await waitInSync(d, 'G', 120_000, seen);
    t.diagnostic(`before the remove: ${copying.state}, C synced ${copying.members.find((m: any) => m.disk === 'C')?.synced}; after it: ${JSON.stringify(seen.map((x) => [x.state, x.consistent, x.syncBytes]))}`);
    assert.deepEqual(s.members.map((m: any) => [m.disk, m.synced]), [['A', true], ['B', true]]);
    for (const x of ['A', 'B']) await assertSameBytes(paths[x]!, path.join(mdir, `${x}.img`), `${x} and its mirror file`);
    assert.deepEqual(['A', 'B'].map((x) => fs.statSync(path.join(mdir, `${x}.img`)).mtimeMs), mtimes, "the in-sync members' mirror files were not copied again");
    assert.ok(seen.every((x) => x.syncBytes >= 2 * 256 * MiB || x.consistent), `the sync never went back over the members already copied: ${JSON.stringify(seen.map((x) => [x.state, x.consistent, x.syncBytes]))}`);
  });
});
