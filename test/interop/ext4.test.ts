// A real file system on a Ferry disk: nbdfuse exposes the disk as a file, losetup
// turns the file into a block device, and the kernel's ext4 formats and mounts it.
// Files written there must survive unmount, e2fsck, a ferryd restart and a remount.
// Needs root, /dev/fuse and loop devices (there is no kernel nbd module to use).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, type Ferryd } from '../harness.js';
import { Cleanup, ok, sha256File, tool, waitFor, T } from './clients.js';

const MiB = 1024 * 1024;
const DISK_SIZE = 256 * MiB;

/** One attachment of a Ferry disk as a block device: nbdfuse → file → loop device → (mount). */
class Attachment {
  private fuse: ChildProcess | null = null;
  private fuseExited: Promise<void> = Promise.resolve();
  private fuseLog = '';
  loop: string | null = null;
  mounted = false;

  constructor(
    readonly fuseDir: string,
    readonly mountDir: string,
  ) {}

  get file(): string {
    return path.join(this.fuseDir, 'nbd');
  }

  async attach(uri: string): Promise<string> {
    const pidFile = path.join(path.dirname(this.fuseDir), `${path.basename(this.fuseDir)}.pid`);
    fs.rmSync(pidFile, { force: true });
    const proc = spawn(requireTool('nbdfuse'), ['-P', pidFile, this.fuseDir, uri], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.fuse = proc;
    this.fuseExited = new Promise((resolve) => proc.on('exit', () => resolve()));
    proc.stdout!.on('data', (b: Buffer) => (this.fuseLog += b.toString()));
    proc.stderr!.on('data', (b: Buffer) => (this.fuseLog += b.toString()));
    let exited = false;
    void this.fuseExited.then(() => (exited = true));
    await waitFor('nbdfuse to serve its file', () => {
      if (exited) throw new Error(`nbdfuse exited early: ${this.fuseLog}`);
      return fs.existsSync(pidFile) && fs.existsSync(this.file) && fs.statSync(this.file).size === DISK_SIZE;
    });
    this.loop = (await ok('losetup', ['-f', '--show', this.file])).stdout.trim();
    assert.match(this.loop, /^\/dev\/loop\d+$/);
    return this.loop;
  }

  async mount(): Promise<void> {
    await ok('mount', ['-t', 'ext4', this.loop!, this.mountDir]);
    this.mounted = true;
  }

  async unmount(): Promise<void> {
    if (!this.mounted) return;
    const r = await tool('umount', [this.mountDir]);
    if (r.code !== 0) await ok('umount', ['-l', this.mountDir]);
    this.mounted = false;
  }

  /** Undoes everything that was done, in reverse; safe to call at any point and twice. */
  async detach(): Promise<void> {
    await this.unmount();
    if (this.loop) {
      const loop = this.loop;
      await tool('blockdev', ['--flushbufs', loop]);
      await ok('losetup', ['-d', loop]);
      const backing = `/sys/block/${path.basename(loop)}/loop/backing_file`;
      await waitFor(`${loop} to detach`, () => !fs.existsSync(backing), 15_000);
      this.loop = null;
    }
    if (this.fuse) {
      const proc = this.fuse;
      let done = false;
      void this.fuseExited.then(() => (done = true));
      for (let i = 0; i < 20 && !done; i++) {
        const r = await tool('fusermount3', ['-u', this.fuseDir]);
        if (r.code === 0) break;
        await new Promise((res) => setTimeout(res, 250));
      }
      await waitFor('nbdfuse to exit', () => done, 10_000).catch(() => undefined);
      if (!done) {
        await tool('fusermount3', ['-uz', this.fuseDir]);
        proc.kill('SIGKILL');
        await this.fuseExited;
      }
      this.fuse = null;
    }
  }
}

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
    att = new Attachment(path.join(base, 'fuse'), path.join(base, 'mnt'));
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
