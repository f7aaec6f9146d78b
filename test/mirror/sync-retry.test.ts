// A sync that fails is tried again by itself: a local mirror onto a small tmpfs runs out of
// space mid-sync (a real ENOSPC from the kernel); the status shows the error while clients
// keep writing; once space is freed the sync resumes from its checkpoint, with backoff and
// no operator help, and the mirror ends identical to the disk.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, run, type Ferryd } from '../harness.js';
import { qemuIoOk } from '../interop/clients.js';
import { Cleanup } from '../staging/helpers.js';
import { MiB, T, assertSameBytes, cliJson, mirrorStatus, waitDrained, waitInSync } from './helpers.js';

describe('a failed mirror sync retries by itself', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let work: string;
  let small: string;

  before(async () => {
    requireTool('qemu-io');
    d = await cleanup.ferryd();
    work = fs.realpathSync(cleanup.dir('ferry-sync-retry-'));
    // A file system with room for the mirror only once a filler file is gone: the sync meets a real ENOSPC.
    small = await cleanup.tmpfs('small', '80m');
  }, T);
  after(() => cleanup.run(), T);

  it('runs out of space mid-sync, shows the error, and completes once space is freed', T, async (t) => {
    await d.createDisk('full', 64 * MiB);
    await qemuIoOk(d.uri('full'), ['write -P 0x5a 0 64M']);
    const filler = path.join(small, 'filler');
    fs.writeFileSync(filler, Buffer.alloc(40 * MiB, 1));
    const target = path.join(small, 'full.img');
    await cliJson(d, ['mirror', 'create', 'full', '--to', `local:${target}`, '--staging', path.join(work, 'full.stg'), '--staging-size', '64M']);
    const failed = await waitForStatus(d, 'full', (s) => s.syncError !== null, 60_000);
    t.diagnostic(`sync error: ${failed.syncError}`);
    assert.match(failed.syncError, /space|ENOSPC/i);
    assert.equal(failed.consistent, false);
    // Clients keep writing meanwhile.
    await qemuIoOk(d.uri('full'), ['write -P 0x6b 1M 1M']);
    fs.rmSync(filler);
    const done = await waitInSync(d, 'full', 120_000);
    assert.equal(done.syncError, null);
    await waitDrained(d, 'full');
    await assertSameBytes((await cliJson(d, ['disk', 'show', 'full'])).path, target, 'mirror after the retried sync');
    assert.ok((d.stdout + d.stderr).includes('retrying from its checkpoint'), 'the retry is logged');
  });
});

async function waitForStatus(d: Ferryd, disk: string, ok: (s: any) => boolean, timeoutMs: number): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await mirrorStatus(d, disk);
    if (ok(s)) return s;
    if (Date.now() > deadline) throw new Error(`timed out; last status ${JSON.stringify(s)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
