// Issue 16, "Membership changes under load": a group of two disks with a local group mirror,
// fio (nbd engine, crc32c verification as it goes) on every member; a third disk, written
// beforehand with a known pattern, is added while fio runs, then fio runs on it too; then the
// first member is removed while fio still runs on all three. Requests are held during each
// change, never failed: fio sees no error anywhere, also on the disk removed (a disk of its
// own afterwards, its mirror file left as it was). The mirror copies the new member while the
// others keep streaming and ends in sync, every member's file equal to its disk. How long
// requests were held is measured from the client side (latency-probe.py, QD1 reads on a
// member throughout and on the member removed, and fio's own latencies) and reported, never
// asserted. Then: refusals of add/remove that change nothing, a restart that opens everything
// as it was, and the group is still causal after the changes (the cross-disk causal workload
// on the remaining members, the mirror lagging, kill -9 mid-catch-up: its files are one
// causal cut).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { lastJson, requireTool, type Ferryd } from '../harness.js';
import { nbdsh, py, qemuIoOk, sha256File } from '../interop/clients.js';
import { Cleanup, PYTHON, SYSTEM_ENV, waitFor } from '../staging/helpers.js';
import { MiB, assertSameBytes, cliFails, cliJson, diskShow, mirrorStatus, stagingShow, startFio, waitDrained, waitInSync, waitWrites, type FioRun } from '../mirror/helpers.js';
import { assertCausal, causalCheck, readCausalLog, startCausalWorkload } from './helpers.js';

const T = { timeout: 300_000 } as const;
const PROBE = path.join(path.dirname(fileURLToPath(import.meta.url)), 'latency-probe.py');
/** Requests slower than this are listed by the probe (the normal QD1 read takes well under a ms). */
const SLOW_MS = 20;
const CAUSAL_BLOCKS = (16 * MiB) / 4096;

interface ProbeResult {
  requests: number;
  worstMs: number;
  slow: Array<[number, number]>;
  error: string | null;
}

/** latency-probe.py on `uri` in the background; stop() ends it and returns its result (asserting no request failed). */
function startProbe(cleanup: Cleanup, dir: string, uri: string, name: string): { connected: Promise<void>; stop(): Promise<ProbeResult> } {
  const stopFile = path.join(dir, `${name}.stop`);
  const child = spawn(PYTHON, [PROBE, uri, String((64 * MiB) / 4096), String(SLOW_MS), stopFile], { env: SYSTEM_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
  cleanup.track(child);
  let out = '';
  let err = '';
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  const connected = new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString();
      if (out.includes('connected\n')) resolve();
    });
    void exited.then(() => reject(new Error(`probe ${name} exited before connecting: ${err}`)));
  });
  return {
    connected,
    async stop() {
      fs.writeFileSync(stopFile, '');
      const code = await exited;
      assert.equal(code, 0, `probe ${name}: exit ${code}\n${err}`);
      const r = lastJson<ProbeResult>(out);
      assert.equal(r.error, null, `a request of probe ${name} failed (held requests must wait, not fail): ${r.error}`);
      assert.ok(r.requests > 0, `probe ${name} made no request`);
      return r;
    },
  };
}

/** The probe's slowest request that overlapped [fromMs, toMs] (epoch ms), 0 if none was slow. */
function heldDuring(r: ProbeResult, fromMs: number, toMs: number): number {
  let worst = 0;
  for (const [start, ms] of r.slow) if (start * 1000 <= toMs && start * 1000 + ms >= fromMs) worst = Math.max(worst, ms);
  return worst;
}

/** sha256 of an export's whole content, read through NBD. */
async function exportHash(d: Ferryd, disk: string): Promise<string> {
  const out = await nbdsh(`import hashlib
h.connect_uri(${py(d.uri(disk))})
s = hashlib.sha256()
size = h.get_size()
off = 0
while off < size:
    n = min(4 << 20, size - off)
    s.update(h.pread(n, off))
    off += n
print(s.hexdigest())`);
  return out.trim();
}

function write(d: Ferryd, disk: string, pattern: number, offset: number, length: number): Promise<unknown> {
  return qemuIoOk(d.uri(disk), [`write -P ${pattern} ${offset} ${length}`]);
}

function readBack(d: Ferryd, disk: string, pattern: number, offset: number, length: number): Promise<unknown> {
  return qemuIoOk(d.uri(disk), [`read -P ${pattern} ${offset} ${length}`], ['-r']);
}

