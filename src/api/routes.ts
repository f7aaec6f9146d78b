// The API's route table: one entry per operation with its schemas and handler. The
// server registers these and the OpenAPI document is generated from them, so the
// description can never drift from what is served.
import { Type, type TSchema } from '@sinclair/typebox';
import { parseSize } from '../disk/size.js';
import type { Daemon } from '../control/daemon.js';
import { peerRoutes } from './peer-routes.js';
import { drillRoutes } from './drill-routes.js';
import { groupRoutes } from './group-routes.js';
import { DrSchema, drRoutes, withDr } from './dr-routes.js';
import { MirrorPolicyChange, MirrorPolicyFields, MirrorSchema, PromoteSchema, RemovedMirrorSchema, SwapSchema, VerifySchema } from './mirror-schemas.js';

export { MirrorSchema, PromoteSchema, RemovedMirrorSchema, SwapSchema, VerifySchema } from './mirror-schemas.js';
import fs from 'node:fs';
import path from 'node:path';
import { packageRoot } from '../package-root.js';

/** The version GET /v1/server reports: package.json's, read once. */
const packageVersion = (JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { version: string }).version;

export interface RouteInput {
  params: Record<string, string>;
  query: Record<string, unknown>;
  body: Record<string, unknown>;
}

export interface RouteDef {
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE';
  url: string;
  operationId: string;
  summary: string;
  tag: string;
  params?: TSchema;
  querystring?: TSchema;
  body?: TSchema;
  response: TSchema;
  status?: number;
  handler: (daemon: Daemon, input: RouteInput) => unknown;
}

const Name = Type.String({ minLength: 1, maxLength: 63, description: "letters, digits, '.', '_', '-'" });
const Size = Type.Union([Type.Integer({ minimum: 1 }), Type.String({ minLength: 1, maxLength: 32 })], { description: 'bytes, or a string with a K/M/G/T suffix (binary units)' });

const Stats = Type.Object({
  readOps: Type.Integer(),
  readBytes: Type.Integer(),
  writeOps: Type.Integer(),
  writeBytes: Type.Integer(),
  flushOps: Type.Integer(),
  trimOps: Type.Integer(),
  zeroOps: Type.Integer(),
  errors: Type.Integer(),
});

export const DiskSchema = Type.Object({
  name: Type.String(),
  kind: Type.Union([Type.Literal('virtual'), Type.Literal('adopted')]),
  pool: Type.Union([Type.String(), Type.Null()]),
  path: Type.String(),
  size: Type.Integer(),
  readOnly: Type.Boolean(),
  state: Type.Union([Type.Literal('online'), Type.Literal('unavailable')]),
  error: Type.Optional(Type.String()),
  clients: Type.Integer({ description: 'NBD clients attached now' }),
  allocatedBytes: Type.Union([Type.Integer(), Type.Null()]),
  createdAt: Type.String({ format: 'date-time' }),
  stats: Type.Union([Stats, Type.Null()]),
  dr: Type.Optional(DrSchema),
  group: Type.Optional(Type.String({ description: 'the consistency group the disk belongs to: its writes go through the group\'s staging area, and its mirror is the group\'s' })),
});

export const PoolSchema = Type.Object({ name: Type.String(), path: Type.String(), disks: Type.Integer(), createdAt: Type.String() });

export const ErrorSchema = Type.Object({
  error: Type.Object({ code: Type.String(), message: Type.String(), details: Type.Optional(Type.Record(Type.String(), Type.Unknown())) }),
});

const NameParam = Type.Object({ name: Name });

export const StagingSchema = Type.Object({
  disk: Type.String(),
  path: Type.String(),
  copyPath: Type.Union([Type.String(), Type.Null()]),
  size: Type.Integer(),
  areaBytes: Type.Integer(),
  ringBytes: Type.Integer(),
  usedBytes: Type.Integer({ description: 'bytes of records some consumer still needs' }),
  nextSeq: Type.Integer(),
  writtenSeq: Type.Integer(),
  durableSeq: Type.Integer(),
  consumers: Type.Array(Type.Object({ name: Type.String(), nextSeq: Type.Integer(), pendingRecords: Type.Integer() })),
  copies: Type.Array(Type.Object({ path: Type.String(), healthy: Type.Boolean(), rebuilding: Type.Boolean(), problem: Type.Optional(Type.String()) })),
  degraded: Type.Boolean(),
  overlayExtents: Type.Integer(),
  committerError: Type.Union([Type.String(), Type.Null()]),
  failed: Type.Boolean({ description: 'no copy is left: writes fail; POST .../staging/discard (`ferry staging detach --force`) serves the disk without it' }),
  unappliedRecords: Type.Integer({ description: 'acknowledged records not yet applied to the disk' }),
  waitingForSpace: Type.Boolean({ description: 'writes are waiting for space: the staging area is full (the disk or a mirror is behind)' }),
});

