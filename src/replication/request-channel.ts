// The requests a remote stream (remote-stream.ts) makes on its link, next to the records it
// ships: the attach that opens each link, and the sync engine's chunk writes, zeroes, disk
// syncs and reads (remote-store.ts). Each request gets a growing id and waits here until
// the mirror site's RESPONSE with that id settles it (an error in the reply rejects it with
// the mirror site's code when this ferryd knows it, else REMOTE_ERROR). A request made while no link is attached waits for one, and a request lost
// with a link is sent again, from the frame kept here, on the next link once it is attached,
// in the order the requests were made: so every op must be idempotent. The attach belongs to
// its one link and is never sent again.
import assert from 'node:assert';
import { ERRORS, FerryError, type ErrorCode } from '../errors.js';
import { encodeFrame, encodeFrameParts, frameBytes, FrameType, writeFrameParts, type Frame } from './frame.js';
import type { LinkShaper } from './link-shaper.js';
import type { PeerSession } from './peer-session.js';

const requestsQueuedMax = 64;

interface PendingRequest {
  id: number;
  /** The frame's parts, kept to send again on the next link (none for the attach). */
  frame: Buffer[];
  resolve: (f: Frame) => void;
  reject: (e: Error) => void;
}

export class RequestChannel {
  private readonly pending = new Map<number, PendingRequest>();
  private nextId = 1;
  /** The attached link: requests are written to it at once; null, they wait for the next one. */
  private socket: PeerSession['socket'] | null = null;
  /** Set once the stream stopped: what every request fails with from then on. */
  private closed: (() => Error) | null = null;

  constructor(
    private readonly peer: string,
    /** The replica's name at the mirror site, in every request. */
    private readonly remoteDisk: string,
    /** Compression and the rate limit, shared with the records on the link. */
    private readonly shaper: LinkShaper,
  ) {}

  /** Requests not yet answered (the attach included). */
  get size(): number {
    return this.pending.size;
  }

  /**
   * A request on the link (sync chunk, disk sync, read...). Waits for a link; a request lost
   * with a link is sent again on the next one, so every op must be idempotent. The payload
   * is sent from the caller's buffer, not a copy: it must not change until the request is answered.
   */
  async request(meta: Record<string, unknown>, payload?: Buffer): Promise<Frame> {
    if (this.closed) throw this.closed();
    assert.ok(this.pending.size < requestsQueuedMax, 'requests on the link are bounded by their callers');
    const id = this.nextId++;
    const { data, flags } = await this.shaper.pack(payload);
    const frame = encodeFrameParts(FrameType.REQUEST, { ...meta, id, disk: this.remoteDisk }, data, flags);
    await this.shaper.pace(frameBytes(frame));
    // Closed while this request was compressed or paced: it would never be answered.
    const closedMeanwhile = this.closed as (() => Error) | null;
    if (closedMeanwhile) throw closedMeanwhile();
    return new Promise<Frame>((resolve, reject) => {
      this.pending.set(id, { id, frame, resolve, reject });
      if (this.socket) writeFrameParts(this.socket, frame);
    });
  }

  /** The attach, the first request on a new link (before linkUp); the mirror site's reply. */
  attach(socket: PeerSession['socket'], meta: () => Record<string, unknown>): Promise<Frame> {
    const id = this.nextId++;
    return new Promise<Frame>((resolve, reject) => {
      this.pending.set(id, { id, frame: [], resolve, reject });
      socket.write(encodeFrame(FrameType.REQUEST, { ...meta(), op: 'attach', id, disk: this.remoteDisk }));
    }).finally(() => this.pending.delete(id));
  }

  /** The link is attached: requests lost with the previous one go again, in their order; new ones go at once. */
  linkUp(socket: PeerSession['socket']): void {
    this.socket = socket;
    for (const r of [...this.pending.values()].sort((a, b) => a.id - b.id)) if (r.frame.length) writeFrameParts(socket, r.frame);
  }

  /** The link is gone: requests wait for the next one. */
  linkDown(): void {
    this.socket = null;
  }

  /** A RESPONSE from the mirror site settles its request; one for no waiting request is ignored. */
  answer(f: Frame): void {
    const r = this.pending.get(f.meta.id as number);
    if (!r) return;
    this.pending.delete(r.id);
    if (typeof f.meta.error === 'object' && f.meta.error !== null) {
      const e = f.meta.error as { code?: string; message?: string; details?: unknown };
      // The mirror site's code is kept when this ferryd knows it (DISK_BUSY stays DISK_BUSY,
      // named as the peer's); an unknown one is REMOTE_ERROR, with the code in the message.
      const known = typeof e.code === 'string' && e.code in ERRORS;
      r.reject(new FerryError(known ? (e.code as ErrorCode) : 'REMOTE_ERROR', `${this.peer}: ${e.message ?? 'request failed'}${e.code ? ` (${e.code})` : ''}`, { remoteCode: e.code, peer: this.peer, ...(typeof e.details === 'object' && e.details !== null ? { remote: e.details } : {}) }));
    } else r.resolve(f);
  }

  /** The stream stopped: every request still waiting fails, and so does every later one. */
  close(err: () => Error): void {
    this.closed = err;
    for (const r of this.pending.values()) r.reject(err());
    this.pending.clear();
  }
}
