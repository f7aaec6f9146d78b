// Transmission phase of NBD: parses requests as bytes arrive, dispatches them to the
// volume concurrently, and writes each reply as one buffer as soon as its request
// completes (replies may leave out of order; the cookie pairs them; replies completed
// in the same event-loop turn leave together in one writev, see send()).
// Bytes arrive through an Inbound (inbound.ts: one fixed receive buffer, WRITE payloads
// read into reusable buffers of payload-pool.ts, released when their write completes).
// Bounds: requests and payload bytes in flight per connection (the payload being received
// included), and bytes queued for the client to read; past either, reading stops, and the
// unparsed bytes held are at most the receive buffer, so a client can never make the
// server buffer without limit. The bytes held for all connections together are bounded
// too: each request is admitted by queued-bytes.ts first, else the connection parses no
// more until bytes drain. Every request is validated (magic, command, flags,
// range, length) before it touches the volume; a request that fails validation gets
// an NBD error and changes nothing. A bad magic means the stream is lost: disconnect.
import type { Duplex } from 'node:stream';
import { ERRORS, FerryError, nbdErrnoOf, type ErrorCode } from '../errors.js';
import {
  BASE_ALLOCATION_ID,
  Cmd,
  CmdFlag,
  HEADER_REQUEST_BYTES,
  Limits,
  REQUEST_MAGIC,
  ReplyFlag,
  ReplyType,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
} from './protocol.js';
import type { Volume } from '../volume/volume.js';
import { Inbound } from './inbound.js';
import { acquirePayload, releasePayload } from './payload-pool.js';
import type { IdlePoller } from './idle-poller.js';
import type { QueuedAccount, QueuedBytes } from './queued-bytes.js';
import { allowedFlags, parseRequestHeader, requestCost, type Request } from './request-header.js';

export interface TransmissionOptions {
  volume: Volume;
  structuredReplies: boolean;
  baseAllocation: boolean;
  /** The server's poller, told when requests start and finish (idle-poller.ts). */
  poller: IdlePoller;
  /** The server's bound on bytes queued for all clients together (queued-bytes.ts). */
  queued: QueuedBytes;
  log: (msg: string, extra?: Record<string, unknown>) => void;
}

export class Transmission {
  private readonly stream: Duplex;
  readonly volume: Volume;
  private readonly structured: boolean;
  private readonly baseAllocation: boolean;
  private readonly log: TransmissionOptions['log'];
  private readonly poller: IdlePoller;
  private readonly received: Inbound;
  /** This connection's share of the server's queued bytes. */
  private readonly account: QueuedAccount;
  /** The WRITE whose payload is being received (into a buffer of payload-pool.ts). */
  private header: Request | null = null;
  private drainBytes = 0;
  /** The oversized WRITE whose payload is being drained; refused once the payload is read. */
  private drainedWrite: Request | null = null;
  private inflight = 0;
  private inflightBytes = 0;
  /** Payload bytes of the WRITE being received: counted against the in-flight bound too. */
  private receivingBytes = 0;
  /** Set by doWrite(): the volume has the payload and doWrite() releases it (see dispatch()). */
  private payloadTaken = false;
  private paused = false;
  private corked = false;
  /** Inside parse(): completions that happen synchronously must not re-enter it. */
  private parsing = false;
  /** The stream is corked for replies sent during this parse; uncorked when it ends. */
  private parseCorked = false;
  private stopping = false;
  private closed = false;
  private readonly release: () => void;
  private readonly idleWaiters: Array<() => void> = [];
  readonly done: Promise<void>;
  private resolveDone!: () => void;

