// The api layer: ferryd's management REST API (fastify, JSON, TypeBox schemas). It
// owns authentication (a bearer token from the data directory), request validation,
// the mapping of FerryError codes onto HTTP statuses, the OpenAPI description (@fastify/swagger,
// from the schemas the route table registers) and Prometheus metrics. It
// calls into the control layer and never touches disks or sockets itself.
import crypto from 'node:crypto';
import http from 'node:http';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { FerryError, type ErrorCode } from '../errors.js';
import type { Daemon } from '../control/daemon.js';
import { routes, type RouteDef } from './routes.js';
import swagger from '@fastify/swagger';
import { openApiOptions } from './openapi.js';
import { ErrorSchema } from './routes.js';
import { Metrics } from './metrics.js';
import { EventService } from './event-routes.js';
import { isConsoleAsset, registerConsoleRoutes } from './console-routes.js';
import { ConnectionLimiter, fdBoundedMax, type Admission, type ConnectionLimits } from '../net/connection-limiter.js';

export interface ApiServerOptions {
  daemon: Daemon;
  token: string;
  log: Logger;
}

/** Request bodies are small JSON documents; anything larger is refused before parsing. */
const bodyBytesMax = 64 * 1024;
/** fastify's bound on one path parameter (a name: at most 63 characters); longer is URL_TOO_LONG (414). */
const paramBytesMax = 100;

/**
 * Default API connection limits: a quarter of the descriptors left after the reserve, at most
 * 256; 64 per address (a CLI call holds one, a browser about six); a connection must send a
 * complete request within 10 s of connecting, and at most 64 (16 per address) may be waiting to.
 */
export function apiLimitsDefault(): ConnectionLimits {
  const connectionsMax = fdBoundedMax(256, 1 / 4);
  const pendingMax = Math.min(64, connectionsMax);
  return { connectionsMax, perAddressMax: Math.min(64, connectionsMax), pendingMax, pendingPerAddressMax: Math.min(16, pendingMax), pendingMsMax: 10_000 };
}

export class ApiServer {
  private readonly app: FastifyInstance;
  private readonly token: Buffer;

  constructor(private readonly opts: ApiServerOptions) {
    this.token = Buffer.from(opts.token, 'utf8');
    this.app = Fastify({
      // Per-request lines are info level; the API logs warnings and errors only.
      loggerInstance: opts.log.child({ component: 'api' }, { level: 'warn' }) as unknown as FastifyBaseLogger,
      bodyLimit: bodyBytesMax,
      routerOptions: { maxParamLength: paramBytesMax },
      // Unknown fields are an error, not silently dropped, and a JSON value of the wrong type is
      // refused, never coerced (5 is not the name "5", true is not the size 1).
      ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
      // Errors fastify raises before a route runs (a bad percent-encoding, a path parameter
      // over maxParamLength) and those of Node's HTTP parser answer in Ferry's format too.
      frameworkErrors: (err, req, reply) => sendError(err, req, reply),
      clientErrorHandler: answerClientError,
    });
    const metrics = new Metrics(opts.daemon);
    const events = new EventService(opts.daemon, opts.log);
    this.app.addHook('onRequest', async (req) => {
      if (req.url.split('?')[0] === '/v1/health' || isConsoleAsset(req.url)) return;
      this.authenticate(req);
      if (!opts.daemon.ready) throw new FerryError('STARTING', 'ferryd is starting: its disks are being recovered; retry shortly');
    });
    this.app.setErrorHandler(sendError);
    events.hook(this.app);
    this.app.setNotFoundHandler((req, reply) => {
      const e = new FerryError('NOT_FOUND', `no API route ${req.method} ${req.url.split('?')[0]}`);
      void reply.status(e.httpStatus).send({ error: e.toJSON() });
    });
    // Response schemas describe (OpenAPI) and are checked by tests; bodies are sent as the
    // handlers made them, never reshaped or coerced by a schema-based serializer.
    this.app.setSerializerCompiler(() => (data) => JSON.stringify(data));
    // @fastify/swagger sees the routes registered after it (plugins load in order).
    void this.app.register(swagger, openApiOptions);
    void this.app.register(async (app) => {
      for (const r of routes) this.register(app, r);
      events.route(app);
      registerConsoleRoutes(app);
      app.get('/openapi.json', { schema: { hide: true } }, async () => this.app.swagger());
      app.get('/metrics', { schema: { operationId: 'metrics', summary: 'Prometheus metrics (text exposition format)', tags: ['server'] } }, async (_req, reply) => {
        void reply.header('content-type', metrics.contentType);
        return metrics.render();
      });
    });
  }

  private authenticate(req: FastifyRequest): void {
    const header = req.headers.authorization ?? '';
    const m = /^Bearer\s+(\S+)$/i.exec(header);
    const given = Buffer.from(m?.[1] ?? '', 'utf8');
    const ok = given.length === this.token.length && crypto.timingSafeEqual(given, this.token);
    if (!ok) {
      req.log.warn({ remote: req.ip, url: req.url }, 'API request refused: missing or wrong token');
      throw new FerryError('UNAUTHORIZED', 'missing or wrong API token: send "Authorization: Bearer <token>" (the token is in the data directory, file api-token)');
    }
  }

  private register(app: FastifyInstance, r: RouteDef): void {
    app.route({
      method: r.method,
      url: r.url,
      schema: {
        operationId: r.operationId,
        summary: r.summary,
        tags: [r.tag],
        ...(r.url === '/v1/health' ? { security: [] } : {}),
        response: { [String(r.status ?? 200)]: r.response, default: { description: 'error (see the error codes in docs/API.md)', ...ErrorSchema } },
        ...(r.params ? { params: r.params } : {}),
        ...(r.querystring ? { querystring: r.querystring } : {}),
        ...(r.body ? { body: r.body } : {}),
      },
      handler: async (req, reply) => {
        const result = await r.handler(this.opts.daemon, { params: req.params as never, query: req.query as never, body: req.body as never });
        void reply.status(r.status ?? 200);
        return result;
      },
    });
  }

