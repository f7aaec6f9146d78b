// Wire tests of the negotiation phase: a raw TCP client sends every kind of bad or
// unusual option and checks the server's exact answer, and that a refusal either
// leaves the connection usable (option errors) or ends it (protocol violations).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startFerryd, type Ferryd } from '../harness.js';
import {
  CLIENT_FIXED_NEWSTYLE,
  CLIENT_NO_ZEROES,
  Cmd,
  Errno,
  IHAVEOPT,
  InfoType,
  Opt,
  RawNbd,
  ReplyFlagDone,
  ReplyType,
  Rep,
  SIMPLE_REPLY_MAGIC,
  TxFlag,
  encodeOption,
  encodeRequest,
  eventually,
  infoData,
  metaContextData,
  parseExportInfo,
} from './raw-nbd.js';

const DISK = 'hs1';
const DISK_SIZE = 1024 * 1024;

describe('NBD negotiation over the wire', { timeout: 120_000 }, () => {
  let d: Ferryd;
  const open: RawNbd[] = [];
  const connect = async (clientFlags?: number): Promise<RawNbd> => {
    const c = await RawNbd.negotiating(d.nbdHost, d.nbdPort, clientFlags);
    open.push(c);
    return c;
  };
  const raw = async (): Promise<RawNbd> => {
    const c = await RawNbd.connect(d.nbdHost, d.nbdPort);
    open.push(c);
    return c;
  };
  /** The connection still works: LIST answers with our disk. */
  const assertAlive = async (c: RawNbd): Promise<void> => {
    assert.deepEqual(await c.list(), [DISK]);
  };

  before(async () => {
    d = await startFerryd();
    await d.createDisk(DISK, DISK_SIZE);
  });
  after(async () => {
    for (const c of open) c.close();
    await d?.stop();
  });

  test('the greeting is fixed newstyle and offers NO_ZEROES', async () => {
    const c = await raw();
    const flags = await c.readGreeting();
    assert.equal(flags, CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES);
  });

  test('garbage instead of client flags: disconnect', async () => {
    const c = await raw();
    await c.readGreeting();
    await c.write(Buffer.from('GET / HTTP/1.1\r\nHost: ferry\r\n\r\n'));
    const rest = await c.expectDisconnect();
    assert.equal(rest.length, 0, 'nothing is sent before the disconnect');
  });

  test('unknown client flag bits: disconnect', async () => {
    const c = await raw();
    await c.handshake(CLIENT_FIXED_NEWSTYLE | (1 << 7));
    // Even a well-formed option afterwards is not answered.
    await c.sendOption(Opt.LIST);
    const rest = await c.expectDisconnect();
    assert.equal(rest.length, 0);
  });

  test('client flags with the top bit set: disconnect', async () => {
    const c = await raw();
    await c.handshake(0x80000000 | CLIENT_FIXED_NEWSTYLE);
    assert.equal((await c.expectDisconnect()).length, 0);
  });

  test('bad option magic: disconnect', async () => {
    const c = await connect();
    await c.sendOption(Opt.LIST, Buffer.alloc(0), { magic: IHAVEOPT ^ 1n });
    assert.equal((await c.expectDisconnect()).length, 0);
  });

  test('a bad option magic after good options: disconnect, earlier replies intact', async () => {
    const c = await connect();
    await assertAlive(c);
    await c.write(Buffer.concat([encodeOption(Opt.LIST), Buffer.from('NBDMAGIC-but-not-an-option-header')]));
    const rest = await c.expectDisconnect();
    // The LIST sent together with the garbage may or may not have been answered before the hang-up.
    assert.ok(rest.length === 0 || rest.readBigUInt64BE(0) === 0x3e889045565a9n);
  });

  test('option length above 64 KiB: disconnect without waiting for the data', async () => {
    for (const length of [64 * 1024 + 1, 0x7fffffff, 0xffffffff]) {
      const c = await connect();
      // Only the header: a server that tried to read `length` bytes would hang until its negotiation timeout.
      await c.sendOption(Opt.INFO, Buffer.alloc(0), { length });
      assert.equal((await c.expectDisconnect()).length, 0, `length ${length}`);
    }
  });

  test('an option of exactly 64 KiB is read and answered', async () => {
    const c = await connect();
    const r = await c.option(Opt.LIST, Buffer.alloc(64 * 1024));
    assert.equal(r.length, 1);
    assert.equal(r[0]!.type, Rep.ERR_INVALID);
    await assertAlive(c);
  });

  test('unknown option: ERR_UNSUP, its data is skipped and the connection continues', async () => {
    const c = await connect();
    for (const [opt, data] of [
      [4242, Buffer.alloc(0)],
      [0, Buffer.alloc(0)],
      [0xffffffff, Buffer.from('some data the server must skip over')],
      [Opt.STRUCTURED_REPLY + 100, Buffer.alloc(4096, 0xee)],
    ] as const) {
      const r = await c.option(opt, data);
      assert.equal(r.length, 1);
      assert.equal(r[0]!.option, opt);
      assert.equal(r[0]!.type, Rep.ERR_UNSUP);
    }
    await assertAlive(c);
  });

  test('INFO and GO for an unknown export: ERR_UNKNOWN with a message, connection continues', async () => {
    const c = await connect();
    for (const opt of [Opt.INFO, Opt.GO]) {
      const r = await c.option(opt, infoData('no-such-disk'));
      assert.equal(r.length, 1);
      assert.equal(r[0]!.type, Rep.ERR_UNKNOWN);
      assert.ok(r[0]!.data.length > 0, 'the error carries a message');
      assert.match(r[0]!.data.toString('utf8'), /no-such-disk/);
    }
    await assertAlive(c);
  });

  test('INFO and GO for the empty name (default export): ERR_UNKNOWN with a message', async () => {
    const c = await connect();
    for (const opt of [Opt.INFO, Opt.GO]) {
      const r = await c.option(opt, infoData(''));
      assert.equal(r.length, 1);
      assert.equal(r[0]!.type, Rep.ERR_UNKNOWN);
      assert.ok(r[0]!.data.length > 0);
    }
    await assertAlive(c);
  });

  test('INFO whose length does not match its contents: ERR_INVALID, connection continues', async () => {
    const c = await connect();
    const good = infoData(DISK, [InfoType.NAME]);
    const nameLenPastEnd = Buffer.from(good);
    nameLenPastEnd.writeUInt32BE(1000, 0);
    const countTooHigh = Buffer.from(good);
    countTooHigh.writeUInt16BE(5, 4 + DISK.length);
    const cases: Array<[string, Buffer]> = [
      ['empty', Buffer.alloc(0)],
      ['truncated name length', Buffer.from([0, 0])],
      ['name length past the data', nameLenPastEnd],
      ['missing request count', good.subarray(0, 4 + DISK.length)],
      ['request count above the requests sent', countTooHigh],
      ['trailing bytes', Buffer.concat([good, Buffer.from([0, 1, 2])])],
      ['odd trailing byte', Buffer.concat([good, Buffer.from([7])])],
    ];
    for (const [what, data] of cases) {
      for (const opt of [Opt.INFO, Opt.GO]) {
        const r = await c.option(opt, data);
        assert.equal(r.length, 1, what);
        assert.equal(r[0]!.type, Rep.ERR_INVALID, what);
      }
    }
    // The same connection can still ask properly.
    const info = parseExportInfo(await c.option(Opt.INFO, good));
    assert.equal(info.size, BigInt(DISK_SIZE));
    assert.equal(info.infos.get(InfoType.NAME)?.subarray(2).toString('utf8'), DISK);
    const bs = info.infos.get(InfoType.BLOCK_SIZE);
    assert.ok(bs, 'block size constraints are sent');
    assert.equal(bs.readUInt32BE(2), 1);
    assert.equal(bs.readUInt32BE(10), 32 * 1024 * 1024);
  });

  test('LIST with data: ERR_INVALID, connection continues', async () => {
    const c = await connect();
    const r = await c.option(Opt.LIST, Buffer.from('unexpected'));
    assert.equal(r.length, 1);
    assert.equal(r[0]!.type, Rep.ERR_INVALID);
    await assertAlive(c);
  });

  test('EXPORT_NAME for an unknown export: disconnect', async () => {
    const c = await connect();
    await c.sendOption(Opt.EXPORT_NAME, Buffer.from('no-such-disk'));
    assert.equal((await c.expectDisconnect()).length, 0);
  });

  test('EXPORT_NAME with an empty name: disconnect', async () => {
    const c = await connect();
    await c.sendOption(Opt.EXPORT_NAME);
    assert.equal((await c.expectDisconnect()).length, 0);
  });

  test('STARTTLS when TLS is off: ERR_POLICY, connection continues in plain text', async () => {
    const c = await connect();
    const r = await c.option(Opt.STARTTLS);
    assert.equal(r.length, 1);
    assert.equal(r[0]!.type, Rep.ERR_POLICY);
    await assertAlive(c);
  });

  test('STARTTLS with data: ERR_INVALID', async () => {
    const c = await connect();
    const r = await c.option(Opt.STARTTLS, Buffer.from('x'));
    assert.equal(r[0]!.type, Rep.ERR_INVALID);
    await assertAlive(c);
  });

  test('SET_META_CONTEXT and LIST_META_CONTEXT before STRUCTURED_REPLY: ERR_INVALID', async () => {
    const c = await connect();
    for (const opt of [Opt.SET_META_CONTEXT, Opt.LIST_META_CONTEXT]) {
      const r = await c.option(opt, metaContextData(DISK, ['base:allocation']));
      assert.equal(r.length, 1);
      assert.equal(r[0]!.type, Rep.ERR_INVALID);
    }
    await assertAlive(c);
  });

  test('STRUCTURED_REPLY twice: ACK, then ERR_INVALID', async () => {
    const c = await connect();
    const first = await c.option(Opt.STRUCTURED_REPLY);
    assert.deepEqual(
      first.map((r) => r.type),
      [Rep.ACK],
    );
    const second = await c.option(Opt.STRUCTURED_REPLY);
    assert.deepEqual(
      second.map((r) => r.type),
      [Rep.ERR_INVALID],
    );
    const withData = await c.option(Opt.STRUCTURED_REPLY, Buffer.from([1]));
    assert.equal(withData[0]!.type, Rep.ERR_INVALID);
    await assertAlive(c);
  });

  test('LIST_META_CONTEXT with no queries lists base:allocation', async () => {
    const c = await connect();
    await c.option(Opt.STRUCTURED_REPLY);
    const r = await c.option(Opt.LIST_META_CONTEXT, metaContextData(DISK, []));
    assert.deepEqual(
      r.map((x) => x.type),
      [Rep.META_CONTEXT, Rep.ACK],
    );
    assert.equal(r[0]!.data.subarray(4).toString('utf8'), 'base:allocation');
  });

  test('meta context options: malformed data is ERR_INVALID, unknown export is ERR_UNKNOWN', async () => {
    const c = await connect();
    await c.option(Opt.STRUCTURED_REPLY);
    const good = metaContextData(DISK, ['base:allocation']);
    const countTooHigh = Buffer.from(good);
    countTooHigh.writeUInt32BE(2, 4 + DISK.length);
    const tooManyQueries = metaContextData(DISK, Array.from({ length: 129 }, () => 'base:allocation'));
    for (const opt of [Opt.LIST_META_CONTEXT, Opt.SET_META_CONTEXT]) {
      for (const [what, data] of [
        ['empty', Buffer.alloc(0)],
        ['query count above the queries sent', countTooHigh],
        ['trailing bytes', Buffer.concat([good, Buffer.from([0])])],
        ['more than 128 queries', tooManyQueries],
      ] as const) {
        const r = await c.option(opt, data);
        assert.deepEqual(
          r.map((x) => x.type),
          [Rep.ERR_INVALID],
          `${opt} ${what}`,
        );
      }
      const unknown = await c.option(opt, metaContextData('no-such-disk', ['base:allocation']));
      assert.deepEqual(
        unknown.map((x) => x.type),
        [Rep.ERR_UNKNOWN],
      );
    }
    await assertAlive(c);
  });

  test('SET_META_CONTEXT with an unknown namespace selects nothing; BLOCK_STATUS is then refused', async () => {
    const c = await connect();
    await c.option(Opt.STRUCTURED_REPLY);
    const r = await c.option(Opt.SET_META_CONTEXT, metaContextData(DISK, ['nosuch:thing', 'base:nope']));
    assert.deepEqual(
      r.map((x) => x.type),
      [Rep.ACK],
    );
    await c.go(DISK);
    await c.sendRequest({ type: Cmd.BLOCK_STATUS, cookie: 7n, offset: 0, length: 4096 });
    const chunk = await c.readChunk();
    assert.equal(chunk.cookie, 7n);
    assert.equal(chunk.type, ReplyType.ERROR);
    assert.equal(chunk.flags & ReplyFlagDone, ReplyFlagDone);
    assert.equal(chunk.payload.readUInt32BE(0), Errno.EINVAL);
  });

  test('SET_META_CONTEXT for another export than the one chosen does not enable BLOCK_STATUS', async () => {
    await d.createDisk('hs-other', 65536);
    const c = await connect();
    await c.option(Opt.STRUCTURED_REPLY);
    const r = await c.option(Opt.SET_META_CONTEXT, metaContextData('hs-other', ['base:allocation']));
    assert.deepEqual(
      r.map((x) => x.type),
      [Rep.META_CONTEXT, Rep.ACK],
    );
    await c.go(DISK);
    await c.sendRequest({ type: Cmd.BLOCK_STATUS, cookie: 8n, offset: 0, length: 4096 });
    const chunk = await c.readChunk();
    assert.equal(chunk.type, ReplyType.ERROR);
    assert.equal(chunk.payload.readUInt32BE(0), Errno.EINVAL);
    c.close();
    const del = await d.api('DELETE', '/v1/disks/hs-other?purge=true');
    assert.equal(del.status, 200);
  });

  test('SET_META_CONTEXT base:allocation then GO: BLOCK_STATUS answers', async () => {
    const { c } = await RawNbd.attached(d.nbdHost, d.nbdPort, DISK, { baseAllocation: true });
    open.push(c);
    await c.sendRequest({ type: Cmd.BLOCK_STATUS, cookie: 9n, offset: 0, length: DISK_SIZE });
    const chunk = await c.readChunk();
    assert.equal(chunk.cookie, 9n);
    assert.equal(chunk.type, ReplyType.BLOCK_STATUS);
    assert.equal(chunk.flags & ReplyFlagDone, ReplyFlagDone);
    assert.equal(chunk.payload.readUInt32BE(0), 1, 'the context id SET_META_CONTEXT returned');
    assert.ok(chunk.payload.length >= 12 && (chunk.payload.length - 4) % 8 === 0);
  });

  test('ABORT gets an ACK, then the server closes', async () => {
    const c = await connect();
    await c.sendOption(Opt.ABORT);
    const r = await c.readOptionReply();
    assert.equal(r.option, Opt.ABORT);
    assert.equal(r.type, Rep.ACK);
    assert.equal((await c.expectDisconnect()).length, 0);
  });

  test('ABORT with data is still acknowledged', async () => {
    const c = await connect();
    await c.sendOption(Opt.ABORT, Buffer.from('bye'));
    const r = await c.readOptionReply();
    assert.equal(r.type, Rep.ACK);
    await c.expectDisconnect();
  });

  test('EXPORT_NAME with NO_ZEROES: exactly 10 bytes of size and flags', async () => {
    const c = await connect(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES);
    await c.write(Buffer.concat([encodeOption(Opt.EXPORT_NAME, Buffer.from(DISK)), encodeRequest({ type: Cmd.FLUSH, cookie: 0x1234n })]));
    const info = await c.read(10);
    assert.equal(info.readBigUInt64BE(0), BigInt(DISK_SIZE));
    const flags = info.readUInt16BE(8);
    assert.equal(flags & TxFlag.HAS_FLAGS, TxFlag.HAS_FLAGS);
    assert.equal(flags & TxFlag.READ_ONLY, 0);
    // The very next bytes are the reply to the FLUSH: no padding.
    const reply = await c.readSimpleReply();
    assert.equal(reply.magic, SIMPLE_REPLY_MAGIC);
    assert.equal(reply.error, 0);
    assert.equal(reply.cookie, 0x1234n);
  });

  test('EXPORT_NAME without NO_ZEROES: size, flags and 124 zero bytes (134 in all)', async () => {
    const c = await connect(CLIENT_FIXED_NEWSTYLE);
    await c.write(Buffer.concat([encodeOption(Opt.EXPORT_NAME, Buffer.from(DISK)), encodeRequest({ type: Cmd.FLUSH, cookie: 0x4321n })]));
    const info = await c.read(134);
    assert.equal(info.readBigUInt64BE(0), BigInt(DISK_SIZE));
    assert.equal(info.readUInt16BE(8) & TxFlag.HAS_FLAGS, TxFlag.HAS_FLAGS);
    assert.ok(info.subarray(10).equals(Buffer.alloc(124)), 'the padding is zeroes');
    const reply = await c.readSimpleReply();
    assert.equal(reply.magic, SIMPLE_REPLY_MAGIC);
    assert.equal(reply.cookie, 0x4321n);
  });

  test('requests sent in the same segment as GO are served', async () => {
    const c = await connect();
    await c.write(Buffer.concat([encodeOption(Opt.GO, infoData(DISK)), encodeRequest({ type: Cmd.READ, cookie: 1n, offset: 0, length: 512 }), encodeRequest({ type: Cmd.FLUSH, cookie: 2n })]));
    const info = parseExportInfo(await c.readOptionReplies(Opt.GO));
    assert.equal(info.size, BigInt(DISK_SIZE));
    const r1 = await c.readSimpleReply(512);
    const r2 = await c.readSimpleReply();
    const byCookie = new Map([r1, r2].map((r) => [r.cookie, r]));
    assert.equal(byCookie.get(1n)?.error, 0);
    assert.equal(byCookie.get(2n)?.error, 0);
  });

  test('a half-finished handshake followed by a client close leaves the server healthy', async () => {
    const stages: Array<(c: RawNbd) => Promise<void>> = [
      async () => undefined, // connect, never answer the greeting
      async (c) => {
        await c.readGreeting();
        await c.write(Buffer.from([0, 0]));
      }, // half the client flags
      async (c) => {
        await c.handshake();
        await c.write(encodeOption(Opt.LIST).subarray(0, 9));
      }, // half an option header
      async (c) => {
        await c.handshake();
        await c.write(encodeOption(Opt.GO, infoData(DISK)).subarray(0, 20));
      }, // header and part of the data
      async (c) => {
        await c.handshake();
        await c.option(Opt.STRUCTURED_REPLY);
      }, // a complete option, then silence
    ];
    for (const c of open.splice(0)) c.close(); // earlier tests' connections
    for (const stage of stages) {
      for (const how of ['destroy', 'end'] as const) {
        const c = await RawNbd.connect(d.nbdHost, d.nbdPort);
        await stage(c);
        if (how === 'destroy') c.close();
        else await c.end();
      }
    }
    // Every abandoned connection is forgotten, and a new client is served.
    assert.ok(await eventually(async () => (await d.api('GET', '/v1/server')).body.nbdConnections === 0), 'abandoned negotiations are released');
    const { c } = await RawNbd.attached(d.nbdHost, d.nbdPort, DISK);
    assert.equal((await c.readAt(0, 4096)).length, 4096);
    c.close();
    assert.ok(await eventually(async () => (await d.api('GET', '/v1/server')).body.nbdConnections === 0), 'no connection is left behind');
  });
});
