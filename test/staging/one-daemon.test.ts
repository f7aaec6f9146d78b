// One ferryd per data directory, and no file served by two ferryds (issue 12). A second
// `ferry serve` on a directory a running ferryd holds is refused before it reads anything; a
// ferryd with another data directory cannot adopt, stage onto or mirror onto a file the first
// one has open; and a start that fails on a port in use fails before recovery touches the
// staging area or the disk (their modification times are unchanged, to the nanosecond).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { FERRY_BIN, describeRun, requireTool, run, type Ferryd } from '../harness.js';
import { Cleanup, MiB } from './helpers.js';

const cleanup = new Cleanup('ferry-one-daemon-');

async function qemuIo(uri: string, cmd: string): Promise<void> {
  const args = ['-f', 'raw', '-c', cmd, uri];
  const r = await run(requireTool('qemu-io'), args);
  assert.equal(r.code, 0, describeRun('qemu-io', args, r));
  assert.doesNotMatch(r.stdout, /Pattern verification failed|error/i, describeRun('qemu-io', args, r));
}

/** Modification times (ns) of files, to show that a refused start wrote nothing. */
function mtimes(files: string[]): Record<string, bigint> {
  return Object.fromEntries(files.map((f) => [f, fs.statSync(f, { bigint: true }).mtimeNs]));
}

/** `ferry serve` on `dataDir` with the given API address; resolves when it exits (it must). */
function serveOnce(dataDir: string, api = '127.0.0.1:0') {
  return run(process.execPath, [FERRY_BIN, 'serve', '--data', dataDir, '--nbd', '127.0.0.1:0', '--api', api, '--repl', '127.0.0.1:0'], { timeoutMs: 60_000 });
}

describe('one ferryd per data directory', () => {
  let a: Ferryd;
  let work: string;
  let stagingFile: string;
  let diskFile: string;

  before(async () => {
    work = cleanup.dir();
    a = await cleanup.ferryd();
    const created = await a.createDisk('d', 64 * MiB);
    diskFile = created.path;
    stagingFile = path.join(work, 'd.stg');
    const s = await a.api('POST', '/v1/disks/d/staging', { path: stagingFile, size: 64 * MiB });
    assert.equal(s.status, 201, JSON.stringify(s.body));
    await qemuIo(a.uri('d'), 'write -P 0x5a 0 4M');
  });
  after(() => cleanup.run());

  it('a second ferryd on the same data directory is refused and changes nothing', async () => {
    // The first ferryd may still apply and checkpoint what it was sent, so only its metadata is
    // compared here; the test after the kill -9 below compares the journal and the disk too.
    const files = ['ferry.db', 'api-token', 'lock'].map((f) => path.join(a.dataDir, f));
    const before = mtimes(files);
    const r = await serveOnce(a.dataDir);
    assert.notEqual(r.code, 0, describeRun('ferry serve', [], r));
    assert.match(r.stderr, /data directory lock .* is in use by another process/, describeRun('ferry serve', [], r));
    assert.doesNotMatch(r.stdout, /listening/, 'the refused ferryd bound no listener');
    assert.doesNotMatch(r.stderr, /"msg"/, 'the refused ferryd logged nothing (it opened nothing)');
    assert.deepEqual(mtimes(files), before, 'the refused ferryd wrote nothing');
    // The first one still serves what it acknowledged.
    await qemuIo(a.uri('d'), 'read -P 0x5a 0 4M');
  });

  it('a ferryd with another data directory cannot take a file the first one has open', async () => {
    const b = await cleanup.ferryd();
    const adopt = await b.api('POST', '/v1/disks/adopt', { name: 'stolen', path: diskFile });
    assert.equal(adopt.status, 409, JSON.stringify(adopt.body));
    assert.equal(adopt.body.error.code, 'PATH_LOCKED');
    const adoptStaging = await b.api('POST', '/v1/disks/adopt', { name: 'stolen2', path: stagingFile, readOnly: true });
    assert.equal(adoptStaging.status, 409, JSON.stringify(adoptStaging.body));
    assert.equal(adoptStaging.body.error.code, 'PATH_LOCKED');
    await b.createDisk('mine', 64 * MiB);
    const mirror = await b.api('POST', '/v1/disks/mine/mirror', { to: `local:${diskFile}`, staging: path.join(work, 'mine.stg'), stagingSize: 64 * MiB });
    assert.equal(mirror.status, 409, JSON.stringify(mirror.body));
    assert.equal(mirror.body.error.code, 'PATH_LOCKED');
    assert.deepEqual((await b.api('GET', '/v1/disks')).body.map((d: { name: string }) => d.name), ['mine']);
    await qemuIo(a.uri('d'), 'read -P 0x5a 0 4M');
  });

  it('after kill -9 the lock is gone; a start that fails on a port in use fails before recovery', async () => {
    await qemuIo(a.uri('d'), 'write -P 0x6b 4M 4M');
    await a.kill9();
    const busy = net.createServer();
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
    const port = (busy.address() as net.AddressInfo).port;
    try {
      const files = [stagingFile, diskFile];
      const before = mtimes(files);
      const r = await serveOnce(a.dataDir, `127.0.0.1:${port}`);
      assert.notEqual(r.code, 0, describeRun('ferry serve', [], r));
      assert.match(r.stderr, /EADDRINUSE/, describeRun('ferry serve', [], r));
      assert.deepEqual(mtimes(files), before, 'recovery did not run: the staging area and the disk are untouched');
    } finally {
      busy.close();
    }
    await a.start();
    await qemuIo(a.uri('d'), 'read -P 0x5a 0 4M');
    await qemuIo(a.uri('d'), 'read -P 0x6b 4M 4M');
  });
});
