// Builds the OpenAPI 3.1 description of the API from the route table.
import type { RouteDef } from './routes.js';
import { ErrorSchema } from './routes.js';

export function buildOpenApi(routes: RouteDef[]): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of routes) {
    const url = r.url.replace(/:(\w+)/g, '{$1}');
    const parameters: unknown[] = [];
    for (const [where, schema] of [['path', r.params], ['query', r.querystring]] as const) {
      const props = (schema as { properties?: Record<string, unknown> } | undefined)?.properties ?? {};
      const required = new Set((schema as { required?: string[] } | undefined)?.required ?? []);
      for (const [name, s] of Object.entries(props)) parameters.push({ name, in: where, required: where === 'path' || required.has(name), schema: s });
    }
    (paths[url] ??= {})[r.method.toLowerCase()] = {
      operationId: r.operationId,
      summary: r.summary,
      tags: [r.tag],
      ...(r.url === '/v1/health' ? { security: [] } : {}),
      ...(parameters.length ? { parameters } : {}),
      ...(r.body ? { requestBody: { required: true, content: { 'application/json': { schema: r.body } } } } : {}),
      responses: {
        [String(r.status ?? 200)]: { description: 'success', content: { 'application/json': { schema: r.response } } },
        default: { description: 'error (see the error codes in docs/API.md)', content: { 'application/json': { schema: ErrorSchema } } },
      },
    };
  }
  paths['/metrics'] = { get: { operationId: 'metrics', summary: 'Prometheus metrics (text exposition format)', tags: ['server'], responses: { '200': { description: 'metrics', content: { 'text/plain': {} } } } } };
  return {
    openapi: '3.1.0',
    info: { title: 'Ferry management API', version: '1' },
    components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'the token in <data dir>/api-token' } } },
    security: [{ bearer: [] }],
    paths,
  };
}
