// Fuzzer of the replication listener (src/replication/repl-listener.ts: mutual TLS, then a
// first frame, then the session of a paired site), seeded and bounded (test/fuzz/fuzz-kit.ts:
// FERRY_FUZZ_SEED, FERRY_FUZZ_SECONDS, FERRY_FUZZ_CASES).
//
// Two real ferryd: site A pairs with site B (A dials B), so B knows A's certificate. The
// fuzzed site is B. Each case opens its own TCP connection to B's replication port and sends:
//  before authentication —
//  - random bytes on plain TCP;
//  - a real TLS ClientHello (captured from node:tls) mutated, truncated, or followed by junk,
//    and a TLS 1.2-only ClientHello;
//  - a TLS session without a client certificate, or with a self-signed certificate B does not
//    know, then random, mutated or well-formed frames (HELLO, PAIR with a random proof, others);
//  after authentication (A's own key and certificate, from A's data directory) —
//  - first frames: HELLO with random purposes and site ids, PAIR, other types, mutated frames;
//  - after HELLO purpose 'mirror' (a replication session): request frames (attach — never one
//    that may create a replica —, write, zero, sync, read, synced, release, unknown ops) with
//    random metadata, RECORDS, ACK, CHUNK and unknown frame types, zstd-flagged garbage,
//    lying lengths (up to the 40 MiB payload bound, not sent), bad CRCs and magics, junk.
// then half-closes and reads until B closes the connection (bounded: a connection B keeps
// after its client left is a finding). An ERROR frame B sends must carry a code and message.
//
// After each batch: both ferryd are alive, B's RSS is under 1 GiB, neither logged an error;
// B's API answers GET /v1/peers (A listed, unchanged) and A's `peer show` of B reports the
// link reachable and authenticated; B's disks, pools and data-directory files are unchanged
// (no request in these cases may change them: an attach that could create a replica is never sent).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { crc32c } from '@node-rs/crc32';
import { Cleanup, waitFor, type Ferryd } from '../harness.js';
import { snapshot, type Snapshot } from '../api/helpers.js';
import { FRAME_MAGIC, FRAME_PAYLOAD_BYTES_MAX, FrameType } from '../../src/replication/frame.js';
import { daemonWatch, exchangeRaw, fuzzConfig, peakRssMiB, runCases, show, type CaseResult, type R } from './fuzz-kit.js';

/**
 * The fuzzer's connections come from another loopback address than site A's (127.0.0.1): the
 * listener's limits are per source address, and the fuzzer plays a stranger, not the peer
 * (FERRY_FUZZ_REPL_SOURCE=127.0.0.1 makes it share the peer's address).
 */
const FUZZ_SOURCE = process.env.FERRY_FUZZ_REPL_SOURCE || '127.0.0.2';

interface Creds {
  key: string;
  cert: string;
}

interface Env {
  a: Ferryd;
  b: Ferryd;
  host: string;
  port: number;
  aSiteId: string;
  bSiteId: string;
  /** A's key and certificate: B knows them (the paired peer). */
  known: Creds;
  /** A self-signed certificate nobody paired with. */
  rogue: Creds;
  clientHello: Buffer;
  clientHello12: Buffer;
}

/** A frame as the wire carries it, with every field under the case's control. */
function frame(type: number, meta: unknown, payload: Buffer = Buffer.alloc(0), o: { flags?: number; metaLen?: number; payloadLen?: number; magic?: number; badCrc?: boolean; rawMeta?: Buffer } = {}): Buffer {
  const metaBuf = o.rawMeta ?? Buffer.from(JSON.stringify(meta) ?? 'null', 'utf8');
  const h = Buffer.alloc(20);
  h.writeUInt32LE(o.magic ?? FRAME_MAGIC, 0);
  h.writeUInt8(type & 0xff, 4);
  h.writeUInt8((o.flags ?? 0) & 0xff, 5);
  h.writeUInt16LE(0, 6);
  h.writeUInt32LE(o.metaLen ?? metaBuf.length, 8);
  h.writeUInt32LE(o.payloadLen ?? payload.length, 12);
  let crc = crc32c(payload, crc32c(metaBuf));
  if (o.badCrc) crc = (crc ^ 1) >>> 0;
  h.writeUInt32LE(crc >>> 0, 16);
  return Buffer.concat([h, metaBuf, payload]);
}