  constructor(stream: Duplex, pending: Buffer, opts: TransmissionOptions) {
    this.stream = stream;
    this.volume = opts.volume;
    this.structured = opts.structuredReplies;
    this.baseAllocation = opts.baseAllocation;
    this.log = opts.log;
    this.poller = opts.poller;
    this.release = this.volume.attach();
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
    this.received = new Inbound(stream, () => this.onData());
    this.account = opts.queued.account(() => this.updateFlow());
    stream.on('drain', () => this.updateFlow());
    stream.on('error', () => this.onClose());
    stream.on('close', () => this.onClose());
    stream.on('end', () => this.onClose());
    this.received.start(pending);
  }

  /** Stops taking requests, lets in-flight ones finish and reply, then closes the connection. */
  async shutdown(): Promise<void> {
    this.stopping = true;
    this.received.pause();
    await this.idle();
    await this.endAfterFlush();
  }

  /**
   * Ends the connection once every reply already written has reached the kernel
   * (end() then destroy() at once would drop replies still queued), bounded for
   * clients that stop reading.
   */
  private endAfterFlush(): Promise<void> {
    return new Promise((resolve) => {
      const finish = (): void => {
        clearTimeout(timer);
        this.onClose();
        resolve();
      };
      const timer = setTimeout(finish, Limits.closeFlushMsMax);
      timer.unref();
      if (this.closed || this.stream.destroyed) return finish();
      this.stream.end(finish);
    });
  }

  private idle(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.received.stop();
    this.account.close();
    void this.idle().then(() => {
      this.release();
      this.resolveDone();
    });
    if (!this.stream.destroyed) this.stream.destroy();
  }

  private protocolError(reason: string): void {
    this.log('client protocol violation, disconnecting', { reason, disk: this.volume.name });
    this.stopping = true;
    this.received.pause();
    void this.idle().then(() => this.onClose());
  }

  /** Bytes arrived (called by the Inbound, possibly while it copies a chunk in pieces). */
  private onData(): void {
    if (this.closed || this.stopping) return;
    this.parse();
    this.updateFlow();
  }

  private parse(): void {
    if (this.parsing) return;
    this.parsing = true;
    try {
      this.parseRequests();
    } finally {
      this.parsing = false;
      if (this.parseCorked) {
        this.parseCorked = false;
        this.stream.uncork();
      }
    }
  }

  private parseRequests(): void {
    while (!this.stopping) {
      if (this.drainBytes > 0) {
        const n = Math.min(this.drainBytes, this.received.length);
        if (n === 0) return;
        this.received.skip(n);
        this.drainBytes -= n;
        if (this.drainBytes > 0) return;
        // Refuse only now: clients (libnbd) match a reply to a request they have finished
        // sending, and a reply arriving mid-payload kills their connection.
        const refused = this.drainedWrite!;
        this.drainedWrite = null;
        this.refuse(refused, 'BAD_REQUEST', `write of ${refused.length} bytes exceeds the maximum payload ${Limits.payloadBytesMax}`);
        continue;
      }
      if (this.header !== null) {
        const payload = this.received.fillPayload();
        if (payload === null) return;
        const req = this.header;
        this.header = null;
        this.receivingBytes = 0;
        this.dispatch(req, payload);
        continue;
      }
      {
        if (this.received.length < HEADER_REQUEST_BYTES) return;
        // One segment can hold thousands of headers (each READ up to 32 MiB): start no more
        // than the in-flight bounds allow; updateFlow() resumes parsing as requests complete.
        if (this.busy()) return;
        // Past the bound on bytes queued for all clients, the heaviest connections wait (queued-bytes.ts).
        if (!this.account.admit(this.queuedBytes(), requestCost(this.received.peek(HEADER_REQUEST_BYTES)))) return;
        const h = this.received.take(HEADER_REQUEST_BYTES);
        if (h.readUInt32BE(0) !== REQUEST_MAGIC) {
          this.protocolError(`bad request magic 0x${h.readUInt32BE(0).toString(16)}`);
          return;
        }
        const req = parseRequestHeader(h);
        if (req.type === Cmd.WRITE) {
          if (req.length > Limits.payloadBytesMax) {
            if (req.length > Limits.drainBytesMax) {
              this.protocolError(`write payload of ${req.length} bytes`);
              return;
            }
            // Keep the stream in step: discard the payload, then refuse the request.
            this.drainBytes = req.length;
            this.drainedWrite = req;
            continue;
          }
          if (req.length === 0) {
            this.dispatch(req, Buffer.alloc(0));
            continue;
          }
          this.header = req;
          this.receivingBytes = req.length;
          this.received.startPayload(acquirePayload(req.length));
        } else {
          this.dispatch(req, null);
        }
      }
    }
  }

