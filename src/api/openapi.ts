// The OpenAPI 3.1 description of the API, produced by @fastify/swagger from the schemas the
// routes are registered with (routes.ts, peer-routes.ts): parameters, bodies, responses, and
// the error body (ErrorSchema) as every route's default response. Served at GET /openapi.json.
import type { FastifyDynamicSwaggerOptions } from '@fastify/swagger';

export const openApiOptions: FastifyDynamicSwaggerOptions = {
  openapi: {
    openapi: '3.1.0',
    info: { title: 'Ferry management API', version: '1', description: 'Disks, staging areas, mirrors, pools and peers of one ferryd; error codes in docs/API.md' },
    components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'the token in <data dir>/api-token' } } },
    security: [{ bearer: [] }],
  },
};
