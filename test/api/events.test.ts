// GET /v1/events against a real ferryd over real sockets: the token is required; events
// arrive in order with consecutive ids and match their schemas (operations, refusals, the
// mirror states a local mirror goes through); a client that reconnects with Last-Event-ID
// gets exactly what it missed, and one whose id is from another ferryd gets a `reset`; a
// client that stops reading is disconnected at its queue bound (logged once) while another
// one gets every event; clients beyond the bound are refused with EVENT_CLIENTS_FULL.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import path from 'node:path';
import { Cleanup, waitFor, type Ferryd } from '../harness.js';
import { EventSchema } from '../../src/api/event-schemas.js';
import { eventLimitsDefault } from '../../src/api/event-hub.js';
import { assertError, assertSchema, rawApi } from './helpers.js';
import { SseClient } from './sse-client.js';

/** Ids are consecutive integers, every event matches the schema and its SSE name is its type. */
function assertWellFormed(c: SseClient): void {
  for (let i = 0; i < c.events.length; i++) {
    const e = c.events[i]!;
    assertSchema(EventSchema, e.data, `event ${i}`);
    assert.equal(e.event, e.data.type);
    assert.equal(e.id, String(e.data.id));
    if (i > 0 && e.event !== 'reset') assert.equal(e.data.id, c.events[i - 1]!.data.id + 1, `ids consecutive at ${i}`);
  }
}

