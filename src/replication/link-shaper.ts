// What a remote stream (remote-stream.ts) does to its payloads before they go on the link:
// zstd compression, when it is on and it pays, and the link's rate limit.
//
// Compression runs on the worker pool (zstd-pool.ts), which costs a copy to the worker, the
// compression and a copy back: on data zstd cannot shrink (already compressed or encrypted
// files, random data) that is all lost, and it delays every payload behind the others in the
// pool's queue. So a large payload is first sampled (zstd-pool.ts, worthCompressing: a few
// small slices, compressed here in well under a millisecond) and goes as it is when the sample
// does not shrink. A payload the sample judged wrongly costs what it cost before this check,
// no more: one that does not shrink when compressed whole still goes as it is.
import { setTimeout as sleep } from 'node:timers/promises';
import { worthCompressing, zstdPool } from './zstd-pool.js';
import { FrameFlag } from './frame.js';

/** The longest single wait of the rate limit (a changed limit applies after at most this). */
const paceSliceMs = 200;

/** Payloads smaller than this are never compressed: a frame's header costs more than they save. */
const compressBytesMin = 512;

export class LinkShaper {
  /** Payload bytes before and after compression, for status. */
  rawBytes = 0;
  wireBytes = 0;
  private readonly bucket = { tokens: 0, atMs: Date.now() };

  constructor(
    private compress: boolean,
    /** Bytes per second on the link (0: no limit). */
    private bandwidthBytesPerSec: number,
  ) {}

  /** `mirror set`: a new rate and compression, from the next payload on (the bucket keeps its debt). */
  reshape(compress: boolean, bandwidthBytesPerSec: number): void {
    this.compress = compress;
    this.bandwidthBytesPerSec = bandwidthBytesPerSec;
  }

  /** Compresses a payload when that is on and it pays. */
  async pack(payload: Buffer | undefined): Promise<{ data: Buffer | undefined; flags: number }> {
    if (!payload || payload.length === 0) return { data: payload, flags: 0 };
    this.rawBytes += payload.length;
    if (this.compress && payload.length >= compressBytesMin && worthCompressing(payload)) {
      const z = await zstdPool().compress(payload);
      if (z.length < payload.length) {
        this.wireBytes += z.length;
        return { data: z, flags: FrameFlag.ZSTD };
      }
    }
    this.wireBytes += payload.length;
    return { data: payload, flags: 0 };
  }

  /**
   * The rate limit: a token bucket (burst of 100 ms of the rate) that may go into debt by one
   * frame. The debt is waited off in slices of at most paceSliceMs, at the rate of the moment:
   * a limit raised or cleared by `mirror set` takes effect within a slice.
   */
  async pace(bytes: number): Promise<void> {
    if (this.bandwidthBytesPerSec <= 0) return;
    this.refill();
    this.bucket.tokens -= bytes;
    while (this.bucket.tokens < 0) {
      const rate = this.bandwidthBytesPerSec;
      if (rate <= 0) {
        this.bucket.tokens = 0;
        return;
      }
      await sleep(Math.min(paceSliceMs, (-this.bucket.tokens * 1000) / rate));
      this.refill();
    }
  }

  private refill(): void {
    const rate = this.bandwidthBytesPerSec;
    const now = Date.now();
    const burst = Math.max(64 * 1024, rate / 10);
    this.bucket.tokens = Math.min(burst, this.bucket.tokens + ((now - this.bucket.atMs) * rate) / 1000);
    this.bucket.atMs = now;
  }
}
