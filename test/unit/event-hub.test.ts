// The event stream's state, in process (fake sinks, a fake clock): ids (E1), the ring and the
// reset rule (E2, E3), the per-client queue bound (E4), the client bound (E5), heartbeats;
// and diffStatus, the status comparison behind the status events.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { EventHub, type Sink } from '../../src/api/event-hub.js';
import { diffStatus, StatusWatcher, type StatusReading } from '../../src/api/status-watcher.js';
import { FakeClock } from '../../src/testing/fake-clock.js';
import { FerryError } from '../../src/errors.js';

const log = pino({ level: 'silent' });

class FakeSink implements Sink {
  text = '';
  full = false;
  ended = false;
  destroyed = false;
  drain: (() => void) | null = null;
  closeFn: (() => void) | null = null;
  remote = '127.0.0.1';
  write(chunk: string): boolean {
    this.text += chunk;
    return !this.full;
  }
  onDrain(fn: () => void): void {
    this.drain = fn;
  }
  onClose(fn: () => void): void {
    this.closeFn = fn;
  }
  end(): void {
    this.ended = true;
  }
  destroy(): void {
    this.destroyed = true;
  }
  ids(): number[] {
    return [...this.text.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]));
  }
  types(): string[] {
    return [...this.text.matchAll(/^event: (\S+)$/gm)].map((m) => m[1]!);
  }
}

describe('EventHub', () => {
  test('ids start at the start time × 1000 and increase by one (E1)', async () => {
    const clock = new FakeClock(1_800_000_000_000);
    const hub = new EventHub({ log, clock });
    const s = new FakeSink();
    hub.connect(s, null);
    hub.publish('operation', { operationId: 'x' });
    hub.publish('operation', { operationId: 'y' });
    assert.deepEqual(s.ids(), [1_800_000_000_000_000, 1_800_000_000_000_001]);
    // A later ferryd's first id is above every id of this one.
    await clock.advance(1);
    assert.ok(new EventHub({ log, clock }).lastId >= hub.lastId);
    hub.close();
  });

  test('a reconnect replays what is still in the ring, else gets reset (E2, E3)', () => {
    const clock = new FakeClock();
    const hub = new EventHub({ log, clock, ringMax: 5 });
    const first = hub.lastId + 1;
    for (let i = 0; i < 8; i++) hub.publish('operation', { n: i });
    // Ring holds first+3 .. first+7.
    const ok = new FakeSink();
    hub.connect(ok, first + 2);
    assert.deepEqual(ok.ids(), [first + 3, first + 4, first + 5, first + 6, first + 7]);
    const late = new FakeSink();
    hub.connect(late, first + 1);
    assert.deepEqual(late.types(), ['reset']);
    assert.deepEqual(late.ids(), [first + 7], 'reset carries the newest id');
    const current = new FakeSink();
    hub.connect(current, first + 7);
    assert.deepEqual(current.ids(), []);
    const future = new FakeSink();
    hub.connect(future, first + 100);
    assert.deepEqual(future.types(), ['reset']);
    hub.publish('operation', { n: 8 });
    for (const s of [ok, late, current, future]) assert.equal(s.ids().at(-1), first + 8);
    hub.close();
    for (const s of [ok, late, current, future]) assert.ok(s.ended);
  });

  test('a client whose socket is full queues up to queueMax, then is disconnected (E4)', () => {
    const hub = new EventHub({ log, clock: new FakeClock(), queueMax: 3 });
    const slow = new FakeSink();
    const fast = new FakeSink();
    hub.connect(slow, null);
    hub.connect(fast, null);
    slow.full = true;
    hub.publish('operation', { n: 0 }); // written, and the socket says full
    for (let i = 1; i <= 3; i++) hub.publish('operation', { n: i }); // queued
    assert.equal(slow.ids().length, 1);
    assert.equal(hub.clientCount, 2);
    // Drain: the queue is written in order.
    slow.full = false;
    slow.drain!();
    assert.deepEqual(slow.ids(), fast.ids());
    slow.full = true;
    for (let i = 4; i <= 8; i++) hub.publish('operation', { n: i });
    assert.ok(slow.destroyed);
    assert.equal(hub.clientCount, 1);
    assert.equal(hub.slowDisconnects, 1);
    assert.equal(fast.ids().length, 9);
    hub.close();
  });

  test('at most clientsMax clients (E5); a closed one frees its place', () => {
    const hub = new EventHub({ log, clock: new FakeClock(), clientsMax: 2 });
    const a = new FakeSink();
    hub.connect(a, null);
    hub.connect(new FakeSink(), null);
    assert.throws(() => hub.connect(new FakeSink(), null), (e: unknown) => e instanceof FerryError && e.code === 'EVENT_CLIENTS_FULL');
    a.closeFn!();
    hub.connect(new FakeSink(), null);
    hub.close();
    assert.throws(() => hub.connect(new FakeSink(), null), (e: unknown) => e instanceof FerryError && e.code === 'SHUTTING_DOWN');
  });

  test('heartbeat comments every heartbeatMs', async () => {
    const clock = new FakeClock();
    const hub = new EventHub({ log, clock, heartbeatMs: 15_000 });
    const s = new FakeSink();
    hub.connect(s, null);
    await clock.advance(14_999);
    assert.ok(!s.text.includes(': heartbeat'));
    await clock.advance(1);
    await clock.advance(15_000);
    assert.equal(s.text.split(': heartbeat').length - 1, 2);
    hub.close();
    assert.equal(clock.pendingTimers, 0);
  });

  test('long text fields are cut', () => {
    const hub = new EventHub({ log, clock: new FakeClock() });
    const e = hub.publish('refusal', { message: 'x'.repeat(10_000) });
    assert.ok((e.message as string).length <= 2000);
    hub.close();
  });
});

