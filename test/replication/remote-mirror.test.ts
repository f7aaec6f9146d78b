// Remote mirrors between two real ferryd sites, the link through the userspace WAN proxy:
// `ferry mirror create DISK --to PEER:DISK` creates the replica at the peer, syncs it over
// the link, then streams records; the replica is read-only to NBD clients and reports the
// mirror from its side; fio with crc32c verification writes at site A while it runs, and the
// replica ends byte-identical; remove releases the replica as a whole, writable disk; every
// refusal leaves both sites unchanged.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { requireTool, run } from '../harness.js';
import { qemuIoOk } from '../interop/clients.js';
import { Cleanup } from '../staging/helpers.js';
import { assertSameBytes, startFio, waitWrites } from '../mirror/helpers.js';
import { MiB, T, cliFails, cliJson, diskPath, mirrorStatus, startSites, waitCaughtUp, type Sites } from './helpers.js';

const DISK = 128 * MiB;

describe('remote mirror between two sites', () => {
  const cleanup = new Cleanup();
  let s: Sites;
  let work: string;

  before(async () => {
    requireTool('fio');
    requireTool('qemu-io');
    requireTool('qemu-img');
    s = await startSites(cleanup);
    work = cleanup.dir('ferry-remote-');
  }, T);
  after(() => cleanup.run(), T);

  it('creates the replica at the peer, syncs it, streams writes; the replica is read-only and identical', T, async (t) => {
    await s.a.createDisk('app', DISK);
    await qemuIoOk(s.a.uri('app'), ['write -P 0x61 0 16M', 'write -P 0x62 64M 4M', `write -P 0x63 ${DISK - MiB} 1M`]);
    const created = await cliJson(s.a, ['mirror', 'create', 'app', '--to', `${s.peer}:app-dr`, '--staging', path.join(work, 'app.stg'), '--staging-size', '96M']);
    assert.equal(created.target, `${s.peer}:app-dr`);
    assert.equal(created.role, 'primary');
    assert.ok(created.link, 'a remote mirror reports its link');

    const cwd = cleanup.dir('ferry-fio-');
    const fio = startFio(cleanup, s.a.uri('app'), { name: 'app', cwd, size: `${DISK / MiB}m`, rateIops: 1000 });
    await waitWrites(s.a, 'app', 3000);
    const during = await mirrorStatus(s.a, 'app');
    t.diagnostic(`during fio: state ${during.state}, lag ${during.lagRecords} records / ${during.lagSeconds.toFixed(3)} s, link ${during.link.state}`);
    const job = await fio.stop();
    t.diagnostic(`fio: ${job.write.total_ios} writes verified`);
    const { a, b } = await waitCaughtUp(s, 'app', 'app-dr');
    assert.equal(a.link.state, 'connected');
    assert.equal(b.role, 'replica');
    assert.equal(b.target, `${s.aName}:app`);
    assert.equal(b.link.state, 'connected');
    assert.equal(b.lagRecords, 0);

    // What clients see on both sites is the same, byte for byte.
    const cmp = await run(requireTool('qemu-img'), ['compare', '-f', 'raw', '-F', 'raw', s.a.uri('app'), s.b.uri('app-dr')], { timeoutMs: 120_000 });
    assert.equal(cmp.code, 0, `qemu-img compare: ${cmp.stdout}${cmp.stderr}`);

    // Site B's disk is a mirror: NBD clients may read it, never write it.
    const w = await run(requireTool('qemu-io'), ['-f', 'raw', '-c', 'write -P 0x01 0 4k', s.b.uri('app-dr')], { timeoutMs: 60_000 });
    assert.notEqual(w.code, 0, 'a write to the replica must be refused');
    const show = await s.b.api('GET', '/v1/disks/app-dr');
    assert.equal(show.body.readOnly ?? true, true);

    // Lag and link state are metrics on both sites.
    for (const d of [s.a, s.b]) {
      const m = await fetch(`${d.apiUrl}/metrics`, { headers: { authorization: `Bearer ${d.token}` } });
      const text = await m.text();
      assert.match(text, /ferry_mirror_lag_seconds\{/);
      assert.match(text, /ferry_mirror_link_up\{[^}]*\} 1/);
    }
  });

  it('refuses what it cannot do, with nothing changed on either site', T, async () => {
    await s.a.createDisk('other', 64 * MiB);
    await cliFails(s.a, ['mirror', 'create', 'other', '--to', 'nosuchpeer:x', '--staging', path.join(work, 'o1.stg'), '--staging-size', '64M'], 'PEER_NOT_FOUND');
    await cliFails(s.a, ['mirror', 'create', 'other', '--to', `${s.peer}:bad/name`, '--staging', path.join(work, 'o2.stg'), '--staging-size', '64M'], 'INVALID_TARGET');
    // Already the mirror of another disk here; a disk in use at the peer (it has a staging area).
    await cliFails(s.a, ['mirror', 'create', 'other', '--to', `${s.peer}:app-dr`, '--staging', path.join(work, 'o3.stg'), '--staging-size', '64M'], 'PATH_IN_USE');
    await s.b.createDisk('busy', 64 * MiB);
    await cliJson(s.b, ['staging', 'attach', 'busy', '--path', path.join(work, 'busy.stg'), '--size', '64M']);
    // The peer's refusals keep their code, and say it is the peer's.
    const busy = await cliFails(s.a, ['mirror', 'create', 'other', '--to', `${s.peer}:busy`, '--staging', path.join(work, 'o5.stg'), '--staging-size', '64M'], 'DISK_BUSY');
    assert.ok(busy.includes(s.peer), `the message names the peer: ${busy}`);
    // A disk at the peer that is too small.
    await s.b.createDisk('tiny', 16 * MiB);
    await cliFails(s.a, ['mirror', 'create', 'other', '--to', `${s.peer}:tiny`, '--staging', path.join(work, 'o4.stg'), '--staging-size', '64M'], 'TARGET_TOO_SMALL');
    const st = await s.a.api('GET', '/v1/disks/other/staging');
    assert.equal(st.status, 409, 'no staging area left behind');
    assert.equal((await s.a.api('GET', '/v1/disks/other/mirror')).status, 409);
    const bList = await cliJson(s.b, ['mirror', 'status']);
    assert.deepEqual(bList.map((m: any) => m.disk), ['app-dr'], 'no replica left behind at the peer');
    assert.equal((await s.b.api('GET', '/v1/disks/tiny')).body.size, 16 * MiB);

    await cliFails(s.a, ['mirror', 'swap', 'app'], 'NOT_SUPPORTED');
    await cliFails(s.b, ['mirror', 'swap', 'app-dr'], 'BAD_REQUEST');
    await cliFails(s.b, ['mirror', 'remove', 'app-dr'], 'BAD_REQUEST');
    await cliFails(s.b, ['staging', 'detach', 'app-dr'], 'DISK_BUSY');
    await cliFails(s.b, ['disk', 'remove', 'app-dr'], 'DISK_BUSY');
    await cliFails(s.a, ['peer', 'remove', s.peer], 'PEER_IN_USE');
    await cliFails(s.b, ['peer', 'remove', s.aName], 'PEER_IN_USE');
  });

  it('pausing the apply at the replica freezes its image while records still arrive', T, async () => {
    const paused = await cliJson(s.b, ['mirror', 'pause', 'app-dr']);
    assert.equal(paused.state, 'paused');
    const file = await diskPath(s.b, 'app-dr');
    const before = await run('sha256sum', [file]);
    await qemuIoOk(s.a.uri('app'), ['write -P 0x71 1M 1M']);
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal((await run('sha256sum', [file])).stdout, before.stdout, 'the replica file must not change while its apply is paused');
    const a = await mirrorStatus(s.a, 'app');
    assert.equal(a.lagRecords, 0, 'site B still makes records durable while its apply is paused');
    await cliJson(s.b, ['mirror', 'resume', 'app-dr']);
    await waitCaughtUp(s, 'app', 'app-dr');
  });

  it('remove releases the replica: a whole, writable disk at the peer', T, async () => {
    await qemuIoOk(s.a.uri('app'), ['write -P 0x7a 2M 3M']);
    const removed = await cliJson(s.a, ['mirror', 'remove', 'app']);
    assert.equal(removed.consistent, true);
    assert.equal(removed.copy, 'up-to-date', 'the mirror site confirmed every record and the release');
    assert.equal(removed.unconfirmed, null);
    assert.deepEqual(await cliJson(s.b, ['mirror', 'status']), []);
    const aFile = await diskPath(s.a, 'app');
    await cliJson(s.a, ['staging', 'detach', 'app']);
    await assertSameBytes(aFile, await diskPath(s.b, 'app-dr'), 'the released replica holds every write', DISK);
    await qemuIoOk(s.b.uri('app-dr'), ['write -P 0x01 0 4k']);
    await cliJson(s.a, ['peer', 'show', s.peer]);
  });
});
