// `mirror set` and RPO targets, on two real sites through the WAN proxy:
//  - the link's rate limit and compression change at once, without a restart (the mirror
//    falls behind under 64K/s and catches up when the limit is cleared), and survive one;
//  - bad values and requests that change nothing are refused with nothing changed, and a
//    local mirror refuses link options;
//  - an RPO target: with the link cut while a client writes, status (both sites), the CLI and
//    the metrics show the breach; it ends when the link returns; each is logged once;
//  - `mirror verify` shows its progress while it runs (a line every 10 s without a terminal).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { FERRY_BIN, requireTool, run, waitFor, type Ferryd } from '../harness.js';
import { Cleanup } from '../staging/helpers.js';
import { cliFails, cliJson, MiB, mirrorStatus, qemuIo, startSites, stopSitesBounded, waitCaughtUp, waitStatus, type Sites } from './helpers.js';

const LONG = { timeout: 300_000 } as const;


async function metrics(d: Ferryd): Promise<string> {
  const res = await fetch(`${d.apiUrl}/metrics`, { headers: { authorization: `Bearer ${d.token}` } });
  assert.equal(res.status, 200);
  return res.text();
}

function metric(text: string, name: string, disk: string): number | null {
  const m = new RegExp(`^${name}\\{disk="${disk}",role="primary",[^}]*\\} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : null;
}

/** Log lines of a site (JSON, on stdout or stderr) whose message matches. */
function logLines(d: Ferryd, msg: RegExp): string[] {
  return (d.stdout + d.stderr).split('\n').filter((l) => msg.test(l));
}

describe('mirror set and RPO targets', () => {
  const cleanup = new Cleanup();
  let s: Sites;
  let work: string;

  before(async () => {
    requireTool('qemu-io');
    s = await startSites(cleanup);
    stopSitesBounded(cleanup, s);
    work = cleanup.dir('ferry-set-');
    await s.a.createDisk('app', 64 * MiB);
    await cliJson(s.a, ['mirror', 'create', 'app', '--to', `${s.peer}:app-dr`, '--staging', path.join(work, 'app.stg'), '--staging-size', '64M', '--rpo', '2s']);
    await waitCaughtUp(s, 'app', 'app-dr');
  }, LONG);
  after(() => cleanup.run(), LONG);

  it('shows the RPO target as met on both sites while the mirror keeps up', LONG, async () => {
    const a = await mirrorStatus(s.a, 'app');
    assert.equal(a.policy.rpoMs, 2000);
    assert.equal(a.rpo.targetSeconds, 2);
    assert.equal(a.rpo.met, true);
    assert.equal(a.rpo.breaches, 0);
    assert.ok(Date.parse(a.rpo.newestImageAt) > 0, a.rpo.newestImageAt);
    // The mirror site learns the target from the link's frames, and holds an image of its own time.
    const b = await waitStatus(s.b, 'app-dr', 'the RPO target told', (st) => st.rpo?.targetSeconds === 2);
    assert.equal(b.rpo.met, true);
    assert.ok(Date.parse(b.rpo.newestImageAt) > 0);
    const text = await metrics(s.a);
    assert.equal(metric(text, 'ferry_mirror_rpo_target_seconds', 'app'), 2);
    assert.equal(metric(text, 'ferry_mirror_rpo_met', 'app'), 1);
    assert.equal(metric(text, 'ferry_mirror_rpo_breaches_total', 'app'), 0);
  });

  it('reports a breach while the link is cut under writes, and its end; each logged once', LONG, async () => {
    s.proxy.cut();
    const w = await qemuIo(s.a.uri('app'), ['write -P 0x61 0 1M']);
    assert.equal(w.code, 0, w.stderr);
    const breached = await waitStatus(s.a, 'app', 'the RPO breached', (st) => st.rpo?.met === false && st.rpo.breachSeconds !== null);
    assert.equal(breached.rpo.breaches, 1);
    assert.ok(breached.rpo.exposureSeconds > 2, JSON.stringify(breached.rpo));
    const text = await metrics(s.a);
    assert.equal(metric(text, 'ferry_mirror_rpo_met', 'app'), 0);
    assert.equal(metric(text, 'ferry_mirror_rpo_breaches_total', 'app'), 1);
    const cli = await s.a.cli(['mirror', 'status', 'app']);
    assert.equal(cli.code, 0, cli.stderr);
    assert.match(cli.stdout, /RPO missed/);
    assert.match(cli.stdout, /\/2s MISSED for \d+s/);
    const overview = await cliJson(s.a, ['status']);
    assert.ok(overview.problems.some((p: string) => /^app: RPO missed: newest image at the mirror \d+s old \(target 2s\)/.test(p)), JSON.stringify(overview.problems));
    s.proxy.restore();
    const met = await waitStatus(s.a, 'app', 'the RPO met again', (st) => st.rpo?.met === true);
    assert.equal(met.rpo.breaches, 1, 'one breach counted');
    await waitFor('the end of the breach logged', () => logLines(s.a, /RPO breach ended/).length === 1);
    assert.equal(logLines(s.a, /RPO target breached/).length, 1, 'the breach is logged once');
    const start = JSON.parse(logLines(s.a, /RPO target breached/)[0]!);
    assert.equal(start.disk, 'app');
    assert.equal(start.rpoSeconds, 2);
  });

  it('changes the link rate limit and compression at once, and keeps them across a restart', LONG, async () => {
    await waitCaughtUp(s, 'app', 'app-dr');
    const limited = await cliJson(s.a, ['mirror', 'set', 'app', '--bandwidth', '64K', '--compress', 'none']);
    assert.equal(limited.policy.bandwidth, 64 * 1024);
    assert.equal(limited.policy.compress, 'none');
    assert.equal(limited.policy.rpoMs, 2000, 'fields left out keep their value');
    // 2 MiB at 64 KiB/s takes half a minute: the mirror is seen behind once the client is done.
    const w = await qemuIo(s.a.uri('app'), ['write -P 0x62 4M 2M']);
    assert.equal(w.code, 0, w.stderr);
    const behind = await mirrorStatus(s.a, 'app');
    assert.ok(behind.lagBytes > MiB, `the limit holds the mirror back: ${behind.lagBytes} bytes behind`);
    const unlimited = await cliJson(s.a, ['mirror', 'set', 'app', '--bandwidth', 'none']);
    assert.equal(unlimited.policy.bandwidth, 0);
    await waitCaughtUp(s, 'app', 'app-dr');

    await cliJson(s.a, ['mirror', 'set', 'app', '--bandwidth', '10M', '--rpo', '1m', '--max-lag', '30s']);
    await s.a.restart();
    const after = await mirrorStatus(s.a, 'app');
    assert.deepEqual(
      { bandwidth: after.policy.bandwidth, compress: after.policy.compress, rpoMs: after.policy.rpoMs, maxLagMs: after.policy.maxLagMs },
      { bandwidth: 10 * MiB, compress: 'none', rpoMs: 60_000, maxLagMs: 30_000 },
    );
    await waitCaughtUp(s, 'app', 'app-dr');
  });

  it('refuses bad values and empty changes, changing nothing; a local mirror has no link options', LONG, async () => {
    const before = (await mirrorStatus(s.a, 'app')).policy;
    assert.match(await cliFails(s.a, ['mirror', 'set', 'app', '--bandwidth', '10'], 'BAD_REQUEST'), /at least 64K/);
    assert.match(await cliFails(s.a, ['mirror', 'set', 'app', '--rpo', '5'], 'BAD_REQUEST'), /not a duration/);
    assert.match(await cliFails(s.a, ['mirror', 'set', 'app', '--rpo', '10d'], 'BAD_REQUEST'), /not a duration/);
    assert.match(await cliFails(s.a, ['mirror', 'set', 'app', '--max-lag', 'soon'], 'BAD_REQUEST'), /neither a duration/);
    assert.match(await cliFails(s.a, ['mirror', 'set', 'app'], 'BAD_REQUEST'), /nothing to change/);
    assert.match(await cliFails(s.a, ['mirror', 'set', 'nosuch', '--rpo', '5s'], 'DISK_NOT_FOUND'), /nosuch/);
    assert.deepEqual((await mirrorStatus(s.a, 'app')).policy, before);
    // At the mirror site the mirror is managed from the primary.
    assert.match(await cliFails(s.b, ['mirror', 'set', 'app-dr', '--rpo', '5s'], 'BAD_REQUEST'), /manage the mirror there/);
    // A local mirror: no link to limit; --on-full bitmap is for remote mirrors.
    await s.a.createDisk('loc', 16 * MiB);
    await cliJson(s.a, ['mirror', 'create', 'loc', '--to', `local:${path.join(work, 'loc.mirror')}`, '--staging', path.join(work, 'loc.stg'), '--staging-size', '64M']);
    assert.match(await cliFails(s.a, ['mirror', 'set', 'loc', '--bandwidth', '1M'], 'BAD_REQUEST'), /peer site/);
    assert.match(await cliFails(s.a, ['mirror', 'set', 'loc', '--on-full', 'bitmap'], 'NOT_SUPPORTED'), /bitmap/);
    const loc = await cliJson(s.a, ['mirror', 'set', 'loc', '--on-full', 'fail', '--rpo', '30s']);
    assert.equal(loc.policy.onFull, 'fail');
    assert.equal(loc.rpo.targetSeconds, 30);
    const cleared = await cliJson(s.a, ['mirror', 'set', 'loc', '--rpo', 'none']);
    assert.equal(cleared.policy.rpoMs, null);
    assert.equal(cleared.rpo.targetSeconds, null);
  });

  it('mirror verify shows its progress while it runs (a line every 10 s without a terminal)', LONG, async () => {
    await waitCaughtUp(s, 'app', 'app-dr');
    // With the link cut the verify waits for the mirror site's first region: it runs, at 0%.
    s.proxy.cut();
    const child = spawn(process.execPath, [FERRY_BIN, 'mirror', 'verify', 'app'], { env: { ...process.env, FERRY_API: s.a.apiUrl, FERRY_DATA: s.a.dataDir }, stdio: ['ignore', 'pipe', 'pipe'] });
    cleanup.track(child);
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const running = await waitStatus(s.a, 'app', 'a verify in progress', (st) => st.verify !== null);
    assert.equal(running.verify.bytes, 64 * MiB);
    assert.ok(Date.parse(running.verify.startedAt) > 0);
    await waitFor('a progress line from the CLI', () => /^verify app: \d+% \(/m.test(err), 60_000);
    s.proxy.restore();
    assert.equal(await exited, 0, `${out}${err}`);
    assert.match(out, /disk and mirror are identical/);
    assert.equal((await mirrorStatus(s.a, 'app')).verify, null, 'no verify shown once it ended');
  });
});