const empty: StatusReading = { disks: [], mirrors: [], staging: [] };
const mirror = (over: Partial<StatusReading['mirrors'][number]> = {}): StatusReading['mirrors'][number] => ({
  disk: 'a',
  role: 'primary',
  state: 'syncing',
  consistent: false,
  link: null,
  rpo: null,
  ...over,
});

describe('diffStatus', () => {
  test('mirror created, state, consistency, link, RPO, removed', () => {
    const m0 = { ...empty, mirrors: [mirror()] };
    assert.deepEqual(diffStatus(empty, m0), [{ type: 'mirror.state', fields: { disk: 'a', role: 'primary', from: null, to: 'syncing' } }]);
    const link = { state: 'connected' as const, peer: 'b', lastError: null, bytesPerSec: 0, shippedBytes: 0, reconnects: 0 };
    const rpo = { targetSeconds: 30, met: false, exposureSeconds: 45, newestImageAt: null, breachSeconds: 15, breaches: 1 };
    const m1 = { ...empty, mirrors: [mirror({ state: 'in-sync', consistent: true, link, rpo: { ...rpo, met: true } })] };
    assert.deepEqual(
      diffStatus(m0, m1).map((c) => c.type),
      ['mirror.state', 'mirror.consistency', 'mirror.link', 'mirror.rpo'],
    );
    const m2 = { ...empty, mirrors: [mirror({ state: 'bitmap', consistent: true, link: { ...link, state: 'down', lastError: 'ECONNREFUSED' }, rpo })] };
    assert.deepEqual(diffStatus(m1, m2), [
      { type: 'mirror.state', fields: { disk: 'a', role: 'primary', from: 'in-sync', to: 'bitmap' } },
      { type: 'mirror.link', fields: { disk: 'a', peer: 'b', from: 'connected', to: 'down', error: 'ECONNREFUSED' } },
      { type: 'mirror.rpo', fields: { disk: 'a', met: false, targetSeconds: 30, exposureSeconds: 45 } },
    ]);
    assert.deepEqual(diffStatus(m2, m2), []);
    assert.deepEqual(diffStatus(m2, empty), [{ type: 'mirror.state', fields: { disk: 'a', role: 'primary', from: 'bitmap', to: null } }]);
  });

  test('disk state and staging copies', () => {
    const before: StatusReading = {
      disks: [{ name: 'a', state: 'online' }],
      mirrors: [],
      staging: [{ disk: 'a', failed: false, copies: [{ path: '/s1', healthy: true, rebuilding: false }, { path: '/s2', healthy: true, rebuilding: false }] }],
    };
    const failed: StatusReading = {
      disks: [{ name: 'a', state: 'online' }],
      mirrors: [],
      staging: [{ disk: 'a', failed: false, copies: [{ path: '/s1', healthy: true, rebuilding: false }, { path: '/s2', healthy: false, rebuilding: false, problem: 'EIO' }] }],
    };
    assert.deepEqual(diffStatus(before, failed), [{ type: 'staging.copy', fields: { disk: 'a', path: '/s2', healthy: false, problem: 'EIO' } }]);
    assert.deepEqual(diffStatus(failed, before), [{ type: 'staging.copy', fields: { disk: 'a', path: '/s2', healthy: true, problem: null } }]);
    const down: StatusReading = { disks: [{ name: 'a', state: 'unavailable', error: 'gone' }], mirrors: [], staging: [] };
    assert.deepEqual(diffStatus(before, down), [{ type: 'disk.state', fields: { disk: 'a', from: 'online', to: 'unavailable', error: 'gone' } }]);
  });

  test('the watcher compares once a second and logs a failing read once', async () => {
    const clock = new FakeClock();
    let reading: StatusReading | Error = empty;
    const published: string[] = [];
    const lines: string[] = [];
    const wlog = pino({ level: 'info' }, { write: (l: string) => void lines.push(l) });
    const w = new StatusWatcher(
      () => {
        if (reading instanceof Error) throw reading;
        return reading;
      },
      (c) => published.push(c.type),
      wlog,
      clock,
    );
    w.start();
    await clock.advance(1000);
    reading = { ...empty, mirrors: [mirror()] };
    await clock.advance(1000);
    assert.deepEqual(published, ['mirror.state']);
    reading = new Error('boom');
    await clock.advance(3000);
    assert.equal(lines.filter((l) => l.includes('could not read')).length, 1);
    reading = empty;
    await clock.advance(1000);
    assert.deepEqual(published, ['mirror.state', 'mirror.state']);
    w.stop();
    assert.equal(clock.pendingTimers, 0);
  });
});
