// A stop is bounded even when writes wait for staging space that cannot come: the primary is
// a file on a full tmpfs (a real ENOSPC), so the committer cannot apply and the staging area
// fills; a client's write then waits for space. SIGTERM must still stop ferryd cleanly (exit
// 0): after the grace period the waiting write is refused (ESHUTDOWN, never acknowledged), and
// every write acknowledged before is served after the restart.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fillUntilFull, requireTool, type Ferryd } from '../harness.js';
import { qemuIo, qemuIoOk } from '../interop/clients.js';
import { Cleanup, MiB, cliJson, stagingShow, waitFor } from './helpers.js';

const T = { timeout: 300_000 };

describe('a stop while writes wait for staging space', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let work: string;
  let small: string;

  before(async () => {
    requireTool('qemu-io');
    d = await cleanup.ferryd();
    work = fs.realpathSync(cleanup.dir('ferry-stop-full-'));
    small = await cleanup.tmpfs('small', '16m');
  }, T);
  after(() => cleanup.run(), T);

  it('refuses the waiting write after the grace period and exits 0; acknowledged writes survive', T, async () => {
    const primary = path.join(small, 'p.img');
    fs.writeFileSync(primary, '');
    fs.truncateSync(primary, 32 * MiB);
    await cliJson(d, ['disk', 'adopt', 'p', '--path', primary]);
    await cliJson(d, ['staging', 'attach', 'p', '--path', path.join(work, 'p.stg'), '--size', '64M']);
    // Every block of the tmpfs taken: the primary cannot take a single new page.
    fillUntilFull(path.join(small, 'filler'));
    await qemuIoOk(d.uri('p'), ['write -P 0x21 0 16M', 'flush']);
    // More than the staging area holds: the last writes wait for space that never comes.
    const later: Array<[number, number]> = [
      [0x22, 16],
      [0x23, 0],
      [0x24, 16],
      [0x25, 0],
    ];
    const writer = qemuIo(
      d.uri('p'),
      later.map(([p, at]) => `write -P ${p} ${at}M 16M`),
    );
    await waitFor('a write waiting for staging space', async () => (await stagingShow(d, 'p')).waitingForSpace === true, 120_000);
    const stopped = await d.stop('SIGTERM');
    assert.deepEqual(stopped, { code: 0, signal: null }, `a clean stop:\n${d.stderr.slice(-3000)}`);
    assert.match(d.stderr, /writes still waiting for staging space are refused/);
    const w = await writer;
    assert.match(w.stdout + w.stderr, /write failed|shut ?down|Input\/output|Connection|error/i, `the waiting write was not acknowledged: ${w.stdout}${w.stderr}`);

    // What each region must hold: its last write that was acknowledged (qemu-io runs them in
    // order and prints one result line each: "wrote ..." or "write failed: ...").
    const results = (w.stdout + w.stderr).split('\n').filter((l) => /^wrote |^write failed/.test(l));
    const expect = new Map<number, number>([
      [0, 0x21],
      [16, 0],
    ]);
    later.forEach(([p, at], i) => {
      if (results[i]?.startsWith('wrote ')) expect.set(at, p);
    });
    assert.ok(results.some((l) => l.startsWith('write failed')), `a write was refused: ${results.join(' | ')}`);
    await d.start();
    await qemuIoOk(d.uri('p'), [...expect].map(([at, p]) => `read -P ${p} ${at}M 16M`));
  });
});
