// The API's disaster-recovery part: the generation history and fencing state of a disk in a
// mirror relationship (control/dr-control.ts), as a route of its own and as the `dr` field
// that disk and mirror status carry (routes.ts decorates them with withDr), in the
// route-table style of routes.ts, which includes these so OpenAPI lists them too.
import { Type } from '@sinclair/typebox';
import type { Daemon } from '../control/daemon.js';
import type { DrStatus } from '../control/dr-control.js';
import type { RouteDef } from './routes.js';

const Name = Type.String({ minLength: 1, maxLength: 63, description: "letters, digits, '.', '_', '-'" });

export const GenerationSchema = Type.Object({
  id: Type.String({ description: '64 random bits, 16 hex digits' }),
  reason: Type.Union([Type.Literal('create'), Type.Literal('promote'), Type.Literal('switchover'), Type.Literal('resync'), Type.Literal('diverged')], {
    description: "what started it; diverged: the primary's first write while its link was down",
  }),
  at: Type.String({ format: 'date-time' }),
});

export const DrSchema = Type.Object({
  state: Type.Union([Type.Literal('normal'), Type.Literal('fenced'), Type.Literal('split-brain'), Type.Literal('switching')], {
    description: "fenced: the peer site was promoted past this disk, which refuses writes (FENCED); split-brain: both sites took writes since they diverged, nothing is resynced; switching: a switchover began here and has not completed (writes refused; 'mirror switchover' again completes it)",
  }),
  generation: Type.Union([Type.String(), Type.Null()], { description: "the disk's current generation id" }),
  generations: Type.Array(GenerationSchema, { description: 'oldest first, at most 32' }),
  reason: Type.Union([Type.String(), Type.Null()], { description: 'why the disk is fenced or in split brain' }),
  since: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  formerPrimary: Type.Union([Type.String(), Type.Null()], { description: 'after a promote at this site: the former primary, PEER:DISK' }),
  changed: Type.Optional(
    Type.Union(
      [
        Type.Object({
          granuleBytes: Type.Integer({ description: 'the granule the regions are tracked at (64 KiB)' }),
          granules: Type.Integer({ description: 'granules changed here since the sites diverged' }),
          bytes: Type.Integer({ description: 'their bytes: what a failback resyncs from this side' }),
        }),
        Type.Null(),
      ],
      { description: "the regions this disk changed since the sites diverged (after a promote here: every write since; at a fenced or split-brain old primary: the records its peer never acknowledged and every write since); null when they are not tracked" },
    ),
  ),
});

export type DrView = {
  state: DrStatus['state'];
  generation: string | null;
  generations: Array<{ id: string; reason: DrStatus['generations'][number]['reason']; at: string }>;
  reason: string | null;
  since: string | null;
  formerPrimary: string | null;
  changed?: DrStatus['changed'];
};

/** A disk's DR state as the API shows it, or null when the disk never was in a mirror relationship. */
export function drView(d: Daemon, disk: string): DrView | null {
  const s = d.dr.status(disk);
  if (!s) return null;
  return { ...s, generations: s.generations.map((g) => ({ id: g.id, reason: g.reason, at: new Date(g.atMs).toISOString() })) };
}

/** Disk or mirror status with its `dr` field (left out when the disk has no DR state). */
export function withDr<T extends { disk?: string; name?: string }>(d: Daemon, item: T): T & { dr?: DrView } {
  const view = drView(d, (item.disk ?? item.name)!);
  return view ? { ...item, dr: view } : item;
}

export const SwitchoverSchema = Type.Object({
  disk: Type.String(),
  primary: Type.String({ description: 'the primary now, PEER:DISK; this site holds the replica' }),
  generation: Type.String({ description: 'the generation the reversed roles start' }),
  seq: Type.Integer({ description: "the last record of this site's order; the new primary ships from the next" }),
  pauseMs: Type.Number({ description: 'how long writes were refused here' }),
  disconnected: Type.Integer({ description: 'NBD connections closed (force)' }),
  drainedRecords: Type.Integer({ description: 'records staged here and not yet acknowledged by the peer when writes stopped: all the data the switchover sent' }),
  drainedBytes: Type.Integer({ description: 'their bytes in the staging area' }),
});

