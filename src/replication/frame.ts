// Framing of the site-to-site replication protocol (the replication layer owns the link
// between two ferryd: pairing, authentication, and the ordered stream of records and
// sync chunks from a primary site to its mirror site). Every message is one frame:
//
//   0 magic u32 "FRPL" | 4 type u8 | 5 flags u8 | 6 reserved u16
//   8 metaBytes u32 | 12 payloadBytes u32 | 16 crc u32 (CRC32C of meta and payload)
//   20 meta (UTF-8 JSON object) | payload (raw bytes)
//
// Both lengths are bounded before anything is buffered, so a peer (or garbage on the
// port) can never make us hold more than one frame of the largest legal size; the CRC
// catches corruption that TLS would not (a bug on either side, a bad NIC offload).
// Large payloads (sync chunks, record batches) are sent without being copied into the
// frame: encodeFrameParts gives the head (header and meta) and the payload as they are,
// the CRC chained over both; the reader copies a frame into one buffer exactly once.
import type { Duplex } from 'node:stream';
import { crc32c } from '@node-rs/crc32';
import { FerryError } from '../errors.js';
import type { TestFailoverStatus } from '../mirror/mirror.js';

export const FRAME_MAGIC = 0x4c505246; // "FRPL" read as little-endian u32
export const FRAME_HEADER_BYTES = 20;
export const FRAME_META_BYTES_MAX = 64 * 1024;
/** The largest payload: a batch of records or one sync chunk, with room for headers. */
export const FRAME_PAYLOAD_BYTES_MAX = 40 * 1024 * 1024;

export const FrameType = {
  /** Client → server, first frame of an authenticated session: { site, purpose }. */
  HELLO: 1,
  HELLO_OK: 2,
  /** Either side: { code, message }; the sender closes the connection after it. */
  ERROR: 3,
  /** Client → server, first frame of a pairing: { site, proof }. */
  PAIR: 4,
  PAIR_OK: 5,
  /** Request/response pairs on a session: meta carries { id, op, ... }. */
  REQUEST: 8,
  RESPONSE: 9,
  /** Primary → mirror: a batch of records; meta { disk, firstSeq, records: [...] }. */
  RECORDS: 16,
  /**
   * Mirror → primary: every record up to meta.durableSeq is durable on the mirror site;
   * meta.test: the replica's test failover (TestFailoverStatus) or null (see ackTestFailover).
   */
  ACK: 17,
  /** Primary → mirror: sync data for one region; meta { disk, id, offset, length, zero }. */
  CHUNK: 18,
} as const;
export type FrameTypeValue = (typeof FrameType)[keyof typeof FrameType];

export const FrameFlag = { ZSTD: 1 } as const;

export interface Frame {
  type: number;
  flags: number;
  meta: Record<string, unknown>;
  payload: Buffer;
}

/** One buffer per frame: the socket gets it in one write. */
export function encodeFrame(type: FrameTypeValue, meta: object, payload?: Buffer, flags = 0): Buffer {
  const parts = encodeFrameParts(type, meta, payload, flags);
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
}

/**
 * The frame as its head (header and meta) and its payload, not copied: the caller must not
 * change the payload until the frame is written (for a request: until it is answered).
 */
export function encodeFrameParts(type: FrameTypeValue, meta: object, payload?: Buffer, flags = 0): Buffer[] {
  const metaText = JSON.stringify(meta);
  const metaBytes = Buffer.byteLength(metaText, 'utf8');
  const payloadBytes = payload?.length ?? 0;
  if (metaBytes > FRAME_META_BYTES_MAX) throw new FerryError('BAD_REQUEST', `frame metadata too large (${metaBytes} bytes)`);
  if (payloadBytes > FRAME_PAYLOAD_BYTES_MAX) throw new FerryError('BAD_REQUEST', `frame payload too large (${payloadBytes} bytes)`);
  // A small payload is copied in: one buffer, one write.
  const inline = payload !== undefined && payloadBytes <= inlinePayloadBytesMax;
  const head = Buffer.allocUnsafe(FRAME_HEADER_BYTES + metaBytes + (inline ? payloadBytes : 0));
  head.writeUInt32LE(FRAME_MAGIC, 0);
  head.writeUInt8(type, 4);
  head.writeUInt8(flags, 5);
  head.writeUInt16LE(0, 6);
  head.writeUInt32LE(metaBytes, 8);
  head.writeUInt32LE(payloadBytes, 12);
  head.write(metaText, FRAME_HEADER_BYTES, 'utf8');
  if (inline) payload.copy(head, FRAME_HEADER_BYTES + metaBytes);
  const headCrc = crc32c(head.subarray(FRAME_HEADER_BYTES));
  const separate = payload !== undefined && !inline;
  head.writeUInt32LE(separate ? crc32c(payload, headCrc) : headCrc, 16);
  return separate ? [head, payload] : [head];
}

