// A consistency group's mirror under the full-staging policies (issue 16): with `--on-full
// bitmap`, an outage that overflows the group's staging area makes the group's mirror fall
// back to its dirty-region bitmap: one bitmap over the group's address space, so each member
// keeps its own regions in it, and the group is inconsistent until every member's are
// resynced. At site B the undo log covers the group's whole address space: site A lost (and
// site B killed and restarted) mid-resync, `mirror promote` rolls EVERY member back to the one
// point of the group's order it held before the resync: byte for byte, both members.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool } from '../harness.js';
import { Cleanup } from '../staging/helpers.js';
import { cliJson, diskPath, MiB, mirrorStatus, qemuIoOk, startSites, stopSitesBounded, waitCaughtUp, waitStatus, type Sites } from '../replication/helpers.js';

const MEMBER = 64 * MiB;
const LONG = { timeout: 300_000 } as const;

const sha256 = (file: string): string => createHash('sha256').update(fs.readFileSync(file)).digest('hex');
const patternHash = (byte: number): string => createHash('sha256').update(Buffer.alloc(MEMBER, byte)).digest('hex');

describe("a group's mirror in bitmap mode; promote mid-resync rolls every member back to one point", () => {
  const cleanup = new Cleanup();
  let s: Sites;
  let work: string;

  before(async () => {
    requireTool('qemu-io');
    s = await startSites(cleanup);
    stopSitesBounded(cleanup, s);
    work = cleanup.dir('ferry-group-bitmap-');
  }, LONG);
  after(() => cleanup.run(), LONG);

  it('overflow → bitmap for the whole group → resync → A lost, B restarted → promote: both members their pre-resync image', LONG, async (t) => {
    const { a } = s;
    for (const m of ['bm0', 'bm1']) await a.createDisk(m, MEMBER);
    await cliJson(a, ['group', 'create', 'bm', '--disks', 'bm0,bm1', '--staging', path.join(work, 'bm.stg'), '--staging-size', '64M']);
    for (const m of ['bm0', 'bm1']) await qemuIoOk(a.uri(m), ['write -P 0x11 0 64M']);
    await cliJson(a, ['mirror', 'create', '--group', 'bm', '--to', `${s.peer}:x-`, '--on-full', 'bitmap', '--compress', 'none', '--wait'], 170_000);
    await waitCaughtUp(s, 'bm', 'x-bm');
    const files = [await diskPath(s.b, 'x-bm0'), await diskPath(s.b, 'x-bm1')];
    for (const f of files) assert.equal(sha256(f), patternHash(0x11), `${f} holds the image before the outage`);

    // The outage: writes to both members overflow the group's one staging area.
    s.proxy.cut();
    for (const m of ['bm0', 'bm1']) await qemuIoOk(a.uri(m), Array.from({ length: 6 }, (_, i) => `write -P 0x22 ${i * 8}M 8M`));
    const bm = await waitStatus(a, 'bm', "the group's mirror in state 'bitmap'", (st) => st.state === 'bitmap');
    assert.equal(bm.consistent, false, 'the group is inconsistent until every member is resynced');
    assert.equal((await mirrorStatus(s.b, 'x-bm')).fallback, null, 'no undo log before the resync begins');
    s.proxy.bytesPerSec = 2 * MiB;
    s.proxy.restore();
    const st = await waitStatus(s.b, 'x-bm', 'an undo log with saved regions', (x) => x.fallback !== null && x.fallback.undoBytes > 4096 && x.consistent === false, 60_000);
    t.diagnostic(`resync under way: fallback image up to record ${st.fallback.seq}, undo log ${st.fallback.undoBytes} bytes`);
    // A record streamed during the resync, to the second member, goes through the guard too.
    await qemuIoOk(a.uri('bm1'), ['write -P 0x33 60M 1M']);
    await waitStatus(s.b, 'x-bm', 'the record applied', (x) => x.appliedSeq > st.appliedSeq, 60_000);
    assert.equal((await mirrorStatus(a, 'bm')).state, 'resyncing', 'the kill lands mid-resync');
    assert.ok(files.some((f) => sha256(f) !== patternHash(0x11)), 'the resync has overwritten parts of B');

    assert.equal((await a.kill9()).signal, 'SIGKILL'); // site A is lost
    assert.equal((await s.b.kill9()).signal, 'SIGKILL'); // and site B crashes too
    await s.b.start();
    assert.equal((await mirrorStatus(s.b, 'x-bm')).fallback?.seq, st.fallback.seq, 'the undo log is back after the restart');
    const r = await cliJson(s.b, ['mirror', 'promote', 'x-bm']);
    t.diagnostic(`promote: ${JSON.stringify(r)}`);
    assert.equal(r.image, 'rolled-back');
    assert.equal(r.seq, st.fallback.seq);
    for (const f of files) assert.equal(sha256(f), patternHash(0x11), `${f}: every member back at the group's one point before the resync`);
    for (const m of ['x-bm0', 'x-bm1']) await qemuIoOk(s.b.uri(m), ['write -P 0x44 0 64k', 'read -P 0x44 0 64k', 'read -P 0x11 64k 64k']);
    s.proxy.bytesPerSec = 0;
  });
});
