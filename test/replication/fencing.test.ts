// Generation identifiers and fencing (src/replication/generations.ts, src/control/dr-control.ts)
// with two real ferryd sites through the WAN proxy:
//  - a mirror in sync: both sites show the same current generation in mirror status;
//  - site A killed (kill -9), `mirror promote` at B with A down: B starts a new generation;
//    A restarts and its mirror attaches: A learns B is ahead and fences the disk (NBD write
//    refused: EPERM, the FENCED registry code's errno; disk and mirror status say fenced);
//    A restarted again with the link cut (B unreachable): still fenced, from its own metadata;
//    B then given up for good: `mirror unfence --force` at A (refused without --force) takes
//    writes again under a new generation; B back after all: split brain on both sites;
//  - split brain: the link cut, A keeps taking writes (asynchronous mirroring never stops
//    the primary for an outage: it starts a 'diverged' generation), B promoted and written,
//    the link back: both sites report split brain, and nothing is copied either way (each
//    disk still reads its own writes).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { requireTool, waitFor, type Ferryd } from '../harness.js';
import { Cleanup } from '../staging/helpers.js';
import { assertSchema } from '../api/helpers.js';
import { DiskSchema, MirrorSchema } from '../../src/api/routes.js';
import { DrSchema } from '../../src/api/dr-routes.js';
import { cliFails, cliJson, MiB, mirrorStatus, qemuIo, qemuIoOk, startSites, stopSitesBounded, waitCaughtUp, waitStatus, type Sites } from './helpers.js';

const DISK = 16 * MiB;
const LONG = { timeout: 240_000 } as const;



async function diskDr(d: Ferryd, disk: string): Promise<any> {
  const r = await d.api('GET', `/v1/disks/${disk}`);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body.dr ?? null;
}

async function assertWriteFenced(d: Ferryd, disk: string, where: string): Promise<void> {
  const r = await qemuIo(d.uri(disk), ['write -P 0x77 0 64k']);
  assert.match(r.stdout + r.stderr, /Operation not permitted/, `${where}: the write is refused with EPERM (FENCED): ${r.stdout}${r.stderr}`);
}