function randomMeta(r: R, depth = 0): unknown {
  return r.weighted<() => unknown>([
    [2, () => null],
    [2, () => r.pick([0, -1, 1, 2 ** 53, 1.5, 1e300, 4096, 65536, -(2 ** 31)])],
    [3, () => r.pick(['', 'x', 'mirror', 'ping', 'stream', 'attach', '../x', 'a'.repeat(r.pick([10, 63, 64, 5000]))])],
    [1, () => r.chance(0.5)],
    [depth < 2 ? 1 : 0, () => Array.from({ length: r.int(5) }, () => randomMeta(r, depth + 1))],
    [depth < 2 ? 2 : 0, () => Object.fromEntries(Array.from({ length: r.int(5) }, () => [r.pick(['id', 'op', 'disk', 'offset', 'length', 'site', 'purpose', 'records', 'firstSeq', 'synced', 'durableSeq', '__proto__', 'x']), randomMeta(r, depth + 1)]))],
  ])();
}

/** A frame after authentication (in a session), mostly well-formed, never one that may create a replica. */
function sessionFrame(r: R, env: Env): { bytes: Buffer; what: string } {
  const id = r.int(1000);
  const disk = r.pick(['fz-rep', 'nope', '../x', '', 'a'.repeat(64)]);
  const offset = r.pick([0, 4096, -1, 2 ** 53, 1.5, 1 << 30, r.int(1 << 22)]);
  const length = r.pick([0, 1, 4096, -1, 32 * 1024 * 1024, 33 * 1024 * 1024, 2 ** 40, r.int(70_000)]);
  const kind = r.weighted<() => { type: number; meta: unknown; payload?: Buffer; flags?: number }>([
    [3, () => ({ type: FrameType.REQUEST, meta: { id, op: 'attach', disk, originDisk: r.pick(['o', '', 5]), size: r.pick([1 << 20, 0, -1, 'x', 2 ** 60]), firstSeq: r.pick([1, 0, -1, 'x']) } })],
    // create:true only with a name the replica host must refuse.
    [1, () => ({ type: FrameType.REQUEST, meta: { id, op: 'attach', create: true, disk: r.pick(['../x', '', 'a/b', 'a'.repeat(64), 5]), originDisk: 'o', size: 1 << 20, firstSeq: 1 } })],
    [4, () => ({ type: FrameType.REQUEST, meta: { id, op: r.pick(['write', 'zero', 'sync', 'read', 'synced', 'release', 'nope', '', 5, null]), disk, offset, length }, payload: r.chance(0.3) ? r.bytes(r.int(8192)) : undefined })],
    [2, () => ({ type: FrameType.RECORDS, meta: { disk, firstSeq: r.pick([1, 0, 2 ** 53, -1, 'x']), records: r.chance(0.7) ? Array.from({ length: r.int(4) }, () => [r.int(4), r.int(3), offset, length, r.int(1e9)]) : randomMeta(r) }, payload: r.bytes(r.int(4096)) })],
    [1, () => ({ type: r.pick([FrameType.ACK, FrameType.CHUNK, FrameType.HELLO, FrameType.PAIR, FrameType.ERROR, FrameType.HELLO_OK, FrameType.RESPONSE, 0, 6, 7, 19, 255]), meta: randomMeta(r), payload: r.bytes(r.int(256)) })],
    // zstd-flagged payload that is no zstd stream (or a truncated one).
    [1, () => ({ type: FrameType.REQUEST, meta: { id, op: 'write', disk, offset: 0, length: 4096 }, payload: r.bytes(r.int(512)), flags: 1 })],
    [1, () => ({ type: FrameType.REQUEST, meta: randomMeta(r), payload: r.bytes(r.int(64)), flags: r.int(256) })],
  ])();
  const lie = r.weighted<() => { metaLen?: number; payloadLen?: number; magic?: number; badCrc?: boolean; rawMeta?: Buffer }>([
    [10, () => ({})],
    [1, () => ({ badCrc: true })],
    [1, () => ({ magic: r.u32() })],
    [1, () => ({ payloadLen: r.pick([FRAME_PAYLOAD_BYTES_MAX, FRAME_PAYLOAD_BYTES_MAX + 1, 0xffffffff, 1 << 20, r.int(1 << 16)]) })],
    [1, () => ({ metaLen: r.pick([64 * 1024, 64 * 1024 + 1, 0xffffffff, 0, r.int(300)]) })],
    [1, () => ({ rawMeta: r.chance(0.5) ? r.bytes(r.int(64)) : Buffer.from(r.pick(['{', '[]', '"x"', '1', '{"id":', 'null', '{"op":"read","__proto__":{"x":1}}'])) })],
  ])();
  let bytes = frame(kind.type, kind.meta, kind.payload, { flags: kind.flags, ...lie });
  let mutated = '';
  if (r.chance(0.05)) {
    bytes = r.mutate(bytes);
    mutated = ' mutated';
  }
  void env;
  return { bytes, what: `frame type ${kind.type} flags ${kind.flags ?? 0} meta ${show(kind.meta, 200)} payload ${kind.payload?.length ?? 0} ${show(lie, 80)}${mutated}` };
}