/** A timed CLI call: its result and how long it took (ms). */
async function timed<R>(fn: () => Promise<R>): Promise<{ r: R; fromMs: number; toMs: number }> {
  const fromMs = Date.now();
  const r = await fn();
  return { r, fromMs, toMs: Date.now() };
}

/** What must not change across a refusal or a restart: the group, its mirror, the disks. */
async function snapshot(d: Ferryd): Promise<unknown> {
  const g = await cliJson(d, ['group', 'show', 'G']);
  const m = await mirrorStatus(d, 'G');
  const disks = [];
  for (const name of ['D1', 'D2', 'D3', 'D4', 'D5', 'D6', 'D7']) {
    const x = await diskShow(d, name);
    const staging = await d.api('GET', `/v1/disks/${name}/staging`);
    const mirror = await d.api('GET', `/v1/disks/${name}/mirror`);
    disks.push({ name, path: x.path, size: x.size, group: x.group ?? null, staging: staging.body.path ?? staging.body.error?.code, mirror: mirror.body.target ?? mirror.body.error?.code });
  }
  return {
    group: { members: g.members.map((x: any) => [x.disk, x.base, x.size]), addressBytes: g.addressBytes, staging: g.staging, mirror: g.mirror },
    mirror: { target: m.target, members: m.members.map((x: any) => [x.disk, x.target]) },
    disks,
  };
}

