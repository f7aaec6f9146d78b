// The live event stream behind GET /v1/events (server-sent events): a numbered sequence of
// events, a bounded ring of the newest ones for clients that reconnect with Last-Event-ID,
// and the connected clients, each with a bounded queue. It knows nothing of HTTP beyond
// the text/event-stream framing: a client is a Sink (the route hands it the raw response).
//
// Invariants (asserted where events are numbered and replayed):
//   E1 ids increase by exactly 1 from event to event within one ferryd; the first id is
//      the hub's start time in ms × 1000, so ids also increase across restarts and an id from
//      an earlier ferryd is older than every id of this one.
//   E2 the ring holds consecutive ids, oldest first, at most ringMax of them.
//   E3 a client receives each event at most once, in id order, with no gap: after a replay
//      from the ring it gets only ids above the last one replayed; when events it asked for
//      left the ring it gets one `reset` event (reload the state) and then only new events.
//   E4 a client's queue (events held while its socket does not take more) never exceeds
//      queueMax: the client that would exceed it is disconnected (and logged once).
//   E5 at most clientsMax clients are connected; one more is refused (EVENT_CLIENTS_FULL).
import assert from 'node:assert/strict';
import type { Logger } from 'pino';
import { systemClock, type Clock } from '../clock.js';
import { FerryError } from '../errors.js';

/** What a client is sent: `event: type`, `id`, and `data` (the event as JSON, with its id, type and time). */
export interface FerryEvent {
  id: number;
  type: string;
  at: string;
  [field: string]: unknown;
}

/** Where a client's stream is written (an HTTP response). write() false: it is full until drain. */
export interface Sink {
  write(chunk: string): boolean;
  onDrain(fn: () => void): void;
  onClose(fn: () => void): void;
  /** Ends the stream after what it holds (ferryd stops). */
  end(): void;
  /** Closes the connection now, dropping what it holds (a client too slow). */
  destroy(): void;
  readonly remote: string;
}

export interface EventHubOptions {
  log: Logger;
  clock?: Clock;
  /** Newest events kept for reconnects (E2). */
  ringMax?: number;
  /** Events one client may have waiting for its socket (E4). */
  queueMax?: number;
  /** Clients connected at once (E5). */
  clientsMax?: number;
  /** Interval of the comment lines that keep idle streams open through proxies. */
  heartbeatMs?: number;
}

export const eventLimitsDefault = { ringMax: 1000, queueMax: 256, clientsMax: 32, heartbeatMs: 15_000 };
/** Longest text field (a refusal's message) in an event: the stream stays bounded per event too. */
export const eventTextCharsMax = 2000;

interface Client {
  sink: Sink;
  queue: string[];
  blocked: boolean;
  /** The last id written or queued for this client (E3). */
  lastId: number;
  closed: boolean;
}

export class EventHub {
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly limits: typeof eventLimitsDefault;
  private readonly ring: FerryEvent[] = [];
  private readonly framed = new Map<number, string>();
  private readonly clients = new Set<Client>();
  /** The id the next event gets (E1). */
  private nextId: number;
  private heartbeat: { cancel(): void } | null = null;
  private closed = false;
  /** Clients disconnected for being too slow, since start. */
  slowDisconnects = 0;

  constructor(opts: EventHubOptions) {
    this.log = opts.log;
    this.clock = opts.clock ?? systemClock;
    this.limits = {
      ringMax: opts.ringMax ?? eventLimitsDefault.ringMax,
      queueMax: opts.queueMax ?? eventLimitsDefault.queueMax,
      clientsMax: opts.clientsMax ?? eventLimitsDefault.clientsMax,
      heartbeatMs: opts.heartbeatMs ?? eventLimitsDefault.heartbeatMs,
    };
    this.nextId = this.clock.nowMs() * 1000;
    this.armHeartbeat();
  }

  get clientCount(): number {
    return this.clients.size;
  }

  /** The newest id given (one below the first when none was). */
  get lastId(): number {
    return this.nextId - 1;
  }

  /** Numbers an event, keeps it in the ring and sends it to every client. */
  publish(type: string, fields: Record<string, unknown>): FerryEvent {
    const event: FerryEvent = { id: this.nextId++, type, at: new Date(this.clock.nowMs()).toISOString(), ...bounded(fields) };
    const newest = this.ring[this.ring.length - 1];
    assert.ok(!newest || event.id === newest.id + 1, 'E1: event ids increase by exactly 1');
    this.ring.push(event);
    const text = frame(event);
    this.framed.set(event.id, text);
    while (this.ring.length > this.limits.ringMax) this.framed.delete(this.ring.shift()!.id);
    assert.ok(this.ring.length <= this.limits.ringMax, 'E2: the ring holds at most ringMax events');
    for (const c of [...this.clients]) this.send(c, event.id, text);
    return event;
  }

