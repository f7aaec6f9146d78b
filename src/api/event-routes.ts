// GET /v1/events: ferryd's live events as server-sent events (text/event-stream), with the
// API's bearer token, for the console and for scripts (`curl -N`). What is published:
// status changes the StatusWatcher sees once a second and right after each operation (disks, mirrors, links, RPO, staging
// copies) and every mutating API request that passed authentication, succeeded
// (`operation`) or was refused (`refusal`, with its registry code and message), from an
// onSend hook here: no lower layer knows about events. Numbering, replay on reconnect,
// per-client queues and the client bound are the EventHub's (event-hub.ts).
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { Daemon } from '../control/daemon.js';
import { FerryError } from '../errors.js';
import { EventHub } from './event-hub.js';
import { EventSchema } from './event-schemas.js';
import { ErrorSchema } from './routes.js';
import { StatusWatcher, type StatusReading } from './status-watcher.js';
import type { Staging } from './types.js';

export class EventService {
  readonly hub: EventHub;
  private readonly watcher: StatusWatcher;

  constructor(
    private readonly daemon: Daemon,
    log: Logger,
  ) {
    this.hub = new EventHub({ log: log.child({ component: 'events' }) });
    this.watcher = new StatusWatcher(
      () => readStatus(daemon),
      (c) => this.hub.publish(c.type, c.fields),
      log.child({ component: 'events' }),
    );
    this.watcher.start();
  }

  /** Hooks on the root instance (so they see every route): operations and refusals; streams end before the server closes. */
  hook(app: FastifyInstance): void {
    app.addHook('onSend', async (req, reply, payload) => {
      this.published(req, reply, payload);
      return payload;
    });
    app.addHook('preClose', async () => {
      this.watcher.stop();
      this.hub.close();
    });
  }

  /** Registers GET /v1/events (inside the plugin whose routes @fastify/swagger describes). */
  route(app: FastifyInstance): void {
    app.get(
      '/v1/events',
      {
        schema: {
          operationId: 'events',
          summary:
            'Live events (server-sent events): status changes seen each second, operations and refusals. Send Last-Event-ID to resume; a `reset` event means reload the state',
          tags: ['server'],
          headers: { type: 'object', properties: { 'last-event-id': { type: 'string', pattern: '^[0-9]{1,16}$', description: 'the id of the last event received' } } },
          response: {
            200: { description: 'text/event-stream: `id`, `event` (the type) and one `data` line of JSON per event', content: { 'text/event-stream': { schema: EventSchema } } },
            default: { description: 'error (see the error codes in docs/API.md)', ...ErrorSchema },
          },
        },
      },
      (req, reply) => this.stream(req, reply),
    );
  }

  private stream(req: FastifyRequest, reply: FastifyReply): void {
    const header = req.headers['last-event-id'];
    const lastEventId = typeof header === 'string' && header !== '' ? Number(header) : null;
    if (lastEventId !== null && !Number.isSafeInteger(lastEventId)) throw new FerryError('BAD_REQUEST', 'Last-Event-ID must be an event id (an integer)');
    const res = reply.raw;
    // connect() refuses (EVENT_CLIENTS_FULL) before anything is written: the error answers normally.
    this.hub.connect(
      {
        remote: req.ip,
        write: (chunk) => {
          if (!res.headersSent) {
            reply.hijack();
            res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no' });
          }
          return res.write(chunk);
        },
        onDrain: (fn) => void res.on('drain', fn),
        onClose: (fn) => void res.on('close', fn),
        end: () => res.end(),
        destroy: () => res.destroy(),
      },
      lastEventId,
    );
  }

  private published(req: FastifyRequest, reply: FastifyReply, payload: unknown): void {
    if (req.method === 'GET' || req.method === 'HEAD') return;
    const operationId = (req.routeOptions.schema as { operationId?: string } | undefined)?.operationId;
    if (!operationId || reply.statusCode === 401) return;
    const params = (req.params ?? {}) as Record<string, unknown>;
    const body = (req.body ?? {}) as Record<string, unknown>;
    const url = req.routeOptions.url ?? '';
    const name = typeof params.name === 'string' ? params.name : typeof body.name === 'string' ? body.name : undefined;
    const kind = url.startsWith('/v1/pools') ? 'pool' : url.startsWith('/v1/peers') ? 'peer' : url.startsWith('/v1/disks') ? 'disk' : null;
    const fields: Record<string, unknown> = { operationId, method: req.method, path: req.url.split('?')[0], status: reply.statusCode, ...(kind && name ? { [kind]: name } : {}) };
    if (reply.statusCode < 400) {
      this.hub.publish('operation', fields);
      // What the operation changed is published right after it, not up to a second later
      // (when a fast sync could already have ended: a mirror would first be seen in sync).
      this.watcher.tick();
      return;
    }
    let error: { code?: unknown; message?: unknown } | undefined;
    try {
      error = (JSON.parse(String(payload)) as { error?: { code?: unknown; message?: unknown } }).error;
    } catch {
      error = undefined;
    }
    this.hub.publish('refusal', { ...fields, code: String(error?.code ?? 'INTERNAL'), message: String(error?.message ?? '') });
  }
}

/** What the watcher compares: disks, mirrors (and replicas), staging areas; null while ferryd starts. */
function readStatus(d: Daemon): StatusReading | null {
  if (!d.ready) return null;
  const disks = d.disks.list().map((x) => ({ name: x.name, state: x.state, ...(x.error ? { error: x.error } : {}) }));
  const staging: Array<Pick<Staging, 'disk' | 'copies' | 'failed'>> = [];
  for (const x of disks) {
    if (x.state !== 'online' || !d.disks.entry(x.name).volume?.staging) continue;
    const s = d.staging.show(x.name);
    staging.push({ disk: s.disk, copies: s.copies, failed: s.failed });
  }
  return { disks, mirrors: d.mirrors.status(), staging };
}