describe('consistency group membership changes under load', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let work: string;
  let mdir: string;
  const file: Record<string, string> = {};
  /** sha256 of the removed member's mirror file just after the removal: it is never written again. */
  let d1MirrorHash = '';

  before(async () => {
    requireTool('fio');
    requireTool('qemu-io');
    d = await cleanup.ferryd();
    work = fs.realpathSync(cleanup.dir('ferry-group-membership-'));
    mdir = path.join(work, 'mirror');
    fs.mkdirSync(mdir);
  }, T);
  after(() => cleanup.run(), T);

  it('add and remove members while fio verifies on every member: nothing fails, the mirror copies the new member and ends equal', T, async (t) => {
    for (const [name, size] of [['D1', '64M'], ['D2', '64M'], ['D3', '96M']] as const) file[name] = (await d.createDisk(name, size)).path;
    // D3's known content before it joins: fio overwrites some of [0, 64M); [64M, 96M) keeps it.
    await write(d, 'D3', 0x5c, 0, 96 * MiB);
    await cliJson(d, ['group', 'create', 'G', '--disks', 'D1,D2', '--staging', path.join(work, 'G.stg'), '--staging-size', '256M']);
    const m0 = await cliJson(d, ['mirror', 'create', '--group', 'G', '--to', `local:${mdir}`, '--wait']);
    assert.deepEqual(m0.members.map((x: any) => [x.disk, x.synced]), [['D1', true], ['D2', true]]);

    const fio: Record<string, FioRun> = {};
    const fioDir = (name: string): string => fs.mkdtempSync(path.join(work, `fio-${name}-`));
    for (const name of ['D1', 'D2']) fio[name] = startFio(cleanup, d.uri(name), { name, cwd: fioDir(name), rateIops: 1000 });
    const probeD2 = startProbe(cleanup, work, d.uri('D2'), 'D2');
    const probeD1 = startProbe(cleanup, work, d.uri('D1'), 'D1');
    await Promise.all([probeD2.connected, probeD1.connected]);
    await Promise.all([waitWrites(d, 'D1', 2000), waitWrites(d, 'D2', 2000)]);

    // Add D3 under load.
    const add = await timed(() => cliJson(d, ['group', 'add', 'G', 'D3']));
    assert.deepEqual(add.r.members.map((x: any) => [x.disk, x.base]), [['D1', 0], ['D2', 64 * MiB], ['D3', 128 * MiB]]);
    assert.equal((await diskShow(d, 'D3')).group, 'G');
    const afterAdd = await mirrorStatus(d, 'G');
    t.diagnostic(`just after the add: mirror ${afterAdd.state}, members ${JSON.stringify(afterAdd.members.map((x: any) => [x.disk, x.synced]))}`);
    fio.D3 = startFio(cleanup, d.uri('D3'), { name: 'D3', cwd: fioDir('D3'), size: '64m', rateIops: 1000 });
    await Promise.all([waitWrites(d, 'D3', 2000), waitWrites(d, 'D1', 1000), waitWrites(d, 'D2', 1000)]);

    // Remove D1 while fio runs on all three.
    const remove = await timed(() => cliJson(d, ['group', 'remove', 'G', 'D1']));
    assert.deepEqual(remove.r.members.map((x: any) => [x.disk, x.base]), [['D2', 64 * MiB], ['D3', 128 * MiB]]);
    const d1 = await diskShow(d, 'D1');
    assert.equal(d1.group, undefined, 'D1 is a disk of its own');
    assert.equal(d1.path, file.D1);
    assert.equal((await d.api('GET', '/v1/disks/D1/staging')).body.error?.code, 'NO_STAGING', "D1 has no staging area: the group's stays with the group");
    d1MirrorHash = sha256File(path.join(mdir, 'D1.img'));
    // fio goes on on every disk, D1 included (now straight to its own device).
    await Promise.all([waitWrites(d, 'D1', 2000), waitWrites(d, 'D2', 1000), waitWrites(d, 'D3', 1000)]);
    for (const [name, f] of Object.entries(fio)) assert.ok(f.running(), `fio on ${name} still runs`);

    // The mirror copies D3 while fio runs, and ends in sync with every member copied.
    const seen: any[] = [afterAdd];
    const synced = await waitInSync(d, 'G', 120_000, seen);
    assert.deepEqual(synced.members.map((x: any) => [x.disk, x.synced]), [['D2', true], ['D3', true]]);
    const states = [...new Set(seen.map((s) => s.state))];

    const probes = { D2: await probeD2.stop(), D1: await probeD1.stop() };
    const jobs: Record<string, any> = {};
    for (const [name, f] of Object.entries(fio)) jobs[name] = await f.stop(); // asserts: no verify error, no I/O error
    await waitDrained(d, 'G');
    await assertSameBytes(file.D2!, path.join(mdir, 'D2.img'), 'D2 and its mirror file');
    await assertSameBytes(file.D3!, path.join(mdir, 'D3.img'), 'D3 and its mirror file');
    await readBack(d, 'D3', 0x5c, 64 * MiB, 32 * MiB);
    const tail = Buffer.alloc(32 * MiB);
    const fd = fs.openSync(path.join(mdir, 'D3.img'), 'r');
    fs.readSync(fd, tail, 0, tail.length, 64 * MiB);
    fs.closeSync(fd);
    assert.ok(tail.equals(Buffer.alloc(32 * MiB, 0x5c)), "D3's content from before it joined is in its mirror file");
    assert.ok(fs.existsSync(path.join(mdir, 'D1.img')), "the removed member's mirror file stays");
    assert.equal(fs.statSync(path.join(mdir, 'D1.img')).size, 64 * MiB);

    const lat = (j: any): string => `${j.write.total_ios} writes, ${j.read.total_ios} verify reads, write clat max ${(j.write.clat_ns.max / 1e6).toFixed(1)} ms p99.9 ${((j.write.clat_ns.percentile?.['99.900000'] ?? 0) / 1e6).toFixed(1)} ms`;
    t.diagnostic(`add took ${add.toMs - add.fromMs} ms (CLI round trip); the slowest QD1 read on D2 overlapping it: ${heldDuring(probes.D2, add.fromMs, add.toMs).toFixed(1)} ms, on D1: ${heldDuring(probes.D1, add.fromMs, add.toMs).toFixed(1)} ms`);
    t.diagnostic(`remove took ${remove.toMs - remove.fromMs} ms; the slowest QD1 read on D2 overlapping it: ${heldDuring(probes.D2, remove.fromMs, remove.toMs).toFixed(1)} ms, on D1: ${heldDuring(probes.D1, remove.fromMs, remove.toMs).toFixed(1)} ms`);
    t.diagnostic(`probes: D2 ${probes.D2.requests} reads (worst ${probes.D2.worstMs} ms, ${probes.D2.slow.length} over ${SLOW_MS} ms), D1 ${probes.D1.requests} reads (worst ${probes.D1.worstMs} ms, ${probes.D1.slow.length} over ${SLOW_MS} ms)`);
    for (const [name, j] of Object.entries(jobs)) t.diagnostic(`fio ${name}: ${lat(j)}`);
    t.diagnostic(`mirror states seen from the add to in-sync: ${states.join(', ')}`);
  });

  it('refusals change nothing: a disk with its own staging area or mirror, a disk in a group, a paused mirror, the last member; a restart opens everything as it was', T, async () => {
    for (const name of ['D4', 'D5', 'D6', 'D7']) file[name] = (await d.createDisk(name, '32M')).path;
    await cliJson(d, ['staging', 'attach', 'D4', '--path', path.join(work, 'D4.stg'), '--size', '64M']);
    await cliJson(d, ['mirror', 'create', 'D5', '--to', `local:${path.join(work, 'D5-mirror.img')}`, '--staging', path.join(work, 'D5.stg'), '--staging-size', '64M', '--wait']);
    await cliJson(d, ['group', 'create', 'G2', '--disks', 'D6', '--staging', path.join(work, 'G2.stg'), '--staging-size', '64M']);
    const before = await snapshot(d);
    const files = (): string[] => fs.readdirSync(mdir).sort();
    const filesBefore = files();
    assert.deepEqual(filesBefore, ['D1.img', 'D2.img', 'D3.img']);

    await cliFails(d, ['group', 'add', 'G', 'D4'], 'DISK_BUSY');
    await cliFails(d, ['group', 'add', 'G', 'D5'], 'DISK_BUSY');
    await cliFails(d, ['group', 'add', 'G', 'D6'], 'DISK_IN_GROUP');
    await cliFails(d, ['group', 'add', 'G', 'D2'], 'DISK_IN_GROUP');
    await cliFails(d, ['group', 'remove', 'G2', 'D6'], 'BAD_REQUEST');
    await cliJson(d, ['mirror', 'pause', 'G']);
    await cliFails(d, ['group', 'add', 'G', 'D7'], 'MIRROR_BUSY');
    await cliFails(d, ['group', 'remove', 'G', 'D2'], 'MIRROR_BUSY');
    assert.equal((await mirrorStatus(d, 'G')).state, 'paused', 'a refused change leaves the mirror paused');
    await cliJson(d, ['mirror', 'resume', 'G']);
    // A file in the mirror's directory under the member's name that holds data is never taken.
    const d7File = path.join(mdir, 'D7.img');
    fs.writeFileSync(d7File, 'not a mirror of D7');
    await cliFails(d, ['group', 'add', 'G', 'D7'], 'PATH_IN_USE');
    assert.equal(fs.readFileSync(d7File, 'utf8'), 'not a mirror of D7', 'the refused add left the file as it was');
    fs.rmSync(d7File);
    assert.deepEqual(await snapshot(d), before, 'the refusals changed nothing');
    assert.deepEqual(files(), filesBefore, 'no mirror file was created');
    assert.deepEqual((await cliJson(d, ['group', 'show', 'G2'])).members.map((x: any) => x.disk), ['D6']);

    // Writes staged just before the restart (each member and the former one), then a restart.
    await write(d, 'D1', 0x71, 60 * MiB, MiB);
    await write(d, 'D2', 0x72, 50 * MiB, MiB);
    await write(d, 'D3', 0x73, 90 * MiB, MiB);
    const hashes: Record<string, string> = {};
    for (const name of ['D1', 'D2', 'D3']) hashes[name] = await exportHash(d, name);
    const writtenSeq = (await stagingShow(d, 'G')).writtenSeq;
    await d.restart();
    assert.deepEqual(await snapshot(d), before, 'a restart opens the groups, members, mirrors and disks as they were');
    for (const name of ['D1', 'D2', 'D3']) assert.equal(await exportHash(d, name), hashes[name], `${name} reads the same after the restart`);
    assert.ok((await stagingShow(d, 'G')).writtenSeq >= writtenSeq, "the group's sequence goes on");
    await readBack(d, 'D3', 0x5c, 92 * MiB, 4 * MiB);
    // Still one group: a write to each member, the mirror follows both.
    await write(d, 'D2', 0x82, 51 * MiB, MiB);
    await write(d, 'D3', 0x83, 91 * MiB, MiB);
    const s = await waitInSync(d, 'G');
    assert.deepEqual(s.members.map((x: any) => [x.disk, x.synced]), [['D2', true], ['D3', true]]);
    await waitDrained(d, 'G');
    await assertSameBytes(file.D2!, path.join(mdir, 'D2.img'), 'D2 and its mirror file after the restart');
    await assertSameBytes(file.D3!, path.join(mdir, 'D3.img'), 'D3 and its mirror file after the restart');
    assert.equal(sha256File(file.D1!), hashes.D1, "D1's file holds what it served (it has no staging area)");
  });

  it('still one causal group after the changes: kill -9 while its mirror catches up leaves a causal cut in the member files', T, async (t) => {
    const seed = process.env.FERRY_CAUSAL_SEED ? Number(process.env.FERRY_CAUSAL_SEED) : Math.floor(Math.random() * 2 ** 31);
    t.diagnostic(`FERRY_CAUSAL_SEED=${seed}`);
    const disks = ['D2', 'D3'];
    // The workload's blocks start as zeroes (fio wrote there), on the mirror too before it starts.
    for (const disk of disks) await qemuIoOk(d.uri(disk), ['write -z 0 16M']);
    await waitDrained(d, 'G');
    const targets = disks.map((disk) => path.join(mdir, `${disk}.img`));
    const log = path.join(work, 'causal.log');
    const waitAcks = (n: number): Promise<void> => waitFor(`${n} acknowledged writes`, () => fs.existsSync(log) && readCausalLog(log).ackOrder.length >= n, 60_000);
    const w = startCausalWorkload(cleanup, disks.map((disk) => d.uri(disk)), log, { blocks: CAUSAL_BLOCKS, seed, maxSeconds: 150, depth: 8 });
    assert.ok(await w.connected, 'the workload did not connect');
    await waitAcks(500);
    await cliJson(d, ['mirror', 'pause', 'G']);
    const pausedAt = readCausalLog(log).lastCounter;
    await waitAcks(readCausalLog(log).ackOrder.length + 4000);
    const lagAtResume = (await mirrorStatus(d, 'G')).lagRecords;
    await cliJson(d, ['mirror', 'resume', 'G']);
    let lagAtKill = 0;
    await waitFor('the group mirror to be catching up', async () => {
      lagAtKill = (await mirrorStatus(d, 'G')).lagRecords;
      return lagAtKill < lagAtResume;
    }, 60_000);
    assert.equal((await d.kill9()).signal, 'SIGKILL');
    const run = await w.done;
    t.diagnostic(`paused after write ${pausedAt}; ${lagAtResume} records behind at resume, ${lagAtKill} at the kill; ${run.acked}/${run.issued} acknowledged`);

    const cut = await causalCheck(targets, log, CAUSAL_BLOCKS);
    t.diagnostic(`the mirror files: ${JSON.stringify({ ...cut, errors: cut.errors.slice(0, 3), violations: cut.violations.slice(0, 3) })}`);
    assertCausal(cut, "the group mirror's member files (an old member and one added under load) after kill -9");
    assert.ok(cut.perDisk.every((p) => p.highest > pausedAt), `the mirror applied writes from after the pause on both members: ${JSON.stringify(cut.perDisk)}`);

    await d.start();
    assertCausal(await causalCheck(disks.map((disk) => d.uri(disk)), log, CAUSAL_BLOCKS, { acked: true }), 'the members after a restart');
    const s = await waitInSync(d, 'G');
    assert.deepEqual(s.members.map((x: any) => [x.disk, x.synced]), [['D2', true], ['D3', true]]);
    await waitDrained(d, 'G');
    assertCausal(await causalCheck(targets, log, CAUSAL_BLOCKS, { acked: true }), 'the mirror once drained');
    for (const disk of disks) await assertSameBytes(file[disk]!, path.join(mdir, `${disk}.img`), `${disk} and its mirror file once drained`);
    assert.equal(sha256File(path.join(mdir, 'D1.img')), d1MirrorHash, "the removed member's mirror file is still there, untouched since its removal");
    assert.equal((await diskShow(d, 'D1')).group, undefined);
  });

  // What an add killed between creating its member's file and sizing it leaves (membership-crash
  // meets it only when the kill falls there): an empty file, taken by the next add and sized.
  it("an empty file under the member's name in the mirror's directory is taken by the add, sized and copied", T, async () => {
    const d7File = path.join(mdir, 'D7.img');
    fs.writeFileSync(d7File, '');
    await write(d, 'D7', 0x77, 3 * MiB, MiB);
    await cliJson(d, ['group', 'add', 'G', 'D7']);
    const s = await waitInSync(d, 'G');
    assert.deepEqual(s.members.map((x: any) => [x.disk, x.synced]), [['D2', true], ['D3', true], ['D7', true]]);
    await waitDrained(d, 'G');
    assert.equal(fs.statSync(d7File).size, 32 * MiB);
    await assertSameBytes(file.D7!, d7File, 'D7 and the mirror file it was given');
  });
});
