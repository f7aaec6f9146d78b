// The event-loop polling between NBD requests (src/nbd/idle-poller.ts): a window opens
// when the last request in flight finishes and closes by itself; requests in flight stop
// it; the window halves after each long gap until polling stops, and comes back at full
// size when requests arrive close together again. No timing thresholds: a "long gap" is
// a wait far beyond the window, a "short" one no wait at all.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { IdlePoller } from '../../src/nbd/idle-poller.js';

/** Resolves once the poller has stopped polling (it must, by itself). */
async function settled(p: IdlePoller): Promise<void> {
  while (p.polling) await new Promise((r) => setImmediate(r));
}

test('a window opens when the last request finishes and closes by itself', async () => {
  const p = new IdlePoller(200);
  p.begin();
  p.begin();
  p.end();
  assert.equal(p.polling, false, 'a request is still in flight');
  p.end();
  assert.equal(p.polling, true);
  await settled(p);
  assert.equal(p.windowUs, 200);
});

test('a request in flight stops the polling', async () => {
  const p = new IdlePoller(10_000);
  p.begin();
  p.end();
  assert.equal(p.polling, true);
  p.begin();
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  assert.equal(p.polling, false, 'no polling while a request is in flight');
  p.end();
  assert.equal(p.polling, true);
  await settled(p);
});

test('long gaps halve the window down to none; a short gap restores it', async () => {
  const p = new IdlePoller(200);
  const windows: number[] = [];
  p.begin();
  p.end();
  for (let i = 0; i < 7; i++) {
    await settled(p);
    await sleep(20); // 20 ms: a hundred times the window
    p.begin();
    windows.push(p.windowUs);
    p.end();
  }
  assert.deepEqual(windows, [100, 50, 25, 12.5, 6.25, 0, 0]);
  assert.equal(p.polling, false, 'a zero window never polls');
  p.begin();
  p.end();
  p.begin(); // right after the last request ended
  const restored = p.windowUs;
  p.end();
  assert.equal(restored, 200);
  assert.equal(p.polling, true);
  await settled(p);
});

test('0 never polls; a bad window is refused', async () => {
  const p = new IdlePoller(0);
  for (let i = 0; i < 3; i++) {
    p.begin();
    p.end();
    assert.equal(p.polling, false);
  }
  assert.throws(() => new IdlePoller(-1), /pollUsMax/);
  assert.throws(() => new IdlePoller(Number.NaN), /pollUsMax/);
});
