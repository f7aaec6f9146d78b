// A raw NBD client for wire tests: it speaks the protocol byte by byte over a real
// TCP socket and lets a test send anything, well-formed or not (wrong magic, unknown
// options, flags and commands, lengths that lie), then observe exactly what the
// server sends back and whether it hangs up. Every wait is bounded by a timeout.
// Numbers come from doc/proto.md, restated here so a test never trusts the server's
// own constants to check the server.
import fs from 'node:fs';
import net from 'node:net';

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

export const CLIENT_FIXED_NEWSTYLE = 1;
export const CLIENT_NO_ZEROES = 2;

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
} as const;

const ERR = 0x80000000;
export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: ERR + 1,
  ERR_POLICY: ERR + 2,
  ERR_INVALID: ERR + 3,
  ERR_UNKNOWN: ERR + 6,
} as const;

export const InfoType = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

export const TxFlag = { HAS_FLAGS: 1, READ_ONLY: 2, SEND_FLUSH: 4, SEND_FUA: 8, SEND_TRIM: 32, SEND_WRITE_ZEROES: 64, SEND_DF: 128 } as const;

export const Cmd = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const;
export const CmdFlag = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16 } as const;

export const ReplyFlagDone = 1;
export const ReplyType = { NONE: 0, OFFSET_DATA: 1, OFFSET_HOLE: 2, BLOCK_STATUS: 5, ERROR: 32769, ERROR_OFFSET: 32770 } as const;

export const Errno = { OK: 0, EPERM: 1, EIO: 5, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95 } as const;

export const DEFAULT_TIMEOUT_MS = 10_000;

/** The server closed the connection before the bytes a read wanted arrived. */
export class ServerClosed extends Error {
  constructor(
    readonly wanted: number,
    readonly got: number,
  ) {
    super(`server closed the connection (wanted ${wanted} bytes, ${got} were buffered)`);
    this.name = 'ServerClosed';
  }
}

export class ReadTimeout extends Error {
  constructor(what: string, ms: number) {
    super(`timed out after ${ms} ms waiting for ${what}`);
    this.name = 'ReadTimeout';
  }
}

export interface OptionReply {
  magic: bigint;
  option: number;
  type: number;
  data: Buffer;
}

export interface RequestSpec {
  magic?: number;
  flags?: number;
  type: number;
  cookie: bigint;
  offset?: bigint | number;
  length?: number;
  /** Bytes sent after the header; defaults to none. Its length need not match `length`. */
  payload?: Buffer;
}

export interface SimpleReply {
  kind: 'simple';
  magic: number;
  error: number;
  cookie: bigint;
  data: Buffer;
}

export interface StructuredChunk {
  kind: 'structured';
  magic: number;
  flags: number;
  type: number;
  cookie: bigint;
  payload: Buffer;
}

export interface ExportInfo {
  size: bigint;
  flags: number;
  /** Every NBD_REP_INFO payload received, by info type. */
  infos: Map<number, Buffer>;
}

/** Encodes one request header (28 bytes) followed by its payload, if any. */
export function encodeRequest(r: RequestSpec): Buffer {
  const payload = r.payload ?? Buffer.alloc(0);
  const b = Buffer.alloc(28 + payload.length);
  b.writeUInt32BE(r.magic ?? REQUEST_MAGIC, 0);
  b.writeUInt16BE(r.flags ?? 0, 4);
  b.writeUInt16BE(r.type, 6);
  b.writeBigUInt64BE(r.cookie, 8);
  b.writeBigUInt64BE(BigInt(r.offset ?? 0), 16);
  b.writeUInt32BE(r.length ?? payload.length, 24);
  payload.copy(b, 28);
  return b;
}

/** Encodes an option header with the given data (or a lying `length`). */
export function encodeOption(option: number, data: Buffer = Buffer.alloc(0), opts: { magic?: bigint; length?: number } = {}): Buffer {
  const b = Buffer.alloc(16 + data.length);
  b.writeBigUInt64BE(opts.magic ?? IHAVEOPT, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(opts.length ?? data.length, 12);
  data.copy(b, 16);
  return b;
}

/** Data of INFO/GO: export name, then the information requests. */
export function infoData(name: string, requests: number[] = []): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length + 2 + requests.length * 2);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(requests.length, 4 + n.length);
  requests.forEach((r, i) => b.writeUInt16BE(r, 6 + n.length + i * 2));
  return b;
}

