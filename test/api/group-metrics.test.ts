// The Prometheus series of consistency groups, read from a real ferryd: a group of two disks
// with its staging area and a local group mirror. `ferry_group_members{group}` counts its
// members (and follows `group add`); its staging area is in the ferry_staging_* series and its
// mirror in the ferry_mirror_* series under the group's name (a group is not a disk: it has no
// ferry_disk_* series of its own, its members do); each member's file in the group's mirror
// says whether it is copied (`ferry_group_mirror_member_synced`). A group mirrored to a paired
// site: at the primary site its mirror is in the mirror series under its name, each member's
// replica disk its copy; at the mirror site the replica group has its members, its staging area
// and its mirror (role `replica`) under its own name.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Cleanup, requireTool, run, startFerryd, tmpDir, type Ferryd } from '../harness.js';
import { startSites, type Sites } from '../replication/helpers.js';
import { waitFor } from './helpers.js';

/** The value of one series (name and exact label set) in Prometheus text, or undefined. */
function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  const want = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .sort()
    .join(',');
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)\{([^}]*)\} (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    if (m[2]!.split(',').sort().join(',') === want) return Number(m[3]);
  }
  return undefined;
}

/** Every label set of a series whose `label` is `value`. */
function seriesWith(text: string, name: string, label: string, value: string): string[] {
  return text.split('\n').filter((l) => l.startsWith(`${name}{`) && l.includes(`${label}="${value}"`));
}

describe('metrics of consistency groups', () => {
  let d: Ferryd;
  let work: string;
  let target: string;
  const metrics = async (): Promise<string> => {
    const r = await fetch(`${d.apiUrl}/metrics`, { headers: { authorization: `Bearer ${d.token}` } });
    assert.equal(r.status, 200);
    return r.text();
  };

  before(async () => {
    d = await startFerryd();
    work = fs.realpathSync(tmpDir('ferry-group-metrics-'));
    await d.createDisk('ga', '16M');
    await d.createDisk('gb', '32M');
    await d.createDisk('gc', '16M');
    const g = await d.cli(['group', 'create', 'g1', '--disks', 'ga,gb', '--staging', path.join(work, 'g1.stg'), '--staging-size', '64M', '--staging-copy', path.join(work, 'g1.copy.stg')]);
    assert.equal(g.code, 0, g.stderr);
    fs.mkdirSync(path.join(work, 'mirror'));
    const m = await d.cli(['mirror', 'create', '--group', 'g1', '--to', `local:${path.join(work, 'mirror')}`, '--wait', '--json']);
    assert.equal(m.code, 0, m.stderr);
    target = (JSON.parse(m.stdout) as { target: string }).target;
  });
  after(() => d.stop());

  test("members, the group's staging area and its mirror under the group's name", async () => {
    const text = await metrics();
    assert.equal(sample(text, 'ferry_group_members', { group: 'g1' }), 2, text);
    assert.equal(sample(text, 'ferry_group_online', { group: 'g1' }), 1);
    // The staging area: the group's, under its name; its members have none of their own.
    const size = sample(text, 'ferry_staging_size_bytes', { disk: 'g1' });
    const used = sample(text, 'ferry_staging_used_bytes', { disk: 'g1' });
    const free = sample(text, 'ferry_staging_free_bytes', { disk: 'g1' });
    assert.ok(size !== undefined && size > 0, text);
    assert.ok(used !== undefined && free !== undefined && used + free === size, `used ${used} + free ${free} = size ${size}`);
    assert.equal(sample(text, 'ferry_staging_failed', { disk: 'g1' }), 0);
    assert.equal(sample(text, 'ferry_staging_copy_healthy', { disk: 'g1', copy: path.join(work, 'g1.stg') }), 1);
    assert.equal(sample(text, 'ferry_staging_copy_healthy', { disk: 'g1', copy: path.join(work, 'g1.copy.stg') }), 1);
    for (const member of ['ga', 'gb']) assert.deepEqual(seriesWith(text, 'ferry_staging_size_bytes', 'disk', member), [], `${member} has no staging area of its own`);
    // The mirror: one, the group's, in the mirror series under the group's name.
    const state = (s: string): number | undefined => sample(text, 'ferry_mirror_state', { disk: 'g1', role: 'primary', target, state: s });
    assert.equal(state('in-sync'), 1, text);
    for (const s of ['syncing', 'paused', 'bitmap', 'resyncing']) assert.equal(state(s), 0, s);
    assert.equal(sample(text, 'ferry_mirror_consistent', { disk: 'g1', role: 'primary', target }), 1);
    assert.equal(sample(text, 'ferry_mirror_sync_progress', { disk: 'g1', role: 'primary', target }), 1);
    for (const member of ['ga', 'gb']) {
      assert.deepEqual(seriesWith(text, 'ferry_mirror_state', 'disk', member), [], `${member}'s mirror is the group's`);
      assert.equal(sample(text, 'ferry_group_mirror_member_synced', { group: 'g1', disk: member, target: `local:${path.join(work, 'mirror', `${member}.img`)}` }), 1, text);
    }
    // The group is served through its members: disk series are theirs, not the group's.
    assert.deepEqual(seriesWith(text, 'ferry_disk_online', 'disk', 'g1'), []);
    assert.equal(sample(text, 'ferry_disk_online', { disk: 'ga' }), 1);
  });

  test("a member's writes count on the member, are staged in the group's area and reach the group's mirror", async () => {
    const qemuIo = requireTool('qemu-io');
    const w = await run(qemuIo, ['-f', 'raw', '-c', 'write -P 0x5a 0 1M', d.uri('gb')]);
    assert.equal(w.code, 0, w.stderr);
    const text = await metrics();
    assert.ok((sample(text, 'ferry_disk_write_bytes_total', { disk: 'gb' }) ?? 0) >= 1 << 20, 'the member counts its writes');
    await waitFor('the write applied by the group mirror', async () => {
      const t = await metrics();
      return sample(t, 'ferry_mirror_lag_records', { disk: 'g1', role: 'primary', target }) === 0 && sample(t, 'ferry_staging_unapplied_records', { disk: 'g1' }) === 0;
    }, 30_000);
  });

  test('a member added online: the member count follows, and its file in the mirror is copied', async () => {
    const r = await d.cli(['group', 'add', 'g1', 'gc']);
    assert.equal(r.code, 0, r.stderr);
    const file = `local:${path.join(work, 'mirror', 'gc.img')}`;
    assert.equal(sample(await metrics(), 'ferry_group_members', { group: 'g1' }), 3);
    await waitFor('the added member copied into the mirror', async () => sample(await metrics(), 'ferry_group_mirror_member_synced', { group: 'g1', disk: 'gc', target: file }) === 1, 60_000);
    const text = await metrics();
    assert.equal(sample(text, 'ferry_mirror_state', { disk: 'g1', role: 'primary', target, state: 'in-sync' }), 1);
  });
});

