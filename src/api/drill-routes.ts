// The API's routes for test failovers (DR drills) at the mirror site: start one on a replica
// (a writable image of it as of now under a new NBD export, replication going on underneath),
// show it, end it. In the route-table style of routes.ts, which includes them (and the test
// failover's schema in the mirror status of both sites). See src/control/drill-control.ts.
import { Type } from '@sinclair/typebox';
import type { RouteDef } from './routes.js';
import { TestFailoverSchema } from './mirror-schemas.js';

export { TestFailoverSchema } from './mirror-schemas.js';

const NameParam = Type.Object({ name: Type.String({ minLength: 1, maxLength: 63, description: "letters, digits, '.', '_', '-'" }) });

export const TestFailoverDetailsSchema = Type.Object({
  ...TestFailoverSchema.properties,
  disk: Type.String(),
  scratch: Type.Union([Type.String(), Type.Null()], { description: 'the scratch file (null once ended)' }),
  preservedBytes: Type.Integer({ description: 'replica contents preserved for the test since it started' }),
  writtenBytes: Type.Integer({ description: 'granules the test wrote' }),
  granuleBytes: Type.Integer({ description: 'the copy-on-write granule' }),
  exports: Type.Array(Type.String(), { description: "the NBD exports serving the image: the export, or for a consistency group's replica EXPORT.MEMBER per member (all at one point)" }),
});

export const TestEndSchema = Type.Object({
  disk: Type.String(),
  export: Type.String(),
  endedBy: Type.Union([Type.Literal('test-end'), Type.Literal('restart')], { description: 'restart: the test had already ended when the mirror site restarted; this cleared the note' }),
  clientsDisconnected: Type.Integer(),
  preservedBytes: Type.Integer(),
  writtenBytes: Type.Integer(),
  lostReason: Type.Union([Type.String(), Type.Null()], { description: 'why the test image was lost, if it was' }),
});

export const drillRoutes: RouteDef[] = [
  {
    method: 'POST',
    url: '/v1/disks/:name/mirror/test',
    operationId: 'startTestFailover',
    summary: 'Test failover (DR drill) at the mirror site: a writable image of the replica as of now under a new NBD export, copy-on-write into a bounded scratch file, while replication goes on',
    tag: 'mirrors',
    params: NameParam,
    body: Type.Object(
      {
        export: Type.String({ minLength: 1, maxLength: 63, description: 'the new NBD export name' }),
        scratch: Type.String({ minLength: 1, maxLength: 4096, description: 'absolute path of the scratch file Ferry creates (must not exist)' }),
        scratchSize: Type.Union([Type.Integer({ minimum: 1 }), Type.String({ minLength: 1, maxLength: 32 })], { description: 'bytes, or a string with a K/M/G/T suffix; at least 1 MiB' }),
      },
      { additionalProperties: false },
    ),
    response: TestFailoverDetailsSchema,
    handler: async (d, { params, body }) => {
      await d.drills.start(params.name!, { export: body.export, scratch: body.scratch, scratchSize: body.scratchSize });
      return d.drills.details(params.name!);
    },
  },
  {
    method: 'GET',
    url: '/v1/disks/:name/mirror/test',
    operationId: 'showTestFailover',
    summary: "The replica's test failover (running, lost, or ended by a restart); NO_TEST when there is none",
    tag: 'mirrors',
    params: NameParam,
    response: TestFailoverDetailsSchema,
    handler: (d, { params }) => d.drills.details(params.name!),
  },
  {
    method: 'DELETE',
    url: '/v1/disks/:name/mirror/test',
    operationId: 'endTestFailover',
    summary: "End the replica's test failover: its export is dropped (clients disconnected), the scratch file deleted; the replica was never written by the test",
    tag: 'mirrors',
    params: NameParam,
    response: TestEndSchema,
    handler: (d, { params }) => d.drills.end(params.name!),
  },
];