describe('GET /v1/events', () => {
  const cleanup = new Cleanup('ferry-events-');
  let d: Ferryd;
  let work: string;
  const clients: SseClient[] = [];
  const open = async (headers: Record<string, string> = {}, token?: string | null): Promise<SseClient> => {
    const c = await SseClient.open(d.apiUrl, token === undefined ? d.token : token, headers);
    clients.push(c);
    return c;
  };

  before(async () => {
    d = await cleanup.ferryd();
    work = cleanup.dir();
  });
  after(async () => {
    for (const c of clients) c.close();
    await cleanup.run();
  });

  test('needs the token', async () => {
    for (const token of [null, 'x'.repeat(64)]) {
      const c = await open({}, token);
      await waitFor('the refusal body', () => c.ended);
      assertError({ status: c.status, body: JSON.parse(c.body) }, 401, 'UNAUTHORIZED', `token ${token}`);
    }
    const bad = await open({ 'last-event-id': 'abc' });
    await waitFor('the refusal body', () => bad.ended);
    assertError({ status: bad.status, body: JSON.parse(bad.body) }, 400, 'BAD_REQUEST', 'Last-Event-ID abc');
  });

  test('operations, refusals and mirror states in order; a reconnect gets what it missed', async () => {
    const c = await open();
    assert.equal(c.status, 200);
    await waitFor('the greeting comment', () => c.comments.length > 0);
    await d.createDisk('a', '16M');
    const refused = await d.api('POST', '/v1/disks', { name: 'a', size: '16M' });
    assert.equal(refused.status, 409);
    const m = await d.api('POST', '/v1/disks/a/mirror', { to: `local:${path.join(work, 'a.mirror')}`, staging: path.join(work, 'a.stg'), stagingSize: '64M' });
    assert.equal(m.status, 201, JSON.stringify(m.body));
    await c.next('in-sync', (e) => e.event === 'mirror.state' && e.data.to === 'in-sync');
    const seen = c.events.map((e) => `${e.event} ${e.data.operationId ?? ''}${e.data.code ?? ''}${e.data.from !== undefined ? `${e.data.from}→${e.data.to}` : ''}`.trim());
    assert.deepEqual(seen.slice(0, 4), ['operation createDisk', 'refusal createDiskDISK_EXISTS', 'operation createMirror', 'mirror.state null→syncing'], seen.join('\n'));
    assert.equal(c.events[0]!.data.disk, 'a');
    assert.equal(c.events[1]!.data.message, refused.body.error.message);
    assertWellFormed(c);

    // Reconnect from the refusal: exactly the events after it, same ids, same data.
    const from = c.events[1]!;
    const again = await open({ 'last-event-id': from.id! });
    await waitFor('the replay', () => again.events.length >= c.events.length - 2);
    assert.deepEqual(again.events.slice(0, c.events.length - 2), c.events.slice(2));
    c.close();
    // What happens while a client is away is replayed when it comes back.
    const lastSeen = c.events[c.events.length - 1]!.id!;
    assert.equal((await d.api('POST', '/v1/disks/a/mirror/pause')).status, 200);
    await again.next('paused', (e) => e.event === 'mirror.state' && e.data.to === 'paused');
    const back = await open({ 'last-event-id': lastSeen });
    await back.next('paused', (e) => e.event === 'mirror.state' && e.data.to === 'paused');
    assert.deepEqual(back.events[0]!.data, { ...again.events.find((e) => e.data.operationId === 'pauseMirror')!.data });
    assertWellFormed(back);
    // An id from another ferryd (ids start at the start time in ms × 1000): reset.
    const stale = await open({ 'last-event-id': '5' });
    const reset = await stale.next('reset', (e) => e.event === 'reset');
    assert.equal(reset.data.lastEventId, 5);
    assert.equal(stale.events[0], reset, 'reset comes first');
    assertSchema(EventSchema, reset.data, 'reset');
    for (const x of [again, back, stale]) x.close();

    // `ferry events`: the same events, replayed with --since, as JSON lines or text.
    const since = c.events[0]!.id!;
    const json = await d.cli(['events', '--since', since, '--count', '2', '--json']);
    assert.equal(json.code, 0, json.stderr);
    assert.deepEqual(json.stdout.trim().split('\n').map((l) => JSON.parse(l)), c.events.slice(1, 3).map((e) => e.data));
    const text = await d.cli(['events', '--since', since, '--count', '2']);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /refusal\s+a\s+createDisk refused: DISK_EXISTS: /);
    assert.match(text.stdout, /operation\s+a\s+createMirror done/);
    const denied = await d.cli(['events', '--count', '1'], { env: { FERRY_TOKEN: 'x'.repeat(64) } });
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /UNAUTHORIZED/);
  });

  test('clients beyond the bound are refused with EVENT_CLIENTS_FULL', async () => {
    await waitFor('earlier streams gone', async () => {
      const probe = await open();
      probe.close();
      return probe.status === 200;
    });
    const held: SseClient[] = [];
    for (;;) {
      const c = await open();
      if (c.status !== 200) {
        await waitFor('the refusal body', () => c.ended);
        assertError({ status: c.status, body: JSON.parse(c.body) }, 503, 'EVENT_CLIENTS_FULL');
        break;
      }
      held.push(c);
      assert.ok(held.length <= eventLimitsDefault.clientsMax, `more than ${eventLimitsDefault.clientsMax} clients connected`);
    }
    assert.equal(held.length, eventLimitsDefault.clientsMax);
    held.pop()!.close();
    await waitFor('a freed place is taken', async () => {
      const c = await open();
      if (c.status === 200) held.push(c);
      else c.close();
      return c.status === 200;
    });
    for (const c of held) c.close();
  });
  test('a client that stops reading is disconnected at its queue bound; a reading one gets every event', async () => {
    const reader = await open();
    await waitFor('greeting', () => reader.comments.length > 0);
    // The slow client: a raw socket that sends its request and never reads a byte.
    const slow = net.connect(Number(new URL(d.apiUrl).port), '127.0.0.1');
    let slowClosed = false;
    slow.on('close', () => (slowClosed = true));
    slow.on('error', () => undefined);
    await new Promise<void>((resolve) => slow.once('connect', () => resolve()));
    slow.pause();
    slow.write(`GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${d.token}\r\n\r\n`);
    // Refusals with a long message (a long adopted path that does not exist), until the
    // kernel's socket buffers and then the client's queue are full.
    const longPath = '/nonexistent' + '/abcdefghijklmnopqrstuvwxyz0123456789'.repeat(50);
    const body = JSON.stringify({ name: 'slow', path: longPath });
    let sent = 0;
    const disconnected = (): boolean => d.stderr.includes('event stream client disconnected');
    while (!disconnected()) {
      assert.ok(sent < 20_000, `no slow-client disconnection after ${sent} events`);
      await Promise.all(Array.from({ length: 16 }, () => rawApi(d, 'POST', '/v1/disks/adopt', { body })));
      sent += 16;
    }
    const logLines = d.stderr.split('\n').filter((l) => l.includes('event stream client disconnected'));
    assert.equal(logLines.length, 1, 'logged once');
    assert.equal(JSON.parse(logLines[0]!).queueMax, eventLimitsDefault.queueMax);
    // The slow client's socket is closed by ferryd (it sees it once it reads again).
    slow.resume();
    await waitFor('the slow client is closed', () => slowClosed);
    // The reader got every refusal, in order.
    await waitFor('the reader has every refusal', () => reader.events.filter((e) => e.data.operationId === 'adoptDisk').length === sent);
    assertWellFormed(reader);
    assert.ok(!reader.ended);
    reader.close();
    // Logged once per client, not per event: more events add no line.
    await Promise.all(Array.from({ length: 16 }, () => rawApi(d, 'POST', '/v1/disks/adopt', { body })));
    assert.equal(d.stderr.split('\n').filter((l) => l.includes('event stream client disconnected')).length, 1);
    console.log(`slow client disconnected after ${sent} events of ~${Math.round(longPath.length / 1024)} KiB`);
  });

});
