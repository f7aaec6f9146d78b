// Real clients on staged disks (a disk with a staging area in front of it):
//  - fio's nbd engine, random mixed reads and writes at queue depth 32 with crc32c
//    verification, then a verify-only pass after a kill -9 and restart;
//  - ext4 through nbdfuse + a loop device: mkfs, files, sync, umount, e2fsck -fn clean,
//    kill -9 and restart ferryd, files intact (more data than the ring holds, so it wraps);
//  - qemu-io partial overlaps (newest data wins, also across zeroes and unaligned
//    writes), before and after a kill -9 and restart;
//  - `ferry staging detach` with writes still staged leaves the disk file (read directly
//    with cmp) holding every write, under an open NBD connection.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, type Ferryd } from '../harness.js';
import { Attachment, Cleanup, MiB, PYTHON, SYSTEM_ENV, assertHealthy, cliFails, cliJson, describeRun, lastJson, ok, python, runBounded, stagingShow } from './helpers.js';

function sha256(data: Buffer): string {
  return crypto.createHash('sha256').update(data).digest('hex');
}

function sha256File(file: string): string {
  return sha256(fs.readFileSync(file));
}

/** Attaches a 64 MiB staging area (a new file in `dir`) to a disk. */
async function stage(d: Ferryd, disk: string, dir: string): Promise<string> {
  const p = path.join(dir, `${disk}.staging`);
  assertHealthy(await cliJson(d, ['staging', 'attach', disk, '--path', p, '--size', '64M']), 1);
  return p;
}

async function qemuIo(uri: string, commands: string[]): Promise<string> {
  const args = ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), uri];
  const r = await runBounded(requireTool('qemu-io'), args);
  assert.equal(r.code, 0, describeRun('qemu-io', args, r));
  assert.doesNotMatch(r.stdout + r.stderr, /fail|error|mismatch/i, describeRun('qemu-io', args, r));
  return r.stdout;
}

/**
 * Partial overlaps at `base`, in this order (byte offsets relative to base):
 *   [0, 64k) 0x11; [16k, 20k) 0x22; [0, 4k) zeroes; [1424, 1524) 0x33 (unaligned, inside
 *   the zeroes); [60k, 68k) 0x44 (straddles the end); [17424, 27424) 0x55 (over 0x22's tail)
 * and what must be read back (newest data wins), as [start, end, byte].
 */
function overlapWrites(base: number): string[] {
  const k = 1024;
  return [
    `write -P 0x11 ${base} ${64 * k}`,
    `write -P 0x22 ${base + 16 * k} ${4 * k}`,
    `write -z ${base} ${4 * k}`,
    `write -P 0x33 ${base + 1424} 100`,
    `write -P 0x44 ${base + 60 * k} ${8 * k}`,
    `write -P 0x55 ${base + 17424} 10000`,
  ];
}
function overlapExpected(): Array<[number, number, number]> {
  const k = 1024;
  return [
    [0, 1424, 0],
    [1424, 1524, 0x33],
    [1524, 4 * k, 0],
    [4 * k, 16 * k, 0x11],
    [16 * k, 17424, 0x22],
    [17424, 27424, 0x55],
    [27424, 60 * k, 0x11],
    [60 * k, 68 * k, 0x44],
    [68 * k, 72 * k, 0],
  ];
}
function overlapReads(base: number): string[] {
  return overlapExpected().map(([s, e, v]) => `read -P 0x${v.toString(16)} ${base + s} ${e - s}`);
}

/** Reads [base, base+72k) in one NBD request and compares it with the expected pieces. */
async function checkOverlapWhole(uri: string, base: number): Promise<void> {
  const r = await python<{ pieces: Array<[number, number, number]> }>(
    `import nbd, json
h = nbd.NBD()
h.connect_uri(${JSON.stringify(uri)})
data = h.pread(${72 * 1024}, ${base})
pieces, start = [], 0
for i in range(1, len(data) + 1):
    if i == len(data) or data[i] != data[start]:
        pieces.append([start, i, data[start]])
        start = i
print(json.dumps({"pieces": pieces}))`,
  );
  assert.deepEqual(r.pieces, overlapExpected(), 'one 72 KiB read across every overlap: newest data wins');
}