/** A first frame after TLS: HELLO and PAIR variants, other types, garbage. */
function firstFrame(r: R, env: Env): { bytes: Buffer; what: string; session: boolean } {
  const c = r.weighted<() => { bytes: Buffer; what: string; session: boolean }>([
    [4, () => ({ bytes: frame(FrameType.HELLO, { site: env.aSiteId, name: 'site-a', purpose: 'mirror' }), what: 'HELLO mirror', session: true })],
    [2, () => {
      const meta = { site: r.pick([env.aSiteId, env.bSiteId, 'x', '', undefined, 5]), purpose: r.pick(['ping', 'mirror', 'stream', '', 'x'.repeat(300), undefined, 7]) };
      return { bytes: frame(FrameType.HELLO, meta), what: `HELLO ${show(meta)}`, session: false };
    }],
    [2, () => {
      const meta = { site: r.pick([env.aSiteId, 'x', undefined]), proof: r.pick([r.bytes(16).toString('hex'), '', 5, undefined, 'a'.repeat(200)]), name: r.pick(['x', undefined, '../y']) };
      return { bytes: frame(FrameType.PAIR, meta), what: `PAIR ${show(meta)}`, session: false };
    }],
    [2, () => {
      const f = sessionFrame(r, env);
      return { ...f, session: false };
    }],
    [1, () => {
      const b = r.bytes(r.int(300));
      return { bytes: b, what: `junk ${show(b, 200)}`, session: false };
    }],
    [1, () => {
      // A first frame declaring more than a first frame may hold, or a mutated HELLO.
      const b = r.chance(0.5) ? frame(FrameType.HELLO, { site: env.aSiteId, purpose: 'mirror' }, Buffer.alloc(0), { payloadLen: r.pick([8 * 1024, 40 * 1024 * 1024, 0xffffffff]) }) : r.mutate(frame(FrameType.HELLO, { site: env.aSiteId, purpose: 'mirror' }));
      return { bytes: b, what: `bad HELLO ${show(b, 200)}`, session: false };
    }],
  ])();
  return c;
}

interface Outcome {
  received: Buffer;
  closedByServer: boolean;
  tlsError?: string;
}

/** Plain TCP: sends the bytes, half-closes, reads until the server closes. */
function plain(env: Env, bytes: Buffer, closeMs = 20_000): Promise<Outcome> {
  return exchangeRaw({ host: env.host, port: env.port, localAddress: FUZZ_SOURCE }, bytes, closeMs);
}

