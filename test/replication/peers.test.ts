// Sites and peers between real ferryd processes: pairing with a one-time token through
// the CLI (list and show on both sides, show's live check), every refused pairing (reused,
// wrong, expired token, wrong fingerprint part, pairing with itself) leaving both sites
// unchanged, the replication port refusing unknown certificates, garbage, plain TCP and
// silent clients without harm, peer removal seen from the other side, and API validation.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { startFerryd, tmpDir, type Ferryd, type RunResult } from '../harness.js';
import { assertError, assertSchema, assertUnchanged, cleanup, closedPort, snapshot, waitFor } from '../api/helpers.js';
import { PeerDetailsSchema, PeerSchema, SiteSchema, TokenSchema } from '../../src/api/peer-routes.js';
import { encodeFrame, FrameReader, FrameType } from '../../src/replication/frame.js';

const hostPort = (a: string): { host: string; port: number } => {
  const i = a.lastIndexOf(':');
  return { host: a.slice(0, i), port: Number(a.slice(i + 1)) };
};

describe('sites, peers and pairing', () => {
  let a: Ferryd; // pairs with b and dials it
  let b: Ferryd; // issues tokens
  let c: Ferryd; // a third site whose attempts are refused
  const sites: Record<string, any> = {};

  before(async () => {
    [a, b, c] = await Promise.all([startFerryd({ args: ['--site', 'alpha'] }), startFerryd(), startFerryd({ args: ['--site', 'charlie'] })]);
    for (const [k, d] of Object.entries({ a, b, c })) {
      const r = await d.api('GET', '/v1/site');
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assertSchema(SiteSchema, r.body, 'GET /v1/site');
      sites[k] = r.body;
    }
  });
  after(async () => {
    await Promise.all([cleanup(a), cleanup(b), cleanup(c)]);
  });

  async function cli(d: Ferryd, args: string[]): Promise<RunResult> {
    return d.cli(args, { timeoutMs: 60_000 });
  }
  async function ok(d: Ferryd, args: string[]): Promise<string> {
    const r = await cli(d, args);
    assert.equal(r.code, 0, `ferry ${args.join(' ')} → ${r.code}\n${r.stderr}`);
    assert.equal(r.stderr, '');
    return r.stdout;
  }
  async function refused(d: Ferryd, args: string[], code: string, pattern?: RegExp): Promise<void> {
    const r = await cli(d, [...args, '--json']);
    assert.equal(r.code, 1, `ferry ${args.join(' ')} → ${r.code}\n${r.stdout}${r.stderr}`);
    const e = JSON.parse(r.stderr).error;
    assert.equal(e.code, code, r.stderr);
    if (pattern) assert.match(e.message, pattern);
  }
  async function token(d: Ferryd, ttl?: string): Promise<string> {
    const t = JSON.parse(await ok(d, ['peer', 'token', '--json', ...(ttl ? ['--ttl', ttl] : [])]));
    assertSchema(TokenSchema, t, 'peer token --json');
    return t.token;
  }
  const peers = async (d: Ferryd): Promise<any[]> => JSON.parse(await ok(d, ['peer', 'list', '--json']));
  /** Both sites' peers and files, which a refused pairing must leave alone. */
  const state = async (): Promise<unknown> => ({ b: await peers(b), c: await peers(c), bs: await snapshot(b), cs: await snapshot(c) });
  async function assertSame(before: any, what: string): Promise<void> {
    assert.deepEqual(await peers(b), before.b, `${what}: peers of the issuing site changed`);
    assert.deepEqual(await peers(c), before.c, `${what}: peers of the dialling site changed`);
    await assertUnchanged(b, before.bs, what);
    await assertUnchanged(c, before.cs, what);
  }

  test('each site has a persistent identity: site id, name, certificate (key 0600, directory 0700)', async () => {
    assert.equal(sites.a.name, 'alpha');
    assert.match(sites.b.siteId, /^[0-9a-f]{16}$/);
    assert.equal(sites.b.name, `site-${sites.b.siteId.slice(0, 8)}`);
    assert.equal(sites.b.replication, b.replAddress);
    assert.match(b.stdout, new RegExp(`replication listening on ${b.replAddress} \\(site ${sites.b.name}\\)`));
    const dir = path.join(b.dataDir, 'repl');
    assert.equal(fs.statSync(dir).mode & 0o777, 0o700);
    assert.equal(fs.statSync(path.join(dir, 'key.pem')).mode & 0o777, 0o600);
    const cert = new crypto.X509Certificate(fs.readFileSync(path.join(dir, 'cert.pem')));
    assert.equal(crypto.createHash('sha256').update(cert.raw).digest('hex'), sites.b.fingerprint);
    assert.equal(cert.subject.trim(), `CN=ferry-${sites.b.siteId}`);
    assert.notEqual(sites.a.fingerprint, sites.b.fingerprint);
  });

  test('pairing through the CLI: token on B, peer add on A; both sides list each other', async () => {
    const out = await ok(b, ['peer', 'token']);
    const t = out.split('\n')[0]!;
    assert.match(t, new RegExp(`^[0-9a-f]{32}\\.${sites.b.fingerprint.slice(0, 16)}$`));
    assert.match(out, /ferry peer add/);
    const added = await ok(a, ['peer', 'add', 'bravo', '--address', b.replAddress, '--token', t]);
    assert.match(added, /^paired with peer bravo at /);

    const onA = await peers(a);
    assert.equal(onA.length, 1);
    assertSchema(PeerSchema, onA[0], 'peer list on A');
    assert.deepEqual({ ...onA[0], createdAt: 0 }, { name: 'bravo', address: b.replAddress, fingerprint: sites.b.fingerprint, siteId: sites.b.siteId, createdAt: 0 });
    const onB = await peers(b);
    assert.equal(onB.length, 1);
    assert.deepEqual({ ...onB[0], createdAt: 0 }, { name: 'alpha', address: null, fingerprint: sites.a.fingerprint, siteId: sites.a.siteId, createdAt: 0 });
    assert.match(await ok(a, ['peer', 'list']), /bravo\s+127\.0\.0\.1:\d+/);
    assert.match(b.stderr, /paired with a new peer/);
  });

  test('peer show checks the link live: reachable and authenticated', async () => {
    const s = JSON.parse(await ok(a, ['peer', 'show', 'bravo', '--json']));
    assertSchema(PeerDetailsSchema, s, 'peer show --json');
    assert.equal(s.check.reachable, true, JSON.stringify(s));
    assert.equal(s.check.authenticated, true, JSON.stringify(s));
    assert.equal(typeof s.check.rttMs, 'number');
    assert.equal(s.check.remoteName, sites.b.name);
    assert.equal(s.check.error, null);
    assert.match(await ok(a, ['peer', 'show', 'bravo']), /link:\s+ok: reachable and authenticated/);
    const back = JSON.parse(await ok(b, ['peer', 'show', 'alpha', '--json']));
    assert.equal(back.check, null, 'a peer without an address is never dialled');
    assert.match(await ok(b, ['peer', 'show', 'alpha']), /link:\s+not checked/);
  });

  test('a used token is refused, and nothing is stored on either side', async () => {
    const t = await token(b);
    const other = await startFerryd();
    try {
      await ok(other, ['peer', 'add', 'b', '--address', b.replAddress, '--token', t]);
      const before = await state();
      await refused(c, ['peer', 'add', 'b', '--address', b.replAddress, '--token', t], 'PEER_AUTH_FAILED', /already used/);
      await assertSame(before, 'reused token');
    } finally {
      const name = JSON.parse(await ok(other, ['peer', 'list', '--json']))[0]?.name;
      assert.equal(name, 'b');
      const onB = (await peers(b)).find((p) => p.siteId !== sites.a.siteId);
      if (onB) await ok(b, ['peer', 'remove', onB.name]);
      await cleanup(other);
    }
  });

  test('a wrong secret, a wrong fingerprint part or an expired token is refused; nothing is stored; B logs the attempt', async () => {
    const t = await token(b);
    const [secret, fp] = t.split('.') as [string, string];
    const before = await state();
    const wrongSecret = `${crypto.randomBytes(16).toString('hex')}.${fp}`;
    await refused(c, ['peer', 'add', 'b', '--address', b.replAddress, '--token', wrongSecret], 'PEER_AUTH_FAILED', /not known/);
    await waitFor('B to log the refused pairing', () => /pairing refused/.test(b.stderr), 15_000);
    const wrongFp = `${secret}.${'0'.repeat(16)}`;
    await refused(c, ['peer', 'add', 'b', '--address', b.replAddress, '--token', wrongFp], 'PEER_AUTH_FAILED', /not the site that issued the token/);
    // The real token presented to another site (A) than the one that issued it.
    await refused(c, ['peer', 'add', 'b', '--address', a.replAddress, '--token', t], 'PEER_AUTH_FAILED');
    const short = await token(b, '1s');
    await new Promise((r) => setTimeout(r, 1500));
    await refused(c, ['peer', 'add', 'b', '--address', b.replAddress, '--token', short], 'PEER_AUTH_FAILED', /expired/);
    await assertSame(before, 'refused pairings');
    // The right token still works afterwards (it was not burnt by the failed attempts) — and is then used up.
    await ok(c, ['peer', 'add', 'b', '--address', b.replAddress, '--token', t]);
    assert.deepEqual((await peers(b)).map((p) => p.name).sort(), ['alpha', 'charlie']);
    await ok(c, ['peer', 'remove', 'b']);
    await ok(b, ['peer', 'remove', 'charlie']);
  });

  test('pairing refusals on the dialling side: existing name, site already paired, itself, unreachable', async () => {
    const t = await token(b);
    const before = await state();
    const beforeA = await peers(a);
    await refused(a, ['peer', 'add', 'bravo', '--address', b.replAddress, '--token', t], 'PEER_EXISTS', /named 'bravo'/);
    await refused(a, ['peer', 'add', 'bravo2', '--address', b.replAddress, '--token', t], 'PEER_EXISTS', /already peer 'bravo'/);
    const own = await token(c);
    await refused(c, ['peer', 'add', 'me', '--address', c.replAddress, '--token', own], 'BAD_REQUEST', /itself/);
    await refused(c, ['peer', 'add', 'b', '--address', `127.0.0.1:${await closedPort()}`, '--token', t], 'PEER_UNREACHABLE');
    // The API port speaks HTTP, not TLS: the dial fails cleanly.
    await refused(c, ['peer', 'add', 'b', '--address', new URL(b.apiUrl).host, '--token', t], 'REPL_PROTOCOL');
    await assertSame(before, 'refusals before pairing');
    assert.deepEqual(await peers(a), beforeA);
  });

  function tlsClient(d: Ferryd, creds: { key: string; cert: string }): Promise<{ socket: tls.TLSSocket; reader: FrameReader }> {
    const { host, port } = hostPort(d.replAddress);
    return new Promise((resolve, reject) => {
      const socket = tls.connect({ host, port, ...creds, rejectUnauthorized: false });
      socket.once('error', reject);
      socket.once('secureConnect', () => resolve({ socket, reader: new FrameReader(socket) }));
    });
  }

  /** Resolves when the server closes the connection (fails after 15 s). */
  function closedByServer(s: net.Socket): Promise<void> {
    return new Promise((resolve, reject) => {
      if (s.destroyed) return resolve();
      const t = setTimeout(() => reject(new Error('the server did not close the connection')), 15_000);
      s.on('error', () => undefined);
      s.once('close', () => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  async function assertHealthy(what: string): Promise<void> {
    assert.equal((await b.api('GET', '/v1/health')).status, 200, what);
    const s = JSON.parse(await ok(a, ['peer', 'show', 'bravo', '--json']));
    assert.equal(s.check.authenticated, true, `${what}: ${JSON.stringify(s.check)}`);
  }

  test('a TLS client with an unknown certificate gets ERROR PEER_AUTH_FAILED and is disconnected; B logs it', async () => {
    const dir = tmpDir('ferry-rogue-');
    const key = path.join(dir, 'key.pem');
    const cert = path.join(dir, 'cert.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', '/CN=rogue', '-keyout', key, '-out', cert], { stdio: 'ignore' });
    const before = await state();
    const { socket, reader } = await tlsClient(b, { key: fs.readFileSync(key, 'utf8'), cert: fs.readFileSync(cert, 'utf8') });
    const localPort = socket.localPort; // gone once the socket is closed
    socket.write(encodeFrame(FrameType.HELLO, { site: sites.a.siteId, name: 'alpha', purpose: 'stream' }));
    const f = await reader.next();
    assert.equal(f?.type, FrameType.ERROR);
    assert.equal(f?.meta.code, 'PEER_AUTH_FAILED');
    assert.match(String(f?.meta.message), /no peer with certificate fingerprint/);
    assert.equal(await reader.next(), null, 'the server closes the connection');
    await waitFor('B to log the refusal with the remote address', () => new RegExp(`"remote":"127\\.0\\.0\\.1:${localPort}".*replication connection refused`).test(b.stderr), 15_000);
    // The same unknown certificate trying to pair with a made-up proof.
    const p = await tlsClient(b, { key: fs.readFileSync(key, 'utf8'), cert: fs.readFileSync(cert, 'utf8') });
    p.socket.write(encodeFrame(FrameType.PAIR, { site: 'ab'.repeat(8), name: 'rogue', token: '0'.repeat(16), proof: '0'.repeat(64) }));
    const g = await p.reader.next();
    assert.equal(g?.type, FrameType.ERROR);
    assert.equal(g?.meta.code, 'PEER_AUTH_FAILED');
    await closedByServer(p.socket);
    await assertSame(before, 'unknown certificates');
    await assertHealthy('after unknown certificates');
  });

  test('garbage, plain TCP, bad frames and silent clients are disconnected; the daemon stays healthy', async () => {
    const { host, port } = hostPort(b.replAddress);
    const before = await state();
    const raw = (payload?: Buffer | string): net.Socket => {
      const s = net.connect(port, host);
      s.on('error', () => undefined);
      if (payload !== undefined) s.write(payload);
      return s;
    };
    await Promise.all([
      closedByServer(raw(crypto.randomBytes(4096))),
      closedByServer(raw('GET / HTTP/1.1\r\nHost: x\r\n\r\n')),
      closedByServer(raw(Buffer.alloc(1 << 20))),
    ]);
    // TLS, then garbage or a frame that is neither PAIR nor HELLO.
    const aKey = fs.readFileSync(path.join(a.dataDir, 'repl', 'key.pem'), 'utf8');
    const aCert = fs.readFileSync(path.join(a.dataDir, 'repl', 'cert.pem'), 'utf8');
    const g = await tlsClient(b, { key: aKey, cert: aCert });
    g.socket.write(crypto.randomBytes(100));
    await closedByServer(g.socket);
    const r = await tlsClient(b, { key: aKey, cert: aCert });
    r.socket.write(encodeFrame(FrameType.RECORDS, { disk: 'x' }));
    await closedByServer(r.socket);
    // TLS without a client certificate.
    const anon = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({ host, port, rejectUnauthorized: false }, () => resolve(s));
      s.once('error', reject);
    });
    anon.write(encodeFrame(FrameType.HELLO, { site: sites.a.siteId }));
    const e = await new FrameReader(anon).next();
    assert.equal(e?.meta.code, 'PEER_AUTH_FAILED');
    // A client that connects and says nothing is dropped after 10 s.
    const t0 = Date.now();
    await closedByServer(raw());
    assert.ok(Date.now() - t0 >= 9_000, 'not before the first-frame timeout');
    await assertSame(before, 'garbage on the replication port');
    await assertHealthy('after garbage');
    assert.match(b.stderr, /replication connection refused/);
  });

  test('unauthenticated connections from one address are held to 4, each newcomer dropping the oldest; a peer gets through meanwhile', async () => {
    const { host, port } = hostPort(b.replAddress);
    const idle: net.Socket[] = [];
    for (let i = 0; i < 32; i++) {
      const s = net.connect({ port, host, localAddress: '127.0.0.2' });
      s.on('error', () => undefined);
      s.resume(); // read, so the server's close is seen
      await new Promise((r) => s.once('connect', r));
      idle.push(s);
    }
    await waitFor('all but the newest 4 to be dropped', async () => idle.filter((s) => !s.closed).length <= 4, 15_000);
    assert.equal(JSON.parse(await ok(a, ['peer', 'show', 'bravo', '--json'])).check.authenticated, true, 'the peer gets through while they stay');
    for (const s of idle) s.destroy();
  });

  test('API validation: bad names, addresses, tokens and lifetimes are refused and change nothing', async () => {
    const before = await state();
    const t = await token(b);
    const add = (body: unknown): Promise<{ status: number; body: any }> => c.api('POST', '/v1/peers', body);
    for (const name of ['', '../x', '.hidden', 'a'.repeat(64), 'a b', 'x/y', 'a..b']) {
      assertError(await add({ name, address: b.replAddress, token: t }), 400, 'INVALID_NAME', `name ${JSON.stringify(name)}`);
    }
    assertError(await add({ name: 5, address: b.replAddress, token: t }), 400, 'BAD_REQUEST', 'numeric name');
    for (const address of ['nope', '127.0.0.1', '127.0.0.1:0', '127.0.0.1:70000', ':7401', 'a b:1', '[zz]:1', 'host:port', '']) {
      assertError(await add({ name: 'b', address, token: t }), 400, 'BAD_REQUEST', `address ${JSON.stringify(address)}`);
    }
    for (const tok of ['', 'abc', t.replace('.', ''), `${t}x`, t.split('.')[0]!]) {
      assertError(await add({ name: 'b', address: b.replAddress, token: tok }), 400, 'BAD_REQUEST', `token ${JSON.stringify(tok)}`);
    }
    assertError(await add({ name: 'b', address: b.replAddress }), 400, 'BAD_REQUEST', 'no token');
    assertError(await add({ name: 'b', address: b.replAddress, token: t, extra: 1 }), 400, 'BAD_REQUEST', 'unknown field');
    assertError(await add('not json'), 400, 'BAD_REQUEST', 'not JSON');
    for (const ttl of ['0', '10x', '25h', '-5', '', '1.5m', '10m&x=1']) {
      assertError(await c.api('POST', `/v1/peers/tokens?ttl=${ttl}`), 400, 'BAD_REQUEST', `ttl ${JSON.stringify(ttl)}`);
    }
    const plain = await c.api('POST', '/v1/peers/tokens');
    assert.equal(plain.status, 201, 'no body, no query: the default lifetime');
    assert.ok(Math.abs(Date.parse(plain.body.expiresAt) - Date.now() - 600_000) < 60_000);
    assertError(await c.api('GET', '/v1/peers/nope'), 404, 'PEER_NOT_FOUND', 'show unknown');
    assertError(await c.api('DELETE', '/v1/peers/nope'), 404, 'PEER_NOT_FOUND', 'remove unknown');
    assertError(await c.api('GET', '/v1/peers/..x'), 400, 'INVALID_NAME', 'show bad name');
    await refused(c, ['peer', 'remove', 'nope'], 'PEER_NOT_FOUND');
    const usage = await cli(c, ['peer', 'add', 'b', '--address', b.replAddress]);
    assert.equal(usage.code, 2, usage.stderr);
    await assertSame(before, 'bad API requests');
  });

  test('peer remove: the other side then reports an authentication failure; peers survive a restart', async () => {
    await b.restart();
    assert.equal((await b.api('GET', '/v1/site')).body.fingerprint, sites.b.fingerprint, 'the identity survives a restart');
    assert.deepEqual((await peers(b)).map((p) => p.name), ['alpha']);
    // The replication address changed with the restart (ephemeral port): repair A's view by re-pairing later.
    const removed = JSON.parse(await ok(b, ['peer', 'remove', 'alpha', '--json']));
    assert.equal(removed.name, 'alpha');
    assert.deepEqual(await peers(b), []);
    await ok(a, ['peer', 'remove', 'bravo']);
    await ok(a, ['peer', 'add', 'bravo', '--address', b.replAddress, '--token', await token(b)]);
    assert.equal(JSON.parse(await ok(a, ['peer', 'show', 'bravo', '--json'])).check.authenticated, true);
    await ok(b, ['peer', 'remove', 'alpha']);
    const r = await cli(a, ['peer', 'show', 'bravo', '--json']);
    assert.equal(r.code, 1, 'show exits 1 when the link is not authenticated');
    const s = JSON.parse(r.stdout);
    assert.equal(s.check.reachable, true);
    assert.equal(s.check.authenticated, false);
    assert.equal(s.check.error.code, 'PEER_AUTH_FAILED');
    assert.match(await cli(a, ['peer', 'show', 'bravo']).then((x) => x.stdout), /NOT authenticated: PEER_AUTH_FAILED/);
    await ok(a, ['peer', 'remove', 'bravo']);
    assert.deepEqual(await peers(a), []);
  });
});