describe('staged disks with real clients', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let stagingDir: string;

  before(async () => {
    for (const t of ['fio', 'qemu-io', 'cmp']) requireTool(t);
    d = await cleanup.ferryd();
    stagingDir = cleanup.dir('ferry-staging-files-');
  });
  after(() => cleanup.run());

  it('fio randrw at queue depth 32 with crc32c verify, and a verify-only pass after kill -9', { timeout: 300_000 }, async (t) => {
    await d.createDisk('fio', 96 * MiB);
    await stage(d, 'fio', stagingDir);
    // The URI is taken afresh each time: a restarted ferryd listens on a new ephemeral port.
    const job = (): string[] => ['--name=staged', '--ioengine=nbd', `--uri=${d.uri('fio')}`, '--rw=randrw', '--bs=4k', '--iodepth=32', '--size=80M', '--verify=crc32c', '--output-format=json'];
    const r = await ok('fio', job(), { timeoutMs: 240_000 });
    const res = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))).jobs[0];
    assert.equal(res.error, 0);
    assert.ok(res.write.total_ios > 1000 && res.read.total_ios > res.write.total_ios, `fio: ${res.write.total_ios} writes, ${res.read.total_ios} reads (verify included)`);
    assert.doesNotMatch(r.stderr, /verify:|bad/i);
    t.diagnostic(`fio: ${res.write.total_ios} writes, ${res.read.total_ios} reads`);
    await d.kill9();
    await d.start();
    assertHealthy(await stagingShow(d, 'fio'), 1);
    const v = await ok('fio', [...job(), '--verify_only'], { timeoutMs: 240_000 });
    assert.equal(JSON.parse(v.stdout.slice(v.stdout.indexOf('{'))).jobs[0].error, 0);
    assert.doesNotMatch(v.stderr, /verify:|bad/i);
  });

  it('ext4 through nbdfuse + loop: mkfs, files, umount, e2fsck clean, kill -9 and restart, files intact', { timeout: 400_000 }, async () => {
    for (const tool of ['nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4', 'e2fsck', 'mount', 'umount', 'blockdev', 'sync']) requireTool(tool);
    assert.ok(fs.existsSync('/dev/fuse'), '/dev/fuse is missing');
    const size = 192 * MiB;
    await d.createDisk('fs', size);
    await stage(d, 'fs', stagingDir);
    const base = cleanup.dir('ferry-staged-ext4-');
    fs.mkdirSync(path.join(base, 'fuse'));
    fs.mkdirSync(path.join(base, 'mnt'));
    const att = new Attachment(path.join(base, 'fuse'), path.join(base, 'mnt'), size);
    cleanup.defer(() => att.detach());
    const expected = new Map<string, string>();
    const put = (rel: string, data: Buffer): void => {
      const p = path.join(att.mountDir, rel);
      fs.mkdirSync(path.dirname(p), { recursive: true });
      fs.writeFileSync(p, data);
      expected.set(rel, sha256(data));
    };
    const checkFiles = (): void => {
      for (const [rel, sum] of expected) {
        const p = path.join(att.mountDir, rel);
        assert.ok(fs.existsSync(p), `${rel} is missing`);
        assert.equal(sha256File(p), sum, `${rel} changed`);
      }
    };

    const loop = await att.attach(d.uri('fs'));
    await ok('mkfs.ext4', ['-q', '-F', '-L', 'staged', loop], { timeoutMs: 180_000 });
    await att.mount();
    put('hello.txt', Buffer.from('hello, staged ferry\n'));
    put('odd.bin', crypto.randomBytes(4097));
    // More than the 64 MiB ring holds: the staging area wraps and writers wait for the committer.
    for (let i = 0; i < 5; i++) put(`big/part-${i}.bin`, crypto.randomBytes(19 * MiB + i * 4099));
    put('a/b/c/deep.bin', crypto.randomBytes(300_000));
    for (let i = 0; i < 150; i++) put(`many/f${i}`, crypto.randomBytes(1 + ((i * 7919) % 20000)));
    const rewritten = path.join(att.mountDir, 'rewritten.bin');
    put('rewritten.bin', crypto.randomBytes(2 * MiB));
    const fd = fs.openSync(rewritten, 'r+');
    fs.writeSync(fd, crypto.randomBytes(5000), 0, 5000, 700_000);
    fs.closeSync(fd);
    expected.set('rewritten.bin', sha256File(rewritten));
    fs.writeFileSync(path.join(att.mountDir, 'gone.bin'), crypto.randomBytes(3 * MiB));
    fs.rmSync(path.join(att.mountDir, 'gone.bin'));
    await ok('sync', ['-f', path.join(att.mountDir, 'hello.txt')]);
    checkFiles();
    await att.unmount();
    const fsck = await ok('e2fsck', ['-fn', loop]);
    assert.match(fsck.stdout, /files.*blocks/);
    await att.detach();

    await d.kill9();
    await d.start();
    assertHealthy(await stagingShow(d, 'fs'), 1);
    const loop2 = await att.attach(d.uri('fs'));
    const fsck2 = await ok('e2fsck', ['-fn', loop2]);
    assert.match(fsck2.stdout, /files.*blocks/);
    await att.mount();
    checkFiles();
    assert.ok(!fs.existsSync(path.join(att.mountDir, 'gone.bin')));
    assert.equal(fs.readdirSync(path.join(att.mountDir, 'many')).length, 150);
    await att.detach();
  });

  it('qemu-io partial overlaps: newest data wins, before and after kill -9 and restart', { timeout: 180_000 }, async () => {
    await d.createDisk('ov', 16 * MiB);
    await stage(d, 'ov', stagingDir);
    const b1 = 1 * MiB;
    const b2 = 5 * MiB;
    // The brief's case: 64k, then 4k inside it, the 64k read back.
    await qemuIo(d.uri('ov'), ['write -P 0xa1 0 64k', 'write -P 0xb2 20k 4k', 'read -P 0xa1 0 20k', 'read -P 0xb2 20k 4k', 'read -P 0xa1 24k 40k']);
    // Writes and reads in one client, so the reads meet the writes while they are staged.
    await qemuIo(d.uri('ov'), [...overlapWrites(b1), ...overlapReads(b1)]);
    await checkOverlapWhole(d.uri('ov'), b1);
    await d.kill9();
    await d.start();
    await qemuIo(d.uri('ov'), ['read -P 0xa1 0 20k', 'read -P 0xb2 20k 4k', 'read -P 0xa1 24k 40k', ...overlapReads(b1)]);
    await checkOverlapWhole(d.uri('ov'), b1);
    // And again on the recovered staging area.
    await qemuIo(d.uri('ov'), [...overlapWrites(b2), ...overlapReads(b2), ...overlapReads(b1)]);
    await checkOverlapWhole(d.uri('ov'), b2);
    await d.kill9();
    await d.start();
    await qemuIo(d.uri('ov'), [...overlapReads(b1), ...overlapReads(b2)]);
    assertHealthy(await stagingShow(d, 'ov'), 1);
  });

  it('staging detach with writes still staged: the disk file holds every write (cmp), the open connection keeps working', { timeout: 180_000 }, async (t) => {
    const disk = 'dt';
    const size = 64 * MiB;
    const info = await d.createDisk(disk, size);
    const work = cleanup.dir('ferry-detach-');
    const expectedFile = path.join(work, 'expected.img');
    let result: any = null;
    // The committer applies staged writes within milliseconds; try until a detach really meets pending records.
    for (let attempt = 0; attempt < 5; attempt++) {
      const stagingFile = await stage(d, disk, stagingDir);
      const r = await runBounded(PYTHON, ['-c', DETACH_SCRIPT, d.uri(disk), d.apiUrl, d.token, disk, expectedFile, String(size), String(attempt)], { env: SYSTEM_ENV, timeoutMs: 120_000 });
      assert.equal(r.code, 0, `detach script failed:\n${r.stdout}\n${r.stderr}`);
      result = lastJson(r.stdout);
      assert.equal(result.detachStatus, 200, JSON.stringify(result));
      assert.ok(!fs.existsSync(stagingFile), 'the staging file Ferry created is deleted at detach');
      await cliFails(d, ['staging', 'show', disk], 'NO_STAGING');
      const cmp = await runBounded(requireTool('cmp'), [expectedFile, info.path]);
      assert.equal(cmp.code, 0, `the disk file differs from every write applied in order: ${cmp.stdout}${cmp.stderr}`);
      if (result.pendingRecords > 0) break;
    }
    t.diagnostic(`detach met ${result.pendingRecords} pending records (${result.overlayExtents} overlay extents)`);
    assert.ok(result.pendingRecords > 0, `no attempt detached with records pending: ${JSON.stringify(result)}`);
    assert.equal(result.afterDetachOk, true, 'the NBD connection opened before the detach works after it');
  });
});