  /**
   * Connects a client: refused with EVENT_CLIENTS_FULL when clientsMax are connected (E5).
   * `lastEventId` (the Last-Event-ID header): the events after it are replayed from the ring,
   * or a `reset` event is sent when some of them are no longer there (E3).
   */
  connect(sink: Sink, lastEventId: number | null): void {
    if (this.closed) throw new FerryError('SHUTTING_DOWN', 'ferryd is shutting down');
    if (this.clients.size >= this.limits.clientsMax) {
      throw new FerryError('EVENT_CLIENTS_FULL', `${this.limits.clientsMax} event stream clients are connected already (the most ferryd serves); close one and retry`);
    }
    const client: Client = { sink, queue: [], blocked: false, lastId: this.lastId, closed: false };
    this.clients.add(client);
    sink.onClose(() => this.drop(client));
    sink.onDrain(() => this.flush(client));
    let first = `retry: 2000\n: ferry events; newest id ${this.lastId}\n\n`;
    if (lastEventId !== null && lastEventId !== this.lastId) {
      const oldest = this.ring[0]?.id ?? this.nextId;
      if (lastEventId + 1 >= oldest && lastEventId < this.lastId) {
        const from = lastEventId + 1 - oldest;
        const replay = this.ring.slice(from);
        assert.ok(replay.length > 0 && replay[0]!.id === lastEventId + 1, 'E3: a replay starts right after Last-Event-ID');
        first += replay.map((e) => this.framed.get(e.id)!).join('');
      } else {
        first += frame({ id: this.lastId, type: 'reset', at: new Date(this.clock.nowMs()).toISOString(), reason: lastEventId > this.lastId ? 'Last-Event-ID is not from this ferryd' : 'events after Last-Event-ID are no longer kept', lastEventId });
      }
    }
    // The greeting and replay are one write, whatever its size (at most ringMax events).
    client.blocked = !sink.write(first);
  }

  private send(c: Client, id: number, text: string): void {
    if (c.closed) return;
    assert.ok(id === c.lastId + 1, 'E3: a client gets every event once, in order, with no gap');
    c.lastId = id;
    if (c.blocked) {
      c.queue.push(text);
      if (c.queue.length > this.limits.queueMax) this.disconnectSlow(c);
      assert.ok(c.closed || c.queue.length <= this.limits.queueMax, 'E4: a client queue is bounded');
      return;
    }
    c.blocked = !c.sink.write(text);
  }

  private flush(c: Client): void {
    c.blocked = false;
    while (!c.closed && !c.blocked && c.queue.length > 0) c.blocked = !c.sink.write(c.queue.shift()!);
  }

  private disconnectSlow(c: Client): void {
    this.slowDisconnects++;
    this.log.warn({ remote: c.sink.remote, queued: c.queue.length, queueMax: this.limits.queueMax }, 'event stream client disconnected: it does not read its events fast enough');
    this.drop(c);
    c.sink.destroy();
  }

  private drop(c: Client): void {
    c.closed = true;
    c.queue.length = 0;
    this.clients.delete(c);
  }

  private armHeartbeat(): void {
    if (this.closed) return;
    this.heartbeat = this.clock.timeout(this.limits.heartbeatMs, () => {
      for (const c of this.clients) if (!c.blocked) c.blocked = !c.sink.write(': heartbeat\n\n');
      this.armHeartbeat();
    });
  }

  /** Ends every stream (ferryd is stopping) and refuses new clients. */
  close(): void {
    this.closed = true;
    this.heartbeat?.cancel();
    for (const c of [...this.clients]) {
      this.drop(c);
      c.sink.end();
    }
  }
}

/** An event in text/event-stream framing: `id`, `event` and one `data` line of JSON. */
function frame(e: FerryEvent): string {
  return `id: ${e.id}\nevent: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`;
}

/** Long strings cut to eventTextCharsMax (JSON.stringify escapes newlines: one data line). */
function bounded(fields: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields)) out[k] = typeof v === 'string' && v.length > eventTextCharsMax ? `${v.slice(0, eventTextCharsMax - 1)}…` : v;
  return out;
}
