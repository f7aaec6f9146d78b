// The receive side of a transmission-phase connection: where the bytes a client sends
// land. Requests are parsed from one fixed receive buffer per connection; a WRITE payload
// goes into a buffer of its own (payload-pool.ts), and the socket reads the larger part of
// a large payload straight into it. So a payload is copied once by the kernel (socket →
// payload buffer) and nothing is allocated per read: Node's default, a new 64 KiB buffer per
// read, made V8 run a full garbage collection every ~30 ms under 1 MiB writes.
//
// On a plain TCP socket this uses Node's user-buffer reads (net.Socket `onread`, installed
// on the accepted socket); any other stream (TLS) delivers 'data' chunks that are copied
// into the same places. Bounded: the receive buffer is fixed and reading stops while it is
// full of unparsed bytes or while the owner has paused (its in-flight limits).
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';

/** The receive buffer: headers, small payloads and the start of large ones land here. */
const recvBytes = 256 * 1024;
/** Largest read into the receive buffer (a large payload's first part is copied from it). */
const recvReadBytesMax = 64 * 1024;
/** Free space below which unparsed bytes are moved to the start of the receive buffer. */
const recvFreeBytesMin = 16 * 1024;
/** A payload still missing at least this many bytes is read straight into its buffer. */
const directReadBytesMin = 16 * 1024;

interface UserBufferHandle {
  useUserBuffer(buf: Uint8Array): void;
}

type Region = 'recv' | 'payload' | 'spill';

export class Inbound {
  private readonly stream: Duplex;
  private readonly onInput: () => void;
  private readonly recv = Buffer.allocUnsafe(recvBytes);
  /** Unparsed bytes are recv[head, end). */
  private head = 0;
  private end = 0;
  /** The payload being received, and how much of it has arrived. */
  private payload: Buffer | null = null;
  private filled = 0;
  private userBuffers = false;
  /**
   * User-buffer mode: where the next read lands, chosen after each read (Node asks then):
   * recv at `end`, the payload at `filled`, or a spare buffer when the receive buffer is
   * full. The region stays valid until that read: nothing else moves `end` or `filled`
   * meanwhile (bytes only arrive by reads; recv is compacted only when choosing, or while
   * the spare buffer is the region).
   */
  private region: Region = 'recv';
  private spill: Buffer | null = null;
  /** User-buffer mode: the socket is reading. */
  private reading = false;
  /** Inside a read callback: flow changes take effect when it returns. */
  private inRead = false;
  private paused = false;
  private stopped = false;
  /** Bytes received that did not fit yet (reading is stopped until they are taken in). */
  private leftover: Buffer | null = null;

  /** `onInput` is called after bytes arrive; it parses what it can (take, skip, startPayload, fillPayload). */
  constructor(stream: Duplex, onInput: () => void) {
    this.stream = stream;
    this.onInput = onInput;
  }

  /** Takes in `pending` (bytes that came with the negotiation) and starts reading. */
  start(pending: Buffer): void {
    const stream = this.stream;
    stream.pause();
    const early: Buffer[] = pending.length ? [pending] : [];
    for (let b: Buffer | null; (b = stream.read() as Buffer | null) !== null; ) early.push(b);
    if (early.length) this.ingest(Buffer.concat(early));
    if (this.stopped) return;
    // Switched over in one go: no read can land between the fields and the first buffer.
    const handle = installUserBuffer(stream, (n) => this.onRead(n), () => (this.stopped ? undefined : this.regionBuffer()));
    if (handle) {
      this.userBuffers = true;
      if (this.leftover === null) this.choose();
      else this.spillRegion();
      handle.useUserBuffer(this.regionBuffer());
    } else stream.on('data', (chunk: Buffer) => this.ingest(chunk));
    this.arm();
  }

  /** Unparsed bytes in the receive buffer. */
  get length(): number {
    return this.end - this.head;
  }

  /** The next `n` bytes (n <= length), as a view valid only until control returns to the event loop. */
  take(n: number): Buffer {
    const out = this.recv.subarray(this.head, this.head + n);
    this.head += n;
    return out;
  }

  /** The next `n` bytes (n <= length) without taking them; valid only until control returns to the event loop. */
  peek(n: number): Buffer {
    return this.recv.subarray(this.head, this.head + n);
  }

  /** Drops the next `n` bytes (n <= length). */
  skip(n: number): void {
    this.head += n;
  }

  /** Receives the next `buf.length` bytes into `buf`; fillPayload() says when they are all there. */
  startPayload(buf: Buffer): void {
    this.payload = buf;
    this.filled = 0;
  }

  /** Moves what has arrived into the payload; the payload once it is complete, else null. */
  fillPayload(): Buffer | null {
    const p = this.payload!;
    const n = Math.min(p.length - this.filled, this.end - this.head);
    if (n > 0) {
      this.recv.copy(p, this.filled, this.head, this.head + n);
      this.head += n;
      this.filled += n;
    }
    if (this.filled < p.length) return null;
    this.payload = null;
    return p;
  }

  /** Stops reading until resume() (the owner's in-flight limits). */
  pause(): void {
    if (this.paused) return;
    this.paused = true;
    if (!this.userBuffers) this.stream.pause();
    else if (this.reading && !this.inRead) {
      this.reading = false;
      this.stream.pause();
    }
  }