export const StagingDiscardSchema = Type.Object({
  disk: Type.String(),
  path: Type.String(),
  copyPath: Type.Union([Type.String(), Type.Null()]),
  size: Type.Integer(),
  unappliedRecords: Type.Union([Type.Integer(), Type.Null()], { description: 'acknowledged writes that were not on the disk and are lost; null: the staging area could not be read to count them' }),
  message: Type.String(),
});

/** GET /v1/server. */
export const ServerSchema = Type.Object({
      version: Type.String(),
      dataDir: Type.String(),
      nbd: Type.String(),
      api: Type.String(),
      startedAt: Type.String(),
      nbdConnections: Type.Integer(),
    });

export const routes: RouteDef[] = [
  {
    method: 'GET',
    url: '/v1/health',
    operationId: 'health',
    summary: 'Liveness check (no token needed)',
    tag: 'server',
    response: Type.Object({ status: Type.Literal('ok') }),
    handler: () => ({ status: 'ok' }),
  },
  {
    method: 'GET',
    url: '/v1/server',
    operationId: 'serverInfo',
    summary: 'Where the daemon listens, its data directory and uptime',
    tag: 'server',
    response: ServerSchema,
    handler: (d) => ({
      version: packageVersion,
      dataDir: d.config.dataDir,
      nbd: `${d.nbdAddress.host}:${d.nbdAddress.port}`,
      // Answered by the API server itself, so it is listening: its address is known.
      api: d.apiAddress ? `http://${d.apiAddress.host}:${d.apiAddress.port}` : '',
      startedAt: d.startedAt.toISOString(),
      nbdConnections: d.nbdConnections,
    }),
  },
  {
    method: 'GET',
    url: '/v1/disks',
    operationId: 'listDisks',
    summary: 'List disks',
    tag: 'disks',
    response: Type.Array(DiskSchema),
    handler: (d) => d.disks.list().map((x) => withDr(d, x)),
  },
  {
    method: 'POST',
    url: '/v1/disks',
    operationId: 'createDisk',
    summary: 'Create a thin-provisioned virtual disk in a storage pool',
    tag: 'disks',
    body: Type.Object({ name: Name, size: Size, pool: Type.Optional(Name), readOnly: Type.Optional(Type.Boolean()) }, { additionalProperties: false }),
    response: DiskSchema,
    status: 201,
    handler: (d, { body }) =>
      d.disks.create({ name: body.name as string, size: parseSize(body.size as string | number), pool: body.pool as string | undefined, readOnly: body.readOnly as boolean | undefined }),
  },
  {
    method: 'POST',
    url: '/v1/disks/adopt',
    operationId: 'adoptDisk',
    summary: 'Serve an existing image file or block device as-is (service-enabled disk)',
    tag: 'disks',
    body: Type.Object({ name: Name, path: Type.String({ minLength: 1, maxLength: 4096 }), readOnly: Type.Optional(Type.Boolean()) }, { additionalProperties: false }),
    response: DiskSchema,
    status: 201,
    handler: (d, { body }) => d.disks.adopt({ name: body.name as string, path: body.path as string, readOnly: body.readOnly as boolean | undefined }),
  },
  {
    method: 'GET',
    url: '/v1/disks/:name',
    operationId: 'getDisk',
    summary: 'Show one disk',
    tag: 'disks',
    params: NameParam,
    response: DiskSchema,
    handler: (d, { params }) => withDr(d, d.disks.get(params.name!)),
  },
  {
    method: 'DELETE',
    url: '/v1/disks/:name',
    operationId: 'removeDisk',
    summary: "Unregister a disk; purge=true also deletes a virtual disk's file (never an adopted disk's data)",
    tag: 'disks',
    params: NameParam,
    // Query values are strings (the API never coerces types): purge=true or purge=false.
    querystring: Type.Object({ purge: Type.Optional(Type.Unsafe<'true' | 'false'>({ type: 'string', enum: ['true', 'false'] })) }, { additionalProperties: false }),
    response: DiskSchema,
    handler: (d, { params, query }) => d.disks.remove(params.name!, { purge: query.purge === 'true' }),
  },
  {
    method: 'POST',
    url: '/v1/disks/:name/staging',
    operationId: 'attachStaging',
    summary: 'Attach a staging area (a new preallocated file, or a block device), optionally with a second copy',
    tag: 'staging',
    params: NameParam,
    body: Type.Object(
      { path: Type.String({ minLength: 1, maxLength: 4096 }), size: Type.Optional(Size), copy: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })) },
      { additionalProperties: false },
    ),
    response: StagingSchema,
    status: 201,
    handler: (d, { params, body }) =>
      d.staging.attach({ disk: params.name!, path: body.path as string, size: body.size === undefined ? undefined : parseSize(body.size as string | number), copy: body.copy as string | undefined }),
  },
  {
    method: 'GET',
    url: '/v1/disks/:name/staging',
    operationId: 'showStaging',
    summary: 'Staging area state: size, used bytes, records pending per consumer, copies and their health',
    tag: 'staging',
    params: NameParam,
    response: StagingSchema,
    handler: (d, { params }) => d.staging.show(params.name!),
  },
  {
    method: 'DELETE',
    url: '/v1/disks/:name/staging',
    operationId: 'detachStaging',
    summary: 'Apply every staged write to the disk, then detach the staging area',
    tag: 'staging',
    params: NameParam,
    response: StagingSchema,
    handler: (d, { params }) => d.staging.detach(params.name!),
  },
  {
    method: 'POST',
    url: '/v1/disks/:name/staging/repair',
    operationId: 'repairStaging',
    summary: 'Rebuild failed staging copies from the healthy one while writes go on',
    tag: 'staging',
    params: NameParam,
    response: StagingSchema,
    handler: (d, { params }) => d.staging.repair(params.name!),
  },
  {
    method: 'POST',
    url: '/v1/disks/:name/staging/discard',
    operationId: 'discardStaging',
    summary: 'Detach a staging area with no copy left (lost, or unopenable at start) without applying it: the disk is served without it; says how many acknowledged writes were not yet on the disk (lost)',
    tag: 'staging',
    params: NameParam,
    response: StagingDiscardSchema,
    handler: (d, { params }) => d.staging.forceDetach(params.name!),
  },
  {
    method: 'POST',
    url: '/v1/disks/:name/mirror',
    operationId: 'createMirror',
    summary: 'Create a mirror (target local:PATH), attaching a staging area if the disk has none, and start syncing',
    tag: 'mirrors',
    params: NameParam,
    body: Type.Object(
      {
        to: Type.String({ minLength: 1, maxLength: 4200 }),
        staging: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
        stagingSize: Type.Optional(Size),
        stagingCopy: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
        sync: Type.Optional(Type.Union([Type.Literal('full'), Type.Literal('checksum')])),
        force: Type.Optional(Type.Boolean({ description: 'overwrite an existing local target that holds data (a full sync); without it such a target is TARGET_HOLDS_DATA' })),
        ...MirrorPolicyFields,
      },
      { additionalProperties: false },
    ),
    response: MirrorSchema,
    status: 201,
    handler: (d, { params, body }) =>
      d.mirrors.create({
        disk: params.name!,
        to: body.to as string,
        staging: body.staging as string | undefined,
        stagingSize: body.stagingSize === undefined ? undefined : parseSize(body.stagingSize as string | number),
        stagingCopy: body.stagingCopy as string | undefined,
        sync: body.sync as 'full' | 'checksum' | undefined,
        force: body.force as boolean | undefined,
        onFull: body.onFull,
        maxLag: body.maxLag,
        bandwidth: body.bandwidth,
        compress: body.compress,
        rpo: body.rpo,
      }),
  },
  {
    method: 'PATCH',
    url: '/v1/disks/:name/mirror',
    operationId: 'setMirror',
    summary: "Change a mirror's policies (on-full, max-lag, bandwidth, compress, rpo) at once, without a restart",
    tag: 'mirrors',
    params: NameParam,
    body: MirrorPolicyChange,
    response: MirrorSchema,
    handler: (d, { params, body }) => d.mirrors.set(params.name!, body),
  },
  {
    method: 'GET',
    url: '/v1/mirrors',
    operationId: 'listMirrors',
    summary: 'Status of every mirror: state, consistency, sync progress, lag',
    tag: 'mirrors',
    response: Type.Array(MirrorSchema),
    handler: (d) => d.mirrors.status().map((x) => withDr(d, x)),
  },
  {
    method: 'GET',
    url: '/v1/disks/:name/mirror',
    operationId: 'getMirror',
    summary: "Status of a disk's mirror",
    tag: 'mirrors',
    params: NameParam,
    response: MirrorSchema,
    handler: (d, { params }) => withDr(d, d.mirrors.status(params.name!)[0]!),
  },
  ...(['pause', 'resume'] as const).map(
    (action): RouteDef => ({
      method: 'POST',
      url: `/v1/disks/:name/mirror/${action}`,
      operationId: `${action}Mirror`,
      summary: action === 'pause' ? 'Stop applying records to the mirror (they wait in the staging area)' : 'Resume applying records (and the sync) to the mirror',
      tag: 'mirrors',
      params: NameParam,
      response: MirrorSchema,
      handler: (d, { params }) => d.mirrors[action](params.name!),
    }),
  ),
  {
    method: 'POST',
    url: '/v1/disks/:name/mirror/verify',
    operationId: 'verifyMirror',
    summary: 'Compare disk and mirror online; report the ranges that differ',
    tag: 'mirrors',
    params: NameParam,
    response: VerifySchema,
    handler: (d, { params }) => d.mirrors.verify(params.name!),
  },
  {
    method: 'POST',
    url: '/v1/disks/:name/mirror/swap',
    operationId: 'swapMirror',
    summary: 'Exchange the roles of disk and mirror (only in sync); open NBD connections see no error',
    tag: 'mirrors',
    params: NameParam,
    response: SwapSchema,
    handler: (d, { params }) => d.mirrors.swap(params.name!),
  },
  {
    method: 'POST',
    url: '/v1/disks/:name/mirror/promote',
    operationId: 'promoteReplica',
    summary: "Fail over at the mirror site: the replica becomes a normal, writable disk holding a consistent image (the newest; or, mid-resync, the last consistent one from its undo log). force=true takes a replica that never completed its first sync as it is",
    tag: 'mirrors',
    params: NameParam,
    querystring: Type.Object({ force: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false')])) }, { additionalProperties: false }),
    response: PromoteSchema,
    handler: (d, { params, query }) => d.mirrors.promote(params.name!, { force: query.force === 'true' }),
  },
  {
    method: 'DELETE',
    url: '/v1/disks/:name/mirror',
    operationId: 'removeMirror',
    summary: 'Detach the mirror, brought up to date first; force=true abandons a mirror still syncing',
    tag: 'mirrors',
    params: NameParam,
    querystring: Type.Object({ force: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false')])) }, { additionalProperties: false }),
    response: RemovedMirrorSchema,
    handler: (d, { params, query }) => d.mirrors.remove(params.name!, { force: query.force === 'true' }),
  },
  {
    method: 'GET',
    url: '/v1/pools',
    operationId: 'listPools',
    summary: 'List storage pools',
    tag: 'pools',
    response: Type.Array(PoolSchema),
    handler: (d) => d.disks.pools(),
  },
  {
    method: 'POST',
    url: '/v1/pools',
    operationId: 'addPool',
    summary: 'Register a directory as a storage pool for virtual disks',
    tag: 'pools',
    body: Type.Object({ name: Name, path: Type.String({ minLength: 1, maxLength: 4096 }) }, { additionalProperties: false }),
    response: PoolSchema,
    status: 201,
    handler: (d, { body }) => d.disks.addPool({ name: body.name as string, path: body.path as string }),
  },
  {
    method: 'DELETE',
    url: '/v1/pools/:name',
    operationId: 'removePool',
    summary: 'Unregister an empty storage pool (its directory is left alone)',
    tag: 'pools',
    params: NameParam,
    response: PoolSchema,
    handler: (d, { params }) => d.disks.removePool(params.name!),
  },
  ...peerRoutes,
  ...drillRoutes,
  ...drRoutes,
  ...groupRoutes,
];