/** TLS (optionally with a client certificate): writes each part in order, half-closes, reads until closed. */
function overTls(env: Env, creds: Creds | null, parts: Buffer[], closeMs = 20_000): Promise<Outcome> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: env.host, port: env.port, rejectUnauthorized: false, ...(creds ?? {}), noDelay: true, localAddress: FUZZ_SOURCE } as tls.ConnectionOptions);
    const chunks: Buffer[] = [];
    let timer: NodeJS.Timeout | undefined;
    let tlsError: string | undefined;
    s.on('data', (b: Buffer) => chunks.push(b));
    s.on('error', (e) => (tlsError = e.message));
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ received: Buffer.concat(chunks), closedByServer: true, tlsError });
    });
    s.once('secureConnect', async () => {
      for (const p of parts) {
        if (s.destroyed || !s.writable) break;
        await new Promise<void>((r) => s.write(p, () => r()));
      }
      if (!s.destroyed) s.end();
      timer = setTimeout(() => {
        s.destroy();
        resolve({ received: Buffer.concat(chunks), closedByServer: false, tlsError });
      }, closeMs);
    });
  });
}

/** What B answered over the run (printed at the end). */
const reachedCodes = new Map<string, number>();

/** Frames B sent: each must parse; an ERROR frame must carry a code and a message. */
function checkFrames(buf: Buffer): string[] {
  const problems: string[] = [];
  let at = 0;
  while (at + 20 <= buf.length) {
    if (buf.readUInt32LE(at) !== FRAME_MAGIC) return [`B sent bytes that are no frame at ${at}: ${buf.subarray(at, at + 32).toString('hex')}`];
    const type = buf.readUInt8(at + 4);
    const metaLen = buf.readUInt32LE(at + 8);
    const payloadLen = buf.readUInt32LE(at + 12);
    if (at + 20 + metaLen + payloadLen > buf.length) return problems; // cut by the close
    let meta: any;
    try {
      meta = JSON.parse(buf.subarray(at + 20, at + 20 + metaLen).toString('utf8'));
    } catch {
      problems.push(`B sent a frame (type ${type}) whose metadata is not JSON`);
    }
    if (type === FrameType.ERROR && (typeof meta?.code !== 'string' || typeof meta?.message !== 'string')) problems.push(`ERROR frame without code and message: ${show(meta)}`);
    if (type === FrameType.ERROR && meta?.code === 'INTERNAL') problems.push(`ERROR frame INTERNAL: ${show(meta)}`);
    if (type === FrameType.RESPONSE && meta?.error?.code === 'INTERNAL') problems.push(`RESPONSE with error INTERNAL: ${show(meta)}`);
    // No request of these cases reaches a disk (none can attach): an I/O error is an exception
    // the receiver turned into IO_ERROR (its code for errors without one), i.e. a bug.
    if (type === FrameType.RESPONSE && meta?.error?.code === 'IO_ERROR') problems.push(`RESPONSE with error IO_ERROR where no I/O can happen: ${show(meta)}`);
    if (type === FrameType.RESPONSE || type === FrameType.ERROR) reachedCodes.set(`${type === FrameType.ERROR ? 'ERROR' : 'RESPONSE'} ${meta?.code ?? meta?.error?.code ?? 'ok'}`, (reachedCodes.get(`${type === FrameType.ERROR ? 'ERROR' : 'RESPONSE'} ${meta?.code ?? meta?.error?.code ?? 'ok'}`) ?? 0) + 1);
    else reachedCodes.set(`frame ${type}`, (reachedCodes.get(`frame ${type}`) ?? 0) + 1);
    at += 20 + metaLen + payloadLen;
  }
  return problems;
}

