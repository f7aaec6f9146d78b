// Every bad mirror request is refused with a clear error code and changes nothing (SPEC "Bad
// input and faults"): the disks, pools, mirrors and staging areas as the API reports them,
// and every file under the data directory, the pool and the test's directory (name, size,
// mode, mtime) are compared before and after each refusal. Through the real CLI.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type { Ferryd } from '../harness.js';
import { qemuIoOk } from '../interop/clients.js';
import { Cleanup } from '../staging/helpers.js';
import { GiB, MiB, T, cliFails, cliJson, fillPattern, mirrorStatus, waitInSync } from './helpers.js';

const SIZE = 32 * MiB;

interface State {
  disks: unknown;
  pools: unknown;
  files: Record<string, string>;
  mirrors: unknown;
  staging: Record<string, unknown>;
}

/** path → "size mode mtime" (or "dir") for everything under dir; SQLite's own files by name only. */
function listFiles(dir: string, out: Record<string, string>): void {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) {
      out[p] = 'dir';
      listFiles(p, out);
      continue;
    }
    const st = fs.lstatSync(p);
    out[p] = /^ferry\.db(-wal|-shm|-journal)?$/.test(e.name) ? 'sqlite' : `${st.size} ${(st.mode & 0o7777).toString(8)} ${st.mtimeMs} ${e.isSymbolicLink() ? fs.readlinkSync(p) : ''}`;
  }
}

