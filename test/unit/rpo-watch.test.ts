// The RPO watch (src/mirror/rpo-watch.ts) in-process with a fake clock: each row of its
// decision table, a breach counted and logged once at its start and once at its end, a
// mirror's first sync not counted as a breach, and a changed target; and `mirror set`'s
// policy change rules (src/mirror/mirror-policy.ts, changePolicy). judgeRpo, the judgement the
// watch and the mirror site's status (replica-control.ts) share, row by row.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { FakeClock } from '../../src/testing/fake-clock.js';
import { RpoWatch, judgeRpo } from '../../src/mirror/rpo-watch.js';
import { changePolicy, parsePolicy } from '../../src/mirror/mirror-policy.js';

function logger(): { log: pino.Logger; lines: Array<{ level: number; msg: string }> } {
  const lines: Array<{ level: number; msg: string }> = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { log, lines };
}

test('decision table: no target, no image yet, met, missed', async () => {
  const clock = new FakeClock();
  const { log, lines } = logger();
  const w = new RpoWatch(null, log, () => clock.nowMs());
  assert.equal(w.observe(clock.nowMs()).met, null, 'no target: neither met nor missed');
  w.setTarget(10_000);
  const fresh = new RpoWatch(10_000, log, () => clock.nowMs());
  const first = fresh.observe(null);
  assert.deepEqual([first.met, first.exposureSeconds, first.newestImageAt, first.breaches], [false, null, null, 0], 'the first sync: missed, not a breach');
  assert.equal(lines.length, 0);
  const at = clock.nowMs();
  assert.equal(fresh.observe(at).met, true);
  await clock.advance(10_000);
  assert.equal(fresh.observe(null).met, true, 'exposure equal to the target still meets it');
  await clock.advance(1);
  const missed = fresh.observe(null);
  assert.equal(missed.met, false);
  assert.equal(missed.exposureSeconds, 10.001);
  assert.equal(missed.newestImageAt, new Date(at).toISOString(), 'the last image seen is kept while the mirror vouches for none');
  assert.equal(missed.breaches, 1);
});

test('judgeRpo: the decision table as a function of target, image time and now', () => {
  const now = Date.parse('2026-01-01T00:00:10.000Z');
  const at = (ms: number): string => new Date(ms).toISOString();
  const rows: Array<[number | null, number | null, ReturnType<typeof judgeRpo>]> = [
    [null, null, { targetSeconds: null, met: null, exposureSeconds: null, newestImageAt: null }],
    [null, now - 3000, { targetSeconds: null, met: null, exposureSeconds: 3, newestImageAt: at(now - 3000) }],
    [5000, null, { targetSeconds: 5, met: false, exposureSeconds: null, newestImageAt: null }],
    [5000, now - 5000, { targetSeconds: 5, met: true, exposureSeconds: 5, newestImageAt: at(now - 5000) }],
    [5000, now - 5001, { targetSeconds: 5, met: false, exposureSeconds: 5.001, newestImageAt: at(now - 5001) }],
    // An image stamped after now (the other site's clock ahead): no exposure, not a negative one.
    [5000, now + 2000, { targetSeconds: 5, met: true, exposureSeconds: 0, newestImageAt: at(now + 2000) }],
  ];
  for (const [targetMs, imageAtMs, want] of rows) assert.deepEqual(judgeRpo(targetMs, imageAtMs, now), want, `target ${targetMs}, image ${imageAtMs === null ? null : imageAtMs - now}`);
  // The watch returns the same judgement, plus its breach bookkeeping.
  const w = new RpoWatch(5000, logger().log, () => now);
  const { breachSeconds, breaches, ...judged } = w.observe(now - 4000);
  assert.deepEqual(judged, judgeRpo(5000, now - 4000, now));
  assert.deepEqual([breachSeconds, breaches], [null, 0]);
});