async function fuzzCase(env: Env, r: R, trace: string[]): Promise<CaseResult> {
  const kind = r.weighted<string>([
    [2, 'plain-bytes'],
    [3, 'client-hello'],
    [3, 'tls-no-cert'],
    [3, 'tls-rogue-cert'],
    [3, 'tls-known-first-frame'],
    [6, 'session'],
  ]);
  trace.push(kind);
  const problems: string[] = [];
  let out: Outcome;
  if (kind === 'plain-bytes') {
    const b = r.weighted<() => Buffer>([
      [3, () => r.bytes(r.int(200))],
      [1, () => r.bytes(r.int(70_000))],
      [1, () => frame(FrameType.HELLO, { site: env.aSiteId, purpose: 'mirror' })],
      [1, () => Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')],
    ])();
    trace.push(show(b, 300));
    out = await plain(env, b);
  } else if (kind === 'client-hello') {
    const base = r.chance(0.8) ? env.clientHello : env.clientHello12;
    const b = r.weighted<() => Buffer>([
      [4, () => r.mutate(base)],
      [2, () => base.subarray(0, r.int(base.length))],
      [1, () => Buffer.concat([base, r.bytes(r.int(2000))])],
      [1, () => base],
      [1, () => { const x = Buffer.from(base); x.writeUInt16BE(r.pick([0, 0xffff, 0x4000, base.length]), 3); return x; }],
    ])();
    trace.push(show(b, 400));
    out = await plain(env, b);
  } else if (kind === 'tls-no-cert' || kind === 'tls-rogue-cert') {
    const creds = kind === 'tls-rogue-cert' ? env.rogue : null;
    const parts = Array.from({ length: 1 + r.int(3) }, () => firstFrame(r, env));
    trace.push(...parts.map((p) => p.what));
    out = await overTls(env, creds, parts.map((p) => p.bytes));
  } else if (kind === 'tls-known-first-frame') {
    const f = firstFrame(r, env);
    const parts = [f.bytes];
    trace.push(f.what);
    if (r.chance(0.5)) {
      const more = sessionFrame(r, env);
      parts.push(more.bytes);
      trace.push(more.what);
    }
    out = await overTls(env, env.known, parts);
  } else {
    // A session of the paired site, then frames.
    const hello = frame(FrameType.HELLO, { site: env.aSiteId, name: 'site-a', purpose: 'mirror' });
    const frames = Array.from({ length: 1 + r.int(6) }, () => sessionFrame(r, env));
    trace.push('HELLO mirror', ...frames.map((f) => f.what));
    const junk = r.chance(0.1) ? [r.bytes(r.int(100))] : [];
    out = await overTls(env, env.known, [hello, ...frames.map((f) => f.bytes), ...junk]);
    const first = out.received.length >= 20 ? out.received.readUInt8(4) : -1;
    if (out.received.length >= 20 && first !== FrameType.HELLO_OK) problems.push(`HELLO from the paired site answered with frame type ${first}, not HELLO_OK: ${show(out.received.subarray(0, 200), 300)}`);
  }
  if (!out.closedByServer) problems.push('B kept the connection after the client half-closed');
  if (kind !== 'plain-bytes' && kind !== 'client-hello') problems.push(...checkFrames(out.received));
  return { input: trace.join(' | '), problems };
}

/** The first bytes a TLS client sends: its ClientHello (captured from a real node:tls client). */
async function captureClientHello(opts: tls.ConnectionOptions): Promise<Buffer> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const port = (srv.address() as net.AddressInfo).port;
  const got = new Promise<Buffer>((resolve) => srv.once('connection', (s) => s.once('data', (b: Buffer) => (resolve(b), s.destroy()))));
  const c = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...opts });
  c.on('error', () => undefined);
  const b = await got;
  c.destroy();
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return b;
}