  /** In-flight requests, their payload bytes or unsent replies are at their bound: start no new request. */
  private busy(): boolean {
    return (
      this.inflight >= Limits.inflightRequestsMax ||
      this.inflightBytes + this.receivingBytes >= Limits.inflightBytesMax ||
      this.stream.writableLength >= Limits.inflightBytesMax
    );
  }

  /** Bytes this connection holds for its client: requests' data in flight, the payload being received, unsent replies. */
  private queuedBytes(): number {
    return this.inflightBytes + this.receivingBytes + this.stream.writableLength;
  }

  private updateFlow(): void {
    if (this.closed || this.stopping) return;
    this.account.set(this.queuedBytes());
    if (this.received.length > 0 && !this.busy()) this.parse();
    if (this.closed || this.stopping) return;
    // Reading goes on while a payload is being received (it is already counted); otherwise
    // it stops at the connection's own bounds, and the unparsed bytes it may still hold are
    // bounded by the Inbound's fixed receive buffer. Waiting for the total's bound, a
    // connection parses nothing but still reads into that buffer (until it is full), so a
    // client that leaves is noticed and its place in the queue freed.
    const overloaded = this.header === null && this.busy();
    if (overloaded && !this.paused) {
      this.paused = true;
      this.received.pause();
    } else if (!overloaded) {
      this.paused = false;
      this.received.resume();
    }
    this.account.setPaused(this.paused || this.account.waiting);
  }

  /** Starts one request; a WRITE payload (from acquirePayload) goes back to the pool however the request ends. */
  private dispatch(req: Request, payload: Buffer | null): void {
    this.payloadTaken = false;
    this.start(req, payload);
    // Refused before it reached the volume: nothing holds the payload.
    if (payload !== null && payload.length > 0 && !this.payloadTaken) releasePayload(payload);
  }

