// The API's routes for consistency groups (control/group-control.ts): create one over
// existing disks with its staging area, show, add and remove members online, delete it, and
// create its mirror. Every other mirror operation (status, pause, resume, verify, swap, set,
// remove) is the disk route given the group's name: a group's name is in the disks' namespace.
// In the route-table style of routes.ts, which includes them.
import { Type } from '@sinclair/typebox';
import type { RouteDef } from './routes.js';
import { MirrorPolicyFields, MirrorSchema } from './mirror-schemas.js';
import { parseSize } from '../disk/size.js';

const Name = Type.String({ minLength: 1, maxLength: 63, description: "letters, digits, '.', '_', '-'" });
const NameParam = Type.Object({ name: Name });
const Size = Type.Union([Type.Integer({ minimum: 1 }), Type.String({ minLength: 1, maxLength: 32 })], { description: 'bytes, or a string with a K/M/G/T suffix (binary units)' });

export const GroupSchema = Type.Object({
  name: Type.String(),
  state: Type.Union([Type.Literal('online'), Type.Literal('unavailable')]),
  error: Type.Optional(Type.String()),
  addressBytes: Type.Integer({ description: "the group's address space: each member at a fixed base, 64 MiB aligned" }),
  members: Type.Array(
    Type.Object({
      disk: Type.String(),
      base: Type.Integer({ description: "where the member lies in the group's address space" }),
      size: Type.Integer(),
      clients: Type.Integer({ description: 'NBD clients attached to the member now' }),
      state: Type.Union([Type.Literal('online'), Type.Literal('unavailable')]),
    }),
  ),
  staging: Type.Union([Type.Object({ path: Type.String(), copyPath: Type.Union([Type.String(), Type.Null()]), size: Type.Integer() }), Type.Null()], {
    description: "the group's staging area: every member's writes, in one sequence",
  }),
  mirror: Type.Union([Type.String(), Type.Null()], { description: "the group's mirror target, if any (GET /v1/disks/{name}/mirror with the group's name tells more)" }),
  createdAt: Type.String({ format: 'date-time' }),
});

export const groupRoutes: RouteDef[] = [
  {
    method: 'GET',
    url: '/v1/groups',
    operationId: 'listGroups',
    summary: 'Every consistency group',
    tag: 'groups',
    response: Type.Array(GroupSchema),
    handler: (d) => d.groups.list(),
  },
  {
    method: 'POST',
    url: '/v1/groups',
    operationId: 'createGroup',
    summary: "Create a consistency group over existing disks: they share one staging area, so their writes get one sequence (and the group's mirror one point for all)",
    tag: 'groups',
    body: Type.Object(
      {
        name: Name,
        disks: Type.Array(Name, { minItems: 1, maxItems: 128, description: 'the members: online, writable disks with no staging area, mirror or role of their own' }),
        staging: Type.String({ minLength: 1, maxLength: 4096, description: "the group's staging area: a new file (Ferry creates it) or a block device" }),
        stagingSize: Type.Optional(Size),
        stagingCopy: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
      },
      { additionalProperties: false },
    ),
    response: GroupSchema,
    status: 201,
    handler: (d, { body }) =>
      d.groups.create({
        name: body.name as string,
        disks: body.disks as string[],
        staging: body.staging as string,
        stagingSize: body.stagingSize === undefined ? undefined : parseSize(body.stagingSize as string | number),
        stagingCopy: body.stagingCopy as string | undefined,
      }),
  },
  {
    method: 'GET',
    url: '/v1/groups/:name',
    operationId: 'showGroup',
    summary: 'A consistency group: its members and where they lie, its staging area, its mirror',
    tag: 'groups',
    params: NameParam,
    response: GroupSchema,
    handler: (d, { params }) => d.groups.show(params.name!),
  },
  {
    method: 'DELETE',
    url: '/v1/groups/:name',
    operationId: 'deleteGroup',
    summary: 'Delete a consistency group (no mirror): its staging area is applied and detached; every member is a disk of its own again, with its data',
    tag: 'groups',
    params: NameParam,
    response: GroupSchema,
    handler: (d, { params }) => d.groups.delete(params.name!),
  },
  {
    method: 'POST',
    url: '/v1/groups/:name/members',
    operationId: 'addGroupMember',
    summary: "Add a disk to the group online (its requests, and the members', are held for the change); the group's mirror copies it while the others keep streaming",
    tag: 'groups',
    params: NameParam,
    body: Type.Object({ disk: Name }, { additionalProperties: false }),
    response: GroupSchema,
    handler: (d, { params, body }) => d.groups.add(params.name!, body.disk as string),
  },
  {
    method: 'DELETE',
    url: '/v1/groups/:name/members/:disk',
    operationId: 'removeGroupMember',
    summary: "Remove a member online: everything staged for it is applied first; it keeps its data and is a disk of its own again (its file in the group's mirror stays, a copy as of the removal)",
    tag: 'groups',
    params: Type.Object({ name: Name, disk: Name }),
    response: GroupSchema,
    handler: (d, { params }) => d.groups.remove(params.name!, params.disk!),
  },
  {
    method: 'POST',
    url: '/v1/groups/:name/mirror',
    operationId: 'createGroupMirror',
    summary: "Create the group's mirror (local:DIR: a new file per member in DIR) and start syncing; it applies the group's one sequence, so every member's file is at the same point",
    tag: 'groups',
    params: NameParam,
    body: Type.Object({ to: Type.String({ minLength: 1, maxLength: 4200 }), ...MirrorPolicyFields }, { additionalProperties: false }),
    response: MirrorSchema,
    status: 201,
    handler: (d, { params, body }) => {
      d.groups.show(params.name!); // GROUP_NOT_FOUND for a disk or nothing
      return d.mirrors.create({ disk: params.name!, to: body.to as string, onFull: body.onFull, maxLag: body.maxLag, bandwidth: body.bandwidth, compress: body.compress, rpo: body.rpo });
    },
  },
];