/** Data of LIST_META_CONTEXT/SET_META_CONTEXT: export name, then the queries. */
export function metaContextData(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const n = Buffer.from(name, 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt32BE(n.length, 0);
  parts.push(head, n);
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length, 0);
  parts.push(count);
  for (const q of queries) {
    const qb = Buffer.from(q, 'utf8');
    const l = Buffer.alloc(4);
    l.writeUInt32BE(qb.length, 0);
    parts.push(l, qb);
  }
  return Buffer.concat(parts);
}

export class RawNbd {
  readonly socket: net.Socket;
  private chunks: Buffer[] = [];
  private buffered = 0;
  private ended = false;
  private waiter: (() => void) | null = null;
  /** Error the socket reported, if any (ECONNRESET after the server dropped us, typically). */
  socketError: Error | null = null;
  /** Resolves when the socket is fully closed, whoever closed it. */
  readonly closed: Promise<void>;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('data', (b: Buffer) => {
      this.chunks.push(b);
      this.buffered += b.length;
      this.wake();
    });
    socket.on('end', () => {
      this.ended = true;
      this.wake();
    });
    socket.on('close', () => {
      this.ended = true;
      this.wake();
    });
    socket.on('error', (err) => {
      this.socketError = err;
      this.ended = true;
      this.wake();
    });
  }

  static connect(host: string, port: number, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<RawNbd> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host, port, noDelay: true });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new ReadTimeout('connect', timeoutMs));
      }, timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve(new RawNbd(socket));
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
  }

  /** Connects and completes the fixed-newstyle greeting; returns the client ready to send options. */
  static async negotiating(host: string, port: number, clientFlags = CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES): Promise<RawNbd> {
    const c = await RawNbd.connect(host, port);
    await c.handshake(clientFlags);
    return c;
  }

  /** Connects, negotiates structured replies (and base:allocation) as asked, and picks `name` with GO. */
  static async attached(host: string, port: number, name: string, opts: { structured?: boolean; baseAllocation?: boolean } = {}): Promise<{ c: RawNbd; info: ExportInfo }> {
    const c = await RawNbd.negotiating(host, port);
    const info = await c.go(name, opts);
    return { c, info };
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /** Bytes received and not yet read. */
  get pendingBytes(): number {
    return this.buffered;
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.buffered);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.buffered = rest.length;
    return out;
  }

  /** Reads exactly n bytes; rejects with ServerClosed if the connection ends first, ReadTimeout after timeoutMs. */
  async read(n: number, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Buffer> {
    if (n === 0) return Buffer.alloc(0);
    const deadline = Date.now() + timeoutMs;
    while (this.buffered < n) {
      if (this.ended) throw new ServerClosed(n, this.buffered);
      const left = deadline - Date.now();
      if (left <= 0) throw new ReadTimeout(`${n} bytes (${this.buffered} buffered)`, timeoutMs);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.waiter = null;
    }
    return this.take(n);
  }

  /**
   * Waits until the server closes the connection; resolves with every byte received
   * and not yet read. Rejects with ReadTimeout if the connection is still open after timeoutMs.
   */
  async expectDisconnect(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended) {
      const left = deadline - Date.now();
      if (left <= 0) throw new ReadTimeout('the server to close the connection', timeoutMs);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.waiter = null;
    }
    return this.take(this.buffered);
  }

  /** Writes bytes; resolves once they are handed to the kernel (never throws: the server may have hung up). */
  write(buf: Buffer): Promise<void> {
    return new Promise((resolve) => {
      if (this.socket.destroyed || !this.socket.writable) return resolve();
      this.socket.write(buf, () => resolve());
    });
  }

  /** Writes with back-pressure: resolves when the socket can take more, or when it closed. */
  writeFlowing(buf: Buffer): Promise<void> {
    return new Promise((resolve) => {
      if (this.socket.destroyed || !this.socket.writable) return resolve();
      if (this.socket.write(buf)) return resolve();
      const done = (): void => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
  }

  close(): void {
    this.socket.destroy();
  }

  /** Half-closes (FIN) and waits for the socket to close. */
  async end(): Promise<void> {
    this.socket.end();
    await Promise.race([this.closed, new Promise((r) => setTimeout(r, DEFAULT_TIMEOUT_MS))]);
    this.socket.destroy();
  }

  // ---- negotiation ----

  /** Reads the server greeting; returns the handshake flags. */
  async readGreeting(): Promise<number> {
    const g = await this.read(18);
    if (g.readBigUInt64BE(0) !== NBDMAGIC) throw new Error(`bad NBDMAGIC ${g.subarray(0, 8).toString('hex')}`);
    if (g.readBigUInt64BE(8) !== IHAVEOPT) throw new Error(`server is not newstyle: ${g.subarray(8, 16).toString('hex')}`);
    return g.readUInt16BE(16);
  }

  /** Greeting plus client flags. Returns the server's handshake flags. */
  async handshake(clientFlags = CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES): Promise<number> {
    const flags = await this.readGreeting();
    const f = Buffer.alloc(4);
    f.writeUInt32BE(clientFlags >>> 0, 0);
    await this.write(f);
    return flags;
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0), opts: { magic?: bigint; length?: number } = {}): Promise<void> {
    return this.write(encodeOption(option, data, opts));
  }

  async readOptionReply(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<OptionReply> {
    const h = await this.read(20, timeoutMs);
    const magic = h.readBigUInt64BE(0);
    if (magic !== OPTION_REPLY_MAGIC) throw new Error(`bad option reply magic 0x${magic.toString(16)}`);
    const len = h.readUInt32BE(16);
    const data = await this.read(len, timeoutMs);
    return { magic, option: h.readUInt32BE(8), type: h.readUInt32BE(12), data };
  }

  /** Reads replies to one option up to and including its ACK or first error reply. */
  async readOptionReplies(option: number): Promise<OptionReply[]> {
    const out: OptionReply[] = [];
    for (;;) {
      const r = await this.readOptionReply();
      if (r.option !== option) throw new Error(`reply for option ${r.option} while waiting for ${option}`);
      out.push(r);
      if (r.type === Rep.ACK || (r.type & ERR) !== 0) return out;
    }
  }

  /** Sends an option and collects its replies. */
  async option(option: number, data: Buffer = Buffer.alloc(0)): Promise<OptionReply[]> {
    await this.sendOption(option, data);
    return this.readOptionReplies(option);
  }

  async list(): Promise<string[]> {
    const replies = await this.option(Opt.LIST);
    const last = replies[replies.length - 1]!;
    if (last.type !== Rep.ACK) throw new Error(`LIST failed with reply type 0x${last.type.toString(16)}`);
    return replies.filter((r) => r.type === Rep.SERVER).map((r) => r.data.subarray(4, 4 + r.data.readUInt32BE(0)).toString('utf8'));
  }

  /** GO to an export; throws with the error reply if the server refuses. */
  async go(name: string, opts: { structured?: boolean; baseAllocation?: boolean } = {}): Promise<ExportInfo> {
    if (opts.structured || opts.baseAllocation) {
      const r = await this.option(Opt.STRUCTURED_REPLY);
      if (r[0]!.type !== Rep.ACK) throw new Error('STRUCTURED_REPLY refused');
    }
    if (opts.baseAllocation) {
      const r = await this.option(Opt.SET_META_CONTEXT, metaContextData(name, ['base:allocation']));
      if (r[r.length - 1]!.type !== Rep.ACK || r.length !== 2) throw new Error('SET_META_CONTEXT base:allocation refused');
    }
    const replies = await this.option(Opt.GO, infoData(name));
    return parseExportInfo(replies);
  }

  // ---- transmission ----

  sendRequest(r: RequestSpec): Promise<void> {
    return this.write(encodeRequest(r));
  }

  /** Reads one simple reply; `dataLength` bytes of data follow it when error is 0 (a READ's payload). */
  async readSimpleReply(dataLength: number | ((cookie: bigint) => number) = 0, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<SimpleReply> {
    const h = await this.read(16, timeoutMs);
    const magic = h.readUInt32BE(0);
    if (magic !== SIMPLE_REPLY_MAGIC) throw new Error(`expected a simple reply, got magic 0x${magic.toString(16)}`);
    const error = h.readUInt32BE(4);
    const cookie = h.readBigUInt64BE(8);
    const n = typeof dataLength === 'function' ? dataLength(cookie) : dataLength;
    const data = error === 0 && n > 0 ? await this.read(n, timeoutMs) : Buffer.alloc(0);
    return { kind: 'simple', magic, error, cookie, data };
  }

  /** Reads one structured reply chunk. */
  async readChunk(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<StructuredChunk> {
    const h = await this.read(20, timeoutMs);
    const magic = h.readUInt32BE(0);
    if (magic !== STRUCTURED_REPLY_MAGIC) throw new Error(`expected a structured reply, got magic 0x${magic.toString(16)}`);
    const len = h.readUInt32BE(16);
    const payload = await this.read(len, timeoutMs);
    return { kind: 'structured', magic, flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: h.readBigUInt64BE(8), payload };
  }

  /** Reads either kind of reply, telling them apart by magic. */
  async readAnyReply(dataLength: number | ((cookie: bigint) => number) = 0, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<SimpleReply | StructuredChunk> {
    const peek = await this.read(4, timeoutMs);
    this.chunks.unshift(peek);
    this.buffered += 4;
    return peek.readUInt32BE(0) === STRUCTURED_REPLY_MAGIC ? this.readChunk(timeoutMs) : this.readSimpleReply(dataLength, timeoutMs);
  }

  /** Sends a request and reads its simple reply (with `length` bytes of data for a successful READ). */
  async request(r: RequestSpec): Promise<SimpleReply> {
    await this.sendRequest(r);
    const reply = await this.readSimpleReply(r.type === Cmd.READ ? (r.length ?? 0) : 0);
    if (reply.cookie !== r.cookie) throw new Error(`reply cookie ${reply.cookie} for request ${r.cookie}`);
    return reply;
  }

  /** Convenience: a well-formed READ over simple replies; returns its data or throws with the errno. */
  async readAt(offset: number, length: number, cookie = 0xfeedn): Promise<Buffer> {
    const r = await this.request({ type: Cmd.READ, cookie, offset, length });
    if (r.error !== 0) throw new Error(`READ ${offset}+${length} failed with errno ${r.error}`);
    return r.data;
  }

  /** Convenience: a well-formed WRITE over simple replies; returns the errno. */
  async writeAt(offset: number, data: Buffer, cookie = 0xbeefn, flags = 0): Promise<number> {
    const r = await this.request({ type: Cmd.WRITE, cookie, offset, flags, payload: data });
    return r.error;
  }
}

/** Interprets the replies to INFO/GO: the export's size and flags, or throws with the error. */
export function parseExportInfo(replies: OptionReply[]): ExportInfo {
  const last = replies[replies.length - 1]!;
  if (last.type !== Rep.ACK) {
    const err = new Error(`option refused with reply type 0x${last.type.toString(16)}: ${last.data.toString('utf8')}`) as Error & { reply?: OptionReply };
    err.reply = last;
    throw err;
  }
  const infos = new Map<number, Buffer>();
  for (const r of replies) if (r.type === Rep.INFO) infos.set(r.data.readUInt16BE(0), r.data);
  const exp = infos.get(InfoType.EXPORT);
  if (!exp) throw new Error('no NBD_INFO_EXPORT in the replies');
  return { size: exp.readBigUInt64BE(2), flags: exp.readUInt16BE(10), infos };
}

/** Polls `fn` until it returns true or timeoutMs passes; returns the last result. */
export async function eventually(fn: () => Promise<boolean> | boolean, timeoutMs = DEFAULT_TIMEOUT_MS, stepMs = 50): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await fn()) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

/** A recognisable pattern of `length` bytes derived from `seed`. */
export function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

/** The disk's backing file as it is now (page cache included): what the server really wrote. */
export async function backingFile(d: { api: (method: string, url: string) => Promise<{ status: number; body: any }> }, name: string): Promise<Buffer> {
  const r = await d.api('GET', `/v1/disks/${name}`);
  if (r.status !== 200) throw new Error(`GET /v1/disks/${name}: ${r.status} ${JSON.stringify(r.body)}`);
  return fs.promises.readFile(r.body.path as string);
}