/**
 * In one client: reads what the disk holds, writes 40 MiB of random data in 1 MiB requests (32 in flight), then 300
 * overlapping 4-12 KiB writes (8 in flight, none overlapping another in flight), then at
 * once reads the staging state and detaches through the API, with the connection open.
 * Writes the image the disk must now hold to EXPECTED. Then writes and reads through
 * the same connection (direct path now) and updates EXPECTED.
 * argv: URI API TOKEN DISK EXPECTED SIZE SEED
 */
const DETACH_SCRIPT = `
import json, random, sys, urllib.request
import nbd
uri, api, token, disk, expected_path, size, seed = sys.argv[1:8]
size = int(size)
rnd = random.Random(int(seed))
h = nbd.NBD()
h.connect_uri(uri)
image = bytearray()
for off in range(0, size, 16 << 20):
    image += h.pread(min(16 << 20, size - off), off)

def drain(limit):
    while h.aio_in_flight() > limit:
        h.poll(-1)

keep = []
for off in range(0, 40 << 20, 1 << 20):
    data = rnd.randbytes(1 << 20)
    image[off:off + len(data)] = data
    buf = nbd.Buffer.from_bytearray(bytearray(data))
    keep.append(buf)
    drain(31)
    h.aio_pwrite(buf, off)
drain(0)
inflight = []
for i in range(300):
    n = rnd.randint(1, 3) * 4096
    while True:
        off = rnd.randrange(0, (size - n) // 512) * 512
        if not any(off < o + m and o < off + n for o, m in inflight):
            break
    data = rnd.randbytes(n)
    image[off:off + n] = data
    if len(inflight) == 8:
        drain(0)
        inflight.clear()
    buf = nbd.Buffer.from_bytearray(bytearray(data))
    keep.append(buf)
    inflight.append((off, n))
    h.aio_pwrite(buf, off)
drain(0)

def call(method, path):
    req = urllib.request.Request(api + path, method=method, headers={"authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")

st, show = call("GET", "/v1/disks/%s/staging" % disk)
assert st == 200, show
pending = show["consumers"][0]["pendingRecords"]
extents = show["overlayExtents"]
dst, det = call("DELETE", "/v1/disks/%s/staging" % disk)
with open(expected_path, "wb") as f:
    f.write(image)
ok = False
if dst == 200:
    # The connection opened before the detach works after it, on the direct path.
    data = rnd.randbytes(8192)
    h.pwrite(data, 50 << 20)
    h.flush()
    image[50 << 20:(50 << 20) + 8192] = data
    ok = h.pread(1 << 20, 0) == bytes(image[0:1 << 20]) and h.pread(8192, 50 << 20) == data
    with open(expected_path, "wb") as f:
        f.write(image)
h.shutdown()
print(json.dumps({"pendingRecords": pending, "overlayExtents": extents, "detachStatus": dst, "detach": det, "afterDetachOk": ok}))
`;