  private start(req: Request, payload: Buffer | null): void {
    const allowed = allowedFlags[req.type];
    if (allowed === undefined) return this.refuse(req, 'BAD_REQUEST', `unknown command ${req.type}`);
    if (req.flags & ~allowed) return this.refuse(req, 'BAD_REQUEST', `flags 0x${req.flags.toString(16)} not valid for command ${req.type}`);
    if (req.type === Cmd.DISC) {
      this.stopping = true;
      this.received.pause();
      void this.idle().then(() => this.endAfterFlush());
      return;
    }
    const size = this.volume.size;
    const end = req.offset + req.length;
    const inRange = Number.isSafeInteger(end) && end <= size;
    const writes = req.type === Cmd.WRITE || req.type === Cmd.TRIM || req.type === Cmd.WRITE_ZEROES;
    if (writes && this.volume.readOnly) return this.refuse(req, 'READ_ONLY', `disk ${this.volume.name} is read-only`);
    if (!inRange && req.type !== Cmd.FLUSH) {
      // doc/proto.md: ENOSPC for a write past the end, EINVAL for any other request.
      const code = req.type === Cmd.WRITE || req.type === Cmd.WRITE_ZEROES ? 'WRITE_PAST_END' : 'OUT_OF_RANGE';
      return this.refuse(req, code, `range ${req.offset}+${req.length} exceeds disk size ${size}`);
    }
    const fua = (req.flags & CmdFlag.FUA) !== 0;
    const cost = req.type === Cmd.READ || req.type === Cmd.WRITE ? req.length : 0;
    let op: Promise<unknown>;
    switch (req.type) {
      case Cmd.READ: {
        if (req.length > Limits.payloadBytesMax) return this.refuse(req, 'BAD_REQUEST', `read of ${req.length} bytes exceeds the maximum payload`);
        return this.doRead(req);
      }
      case Cmd.WRITE:
        return this.doWrite(req, payload!, fua);
      case Cmd.FLUSH:
        op = this.volume.flush();
        break;
      case Cmd.TRIM:
        op = this.volume.trim(req.offset, req.length, fua);
        break;
      case Cmd.WRITE_ZEROES:
        op = this.volume.zero(req.offset, req.length, (req.flags & CmdFlag.NO_HOLE) === 0, (req.flags & CmdFlag.FAST_ZERO) !== 0, fua);
        break;
      case Cmd.CACHE:
        op = Promise.resolve().then(() => this.volume.prefetch(req.offset, req.length));
        break;
      case Cmd.BLOCK_STATUS:
        if (!this.baseAllocation) return this.refuse(req, 'BAD_REQUEST', 'no metadata context was negotiated');
        if (req.length === 0) return this.refuse(req, 'BAD_REQUEST', 'block status of an empty range');
        return this.track(0, Promise.resolve().then(() => this.doBlockStatus(req)));
      default:
        return this.refuse(req, 'BAD_REQUEST', `unknown command ${req.type}`);
    }
    this.track(
      cost,
      op.then(
        () => this.reply(req, 0),
        (err) => this.replyFailure(req, err),
      ),
    );
  }

  private track(cost: number, op: Promise<void>): void {
    this.started(cost);
    op.catch((err) => this.log('request failed unexpectedly', { err: String(err) })).finally(() => this.finished(cost));
  }

  private started(cost: number): void {
    this.poller.begin();
    this.inflight++;
    this.inflightBytes += cost;
  }

  /** A request has replied (or failed). May run synchronously inside parse(), which then carries on by itself. */
  private finished(cost: number): void {
    this.inflight--;
    this.inflightBytes -= cost;
    if (this.inflight === 0) for (const w of this.idleWaiters.splice(0)) w();
    if (!this.parsing) this.updateFlow();
    this.poller.end();
  }

  /** WRITE: callbacks rather than promises on the hot path (see Volume.writeFrom). */
  private doWrite(req: Request, payload: Buffer, fua: boolean): void {
    this.payloadTaken = true;
    this.started(req.length);
    this.volume.writeFrom(payload, req.length, req.offset, fua, (err) => {
      if (payload.length > 0) releasePayload(payload);
      try {
        if (err) this.replyFailure(req, err);
        else this.reply(req, 0);
      } catch (e) {
        this.log('request failed unexpectedly', { err: String(e) });
      }
      this.finished(req.length);
    });
  }

  /**
   * READ: the reply header and the data share one buffer, read into at the header's end,
   * so the reply leaves in one write with no copy. The read may complete synchronously.
   */
  private doRead(req: Request): void {
    const headerBytes = this.structured ? 28 : 16;
    const out = Buffer.allocUnsafe(headerBytes + req.length);
    this.started(req.length);
    this.volume.readTo(out, headerBytes, req.length, req.offset, (err) => {
      try {
        if (err) this.replyFailure(req, err);
        else this.readReply(req, out);
      } catch (e) {
        this.log('request failed unexpectedly', { err: String(e) });
      }
      this.finished(req.length);
    });
  }

