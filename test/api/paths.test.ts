// Paths Ferry must never take (issue 12): nothing under the data directory (its metadata, the
// replication key in <data>/repl, any depth, the directory itself, a directory holding it)
// may become a pool, an adopted disk, a staging area or its copy, or a mirror target; only
// the default pool <data>/pool that Ferry creates is usable. Nothing in /proc, /sys or /dev
// either, except a block device under /dev. A path with a NUL byte is INVALID_PATH (it was a
// 500). Symlinks, hard links and /proc/self/root spellings do not get around the rule. Each
// refusal changes nothing: no pool or disk, no file created under the data directory, the
// pools, the test's directory or /dev/shm. Through the API of a real ferryd.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, run, startFerryd, tmpDir, type Ferryd } from '../harness.js';
import { assertError, assertUnchanged, cleanup, rawApi, snapshot } from './helpers.js';

describe('API: paths inside the data directory or the kernel’s file systems are refused', () => {
  let d: Ferryd;
  let ext: string;
  let data: string;
  let key: string;
  const shmNames: string[] = [];

  before(async () => {
    d = await startFerryd();
    ext = fs.realpathSync(tmpDir('ferry-paths-'));
    data = fs.realpathSync(d.dataDir);
    key = path.join(data, 'repl', 'key.pem');
    assert.ok(fs.existsSync(key), `the site key ${key} exists`);
    await d.createDisk('st', '1M');
  });
  after(async () => {
    for (const n of shmNames) fs.rmSync(path.join('/dev/shm', n), { force: true });
    await cleanup(d, ext);
  });

  /** A name in /dev/shm (a tmpfs under /dev), removed after the suite. */
  function shm(name: string): string {
    const n = `ferry-paths-${process.pid}-${name}`;
    shmNames.push(n);
    return path.join('/dev/shm', n);
  }

  /** `paths`: those of the request; the ones that do not exist yet must not exist after it either. */
  async function refused(method: string, url: string, body: Record<string, unknown>, status: number, code: string, what: string, paths: string[] = []): Promise<void> {
    const mustNotExist = paths.filter((p) => !p.includes('\0') && !fs.existsSync(p));
    const before = await snapshot(d, [ext]);
    const r = await rawApi(d, method, url, { body: JSON.stringify(body) });
    assertError(r, status, code, what);
    await assertUnchanged(d, before, what, [ext]);
    for (const p of mustNotExist) assert.ok(!fs.existsSync(p), `${what}: ${p} was created`);
  }

  test('pool add: a directory of the data directory, /proc, /sys, /dev, a NUL byte', async () => {
    const add = (p: string, status: number, code: string, what: string): Promise<void> => refused('POST', '/v1/pools', { name: 'p1', path: p }, status, code, what);
    fs.mkdirSync(path.join(data, 'mine'));
    await add(path.join(data, 'repl'), 400, 'INVALID_PATH', '<data>/repl (the site key)');
    await add(path.join(data, 'mine'), 400, 'INVALID_PATH', 'a new directory of the data directory');
    fs.symlinkSync(path.join(data, 'repl'), path.join(ext, 'repl-link'));
    await add(path.join(ext, 'repl-link'), 400, 'INVALID_PATH', 'a symlink to <data>/repl');
    await add(`/proc/self/root${data}/repl`, 400, 'INVALID_PATH', '<data>/repl through /proc/self/root');
    await add(data, 409, 'PATH_IN_USE', 'the data directory (it holds the default pool)');
    for (const p of ['/proc', '/proc/self', '/sys', '/sys/kernel', '/dev', '/dev/shm']) await add(p, 400, 'INVALID_PATH', p);
    await add(`${ext}/a\u0000b`, 400, 'INVALID_PATH', 'a NUL byte');
    await add('/\u0000', 400, 'INVALID_PATH', 'a NUL byte after /');
    fs.rmdirSync(path.join(data, 'mine'));
    // A directory elsewhere is still a pool.
    fs.mkdirSync(path.join(ext, 'good-pool'));
    const r = await d.api('POST', '/v1/pools', { name: 'good', path: path.join(ext, 'good-pool') });
    assert.equal(r.status, 201, JSON.stringify(r.body));
  });

  test("disk adopt: the site's private key (the issue's exploit), hard links, /proc, /sys, /dev files, a NUL byte", async () => {
    const adopt = (p: string, status: number, code: string, what: string): Promise<void> => refused('POST', '/v1/disks/adopt', { name: 'a1', path: p, readOnly: true }, status, code, what);
    await adopt(key, 400, 'INVALID_PATH', '<data>/repl/key.pem');
    fs.linkSync(key, path.join(ext, 'key-hardlink.pem'));
    await adopt(path.join(ext, 'key-hardlink.pem'), 400, 'INVALID_PATH', 'a hard link to <data>/repl/key.pem');
    await adopt(`/proc/self/root${key}`, 400, 'INVALID_PATH', 'the key through /proc/self/root');
    await adopt(path.join(data, 'pool', '..', 'repl', 'key.pem'), 400, 'INVALID_PATH', 'the key through the default pool');
    for (const p of ['/proc/version', '/proc/self/status', '/sys/kernel/notes', '/dev/null', '/dev/zero', '/dev/urandom']) await adopt(p, 400, 'INVALID_PATH', p);
    const shmFile = shm('adopt.img');
    fs.writeFileSync(shmFile, Buffer.alloc(65536, 0x41));
    await adopt(shmFile, 400, 'INVALID_PATH', 'a regular file in /dev/shm');
    await adopt(`${ext}/x\u0000.img`, 400, 'INVALID_PATH', 'a NUL byte');
    // The default pool is Ferry's place for disks: a file there may be adopted.
    const inPool = path.join(data, 'pool', 'extra.img');
    fs.writeFileSync(inPool, Buffer.alloc(65536, 0x42));
    const r = await d.api('POST', '/v1/disks/adopt', { name: 'extra', path: inPool });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    assert.equal((await d.api('DELETE', '/v1/disks/extra')).status, 200);
    fs.rmSync(inPool);
  });

  test('disk adopt after pool add of <data>/repl: the key is never served', async () => {
    // The sequence of the issue: both steps refused; neither a pool nor a disk appears.
    assertError(await rawApi(d, 'POST', '/v1/pools', { body: JSON.stringify({ name: 'keys', path: path.join(data, 'repl') }) }), 400, 'INVALID_PATH', 'pool add <data>/repl');
    assertError(await rawApi(d, 'POST', '/v1/disks/adopt', { body: JSON.stringify({ name: 'key', path: key, readOnly: true }) }), 400, 'INVALID_PATH', 'adopt the key');
    assertError(await rawApi(d, 'GET', '/v1/disks/key'), 404, 'DISK_NOT_FOUND', 'no disk key');
  });

  test('staging attach: a path or copy in the data directory, /proc, /sys, /dev, a NUL byte; nothing is created', async () => {
    const attach = (p: string, copy: string | undefined, what: string): Promise<void> =>
      refused('POST', '/v1/disks/st/staging', { path: p, size: '64M', ...(copy !== undefined ? { copy } : {}) }, 400, 'INVALID_PATH', what, [p, ...(copy ? [copy] : [])]);
    await attach(path.join(data, 'st.stg'), undefined, 'a new file in the data directory');
    await attach(path.join(data, 'repl', 'st.stg'), undefined, 'a new file in <data>/repl');
    await attach(path.join(data, 'replica-staging-x.stg'), undefined, 'a name like the replicas’');
    await attach(path.join(ext, 'ok.stg'), path.join(data, 'copy.stg'), 'a copy in the data directory');
    await attach(path.join(ext, 'ok.stg'), path.join(ext, 'repl-link', 'copy.stg'), 'a copy through a symlink to <data>/repl');
    await attach(shm('st.stg'), undefined, 'a new file in /dev/shm');
    await attach(path.join(ext, 'ok.stg'), shm('copy.stg'), 'a copy in /dev/shm');
    await attach('/proc/st.stg', undefined, 'a new file in /proc');
    await attach('/sys/st.stg', undefined, 'a new file in /sys');
    await attach('/dev/null', undefined, 'a character device');
    await attach(`${ext}/st\u0000.stg`, undefined, 'a NUL byte in the path');
    await attach(path.join(ext, 'ok.stg'), `${ext}/c\u0000.stg`, 'a NUL byte in the copy');
    assert.ok(!fs.existsSync(path.join(ext, 'ok.stg')), 'the good staging path was not created either');
  });

  test('mirror create: a target or staging area in the data directory, /proc, /sys, /dev, a NUL byte; nothing is created', async () => {
    await d.createDisk('mi', '1M');
    const create = (to: string, staging: string, what: string): Promise<void> =>
      refused('POST', '/v1/disks/mi/mirror', { to, staging, stagingSize: '64M' }, 400, 'INVALID_PATH', what, [to.slice('local:'.length), staging]);
    const goodTarget = `local:${path.join(ext, 'mi-mirror.img')}`;
    const goodStaging = path.join(ext, 'mi.stg');
    await create(`local:${path.join(data, 'mi-mirror.img')}`, goodStaging, 'a target in the data directory');
    await create(`local:${path.join(data, 'repl', 'mi-mirror.img')}`, goodStaging, 'a target in <data>/repl');
    await create(`local:${key}`, goodStaging, 'the site key as the target');
    await create(`local:${path.join(ext, 'key-hardlink.pem')}`, goodStaging, 'a hard link to the key as the target');
    await create(`local:${shm('mi-mirror.img')}`, goodStaging, 'a target in /dev/shm');
    await create('local:/proc/mi-mirror.img', goodStaging, 'a target in /proc');
    await create('local:/sys/kernel/notes', goodStaging, 'a /sys file as the target');
    await create(`local:${ext}/m\u0000.img`, goodStaging, 'a NUL byte in the target');
    await create(goodTarget, path.join(data, 'mi.stg'), 'a staging area in the data directory');
    await create(goodTarget, shm('mi.stg'), 'a staging area in /dev/shm');
    await create(goodTarget, `${ext}/s\u0000.stg`, 'a NUL byte in the staging path');
    assert.ok(!fs.existsSync(path.join(ext, 'mi-mirror.img')) && !fs.existsSync(goodStaging), 'the good paths were not created either');
    // The same request with paths outside works.
    const r = await d.api('POST', '/v1/disks/mi/mirror', { to: goodTarget, staging: goodStaging, stagingSize: '64M' });
    assert.equal(r.status, 201, JSON.stringify(r.body));
  });

  test('a disk registered before these rules with a path in the data directory is not served after a restart', async () => {
    const legit = path.join(ext, 'legit.img');
    fs.writeFileSync(legit, Buffer.alloc(1024 * 1024));
    const adopted = await d.api('POST', '/v1/disks/adopt', { name: 'old-key', path: legit, readOnly: true });
    assert.equal(adopted.status, 201, JSON.stringify(adopted.body));
    await d.stop();
    // What an older ferryd could have registered: the disk's row naming the site's key.
    const py = await run('/usr/bin/python3', ['-c', 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute("update disks set path=? where name=?", (sys.argv[2], "old-key")); c.commit()', path.join(data, 'ferry.db'), key]);
    assert.equal(py.code, 0, py.stderr);
    await d.start();
    const disk = await d.api('GET', '/v1/disks/old-key');
    assert.equal(disk.status, 200, JSON.stringify(disk.body));
    assert.equal(disk.body.state, 'unavailable');
    assert.match(disk.body.error, /part of Ferry's own data directory/);
    const info = await run(requireTool('nbdinfo'), [d.uri('old-key')]);
    assert.notEqual(info.code, 0, 'the key is not served over NBD');
    const removed = await d.api('DELETE', '/v1/disks/old-key');
    assert.equal(removed.status, 200, JSON.stringify(removed.body));
    assert.ok(fs.existsSync(key), 'removing the disk leaves the key where it was');
  });
});
