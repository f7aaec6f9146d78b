// The persistent dirty-region bitmap of a mirror that fell back from its record stream
// (`--on-full bitmap`: the staging area filled while the link was down). One bit per sync
// chunk (4 MiB: a 100 GiB disk needs 3 KiB); a set bit means "this region may differ on
// the mirror: copy it at the resync". A bit is durable before the write that sets it is
// acknowledged (persist() is awaited on the write path for new bits), so a crash never
// forgets a region; bits are cleared only once the resync has copied the region.
// forEachChunk (the chunks a byte range touches) is the one chunk-range loop, shared with
// the mirror's index of which chunks recent records wrote (mirror.ts).
//
// File: magic "FRDM" u32 | version u32 | chunkBytes u32 | chunks u32 | crc32c u32 of the
// bits | reserved u32 | bits. Written to a temporary file, synced, renamed, and the
// directory synced: the file on disk is always a whole, checked bitmap.
import fs from 'node:fs';
import path from 'node:path';
import { crc32c } from '@node-rs/crc32';
import { FerryError } from '../errors.js';

const MAGIC = 0x4d445246; // "FRDM" read as little-endian u32
const VERSION = 1;
const HEADER_BYTES = 24;

/** Calls fn with each chunk (of chunkBytes) that a byte range touches, in order; none for an empty range. */
export function forEachChunk(offset: number, length: number, chunkBytes: number, fn: (chunk: number) => void): void {
  if (length <= 0) return;
  const last = Math.floor((offset + length - 1) / chunkBytes);
  for (let c = Math.floor(offset / chunkBytes); c <= last; c++) fn(c);
}

export class DirtyMap {
  private readonly bits: Uint8Array;
  private count = 0;
  private persisting: Promise<void> | null = null;
  private again = false;
  /** Bumped by every change; persisted once the file holds it. */
  private version = 0;
  private persistedVersion = 0;

  private constructor(
    readonly file: string,
    readonly chunkBytes: number,
    readonly chunks: number,
    bits?: Uint8Array,
  ) {
    this.bits = bits ?? new Uint8Array(Math.ceil(chunks / 8));
    for (let i = 0; i < chunks; i++) if (this.has(i)) this.count++;
  }

  /** A new, empty bitmap (not yet on disk) for a disk of `size` bytes. */
  static create(file: string, size: number, chunkBytes: number): DirtyMap {
    return new DirtyMap(file, chunkBytes, Math.ceil(size / chunkBytes));
  }

  /** The bitmap on disk, checked; null if there is none. */
  static load(file: string, size: number, chunkBytes: number): DirtyMap | null {
    let buf: Buffer;
    try {
      buf = fs.readFileSync(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    const chunks = Math.ceil(size / chunkBytes);
    const ok =
      buf.length === HEADER_BYTES + Math.ceil(chunks / 8) &&
      buf.readUInt32LE(0) === MAGIC &&
      buf.readUInt32LE(4) === VERSION &&
      buf.readUInt32LE(8) === chunkBytes &&
      buf.readUInt32LE(12) === chunks &&
      crc32c(buf.subarray(HEADER_BYTES)) === buf.readUInt32LE(16);
    if (!ok) throw new FerryError('STAGING_CORRUPT', `the dirty-region bitmap ${file} is damaged: the mirror needs a full sync`);
    return new DirtyMap(file, chunkBytes, chunks, new Uint8Array(buf.subarray(HEADER_BYTES)));
  }

  get dirtyChunks(): number {
    return this.count;
  }

  get dirtyBytes(): number {
    return this.count * this.chunkBytes;
  }

  has(chunk: number): boolean {
    return (this.bits[chunk >> 3]! & (1 << (chunk & 7))) !== 0;
  }

  /** Marks the chunks of a byte range; true when a bit was newly set (persist before acknowledging). */
  mark(offset: number, length: number): boolean {
    let changed = false;
    forEachChunk(offset, length, this.chunkBytes, (c) => {
      if (c >= this.chunks || this.has(c)) return;
      this.bits[c >> 3]! |= 1 << (c & 7);
      this.count++;
      changed = true;
    });
    if (changed) this.version++;
    return changed;
  }

  markChunk(chunk: number): void {
    this.mark(chunk * this.chunkBytes, 1);
  }

  clear(chunk: number): void {
    if (!this.has(chunk)) return;
    this.bits[chunk >> 3]! &= ~(1 << (chunk & 7));
    this.count--;
    this.version++;
  }

  /** True when every change is on disk. */
  get clean(): boolean {
    return this.persistedVersion === this.version;
  }

  /** Makes the current bits durable. Concurrent calls share writes; each resolves once its state is on disk. */
  persist(): Promise<void> {
    if (this.persisting) {
      this.again = true;
      return this.persisting.then(() => (this.clean ? undefined : this.persist()));
    }
    const run = async (): Promise<void> => {
      do {
        this.again = false;
        const v = this.version;
        await writeAtomically(this.file, this.encode());
        this.persistedVersion = v;
      } while (this.again && !this.clean);
    };
    this.persisting = run().finally(() => (this.persisting = null));
    return this.persisting;
  }

  private encode(): Buffer {
    const out = Buffer.alloc(HEADER_BYTES + this.bits.length);
    out.writeUInt32LE(MAGIC, 0);
    out.writeUInt32LE(VERSION, 4);
    out.writeUInt32LE(this.chunkBytes, 8);
    out.writeUInt32LE(this.chunks, 12);
    Buffer.from(this.bits.buffer, this.bits.byteOffset, this.bits.byteLength).copy(out, HEADER_BYTES);
    out.writeUInt32LE(crc32c(out.subarray(HEADER_BYTES)), 16);
    return out;
  }

  /** The file goes (the resync is complete). */
  remove(): void {
    fs.rmSync(this.file, { force: true });
    syncDir(path.dirname(this.file));
  }
}

async function writeAtomically(file: string, data: Buffer): Promise<void> {
  const tmp = `${file}.tmp`;
  const fh = await fs.promises.open(tmp, 'w', 0o600);
  try {
    await fh.write(data, 0, data.length, 0);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fs.promises.rename(tmp, file);
  const dir = await fs.promises.open(path.dirname(file), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

function syncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
