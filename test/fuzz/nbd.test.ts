// Fuzzer of the NBD front end (fixed newstyle negotiation and transmission), seeded and
// bounded (test/fuzz/fuzz-kit.ts: FERRY_FUZZ_SEED, FERRY_FUZZ_SECONDS, FERRY_FUZZ_CASES).
//
// Each case opens its own raw TCP socket (TCP_NODELAY) to a real ferryd and sends one of:
//  - random bytes, with or without reading the greeting first;
//  - a greeting answered by mutated or truncated client flags;
//  - a sequence of options (LIST, INFO, GO, EXPORT_NAME, STRUCTURED_REPLY, STARTTLS,
//    LIST/SET_META_CONTEXT, ABORT, unknown numbers) built well-formed then mutated: lying or
//    huge lengths, truncated or oversized fields, bit flips, random export names;
//  - after a valid negotiation (simple or structured replies, base:allocation or not, on the
//    read-only disk or the writable scratch disk): requests of random types, flags, offsets and
//    lengths (out of range, huge, at the edges), truncated or mismatched payloads, garbage.
// then half-closes its side and reads everything until the server closes the connection
// (bounded: a server that keeps a connection whose client has left is a finding). What the
// server sent is checked: option replies carry the reply magic, transmission replies carry a
// reply magic and the cookie of a request this case sent.
//
// After each batch of cases: ferryd is alive and its RSS is under 1 GiB; it logged no error;
// a good raw client negotiates, writes and reads back on the scratch disk and reads the
// read-only disk whole with its original sha256; the read-only disk's file still has that
// sha256; nbdinfo lists the exports; the API lists the same disks as before.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Cleanup, requireTool, run, type Ferryd } from '../harness.js';
import { CLIENT_FIXED_NEWSTYLE, CLIENT_NO_ZEROES, Cmd, IHAVEOPT, Opt, OPTION_REPLY_MAGIC, RawNbd, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, encodeOption, encodeRequest, infoData, metaContextData, pattern } from '../wire/raw-nbd.js';
import { daemonWatch, fuzzConfig, peakRssMiB, runCases, show, type CaseResult, type R } from './fuzz-kit.js';

const RO = 'fz-ro';
const RW = 'fz-rw';
const SIZE = 4 * 1024 * 1024;
const sha256 = (b: Buffer): string => crypto.createHash('sha256').update(b).digest('hex');

/** Everything the server sends until it closes the connection, after we sent `out` and half-closed. */
function exchange(
  d: Ferryd,
  steps: (s: net.Socket, wait: (n: number) => Promise<Buffer | null>) => Promise<void>,
  closeMs = 15_000,
): Promise<{ received: Buffer; closedByServer: boolean; error?: string }> {
  return new Promise((resolve) => {
    const s = net.connect({ host: d.nbdHost, port: d.nbdPort, noDelay: true });
    const chunks: Buffer[] = [];
    let total = 0;
    let consumed = 0;
    let ended = false;
    let waiter: (() => void) | null = null;
    let timer: NodeJS.Timeout | undefined;
    let err: string | undefined;
    s.on('data', (b: Buffer) => {
      chunks.push(b);
      total += b.length;
      waiter?.();
    });
    s.on('error', (e) => (err = (e as NodeJS.ErrnoException).code ?? e.message));
    s.on('end', () => s.end());
    s.on('close', () => {
      ended = true;
      waiter?.();
      clearTimeout(timer);
      resolve({ received: Buffer.concat(chunks), closedByServer: true, error: err });
    });
    /** Waits until n more bytes arrived (returns them) or the server closed (null). */
    const wait = async (n: number): Promise<Buffer | null> => {
      while (total - consumed < n) {
        if (ended) return null;
        await new Promise<void>((r) => (waiter = r));
        waiter = null;
      }
      const all = Buffer.concat(chunks);
      const out = all.subarray(consumed, consumed + n);
      consumed += n;
      return out;
    };
    s.once('connect', () => {
      steps(s, wait).then(
        () => {
          if (!s.destroyed) s.end();
          timer = setTimeout(() => {
            s.destroy();
            resolve({ received: Buffer.concat(chunks), closedByServer: false, error: err });
          }, closeMs);
        },
        (e: Error) => {
          s.destroy();
          resolve({ received: Buffer.concat(chunks), closedByServer: true, error: `client step failed: ${e.message}` });
        },
      );
    });
  });
}