describe('replication listener fuzzer', { timeout: 30 * 60_000 }, () => {
  const cleanup = new Cleanup('ferry-fuzz-repl-');
  let env: Env;

  before(async () => {
    const [a, b] = await Promise.all([cleanup.ferryd({ args: ['--site', 'site-a'] }), cleanup.ferryd({ args: ['--site', 'site-b'] })]);
    const token = await b.api('POST', '/v1/peers/tokens');
    assert.equal(token.status, 201, JSON.stringify(token.body));
    const bSite = (await b.api('GET', '/v1/site')).body;
    const aSite = (await a.api('GET', '/v1/site')).body;
    const add = await a.api('POST', '/v1/peers', { name: 'site-b', address: bSite.replication, token: token.body.token });
    assert.equal(add.status, 201, JSON.stringify(add.body));
    const dir = cleanup.dir('ferry-fuzz-repl-rogue-');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', '/CN=rogue', '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem')], { stdio: 'ignore' });
    const i = (bSite.replication as string).lastIndexOf(':');
    env = {
      a,
      b,
      host: (bSite.replication as string).slice(0, i).replace(/^\[|\]$/g, ''),
      port: Number((bSite.replication as string).slice(i + 1)),
      aSiteId: aSite.siteId,
      bSiteId: bSite.siteId,
      known: { key: fs.readFileSync(path.join(a.dataDir, 'repl', 'key.pem'), 'utf8'), cert: fs.readFileSync(path.join(a.dataDir, 'repl', 'cert.pem'), 'utf8') },
      rogue: { key: fs.readFileSync(path.join(dir, 'key.pem'), 'utf8'), cert: fs.readFileSync(path.join(dir, 'cert.pem'), 'utf8') },
      clientHello: await captureClientHello({}),
      clientHello12: await captureClientHello({ maxVersion: 'TLSv1.2' }),
    };
  });
  after(() => cleanup.run());

  test('garbage, strangers and a paired site sending nonsense change nothing and break nothing', async () => {
    const cfg = fuzzConfig('repl', 20_000);
    const watchB = daemonWatch(env.b);
    const watchA = daemonWatch(env.a);
    const base: Snapshot = await snapshot(env.b);
    const peersB = (await env.b.api('GET', '/v1/peers')).body;
    const slowChecks: string[] = [];
    const check = async (): Promise<void> => {
      watchB();
      watchA();
      const peers = await env.b.api('GET', '/v1/peers');
      assert.equal(peers.status, 200, `B: GET /v1/peers: ${JSON.stringify(peers.body)}`);
      assert.deepEqual(peers.body, peersB, "B's peers are unchanged");
      // The paired site gets through: its live check succeeds (at once, normally; polled, bounded).
      let show: { status: number; body: any } = { status: 0, body: null };
      let tries = 0;
      await waitFor(
        'A to reach and authenticate site B',
        async () => {
          tries++;
          show = await env.a.api('GET', '/v1/peers/site-b');
          return show.status === 200 && show.body.check?.reachable && show.body.check?.authenticated;
        },
        20_000,
      ).catch(() => undefined); // the assertions below say what was seen
      assert.equal(show.status, 200, `A: peer show site-b: ${JSON.stringify(show.body)}`);
      assert.ok(show.body.check?.reachable && show.body.check?.authenticated, `A: peer show site-b reports the link (after ${tries} tries): ${JSON.stringify(show.body.check)}`);
      if (tries > 1) slowChecks.push(`peer show needed ${tries} tries`);
      const now = await snapshot(env.b);
      assert.deepEqual(now.disks, base.disks, "B's disks are unchanged");
      assert.deepEqual(now.pools, base.pools, "B's pools are unchanged");
      assert.deepEqual(now.files, base.files, "B's data directory is unchanged");
      watchB();
      watchA();
    };
    const stats = await runCases(cfg, { concurrency: 3, batch: 100, name: 'repl', caseMs: 60_000 }, (rng, _i, trace) => fuzzCase(env, rng, trace), check);
    console.log(`# fuzz repl: B answered: ${[...reachedCodes].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k} ×${n}`).join(', ')}`);
    console.log(`# fuzz repl: peak RSS of B ${peakRssMiB(watchB)} MiB${slowChecks.length ? `; ${slowChecks.length} checks where A's peer show of B first failed: ${slowChecks.join(', ')}` : ''}`);
    assert.ok(stats.cases > 0);
    assert.deepEqual(stats.problems, [], stats.problems.join('\n\n'));
  });
});