describe('metrics of a consistency group mirrored to another site', () => {
  const cleanup = new Cleanup('ferry-group-metrics-sites-');
  let s: Sites;
  const metrics = async (d: Ferryd): Promise<string> => {
    const r = await fetch(`${d.apiUrl}/metrics`, { headers: { authorization: `Bearer ${d.token}` } });
    assert.equal(r.status, 200);
    return r.text();
  };

  before(async () => {
    s = await startSites(cleanup);
    await s.a.createDisk('ra', '16M');
    await s.a.createDisk('rb', '16M');
    const g = await s.a.cli(['group', 'create', 'rg', '--disks', 'ra,rb', '--staging', path.join(cleanup.dir(), 'rg.stg'), '--staging-size', '128M']);
    assert.equal(g.code, 0, g.stderr);
    const m = await s.a.cli(['mirror', 'create', '--group', 'rg', '--to', `${s.peer}:b-`, '--wait'], { timeoutMs: 120_000 });
    assert.equal(m.code, 0, m.stderr);
  });
  after(() => cleanup.run());

  test("the primary site's group mirror and the mirror site's replica group, each under its group's name", async () => {
    const a = await metrics(s.a);
    const target = `${s.peer}:b-rg`;
    assert.equal(sample(a, 'ferry_mirror_state', { disk: 'rg', role: 'primary', target, state: 'in-sync' }), 1, a);
    assert.equal(sample(a, 'ferry_mirror_lag_records', { disk: 'rg', role: 'primary', target }), 0);
    for (const m of ['ra', 'rb']) assert.equal(sample(a, 'ferry_group_mirror_member_synced', { group: 'rg', disk: m, target: `${s.peer}:b-${m}` }), 1, a);
    await waitFor('the replica group in sync at the mirror site', async () => sample(await metrics(s.b), 'ferry_mirror_state', { disk: 'b-rg', role: 'replica', target: 'site-a:rg', state: 'in-sync' }) === 1, 30_000);
    const b = await metrics(s.b);
    assert.equal(sample(b, 'ferry_group_members', { group: 'b-rg' }), 2, b);
    assert.equal(sample(b, 'ferry_group_online', { group: 'b-rg' }), 1);
    assert.ok((sample(b, 'ferry_staging_size_bytes', { disk: 'b-rg' }) ?? 0) > 0, "the replica group's staging area, under its name");
    for (const m of ['b-ra', 'b-rb']) assert.equal(sample(b, 'ferry_disk_online', { disk: m }), 1);
  });
});