const write = (s: net.Socket, b: Buffer): Promise<void> =>
  new Promise((resolve) => {
    if (s.destroyed || !s.writable) return resolve();
    s.write(b, () => resolve());
  });

// ---- input builders ----

function exportName(r: R): string {
  return r.weighted<() => string>([
    [5, () => RO],
    [5, () => RW],
    [1, () => ''],
    [1, () => 'x'.repeat(r.pick([63, 64, 255, 256, 4096, 70_000]))],
    [1, () => r.bytes(r.int(40)).toString('latin1')],
    [1, () => `${RW}\u0000`],
    [1, () => '../' + RO],
  ])();
}

/** One option, well-formed or mutated, as bytes. */
function option(r: R): { bytes: Buffer; what: string } {
  const opt = r.weighted<() => { o: number; data: Buffer }>([
    [3, () => ({ o: Opt.LIST, data: r.chance(0.8) ? Buffer.alloc(0) : r.bytes(r.int(16)) })],
    [3, () => ({ o: Opt.INFO, data: infoData(exportName(r), Array.from({ length: r.int(5) }, () => (r.chance(0.7) ? r.int(5) : r.int(0x10000)))) })],
    [3, () => ({ o: Opt.GO, data: infoData(exportName(r), Array.from({ length: r.int(4) }, () => r.int(5))) })],
    [1, () => ({ o: Opt.EXPORT_NAME, data: Buffer.from(exportName(r), 'latin1') })],
    [3, () => ({ o: Opt.STRUCTURED_REPLY, data: r.chance(0.8) ? Buffer.alloc(0) : r.bytes(1 + r.int(8)) })],
    [2, () => ({ o: Opt.STARTTLS, data: r.chance(0.8) ? Buffer.alloc(0) : r.bytes(1 + r.int(8)) })],
    [1, () => ({ o: Opt.ABORT, data: r.chance(0.8) ? Buffer.alloc(0) : r.bytes(r.int(8)) })],
    [2, () => ({ o: Opt.LIST_META_CONTEXT, data: metaContextData(exportName(r), Array.from({ length: r.int(4) }, () => r.pick(['base:allocation', 'base:', '', 'qemu:dirty-bitmap:x', 'x'.repeat(r.int(300))]))) })],
    [2, () => ({ o: Opt.SET_META_CONTEXT, data: metaContextData(exportName(r), Array.from({ length: r.int(4) }, () => r.pick(['base:allocation', 'base:', '', 'nope:x']))) })],
    [2, () => ({ o: r.pick([0, 4, 11, 12, 0x7fffffff, 0x80000000, 0xffffffff, r.u32()]), data: r.bytes(r.int(32)) })],
  ])();
  const lie = r.weighted<() => number | undefined>([
    [6, () => undefined],
    [1, () => opt.data.length + r.range(1, 64)],
    [1, () => Math.max(0, opt.data.length - r.range(1, 8))],
    [1, () => r.edgyU32()],
    [1, () => r.pick([64 * 1024, 64 * 1024 + 1, 0xffffffff, 0x80000000])],
  ])();
  const magic = r.chance(0.05) ? r.u64() : IHAVEOPT;
  let bytes = encodeOption(opt.o, opt.data, { magic, length: lie });
  if (r.chance(0.15)) bytes = r.mutate(bytes);
  return { bytes, what: `opt ${opt.o} len ${lie ?? opt.data.length}${magic !== IHAVEOPT ? ' badmagic' : ''} data ${show(opt.data, 80)} → ${show(bytes, 160)}` };
}

interface Negotiated {
  disk: string;
  structured: boolean;
  baseAllocation: boolean;
}

