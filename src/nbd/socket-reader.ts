// Exact-length reads from a socket for the negotiation phase, where messages are
// small and strictly request/response. Buffered bytes are bounded by the caller's
// read sizes (the client cannot make us buffer more than one message ahead: we
// pause the socket while no read is pending). detach() hands what is left to the
// transmission phase.
import type { Duplex } from 'node:stream';

export class ConnectionClosed extends Error {
  constructor(message = 'connection closed') {
    super(message);
    this.name = 'ConnectionClosed';
  }
}

/** Buffered bytes above which the socket is paused until a read consumes them. */
const bufferedBytesMax = 128 * 1024;

export class SocketReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private want = 0;
  private waiter: { resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private failure: Error | null = null;
  private readonly onData = (chunk: Buffer): void => {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    if (this.buffered > bufferedBytesMax) this.stream.pause();
    this.pump();
  };
  private readonly onEnd = (): void => this.fail(new ConnectionClosed());
  private readonly onError = (err: Error): void => this.fail(new ConnectionClosed(err.message));

  constructor(private readonly stream: Duplex) {
    stream.on('data', this.onData);
    stream.on('end', this.onEnd);
    stream.on('close', this.onEnd);
    stream.on('error', this.onError);
  }

  read(n: number): Promise<Buffer> {
    if (this.waiter) return Promise.reject(new Error('SocketReader: concurrent read'));
    if (this.failure && this.buffered < n) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.want = n;
      this.waiter = { resolve, reject };
      this.stream.resume();
      this.pump();
    });
  }

  /** Stops listening and returns any bytes received beyond the last read. */
  detach(): Buffer {
    this.stream.off('data', this.onData);
    this.stream.off('end', this.onEnd);
    this.stream.off('close', this.onEnd);
    this.stream.off('error', this.onError);
    const rest = Buffer.concat(this.chunks, this.buffered);
    this.chunks = [];
    this.buffered = 0;
    return rest;
  }

  private pump(): void {
    if (!this.waiter || this.buffered < this.want) return;
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.buffered);
    const out = all.subarray(0, this.want);
    const rest = all.subarray(this.want);
    this.chunks = rest.length ? [rest] : [];
    this.buffered = rest.length;
    const { resolve } = this.waiter;
    this.waiter = null;
    resolve(out);
  }

  private fail(err: Error): void {
    if (!this.failure) this.failure = err;
    if (this.waiter) {
      const { reject } = this.waiter;
      this.waiter = null;
      reject(err);
    }
  }
}