  private readReply(req: Request, out: Buffer): void {
    if (this.closed) return;
    if (!this.structured) {
      out.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
      out.writeUInt32BE(0, 4);
      out.writeUInt32BE(req.cookieHi, 8);
      out.writeUInt32BE(req.cookieLo, 12);
    } else if (req.length === 0) {
      return this.structuredChunk(req, ReplyType.NONE, Buffer.alloc(0));
    } else {
      out.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
      out.writeUInt16BE(ReplyFlag.DONE, 4);
      out.writeUInt16BE(ReplyType.OFFSET_DATA, 6);
      out.writeUInt32BE(req.cookieHi, 8);
      out.writeUInt32BE(req.cookieLo, 12);
      out.writeUInt32BE(8 + req.length, 16);
      out.writeBigUInt64BE(BigInt(req.offset), 20);
    }
    this.send(out);
  }

  private doBlockStatus(req: Request): void {
    const max = req.flags & CmdFlag.REQ_ONE ? 1 : Limits.extentsPerReplyMax;
    const extents = this.volume.extents(req.offset, req.length, max);
    const body = Buffer.allocUnsafe(4 + extents.length * 8);
    body.writeUInt32BE(BASE_ALLOCATION_ID, 0);
    extents.forEach((e, i) => {
      body.writeUInt32BE(e.length, 4 + i * 8);
      body.writeUInt32BE(e.flags, 8 + i * 8);
    });
    this.structuredChunk(req, ReplyType.BLOCK_STATUS, body);
  }

  private structuredChunk(req: Request, type: number, body: Buffer): void {
    if (this.closed) return;
    const out = Buffer.allocUnsafe(20 + body.length);
    out.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
    out.writeUInt16BE(ReplyFlag.DONE, 4);
    out.writeUInt16BE(type, 6);
    out.writeUInt32BE(req.cookieHi, 8);
    out.writeUInt32BE(req.cookieLo, 12);
    out.writeUInt32BE(body.length, 16);
    body.copy(out, 20);
    this.send(out);
  }

  /**
   * Writes one complete reply (always one buffer, so a reply is never split or interleaved
   * with another). While other requests are in flight, replies completed in the same
   * event-loop turn are corked and leave together in one writev at the end of the turn
   * (fewer syscalls; bounded by the in-flight limits). Replies completed synchronously
   * while parsing (cached reads, inline writes) leave together when the parse ends. A lone
   * request's reply goes at once.
   */
  private send(out: Buffer): void {
    if (this.parsing) {
      if (!this.parseCorked) {
        this.parseCorked = true;
        this.stream.cork();
      }
    } else if (!this.corked && this.inflight > 1) {
      this.corked = true;
      this.stream.cork();
      setImmediate(this.uncork);
    }
    this.stream.write(out);
  }

  private readonly uncork = (): void => {
    this.corked = false;
    this.stream.uncork();
  };

  private replyFailure(req: Request, err: unknown): void {
    if (!(err instanceof FerryError)) this.log('unexpected I/O failure', { disk: this.volume.name, err: String(err) });
    this.reply(req, nbdErrnoOf(err), err instanceof Error ? err.message : String(err));
  }

  /** One reply, one write. Errors of READ and BLOCK_STATUS go as structured ERROR chunks when negotiated. */
  /** Refuses a request with a registry code: its NBD errno is the registry's (errors.ts). */
  private refuse(req: Request, code: ErrorCode, message: string): void {
    this.reply(req, ERRORS[code].nbd, message);
  }

  private reply(req: Request, errno: number, message = ''): void {
    if (this.closed) return;
    if (errno !== 0 && this.structured && (req.type === Cmd.READ || req.type === Cmd.BLOCK_STATUS)) {
      const msg = Buffer.from(message.slice(0, 1024), 'utf8');
      const body = Buffer.allocUnsafe(6 + msg.length);
      body.writeUInt32BE(errno, 0);
      body.writeUInt16BE(msg.length, 4);
      msg.copy(body, 6);
      return this.structuredChunk(req, ReplyType.ERROR, body);
    }
    const out = Buffer.allocUnsafe(16);
    out.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
    out.writeUInt32BE(errno, 4);
    out.writeUInt32BE(req.cookieHi, 8);
    out.writeUInt32BE(req.cookieLo, 12);
    this.send(out);
  }
}