/** A request header and maybe a payload, from random fields. */
function request(r: R, cookie: bigint): { bytes: Buffer; aligned: boolean; cookie: bigint; type: number; length: number; what: string } {
  const type = r.weighted<() => number>([
    [5, () => Cmd.READ],
    [5, () => Cmd.WRITE],
    [2, () => Cmd.FLUSH],
    [2, () => Cmd.TRIM],
    [1, () => Cmd.CACHE],
    [2, () => Cmd.WRITE_ZEROES],
    [2, () => Cmd.BLOCK_STATUS],
    [1, () => Cmd.DISC],
    [2, () => r.pick([8, 9, 0x7fff, 0xffff, r.int(0x10000)])],
  ])();
  const flags = r.weighted<() => number>([
    [6, () => 0],
    [3, () => 1 << r.int(5)],
    [1, () => r.int(0x10000)],
  ])();
  const offset = r.edgyU64([0n, BigInt(SIZE), BigInt(SIZE - 4096)]);
  const length = r.weighted<() => number>([
    [6, () => r.pick([0, 1, 511, 512, 4096, 65536, 1 << 20])],
    [3, () => r.int(70_000)],
    [3, () => r.edgyU32()],
    [1, () => r.pick([32 * 1024 * 1024, 32 * 1024 * 1024 + 1, 64 * 1024 * 1024, 0xffffffff])],
  ])();
  let payload: Buffer = Buffer.alloc(0);
  let payloadWhat = 'none';
  if (type === Cmd.WRITE || r.chance(0.05)) {
    const plen = r.weighted<() => number>([
      [6, () => (length <= 256 * 1024 ? length : r.int(64 * 1024))],
      [2, () => Math.min(length, 256 * 1024, r.int(length + 1))],
      [1, () => r.int(4096)],
    ])();
    payload = pattern(plen, r.u32());
    payloadWhat = `${plen} bytes`;
  }
  const magic = r.chance(0.03) ? r.u32() : undefined;
  let bytes = encodeRequest({ magic, flags, type, cookie, offset, length, payload });
  let mutated = '';
  if (r.chance(0.05)) {
    bytes = r.mutate(bytes.subarray(0, Math.min(bytes.length, 64)));
    mutated = ` mutated to ${bytes.toString('hex')}`;
  }
  // What the server sees is what the bytes say (a mutation may have changed the cookie).
  const sentCookie = bytes.length >= 16 ? bytes.readBigUInt64BE(8) : cookie;
  const sentType = bytes.length >= 8 ? bytes.readUInt16BE(6) : type;
  const sentLength = bytes.length >= 28 ? bytes.readUInt32BE(24) : length;
  // The server reads the next header right after this request only if the bytes are exactly
  // one request: not mutated, the request magic, and a payload that is a WRITE's and as long as it says.
  const aligned = !mutated && magic === undefined && (type === Cmd.WRITE ? payload.length === length : payload.length === 0);
  return { bytes, aligned, cookie: sentCookie, type: sentType, length: sentLength, what: `cookie ${sentCookie} ` + `cmd ${type} flags 0x${flags.toString(16)} off ${offset} len ${length} payload ${payloadWhat}${magic !== undefined ? ` magic 0x${magic.toString(16)}` : ''}${mutated}` };
}

/** What the run reached: reply kinds and errnos, case kinds (printed at the end). */
const reached = new Map<string, number>();
const count = (k: string): void => void reached.set(k, (reached.get(k) ?? 0) + 1);

/** Checks a transmission reply stream: every reply has a reply magic and a cookie we sent. */
function parseReplies(buf: Buffer, sent: Map<bigint, { type: number; length: number }>, structured: boolean, desynced: boolean): string[] {
  const problems: string[] = [];
  let at = 0;
  while (at < buf.length) {
    if (buf.length - at < 4) return [`a trailing ${buf.length - at} bytes that are no reply: ${buf.subarray(at).toString('hex')}`];
    const magic = buf.readUInt32BE(at);
    if (magic === SIMPLE_REPLY_MAGIC) {
      if (buf.length - at < 16) return problems; // cut by the close: allowed only at the very end
      const error = buf.readUInt32BE(at + 4);
      const cookie = buf.readBigUInt64BE(at + 8);
      const req = sent.get(cookie);
      count(`simple reply errno ${error}`);
      if (!req) return desynced ? problems : [...problems, `simple reply for cookie ${cookie} that was never sent (at byte ${at})`];
      at += 16;
      if (error === 0 && req.type === Cmd.READ) {
        if (structured) problems.push(`simple reply with data to READ ${cookie} after structured replies were negotiated`);
        at += req.length;
      }
    } else if (magic === STRUCTURED_REPLY_MAGIC) {
      if (!structured) problems.push(`structured reply without STRUCTURED_REPLY negotiated (at byte ${at})`);
      if (buf.length - at < 20) return problems;
      const cookie = buf.readBigUInt64BE(at + 8);
      count(`structured chunk type ${buf.readUInt16BE(at + 6)}`);
      if (!sent.has(cookie)) return desynced ? problems : [...problems, `structured reply for cookie ${cookie} that was never sent`];
      at += 20 + buf.readUInt32BE(at + 16);
    } else {
      return [...problems, `bytes that are no reply at byte ${at}: magic 0x${magic.toString(16)}`];
    }
  }
  return problems;
}

