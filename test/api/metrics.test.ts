// Metrics an operator alerts on, and a scrape address without the admin token: with
// `serve --metrics HOST:PORT`, GET /metrics answers there with no token (and nothing else
// does), while /metrics on the API still needs it. The series: staging fill and free bytes,
// copy health, unapplied records, and the mirror state as an enum gauge, read from a real
// ferryd with a staging area (two copies) and a local mirror.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { requireTool, run, startFerryd, tmpDir, type Ferryd } from '../harness.js';
import { waitFor } from './helpers.js';

/** A free loopback port (bound and released). */
async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** The value of one series (name and exact label set) in Prometheus text, or undefined. */
function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  const want = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .sort()
    .join(',');
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)\{([^}]*)\} (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    if (m[2]!.split(',').sort().join(',') === want) return Number(m[3]);
  }
  return undefined;
}

describe('metrics for alerting, and a scrape address without the token', () => {
  let d: Ferryd;
  let metricsUrl: string;
  let work: string;

  before(async () => {
    const port = await freePort();
    d = await startFerryd({ args: ['--metrics', `127.0.0.1:${port}`] });
    metricsUrl = `http://127.0.0.1:${port}/metrics`;
    assert.ok(d.stdout.includes(`metrics (GET /metrics, no token) on ${metricsUrl}`), d.stdout);
    work = tmpDir('ferry-metrics-');
    await d.createDisk('m1', '16M');
    const r = await d.cli(['mirror', 'create', 'm1', '--to', `local:${path.join(work, 'm1.mirror')}`, '--staging', path.join(work, 'm1.stg'), '--staging-size', '64M', '--staging-copy', path.join(work, 'm1.copy.stg'), '--wait']);
    assert.equal(r.code, 0, r.stderr);
  });
  after(() => d.stop());

  test('the metrics address needs no token and serves only /metrics; the API /metrics still needs one', async () => {
    const open = await fetch(metricsUrl);
    assert.equal(open.status, 200);
    assert.match(open.headers.get('content-type') ?? '', /^text\/plain/);
    const other = await fetch(metricsUrl.replace('/metrics', '/v1/disks'));
    assert.equal(other.status, 404);
    assert.equal(((await other.json()) as { error: { code: string } }).error.code, 'NOT_FOUND');
    const api = await fetch(`${d.apiUrl}/metrics`);
    assert.equal(api.status, 401);
  });

  test('staging fill, free bytes, copy health and the mirror state enum', async () => {
    const text = await (await fetch(metricsUrl)).text();
    const size = sample(text, 'ferry_staging_size_bytes', { disk: 'm1' });
    const used = sample(text, 'ferry_staging_used_bytes', { disk: 'm1' });
    const free = sample(text, 'ferry_staging_free_bytes', { disk: 'm1' });
    assert.ok(size !== undefined && size > 0, text);
    assert.ok(used !== undefined && free !== undefined && used + free === size, `used ${used} + free ${free} = size ${size}`);
    assert.equal(sample(text, 'ferry_staging_failed', { disk: 'm1' }), 0);
    assert.equal(sample(text, 'ferry_staging_copy_healthy', { disk: 'm1', copy: path.join(work, 'm1.stg') }), 1);
    assert.equal(sample(text, 'ferry_staging_copy_healthy', { disk: 'm1', copy: path.join(work, 'm1.copy.stg') }), 1);
    const target = `local:${path.join(work, 'm1.mirror')}`;
    const state = (s: string): number | undefined => sample(text, 'ferry_mirror_state', { disk: 'm1', role: 'primary', target, state: s });
    assert.equal(state('in-sync'), 1, text);
    for (const s of ['syncing', 'paused', 'bitmap', 'resyncing']) assert.equal(state(s), 0, s);
    assert.equal(sample(text, 'ferry_mirror_dirty_bytes', { disk: 'm1', role: 'primary', target }), 0);
  });

  test('a paused mirror and a failed copy show in the series', async () => {
    assert.equal((await d.cli(['mirror', 'pause', 'm1'])).code, 0);
    const target = `local:${path.join(work, 'm1.mirror')}`;
    await waitFor('the paused state in the metrics', async () => sample(await (await fetch(metricsUrl)).text(), 'ferry_mirror_state', { disk: 'm1', role: 'primary', target, state: 'paused' }) === 1, 15_000);
    assert.equal((await d.cli(['mirror', 'resume', 'm1'])).code, 0);
    // The copy's file removed under writes: the copy is failed, and the gauge says so.
    const copy = path.join(work, 'm1.copy.stg');
    fs.rmSync(copy);
    const qemuIo = requireTool('qemu-io');
    await waitFor('the removed copy seen as failed', async () => {
      const w = await run(qemuIo, ['-f', 'raw', '-c', 'write -P 0x33 0 64k', d.uri('m1')]);
      assert.equal(w.code, 0, w.stderr);
      return sample(await (await fetch(metricsUrl)).text(), 'ferry_staging_copy_healthy', { disk: 'm1', copy }) === 0;
    }, 30_000);
    const text = await (await fetch(metricsUrl)).text();
    assert.equal(sample(text, 'ferry_staging_copy_healthy', { disk: 'm1', copy: path.join(work, 'm1.stg') }), 1);
    assert.equal(sample(text, 'ferry_staging_failed', { disk: 'm1' }), 0, 'one copy left: the staging area still takes writes');
  });
});
