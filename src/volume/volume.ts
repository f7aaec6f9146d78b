// The volume layer owns a disk's data path: what an NBD request turns into. A Volume
// is the stable object clients hold for the life of their connection; underneath it
// the primary device may later gain a staging journal and overlay, or change place in
// a swap, without the connection noticing. Today a volume passes I/O straight through
// to its primary device, adding durability semantics (FUA), read-only enforcement,
// a count of attached clients, and I/O statistics.
import { FerryError } from '../errors.js';
import type { BlockDevice, Extent } from '../disk/block-device.js';

export interface VolumeStats {
  readOps: number;
  readBytes: number;
  writeOps: number;
  writeBytes: number;
  flushOps: number;
  trimOps: number;
  zeroOps: number;
  errors: number;
}

export class Volume {
  readonly name: string;
  readonly readOnly: boolean;
  readonly stats: VolumeStats = { readOps: 0, readBytes: 0, writeOps: 0, writeBytes: 0, flushOps: 0, trimOps: 0, zeroOps: 0, errors: 0 };
  private readonly device: BlockDevice;
  private clients = 0;

  constructor(name: string, device: BlockDevice, readOnly: boolean) {
    this.name = name;
    this.device = device;
    this.readOnly = readOnly || device.readOnly;
  }

  get size(): number {
    return this.device.size;
  }

  get path(): string {
    return this.device.path;
  }

  /** A flush on any connection makes every completed write durable: one file, one fdatasync. */
  get canMultiConn(): boolean {
    return true;
  }

  /** Zeroing without writing buffers is possible on files (fallocate) and on devices (BLKZEROOUT). */
  get canFastZero(): boolean {
    return this.device.kind === 'file';
  }

  get attachedClients(): number {
    return this.clients;
  }

  attach(): () => void {
    this.clients++;
    let released = false;
    return () => {
      if (!released) {
        released = true;
        this.clients--;
      }
    };
  }

  private writable(): void {
    if (this.readOnly) throw new FerryError('READ_ONLY', `disk ${this.name} is read-only`);
  }

  async read(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    await this.device.read(buf, bufOffset, length, offset);
    this.stats.readOps++;
    this.stats.readBytes += length;
  }

  async write(buf: Buffer, bufOffset: number, length: number, offset: number, fua: boolean): Promise<void> {
    this.writable();
    await this.device.write(buf, bufOffset, length, offset);
    if (fua) await this.device.sync();
    this.stats.writeOps++;
    this.stats.writeBytes += length;
  }

  async flush(): Promise<void> {
    this.stats.flushOps++;
    await this.device.sync();
  }

  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    this.writable();
    await this.device.trim(offset, length);
    if (fua) await this.device.sync();
    this.stats.trimOps++;
  }

  async zero(offset: number, length: number, mayDeallocate: boolean, fastOnly: boolean, fua: boolean): Promise<void> {
    this.writable();
    await this.device.zero(offset, length, mayDeallocate, fastOnly);
    if (fua) await this.device.sync();
    this.stats.zeroOps++;
  }

  extents(offset: number, length: number, extentsMax: number): Extent[] {
    return this.device.extents(offset, length, extentsMax);
  }

  prefetch(offset: number, length: number): void {
    this.device.prefetch(offset, length);
  }

  close(): Promise<void> {
    return this.device.close();
  }
}