test('a breach is logged once at its start and once at its end, with its length', async () => {
  const clock = new FakeClock();
  const { log, lines } = logger();
  const w = new RpoWatch(2000, log, () => clock.nowMs());
  w.observe(clock.nowMs());
  const imageAt = clock.nowMs();
  for (let i = 0; i < 10; i++) {
    await clock.advance(1000);
    w.observe(imageAt); // the mirror stopped advancing (link cut): its image stays
  }
  const during = w.observe(imageAt);
  assert.equal(during.met, false);
  assert.equal(during.breachSeconds, 7, 'missed since the exposure passed 2 s (at 3 s)');
  w.observe(clock.nowMs());
  w.observe(clock.nowMs());
  const warn = lines.filter((l) => /breached/.test(l.msg));
  const end = lines.filter((l) => /breach ended/.test(l.msg));
  assert.equal(warn.length, 1);
  assert.equal(warn[0]!.level, 40);
  assert.equal(end.length, 1);
  assert.equal((end[0] as unknown as { breachSeconds: number }).breachSeconds, 7);
  assert.equal(w.observe(clock.nowMs()).breaches, 1);
  assert.equal(w.observe(clock.nowMs()).breachSeconds, null);
});

test('an image older than one already seen never moves the newest image back', async () => {
  const clock = new FakeClock();
  const w = new RpoWatch(5000, logger().log, () => clock.nowMs());
  const t0 = clock.nowMs();
  w.observe(t0);
  await clock.advance(1000);
  assert.equal(w.observe(t0 - 500).newestImageAt, new Date(t0).toISOString());
});

test('changing the target ends a breach; the next observation judges by the new one', async () => {
  const clock = new FakeClock();
  const { log, lines } = logger();
  const w = new RpoWatch(1000, log, () => clock.nowMs());
  const imageAt = clock.nowMs();
  w.observe(imageAt);
  await clock.advance(5000);
  assert.equal(w.observe(imageAt).met, false);
  w.setTarget(60_000);
  assert.equal(lines.filter((l) => /breach ended/.test(l.msg)).length, 1);
  const after = w.observe(imageAt);
  assert.deepEqual([after.met, after.breachSeconds, after.breaches], [true, null, 1]);
  w.setTarget(null);
  assert.equal(w.observe(imageAt).met, null);
});

test('changePolicy: fields left out keep their value, none clears, a request must change something', () => {
  const remote = parsePolicy({ maxLag: '30s', bandwidth: '10M', rpo: '1m' }, true);
  assert.deepEqual(remote, { onFull: 'bitmap', maxLagBytes: null, maxLagMs: 30_000, bandwidth: 10 * 1024 * 1024, compress: 'zstd', rpoMs: 60_000 });
  assert.deepEqual(changePolicy(remote, { bandwidth: '64K' }, true), { ...remote, bandwidth: 64 * 1024 });
  assert.deepEqual(changePolicy(remote, { bandwidth: 'none', maxLag: 'none', rpo: 'none' }, true), { ...remote, bandwidth: 0, maxLagMs: null, rpoMs: null });
  assert.deepEqual(changePolicy(remote, { maxLag: '64M' }, true), { ...remote, maxLagMs: null, maxLagBytes: 64 * 1024 * 1024 });
  assert.throws(() => changePolicy(remote, {}, true), /nothing to change/);
  assert.throws(() => changePolicy(remote, { onFull: 'sometimes' }, true), /--on-full must be/);
  const local = parsePolicy({}, false);
  assert.deepEqual(local, { onFull: 'throttle', maxLagBytes: null, maxLagMs: null, bandwidth: 0, compress: 'none', rpoMs: null });
  assert.throws(() => changePolicy(local, { compress: 'zstd' }, false), /peer site/);
  assert.throws(() => changePolicy(local, { onFull: 'bitmap' }, false), /bitmap is for mirrors at a peer site/);
  assert.deepEqual(changePolicy(local, { rpo: '90s' }, false), { ...local, rpoMs: 90_000 });
});
