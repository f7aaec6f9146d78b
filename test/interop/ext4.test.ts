// A real file system on a Ferry disk: nbdfuse exposes the disk as a file, losetup
// turns the file into a block device, and the kernel's ext4 formats and mounts it.
// Files written there must survive unmount, e2fsck, a ferryd restart and a remount.
// Needs root, /dev/fuse and loop devices (there is no kernel nbd module to use).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, type Ferryd } from '../harness.js';
import { Attachment, Cleanup, ok, sha256File, T } from './clients.js';

const MiB = 1024 * 1024;
const DISK_SIZE = 256 * MiB;

describe('ext4 on a Ferry disk (nbdfuse + loop device)', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let att: Attachment;
  const expected = new Map<string, string>(); // path relative to the mount → sha256

  before(async () => {
    for (const t of ['nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4', 'e2fsck', 'mount', 'umount', 'blockdev']) requireTool(t);
    assert.ok(fs.existsSync('/dev/fuse'), '/dev/fuse is missing');
    d = await cleanup.ferryd();
    await d.createDisk('fs', DISK_SIZE);
    const base = cleanup.dir('ferry-ext4-');
    fs.mkdirSync(path.join(base, 'fuse'));
    fs.mkdirSync(path.join(base, 'mnt'));
    att = new Attachment(path.join(base, 'fuse'), path.join(base, 'mnt'), DISK_SIZE);
    // Runs before the daemon stops and the directories go.
    cleanup.defer(() => att.detach());
  }, T);
  after(() => cleanup.run(), T);

  function put(rel: string, data: Buffer): void {
    const p = path.join(att.mountDir, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, data);
    expected.set(rel, crypto.createHash('sha256').update(data).digest('hex'));
  }

  function checkFiles(): void {
    for (const [rel, sum] of expected) {
      const p = path.join(att.mountDir, rel);
      assert.ok(fs.existsSync(p), `${rel} is missing`);
      assert.equal(sha256File(p), sum, `${rel} changed`);
    }
  }

  it('formats the disk with mkfs.ext4 and mounts it', T, async () => {
    const loop = await att.attach(d.uri('fs'));
    await ok('mkfs.ext4', ['-q', '-F', '-L', 'ferry', loop], { timeoutMs: 180_000 });
    await att.mount();
    assert.ok(fs.existsSync(path.join(att.mountDir, 'lost+found')));
  });

  it('writes files of many sizes and a deep tree, then syncs', T, async () => {
    put('hello.txt', Buffer.from('hello, ferry\n'));
    put('empty', Buffer.alloc(0));
    put('odd.bin', crypto.randomBytes(4097));
    put('one-mib.bin', crypto.randomBytes(MiB));
    put('big/37m-plus.bin', crypto.randomBytes(37 * MiB + 123));
    put('a/b/c/d/e/deep.bin', crypto.randomBytes(300_000));
    for (let i = 0; i < 200; i++) put(`many/f${i}`, crypto.randomBytes(1 + ((i * 7919) % 20000)));
    // A file overwritten in place and a deleted one.
    put('rewritten.bin', crypto.randomBytes(2 * MiB));
    const fd = fs.openSync(path.join(att.mountDir, 'rewritten.bin'), 'r+');
    const patch = crypto.randomBytes(5000);
    fs.writeSync(fd, patch, 0, patch.length, 700_000);
    fs.closeSync(fd);
    const full = fs.readFileSync(path.join(att.mountDir, 'rewritten.bin'));
    expected.set('rewritten.bin', crypto.createHash('sha256').update(full).digest('hex'));
    fs.writeFileSync(path.join(att.mountDir, 'gone.bin'), crypto.randomBytes(3 * MiB));
    fs.rmSync(path.join(att.mountDir, 'gone.bin'));
    await ok('sync', ['-f', path.join(att.mountDir, 'hello.txt')]);
    checkFiles();
  });

  it('unmounts cleanly and e2fsck -fn finds no error', T, async () => {
    await att.unmount();
    const r = await ok('e2fsck', ['-fn', att.loop!]);
    assert.match(r.stdout, /files.*blocks/);
  });

  it('detaches, restarts ferryd, reattaches: the files are all there, unchanged', T, async () => {
    await att.detach();
    await d.restart();
    const listed = (await d.api('GET', '/v1/disks')).body.map((x: any) => x.name);
    assert.deepEqual(listed, ['fs']);
    await att.attach(d.uri('fs'));
    const fsck = await ok('e2fsck', ['-fn', att.loop!]);
    assert.match(fsck.stdout, /files.*blocks/);
    await att.mount();
    checkFiles();
    assert.ok(!fs.existsSync(path.join(att.mountDir, 'gone.bin')));
    assert.equal(fs.readdirSync(path.join(att.mountDir, 'many')).length, 200);
  });

  it('the remounted file system is writable and stays consistent', T, async () => {
    put('after-restart.bin', crypto.randomBytes(5 * MiB));
    await ok('sync', ['-f', path.join(att.mountDir, 'after-restart.bin')]);
    await att.unmount();
    await ok('e2fsck', ['-fn', att.loop!]);
    await att.mount();
    checkFiles();
    await att.detach();
  });
});