/** Payloads up to this size are copied into the frame's head (cheaper than a second write). */
const inlinePayloadBytesMax = 64 * 1024;

/** Writes a frame's parts in order; false when the socket asks the writer to wait for 'drain'. */
export function writeFrameParts(stream: Duplex, parts: readonly Buffer[]): boolean {
  let ok = true;
  for (const p of parts) ok = stream.write(p);
  return ok;
}

/** Resolves when the stream drains (after writeFrameParts returned false) or closes; listeners removed either way. */
export function drained(stream: Duplex): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = (): void => {
      stream.off('drain', done);
      stream.off('close', done);
      resolve();
    };
    stream.on('drain', done);
    stream.on('close', done);
  });
}

/** Bytes of a frame given as parts. */
export function frameBytes(parts: readonly Buffer[]): number {
  let n = 0;
  for (const p of parts) n += p.length;
  return n;
}

export class ProtocolError extends FerryError {
  constructor(message: string) {
    super('REPL_PROTOCOL', message);
  }
}

/**
 * The largest first frame on a connection (PAIR or HELLO: a small JSON object, no payload):
 * the listener reads nothing larger before it knows who the peer is.
 */
export const FIRST_FRAME_BYTES_MAX = 8 * 1024;

/**
 * Reads whole frames from a stream. At most one frame is buffered beyond what the caller
 * has taken: the stream is paused while a complete frame waits to be read, and resumed as
 * soon as none does (so the next frame arrives while the caller handles the last one).
 * With `firstFrameBytesMax`, a first frame declaring more is refused as soon as its header
 * is in, before any of it is buffered.
 */
export class FrameReader {
  /** Frames delivered so far (the first-frame bound applies until one is). */
  private delivered = 0;
  private chunks: Buffer[] = [];
  private buffered = 0;
  private ended: Error | null = null;
  private waiter: { resolve: (f: Frame | null) => void; reject: (e: Error) => void } | null = null;
  private readonly onData = (chunk: Buffer): void => {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    this.pump();
  };
  private readonly onEnd = (): void => this.finish(null);
  private readonly onError = (err: Error): void => this.finish(err);

  constructor(
    private readonly stream: Duplex,
    private readonly opts: { firstFrameBytesMax?: number } = {},
  ) {
    stream.on('data', this.onData);
    stream.on('end', this.onEnd);
    stream.on('close', this.onEnd);
    stream.on('error', this.onError);
  }

