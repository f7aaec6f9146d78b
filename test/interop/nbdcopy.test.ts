// nbdcopy (libnbd) against ferryd: bulk copies in and out, with several connections
// (multi-conn) and many requests in flight; the bytes must come back identical.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type { Ferryd } from '../harness.js';
import { Cleanup, fails, ok, qemuIoOk, sha256File, waitFor, writeRandomFile, T } from './clients.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

describe('nbdcopy', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let dir: string;
  let source: string;
  let sourceSum: string;

  before(async () => {
    d = await cleanup.ferryd();
    dir = cleanup.dir();
    source = path.join(dir, 'random.img');
    writeRandomFile(source, SIZE);
    sourceSum = sha256File(source);
  }, T);
  after(() => cleanup.run(), T);

  /** Connections ferryd has logged for a disk so far. */
  function attaches(disk: string): number {
    return d.stderr.split('\n').filter((l) => l.includes('"NBD client attached"') && l.includes(`"disk":"${disk}"`)).length;
  }

  async function copyOut(disk: string, name: string, extra: string[] = []): Promise<string> {
    const out = path.join(dir, name);
    await ok('nbdcopy', [...extra, d.uri(disk), out]);
    assert.equal(fs.statSync(out).size, SIZE);
    return sha256File(out);
  }

  it('copies 64 MiB of random data in and back out, identical', T, async () => {
    await d.createDisk('plain', SIZE);
    await ok('nbdcopy', [source, d.uri('plain')]);
    assert.equal(await copyOut('plain', 'plain.out'), sourceSum);
  });

  it('with --connections=4 (multi-conn, 4 threads) and --requests=64, in and out', T, async () => {
    await d.createDisk('multi', SIZE);
    const before = attaches('multi');
    await ok('nbdcopy', ['--threads=4', '--connections=4', '--requests=64', '--flush', source, d.uri('multi')]);
    // The server advertises multi-conn, so nbdcopy really opened several connections
    // (nbdcopy uses at most one per thread; threads default to the number of CPUs).
    await waitFor('ferryd to log 4 connections', () => attaches('multi') - before >= 4, 5000).catch(() =>
      assert.fail(`expected 4 connections, ferryd logged ${attaches('multi') - before}`),
    );
    assert.equal(await copyOut('multi', 'multi.out', ['--threads=4', '--connections=4', '--requests=64']), sourceSum);
  });

  it('with the largest request size (32 MiB) and with small synchronous requests', T, async () => {
    await d.createDisk('big', SIZE);
    await ok('nbdcopy', ['--request-size=33554432', source, d.uri('big')]);
    assert.equal(await copyOut('big', 'big.out', ['--request-size=33554432']), sourceSum);
    await d.createDisk('sync', SIZE);
    await ok('nbdcopy', ['--synchronous', '--request-size=65536', source, d.uri('sync')]);
    assert.equal(await copyOut('sync', 'sync.out', ['--synchronous']), sourceSum);
  });

  it('copies disk to disk over NBD, and zeroes the stale data where the source is sparse', T, async () => {
    await d.createDisk('sparse-src', SIZE);
    await qemuIoOk(d.uri('sparse-src'), ['write -P 0x61 0 1M', 'write -P 0x62 30M 3M', 'write -P 0x63 63M 1M']);
    await d.createDisk('stale-dst', SIZE);
    await qemuIoOk(d.uri('stale-dst'), ['write -P 0xff 0 64M']);
    await ok('nbdcopy', ['--connections=2', '--flush', d.uri('sparse-src'), d.uri('stale-dst')]);
    await qemuIoOk(d.uri('stale-dst'), ['read -P 0x61 0 1M', 'read -P 0 1M 29M', 'read -P 0x62 30M 3M', 'read -P 0 33M 30M', 'read -P 0x63 63M 1M']);
    assert.equal(await copyOut('stale-dst', 'stale.out'), await copyOut('sparse-src', 'sparse.out'));
  });

  it('a copy to a disk that is too small fails cleanly', T, async () => {
    await d.createDisk('small', '1M');
    const r = await fails('nbdcopy', [source, d.uri('small')]);
    assert.match(r.stderr, /destination size|smaller|too small/i);
  });
});
