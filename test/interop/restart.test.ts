// Restarts of ferryd with real clients: data written with qemu-io survives a graceful
// stop (SIGTERM) and a kill -9 after FUA or FLUSH; the disk list is the same after a
// restart; and a client streaming acknowledged writes while the server dies loses none
// of them, on a plain disk and on a disk behind a staging area.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, type Ferryd } from '../harness.js';
import { Cleanup, lastJson, nbdsh, py, qemuIoOk, runBounded, SYSTEM_PYTHON_ENV, waitFor, T } from './clients.js';

const MiB = 1024 * 1024;

/** What a restart must preserve of a disk (not its clients or I/O counters). */
function durableView(disks: any[]): unknown[] {
  return disks.map((x) => ({ name: x.name, kind: x.kind, pool: x.pool, path: x.path, size: x.size, readOnly: x.readOnly, state: x.state, createdAt: x.createdAt }));
}

async function listDisks(d: Ferryd): Promise<any[]> {
  const r = await d.api('GET', '/v1/disks');
  assert.equal(r.status, 200);
  return r.body;
}

/** Block i of the write stream: 4 KiB holding i (so a block from another index is caught). */
const blockPy = `
import struct
def block(i):
    return (struct.pack(">Q", i) + b"ferry-ok") * 256
`;

/**
 * Streams 4 KiB FUA writes (block i at i*4096) until the connection dies or `count`
 * are done, printing how many were acknowledged. Runs in the background.
 */
function startWriteStream(d: Ferryd, disk: string, count: number): Promise<{ acked: number; error: string | null }> {
  const script = `${blockPy}
import json
h = nbd.NBD()
h.connect_uri(${py(d.uri(disk))})
acked, error = 0, None
try:
    for i in range(${count}):
        h.pwrite(block(i), i * 4096, nbd.CMD_FLAG_FUA)
        acked = i + 1
except nbd.Error as e:
    error = str(e)
print(json.dumps({"acked": acked, "error": error}))
`;
  return runBounded(requireTool('nbdsh'), ['-c', script], { env: SYSTEM_PYTHON_ENV, timeoutMs: 120_000 }).then((r) => {
    assert.equal(r.code, 0, `write stream failed: ${r.stderr}`);
    return lastJson(r.stdout);
  });
}

/** Checks blocks [0, acked) hold what the stream wrote. */
async function checkStream(d: Ferryd, disk: string, acked: number): Promise<void> {
  const r = lastJson(
    await nbdsh(`${blockPy}
import json
h = nbd.NBD()
h.connect_uri(${py(d.uri(disk))})
bad = [i for i in range(${acked}) if h.pread(4096, i * 4096) != block(i)]
print(json.dumps({"bad": bad[:20], "count": len(bad)}))
`),
  );
  assert.deepEqual(r, { bad: [], count: 0 }, `acknowledged blocks lost or wrong after restart`);
}

/** Kills (or stops) ferryd once the disk has seen `writes` writes, while a stream runs. */
async function dieDuringStream(d: Ferryd, disk: string, how: 'SIGTERM' | 'SIGKILL'): Promise<string> {
  const stream = startWriteStream(d, disk, 4096);
  await waitFor('the write stream to get going', async () => ((await d.api('GET', `/v1/disks/${disk}`)).body.stats?.writeOps ?? 0) >= 50, 60_000);
  const exit = await d.stop(how);
  if (how === 'SIGTERM') assert.equal(exit.code, 0, `graceful stop exit: ${JSON.stringify(exit)}\n${d.stderr}`);
  else assert.equal(exit.signal, 'SIGKILL');
  const { acked, error } = await stream;
  assert.ok(acked >= 50, `acked ${acked}`);
  const note = `${acked} writes acknowledged before ${how}; the client then saw: ${error ?? 'nothing (it finished first)'}`;
  await d.start();
  await checkStream(d, disk, acked);
  return note;
}

