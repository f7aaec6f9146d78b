// The events of GET /v1/events (src/api/event-routes.ts) as TypeBox schemas: the `data` line
// of each server-sent event is one of these objects (its `type` is also the SSE `event:` field).
// OpenAPI publishes them; test/api/events.test.ts checks every event it receives against them.
import { Type, type TSchema } from '@sinclair/typebox';

const base = { id: Type.Integer({ description: 'increasing; also the SSE id (send it back as Last-Event-ID)' }), at: Type.String({ format: 'date-time' }) };
const Role = Type.Union([Type.Literal('primary'), Type.Literal('replica')]);
const MirrorState = Type.Union([Type.Literal('syncing'), Type.Literal('in-sync'), Type.Literal('paused'), Type.Literal('bitmap'), Type.Literal('resyncing')]);
const LinkState = Type.Union([Type.Literal('connecting'), Type.Literal('connected'), Type.Literal('down')]);
const Nullable = <T extends TSchema>(t: T) => Type.Union([t, Type.Null()]);

function event<P extends Record<string, TSchema>>(type: string, description: string, props: P) {
  return Type.Object({ ...base, type: Type.Literal(type), ...props }, { description, additionalProperties: false });
}

/** The subject of an operation: the disk, pool or peer it names (in the path or the body). */
const subject = { disk: Type.Optional(Type.String()), pool: Type.Optional(Type.String()), peer: Type.Optional(Type.String()) };

export const EventSchemas = [
  event('disk.state', 'a disk went online or unavailable', {
    disk: Type.String(),
    from: Type.Union([Type.Literal('online'), Type.Literal('unavailable')]),
    to: Type.Union([Type.Literal('online'), Type.Literal('unavailable')]),
    error: Type.Optional(Type.String()),
  }),
  event('mirror.state', "a mirror's state changed; from null: it appeared (created), to null: it is gone (removed)", {
    disk: Type.String(),
    role: Role,
    from: Nullable(MirrorState),
    to: Nullable(MirrorState),
  }),
  event('mirror.consistency', 'a mirror gained or lost a consistent image', { disk: Type.String(), role: Role, consistent: Type.Boolean() }),
  event('mirror.link', "a remote mirror's link went up or down", { disk: Type.String(), peer: Type.String(), from: Nullable(LinkState), to: LinkState, error: Nullable(Type.String()) }),
  event('mirror.rpo', "a mirror's RPO target is met again or missed", {
    disk: Type.String(),
    met: Type.Boolean(),
    targetSeconds: Nullable(Type.Number()),
    exposureSeconds: Nullable(Type.Number()),
  }),
  event('staging.copy', 'a staging copy failed (healthy false) or was repaired (healthy true)', { disk: Type.String(), path: Type.String(), healthy: Type.Boolean(), problem: Nullable(Type.String()) }),
  event('staging.failed', 'a staging area lost its last copy (failed true: writes fail), or no longer has none', { disk: Type.String(), failed: Type.Boolean() }),
  event('operation', 'a mutating API request succeeded', {
    operationId: Type.String(),
    method: Type.String(),
    path: Type.String(),
    status: Type.Integer(),
    ...subject,
  }),
  event('refusal', 'a mutating API request (with the right token) was refused: its error code and message', {
    operationId: Type.String(),
    method: Type.String(),
    path: Type.String(),
    status: Type.Integer(),
    code: Type.String(),
    message: Type.String(),
    ...subject,
  }),
  event('reset', 'events after the Last-Event-ID the client sent are no longer kept (or it is from another ferryd): reload the state', {
    reason: Type.String(),
    lastEventId: Type.Integer(),
  }),
];

export const EventSchema = Type.Union(EventSchemas, { description: 'the data of one event (JSON on one `data:` line)' });
