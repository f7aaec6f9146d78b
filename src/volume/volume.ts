// The volume layer owns a disk's data path: what an NBD request turns into. A Volume
// is the stable object clients hold for the life of their connection; underneath it
// the disk passes I/O straight to its primary device, or, with a staging area, through
// the journal and read overlay (staged-path.ts). The path can change under open
// connections: the I/O gate holds new requests while in-flight ones finish, so a
// switch never fails a request. The volume also enforces read-only, counts attached
// clients and keeps I/O statistics. READ and WRITE also have callback forms for the NBD
// server (readTo, writeFrom): on an unstaged disk they go to the device with no promise.
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import { BlockDevice, type Extent } from '../disk/block-device.js';
import type { DiskStore, Store } from '../disk/store.js';
import { IoGate } from './io-gate.js';
import { StagedPath } from './staged-path.js';

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
  private readonly readOnlyBase: boolean;
  /** Held read-only while the disk is a mirror site's replica: only the replication stream writes it. */
  private replicaHold = false;
  /** Why the disk is fenced (its peer site was promoted past it: control/dr-control.ts), else null. */
  private fenceReason: string | null = null;
  /** Marks the regions a client write changes, durably, before it is taken (replication/divergence-map.ts), else null. */
  private changeTracker: ((offset: number, length: number) => Promise<void> | null) | null = null;
  readonly stats: VolumeStats = { readOps: 0, readBytes: 0, writeOps: 0, writeBytes: 0, flushOps: 0, trimOps: 0, zeroOps: 0, errors: 0 };
  private primary: DiskStore;
  private staged: StagedPath | null = null;
  /** Fixed for the life of the volume: a swap onto a larger device does not change what clients see. */
  private sizeBytes: number;
  private readonly gate = new IoGate();
  private clients = 0;

  constructor(name: string, primary: DiskStore, readOnly: boolean) {
    this.name = name;
    this.primary = primary;
    this.readOnlyBase = readOnly; // the primary's own flag is read each time (readOnly): a member's group may be held only for now
    this.sizeBytes = primary.size;
  }

  /** Also the primary's own flag, read each time: a group member's window is read-only while its group is. */
  get readOnly(): boolean {
    return this.readOnlyBase || this.replicaHold || this.primary.readOnly;
  }

  /** A replica refuses client writes (new connections see READ_ONLY) until it is released. */
  setReplicaHold(on: boolean): void {
    this.replicaHold = on;
  }

  /** Fenced: client writes, zeroes and trims are refused with FENCED (reads go on); null lifts it. */
  setFence(reason: string | null): void {
    this.fenceReason = reason;
  }

  /** Every client write, zero and trim waits for `tracker` (the regions marked) before it is taken; null removes it. */
  trackChanges(tracker: ((offset: number, length: number) => Promise<void> | null) | null): void {
    this.changeTracker = tracker;
  }

  private tracked(offset: number, length: number): Promise<void> | null {
    return this.changeTracker?.(offset, length) ?? null;
  }

  get fenced(): string | null {
    return this.fenceReason;
  }

  get size(): number {
    return this.sizeBytes;
  }

  /**
   * Before the volume is served: keeps the disk at `size` when its device is larger. After a
   * swap onto a larger mirror the disk keeps its size across restarts too, and the mirror (the
   * old, smaller device) can still hold every write.
   */
  keepSize(size: number): void {
    if (size > 0 && size < this.sizeBytes) this.sizeBytes = size;
  }

  get primaryStore(): DiskStore {
    return this.primary;
  }

  get path(): string {
    return this.primary.path;
  }

  get staging(): StagedPath | null {
    return this.staged;
  }

  /** A flush on any connection makes every completed write durable: one file (or one journal), one sync. */
  get canMultiConn(): boolean {
    return true;
  }

  /** Zeroing without writing buffers: files (fallocate), and staged disks (a header-only record). */
  get canFastZero(): boolean {
    return this.staged !== null || this.primary.kind === 'file';
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

  /** Runs one request inside the I/O gate. */
  private async io<T>(op: () => Promise<T>): Promise<T> {
    let wait = this.gate.enter();
    while (wait) {
      await wait;
      wait = this.gate.enter();
    }
    try {
      return await op();
    } catch (err) {
      this.stats.errors++;
      throw err;
    } finally {
      this.gate.leave();
    }
  }

  private writable(): void {
    if (this.readOnly) throw new FerryError('READ_ONLY', `disk ${this.name} is read-only`);
    if (this.fenceReason !== null) throw new FerryError('FENCED', `disk ${this.name} is fenced: ${this.fenceReason}`);
  }

  read(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    return this.io(async () => {
      await (this.staged ? this.staged.read(buf, bufOffset, length, offset) : this.primary.read(buf, bufOffset, length, offset));
      this.stats.readOps++;
      this.stats.readBytes += length;
    });
  }

  /**
   * read() with a callback: `done` is called exactly once, possibly synchronously (a read
   * served from the page cache). Unstaged disks on a BlockDevice with the gate open take
   * the direct path; everything else goes through read().
   */
  readTo(buf: Buffer, bufOffset: number, length: number, offset: number, done: (err: unknown) => void): void {
    const dev = this.direct();
    if (dev === null) {
      this.read(buf, bufOffset, length, offset).then(() => done(null), done);
      return;
    }
    this.gate.enter();
    dev.readTo(buf, bufOffset, length, offset, (err) => {
      this.gate.leave();
      if (err) this.stats.errors++;
      else {
        this.stats.readOps++;
        this.stats.readBytes += length;
      }
      done(err);
    });
  }

  /**
   * write() with a callback (see readTo); `done` may be called synchronously. The data is
   * `length` bytes of `data` from offset 0 (a payload buffer of the NBD receive path).
   */
  writeFrom(data: Buffer, length: number, offset: number, fua: boolean, done: (err: unknown) => void): void {
    const primary = this.primary;
    // Straight to the primary device, or, for a group member's window, to the group's volume
    // (its gate, fence, staging area): only with this volume's own checks all clear.
    const plain = !this.readOnly && this.fenceReason === null && this.changeTracker === null && this.staged === null && this.gate.isOpen;
    if (!plain || !(primary instanceof BlockDevice || primary.forwardWrite)) {
      this.write(data, 0, length, offset, fua).then(() => done(null), done);
      return;
    }
    this.gate.enter();
    const finish = (err: unknown): void => {
      this.gate.leave();
      if (err) this.stats.errors++;
      else {
        this.stats.writeOps++;
        this.stats.writeBytes += length;
      }
      done(err);
    };
    if (!(primary instanceof BlockDevice)) return primary.forwardWrite!(data, length, offset, fua, finish);
    const written = (err: Error | null): void => {
      if (err || !fua) return finish(err);
      primary.sync().then(() => finish(null), finish);
    };
    primary.writeFrom(data, 0, length, offset, written);
  }

  /** The primary device when a request may go straight to it now: no staging area, gate open. */
  private direct(): BlockDevice | null {
    return this.staged === null && this.primary instanceof BlockDevice && this.gate.isOpen ? this.primary : null;
  }

  /** A read by Ferry itself (mirror sync, verify): same data path, not counted as client I/O. */
  readInternal(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    return this.io(() => (this.staged ? this.staged.read(buf, bufOffset, length, offset) : this.primary.read(buf, bufOffset, length, offset)));
  }

  write(buf: Buffer, bufOffset: number, length: number, offset: number, fua: boolean): Promise<void> {
    return this.io(async () => {
      this.writable();
      await this.tracked(offset, length);
      if (this.staged) await this.staged.write(buf, bufOffset, length, offset, fua);
      else if (fua && this.primary.writeFua) await this.primary.writeFua(buf, bufOffset, length, offset);
      else {
        await this.primary.write(buf, bufOffset, length, offset);
        if (fua) await this.primary.sync();
      }
      this.stats.writeOps++;
      this.stats.writeBytes += length;
    });
  }

  flush(): Promise<void> {
    return this.io(async () => {
      this.stats.flushOps++;
      await (this.staged ? this.staged.flush() : this.primary.sync());
    });
  }

  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.io(async () => {
      this.writable();
      await this.tracked(offset, length);
      if (this.staged) await this.staged.trim(offset, length, fua);
      else {
        await this.primary.trim(offset, length);
        if (fua) await this.primary.sync();
      }
      this.stats.trimOps++;
    });
  }

  zero(offset: number, length: number, mayDeallocate: boolean, fastOnly: boolean, fua: boolean): Promise<void> {
    return this.io(async () => {
      this.writable();
      await this.tracked(offset, length);
      if (this.staged) await this.staged.zero(offset, length, mayDeallocate, fua);
      else {
        await this.primary.zero(offset, length, mayDeallocate, fastOnly);
        if (fua) await this.primary.sync();
      }
      this.stats.zeroOps++;
    });
  }

  extents(offset: number, length: number, extentsMax: number): Extent[] {
    return this.staged ? this.staged.extents(offset, length, extentsMax) : this.primary.extents(offset, length, extentsMax);
  }

  prefetch(offset: number, length: number): void {
    this.primary.prefetch(offset, length);
  }

  /**
   * Puts the staging area on `stores` in front of the primary: opens (recovers) it, replays it
   * to the primary (what a full or failing primary cannot take yet is served from the staging
   * area meanwhile), and serves through it, with requests held at the gate while the path switches.
   */
  /** `regions`: the bases of the disks that write through it, when several do (a consistency group's members). */
  async attachStaging(stores: Store[], log: Logger, beforeWrite: (() => void) | null = null, regions: readonly number[] | null = null): Promise<StagedPath> {
    if (this.staged) throw new FerryError('STAGING_EXISTS', `disk ${this.name} already has a staging area`);
    const staged = await StagedPath.open(stores, this.primary, log, undefined, beforeWrite, regions);
    await this.gate.close();
    try {
      await staged.start();
      this.staged = staged;
      return staged;
    } catch (err) {
      // The staging area failed under the replay: nothing of it may keep running (its committer's retries).
      await staged.abandon().catch(() => undefined);
      throw err;
    } finally {
      this.gate.open();
    }
  }

  /** Drains the staging area to the primary and returns to the direct path. */
  async detachStaging(): Promise<void> {
    const staged = this.staged;
    if (!staged) throw new FerryError('NO_STAGING', `disk ${this.name} has no staging area`);
    await this.gate.close();
    try {
      await staged.drain();
      await staged.close();
      this.staged = null;
    } finally {
      this.gate.open();
    }
  }

  /** Drops the staging area without applying it: what it held is lost on purpose (see ReplicaControl.promote). */
  async discardStaging(): Promise<void> {
    const staged = this.staged;
    if (!staged) throw new FerryError('NO_STAGING', `disk ${this.name} has no staging area`);
    await this.gate.close();
    try {
      await staged.abandon();
      this.staged = null;
    } finally {
      this.gate.open();
    }
  }

  /**
   * Runs `fn` with every request held at the gate and none in flight; returns how long
   * requests were held. Used to switch roles (swap) under open connections.
   */
  async exclusive(fn: () => Promise<void>): Promise<number> {
    const started = process.hrtime.bigint();
    await this.gate.close();
    try {
      await fn();
    } finally {
      this.gate.open();
    }
    return Number(process.hrtime.bigint() - started) / 1e6;
  }

  /**
   * Holds every new request at the gate once those in flight finished; the returned function
   * lets them through again. For a change that spans several volumes (a consistency group's
   * membership: each member is held while the group's data path is rebuilt under it).
   */
  async hold(): Promise<() => void> {
    await this.gate.close();
    let open = true;
    return () => {
      if (open) this.gate.open();
      open = false;
    };
  }

  /** Makes `store` the primary (inside exclusive(), after draining); returns the old one. */
  replacePrimary(store: DiskStore): DiskStore {
    if (store.size < this.size) throw new FerryError('INVALID_SIZE', `${store.path} is smaller than disk ${this.name}`);
    const old = this.primary;
    this.primary = store;
    this.staged?.setPrimary(store);
    return old;
  }

  /** Writes waiting for staging space are refused with `err` from now on (at shutdown: never acknowledged). */
  refuseWaitingWrites(err: FerryError): void {
    this.staged?.journal.refuseWaiting(err);
  }

  async close(): Promise<void> {
    await this.gate.close();
    try {
      if (this.staged) await this.staged.close();
      this.staged = null;
    } finally {
      await this.primary.close();
    }
  }
}
