// Fuzzer of the REST API, seeded and bounded (test/fuzz/fuzz-kit.ts: FERRY_FUZZ_SEED,
// FERRY_FUZZ_SECONDS, FERRY_FUZZ_CASES).
//
// Each case sends one request, most through fetch, some as raw bytes on their own TCP socket
// (so malformed HTTP gets through: odd methods and versions, raw bytes in the path, lying or
// duplicate Content-Length, broken chunked bodies, headers without a colon, huge headers):
//  - methods: the routes' own, other HTTP methods, random tokens;
//  - paths: the real routes (src/api/routes.ts) with mutated segments (unknown, long,
//    percent-encoded, bad percent-encodings, dot segments, NUL, unicode), extra or missing
//    segments, slashes, random paths;
//  - query strings, headers (content types, authorization variants) and bodies: mutated valid
//    JSON for the route's schema, random JSON, non-JSON;
//  - with the right token, without one, or with a wrong one.
// A request with the right token to a route that changes state is always built to fail (an
// unknown field, an unknown query key, a name that does not exist, a path or size that must be
// refused): everything else about it is random. So:
//  - without the right token, nothing but /v1/health and the console's files answers 2xx;
//  - a request built to fail that answers 2xx is reported (an "unexpected 2xx");
//  - no answer is a 5xx other than the documented ones; 500 INTERNAL is always a failure;
//  - an error answer has Ferry's format {error:{code,message}} (raw HTTP: when it has a body).
// After each batch: ferryd is alive, RSS under 1 GiB, no error logged (other than the API's own
// line for a 5xx, already reported), GET /v1/disks with the token answers 200, and the disks,
// pools and files under the data, pool and adopted-file directories are exactly as before
// unless an accepted (2xx) request explains the change.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Cleanup, type Ferryd } from '../harness.js';
import { snapshot, type Snapshot } from '../api/helpers.js';
import { routes } from '../../src/api/routes.js';
import { isConsoleAsset } from '../../src/api/console-routes.js';
import { daemonWatch, exchangeRaw, fuzzConfig, peakRssMiB, runCases, show, type CaseResult, type R } from './fuzz-kit.js';

/** 5xx codes the registry documents for real faults; INTERNAL (and a 5xx in another format) is a failure. */
const DOCUMENTED_5XX = new Set(['STAGING_CORRUPT', 'STAGING_FAILED', 'UNDO_LOG_CORRUPT', 'PEER_UNREACHABLE', 'REPL_PROTOCOL', 'REMOTE_ERROR', 'NO_SPACE', 'STARTING']);

interface Env {
  d: Ferryd;
  token: string;
  disks: string[];
  pools: string[];
  /** Directories whose files must not change. */
  dirs: string[];
  adoptFile: string;
  plainFile: string;
}

interface Req {
  method: string;
  path: string; // already encoded, as sent
  headers: Record<string, string>;
  body?: string;
  /** Built to fail: a 2xx is a finding. */
  mustFail: boolean;
  /** Carries the right token. */
  authorized: boolean;
  why: string;
}

const SEGMENT_NAMES = ['fz-a', 'fz-b', 'default', 'fz-pool', 'nope', 'site-x'];

