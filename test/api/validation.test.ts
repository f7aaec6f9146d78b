// Bad requests to the disk routes: malformed or oversized bodies, unknown fields, wrong
// JSON types, invalid names and sizes, unknown pools, duplicates and a file already in
// the pool. Each gets its stable error code and changes nothing: not the disk or pool
// lists, not one file under the data directory or a pool.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startFerryd, type Ferryd } from '../harness.js';
import { assertError, assertUnchanged, cleanup, rawApi, snapshot } from './helpers.js';

describe('API request validation', () => {
  let d: Ferryd;

  before(async () => {
    d = await startFerryd();
    await d.createDisk('existing', '1M');
  });
  after(async () => {
    await cleanup(d);
  });

  async function refused(method: string, url: string, body: string | undefined, status: number, code: string, what: string, contentType?: string): Promise<void> {
    const before = await snapshot(d);
    const r = await rawApi(d, method, url, { body, contentType });
    assertError(r, status, code, what);
    await assertUnchanged(d, before, what);
  }

  test('malformed JSON is 400 BAD_REQUEST', async () => {
    for (const body of ['{bad json', '{"name": "x", "size": "1M"', '', 'nul', "{'name':'x'}", '{"name":"x","size":"1M"}}']) {
      await refused('POST', '/v1/disks', body, 400, 'BAD_REQUEST', `body ${JSON.stringify(body)}`);
    }
    await refused('POST', '/v1/pools', '{', 400, 'BAD_REQUEST', 'pool body {');
    await refused('POST', '/v1/disks/adopt', '[', 400, 'BAD_REQUEST', 'adopt body [');
  });

  test('a body that is not a JSON object, or not JSON at all, is 400 BAD_REQUEST', async () => {
    for (const body of ['[]', 'null', '"d9"', '42', 'true']) {
      await refused('POST', '/v1/disks', body, 400, 'BAD_REQUEST', `body ${body}`);
    }
    await refused('POST', '/v1/disks', JSON.stringify({ name: 'd9', size: '1M' }), 400, 'BAD_REQUEST', 'text/plain body', 'text/plain');
    await refused('POST', '/v1/disks', 'name=d9&size=1M', 400, 'BAD_REQUEST', 'form body', 'application/x-www-form-urlencoded');
    const noBody = await rawApi(d, 'POST', '/v1/disks');
    assertError(noBody, 400, 'BAD_REQUEST', 'no body');
  });

  test('unknown body fields are 400 BAD_REQUEST, never silently dropped', async () => {
    await refused('POST', '/v1/disks', JSON.stringify({ name: 'd9', size: '1M', sparse: false }), 400, 'BAD_REQUEST', 'disk + sparse');
    await refused('POST', '/v1/disks', JSON.stringify({ name: 'd9', size: '1M', Name: 'd9' }), 400, 'BAD_REQUEST', 'disk + Name');
    await refused('POST', '/v1/disks/adopt', JSON.stringify({ name: 'd9', path: '/etc/hostname', purge: true }), 400, 'BAD_REQUEST', 'adopt + purge');
    await refused('POST', '/v1/pools', JSON.stringify({ name: 'p9', path: '/tmp', quota: 1 }), 400, 'BAD_REQUEST', 'pool + quota');
    await refused('DELETE', '/v1/disks/existing?force=true', undefined, 400, 'BAD_REQUEST', 'remove ?force');
  });

  test('missing fields and wrong JSON types are 400 BAD_REQUEST, never coerced', async () => {
    const cases: Array<[string, unknown]> = [
      ['/v1/disks', { size: '1M' }],
      ['/v1/disks', { name: 'd9' }],
      ['/v1/disks', { name: 5, size: '1M' }],
      ['/v1/disks', { name: ['d9'], size: '1M' }],
      ['/v1/disks', { name: null, size: '1M' }],
      ['/v1/disks', { name: 'd9', size: true }],
      ['/v1/disks', { name: 'd9', size: null }],
      ['/v1/disks', { name: 'd9', size: [1048576] }],
      ['/v1/disks', { name: 'd9', size: { bytes: 1048576 } }],
      ['/v1/disks', { name: 'd9', size: '1M', pool: 7 }],
      ['/v1/disks', { name: 'd9', size: '1M', readOnly: 'yes' }],
      ['/v1/disks', { name: 'd9', size: '1M', readOnly: 1 }],
      ['/v1/disks/adopt', { name: 'd9' }],
      ['/v1/disks/adopt', { name: 'd9', path: 7 }],
      ['/v1/disks/adopt', { name: 'd9', path: '/etc/hostname', readOnly: 'true' }],
      ['/v1/pools', { name: 'p9' }],
      ['/v1/pools', { name: 'p9', path: ['/tmp'] }],
      ['/v1/pools', { name: true, path: '/tmp' }],
    ];
    for (const [url, body] of cases) await refused('POST', url, JSON.stringify(body), 400, 'BAD_REQUEST', `${url} ${JSON.stringify(body)}`);
    for (const q of ['purge=maybe', 'purge=1', 'purge=', 'purge=yes']) {
      await refused('DELETE', `/v1/disks/existing?${q}`, undefined, 400, 'BAD_REQUEST', `remove ?${q}`);
    }
  });

  test('a body over 64 KiB is 400 BAD_REQUEST', async () => {
    const big = JSON.stringify({ name: 'd9', size: '1M', pad: 'x'.repeat(70 * 1024) });
    await refused('POST', '/v1/disks', big, 400, 'BAD_REQUEST', '70 KiB body');
    const bigName = JSON.stringify({ name: 'x'.repeat(65 * 1024), size: '1M' });
    await refused('POST', '/v1/disks', bigName, 400, 'BAD_REQUEST', '65 KiB name');
    await refused('POST', '/v1/pools', JSON.stringify({ name: 'p9', path: '/' + 'a'.repeat(1 << 20) }), 400, 'BAD_REQUEST', '1 MiB pool path');
  });

  test('invalid disk names are 400 INVALID_NAME and create no file anywhere', async () => {
    const names = ['../x', 'a/b', '', '.hidden', 'x'.repeat(64), 'x'.repeat(300), 'a..b', '..', '.', 'a b', ' a', 'a ', 'é', 'ディスク', 'disk\u00a0x', '-a', '_a', 'a\\b', 'a\u0000b', 'a\nb', '/abs', 'a:b', 'a%2fb', 'a*'];
    for (const name of names) {
      await refused('POST', '/v1/disks', JSON.stringify({ name, size: '1M' }), 400, 'INVALID_NAME', `create ${JSON.stringify(name)}`);
      await refused('POST', '/v1/disks/adopt', JSON.stringify({ name, path: '/etc/hostname' }), 400, 'INVALID_NAME', `adopt ${JSON.stringify(name)}`);
      await refused('POST', '/v1/pools', JSON.stringify({ name, path: '/tmp' }), 400, 'INVALID_NAME', `pool ${JSON.stringify(name)}`);
    }
    for (const pool of ['../default', 'a/b', '', 'x'.repeat(64)]) {
      await refused('POST', '/v1/disks', JSON.stringify({ name: 'd9', size: '1M', pool }), 400, 'INVALID_NAME', `pool ${JSON.stringify(pool)}`);
    }
    const dir = path.join(d.dataDir, 'pool');
    assert.deepEqual(fs.readdirSync(dir), ['existing.img']);
    assert.ok(!fs.existsSync(path.join(d.dataDir, 'x.img')));
  });

  test('invalid names in the URL are 400 INVALID_NAME', async () => {
    for (const raw of ['..%2Fx', 'a%20b', '%C3%A9', 'x'.repeat(64), '.hidden', 'a..b']) {
      for (const [method, base] of [['GET', '/v1/disks/'], ['DELETE', '/v1/disks/'], ['DELETE', '/v1/pools/']] as const) {
        await refused(method, base + raw, undefined, 400, 'INVALID_NAME', `${method} ${base}${raw}`);
      }
    }
  });

  test('a valid name of 63 characters is accepted', async () => {
    const name = 'a'.repeat(61) + '.b';
    const r = await d.api('POST', '/v1/disks', { name, size: 4096 });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    assert.equal(r.body.path, path.join(fs.realpathSync(d.dataDir), 'pool', `${name}.img`));
    assert.equal((await d.api('DELETE', `/v1/disks/${name}?purge=true`)).status, 200);
  });

  test('invalid sizes are 400 INVALID_SIZE', async () => {
    const sizes: unknown[] = ['0', '-1', 'ten', '1.3', 511, '511', 0, -1, -4096, 1.5, 4096.5, '', ' ', '1e9', '0x1000', '1X', '1 G G', '4096 bytes', '99999999999999999999T', 2 ** 53, '1.0000001K'];
    for (const size of sizes) {
      await refused('POST', '/v1/disks', JSON.stringify({ name: 'd9', size }), 400, 'INVALID_SIZE', `size ${JSON.stringify(size)}`);
    }
  });

  test('an unknown pool is 404 POOL_NOT_FOUND', async () => {
    await refused('POST', '/v1/disks', JSON.stringify({ name: 'd9', size: '1M', pool: 'nopool' }), 404, 'POOL_NOT_FOUND', 'pool nopool');
    await refused('DELETE', '/v1/pools/nopool', undefined, 404, 'POOL_NOT_FOUND', 'remove pool nopool');
  });

  test('unknown disks are 404 DISK_NOT_FOUND', async () => {
    await refused('GET', '/v1/disks/nodisk', undefined, 404, 'DISK_NOT_FOUND', 'show nodisk');
    await refused('DELETE', '/v1/disks/nodisk', undefined, 404, 'DISK_NOT_FOUND', 'remove nodisk');
    await refused('DELETE', '/v1/disks/nodisk?purge=true', undefined, 404, 'DISK_NOT_FOUND', 'purge nodisk');
  });

  test('a duplicate name is 409 DISK_EXISTS, also for adopt', async () => {
    await refused('POST', '/v1/disks', JSON.stringify({ name: 'existing', size: '2M' }), 409, 'DISK_EXISTS', 'create existing');
    await refused('POST', '/v1/disks/adopt', JSON.stringify({ name: 'existing', path: '/etc/hostname' }), 409, 'DISK_EXISTS', 'adopt existing');
    assert.equal(fs.statSync(path.join(d.dataDir, 'pool', 'existing.img')).size, 1 << 20);
  });

  test('a file already named NAME.img in the pool is 409 PATH_IN_USE and stays untouched', async () => {
    const file = path.join(d.dataDir, 'pool', 'stray.img');
    fs.writeFileSync(file, 'precious data, not Ferry’s\n', { mode: 0o640 });
    const past = new Date(Math.floor(Date.now() / 1000) * 1000 - 3600_000); // whole seconds: exact in mtimeMs
    fs.utimesSync(file, past, past);
    try {
      await refused('POST', '/v1/disks', JSON.stringify({ name: 'stray', size: '1M' }), 409, 'PATH_IN_USE', 'create over stray.img');
      assert.equal(fs.readFileSync(file, 'utf8'), 'precious data, not Ferry’s\n');
      assert.equal(fs.statSync(file).mode & 0o777, 0o640);
      assert.equal(fs.statSync(file).mtimeMs, past.getTime());
      assertError(await rawApi(d, 'GET', '/v1/disks/stray'), 404, 'DISK_NOT_FOUND', 'stray is not registered');
    } finally {
      fs.rmSync(file, { force: true });
    }
  });

  test('a dangling symlink named NAME.img in the pool is 409 PATH_IN_USE and its target is not created', async () => {
    const link = path.join(d.dataDir, 'pool', 'dangle.img');
    const target = path.join(d.dataDir, 'dangle-target');
    fs.symlinkSync(target, link);
    try {
      await refused('POST', '/v1/disks', JSON.stringify({ name: 'dangle', size: '1M' }), 409, 'PATH_IN_USE', 'create over a dangling symlink');
      assert.ok(!fs.existsSync(target));
      assert.equal(fs.readlinkSync(link), target);
    } finally {
      fs.rmSync(link, { force: true });
    }
  });

  test('sizes that are accepted are exact', async () => {
    for (const [size, bytes] of [['4K', 4096], ['1M', 1 << 20], ['1.5M', 1.5 * (1 << 20)], ['2GiB', 2 ** 31], [512, 512], ['1T', 2 ** 40]] as const) {
      const r = await d.api('POST', '/v1/disks', { name: 'sz', size });
      assert.equal(r.status, 201, `${size}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.size, bytes);
      assert.equal(fs.statSync(r.body.path).size, bytes);
      assert.equal((await d.api('DELETE', '/v1/disks/sz?purge=true')).status, 200);
      assert.ok(!fs.existsSync(r.body.path));
    }
  });
});
