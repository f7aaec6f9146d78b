// nbdinfo (libnbd) against ferryd: what the server advertises in negotiation
// (size, flags, block sizes, read-only), the export list, and the allocation map.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { Ferryd } from '../harness.js';
import { Cleanup, fails, ok, qemuIoOk, T } from './clients.js';

const MiB = 1024 * 1024;

describe('nbdinfo', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;

  before(async () => {
    d = await cleanup.ferryd();
    await d.createDisk('alpha', '64M');
    await d.createDisk('beta', 3 * MiB + 512);
    const ro = await d.api('POST', '/v1/disks', { name: 'frozen', size: '1M', readOnly: true });
    assert.equal(ro.status, 201, JSON.stringify(ro.body));
  }, T);
  after(() => cleanup.run(), T);

  async function info(disk: string): Promise<any> {
    const r = await ok('nbdinfo', ['--json', d.uri(disk)]);
    const j = JSON.parse(r.stdout);
    assert.equal(j.exports.length, 1);
    return j;
  }

  it('reports the size, the capabilities and the block sizes of a writable disk', T, async () => {
    const j = await info('alpha');
    assert.equal(j.protocol, 'newstyle-fixed');
    assert.equal(j.structured, true);
    const e = j.exports[0];
    assert.equal(e['export-name'], 'alpha');
    assert.equal(e['export-size'], 64 * MiB);
    assert.equal(e.is_read_only, false);
    for (const cap of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_multi_conn', 'can_cache', 'can_fast_zero', 'can_df']) {
      assert.equal(e[cap], true, `${cap} should be true`);
    }
    assert.equal(e.is_rotational, false);
    assert.equal(e.block_size_minimum, 1);
    assert.equal(e.block_size_preferred, 4096);
    assert.equal(e.block_size_maximum, 33554432);
    assert.deepEqual(e.contexts, ['base:allocation']);
  });

  it('reports an odd size exactly', T, async () => {
    const j = await info('beta');
    assert.equal(j.exports[0]['export-size'], 3 * MiB + 512);
  });

  it('shows a read-only disk as read-only, without trim or zero', T, async () => {
    const e = (await info('frozen')).exports[0];
    assert.equal(e.is_read_only, true);
    assert.equal(e['export-size'], MiB);
    assert.equal(e.can_trim, false);
    assert.equal(e.can_zero, false);
    assert.equal(e.can_flush, true);
  });

  it('--list lists every disk with its size', T, async () => {
    const r = await ok('nbdinfo', ['--list', '--json', `nbd://${d.nbdAddress}`]);
    const j = JSON.parse(r.stdout);
    const byName = new Map<string, any>(j.exports.map((e: any) => [e['export-name'], e]));
    assert.deepEqual([...byName.keys()].sort(), ['alpha', 'beta', 'frozen']);
    assert.equal(byName.get('alpha')['export-size'], 64 * MiB);
    assert.equal(byName.get('beta')['export-size'], 3 * MiB + 512);
    assert.equal(byName.get('frozen').is_read_only, true);
    // The human form names them too.
    const human = await ok('nbdinfo', ['--list', `nbd://${d.nbdAddress}`]);
    for (const n of ['alpha', 'beta', 'frozen']) assert.match(human.stdout, new RegExp(`export="${n}"`));
  });

  it('a disk created after start is listed at once', T, async () => {
    await d.createDisk('gamma', '1M');
    const r = await ok('nbdinfo', ['--list', '--json', `nbd://${d.nbdAddress}`]);
    assert.ok(JSON.parse(r.stdout).exports.some((e: any) => e['export-name'] === 'gamma'));
  });

  it('an unknown export is refused with a clear message', T, async () => {
    const r = await fails('nbdinfo', ['--json', d.uri('no-such-disk')]);
    // NBD_REP_ERR_UNKNOWN, which libnbd reports as ENOENT.
    assert.match(r.stderr, /No such file or directory for export: no-such-disk/);
  });

  it('--map shows a fresh disk as one hole, then hole/data/hole after a write', T, async () => {
    const fresh = JSON.parse((await ok('nbdinfo', ['--map', '--json', d.uri('alpha')])).stdout);
    assert.deepEqual(
      fresh.map((x: any) => [x.offset, x.length, x.type]),
      [[0, 64 * MiB, 3]],
    );
    await qemuIoOk(d.uri('alpha'), ['write -P 0x5a 1M 64k']);
    const map = JSON.parse((await ok('nbdinfo', ['--map', '--json', d.uri('alpha')])).stdout);
    const rows = map.map((x: any) => [x.offset, x.length, x.type]);
    // Allocation granularity is the file system's block (4 KiB here, at most 64 KiB): the
    // data extent covers the write and the holes cover the rest.
    assert.equal(rows.length, 3, JSON.stringify(map));
    const [hole1, data, hole2] = rows;
    assert.equal(hole1[0], 0);
    assert.equal(hole1[2], 3, 'first extent is hole,zero');
    assert.ok(hole1[1] <= MiB && hole1[1] >= MiB - 64 * 1024);
    assert.equal(data[2], 0, 'then data');
    assert.ok(data[0] <= MiB && data[0] + data[1] >= MiB + 64 * 1024);
    assert.equal(hole2[2], 3, 'then hole,zero to the end');
    assert.equal(hole2[0] + hole2[1], 64 * MiB);
    assert.match(map[1].description, /data/);
  });
});