  /** The next frame, or null once the peer closed cleanly. Rejects on garbage or a reset. */
  next(): Promise<Frame | null> {
    if (this.waiter) return Promise.reject(new Error('FrameReader: concurrent next()'));
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
      this.pump();
    });
  }

  detach(): void {
    this.stream.off('data', this.onData);
    this.stream.off('end', this.onEnd);
    this.stream.off('close', this.onEnd);
    this.stream.off('error', this.onError);
  }

  private pump(): void {
    if (this.buffered < FRAME_HEADER_BYTES) return this.more();
    const head = this.peek(FRAME_HEADER_BYTES);
    try {
      if (head.readUInt32LE(0) !== FRAME_MAGIC) throw new ProtocolError('not a Ferry replication frame (bad magic)');
      const metaBytes = head.readUInt32LE(8);
      const payloadBytes = head.readUInt32LE(12);
      if (metaBytes > FRAME_META_BYTES_MAX) throw new ProtocolError(`frame metadata of ${metaBytes} bytes exceeds ${FRAME_META_BYTES_MAX}`);
      if (payloadBytes > FRAME_PAYLOAD_BYTES_MAX) throw new ProtocolError(`frame payload of ${payloadBytes} bytes exceeds ${FRAME_PAYLOAD_BYTES_MAX}`);
      const total = FRAME_HEADER_BYTES + metaBytes + payloadBytes;
      const firstMax = this.opts.firstFrameBytesMax;
      if (firstMax !== undefined && this.delivered === 0 && total > firstMax) throw new ProtocolError(`first frame of ${total} bytes exceeds ${firstMax} (PAIR and HELLO are small)`);
      if (this.buffered < total) return this.more();
      if (!this.waiter) {
        this.stream.pause();
        return;
      }
      const all = this.take(total);
      if (crc32c(all.subarray(FRAME_HEADER_BYTES)) !== all.readUInt32LE(16)) throw new ProtocolError('frame checksum mismatch');
      let meta: unknown;
      try {
        meta = JSON.parse(all.toString('utf8', FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + metaBytes));
      } catch {
        throw new ProtocolError('frame metadata is not JSON');
      }
      if (typeof meta !== 'object' || meta === null || Array.isArray(meta)) throw new ProtocolError('frame metadata is not an object');
      const frame: Frame = { type: all.readUInt8(4), flags: all.readUInt8(5), meta: meta as Record<string, unknown>, payload: all.subarray(FRAME_HEADER_BYTES + metaBytes) };
      const w = this.waiter;
      this.waiter = null;
      this.delivered++;
      w.resolve(frame);
      // Receive the next frame while the caller handles this one (still one frame ahead at most).
      if (!this.frameBuffered()) this.stream.resume();
    } catch (err) {
      this.ended ??= err as Error;
      this.stream.destroy();
      this.deliverEnd();
    }
  }

  /** Whether a whole frame (or a header that pump will refuse) is buffered. */
  private frameBuffered(): boolean {
    if (this.buffered < FRAME_HEADER_BYTES) return false;
    const head = this.peek(FRAME_HEADER_BYTES);
    const metaBytes = head.readUInt32LE(8);
    const payloadBytes = head.readUInt32LE(12);
    if (metaBytes > FRAME_META_BYTES_MAX || payloadBytes > FRAME_PAYLOAD_BYTES_MAX) return true;
    const total = FRAME_HEADER_BYTES + metaBytes + payloadBytes;
    if (this.opts.firstFrameBytesMax !== undefined && this.delivered === 0 && total > this.opts.firstFrameBytesMax) return true;
    return this.buffered >= total;
  }

  /** The frame is incomplete: read on, or report the end if no more will come. */
  private more(): void {
    if (this.ended !== null || this.streamEnded) return this.deliverEnd();
    this.stream.resume();
  }

  private streamEnded = false;

  private finish(err: Error | null): void {
    if (err) this.ended ??= err;
    this.streamEnded = true;
    if (err) this.deliverEnd();
    else this.pump();
  }

  private deliverEnd(): void {
    if (!this.waiter || !(this.streamEnded || this.ended)) return;
    const w = this.waiter;
    this.waiter = null;
    if (this.ended) w.reject(this.ended);
    else if (this.buffered > 0) w.reject(new ProtocolError('connection closed in the middle of a frame'));
    else w.resolve(null);
  }

  /** The first n bytes (n <= buffered), joining only the chunks that hold them. */
  private peek(n: number): Buffer {
    if (this.chunks[0]!.length < n) {
      let k = 0;
      let bytes = 0;
      while (bytes < n) bytes += this.chunks[k++]!.length;
      this.chunks.splice(0, k, Buffer.concat(this.chunks.slice(0, k), bytes));
    }
    return this.chunks[0]!.subarray(0, n);
  }

  /** The first n bytes buffered, as one buffer: copied once (unless one chunk holds them all); the rest stays as it came. */
  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length > n) this.chunks[0] = first.subarray(n);
      else this.chunks.shift();
    } else {
      out = Buffer.allocUnsafe(n);
      let at = 0;
      while (at < n) {
        const c = this.chunks[0]!;
        const k = Math.min(c.length, n - at);
        c.copy(out, at, 0, k);
        at += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.buffered -= n;
    return out;
  }
}

/**
 * The test failover an ACK reports (meta.test), checked field by field: null when absent
 * (a mirror site from before test failovers) or malformed; strings are cut to 200 characters.
 */
export function ackTestFailover(meta: Record<string, unknown>): TestFailoverStatus | null {
  const t = meta.test as Record<string, unknown> | null | undefined;
  if (!t || typeof t !== 'object') return null;
  const str = (v: unknown): string | null => (typeof v === 'string' ? v.slice(0, 200) : null);
  const int = (v: unknown): number | null => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : null);
  const state = t.state === 'running' || t.state === 'lost' || t.state === 'ended' ? t.state : null;
  const [exp, startedAt, seq, scratchBytes, scratchUsedBytes] = [str(t.export), str(t.startedAt), int(t.seq), int(t.scratchBytes), int(t.scratchUsedBytes)];
  if (exp === null || startedAt === null || seq === null || state === null || scratchBytes === null || scratchUsedBytes === null) return null;
  return { export: exp, startedAt, seq, state, reason: str(t.reason), scratchBytes, scratchUsedBytes };
}