  /** Reads again after pause(), or once parsing has made room. */
  resume(): void {
    this.paused = false;
    this.arm();
  }

  /** Stops reading for good and forgets every unparsed byte. */
  stop(): void {
    this.stopped = true;
    this.paused = true;
    this.head = this.end = 0;
    this.payload = null;
    this.leftover = null;
    this.reading = false;
    this.stream.pause();
  }

  private arm(): void {
    if (this.paused || this.stopped || this.inRead) return;
    if (this.leftover) {
      const rest = this.leftover;
      this.leftover = null;
      // Parsing the bytes may call resume() again: that call waits for this one.
      this.inRead = true;
      try {
        this.ingest(rest);
      } finally {
        this.inRead = false;
      }
      if (this.leftover || this.paused || this.stopped) return;
    }
    if (!this.userBuffers) {
      if (this.stream.isPaused()) this.stream.resume();
      return;
    }
    if (this.reading) return;
    this.reading = true;
    this.stream.resume();
  }

  /**
   * Where the next bytes go: straight into the payload when the receive buffer is empty and
   * much of it is missing, else the receive buffer (compacted when its free end is short);
   * false when the receive buffer is full.
   */
  private prepare(): 'payload' | 'recv' | null {
    const p = this.payload;
    if (p !== null && this.head === this.end && p.length - this.filled >= directReadBytesMin) return 'payload';
    if (this.head === this.end) this.head = this.end = 0;
    else if (this.recv.length - this.end < recvFreeBytesMin && this.head > 0) {
      this.recv.copyWithin(0, this.head, this.end);
      this.end -= this.head;
      this.head = 0;
    }
    return this.end < this.recv.length ? 'recv' : null;
  }

  /** User-buffer mode: prepare(), or a spare buffer for the read after the receive buffer frees up. */
  private choose(): boolean {
    const to = this.prepare();
    if (to !== null) this.region = to;
    else this.spillRegion();
    return to !== null;
  }

  private spillRegion(): void {
    this.region = 'spill';
    this.spill = Buffer.allocUnsafe(recvReadBytesMax);
  }

  private regionBuffer(region: Region = this.region): Buffer {
    if (region === 'payload') return this.payload!.subarray(this.filled);
    if (region === 'spill') return this.spill!;
    return this.recv.subarray(this.end, this.end + recvReadBytesMax);
  }

  /** User-buffer read of `n` bytes into the chosen region; false stops reading. */
  private onRead(n: number): boolean {
    if (this.stopped) return false;
    this.inRead = true;
    try {
      if (this.region === 'spill') {
        const spill = this.spill!;
        this.spill = null;
        this.ingest(spill.subarray(0, n));
      } else {
        if (this.region === 'payload') this.filled += n;
        else this.end += n;
        this.onInput();
      }
    } finally {
      this.inRead = false;
    }
    if (this.stopped) {
      this.reading = false;
      return false;
    }
    let room = false;
    if (this.leftover === null) room = this.choose();
    else this.spillRegion();
    if (room && !this.paused) return true;
    this.reading = false;
    return false;
  }

  /** Copies received bytes where a read would have put them, parsing as it goes; what does not fit waits. */
  private ingest(chunk: Buffer): void {
    if (this.leftover) {
      // 'data' mode: a chunk emitted after pause(); still bounded (the stream is paused).
      chunk = Buffer.concat([this.leftover, chunk]);
      this.leftover = null;
    }
    let at = 0;
    while (at < chunk.length && !this.stopped) {
      const to = this.prepare();
      if (to === null) break;
      const dst = this.regionBuffer(to);
      const n = chunk.copy(dst, 0, at, Math.min(chunk.length, at + dst.length));
      if (to === 'payload') this.filled += n;
      else this.end += n;
      at += n;
      this.onInput();
    }
    if (at < chunk.length && !this.stopped) {
      this.leftover = chunk.subarray(at);
      if (!this.userBuffers) this.stream.pause();
    }
  }
}

/**
 * Switches a plain TCP socket to reads into buffers of our choosing (what net.Socket's
 * `onread` option does; an accepted socket cannot be given options, so the same internal
 * fields are set); the handle, on which useUserBuffer() sets the first buffer. Null, and nothing changed, for any other stream or when this Node
 * lacks them: the caller then uses 'data' events.
 */
function installUserBuffer(stream: Duplex, onRead: (n: number) => boolean, nextBuffer: () => Buffer | undefined): UserBufferHandle | null {
  if (!(stream instanceof net.Socket) || stream instanceof tls.TLSSocket) return null;
  const handle = (stream as unknown as { _handle?: Partial<UserBufferHandle> })._handle;
  if (!handle || typeof handle.useUserBuffer !== 'function') return null;
  const symbols = Object.getOwnPropertySymbols(stream);
  const find = (name: string): symbol | undefined => symbols.find((s) => s.description === name);
  const kBuffer = find('kBuffer');
  const kBufferCb = find('kBufferCb');
  const kBufferGen = find('kBufferGen');
  if (!kBuffer || !kBufferCb || !kBufferGen) return null;
  const fields = stream as unknown as Record<symbol, unknown>;
  fields[kBuffer] = true;
  fields[kBufferCb] = (n: number) => onRead(n);
  // Called right after each read callback: where the next read goes (undefined: nowhere new, stopped).
  fields[kBufferGen] = () => nextBuffer();
  return handle as UserBufferHandle;
}