/** Checks a negotiation reply stream after the 18-byte greeting: option replies only (EXPORT_NAME's answer ends it). */
function parseOptionReplies(buf: Buffer): string[] {
  let at = 0;
  while (at + 8 <= buf.length) {
    const magic = buf.readBigUInt64BE(at);
    if (magic !== OPTION_REPLY_MAGIC) return []; // EXPORT_NAME's export info or transmission follows: not checked here
    if (buf.length - at < 20) return [];
    at += 20 + buf.readUInt32BE(at + 16);
  }
  return [];
}

async function negotiate(s: net.Socket, wait: (n: number) => Promise<Buffer | null>, r: R): Promise<Negotiated | null> {
  const g = await wait(18);
  if (!g) return null;
  await write(s, Buffer.from([0, 0, 0, CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES]));
  const disk = r.chance(0.5) ? RO : RW;
  const structured = r.chance(0.5);
  const baseAllocation = structured && r.chance(0.5);
  const readReplies = async (): Promise<number | null> => {
    for (;;) {
      const h = await wait(20);
      if (!h) return null;
      const data = await wait(h.readUInt32BE(16));
      if (!data) return null;
      const type = h.readUInt32BE(12);
      if (type === 1 || type >= 0x80000000) return type;
    }
  };
  if (structured) {
    await write(s, encodeOption(Opt.STRUCTURED_REPLY));
    if ((await readReplies()) !== 1) throw new Error('STRUCTURED_REPLY refused');
  }
  if (baseAllocation) {
    await write(s, encodeOption(Opt.SET_META_CONTEXT, metaContextData(disk, ['base:allocation'])));
    if ((await readReplies()) !== 1) throw new Error('SET_META_CONTEXT refused');
  }
  await write(s, encodeOption(Opt.GO, infoData(disk)));
  if ((await readReplies()) !== 1) throw new Error(`GO ${disk} refused`);
  return { disk, structured, baseAllocation };
}

