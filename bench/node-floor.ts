// A reference for the benchmark, not part of Ferry: the least an NBD server on Node.js can
// do per request. One connection at a time, requests handled one by one in the order they
// arrive with synchronous file calls (pwrite, pread, fdatasync) and one socket write per
// reply: no validation, no queueing, no staging, no thread pool, and the event loop sleeps
// in epoll between requests as Node's does by default. At queue depth 1 that is the
// shortest path from a request to its reply in this runtime without polling, so the ratio
// of ferryd to it shows what Ferry's own work per request costs and what its polling
// between requests (src/nbd/idle-poller.ts) gains. It serves only the QD1 rows (see
// servers.ts); deeper queues would measure its lack of concurrency, not the runtime.
//
// Usage: node --import tsx bench/node-floor.ts FILE PORT. The handshake is the fixed
// newstyle one of the NBD protocol (doc/proto.md), reduced to what libnbd and fio use:
// OPT_GO / OPT_INFO (NBD_INFO_EXPORT), OPT_EXPORT_NAME, OPT_ABORT; every other option is
// answered NBD_REP_ERR_UNSUP. Commands: READ, WRITE, FLUSH, DISC.
import fs from 'node:fs';
import net from 'node:net';

const [file, portText] = process.argv.slice(2);
if (!file || !portText) throw new Error('usage: node --import tsx bench/node-floor.ts FILE PORT');
const fd = fs.openSync(file, 'r+');
const size = fs.fstatSync(fd).size;

const IHAVEOPT = 0x49484156454f5054n;
const REPLY_MAGIC = 0x3e889045565a9n;
const Opt = { EXPORT_NAME: 1, ABORT: 2, INFO: 6, GO: 7 } as const;
const Rep = { ACK: 1, INFO: 3, ERR_UNSUP: 0x80000001 } as const;
/** HAS_FLAGS | SEND_FLUSH | SEND_FUA. */
const transmissionFlags = 1 | 4 | 8;
const Cmd = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3 } as const;
const EINVAL = 22;

function optionReply(sock: net.Socket, opt: number, type: number, data: Buffer = Buffer.alloc(0)): void {
  const h = Buffer.alloc(20 + data.length);
  h.writeBigUInt64BE(REPLY_MAGIC, 0);
  h.writeUInt32BE(opt, 8);
  h.writeUInt32BE(type, 12);
  h.writeUInt32BE(data.length, 16);
  data.copy(h, 20);
  sock.write(h);
}

function serve(sock: net.Socket): void {
  sock.setNoDelay(true);
  const hello = Buffer.alloc(18);
  hello.write('NBDMAGIC', 0, 'latin1');
  hello.writeBigUInt64BE(IHAVEOPT, 8);
  hello.writeUInt16BE(1 | 2, 16); // FIXED_NEWSTYLE | NO_ZEROES
  sock.write(hello);
  let buf: Buffer = Buffer.alloc(0);
  let phase: 'client-flags' | 'options' | 'transmission' = 'client-flags';
  let noZeroes = false;
  sock.on('data', (chunk: Buffer) => {
    buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
    for (;;) {
      if (phase === 'client-flags') {
        if (buf.length < 4) return;
        noZeroes = (buf.readUInt32BE(0) & 2) !== 0;
        buf = buf.subarray(4);
        phase = 'options';
        continue;
      }
      if (phase === 'options') {
        if (buf.length < 16) return;
        const len = buf.readUInt32BE(12);
        if (buf.length < 16 + len) return;
        const opt = buf.readUInt32BE(8);
        buf = buf.subarray(16 + len);
        if (opt === Opt.GO || opt === Opt.INFO) {
          const info = Buffer.alloc(12);
          info.writeUInt16BE(0, 0); // NBD_INFO_EXPORT
          info.writeBigUInt64BE(BigInt(size), 2);
          info.writeUInt16BE(transmissionFlags, 10);
          optionReply(sock, opt, Rep.INFO, info);
          optionReply(sock, opt, Rep.ACK);
          if (opt === Opt.GO) phase = 'transmission';
        } else if (opt === Opt.EXPORT_NAME) {
          const r = Buffer.alloc(noZeroes ? 10 : 134);
          r.writeBigUInt64BE(BigInt(size), 0);
          r.writeUInt16BE(transmissionFlags, 8);
          sock.write(r);
          phase = 'transmission';
        } else if (opt === Opt.ABORT) {
          optionReply(sock, opt, Rep.ACK);
          sock.end();
          return;
        } else optionReply(sock, opt, Rep.ERR_UNSUP);
        continue;
      }
      if (buf.length < 28) return;
      const type = buf.readUInt16BE(6);
      const offset = Number(buf.readBigUInt64BE(16));
      const length = buf.readUInt32BE(24);
      const need = 28 + (type === Cmd.WRITE ? length : 0);
      if (buf.length < need) return;
      const reply = Buffer.alloc(16 + (type === Cmd.READ ? length : 0));
      reply.writeUInt32BE(0x67446698, 0);
      buf.copy(reply, 8, 8, 16);
      if (offset + length > size) reply.writeUInt32BE(EINVAL, 4);
      else if (type === Cmd.WRITE) fs.writeSync(fd, buf, 28, length, offset);
      else if (type === Cmd.READ) fs.readSync(fd, reply, 16, length, offset);
      else if (type === Cmd.FLUSH) fs.fdatasyncSync(fd);
      else if (type === Cmd.DISC) {
        sock.end();
        return;
      } else reply.writeUInt32BE(EINVAL, 4);
      buf = buf.subarray(need);
      sock.write(reply);
    }
  });
  sock.on('error', () => sock.destroy());
}

net.createServer(serve).listen(Number(portText), '127.0.0.1');
