// Storage pools through the API: adding one needs an absolute, existing directory that
// overlaps no other pool; disks created in it land in it; a pool holding disks and the
// default pool cannot be removed; removing a pool leaves its directory alone.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startFerryd, tmpDir, type Ferryd } from '../harness.js';
import { PoolSchema } from '../../src/api/routes.js';
import { assertError, assertSchema, assertUnchanged, cleanup, rawApi, snapshot } from './helpers.js';

describe('API: storage pools', () => {
  let d: Ferryd;
  let ext: string;

  before(async () => {
    d = await startFerryd();
    ext = fs.realpathSync(tmpDir('ferry-pools-'));
  });
  after(async () => {
    await cleanup(d, ext);
  });

  async function addRefused(name: string, p: string, status: number, code: string, what: string): Promise<void> {
    const before = await snapshot(d, [ext]);
    assertError(await rawApi(d, 'POST', '/v1/pools', { body: JSON.stringify({ name, path: p }) }), status, code, what);
    await assertUnchanged(d, before, what, [ext]);
  }

  test('the default pool exists, inside the data directory', async () => {
    const r = await d.api('GET', '/v1/pools');
    assert.equal(r.status, 200);
    assert.equal(r.body.length, 1);
    assertSchema(PoolSchema, r.body[0], 'default pool');
    assert.equal(r.body[0].name, 'default');
    assert.equal(r.body[0].path, path.join(fs.realpathSync(d.dataDir), 'pool'));
  });

  test('adding a pool refuses bad paths and overlaps, changing nothing', async () => {
    fs.mkdirSync(path.join(ext, 'a', 'inner'), { recursive: true });
    fs.writeFileSync(path.join(ext, 'file'), 'x');
    for (const rel of ['rel', './a', 'a/inner', '']) await addRefused('p1', rel, 400, 'INVALID_PATH', `relative ${JSON.stringify(rel)}`);
    await addRefused('p1', path.join(ext, 'missing'), 404, 'PATH_NOT_FOUND', 'missing directory');
    await addRefused('p1', path.join(ext, 'file'), 400, 'INVALID_PATH', 'a file');
    await addRefused('p1', '/dev/null', 400, 'INVALID_PATH', 'a device');
    const defaultPool = path.join(d.dataDir, 'pool');
    await addRefused('p1', defaultPool, 409, 'PATH_IN_USE', 'the default pool directory');
    await addRefused('p1', d.dataDir, 409, 'PATH_IN_USE', 'the data directory (contains the default pool)');
    await addRefused('p1', path.dirname(d.dataDir), 409, 'PATH_IN_USE', 'a parent of the default pool');
    await addRefused('p1', '/', 409, 'PATH_IN_USE', 'the root directory');
    fs.mkdirSync(path.join(defaultPool, 'sub'));
    try {
      await addRefused('p1', path.join(defaultPool, 'sub'), 409, 'PATH_IN_USE', 'inside the default pool');
    } finally {
      fs.rmdirSync(path.join(defaultPool, 'sub'));
    }
    fs.symlinkSync(defaultPool, path.join(ext, 'default-link'));
    await addRefused('p1', path.join(ext, 'default-link'), 409, 'PATH_IN_USE', 'a symlink to the default pool');
    await addRefused('default', path.join(ext, 'a'), 409, 'POOL_EXISTS', 'the name default');
  });

  test('an added pool takes the real path, refuses overlaps and duplicate names, and holds the disks created in it', async () => {
    fs.mkdirSync(path.join(ext, 'p1dir'));
    fs.symlinkSync(path.join(ext, 'p1dir'), path.join(ext, 'p1link'));
    const r = await d.api('POST', '/v1/pools', { name: 'p1', path: path.join(ext, 'p1link') });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    assertSchema(PoolSchema, r.body, 'added pool');
    assert.deepEqual({ name: r.body.name, path: r.body.path, disks: r.body.disks }, { name: 'p1', path: path.join(ext, 'p1dir'), disks: 0 });

    await addRefused('p1', path.join(ext, 'a'), 409, 'POOL_EXISTS', 'duplicate pool name');
    await addRefused('p2', path.join(ext, 'p1dir'), 409, 'PATH_IN_USE', 'same directory as p1');
    fs.mkdirSync(path.join(ext, 'p1dir', 'nested'));
    await addRefused('p2', path.join(ext, 'p1dir', 'nested'), 409, 'PATH_IN_USE', 'inside p1');
    await addRefused('p2', ext, 409, 'PATH_IN_USE', 'containing p1');
    fs.rmdirSync(path.join(ext, 'p1dir', 'nested'));

    const disk = await d.api('POST', '/v1/disks', { name: 'in-p1', size: '2M', pool: 'p1' });
    assert.equal(disk.status, 201, JSON.stringify(disk.body));
    assert.equal(disk.body.pool, 'p1');
    assert.equal(disk.body.path, path.join(ext, 'p1dir', 'in-p1.img'));
    assert.equal(fs.statSync(disk.body.path).size, 2 << 20);
    assert.ok(!fs.existsSync(path.join(d.dataDir, 'pool', 'in-p1.img')));
    const listed = (await d.api('GET', '/v1/pools')).body.find((p: { name: string }) => p.name === 'p1');
    assert.equal(listed.disks, 1);

    assertError(await rawApi(d, 'POST', '/v1/disks', { body: JSON.stringify({ name: 'in-p1', size: '1M' }) }), 409, 'DISK_EXISTS', 'same name in another pool');
    assert.ok(!fs.existsSync(path.join(d.dataDir, 'pool', 'in-p1.img')));
  });

  test('a pool holding disks is 409 POOL_NOT_EMPTY; default is 400; removal leaves the directory', async () => {
    let before = await snapshot(d, [ext]);
    assertError(await rawApi(d, 'DELETE', '/v1/pools/p1'), 409, 'POOL_NOT_EMPTY', 'remove p1');
    await assertUnchanged(d, before, 'remove non-empty pool', [ext]);

    before = await snapshot(d, [ext]);
    assertError(await rawApi(d, 'DELETE', '/v1/pools/default'), 400, 'BAD_REQUEST', 'remove default (empty)');
    await assertUnchanged(d, before, 'remove default', [ext]);
    await d.createDisk('in-default', '1M');
    before = await snapshot(d, [ext]);
    assertError(await rawApi(d, 'DELETE', '/v1/pools/default'), 400, 'BAD_REQUEST', 'remove default (non-empty)');
    await assertUnchanged(d, before, 'remove default (non-empty)', [ext]);

    // Unregister the disk but keep its file: the pool is then empty and can go; the file stays.
    assert.equal((await d.api('DELETE', '/v1/disks/in-p1')).status, 200);
    const removed = await d.api('DELETE', '/v1/pools/p1');
    assert.equal(removed.status, 200, JSON.stringify(removed.body));
    assert.equal(removed.body.name, 'p1');
    assert.ok(fs.existsSync(path.join(ext, 'p1dir', 'in-p1.img')), 'the directory and its files are left alone');
    assert.deepEqual((await d.api('GET', '/v1/pools')).body.map((p: { name: string }) => p.name), ['default']);
    assertError(await rawApi(d, 'POST', '/v1/disks', { body: JSON.stringify({ name: 'x1', size: '1M', pool: 'p1' }) }), 404, 'POOL_NOT_FOUND', 'create in removed pool');
    assertError(await rawApi(d, 'DELETE', '/v1/pools/p1'), 404, 'POOL_NOT_FOUND', 'remove twice');

    // The directory can be registered again (under another name) once it is free.
    const again = await d.api('POST', '/v1/pools', { name: 'p1b', path: path.join(ext, 'p1dir') });
    assert.equal(again.status, 201, JSON.stringify(again.body));
    assertError(await rawApi(d, 'POST', '/v1/disks', { body: JSON.stringify({ name: 'in-p1', size: '1M', pool: 'p1b' }) }), 409, 'PATH_IN_USE', 'the left file is not overwritten');
  });
});