async function fuzzCase(d: Ferryd, r: R, what: string[]): Promise<CaseResult> {
  const kind = r.weighted<string>([
    [1, 'random-bytes'],
    [1, 'client-flags'],
    [4, 'options'],
    [6, 'transmission'],
  ]);
  what.push(kind);
  count(`case ${kind}`);
  const problems: string[] = [];
  if (kind === 'random-bytes') {
    const readGreeting = r.chance(0.5);
    const bytes = r.bytes(r.weighted([[5, r.int(64)], [2, r.int(4096)], [1, r.int(200_000)]] as const));
    what.push(`readGreeting=${readGreeting}`, show(bytes, 200));
    const res = await exchange(d, async (s, wait) => {
      if (readGreeting && !(await wait(18))) return;
      await write(s, bytes);
    });
    if (!res.closedByServer) problems.push('the server kept the connection after the client half-closed');
    return { input: what.join(' '), problems };
  }
  if (kind === 'client-flags') {
    const flags = r.weighted<() => Buffer>([
      [2, () => r.bytes(r.int(4))],
      [2, () => { const b = Buffer.alloc(4); b.writeUInt32BE(r.edgyU32()); return b; }],
      [1, () => Buffer.from([0, 0, 0, r.int(4)])],
    ])();
    const then = r.chance(0.5) ? option(r).bytes : Buffer.alloc(0);
    what.push(`flags ${flags.toString('hex')} then ${show(then, 100)}`);
    const res = await exchange(d, async (s, wait) => {
      if (!(await wait(18))) return;
      await write(s, flags);
      if (then.length) await write(s, then);
    });
    if (!res.closedByServer) problems.push('the server kept the connection after the client half-closed');
    return { input: what.join(' '), problems };
  }
  if (kind === 'options') {
    const clientFlags = r.chance(0.9) ? CLIENT_FIXED_NEWSTYLE | (r.chance(0.8) ? CLIENT_NO_ZEROES : 0) : r.int(4);
    const opts = Array.from({ length: 1 + r.int(6) }, () => option(r));
    const junk = r.chance(0.1) ? r.bytes(r.int(100)) : Buffer.alloc(0);
    const waitReplies = r.chance(0.5); // one at a time, or everything pipelined
    what.push(`clientFlags ${clientFlags} ${waitReplies ? 'stepwise' : 'pipelined'}`, ...opts.map((o) => o.what), junk.length ? `junk ${junk.toString('hex')}` : '');
    const res = await exchange(d, async (s, wait) => {
      if (!(await wait(18))) return;
      await write(s, Buffer.from([0, 0, 0, clientFlags]));
      let inSync = true; // every option so far was complete: the server is at an option boundary
      for (const o of opts) {
        await write(s, o.bytes);
        // Read a reply header when stepping: the next option goes after the server answered.
        // Only an option whose bytes are complete can be answered.
        const complete = o.bytes.length >= 16 && o.bytes.readBigUInt64BE(0) === IHAVEOPT && o.bytes.readUInt32BE(12) === o.bytes.length - 16;
        // EXPORT_NAME's answer is no option reply (and the server then awaits requests): stop stepping.
        inSync &&= complete && o.bytes.readUInt32BE(8) !== Opt.EXPORT_NAME;
        if (waitReplies && inSync && !(await wait(20))) return;
      }
      if (junk.length) await write(s, junk);
    });
    if (!res.closedByServer) problems.push('the server kept the connection after the client half-closed');
    if (res.received.length >= 18) problems.push(...parseOptionReplies(res.received.subarray(18)));
    return { input: what.join(' | '), problems };
  }
  // transmission
  let neg: Negotiated | null = null;
  const sent = new Map<bigint, { type: number; length: number }>();
  const reqs = Array.from({ length: 1 + r.int(10) }, (_, i) => {
    const cookie = r.chance(0.1) ? r.u64() : BigInt(i + 1);
    return request(r, cookie);
  });
  const junk = r.chance(0.1) ? r.bytes(r.int(200)) : Buffer.alloc(0);
  const disc = r.chance(0.2);
  let negBytes = 0;
  let desynced = false;
  const res = await exchange(d, async (s, wait) => {
    neg = await negotiate(s, wait, r);
    if (!neg) throw new Error('the server closed during a valid negotiation');
    what.push(`disk ${neg.disk} structured=${neg.structured} baseAllocation=${neg.baseAllocation}`);
    let aligned = true;
    for (const q of reqs) {
      // After bytes that are not exactly one request, the server's idea of the next header is not ours.
      // A header shorter than 28 bytes is completed by the next request's bytes: unknown to us.
      if (aligned && q.bytes.length >= 28) sent.set(q.cookie, { type: q.type, length: q.length });
      aligned &&= q.aligned;
      if (!aligned) desynced = true;
      what.push(q.what);
      await write(s, q.bytes);
    }
    if (junk.length) {
      what.push(`junk ${junk.toString('hex')}`);
      await write(s, junk);
    }
    if (disc) {
      what.push('DISC');
      await write(s, encodeRequest({ type: Cmd.DISC, cookie: 0xd15cn }));
    }
  });
  const rendered = what.join(' | ');
  if (res.error?.startsWith('client step failed')) return { input: rendered, problems: [res.error] };
  if (!res.closedByServer) problems.push('the server kept the connection after the client half-closed');
  // Skip the greeting and the negotiation's replies: the first transmission reply is the
  // first simple or structured magic after the GO's ACK. Re-parse the option replies to find it.
  let at = 18;
  const buf = res.received;
  for (;;) {
    if (buf.length < at + 20 || buf.readBigUInt64BE(at) !== OPTION_REPLY_MAGIC) break;
    at += 20 + buf.readUInt32BE(at + 16);
  }
  negBytes = at;
  if (process.env.FERRY_FUZZ_DEBUG) console.log(`# received after negotiation: ${buf.subarray(negBytes).toString('hex').slice(0, 4000)}`);
  const n = neg as Negotiated | null;
  problems.push(...parseReplies(buf.subarray(negBytes), sent, n?.structured ?? false, desynced));
  return { input: rendered, problems };
}