function mutateSegment(r: R, base: string): string {
  return r.weighted<() => string>([
    [4, () => base],
    [2, () => encodeURIComponent(base)],
    [2, () => base + r.pick(['x', '.', '..', '%00', '%zz', '%', '%2', '%2F', '%252F', '/', '//', '%E2%82', '%C0%AF', '\u00e9'.normalize()])],
    [2, () => r.pick(['.', '..', '%2e%2e', '%2E', '', ' ', '%20', '%00', '~', '-', '_', 'a'.repeat(63), 'a'.repeat(64)])],
    [2, () => 'a'.repeat(r.pick([99, 100, 101, 255, 1000, 5000, 20_000]))],
    [2, () => [...r.bytes(1 + r.int(20))].map((b) => `%${b.toString(16).padStart(2, '0')}`).join('')],
    [1, () => r.bytes(1 + r.int(12)).toString('latin1').replace(/[\s?#/]/g, '')],
    [1, () => encodeURIComponent('名前') + r.pick(['', '%']) ],
  ])();
}

/** A path from a route template, with :name filled by a (maybe mutated) segment. */
function routePath(r: R, url: string, name: string): string {
  let p = url.replace(':name', name);
  p = r.weighted<() => string>([
    [10, () => p],
    [1, () => p + '/'],
    [1, () => p.replace('/v1/', '/v1//')],
    [1, () => p + '/' + mutateSegment(r, 'extra')],
    [1, () => p.split('/').slice(0, -1).join('/') || '/'],
    [1, () => p.toUpperCase()],
    [1, () => p.replace('/v1', r.pick(['/v2', '/v0', '', '/V1', '/v1/..', '/%76%31']))],
  ])();
  return p;
}

function randomJson(r: R, depth = 0): unknown {
  return r.weighted<() => unknown>([
    [2, () => null],
    [2, () => r.chance(0.5)],
    [3, () => r.pick([0, -1, 1, 1.5, 2 ** 53, -(2 ** 63), 1e308, 4096, 1048576])],
    [4, () => r.pick(['', 'x', '1M', '-1', '0', '1Q', '9999999T', 'NaN', '../x', '/tmp', 'local:/tmp/x', '\u0000', 'a'.repeat(r.pick([63, 64, 4096, 5000]))])],
    [depth < 3 ? 1 : 0, () => Array.from({ length: r.int(4) }, () => randomJson(r, depth + 1))],
    [depth < 3 ? 1 : 0, () => Object.fromEntries(Array.from({ length: r.int(4) }, () => [r.pick(['name', 'size', 'path', 'pool', 'to', 'x', '__proto__', 'constructor', '']), randomJson(r, depth + 1)]))],
  ])();
}

/** A value for a field that must be refused, whatever the rest of the request. */
function mustFailPath(r: R, env: Env): string {
  return r.pick([
    'relative/x.img',
    'x.img',
    '/nonexistent-ferry-fuzz/dir/x.img',
    '/proc/self/environ',
    '/proc/self/mem',
    '/sys/kernel/notes',
    path.join(env.d.dataDir, 'api-token'),
    path.join(env.d.dataDir, 'repl', 'key.pem'),
    path.join(env.d.dataDir, 'ferry.db'),
    path.join(env.d.dataDir, 'fz-new-staging'),
    env.d.dataDir,
    path.join(env.d.dataDir, 'repl'),
    `/tmp/fz\u0000x`,
    '/dev/null',
    '/dev/zero',
  ]);
}

/** A body that passes the schema except for one thing that makes the request fail (or not pass at all). */
function bodyFor(r: R, env: Env, method: string, url: string): { body: Record<string, unknown>; why: string } {
  const newName = `fzn-${r.int(1e6)}`;
  const key = `${method} ${url}`;
  const pick = <T>(xs: Array<[number, () => T]>): T => r.weighted(xs)();
  switch (key) {
    case 'POST /v1/disks':
      return pick([
        [2, () => ({ body: { name: newName, size: r.pick([0, -1, '0', '1Q', '', ' ', '1.5.5G', '18446744073709551616', 1.5, '-1M', 'G']) }, why: 'bad size' })],
        [1, () => ({ body: { name: newName, size: '1M', pool: 'no-such-pool' }, why: 'no such pool' })],
        [1, () => ({ body: { name: r.pick(['../x', 'a/b', '', ' x', 'x'.repeat(64), 'x\u0000', '.', '..', 'é']), size: '1M' }, why: 'bad name' })],
        [1, () => ({ body: { name: env.disks[0]!, size: '1M' }, why: 'name exists' })],
      ]);
    case 'POST /v1/disks/adopt':
      return pick([
        [3, () => ({ body: { name: newName, path: mustFailPath(r, env), readOnly: r.chance(0.5) }, why: 'path refused' })],
        [1, () => ({ body: { name: env.disks[0]!, path: env.adoptFile, readOnly: true }, why: 'name exists' })],
        [1, () => ({ body: { name: newName, path: env.adoptFile, readOnly: true }, why: 'path in use' })],
      ]);
    case 'POST /v1/disks/:name/staging':
      return { body: { path: mustFailPath(r, env), size: r.pick(['64M', '1', 1, '4K']) }, why: 'staging path refused' };
    case 'POST /v1/disks/:name/mirror':
      return pick([
        [2, () => ({ body: { to: r.pick(['local:' + mustFailPath(r, env), 'bogus:x', 'remote:nopeer/x', 'local:', '', ':', 'nopeer:disk']) }, why: 'target refused' })],
        [1, () => ({ body: { to: `local:${path.join(env.dirs[2]!, 'never-created.img')}`, staging: mustFailPath(r, env) }, why: 'staging refused' })],
      ]);
    case 'POST /v1/pools':
      return pick([
        [3, () => ({ body: { name: newName, path: r.pick([mustFailPath(r, env), env.plainFile, env.dirs[1]!]) }, why: 'pool path refused or in use' })],
        [1, () => ({ body: { name: env.pools[0]!, path: '/tmp' }, why: 'pool name exists' })],
      ]);
    case 'POST /v1/peers':
      return { body: { name: newName, address: `127.0.0.1:${r.pick([0, 1, 99999, -1])}`, token: r.bytes(8).toString('hex') }, why: 'bad address, unknown token' };
    case 'PATCH /v1/peers/:name':
      return { body: { address: `127.0.0.1:${r.int(65536)}` }, why: 'no such peer' };
    default:
      return { body: {}, why: 'no body' };
  }
}

function mutateBody(r: R, body: Record<string, unknown>, protect: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = { ...body };
  for (let k = r.int(3); k > 0; k--) {
    const keys = Object.keys(out).filter((x) => !protect.includes(x));
    const op = r.int(4);
    if (op === 0 && keys.length) out[r.pick(keys)] = randomJson(r);
    else if (op === 1 && keys.length) delete out[r.pick(keys)];
    else if (op === 2) {
      // A field added or replaced at random, never one that makes the request fail (it could
      // turn a bad size into "1M": seed 1279852009, case 38372).
      const extra = ['readOnly', 'pool', 'size', 'copy', 'sync', 'onFull', 'maxLag', 'bandwidth', 'compress', 'stagingSize'].filter((x) => !protect.includes(x));
      if (extra.length) out[r.pick(extra)] = randomJson(r);
    }
    else if (op === 3 && keys.length) {
      const f = r.pick(keys);
      if (typeof out[f] === 'string') out[f] = r.mutate(Buffer.from(out[f] as string)).toString('latin1');
    }
  }
  return out;
}

function buildRequest(r: R, env: Env): Req {
  // Half of the cases go to a route with a body (where the handlers validate paths, names, sizes).
  const route = r.chance(0.9) ? (r.chance(0.5) ? r.pick(routes.filter((x) => x.body)) : r.pick(routes)) : null;
  const auth = r.weighted<string>([
    [7, 'token'],
    [1, 'none'],
    [1, 'wrong'],
    [1, 'odd'],
  ]);
  const headers: Record<string, string> = {};
  if (auth === 'token') headers.authorization = `Bearer ${env.token}`;
  else if (auth === 'wrong') {
    const wrong = r.mutate(Buffer.from(env.token), 1).toString('latin1').replace(/[^\x21-\x7e]/g, 'x');
    // A mutation may leave the token as it was (a truncation to its full length): then it is not wrong.
    headers.authorization = `Bearer ${wrong === env.token ? `${wrong}x` : wrong}`;
  }
  else if (auth === 'odd') headers.authorization = r.pick(['Bearer', 'Bearer ', `Basic ${env.token}`, `Bearer ${env.token} x`, `Bearer ${env.token.slice(1)}`, `Bearer ${env.token}${env.token}`, 'x'.repeat(5000)]);
  const authorized = auth === 'token';
  let method: string = route?.method ?? 'GET';
  if (r.chance(0.15)) method = r.pick(['GET', 'POST', 'PATCH', 'DELETE', 'PUT', 'HEAD', 'OPTIONS']);
  const changes = method !== 'GET' && method !== 'HEAD';
  const why: string[] = [];
  let mustFail = false;
  let name = r.pick(SEGMENT_NAMES);
  // A request with the token that may change state must fail: a name that names nothing (and
  // that no decoding turns into one that does), or a body or query the route must refuse.
  const exists = (seg: string): boolean => {
    let dec = seg;
    try {
      dec = decodeURIComponent(seg);
    } catch {
      return false;
    }
    return env.disks.includes(dec) || env.pools.includes(dec);
  };
  let p: string;
  if (route) {
    let seg = mutateSegment(r, name);
    const isTokens = route.url === '/v1/peers/tokens';
    const methodChanged = method !== route.method;
    p = routePath(r, route.url, seg);
    // Only the route itself, as its table says, refuses a body or query built to fail: any
    // other method or a reshaped path may reach another route, with nothing that must fail.
    const intact = !methodChanged && p === route.url.replace(':name', seg);
    if (authorized && changes && !(intact && (route.body || route.querystring))) {
      // The name must be one that names nothing, in every segment (a '/' or '%2F' moves it).
      const renamed = p
        .split('/')
        .map((x) => (exists(x) || exists(x.replace(/%2f/gi, '')) ? `zz-${x}` : x))
        .join('/');
      if (renamed !== p) why.push('unknown name');
      p = renamed;
    }
    if (authorized && changes && !isTokens) mustFail = true;
    name = seg;
  } else {
    p = r.weighted<() => string>([
      [3, () => '/' + Array.from({ length: 1 + r.int(4) }, () => mutateSegment(r, r.pick(['v1', 'disks', 'pools', 'peers', 'site', 'metrics', 'openapi.json', 'health']))).join('/')],
      [1, () => r.pick(['/', '*', '//', '/v1', '/v1/', '/metrics', '/openapi.json', '/v1/health', '/%', '/%%', '/?', '/#x'])],
      [1, () => '/' + r.bytes(r.int(30)).toString('hex')],
    ])();
    if (authorized && changes) mustFail = true;
  }
  // Query string.
  let query = '';
  let queryFails = false;
  if (route?.querystring && (r.chance(0.5) || (mustFail && !route.body && exists(name)))) {
    const pairs: string[] = [];
    const k = route.url.includes('tokens') ? 'ttl' : route.url.includes('promote') || route.url.endsWith('/mirror') ? 'force' : 'purge';
    if (r.chance(0.5)) pairs.push(`${k}=${r.pick(['true', 'false', 'TRUE', '1', '', 'x', '%00', '0s', '25h', '-1', '1e9'])}`);
    // An unknown key: the route refuses the whole query.
    pairs.push(`${r.pick(['zz', 'x', 'purge2', '__proto__', 'a[b]', '%zz'])}=${r.pick(['1', '', 'true'])}`);
    queryFails = true;
    query = '?' + pairs.join('&');
    why.push('unknown query key');
  } else if (r.chance(0.2)) {
    query = '?' + Array.from({ length: 1 + r.int(3) }, () => `${mutateSegment(r, r.pick(['purge', 'force', 'ttl', 'x']))}=${mutateSegment(r, r.pick(['true', 'false', '1']))}`).join('&');
  }
  // Body.
  let body: string | undefined;
  if (route?.body || r.chance(0.2)) {
    const kind = r.weighted<string>([
      [6, 'schema'],
      [1, 'random-json'],
      [1, 'non-json'],
      [1, 'unknown-field'],
    ]);
    if (kind === 'schema' && route) {
      const b = bodyFor(r, env, route.method, route.url);
      const protect = b.why === 'no body' ? [] : Object.keys(b.body).filter((k) => ['path', 'to', 'staging', 'size', 'name', 'pool', 'address', 'token'].includes(k));
      // The field that makes it fail is kept as is; the others are mutated at will.
      const failing = b.why.includes('size') ? ['size'] : b.why.includes('pool') ? ['pool', 'path', 'name'] : b.why.includes('name') ? ['name'] : b.why.includes('peer') || b.why.includes('address') ? ['address', 'token'] : b.why.includes('target') ? ['to'] : b.why.includes('staging') ? ['staging', 'path'] : protect;
      body = JSON.stringify(r.chance(0.5) ? mutateBody(r, b.body, failing) : b.body);
      why.push(b.why);
    } else if (kind === 'random-json') {
      let v = randomJson(r);
      // An object could by chance be a valid body: one unknown field makes every schema refuse it.
      if (typeof v === 'object' && v !== null && !Array.isArray(v)) v = { ...v, zzUnknown: 1 };
      body = JSON.stringify(v) ?? 'null';
      // Every body schema is an object with required fields or closed: a non-object fails.
      if (!body.startsWith('{')) why.push('non-object body');
      else why.push('random object body');
    } else if (kind === 'non-json') {
      body = r.pick(['', '{', '{"name":', 'null', 'name=x&size=1', '\u0000', r.bytes(r.int(200)).toString('latin1'), 'x'.repeat(70_000), '[' .repeat(10_000)]);
      why.push('non-JSON body');
    } else {
      body = JSON.stringify({ ...bodyFor(r, env, route?.method ?? 'POST', route?.url ?? '').body, zzUnknown: randomJson(r) });
      why.push('unknown field');
    }
    headers['content-type'] = r.weighted<string>([
      [8, 'application/json'],
      [1, 'text/plain'],
      [1, 'application/json; charset=latin1'],
      [1, 'application/x-www-form-urlencoded'],
      [1, ''],
    ]);
    if (!headers['content-type']) delete headers['content-type'];
  }
  if (r.chance(0.1)) headers[r.pick(['x-forwarded-for', 'accept', 'accept-encoding', 'expect', 'x-fuzz', 'connection', 'range'])] = r.pick(['*/*', 'gzip, br', '100-continue', 'x'.repeat(r.int(9000)), 'close', 'bytes=0-1', '']);
  // Every body-carrying route with the token that was not already bound to fail by its name or query
  // must be bound to fail by its body: a route with a body schema refuses a body missing or built to fail.
  void queryFails;
  return { method, path: p + query, headers, body, mustFail, authorized, why: why.join(', ') };
}

/** The requests we trust to fail: what each mutating route is given. */
function describeReq(q: Req): string {
  return `${q.method} ${show(q.path, 300)} auth=${q.authorized} headers=${show(Object.fromEntries(Object.entries(q.headers).map(([k, v]) => [k, k === 'authorization' ? v.slice(0, 20) : v.slice(0, 60)])))} body=${q.body === undefined ? '-' : show(q.body, 300)} (${q.mustFail ? 'must fail: ' : ''}${q.why})`;
}

async function viaFetch(env: Env, q: Req): Promise<{ status: number; text: string }> {
  // One connection per request (closed after it): fetch's shared pool otherwise keeps idle
  // connections after some malformed requests, and the API's per-address limit then refuses more.
  const res = await fetch(env.d.apiUrl + q.path, { method: q.method, headers: { ...q.headers, connection: 'close' }, body: q.method === 'GET' || q.method === 'HEAD' ? undefined : q.body, signal: AbortSignal.timeout(30_000) });
  return { status: res.status, text: await res.text() };
}

/** Raw HTTP: sends the bytes, half-closes, reads until the server closes. */
async function viaRaw(env: Env, bytes: Buffer): Promise<{ text: string; closed: boolean }> {
  const u = new URL(env.d.apiUrl);
  const out = await exchangeRaw({ host: u.hostname, port: Number(u.port) }, bytes);
  return { text: out.received.toString('latin1'), closed: out.closedByServer };
}

function rawBytes(r: R, env: Env, q: Req): { bytes: Buffer; what: string } {
  const u = new URL(env.d.apiUrl);
  const method = r.chance(0.8) ? q.method : r.pick(['FOO', 'get', 'CONNECT', 'TRACE', 'PRI', 'M-SEARCH', 'GET GET', '', r.bytes(4).toString('latin1')]);
  const target = r.chance(0.8) ? q.path : r.pick([q.path.replace(/%/g, ''), q.path + ' x', '*', 'http://x/v1/disks', '/v1/disks\u0000', '/v1/\u00ff\u00fe', 'x'.repeat(r.pick([8000, 17000, 70000]))]);
  const version = r.weighted<string>([
    [8, 'HTTP/1.1'],
    [1, 'HTTP/1.0'],
    [1, r.pick(['HTTP/2.0', 'HTTP/9.9', 'HTTP/1.', 'HTTX/1.1', '', 'HTTP/1.1 x'])],
  ]);
  const body = Buffer.from(q.body ?? '', 'latin1');
  const lines = [`${method} ${target} ${version}`, `Host: ${u.host}`, 'Connection: close'];
  for (const [k, v] of Object.entries(q.headers)) lines.push(`${k}: ${v}`);
  let tail: Buffer = body;
  const framing = r.weighted<string>([
    [6, 'length'],
    [1, 'short-length'],
    [1, 'long-length'],
    [1, 'two-lengths'],
    [1, 'chunked'],
    [1, 'bad-chunked'],
    [1, 'junk-header'],
  ]);
  if (framing === 'length') lines.push(`Content-Length: ${body.length}`);
  else if (framing === 'short-length') lines.push(`Content-Length: ${Math.max(0, body.length - 1 - r.int(10))}`);
  else if (framing === 'long-length') lines.push(`Content-Length: ${r.pick([body.length + 1, body.length + 1000, 2 ** 31, 1e20, -1])}`);
  else if (framing === 'two-lengths') lines.push(`Content-Length: ${body.length}`, `Content-Length: ${body.length + 1}`);
  else if (framing === 'chunked') {
    lines.push('Transfer-Encoding: chunked');
    tail = Buffer.concat([Buffer.from(`${body.length.toString(16)}\r\n`), body, Buffer.from('\r\n0\r\n\r\n')]);
  } else if (framing === 'bad-chunked') {
    lines.push('Transfer-Encoding: chunked', r.chance(0.5) ? `Content-Length: ${body.length}` : 'X-A: b');
    tail = Buffer.concat([Buffer.from(r.pick(['zz\r\n', 'ffffffffffffffff\r\n', '5\r\nab', '-1\r\n'])), body]);
  } else lines.push(r.pick(['NoColonHere', ': empty-name', 'X-Big: ' + 'y'.repeat(20_000), 'X\u0000: y', ' folded: x', 'X-Ok: a\rb']), `Content-Length: ${body.length}`);
  let bytes: Buffer = Buffer.concat([Buffer.from(lines.join('\r\n') + '\r\n\r\n', 'latin1'), tail]);
  if (r.chance(0.1)) bytes = r.mutate(bytes);
  return { bytes, what: `raw ${framing} ${show(bytes.toString('latin1'), 500)}` };
}

function safeDecode(p: string): string {
  try {
    return decodeURIComponent(p);
  } catch {
    return p;
  }
}

interface Seen {
  accepted: string[];
  /** How many answers had each status and code (printed: what the run reached). */
  codes: Map<string, number>;
}

/** The web console's files need no token: the path fetch sends (dot segments, a fragment, spaces removed) is one of them. */
function consoleFile(p: string): boolean {
  try {
    return isConsoleAsset(new URL(p, 'http://h').pathname);
  } catch {
    return false;
  }
}

async function fuzzCase(env: Env, r: R, trace: string[], seen: Seen): Promise<CaseResult> {
  const q = buildRequest(r, env);
  const raw = r.chance(0.2);
  const problems: string[] = [];
  let what = describeReq(q);
  trace.push(what);
  const statuses: Array<{ status: number; body: string }> = [];
  if (raw) {
    const rb = rawBytes(r, env, q);
    what += ` | ${rb.what}`;
    trace.push(rb.what);
    const res = await viaRaw(env, rb.bytes);
    if (!res.closed) problems.push('the server kept the connection open after the client half-closed (Connection: close)');
    for (const m of res.text.matchAll(/HTTP\/1\.[01] (\d{3})[^\r\n]*\r\n([\s\S]*?)\r\n\r\n/g)) {
      const rest = res.text.slice(m.index! + m[0].length);
      const len = /content-length:\s*(\d+)/i.exec(m[2]!);
      statuses.push({ status: Number(m[1]), body: len ? rest.slice(0, Number(len[1])) : '' });
    }
    if (res.text.length && statuses.length === 0) problems.push(`an answer that is not HTTP: ${show(res.text, 300)}`);
  } else {
    let res: { status: number; text: string };
    try {
      res = await viaFetch(env, q);
    } catch (err) {
      // fetch refuses some inputs itself (a forbidden method or header value): nothing was sent.
      const m = String((err as Error).cause ?? (err as Error).message);
      if (/TypeError|invalid|forbidden|not a valid/i.test(`${(err as Error).name} ${(err as Error).message} ${m}`) && !/ECONNRESET|socket|other side closed/i.test(m)) {
        seen.codes.set('fetch refused', (seen.codes.get('fetch refused') ?? 0) + 1);
        return { input: `${what} (fetch refused: ${(err as Error).message})` };
      }
      throw err;
    }
    statuses.push({ status: res.status, body: res.text });
  }
  for (const { status, body } of statuses) {
    let code: string | undefined;
    try {
      code = JSON.parse(body)?.error?.code;
    } catch {
      // not JSON
    }
    const key = `${raw ? 'raw ' : ''}${status} ${code ?? ''}`.trim();
    seen.codes.set(key, (seen.codes.get(key) ?? 0) + 1);
    if (status >= 200 && status < 300) {
      const health = /^\/v1\/health(\?|$)/.test(q.path) || /^\/v1\/health/.test(q.path);
      if (!q.authorized && !health && !raw && !consoleFile(q.path)) problems.push(`answered ${status} without the right token: ${show(body, 200)}`);
      else if (q.mustFail) {
        problems.push(`unexpected ${status} to a request built to fail (${q.why}): ${show(body, 300)}`);
        seen.accepted.push(what);
      }
      // A pairing token lives in memory only: it changes no disk, pool or file.
      else if (q.authorized && q.method !== 'GET' && q.method !== 'HEAD' && !/^\/v1\/peers\/tokens(\?|$)/.test(safeDecode(q.path))) seen.accepted.push(what);
    } else if (status >= 500) {
      if (code === 'INTERNAL' || !code || !DOCUMENTED_5XX.has(code)) problems.push(`answered ${status} ${code ?? ''}: ${show(body, 400)}`);
    } else if (status >= 400 && q.method !== 'HEAD' && body.length) {
      if (typeof code !== 'string') problems.push(`an error answer (${status}) not in Ferry's format: ${show(body, 300)}`);
    }
  }
  return { input: what, problems };
}

describe('REST API fuzzer', { timeout: 30 * 60_000 }, () => {
  const cleanup = new Cleanup('ferry-fuzz-api-');
  let env: Env;

  before(async () => {
    const d = await cleanup.ferryd();
    const files = cleanup.dir('ferry-fuzz-api-files-');
    const poolDir = cleanup.dir('ferry-fuzz-api-pool-');
    const mirrorDir = cleanup.dir('ferry-fuzz-api-mirror-');
    const adoptFile = path.join(files, 'adopted.img');
    fs.writeFileSync(adoptFile, Buffer.alloc(1 << 20, 7));
    const plainFile = path.join(files, 'plain.txt');
    fs.writeFileSync(plainFile, 'not a directory');
    await d.createDisk('fz-a', '1M');
    const a = await d.api('POST', '/v1/disks/adopt', { name: 'fz-b', path: adoptFile, readOnly: true });
    assert.equal(a.status, 201, JSON.stringify(a.body));
    const p = await d.api('POST', '/v1/pools', { name: 'fz-pool', path: poolDir });
    assert.equal(p.status, 201, JSON.stringify(p.body));
    env = { d, token: d.token, disks: ['fz-a', 'fz-b'], pools: ['default', 'fz-pool'], dirs: [files, poolDir, mirrorDir], adoptFile, plainFile };
  });
  after(() => cleanup.run());

  test('random requests get an answer in the error format, no 500, and change nothing unless accepted', async () => {
    const cfg = fuzzConfig('api', 60_000);
    // The API logs its own line for a 5xx answer: the case already reported it.
    const watch = daemonWatch(env.d, (l) => l.msg === 'API request failed' && l.component === 'api');
    const seen: Seen = { accepted: [], codes: new Map() };
    let base: Snapshot = await snapshot(env.d, env.dirs);
    let acceptedAtBase = 0;
    const check = async (): Promise<void> => {
      watch();
      if (process.env.FERRY_FUZZ_DEBUG) {
        const port = new URL(env.d.apiUrl).port;
        const { execFileSync } = await import('node:child_process');
        const est = execFileSync('ss', ['-tnH', 'state', 'established', `( sport = :${port} )`]).toString().trim().split('\n').filter(Boolean).length;
        const cw = execFileSync('ss', ['-tnH', 'state', 'close-wait', `( sport = :${port} )`]).toString().trim().split('\n').filter(Boolean).length;
        console.log(`# api sockets on the server side: ${est} established, ${cw} close-wait`);
        if (est > 40) console.log(execFileSync('ss', ['-tnpi', 'state', 'established', `( sport = :${port} or dport = :${port} )`]).toString().slice(0, 6000));
      }
      const r = await fetch(`${env.d.apiUrl}/v1/disks`, { headers: { authorization: `Bearer ${env.token}` } });
      const text = await r.text();
      assert.equal(r.status, 200, `GET /v1/disks with the token: ${r.status} ${text}`);
      const now = await snapshot(env.d, env.dirs);
      const newlyAccepted = seen.accepted.slice(acceptedAtBase);
      if (newlyAccepted.length === 0) {
        assert.deepEqual(now.disks, base.disks, 'the disk list changed though no request that changes state was accepted');
        assert.deepEqual(now.pools, base.pools, 'the pool list changed though no request that changes state was accepted');
        assert.deepEqual(now.files, base.files, 'files changed though no request that changes state was accepted');
      } else {
        console.log(`# fuzz api: ${newlyAccepted.length} accepted requests that may change state:\n#   ${newlyAccepted.join('\n#   ')}`);
      }
      base = now;
      acceptedAtBase = seen.accepted.length;
      watch();
    };
    const stats = await runCases(cfg, { concurrency: 4, batch: 200, name: 'api', caseMs: 60_000 }, (rng, _i, trace) => fuzzCase(env, rng, trace, seen), check);
    console.log(`# fuzz api: peak RSS ${peakRssMiB(watch)} MiB; answers: ${[...seen.codes].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k} ×${n}`).join(', ')}`);
    assert.ok(stats.cases > 0);
    assert.deepEqual(stats.problems, [], stats.problems.join('\n\n'));
  });
});