  /**
   * Listens, with the API's connection limits (src/net/connection-limiter.ts): in total, per
   * source address, and for connections that have not sent a complete request yet (pending:
   * closed after pendingMsMax); refusals are logged, rate-limited.
   */
  listen(host: string, port: number, limits: Partial<ConnectionLimits> = {}): Promise<{ host: string; port: number }> {
    const limiter = new ConnectionLimiter({ name: 'API', limits: { ...apiLimitsDefault(), ...limits }, log: this.opts.log });
    const admissions = new WeakMap<object, Admission>();
    this.app.server.on('connection', (socket: net.Socket) => {
      socket.setNoDelay(true);
      const admission = limiter.admit(socket);
      if (admission) admissions.set(socket, admission);
    });
    this.app.server.on('request', (req: http.IncomingMessage) => admissions.get(req.socket)?.established());
    this.app.server.once('close', () => limiter.close());
    return this.app.listen({ host, port }).then(() => {
      const addr = this.app.server.address();
      if (addr === null || typeof addr === 'string') throw new Error('API server has no TCP address');
      return { host: addr.address, port: addr.port };
    });
  }

  close(): Promise<void> {
    return this.app.close();
  }
}

/** Every error of a request (ours, fastify's, a route's) as {error:{code,message}} with the code's status. */
function sendError(err: unknown, req: FastifyRequest, reply: FastifyReply): void {
  const e = toFerryError(err, req);
  // A refusal is the API working (a 4xx is not logged; a peer unreachable, a staging area with
  // no copy, ferryd starting are warnings); an error-level line means a fault in ferryd or its
  // storage, something an operator must look at.
  if (FAULT_CODES.has(e.code)) req.log.error({ err: String(err), code: e.code, url: req.url }, 'API request failed');
  else if (e.httpStatus >= 500) req.log.warn({ err: e.message, code: e.code, url: req.url }, 'API request refused');
  void reply.status(e.httpStatus).send({ error: e.toJSON() });
}

/** The codes logged at error level when a request fails with them: faults, not refusals. */
const FAULT_CODES: ReadonlySet<ErrorCode> = new Set(['INTERNAL', 'IO_ERROR', 'STAGING_CORRUPT', 'UNDO_LOG_CORRUPT']);

/**
 * Node's HTTP parser refused the request before fastify saw it (request line and headers
 * over 16 KiB, a request too slow, bytes that are not HTTP): answer in Ferry's format on the
 * raw socket (there is no reply object), then close it, as Node does.
 */
function answerClientError(err: Error & { code?: string }, socket: Duplex): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const e =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? new FerryError('HEADERS_TOO_LARGE', 'the request line and headers exceed 16 KiB')
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? new FerryError('REQUEST_TIMEOUT', 'the request was not received in time')
        : new FerryError('BAD_REQUEST', `malformed HTTP request (${err.code ?? err.message})`);
  const body = JSON.stringify({ error: e.toJSON() });
  if (socket.writable) {
    socket.write(`HTTP/1.1 ${e.httpStatus} ${http.STATUS_CODES[e.httpStatus] ?? 'Error'}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  }
  socket.destroy();
}

function toFerryError(err: unknown, req: FastifyRequest): FerryError {
  if (err instanceof FerryError) return err;
  const e = err as { validation?: unknown; validationContext?: string; statusCode?: number; code?: string; message?: string };
  if (e.validation) return new FerryError(validationCode(e, req), `invalid request: ${e.message}`);
  if (e.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return new FerryError('BAD_REQUEST', 'send JSON (content-type: application/json)');
  if (e.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return new FerryError('BAD_REQUEST', `request body exceeds ${bodyBytesMax} bytes`);
  if (e.code === 'FST_ERR_MAX_PARAM_LENGTH') return new FerryError('URL_TOO_LONG', `a path segment of the URL exceeds ${paramBytesMax} characters (no name is that long)`);
  if (e.code === 'FST_ERR_BAD_URL') return new FerryError('BAD_REQUEST', 'the URL path is not valid percent-encoding');
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) return new FerryError('BAD_REQUEST', e.message ?? 'bad request');
  return new FerryError('INTERNAL', e.message ?? String(err));
}

/**
 * A schema failure of a name or size field whose JSON type is right (a string name, a
 * string or number size, a string path or copy path) gets the code the control layer would give it,
 * so '' and a 64-character name are INVALID_NAME like '../x'; a wrong JSON type stays
 * BAD_REQUEST.
 */
function validationCode(e: { validation?: unknown; validationContext?: string }, req: FastifyRequest): ErrorCode {
  const first = (e.validation as Array<{ instancePath?: string }>)[0];
  const source = e.validationContext === 'body' ? req.body : e.validationContext === 'params' ? req.params : undefined;
  const field = /^\/(\w+)$/.exec(first?.instancePath ?? '')?.[1];
  if (!field || typeof source !== 'object' || source === null) return 'BAD_REQUEST';
  const value = (source as Record<string, unknown>)[field];
  if ((field === 'name' || field === 'pool') && typeof value === 'string') return 'INVALID_NAME';
  if (field === 'size' && (typeof value === 'string' || typeof value === 'number')) return 'INVALID_SIZE';
  if ((field === 'path' || field === 'copy') && typeof value === 'string') return 'INVALID_PATH';
  return 'BAD_REQUEST';
}