describe('restart', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let before0: unknown[];

  before(async () => {
    d = await cleanup.ferryd();
    await d.createDisk('data', 64 * MiB);
    await d.createDisk('other', 3 * MiB);
    const ro = await d.api('POST', '/v1/disks', { name: 'ro', size: '1M', readOnly: true });
    assert.equal(ro.status, 201);
    const image = path.join(cleanup.dir(), 'adopted.img');
    fs.writeFileSync(image, Buffer.alloc(2 * MiB, 0x61));
    const ad = await d.api('POST', '/v1/disks/adopt', { name: 'adopted', path: image });
    assert.equal(ad.status, 201, JSON.stringify(ad.body));
    before0 = durableView(await listDisks(d));
  }, T);
  after(() => cleanup.run(), T);

  it('data written with qemu-io survives a graceful restart (SIGTERM)', T, async () => {
    await qemuIoOk(d.uri('data'), ['write -P 0xa1 0 1M', 'write -P 0xa2 3M 12345']);
    await qemuIoOk(d.uri('adopted'), ['write -P 0xa3 4096 4096']);
    const exit = await d.stop('SIGTERM');
    assert.equal(exit.code, 0, d.stderr);
    assert.match(d.stdout, /ferryd: stopped/);
    await d.start();
    await qemuIoOk(d.uri('data'), ['read -P 0xa1 0 1M', 'read -P 0xa2 3M 12345', 'read -P 0 1M 2M']);
    await qemuIoOk(d.uri('adopted'), ['read -P 0x61 0 4096', 'read -P 0xa3 4096 4096', 'read -P 0x61 8192 4096']);
  });

  it('a FUA write survives kill -9', T, async () => {
    await qemuIoOk(d.uri('data'), ['write -f -P 0xb1 8M 256k', 'write -f -P 0xb2 9437185 7']);
    await d.kill9();
    await d.start();
    await qemuIoOk(d.uri('data'), ['read -P 0xb1 8M 256k', 'read -P 0xb2 9437185 7', 'read -P 0xa1 0 1M']);
  });

  it('writes followed by a flush survive kill -9', T, async () => {
    await qemuIoOk(d.uri('data'), ['write -P 0xc1 10M 1M', 'write -z 10M 4k', 'discard 10489856 4096', 'flush']);
    await d.kill9();
    await d.start();
    await qemuIoOk(d.uri('data'), ['read -P 0 10M 8k', `read -P 0xc1 ${10 * MiB + 8192} ${MiB - 8192}`]);
  });

  it('after restarts the disks are listed exactly as they were', T, async () => {
    assert.deepEqual(durableView(await listDisks(d)), before0);
    const r = await d.cli(['disk', 'list', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(durableView(JSON.parse(r.stdout)), before0);
    const ls = await runBounded(requireTool('nbdinfo'), ['--list', '--json', `nbd://${d.nbdAddress}`]);
    assert.equal(ls.code, 0, ls.stderr);
    assert.deepEqual(JSON.parse(ls.stdout).exports.map((e: any) => e['export-name']).sort(), ['adopted', 'data', 'other', 'ro']);
    const info = (await d.api('GET', '/v1/disks/ro')).body;
    assert.equal(info.readOnly, true);
  });

  it('no acknowledged write is lost when the server stops gracefully mid-stream', T, async (t) => {
    await d.createDisk('stream-term', 32 * MiB);
    t.diagnostic(await dieDuringStream(d, 'stream-term', 'SIGTERM'));
  });

  it('no acknowledged FUA write is lost when the server is killed mid-stream', T, async (t) => {
    await d.createDisk('stream-kill', 32 * MiB);
    t.diagnostic(await dieDuringStream(d, 'stream-kill', 'SIGKILL'));
  });

  it('a disk created just before kill -9 is still there, with its size', T, async () => {
    await d.createDisk('late', 5 * MiB);
    await d.kill9();
    await d.start();
    const late = (await d.api('GET', '/v1/disks/late')).body;
    assert.equal(late.size, 5 * MiB);
    assert.equal(late.state, 'online');
  });
});

describe('restart with a staging area', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let dir: string;

  before(async () => {
    d = await cleanup.ferryd();
    dir = cleanup.dir('ferry-staging-');
    await d.createDisk('staged', 32 * MiB);
    const r = await d.api('POST', '/v1/disks/staged/staging', { path: path.join(dir, 'staging-a'), copy: path.join(dir, 'staging-b'), size: '64M' });
    assert.equal(r.status, 201, JSON.stringify(r.body));
  }, T);
  after(() => cleanup.run(), T);

  it('qemu-io data survives a graceful restart and a kill -9 after flush', T, async () => {
    await qemuIoOk(d.uri('staged'), ['write -P 0xd1 0 2M', 'write -f -P 0xd2 2M 4097']);
    await d.restart();
    await qemuIoOk(d.uri('staged'), ['read -P 0xd1 0 2M', 'read -P 0xd2 2M 4097']);
    await qemuIoOk(d.uri('staged'), ['write -P 0xd3 4M 1M', 'write -P 0xd4 5M 1', 'flush']);
    await d.kill9();
    await d.start();
    await qemuIoOk(d.uri('staged'), ['read -P 0xd1 0 2M', 'read -P 0xd3 4M 1M', 'read -P 0xd4 5M 1']);
  });

  it('no acknowledged FUA write is lost when the server is killed mid-stream', T, async (t) => {
    t.diagnostic(await dieDuringStream(d, 'staged', 'SIGKILL'));
    const s = await d.api('GET', '/v1/disks/staged/staging');
    assert.equal(s.status, 200);
    assert.equal(s.body.degraded, false);
  });
});
