// The testing layer: fakes for fault injection only (never a stand-in for a real
// component in a test of behaviour). FaultyStore is an in-memory disk with a volatile
// write cache, to model power loss: every write lands in the cache; sync() makes the
// cache durable; powerLoss() returns the image a machine would find after losing power
// now: the durable bytes plus a random subset of cached writes, each applied whole,
// dropped, or torn at a 512-byte sector boundary. It can also fail operations (I/O
// errors) and flip bits, to test that corruption is detected and copies degrade.
import { FerryError } from '../errors.js';
import type { Extent } from '../disk/block-device.js';
import type { DiskStore } from '../disk/store.js';

export type Rng = () => number;

/** A small deterministic PRNG (mulberry32), so a failing seed can be replayed. */
export function seededRng(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sectorBytes = 512;

export class FaultyStore implements DiskStore {
  readonly kind = 'file' as const;
  readonly readOnly = false;
  readonly size: number;
  /** What the media holds for sure. */
  readonly durable: Buffer;
  /** What reads see (durable plus the volatile cache). */
  readonly current: Buffer;
  private cached: Array<{ offset: number; data: Buffer }> = [];
  private failing: { read: boolean; write: boolean; sync: boolean } = { read: false, write: false, sync: false };
  private present = true;
  writes = 0;
  syncs = 0;

  constructor(
    readonly path: string,
    sizeOrImage: number | Buffer,
  ) {
    this.durable = typeof sizeOrImage === 'number' ? Buffer.alloc(sizeOrImage) : Buffer.from(sizeOrImage);
    this.current = Buffer.from(this.durable);
    this.size = this.durable.length;
  }

  /** Makes later calls of the given kinds fail with EIO (a dying device). */
  fail(kinds: { read?: boolean; write?: boolean; sync?: boolean }): void {
    this.failing = { ...this.failing, ...kinds };
  }

  /** Simulates the file being deleted underneath the server. */
  remove(): void {
    this.present = false;
  }

  /** Flips one bit, on the media and in what reads see. */
  flipBit(offset: number, bit = 0): void {
    this.durable[offset]! ^= 1 << bit;
    this.current[offset]! ^= 1 << bit;
  }

  private check(offset: number, length: number): void {
    if (offset < 0 || length < 0 || offset + length > this.size) throw new FerryError('OUT_OF_RANGE', `${offset}+${length} outside ${this.path}`);
  }

  async read(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    this.check(offset, length);
    await Promise.resolve();
    if (this.failing.read) throw new FerryError('IO_ERROR', `injected read error on ${this.path}`);
    this.current.copy(buf, bufOffset, offset, offset + length);
  }

  async write(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    this.check(offset, length);
    await Promise.resolve();
    if (this.failing.write) throw new FerryError('IO_ERROR', `injected write error on ${this.path}`);
    const data = Buffer.from(buf.subarray(bufOffset, bufOffset + length));
    data.copy(this.current, offset);
    this.cached.push({ offset, data });
    this.writes++;
  }

  async sync(): Promise<void> {
    await Promise.resolve();
    if (this.failing.sync) throw new FerryError('IO_ERROR', `injected sync error on ${this.path}`);
    for (const w of this.cached) w.data.copy(this.durable, w.offset);
    this.cached = [];
    this.syncs++;
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.write(Buffer.alloc(length), 0, length, offset);
  }

  async zero(offset: number, length: number): Promise<void> {
    await this.write(Buffer.alloc(length), 0, length, offset);
  }

  extents(offset: number, length: number): Extent[] {
    return length ? [{ offset, length, flags: 0 }] : [];
  }

  prefetch(): void {}

  stillAtPath(): boolean {
    return this.present;
  }

  async close(): Promise<void> {}

  /** The image after a power cut now: durable bytes plus each cached write kept, dropped or torn at random. */
  powerLoss(rng: Rng): Buffer {
    const image = Buffer.from(this.durable);
    for (const w of this.cached) {
      const r = rng();
      if (r < 0.4) continue; // never reached the media
      if (r < 0.8) {
        w.data.copy(image, w.offset);
        continue;
      }
      // Torn: some sectors of the write reached the media, others did not.
      for (let s = 0; s < w.data.length; s += sectorBytes) {
        if (rng() < 0.5) w.data.copy(image, w.offset + s, s, Math.min(s + sectorBytes, w.data.length));
      }
    }
    return image;
  }

  /** The image after the process died (kill -9): every completed write is there. */
  processCrash(): Buffer {
    return Buffer.from(this.current);
  }
}
