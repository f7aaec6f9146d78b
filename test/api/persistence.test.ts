// What ferryd serves survives a restart and a kill -9: pools, virtual and adopted disks
// (with their data), and removals. A disk whose file vanished while ferryd was down is
// kept, marked unavailable, and can still be removed.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, run, startFerryd, tmpDir, type Ferryd } from '../harness.js';
import { assertError, cleanup, rawApi } from './helpers.js';

describe('API state across restarts', () => {
  let d: Ferryd;
  let ext: string;

  before(async () => {
    requireTool('qemu-io');
    d = await startFerryd();
    ext = fs.realpathSync(tmpDir('ferry-persist-'));
  });
  after(async () => {
    await cleanup(d, ext);
  });

  /** The registered state, without live values (statistics, clients). */
  async function state(): Promise<{ disks: unknown[]; pools: unknown[] }> {
    const disks = await d.api('GET', '/v1/disks');
    const pools = await d.api('GET', '/v1/pools');
    assert.equal(disks.status, 200);
    assert.equal(pools.status, 200);
    return { disks: disks.body.map(({ stats: _s, clients: _c, ...rest }: Record<string, unknown>) => rest), pools: pools.body };
  }

  async function write(disk: string, pattern: number, offset: number): Promise<void> {
    const w = await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x${pattern.toString(16)} ${offset} 65536`, d.uri(disk)], { timeoutMs: 60_000 });
    assert.equal(w.code, 0, w.stderr);
  }

  async function verify(disk: string, pattern: number, offset: number): Promise<void> {
    const r = await run('qemu-io', ['-f', 'raw', '-c', `read -P 0x${pattern.toString(16)} ${offset} 65536`, d.uri(disk)], { timeoutMs: 60_000 });
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout + r.stderr, /Pattern verification failed|error/i, `${disk} @${offset}: ${r.stdout}${r.stderr}`);
  }

  test('pools, disks and their data survive a graceful restart', async () => {
    fs.mkdirSync(path.join(ext, 'pool2'));
    assert.equal((await d.api('POST', '/v1/pools', { name: 'p2', path: path.join(ext, 'pool2') })).status, 201);
    await d.createDisk('v1', '8M');
    assert.equal((await d.api('POST', '/v1/disks', { name: 'v2', size: '4M', pool: 'p2', readOnly: true })).status, 201);
    fs.writeFileSync(path.join(ext, 'adopted.img'), Buffer.alloc(1 << 20, 0x01));
    assert.equal((await d.api('POST', '/v1/disks/adopt', { name: 'a1', path: path.join(ext, 'adopted.img') })).status, 201);
    await write('v1', 0xab, 1 << 20);
    await write('a1', 0xcd, 0);

    const before = await state();
    const stopped = await d.stop();
    assert.deepEqual(stopped, { code: 0, signal: null });
    await d.start();
    assert.deepEqual(await state(), before);
    await verify('v1', 0xab, 1 << 20);
    await verify('a1', 0xcd, 0);
    const token = d.token;
    await d.restart();
    assert.equal(d.token, token);
    assert.deepEqual(await state(), before);
  });

  test('pools, disks and data survive kill -9', async () => {
    await d.createDisk('v3', '2M');
    await write('v3', 0x3c, 65536);
    const before = await state();
    const killed = await d.kill9();
    assert.equal(killed.signal, 'SIGKILL');
    await d.start();
    assert.deepEqual(await state(), before);
    await verify('v3', 0x3c, 65536);
    await verify('v1', 0xab, 1 << 20);
  });

  test('removals survive kill -9 too', async () => {
    assert.equal((await d.api('DELETE', '/v1/disks/v3?purge=true')).status, 200);
    assert.equal((await d.api('DELETE', '/v1/disks/v2')).status, 200);
    assert.equal((await d.api('DELETE', '/v1/pools/p2')).status, 200);
    const before = await state();
    await d.kill9();
    await d.start();
    assert.deepEqual(await state(), before);
    assertError(await rawApi(d, 'GET', '/v1/disks/v3'), 404, 'DISK_NOT_FOUND', 'v3 after kill -9');
    assertError(await rawApi(d, 'POST', '/v1/disks', { body: JSON.stringify({ name: 'x', size: '1M', pool: 'p2' }) }), 404, 'POOL_NOT_FOUND', 'p2 after kill -9');
    assert.ok(fs.existsSync(path.join(ext, 'pool2', 'v2.img')), 'an unpurged file stays');
  });

  test('a disk whose file vanished while ferryd was down is listed unavailable and can be removed', async () => {
    const v = await d.createDisk('vanish', '1M');
    await d.stop();
    fs.rmSync(v.path);
    await d.start();
    const r = await d.api('GET', '/v1/disks/vanish');
    assert.equal(r.status, 200);
    assert.equal(r.body.state, 'unavailable');
    assert.equal(typeof r.body.error, 'string');
    const other = await d.api('GET', '/v1/disks/v1');
    assert.equal(other.body.state, 'online', 'the other disks are still served');
    const n = await run('qemu-io', ['-f', 'raw', '-c', 'read 0 512', d.uri('vanish')], { timeoutMs: 60_000 });
    assert.notEqual(n.code, 0, 'an unavailable disk is not exported');
    assert.equal((await d.api('DELETE', '/v1/disks/vanish')).status, 200);
    assertError(await rawApi(d, 'GET', '/v1/disks/vanish'), 404, 'DISK_NOT_FOUND', 'vanish removed');
  });
});