describe('generation identifiers and fencing', () => {
  const cleanup = new Cleanup();
  let s: Sites;
  let work: string;

  before(async () => {
    requireTool('qemu-io');
    s = await startSites(cleanup);
    stopSitesBounded(cleanup, s);
    work = cleanup.dir('ferry-fencing-');
  }, LONG);
  after(() => cleanup.run(), LONG);

  async function mirrored(disk: string, byte: number): Promise<void> {
    await s.a.createDisk(disk, DISK);
    await cliJson(s.a, ['mirror', 'create', disk, '--to', `${s.peer}:${disk}-dr`, '--staging', path.join(work, `${disk}.stg`), '--staging-size', '64M']);
    await qemuIoOk(s.a.uri(disk), [`write -P ${byte} 0 ${DISK}`]);
    await waitCaughtUp(s, disk, `${disk}-dr`);
  }

  it('promote at B while A is down: A comes back fenced, and stays fenced across a restart without its peer', LONG, async (t) => {
    await mirrored('fx', 0x11);
    const a0 = await mirrorStatus(s.a, 'fx');
    const b0 = await mirrorStatus(s.b, 'fx-dr');
    assert.ok(a0.dr?.generation, `A's mirror status shows a generation: ${JSON.stringify(a0.dr)}`);
    assert.equal(b0.dr?.generation, a0.dr.generation, 'both sites are at the same generation');
    assert.equal(a0.dr.state, 'normal');

    assert.equal((await s.a.kill9()).signal, 'SIGKILL');
    const promoted = await cliJson(s.b, ['mirror', 'promote', 'fx-dr']);
    t.diagnostic(`promote: ${JSON.stringify(promoted)}`);
    const bDr = await diskDr(s.b, 'fx-dr');
    assert.notEqual(bDr.generation, a0.dr.generation, 'the promote started a new generation');
    assert.deepEqual(bDr.generations.map((g: any) => g.reason), ['create', 'promote']);
    assert.equal(bDr.formerPrimary, `${s.aName}:fx`);
    await qemuIoOk(s.b.uri('fx-dr'), ['write -P 0x22 0 1M']);

    await s.a.restart();
    await waitFor("A learns B was promoted past it", async () => (await diskDr(s.a, 'fx'))?.state === 'fenced', 60_000);
    const aDr = await diskDr(s.a, 'fx');
    t.diagnostic(`A: ${JSON.stringify(aDr)}`);
    assert.match(aDr.reason, /site-b was promoted past this site/);
    assert.equal(aDr.generation, a0.dr.generation, 'A keeps its own generation');
    const am = await mirrorStatus(s.a, 'fx');
    assert.equal(am.dr.state, 'fenced');
    assertSchema(MirrorSchema, am, 'mirror status with dr');
    assertSchema(DiskSchema, (await s.a.api('GET', '/v1/disks/fx')).body, 'disk with dr');
    assertSchema(DrSchema, (await s.a.api('GET', '/v1/disks/fx/dr')).body, 'GET /v1/disks/fx/dr');
    const cliDr = await cliJson(s.a, ['mirror', 'generations', 'fx']);
    assert.equal(cliDr.state, 'fenced', 'the CLI shows it too');
    assert.notEqual(am.link.state, 'connected', 'the mirror stopped shipping');
    const text = await s.a.cli(['mirror', 'status', 'fx']);
    assert.match(text.stdout, /fenced/, `mirror status says fenced: ${text.stdout}${text.stderr}`);
    await assertWriteFenced(s.a, 'fx', 'after the attach');
    await qemuIoOk(s.a.uri('fx'), [`read -P 0x11 0 ${DISK}`]);
    // Nothing went to B: its disk still has what was written there.
    await qemuIoOk(s.b.uri('fx-dr'), ['read -P 0x22 0 1M', `read -P 0x11 1M ${DISK - MiB}`]);

    // Restart A with its peer unreachable: fenced from its own metadata, before any client.
    s.proxy.cut();
    try {
      await s.a.restart();
      assert.equal((await diskDr(s.a, 'fx')).state, 'fenced');
      await assertWriteFenced(s.a, 'fx', 'after a restart with the link cut');

      // B is given up for good: A serves its own data again, only when forced.
      await cliFails(s.a, ['mirror', 'unfence', 'fx'], 'BAD_REQUEST');
      assert.equal((await diskDr(s.a, 'fx')).state, 'fenced', 'a refused unfence changes nothing');
      await cliFails(s.a, ['mirror', 'unfence', 'nosuch', '--force'], 'DISK_NOT_FOUND');
      const unfenced = await cliJson(s.a, ['mirror', 'unfence', 'fx', '--force']);
      const after = await diskDr(s.a, 'fx');
      assert.equal(after.state, 'normal');
      assert.equal(after.generation, unfenced.generation);
      assert.deepEqual(after.generations.map((g: any) => g.reason), ['create', 'diverged'], 'a new generation: A takes writes B never has');
      await qemuIoOk(s.a.uri('fx'), ['write -P 0x33 0 4k', 'read -P 0x33 0 4k']);
      await cliFails(s.a, ['mirror', 'unfence', 'fx', '--force'], 'BAD_REQUEST'); // not fenced any more
    } finally {
      s.proxy.restore();
    }
    // B comes back after all: both histories moved on, split brain on both sites, nothing copied.
    await waitFor('split brain at A', async () => (await diskDr(s.a, 'fx')).state === 'split-brain', 60_000);
    await waitFor('split brain at B', async () => (await diskDr(s.b, 'fx-dr')).state === 'split-brain', 60_000);
    await qemuIoOk(s.b.uri('fx-dr'), ['read -P 0x22 0 1M']);
    await qemuIoOk(s.a.uri('fx'), ['read -P 0x33 0 4k']);
  });

  it('both sites written after a promote: split brain on both sites, nothing copied', LONG, async (t) => {
    await mirrored('sb', 0x33);
    const g0 = (await mirrorStatus(s.a, 'sb')).dr.generation;
    s.proxy.cut();
    // An idle primary notices a silent link only once it waits for an answer: this write is
    // shipped into the cut, and the link is declared down 10 s later.
    await qemuIoOk(s.a.uri('sb'), ['write -P 0x66 2M 64k']);
    await waitStatus(s.a, 'sb', 'the link is down', (st) => st.link?.state !== 'connected', 60_000);
    // A primary without its peer keeps serving: its first write starts a 'diverged' generation.
    await qemuIoOk(s.a.uri('sb'), ['write -P 0x44 0 1M']);
    const aDr = await diskDr(s.a, 'sb');
    assert.equal(aDr.state, 'normal');
    assert.deepEqual(aDr.generations.map((g: any) => g.reason), ['create', 'diverged']);
    await cliJson(s.b, ['mirror', 'promote', 'sb-dr']);
    await qemuIoOk(s.b.uri('sb-dr'), ['write -P 0x55 1M 1M']);
    s.proxy.restore();
    await waitFor('split brain at A', async () => (await diskDr(s.a, 'sb'))?.state === 'split-brain', 60_000);
    await waitFor('split brain at B', async () => (await diskDr(s.b, 'sb-dr'))?.state === 'split-brain', 60_000);
    const [a, b] = [await diskDr(s.a, 'sb'), await diskDr(s.b, 'sb-dr')];
    t.diagnostic(`A: ${a.reason}\nB: ${b.reason}`);
    assert.match(a.reason, new RegExp(`since generation ${g0}`));
    assert.match(b.reason, new RegExp(`since generation ${g0}`));
    // Nothing copied either way; A still takes writes (the resolution is the administrator's).
    await qemuIoOk(s.a.uri('sb'), ['read -P 0x44 0 1M', 'read -P 0x33 1M 1M', 'read -P 0x66 2M 64k']);
    await qemuIoOk(s.b.uri('sb-dr'), ['read -P 0x33 0 1M', 'read -P 0x55 1M 1M', 'read -P 0x33 2M 64k']);
    assert.equal((await mirrorStatus(s.a, 'sb')).dr.state, 'split-brain');
    assert.notEqual((await mirrorStatus(s.a, 'sb')).link.state, 'connected');
  });
});
