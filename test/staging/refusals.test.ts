// Bad staging-area requests get a clear error and change nothing: after each refusal the
// disk list, every disk's staging state, the files in every directory involved (names,
// sizes, modification times) and the content of files that must not be touched are
// exactly as before. Through the real CLI (and the API for malformed bodies).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, type Ferryd } from '../harness.js';
import { Cleanup, MiB, assertHealthy, cliJson, lastJson, ok, runBounded } from './helpers.js';

function sha256File(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** Names, sizes and modification times of every entry under `dir` (recursively). */
function listing(dir: string): Array<[string, number, number]> {
  const out: Array<[string, number, number]> = [];
  const walk = (d: string): void => {
    for (const name of fs.readdirSync(d).sort()) {
      const p = path.join(d, name);
      const st = fs.lstatSync(p);
      out.push([path.relative(dir, p), st.isDirectory() ? 0 : st.size, st.isDirectory() ? 0 : st.mtimeMs]);
      if (st.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return out;
}

describe('staging area refusals change nothing', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let work: string;
  let dev2: string;
  let existing: string;
  let existingSum: string;
  const paths: Record<string, string> = {};
  const watchedDirs: string[] = [];

  /** Everything a refusal must leave alone. */
  async function snapshot(): Promise<unknown> {
    const disks = await d.api('GET', '/v1/disks');
    assert.equal(disks.status, 200);
    const view = [];
    for (const x of disks.body) {
      const s = await d.api('GET', `/v1/disks/${x.name}/staging`);
      const staging = s.status === 200 ? { path: s.body.path, copyPath: s.body.copyPath, size: s.body.size, copies: s.body.copies, nextSeq: s.body.nextSeq, consumers: s.body.consumers } : s.body.error.code;
      view.push({ name: x.name, kind: x.kind, path: x.path, size: x.size, readOnly: x.readOnly, state: x.state, staging });
    }
    return {
      disks: view,
      files: watchedDirs.map((dir) => [dir, listing(dir)]),
      // The data directory: only names (SQLite's -wal and -shm change on their own).
      data: fs.readdirSync(d.dataDir).sort(),
      existing: sha256File(existing),
    };
  }

  /** Runs `ferry ARGS` expecting refusal `code` (or one of several), and checks that nothing changed. */
  async function refused(args: string[], code: string | string[], message?: RegExp): Promise<void> {
    const before = await snapshot();
    const r = await d.cli([...args, '--json']);
    assert.equal(r.code, 1, `ferry ${args.join(' ')} should have been refused with ${code}:\n${r.stdout}${r.stderr}`);
    const err = lastJson<{ error: { code: string; message: string } }>(r.stderr).error;
    assert.ok((Array.isArray(code) ? code : [code]).includes(err.code), `ferry ${args.join(' ')}: ${r.stderr}`);
    const msg = err.message;
    if (message) assert.match(msg, message);
    assert.deepEqual(await snapshot(), before, `ferry ${args.join(' ')} (${code}: ${msg}) changed something`);
  }

  async function refusedApi(method: string, url: string, body: unknown, code: string): Promise<void> {
    const before = await snapshot();
    const r = await d.api(method, url, body);
    assert.ok(r.status >= 400, JSON.stringify(r.body));
    assert.equal(r.body?.error?.code, code, JSON.stringify(r.body));
    assert.deepEqual(await snapshot(), before, `${method} ${url} ${JSON.stringify(body)} changed something`);
  }

  before(async () => {
    d = await cleanup.ferryd();
    work = cleanup.dir('ferry-refusals-');
    dev2 = cleanup.dir('ferry-refusals-dev2-');
    watchedDirs.push(work, dev2, path.join(d.dataDir, 'pool'));
    existing = path.join(work, 'existing.bin');
    fs.writeFileSync(existing, crypto.randomBytes(100_000));
    existingSum = sha256File(existing);
    await d.createDisk('plain', 8 * MiB);
    await d.createDisk('other', 8 * MiB);
    await d.createDisk('staged', 8 * MiB);
    await d.createDisk('gone', 8 * MiB);
    const ro = await d.api('POST', '/v1/disks', { name: 'ro', size: '8M', readOnly: true });
    assert.equal(ro.status, 201, JSON.stringify(ro.body));
    paths.staged = path.join(work, 'staged.stg');
    paths.stagedCopy = path.join(dev2, 'staged.copy');
    paths.gone = path.join(work, 'gone.stg');
    paths.goneCopy = path.join(dev2, 'gone.copy');
    assertHealthy(await cliJson(d, ['staging', 'attach', 'staged', '--path', paths.staged, '--size', '64M', '--copy', paths.stagedCopy]), 2);
    assertHealthy(await cliJson(d, ['staging', 'attach', 'gone', '--path', paths.gone, '--size', '64M', '--copy', paths.goneCopy]), 2);
    // A copy whose file is gone: its path still belongs to that staging area (repair recreates it there).
    fs.rmSync(paths.goneCopy);
  });
  after(() => cleanup.run());

  it('a staging area below 64 MiB: STAGING_TOO_SMALL', async () => {
    await refused(['staging', 'attach', 'plain', '--path', path.join(work, 'p.stg'), '--size', '63M'], 'STAGING_TOO_SMALL', /64MiB/);
    await refused(['staging', 'attach', 'plain', '--path', path.join(work, 'p.stg'), '--size', String(64 * MiB - 1)], 'STAGING_TOO_SMALL');
    await refused(['staging', 'attach', 'plain', '--path', path.join(work, 'p.stg'), '--size', '0'], 'STAGING_TOO_SMALL');
  });

  it('bad paths: relative, existing file, the disk itself, another disk, another staging area (or its copy), Ferry metadata', async () => {
    await refused(['staging', 'attach', 'plain', '--path', 'relative/p.stg', '--size', '64M'], 'INVALID_PATH', /absolute/);
    await refused(['staging', 'attach', 'plain', '--path', path.join(work, 'p.stg'), '--size', '64M', '--copy', 'relative/c.stg'], 'INVALID_PATH', /absolute/);
    await refused(['staging', 'attach', 'plain', '--path', existing, '--size', '64M'], 'PATH_IN_USE', /exists/);
    await refused(['staging', 'attach', 'plain', '--path', path.join(work, 'p.stg'), '--size', '64M', '--copy', existing], 'PATH_IN_USE');
    const plainPath = (await d.api('GET', '/v1/disks/plain')).body.path;
    const otherPath = (await d.api('GET', '/v1/disks/other')).body.path;
    await refused(['staging', 'attach', 'plain', '--path', plainPath, '--size', '64M'], 'PATH_IN_USE');
    const link = path.join(dev2, 'plain-link.img');
    fs.symlinkSync(plainPath, link);
    await refused(['staging', 'attach', 'plain', '--path', link, '--size', '64M'], 'PATH_IN_USE');
    fs.rmSync(link);
    await refused(['staging', 'attach', 'plain', '--path', otherPath, '--size', '64M'], 'PATH_IN_USE');
    await refused(['staging', 'attach', 'plain', '--path', paths.staged, '--size', '64M'], 'PATH_IN_USE');
    await refused(['staging', 'attach', 'plain', '--path', path.join(work, 'p.stg'), '--size', '64M', '--copy', paths.stagedCopy], 'PATH_IN_USE');
    await refused(['staging', 'attach', 'plain', '--path', paths.goneCopy, '--size', '64M'], 'PATH_IN_USE', /gone/);
    // Ferry's own metadata, existing or not yet (SQLite creates ferry.db-journal on its own).
    await refused(['staging', 'attach', 'plain', '--path', path.join(d.dataDir, 'ferry.db'), '--size', '64M'], ['INVALID_PATH', 'PATH_IN_USE']);
    await refused(['staging', 'attach', 'plain', '--path', path.join(d.dataDir, 'ferry.db-journal'), '--size', '64M'], 'INVALID_PATH');
    await refused(['staging', 'attach', 'plain', '--path', path.join(d.dataDir, 'api-token'), '--size', '64M'], 'INVALID_PATH');
    // A parent that is missing, or not a directory.
    await refused(['staging', 'attach', 'plain', '--path', path.join(work, 'no-such-dir', 'p.stg'), '--size', '64M'], 'PATH_NOT_FOUND');
    await refused(['staging', 'attach', 'plain', '--path', path.join(existing, 'p.stg'), '--size', '64M'], 'INVALID_PATH');
  });

  it('--copy equal to --path (also spelled differently): PATH_IN_USE', async () => {
    const p = path.join(work, 'p.stg');
    await refused(['staging', 'attach', 'plain', '--path', p, '--size', '64M', '--copy', p], 'PATH_IN_USE');
    fs.mkdirSync(path.join(work, 'sub'));
    await refused(['staging', 'attach', 'plain', '--path', p, '--size', '64M', '--copy', path.join(work, 'sub', '..', 'p.stg')], 'PATH_IN_USE');
    await refused(['staging', 'attach', 'plain', '--path', p, '--size', '64M', '--copy', `${work}//./p.stg`], 'PATH_IN_USE');
    fs.rmdirSync(path.join(work, 'sub'));
  });

  it('bad sizes, a read-only disk, malformed API bodies', async () => {
    const p = path.join(work, 'p.stg');
    await refused(['staging', 'attach', 'plain', '--path', p], 'INVALID_SIZE', /--size/);
    await refused(['staging', 'attach', 'plain', '--path', p, '--size', 'lots'], 'INVALID_SIZE');
    await refused(['staging', 'attach', 'plain', '--path', p, '--size', '-64M'], 'INVALID_SIZE');
    await refused(['staging', 'attach', 'ro', '--path', p, '--size', '64M'], 'READ_ONLY');
    await refusedApi('POST', '/v1/disks/plain/staging', '{"path": ', 'BAD_REQUEST');
    await refusedApi('POST', '/v1/disks/plain/staging', { path: p, size: '64M', surprise: true }, 'BAD_REQUEST');
    await refusedApi('POST', '/v1/disks/plain/staging', { size: '64M' }, 'BAD_REQUEST');
    await refusedApi('POST', '/v1/disks/plain/staging', { path: 42, size: '64M' }, 'BAD_REQUEST');
  });

  it('attach twice: STAGING_EXISTS; detach, show and repair without one: NO_STAGING', async () => {
    await refused(['staging', 'attach', 'staged', '--path', path.join(work, 'again.stg'), '--size', '64M'], 'STAGING_EXISTS');
    await refused(['staging', 'attach', 'staged', '--path', paths.staged, '--size', '64M'], 'STAGING_EXISTS');
    await refused(['staging', 'detach', 'plain'], 'NO_STAGING');
    await refused(['staging', 'show', 'plain'], 'NO_STAGING');
    await refused(['staging', 'repair', 'plain'], 'NO_STAGING');
  });

  it('an unknown disk: DISK_NOT_FOUND for attach, show, detach and repair', async () => {
    await refused(['staging', 'attach', 'nosuch', '--path', path.join(work, 'p.stg'), '--size', '64M'], 'DISK_NOT_FOUND');
    await refused(['staging', 'show', 'nosuch'], 'DISK_NOT_FOUND');
    await refused(['staging', 'detach', 'nosuch'], 'DISK_NOT_FOUND');
    await refused(['staging', 'repair', 'nosuch'], 'DISK_NOT_FOUND');
    await refused(['staging', 'show', 'bad name'], 'INVALID_NAME');
  });

  it('removing a disk that has a staging area: DISK_BUSY (with or without --purge)', async () => {
    await refused(['disk', 'remove', 'staged'], 'DISK_BUSY', /staging/);
    await refused(['disk', 'remove', 'staged', '--purge'], 'DISK_BUSY', /staging/);
  });

  it('repair when no copy failed: BAD_REQUEST', async () => {
    await refused(['staging', 'repair', 'staged'], 'BAD_REQUEST', /no failed copy/);
  });

  it('a copy that cannot be created (no space): the staging file already made is removed again', async () => {
    requireTool('mount');
    const small = cleanup.dir('ferry-refusals-tmpfs-');
    await ok('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', small]);
    cleanup.defer(async () => {
      await runBounded(requireTool('umount'), [small]);
    });
    watchedDirs.push(small);
    try {
      await refused(['staging', 'attach', 'plain', '--path', path.join(work, 'p.stg'), '--size', '64M', '--copy', path.join(small, 'c.stg')], 'NO_SPACE');
      assert.ok(!fs.existsSync(path.join(work, 'p.stg')));
    } finally {
      watchedDirs.pop();
    }
  });

  it('block devices: too small, another node of a disk device, of another staging device, or of the --path device as --copy', async () => {
    for (const t of ['losetup', 'mknod']) requireTool(t);
    const loops: string[] = [];
    cleanup.defer(async () => {
      for (const l of loops) await runBounded(requireTool('losetup'), ['-d', l]);
    });
    const attachLoop = async (name: string, bytes: number): Promise<{ dev: string; file: string }> => {
      const file = path.join(dev2, name);
      fs.writeFileSync(file, Buffer.alloc(0));
      fs.truncateSync(file, bytes);
      const dev = (await ok('losetup', ['-f', '--show', file])).stdout.trim();
      loops.push(dev);
      return { dev, file };
    };
    const alias = async (dev: string, name: string): Promise<string> => {
      const st = fs.statSync(dev);
      const p = path.join(dev2, name);
      await ok('mknod', [p, 'b', String(Math.floor(st.rdev / 256) & 0xfff), String((st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00))]);
      assert.equal(fs.statSync(p).rdev, st.rdev);
      return p;
    };
    const small = await attachLoop('small.img', 32 * MiB);
    const adopted = await attachLoop('adopted.img', 80 * MiB);
    const free = await attachLoop('free.img', 80 * MiB);
    fs.writeFileSync(adopted.file, crypto.randomBytes(MiB));
    const adoptedSum = sha256File(adopted.file);
    const ad = await d.api('POST', '/v1/disks/adopt', { name: 'blk', path: adopted.dev });
    assert.equal(ad.status, 201, JSON.stringify(ad.body));
    const adoptedAlias = await alias(adopted.dev, 'adopted-alias');
    const freeAlias = await alias(free.dev, 'free-alias');

    await refused(['staging', 'attach', 'plain', '--path', small.dev], 'STAGING_TOO_SMALL');
    await refused(['staging', 'attach', 'plain', '--path', path.join(work, 'p.stg'), '--size', '64M', '--copy', small.dev], 'STAGING_TOO_SMALL');
    await refused(['staging', 'attach', 'plain', '--path', adopted.dev], 'PATH_IN_USE');
    await refused(['staging', 'attach', 'plain', '--path', adoptedAlias], 'PATH_IN_USE', /blk/);
    await refused(['staging', 'attach', 'blk', '--path', adoptedAlias], 'PATH_IN_USE');
    await refused(['staging', 'attach', 'plain', '--path', free.dev, '--copy', freeAlias], 'PATH_IN_USE');
    await refused(['staging', 'attach', 'plain', '--path', freeAlias, '--copy', free.dev], 'PATH_IN_USE');
    assert.equal(sha256File(adopted.file), adoptedSum, "the adopted disk's device is untouched");

    // The free device is fine on its own; then another node of it is taken.
    const s = await cliJson(d, ['staging', 'attach', 'other', '--path', free.dev]);
    assertHealthy(s, 1);
    assert.equal(s.size, 80 * MiB);
    await refused(['staging', 'attach', 'plain', '--path', freeAlias], 'PATH_IN_USE', /other/);
    await refused(['staging', 'attach', 'plain', '--path', path.join(work, 'p.stg'), '--size', '64M', '--copy', freeAlias], 'PATH_IN_USE', /other/);
    await cliJson(d, ['staging', 'detach', 'other']);
    assert.ok(fs.existsSync(free.dev), 'a block device is never deleted at detach');
    await cliJson(d, ['disk', 'remove', 'blk']);
  });

  it('after all those refusals, a good request still works', async () => {
    const p = path.join(work, 'p.stg');
    const c = path.join(dev2, 'p.copy');
    const s = await cliJson(d, ['staging', 'attach', 'plain', '--path', p, '--size', '64M', '--copy', c]);
    assertHealthy(s, 2);
    assert.equal(fs.statSync(p).size, 64 * MiB);
    assert.equal(fs.statSync(c).size, 64 * MiB);
    await cliJson(d, ['staging', 'detach', 'plain']);
    assert.ok(!fs.existsSync(p) && !fs.existsSync(c), 'the files Ferry created are deleted at detach');
    assert.equal(sha256File(existing), existingSum);
  });
});
