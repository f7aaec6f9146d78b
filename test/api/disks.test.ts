// Adopting existing files (service-enabled disks) and removing disks: every refused
// adopt changes nothing; an adopted file is served as-is and only client writes touch
// it; purge deletes a virtual disk's file and never an adopted one; a disk with an NBD
// client attached cannot be removed.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, run, startFerryd, tmpDir, type Ferryd } from '../harness.js';
import { DiskSchema } from '../../src/api/routes.js';
import { assertError, assertSchema, assertUnchanged, cleanup, holdNbd, rawApi, sha256File, snapshot, waitFor } from './helpers.js';

describe('API: adopt and remove disks', () => {
  let d: Ferryd;
  let ext: string;

  before(async () => {
    requireTool('qemu-io');
    d = await startFerryd();
    ext = fs.realpathSync(tmpDir('ferry-ext-'));
    await d.createDisk('virt', '1M');
  });
  after(async () => {
    await cleanup(d, ext);
  });

  async function adoptRefused(name: string, p: unknown, status: number, code: string, what: string): Promise<void> {
    const before = await snapshot(d, [ext]);
    const r = await rawApi(d, 'POST', '/v1/disks/adopt', { body: JSON.stringify({ name, path: p }) });
    assertError(r, status, code, what);
    await assertUnchanged(d, before, what, [ext]);
    assertError(await rawApi(d, 'GET', `/v1/disks/${name}`), 404, 'DISK_NOT_FOUND', `${what}: not registered`);
  }

  function image(name: string, bytes: number): string {
    const p = path.join(ext, name);
    fs.writeFileSync(p, crypto.randomBytes(bytes));
    return p;
  }

  test('adopt refuses relative, missing, non-file and Ferry-owned paths', async () => {
    const img = image('rel.img', 65536);
    for (const rel of ['rel.img', './rel.img', `..${img}`, 'tmp/x', '~/x', '']) await adoptRefused('a1', rel, 400, 'INVALID_PATH', `relative ${JSON.stringify(rel)}`);
    await adoptRefused('a1', path.join(ext, 'missing.img'), 404, 'PATH_NOT_FOUND', 'missing file');
    await adoptRefused('a1', path.join(ext, 'no-dir', 'x.img'), 404, 'PATH_NOT_FOUND', 'missing directory');
    fs.symlinkSync(path.join(ext, 'gone'), path.join(ext, 'dangling'));
    await adoptRefused('a1', path.join(ext, 'dangling'), 404, 'PATH_NOT_FOUND', 'dangling symlink');
    fs.mkdirSync(path.join(ext, 'dir'));
    await adoptRefused('a1', path.join(ext, 'dir'), 400, 'INVALID_PATH', 'a directory');
    await adoptRefused('a1', '/dev/null', 400, 'INVALID_PATH', 'a character device');
    const fifo = path.join(ext, 'fifo');
    execFileSync('mkfifo', [fifo]);
    await adoptRefused('a1', fifo, 400, 'INVALID_PATH', 'a FIFO');
    for (const own of ['ferry.db', 'api-token', 'ferry.db-wal', '']) {
      const p = path.join(d.dataDir, own);
      await adoptRefused('a1', p, 400, 'INVALID_PATH', `data dir ${own || '(itself)'}`);
    }
    fs.symlinkSync(path.join(d.dataDir, 'ferry.db'), path.join(ext, 'db-link'));
    await adoptRefused('a1', path.join(ext, 'db-link'), 400, 'INVALID_PATH', 'a symlink to ferry.db');
    await adoptRefused('a1', path.join(d.dataDir, 'pool', '..', 'api-token'), 400, 'INVALID_PATH', 'api-token through the pool');
    for (const own of ['ferry.db', 'api-token']) {
      fs.linkSync(path.join(d.dataDir, own), path.join(ext, `${own}-hardlink`));
      await adoptRefused('a1', path.join(ext, `${own}-hardlink`), 400, 'INVALID_PATH', `a hard link to ${own}`);
    }
    fs.writeFileSync(path.join(ext, 'empty.img'), '');
    await adoptRefused('a1', path.join(ext, 'empty.img'), 400, 'INVALID_SIZE', 'an empty file');
  });

  test('adopt refuses a path another disk uses, however it is spelled', async () => {
    const virt = (await d.api('GET', '/v1/disks/virt')).body.path as string;
    await adoptRefused('a2', virt, 409, 'PATH_IN_USE', 'a virtual disk file');
    const img = image('used.img', 1 << 20);
    const r = await d.api('POST', '/v1/disks/adopt', { name: 'used', path: img });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    await adoptRefused('a2', img, 409, 'PATH_IN_USE', 'the same file');
    fs.symlinkSync(img, path.join(ext, 'used-link'));
    await adoptRefused('a2', path.join(ext, 'used-link'), 409, 'PATH_IN_USE', 'a symlink to it');
    fs.symlinkSync(ext, path.join(ext, 'dir-link'));
    await adoptRefused('a2', path.join(ext, 'dir-link', 'used.img'), 409, 'PATH_IN_USE', 'through a symlinked directory');
    await adoptRefused('a2', ext + '/./used.img', 409, 'PATH_IN_USE', 'with /./');
    await adoptRefused('a2', ext + '//used.img', 409, 'PATH_IN_USE', 'with //');
    await adoptRefused('a2', path.join(ext, 'dir', '..', 'used.img'), 409, 'PATH_IN_USE', 'with dir/..');
    fs.linkSync(img, path.join(ext, 'used-hardlink'));
    await adoptRefused('a2', path.join(ext, 'used-hardlink'), 409, 'PATH_IN_USE', 'a hard link to it');
    fs.linkSync(virt, path.join(ext, 'virt-hardlink'));
    await adoptRefused('a2', path.join(ext, 'virt-hardlink'), 409, 'PATH_IN_USE', 'a hard link to a virtual disk');
    assert.equal((await d.api('DELETE', '/v1/disks/used')).status, 200);
  });

  test("adopt refuses a disk's staging area, also through a hard link", async () => {
    await d.createDisk('staged', '1M');
    const area = path.join(ext, 'staging.area');
    const r = await d.api('POST', '/v1/disks/staged/staging', { path: area, size: '64M' });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    try {
      await adoptRefused('a3', area, 409, 'PATH_IN_USE', 'the staging area file');
      fs.linkSync(area, path.join(ext, 'staging-hardlink'));
      await adoptRefused('a3', path.join(ext, 'staging-hardlink'), 409, 'PATH_IN_USE', 'a hard link to the staging area');
      assertError(await rawApi(d, 'DELETE', '/v1/disks/staged'), 409, 'DISK_BUSY', 'remove a disk with a staging area');
    } finally {
      assert.equal((await d.api('DELETE', '/v1/disks/staged/staging')).status, 200);
      fs.rmSync(path.join(ext, 'staging-hardlink'), { force: true });
    }
    assert.equal((await d.api('DELETE', '/v1/disks/staged?purge=true')).status, 200);
  });

  test('adopt serves the file as-is, and NBD writes change only the bytes written', async () => {
    const img = image('legacy.img', 3 << 20);
    const original = fs.readFileSync(img);
    const st0 = fs.statSync(img);
    fs.symlinkSync(img, path.join(ext, 'legacy-link'));
    const r = await d.api('POST', '/v1/disks/adopt', { name: 'legacy', path: path.join(ext, 'legacy-link') });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    assertSchema(DiskSchema, r.body, 'adopted disk');
    assert.equal(r.body.kind, 'adopted');
    assert.equal(r.body.pool, null);
    assert.equal(r.body.path, img, 'the symlink is resolved');
    assert.equal(r.body.size, 3 << 20);
    assert.equal(r.body.state, 'online');
    assert.equal(r.body.readOnly, false);
    const st1 = fs.statSync(img);
    assert.equal(sha256File(img), crypto.createHash('sha256').update(original).digest('hex'), 'adoption wrote nothing');
    assert.equal(st1.size, st0.size);
    assert.equal(st1.mtimeMs, st0.mtimeMs);

    const read = await run('qemu-io', ['-f', 'raw', '-c', `read -v 0 16`, d.uri('legacy')], { timeoutMs: 60_000 });
    assert.equal(read.code, 0, read.stderr);
    assert.ok(read.stdout.startsWith('00000000:  ' + [...original.subarray(0, 4)].map((b) => b.toString(16).padStart(2, '0')).join(' ')), read.stdout);

    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 4096 4096', d.uri('legacy')], { timeoutMs: 60_000 });
    assert.equal(w.code, 0, w.stderr);
    const after = fs.readFileSync(img);
    assert.equal(after.length, original.length, 'the file size is unchanged');
    assert.ok(after.subarray(0, 4096).equals(original.subarray(0, 4096)), 'bytes before the write are unchanged');
    assert.ok(after.subarray(4096, 8192).equals(Buffer.alloc(4096, 0x5a)), 'the written range holds the data');
    assert.ok(after.subarray(8192).equals(original.subarray(8192)), 'bytes after the write are unchanged');
    const info = (await d.api('GET', '/v1/disks/legacy')).body;
    assert.equal(info.stats.writeBytes, 4096);
  });

  test('a read-only adopted disk refuses NBD writes and its file stays the same', async () => {
    const img = image('ro.img', 1 << 20);
    const sum = sha256File(img);
    const r = await d.api('POST', '/v1/disks/adopt', { name: 'ro', path: img, readOnly: true });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    assert.equal(r.body.readOnly, true);
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 4096', d.uri('ro')], { timeoutMs: 60_000 });
    assert.notEqual(w.code, 0, 'the write is refused');
    assert.equal(sha256File(img), sum);
    assert.equal((await d.api('DELETE', '/v1/disks/ro')).status, 200);
  });

  test('remove --purge of an adopted disk is 400 BAD_REQUEST; without purge the file stays', async () => {
    const img = image('keep.img', 1 << 20);
    assert.equal((await d.api('POST', '/v1/disks/adopt', { name: 'keep', path: img })).status, 201);
    const sum = sha256File(img);
    const before = await snapshot(d, [ext]);
    assertError(await rawApi(d, 'DELETE', '/v1/disks/keep?purge=true'), 400, 'BAD_REQUEST', 'purge adopted');
    await assertUnchanged(d, before, 'purge adopted', [ext]);
    assert.equal((await d.api('GET', '/v1/disks/keep')).status, 200, 'still registered');
    const r = await d.api('DELETE', '/v1/disks/keep?purge=false');
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.name, 'keep');
    assert.equal(sha256File(img), sum, 'the adopted data is untouched');
    assertError(await rawApi(d, 'GET', '/v1/disks/keep'), 404, 'DISK_NOT_FOUND', 'unregistered');
  });

  test('removing a virtual disk leaves its file unless purged', async () => {
    const a = await d.createDisk('v-keep', '1M');
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 4096', d.uri('v-keep')], { timeoutMs: 60_000 });
    assert.equal(w.code, 0, w.stderr);
    const r = await d.api('DELETE', '/v1/disks/v-keep');
    assert.equal(r.status, 200);
    assert.ok(fs.existsSync(a.path), 'the file is left');
    assert.ok(fs.readFileSync(a.path).subarray(0, 4096).equals(Buffer.alloc(4096, 0x11)));
    assertError(await rawApi(d, 'POST', '/v1/disks', { body: JSON.stringify({ name: 'v-keep', size: '1M' }) }), 409, 'PATH_IN_USE', 'the left file is not overwritten');
    const again = await d.api('POST', '/v1/disks/adopt', { name: 'v-keep', path: a.path });
    assert.equal(again.status, 201, 'the left file can be adopted back');
    assert.equal((await d.api('DELETE', '/v1/disks/v-keep')).status, 200);
    fs.rmSync(a.path);

    const b = await d.createDisk('v-purge', '1M');
    const p = await d.api('DELETE', '/v1/disks/v-purge?purge=true');
    assert.equal(p.status, 200);
    assert.ok(!fs.existsSync(b.path), 'purge deletes the file');
    assertError(await rawApi(d, 'GET', '/v1/disks/v-purge'), 404, 'DISK_NOT_FOUND', 'purged');
  });

  test('removing a disk with an NBD client attached is 409 DISK_BUSY', async () => {
    const img = image('busy.img', 1 << 20);
    assert.equal((await d.api('POST', '/v1/disks/adopt', { name: 'busy-a', path: img })).status, 201);
    const v = await d.createDisk('busy-v', '1M');
    const clients = async (name: string): Promise<number> => (await d.api('GET', `/v1/disks/${name}`)).body.clients;
    for (const name of ['busy-v', 'busy-a']) {
      const conn = await holdNbd(d.nbdHost, d.nbdPort, name);
      try {
        await waitFor(`${name} to show 1 client`, async () => (await clients(name)) === 1, 15_000);
        assert.equal((await d.api('GET', '/v1/server')).body.nbdConnections, 1);
        const before = await snapshot(d, [ext]);
        assertError(await rawApi(d, 'DELETE', `/v1/disks/${name}`), 409, 'DISK_BUSY', `remove ${name}`);
        if (name === 'busy-v') assertError(await rawApi(d, 'DELETE', `/v1/disks/${name}?purge=true`), 409, 'DISK_BUSY', `purge ${name}`);
        await assertUnchanged(d, before, `remove busy ${name}`, [ext]);
      } finally {
        await conn.close();
      }
      await waitFor(`${name} to show 0 clients`, async () => (await clients(name)) === 0, 15_000);
    }
    assert.equal((await d.api('DELETE', '/v1/disks/busy-v?purge=true')).status, 200);
    assert.ok(!fs.existsSync(v.path));
    assert.equal((await d.api('DELETE', '/v1/disks/busy-a')).status, 200);
    assert.ok(fs.existsSync(img));
  });
});
