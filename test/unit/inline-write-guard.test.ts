// The policy that moves small client writes off the event loop when the kernel makes
// writers wait (src/disk/block-device.ts, InlineWriteGuard), on a fake clock: occasional
// stalls are absorbed, sustained ones send writes to the pool within the stall budget,
// backoffs double while probes stay slow and end at the first fast probe.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { InlineWriteGuard, inlineWritePolicy as p } from '../../src/disk/block-device.js';

function guardAt(startMs: number): { guard: InlineWriteGuard; clock: { now: number } } {
  const clock = { now: startMs };
  return { guard: new InlineWriteGuard(() => clock.now), clock };
}

test('fast writes and an occasional stall keep writes inline', () => {
  const { guard, clock } = guardAt(10_000);
  for (let i = 0; i < 100_000; i++) {
    clock.now += 0.1;
    // A 6 ms stall every 2 s: what a busy machine does to a QD1 writer.
    const elapsed = i % 20_000 === 0 ? 6 : 0.005;
    guard.record(elapsed, clock.now);
    assert.ok(guard.allowed(), `write ${i}`);
  }
});

test('sustained stalls move writes to the pool, holding the loop no longer than the budget and one stall', () => {
  const { guard, clock } = guardAt(10_000);
  let heldMs = 0;
  let writes = 0;
  while (guard.allowed()) {
    const stall = 40;
    clock.now += stall;
    heldMs += stall;
    writes++;
    guard.record(stall, clock.now);
    assert.ok(writes < 10, 'the guard trips');
  }
  assert.ok(heldMs <= p.budgetMs + 40 + 40, `held ${heldMs} ms`);
  assert.ok(guard.backedOff(clock.now));
});

test('many small stalls add up: past the budget per second, writes go to the pool', () => {
  const { guard, clock } = guardAt(10_000);
  let tripped = false;
  for (let i = 0; i < 1000 && !tripped; i++) {
    clock.now += 10; // 3 ms stalls every 10 ms: 300 ms per second, far above the refill
    guard.record(3, clock.now);
    tripped = !guard.allowed();
  }
  assert.ok(tripped);
});

test('the backoff lasts until the budget has refilled to half: longer for longer stalls, at most the maximum', () => {
  const refillMs = (ms: number): number => (ms * 1000) / p.refillMsPerS;
  for (const stall of [40, 200, 500, 100_000]) {
    const { guard, clock } = guardAt(10_000);
    guard.record(stall, (clock.now += stall));
    const expected = Math.min(p.backoffMsMax, refillMs(p.budgetMs / 2 - (p.budgetMs - stall)));
    clock.now += expected - 1;
    assert.equal(guard.allowed(), false, `still on the pool after a ${stall} ms stall`);
    clock.now += 1;
    assert.equal(guard.allowed(), true, `inline again after a ${stall} ms stall`);
  }
});

test('after a backoff, half the budget is left: one more long stall goes back to the pool at once', () => {
  const { guard, clock } = guardAt(10_000);
  guard.record(100, (clock.now += 100));
  while (!guard.allowed()) clock.now += 10;
  guard.record(0.01, (clock.now += 0.1));
  guard.record(p.budgetMs / 2 - 1, (clock.now += 0.1));
  assert.ok(guard.allowed(), 'less than the half budget left is absorbed');
  guard.record(100, (clock.now += 100));
  assert.ok(!guard.allowed());
});

test('sustained stalls cost the loop about the refill rate over time', () => {
  const { guard, clock } = guardAt(10_000);
  const startMs = clock.now;
  let heldMs = 0;
  while (clock.now - startMs < 600_000) {
    if (guard.allowed()) {
      const stall = 50 + (clock.now % 400); // 50–450 ms stalls on every write
      heldMs += stall;
      guard.record(stall, (clock.now += stall));
    } else clock.now += 5;
  }
  const perS = heldMs / ((clock.now - startMs) / 1000);
  assert.ok(perS <= p.refillMsPerS * 1.2, `held ${perS.toFixed(1)} ms per second`);
});
