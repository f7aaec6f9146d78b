// The API's front door: token authentication on every route but GET /v1/health, the
// token file itself (0600, reused across restarts), the OpenAPI description, Prometheus
// metrics and the 404 for unknown routes.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { requireTool, run, startFerryd, tmpDir, type Ferryd } from '../harness.js';
import { routes } from '../../src/api/routes.js';
import { assertError, assertUnchanged, cleanup, rawApi, snapshot } from './helpers.js';

describe('API authentication and description', () => {
  let d: Ferryd;
  let poolDir: string;

  before(async () => {
    d = await startFerryd();
    poolDir = tmpDir('ferry-pool-');
    await d.createDisk('d1', '1M');
    const p = await d.api('POST', '/v1/pools', { name: 'p1', path: poolDir });
    assert.equal(p.status, 201, JSON.stringify(p.body));
  });
  after(async () => {
    await cleanup(d, poolDir);
  });

  /** Every served operation, with path parameters filled in with things that exist. */
  function operations(): Array<{ method: string; url: string; body?: string }> {
    const ops = routes.map((r) => ({
      method: r.method,
      url: r.url.replace(':name', r.url.startsWith('/v1/pools') ? 'p1' : 'd1'),
      body: r.body ? JSON.stringify(r.url === '/v1/pools' ? { name: 'p2', path: poolDir } : r.url === '/v1/disks/adopt' ? { name: 'a1', path: '/etc/hostname' } : { name: 'd2', size: '1M' }) : undefined,
    }));
    return [...ops, { method: 'GET', url: '/openapi.json' }, { method: 'GET', url: '/metrics' }, { method: 'GET', url: '/no/such/route' }];
  }

  test('GET /v1/health needs no token', async () => {
    for (const auth of [{ token: null }, { token: 'wrong' }, {}] as const) {
      const r = await rawApi(d, 'GET', '/v1/health', auth);
      assert.equal(r.status, 200);
      assert.deepEqual(r.body, { status: 'ok' });
    }
    const q = await rawApi(d, 'GET', '/v1/health?probe=1', { token: null });
    assert.equal(q.status, 200, 'a query string does not turn health into an authenticated route');
  });

  test('every other route refuses a missing or wrong token with 401 UNAUTHORIZED and changes nothing', async () => {
    const before = await snapshot(d);
    const token = d.token;
    const bad: Array<{ label: string; opts: { token?: string | null; authorization?: string } }> = [
      { label: 'no header', opts: { token: null } },
      { label: 'empty header', opts: { authorization: '' } },
      { label: 'empty bearer', opts: { authorization: 'Bearer ' } },
      { label: 'wrong token', opts: { token: 'not-the-token' } },
      { label: 'token prefix', opts: { token: token.slice(0, -1) } },
      { label: 'token plus a byte', opts: { token: token + 'x' } },
      { label: 'other case', opts: { token: token.toUpperCase() } },
      { label: 'basic scheme', opts: { authorization: `Basic ${token}` } },
      { label: 'bare token', opts: { authorization: token } },
    ];
    for (const op of operations()) {
      if (op.url === '/v1/health') continue;
      for (const b of bad) {
        const r = await rawApi(d, op.method, op.url, { ...b.opts, body: op.body });
        assertError(r, 401, 'UNAUTHORIZED', `${op.method} ${op.url} (${b.label})`);
      }
    }
    await assertUnchanged(d, before, 'unauthenticated requests');
  });

  /** The route exists and the token was accepted (the answer may still be a domain error, e.g. NO_STAGING). */
  function assertServed(r: { status: number; body: any; text: string }, what: string): void {
    assert.notEqual(r.status, 401, `${what} → ${r.text.slice(0, 200)}`);
    assert.notEqual(r.body?.error?.code, 'NOT_FOUND', `${what} → ${r.text.slice(0, 200)}`);
    assert.ok(r.status < 500, `${what} → ${r.text.slice(0, 200)}`);
  }

  test('the right token is accepted on every route', async () => {
    for (const op of operations().filter((o) => o.method === 'GET' && !o.url.startsWith('/no/'))) {
      assertServed(await rawApi(d, op.method, op.url), `${op.method} ${op.url}`);
    }
    for (const url of ['/v1/server', '/v1/disks', '/v1/disks/d1', '/v1/pools', '/openapi.json', '/metrics']) {
      assert.equal((await rawApi(d, 'GET', url)).status, 200, url);
    }
    const lower = await rawApi(d, 'GET', '/v1/server', { authorization: `bearer ${d.token}` });
    assert.equal(lower.status, 200, 'the auth scheme is case-insensitive');
  });

  test('unknown routes and methods are 404 NOT_FOUND and change nothing', async () => {
    const before = await snapshot(d);
    for (const [method, url] of [
      ['GET', '/nope'],
      ['GET', '/v2/disks'],
      ['PUT', '/v1/disks'],
      ['PATCH', '/v1/disks/d1'],
      ['POST', '/v1/disks/d1'],
      ['DELETE', '/v1/disks'],
      ['DELETE', '/v1/pools'],
      ['GET', '/v1/disks/d1/extra'],
    ] as const) {
      const r = await rawApi(d, method, url, method === 'GET' || method === 'DELETE' ? {} : { body: '{}' });
      assertError(r, 404, 'NOT_FOUND', `${method} ${url}`);
    }
    await assertUnchanged(d, before, 'unknown routes');
  });

  test('GET /openapi.json is an OpenAPI 3.1 document listing every route', async () => {
    const r = await rawApi(d, 'GET', '/openapi.json');
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type') ?? '', /application\/json/);
    const doc = r.body;
    assert.equal(doc.openapi, '3.1.0');
    assert.equal(typeof doc.info?.title, 'string');
    assert.equal(typeof doc.info?.version, 'string');
    assert.equal(doc.components?.securitySchemes?.bearer?.scheme, 'bearer');
    assert.deepEqual(doc.security, [{ bearer: [] }]);
    const listed = new Set<string>();
    const ids = new Set<string>();
    for (const [p, item] of Object.entries(doc.paths as Record<string, Record<string, any>>)) {
      assert.ok(p.startsWith('/'), p);
      assert.doesNotMatch(p, /:\w/, `${p} uses OpenAPI {param} syntax`);
      for (const [method, op] of Object.entries(item)) {
        listed.add(`${method.toUpperCase()} ${p}`);
        assert.equal(typeof op.operationId, 'string', `${method} ${p}`);
        assert.ok(!ids.has(op.operationId), `duplicate operationId ${op.operationId}`);
        ids.add(op.operationId);
        assert.ok(op.responses && Object.keys(op.responses).length > 0, `${method} ${p} has responses`);
        for (const param of op.parameters ?? []) if (param.in === 'path') assert.ok(p.includes(`{${param.name}}`), `${p} has {${param.name}}`);
      }
    }
    for (const r2 of routes) assert.ok(listed.has(`${r2.method} ${r2.url.replace(/:(\w+)/g, '{$1}')}`), `${r2.method} ${r2.url} is described`);
    assert.ok(listed.has('GET /metrics'));
    assert.ok(doc.paths['/v1/events'].get.responses['200'].content['text/event-stream'].schema.anyOf.length > 5, 'the events are described');
    assert.deepEqual(doc.paths['/v1/health'].get.security, [], 'health is documented as needing no token');
    assert.equal(doc.paths['/v1/disks'].post.requestBody.content['application/json'].schema.additionalProperties, false);
    // Everything described is served (nothing described answers 404 NOT_FOUND).
    for (const entry of listed) {
      const [method, p] = entry.split(' ') as [string, string];
      // GET /v1/events is a stream that never ends: test/api/events.test.ts serves it.
      if (method !== 'GET' || p === '/v1/events') continue;
      assertServed(await rawApi(d, method, p.replace('{name}', p.startsWith('/v1/pools') ? 'p1' : 'd1')), entry);
    }
  });

  test('GET /metrics is Prometheus text and counts NBD writes', async () => {
    requireTool('qemu-io');
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 8192', d.uri('d1')], { timeoutMs: 60_000 });
    assert.equal(w.code, 0, w.stderr);
    const r = await rawApi(d, 'GET', '/metrics');
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type') ?? '', /^text\/plain/);
    assert.match(r.text, /^# HELP ferry_disk_write_bytes_total /m);
    assert.match(r.text, /^# TYPE ferry_disk_write_bytes_total counter$/m);
    const m = /^ferry_disk_write_bytes_total\{disk="d1"\} (\d+)$/m.exec(r.text);
    assert.ok(m, r.text.slice(0, 2000));
    assert.equal(Number(m[1]), 8192);
    assert.match(r.text, /^ferry_disk_online\{disk="d1"\} 1$/m);
    for (const line of r.text.split('\n')) {
      if (line === '' || line.startsWith('#')) continue;
      assert.match(line, /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? ([-+0-9.eE]+|[Nn][Aa][Nn]|[+-]Inf)( -?\d+)?$/, `exposition line: ${line}`);
    }
  });

  test('the api-token file is 0600 and the token survives restarts', async () => {
    const file = path.join(d.dataDir, 'api-token');
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    const token = d.token;
    assert.ok(token.length >= 32);
    await d.restart();
    assert.equal(d.token, token);
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    const r = await rawApi(d, 'GET', '/v1/disks', { token });
    assert.equal(r.status, 200);
    assert.deepEqual(
      (r.body as Array<{ name: string }>).map((x) => x.name),
      ['d1'],
    );
  });
});