export const ReconnectSchema = Type.Object({
  disk: Type.String(),
  primary: Type.String({ description: 'the survivor, PEER:DISK, whose replica this disk is now' }),
  discardedAt: Type.String({ description: "the site whose writes since the sites diverged are discarded (this one)" }),
  generation: Type.String({ description: 'the generation the survivor started for the resync' }),
  changedHereBytes: Type.Integer({ description: 'bytes of the 64 KiB granules this site changed since the sites diverged (its records the survivor never had included)' }),
  changedThereBytes: Type.Integer({ description: 'bytes of the granules the survivor changed since' }),
  resyncBytes: Type.Integer({ description: 'bytes of their union: what the survivor copies to this site (the rest of the disk is not sent)' }),
  diskBytes: Type.Integer(),
  disconnected: Type.Integer({ description: 'NBD connections closed (force)' }),
});

export const drRoutes: RouteDef[] = [
  {
    method: 'POST',
    url: '/v1/disks/:name/mirror/reconnect',
    operationId: 'reconnectMirror',
    summary:
      'After a failover, at the site whose disk is fenced (or in split brain): this disk becomes the replica of the other site, which resyncs only the regions changed on either side since they diverged; its last image is kept by an undo log until the resync completes. In split brain, discardChangesAt must name this site. force=true disconnects NBD clients attached here',
    tag: 'mirrors',
    params: Type.Object({ name: Name }),
    querystring: Type.Object(
      {
        force: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false')])),
        discardChangesAt: Type.Optional(Type.String({ minLength: 1, maxLength: 63, description: "the site whose writes since the sites diverged are thrown away: this site (required in split brain)" })),
      },
      { additionalProperties: false },
    ),
    response: ReconnectSchema,
    handler: (d, { params, query }) => d.reconnects.run(params.name!, { force: query.force === 'true', ...(typeof query.discardChangesAt === 'string' ? { discardChangesAt: query.discardChangesAt } : {}) }),
  },
  {
    method: 'POST',
    url: '/v1/disks/:name/mirror/switchover',
    operationId: 'switchoverMirror',
    summary: 'Planned switchover of a remote mirror, at the primary site: writes stop, every staged record reaches the replica, the roles reverse (a new generation on both sites) and this disk becomes the replica of the other; no data is copied. force=true disconnects NBD clients attached here',
    tag: 'mirrors',
    params: Type.Object({ name: Name }),
    querystring: Type.Object({ force: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false')])) }, { additionalProperties: false }),
    response: SwitchoverSchema,
    handler: (d, { params, query }) => d.switchovers.run(params.name!, { force: query.force === 'true' }),
  },
  {
    method: 'POST',
    url: '/v1/disks/:name/mirror/unfence',
    operationId: 'unfenceDisk',
    summary:
      "A fenced disk whose peer is gone for good serves its own (older) data again, or a switchover its lost peer cannot complete is abandoned: a new generation, writes taken; a peer that returns ahead finds a split brain. Refused without force=true, changing nothing",
    tag: 'mirrors',
    params: Type.Object({ name: Name }),
    querystring: Type.Object({ force: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false')])) }, { additionalProperties: false }),
    response: Type.Object({ disk: Type.String(), generation: Type.String({ description: 'the generation the disk starts (reason diverged)' }) }),
    handler: (d, { params, query }) => d.reconnects.unfence(params.name!, { force: query.force === 'true' }),
  },
  {
    method: 'GET',
    url: '/v1/disks/:name/dr',
    operationId: 'getDiskDr',
    summary: "A disk's disaster-recovery state: its generation history, fenced or split brain",
    tag: 'mirrors',
    params: Type.Object({ name: Name }),
    response: DrSchema,
    handler: (d, { params }) => {
      d.disks.get(params.name!, { groups: true }); // DISK_NOT_FOUND (a group's history is its own, like a disk's)
      return drView(d, params.name!) ?? { state: 'normal', generation: null, generations: [], reason: null, since: null, formerPrimary: null };
    },
  },
];