describe('NBD fuzzer', { timeout: 30 * 60_000 }, () => {
  const cleanup = new Cleanup('ferry-fuzz-nbd-');
  let d: Ferryd;
  let roFile: string;
  let roContent: Buffer;
  let roSha: string;
  let diskNames: string[];

  before(async () => {
    d = await cleanup.ferryd();
    await d.createDisk(RW, SIZE);
    roFile = path.join(cleanup.dir('ferry-fuzz-nbd-ro-'), 'ro.img');
    roContent = pattern(SIZE, 12345);
    fs.writeFileSync(roFile, roContent);
    roSha = sha256(roContent);
    const a = await d.api('POST', '/v1/disks/adopt', { name: RO, path: roFile, readOnly: true });
    assert.equal(a.status, 201, JSON.stringify(a.body));
    diskNames = ((await d.api('GET', '/v1/disks')).body as Array<{ name: string }>).map((x) => x.name).sort();
  });
  after(() => cleanup.run());

  test('mutated negotiations and requests change nothing they may not and break nothing', async () => {
    const cfg = fuzzConfig('nbd', 10_000);
    const nbdinfo = requireTool('nbdinfo');
    const watch = daemonWatch(d);
    let checks = 0;
    const check = async (): Promise<void> => {
      watch();
      checks++;
      // A good client: write then read back on the scratch disk, read the read-only disk whole.
      const { c: rw } = await RawNbd.attached(d.nbdHost, d.nbdPort, RW);
      try {
        const data = pattern(64 * 1024, checks);
        const off = (checks % 60) * 64 * 1024;
        assert.equal(await rw.writeAt(off, data), 0, 'a good WRITE on the scratch disk succeeds');
        assert.ok((await rw.readAt(off, data.length)).equals(data), 'a good READ returns what was written');
      } finally {
        await rw.end();
      }
      const { c: ro, info } = await RawNbd.attached(d.nbdHost, d.nbdPort, RO);
      try {
        assert.equal(info.size, BigInt(SIZE));
        const parts: Buffer[] = [];
        for (let off = 0; off < SIZE; off += 1 << 20) parts.push(await ro.readAt(off, 1 << 20));
        assert.equal(sha256(Buffer.concat(parts)), roSha, 'the read-only disk reads back unchanged over NBD');
      } finally {
        await ro.end();
      }
      assert.equal(sha256(fs.readFileSync(roFile)), roSha, "the read-only disk's file is unchanged");
      const info2 = await run(nbdinfo, ['--list', '--json', `nbd://${d.nbdHost}:${d.nbdPort}`], { timeoutMs: 30_000 });
      assert.equal(info2.code, 0, `nbdinfo --list: ${info2.stderr}`);
      const listed = (JSON.parse(info2.stdout).exports as Array<{ 'export-name': string }>).map((e) => e['export-name']).sort();
      assert.deepEqual(listed, [RO, RW].sort(), 'nbdinfo lists the two exports');
      const disks = await d.api('GET', '/v1/disks');
      assert.equal(disks.status, 200);
      assert.deepEqual((disks.body as Array<{ name: string }>).map((x) => x.name).sort(), diskNames, 'the API lists the same disks');
      watch();
    };
    const stats = await runCases(cfg, { concurrency: 6, batch: 150, name: 'nbd', caseMs: 40_000 }, (rng, _i, trace) => fuzzCase(d, rng, trace), check);
    console.log(`# fuzz nbd: peak RSS ${peakRssMiB(watch)} MiB, ${checks} checks; reached: ${[...reached].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k} ×${n}`).join(', ')}`);
    assert.ok(stats.cases > 0);
    assert.deepEqual(stats.problems, [], stats.problems.join('\n\n'));
  });
});