describe('mirror refusals change nothing', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let work: string;
  let rPath: string;
  let otherPath: string;
  const otherMirror = (): string => path.join(work, 'other-mirror.img');
  const otherStaging = (): string => path.join(work, 'other-staging');
  const plainStaging = (): string => path.join(work, 'plain-staging');

  before(async () => {
    d = await cleanup.ferryd();
    work = fs.realpathSync(cleanup.dir('ferry-mirror-refusals-'));
    // r: no staging area, no mirror. plain: a staging area, no mirror. other: mirrored, in sync.
    rPath = (await d.createDisk('r', SIZE)).path;
    await qemuIoOk(d.uri('r'), ['write -P 0x11 0 1M']);
    await d.createDisk('plain', SIZE);
    await cliJson(d, ['staging', 'attach', 'plain', '--path', plainStaging(), '--size', '64M']);
    otherPath = (await d.createDisk('other', SIZE)).path;
    await qemuIoOk(d.uri('other'), ['write -P 0x22 0 2M']);
    await cliJson(d, ['mirror', 'create', 'other', '--to', `local:${otherMirror()}`, '--staging', otherStaging(), '--staging-size', '64M', '--wait']);
    fs.writeFileSync(path.join(work, 'small.img'), Buffer.alloc(SIZE - 4096, 0x33));
    fs.mkdirSync(path.join(work, 'a-directory'));
    fs.symlinkSync(rPath, path.join(work, 'link-to-r.img'));
  }, T);
  after(() => cleanup.run(), T);

  /** Everything a refusal must leave alone; `live` names files that may change on their own (a sync running). */
  async function state(live: string[] = []): Promise<State> {
    const disks = ((await d.api('GET', '/v1/disks')).body as any[]).map(({ stats: _s, clients: _c, ...rest }) => rest);
    const pools = (await d.api('GET', '/v1/pools')).body as any[];
    const files: Record<string, string> = {};
    for (const dir of new Set([d.dataDir, work, ...pools.map((p) => p.path as string)])) listFiles(dir, files);
    for (const f of live) if (files[f]) files[f] = 'live';
    const mirrors = ((await d.api('GET', '/v1/mirrors')).body as any[]).map((m) => ({
      disk: m.disk,
      target: m.target,
      state: m.state,
      consistent: m.consistent,
      syncMode: m.syncMode,
      ...(m.consistent ? { syncBytes: m.syncBytes, appliedSeq: m.appliedSeq, lagRecords: m.lagRecords } : {}),
    }));
    const staging: Record<string, unknown> = {};
    for (const disk of ['r', 'plain', 'other', 'slow']) {
      const r = await d.api('GET', `/v1/disks/${disk}/staging`);
      staging[disk] =
        r.status === 200
          ? { path: r.body.path, copyPath: r.body.copyPath, size: r.body.size, consumers: r.body.consumers.map((c: any) => c.name), degraded: r.body.degraded }
          : r.body?.error?.code;
    }
    return { disks, pools, files, mirrors, staging };
  }

  async function refused(args: string[], code: string, live: string[] = []): Promise<string> {
    const before = await state(live);
    const message = await cliFails(d, args, code);
    const after = await state(live);
    const what = `ferry ${args.join(' ')} (${code}: ${message})`;
    assert.deepEqual(after.disks, before.disks, `${what}: the disks changed`);
    assert.deepEqual(after.pools, before.pools, `${what}: the pools changed`);
    assert.deepEqual(after.mirrors, before.mirrors, `${what}: the mirrors changed`);
    assert.deepEqual(after.staging, before.staging, `${what}: the staging areas changed`);
    assert.deepEqual(after.files, before.files, `${what}: files changed`);
    return message;
  }

  const create = (disk: string, to: string, ...more: string[]): string[] => ['mirror', 'create', disk, '--to', to, ...more];
  const withStaging = (name: string): string[] => ['--staging', path.join(work, name), '--staging-size', '64M'];

  it('bad targets: too small, the disk itself, used by another disk, staging area or mirror, relative, a directory, unknown scheme, a remote one', T, async () => {
    const small = await refused(create('r', `local:${path.join(work, 'small.img')}`, ...withStaging('s1')), 'TARGET_TOO_SMALL');
    assert.match(small, /small\.img/);
    await refused(create('r', `local:${rPath}`, ...withStaging('s2')), 'PATH_IN_USE');
    await refused(create('r', `local:${path.join(work, 'link-to-r.img')}`, ...withStaging('s3')), 'PATH_IN_USE');
    await refused(create('r', `local:${otherPath}`, ...withStaging('s4')), 'PATH_IN_USE');
    await refused(create('r', `local:${otherStaging()}`, ...withStaging('s5')), 'PATH_IN_USE');
    await refused(create('r', `local:${plainStaging()}`, ...withStaging('s6')), 'PATH_IN_USE');
    await refused(create('r', `local:${otherMirror()}`, ...withStaging('s7')), 'PATH_IN_USE');
    // The same new path as target and as the staging area (or its copy) of this very request.
    await refused(create('r', `local:${path.join(work, 'same')}`, ...withStaging('same')), 'PATH_IN_USE');
    await refused(create('r', `local:${path.join(work, 'same2')}`, ...withStaging('s8'), '--staging-copy', path.join(work, 'same2')), 'PATH_IN_USE');
    await refused(create('r', 'local:relative/new.img', ...withStaging('s9')), 'INVALID_PATH');
    await refused(create('r', `local:${path.join(work, 'a-directory')}`, ...withStaging('s10')), 'INVALID_TARGET');
    await refused(create('r', `local:${path.join(work, 'no-such-dir', 'new.img')}`, ...withStaging('s11')), 'PATH_NOT_FOUND');
    await refused(create('r', `foo:${path.join(work, 'new.img')}`, ...withStaging('s12')), 'INVALID_TARGET');
    await refused(create('r', 'foo', ...withStaging('s13')), 'INVALID_TARGET');
    const remote = await refused(create('r', 'site2:vol1', ...withStaging('s14')), 'PEER_NOT_FOUND');
    assert.match(remote, /site2/);
  });

  it('an existing target holding data needs --force for a full sync; a sparse one does not', T, async () => {
    const used = path.join(work, 'holds-data.img');
    fs.writeFileSync(used, Buffer.alloc(SIZE));
    const fd = fs.openSync(used, 'r+');
    fs.writeSync(fd, Buffer.from('an ext4 superblock, say'), 0, undefined, 1024);
    fs.closeSync(fd);
    const msg = await refused(create('r', `local:${used}`, ...withStaging('s40')), 'TARGET_HOLDS_DATA');
    assert.match(msg, /--force/);
    assert.match(msg, /--sync checksum/);
    await d.createDisk('f1', SIZE);
    const forced = await cliJson(d, [...create('f1', `local:${used}`, ...withStaging('s41')), '--force', '--wait']);
    assert.equal(forced.consistent, true);
    const sparse = path.join(work, 'sparse.img');
    fs.writeFileSync(sparse, '');
    fs.truncateSync(sparse, SIZE);
    await d.createDisk('f2', SIZE);
    const taken = await cliJson(d, [...create('f2', `local:${sparse}`, ...withStaging('s42')), '--wait']);
    assert.equal(taken.consistent, true, 'a sparse file holds no data: taken without --force');
  });

  it('staging: none and no --staging (NO_STAGING), --staging on a disk that has one (STAGING_EXISTS), a second mirror (MIRROR_EXISTS), checksum onto a new file', T, async () => {
    const none = await refused(create('r', `local:${path.join(work, 'new1.img')}`), 'NO_STAGING');
    assert.match(none, /--staging/);
    await refused(create('plain', `local:${path.join(work, 'new2.img')}`, ...withStaging('s20')), 'STAGING_EXISTS');
    await refused(create('other', `local:${path.join(work, 'new3.img')}`), 'MIRROR_EXISTS');
    await refused(create('other', `local:${path.join(work, 'new3.img')}`, ...withStaging('s21')), 'MIRROR_EXISTS');
    await refused(create('r', `local:${path.join(work, 'new4.img')}`, ...withStaging('s22'), '--sync', 'checksum'), 'BAD_REQUEST');
    await refused(create('plain', `local:${path.join(work, 'new5.img')}`, '--sync', 'checksum'), 'BAD_REQUEST');
  });

  it('unknown disk (DISK_NOT_FOUND) and mirror commands on a disk without a mirror (NO_MIRROR)', T, async () => {
    await refused(create('nope', `local:${path.join(work, 'new6.img')}`, ...withStaging('s30')), 'DISK_NOT_FOUND');
    for (const cmd of [['status'], ['pause'], ['resume'], ['verify'], ['swap'], ['remove'], ['remove', '--force']]) {
      await refused(['mirror', ...cmd, 'nope'], 'DISK_NOT_FOUND');
      await refused(['mirror', ...cmd, 'r'], 'NO_MIRROR');
      await refused(['mirror', ...cmd, 'plain'], 'NO_MIRROR');
    }
  });

  it('a disk with a mirror cannot be removed, nor its staging area detached (DISK_BUSY)', T, async () => {
    await refused(['disk', 'remove', 'other'], 'DISK_BUSY');
    await refused(['disk', 'remove', 'other', '--purge'], 'DISK_BUSY');
    await refused(['staging', 'detach', 'other'], 'DISK_BUSY');
  });

  it('paused: no swap (MIRROR_NOT_IN_SYNC), no verify, no second pause, no resume when running', T, async () => {
    await refused(['mirror', 'resume', 'other'], 'BAD_REQUEST');
    await cliJson(d, ['mirror', 'pause', 'other']);
    await refused(['mirror', 'swap', 'other'], 'MIRROR_NOT_IN_SYNC');
    await refused(['mirror', 'verify', 'other'], 'BAD_REQUEST');
    await refused(['mirror', 'pause', 'other'], 'BAD_REQUEST');
    await refused(['disk', 'remove', 'other'], 'DISK_BUSY');
    await cliJson(d, ['mirror', 'resume', 'other']);
    await waitInSync(d, 'other');
  });

  it('syncing: no swap, no remove without --force (MIRROR_NOT_IN_SYNC); the same while the sync is paused', T, async (t) => {
    // 2 GiB of data: the sync runs for a while.
    const image = path.join(work, 'slow.img');
    fillPattern(image, 0, 2 * GiB, 4);
    assert.equal((await d.api('POST', '/v1/disks/adopt', { name: 'slow', path: image })).status, 201);
    const target = path.join(work, 'slow-mirror.img');
    const live = [target, path.join(work, 'slow-staging')];
    // A 2 GiB sync can end within seconds, and a CLI start takes about one: create it and
    // refuse through the API, milliseconds apart, then pause it and check the rest by CLI.
    const created = await d.api('POST', '/v1/disks/slow/mirror', { to: `local:${target}`, staging: path.join(work, 'slow-staging'), stagingSize: '64M' });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    assert.equal(created.body.state, 'syncing');
    const swapNow = await d.api('POST', '/v1/disks/slow/mirror/swap');
    const removeNow = await d.api('DELETE', '/v1/disks/slow/mirror');
    const still = (await d.api('GET', '/v1/disks/slow/mirror')).body;
    assert.equal((await d.api('POST', '/v1/disks/slow/mirror/pause')).status, 200);
    assert.equal(still.state, 'syncing', `the refusals must have happened while it synced: ${JSON.stringify(still)}`);
    t.diagnostic(`still syncing after the refusals: ${(still.syncProgress * 100).toFixed(1)}%`);
    assert.equal(swapNow.status, 409);
    assert.equal(swapNow.body.error.code, 'MIRROR_NOT_IN_SYNC');
    assert.match(swapNow.body.error.message, /syncing/);
    assert.equal(removeNow.status, 409);
    assert.equal(removeNow.body.error.code, 'MIRROR_NOT_IN_SYNC');
    assert.match(removeNow.body.error.message, /--force/);
    await refused(['staging', 'detach', 'slow'], 'DISK_BUSY', live);
    await refused(['mirror', 'swap', 'slow'], 'MIRROR_NOT_IN_SYNC', live);
    await refused(['mirror', 'remove', 'slow'], 'MIRROR_NOT_IN_SYNC', live);
    // --force abandons it: the incomplete copy stays, the disk goes on without a mirror.
    const removed = await cliJson(d, ['mirror', 'remove', 'slow', '--force']);
    assert.equal(removed.consistent, false);
    assert.ok(fs.existsSync(target));
    await cliFails(d, ['mirror', 'status', 'slow'], 'NO_MIRROR');
    const staging = await d.api('GET', '/v1/disks/slow/staging');
    assert.deepEqual(
      staging.body.consumers.map((c: any) => c.name),
      ['primary'],
      'the mirror no longer holds the staging area',
    );
  });
});
