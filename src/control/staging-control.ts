// The control layer's management of staging areas: attach (create and preallocate the
// files, or take a block device, format, record in metadata, switch the disk's data
// path), show, detach (drain to the disk first), repair (rebuild a failed copy while
// writes go on) and the way out of a staging area with no copy left (detach by force:
// the disk is served without it, and what it held that was not on the disk is reported
// lost). Every refusal happens before anything is created or changed.
//
//   staging area state        | detach        | detach --force        | repair              | disk remove
//   --------------------------|---------------|-----------------------|---------------------|-------------------
//   healthy / degraded        | drain, detach | refused (BAD_REQUEST) | rebuild failed copy | refused: detach first
//   lost (no copy left)       | STAGING_FAILED| discard, report lost  | STAGING_FAILED      | discards it, removes
//   unopenable at start       | DISK_UNAVAIL. | discard, lost unknown | DISK_UNAVAILABLE    | discards it, removes
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { FerryError, fromSystemError } from '../errors.js';
import { BlockDevice } from '../disk/block-device.js';
import type { Store } from '../disk/store.js';
import { sizeBytesMax } from '../disk/size.js';
import { Journal, STAGING_BYTES_MIN, type JournalStats } from '../journal/journal.js';
import { PRIMARY_CONSUMER } from '../volume/committer.js';
import type { Volume } from '../volume/volume.js';
import { forgetStaging, lostStagingAdvice, syncDirectory, type DiskRegistry } from './disk-registry.js';
import { assertPathFree, resolveTargetPath } from './path-guard.js';
import { REPLICA_STAGING_DIR } from './replica-control.js';
import type { DiskRow, MetadataStore, StagingRow } from './store.js';

export interface StagingInfo extends JournalStats {
  disk: string;
  path: string;
  copyPath: string | null;
  size: number;
  degraded: boolean;
  overlayExtents: number;
  committerError: string | null;
  /** No copy is left: writes fail; `staging detach --force` brings the disk back without it. */
  failed: boolean;
  /** Acknowledged records not yet applied to the disk (lost if the staging area is discarded). */
  unappliedRecords: number;
  /** Writes are waiting for space in the staging area (it is full: the primary or a mirror is behind). */
  waitingForSpace: boolean;
}

/** What `staging detach --force` did: the staging area is gone, the disk served without it. */
export interface StagingDiscardInfo {
  disk: string;
  path: string;
  copyPath: string | null;
  size: number;
  /** Acknowledged writes that were not on the disk and are lost; null when the staging area could not be read to count them. */
  unappliedRecords: number | null;
  message: string;
}

const zeroChunkBytes = 8 * 1024 * 1024;

export class StagingControl {
  constructor(
    private readonly store: MetadataStore,
    private readonly disks: DiskRegistry,
    private readonly dataDir: string,
    private readonly log: Logger,
    /** The check each write of a disk's staging area passes first (dr-control's divergence rule), if any. */
    private readonly beforeWrite: (disk: string) => (() => void) | null = () => null,
  ) {}

  /** Opens the staging area of a disk at daemon start (recovery and replay happen here). */
  async openAtStart(row: DiskRow, volume: Volume): Promise<void> {
    const s = this.store.staging(row.name);
    if (!s) return;
    const stores: Store[] = [];
    const paths = [s.path, ...(s.copy_path ? [s.copy_path] : [])];
    for (const p of paths) {
      try {
        stores.push(BlockDevice.open(p));
      } catch (err) {
        if (stores.length === 0 && p === paths[paths.length - 1]) throw err;
        this.log.error({ disk: row.name, copy: p, err: (err as Error).message }, 'staging copy missing at start: degraded; run `ferry staging repair`');
        stores.push(new MissingStore(p, s.size));
      }
    }
    let staged;
    try {
      staged = await volume.attachStaging(stores, this.log.child({ disk: row.name }), this.beforeWrite(row.name), this.regionsOf(row.name));
    } catch (err) {
      await Promise.all(stores.map((x) => x.close().catch(() => undefined)));
      throw err;
    }
    const r = staged.journal.recovery;
    this.log.info({ disk: row.name, records: r.records, bytes: r.payloadBytes, end: r.end, rewritten: r.rewrittenRecords }, 'staging area recovered and replayed to the primary');
  }

  /**
   * The bases of the disks that write through the staging area of `name`: a group's members
   * (ascending), else null (one disk). Read from the rows: at start the group's staging area is
   * opened before the registry lists the group.
   */
  private regionsOf(name: string): number[] | null {
    const members = this.disks.groups.members(name);
    return members.length > 0 ? members.map((m) => m.base).sort((a, b) => a - b) : null;
  }

  private onlineVolume(name: string): { row: DiskRow; volume: Volume } {
    const e = this.disks.entry(name);
    if (!e.volume) {
      const why = this.disks.get(name, { groups: true }).error;
      throw new FerryError('DISK_UNAVAILABLE', `disk '${name}' is unavailable${why ? `: ${why}` : ''}`);
    }
    return { row: e.row, volume: e.volume };
  }

  /**
   * Validates a staging path: absolute, allowed (path-guard.ts), unused, not the disk; returns
   * its real path and whether it is a block device. `ownPath`: the path in the data directory
   * Ferry chose itself (a replica's staging area), the one place there a staging area may be.
   */
  private checkPath(p: unknown, what: string, diskPath: string, ownPath: string | null = null): { real: string; block: boolean } {
    const { real, stat } = resolveTargetPath(p, what);
    if (real === diskPath) throw new FerryError('PATH_IN_USE', `${real} is the disk itself`);
    assertPathFree(this.store, this.dataDir, real, ownPath);
    if (stat && !stat.isBlockDevice()) throw new FerryError('PATH_IN_USE', `${real} already exists; give a new file path (Ferry creates and preallocates it) or a block device`);
    return { real, block: stat !== null };
  }

  /** firstSeq: a replica's staging area numbers records as the primary site does (see replica-control.ts). */
  async attach(req: { disk: string; path: string; size?: number; copy?: string; firstSeq?: number }): Promise<StagingInfo> {
    const { row, volume } = this.onlineVolume(req.disk);
    const member = this.disks.groups.groupOf(req.disk);
    if (member) throw new FerryError('DISK_IN_GROUP', `disk '${req.disk}' is a member of consistency group '${member.grp}': its writes go through the group's staging area`);
    if (this.store.staging(req.disk)) throw new FerryError('STAGING_EXISTS', `disk '${req.disk}' already has a staging area`);
    if (volume.readOnly) throw new FerryError('READ_ONLY', `disk '${req.disk}' is read-only; a staging area stages writes`);
    // Only ReplicaControl gives firstSeq (the API never does): its staging area is in the data directory.
    const own = req.firstSeq !== undefined ? path.join(fs.realpathSync(this.dataDir), REPLICA_STAGING_DIR, `${req.disk}.stg`) : null;
    const main = this.checkPath(req.path, 'staging path', row.path, own);
    const copy = req.copy !== undefined ? this.checkPath(req.copy, 'staging copy path', row.path) : null;
    if (copy && (copy.real === main.real || sameBlockDevice(copy.real, main.real))) throw new FerryError('PATH_IN_USE', 'the staging copy must be on a different path (and device) than the staging area');
    const deviceSizes = [main, ...(copy ? [copy] : [])].filter((x) => x.block).map((x) => deviceSize(x.real));
    let size = req.size ?? (deviceSizes.length ? Math.min(...deviceSizes) : NaN);
    if (!Number.isFinite(size)) throw new FerryError('INVALID_SIZE', 'the staging area is a new file: give its size (--staging-size with mirror create, --size with staging attach; stagingSize or size in the API)');
    if (!Number.isSafeInteger(size) || size > sizeBytesMax) throw new FerryError('INVALID_SIZE', `staging size ${size} is not valid`);
    if (size < STAGING_BYTES_MIN) throw new FerryError('STAGING_TOO_SMALL', `a staging area needs at least ${STAGING_BYTES_MIN} bytes (64MiB); ${size} is too small`);
    size = Math.floor(size / 4096) * 4096;
    for (const d of deviceSizes) if (d < size) throw new FerryError('STAGING_TOO_SMALL', `a block device for the staging area holds ${d} bytes, less than ${size}`);

    const created: string[] = [];
    const stores: Store[] = [];
    try {
      for (const target of [main, ...(copy ? [copy] : [])]) {
        if (!target.block) {
          await createPreallocated(target.real, size);
          created.push(target.real);
        }
        stores.push(BlockDevice.open(target.real));
      }
      await Journal.format(stores, req.disk, PRIMARY_CONSUMER, req.firstSeq ?? 1);
      const srow: StagingRow = {
        disk: req.disk,
        path: main.real,
        copy_path: copy?.real ?? null,
        size,
        created_file: main.block ? 0 : 1,
        created_copy: copy && !copy.block ? 1 : 0,
        created_at: Date.now(),
      };
      this.store.insertStaging(srow);
      try {
        await volume.attachStaging(stores, this.log.child({ disk: req.disk }), this.beforeWrite(req.disk), this.regionsOf(req.disk));
      } catch (err) {
        this.store.deleteStaging(req.disk);
        throw err;
      }
    } catch (err) {
      await Promise.all(stores.map((s) => s.close().catch(() => undefined)));
      for (const f of created) fs.rmSync(f, { force: true });
      throw err instanceof FerryError ? err : fromSystemError(err, 'attach staging area');
    }
    this.log.info({ disk: req.disk, path: main.real, copy: copy?.real, size }, 'staging area attached');
    return this.show(req.disk);
  }

  show(disk: string): StagingInfo {
    const { volume } = this.onlineVolume(disk);
    const s = this.store.staging(disk);
    const staged = volume.staging;
    if (!s || !staged) throw new FerryError('NO_STAGING', `disk '${disk}' has no staging area`);
    const stats = staged.journal.stats();
    return {
      disk,
      path: s.path,
      copyPath: s.copy_path,
      size: s.size,
      ...stats,
      degraded: stats.copies.some((c) => !c.healthy),
      overlayExtents: staged.overlay.size,
      committerError: staged.committer.lastError,
      failed: staged.failure !== null,
      unappliedRecords: Math.max(0, staged.journal.writtenSeq - staged.committer.nextSeq + 1),
      waitingForSpace: staged.journal.hasWaitersForSpace,
    };
  }

  /** A staging area with no copy left cannot be drained, repaired or rebuilt: the refusal says what can be done. */
  private refuseLost(disk: string, what: string): void {
    const failure = this.disks.entry(disk).volume?.staging?.failure;
    if (failure) throw new FerryError('STAGING_FAILED', `cannot ${what}: the staging area of disk '${disk}' has no copy left (${failure.message}); ${lostStagingAdvice(disk)}`);
  }

  /** Applies every staged write to the disk, then detaches and deletes the files Ferry created. */
  async detach(disk: string, opts: { replica?: boolean } = {}): Promise<StagingInfo> {
    const info = this.show(disk);
    if (this.store.replica(disk) && !opts.replica) throw new FerryError('DISK_BUSY', `disk '${disk}' is a replica: its staging area receives the primary site's records; remove the mirror at the primary site`);
    if (this.store.mirror(disk)) throw new FerryError('DISK_BUSY', `disk '${disk}' has a mirror, which needs its staging area; remove the mirror first`);
    this.refuseLost(disk, 'apply the staged writes to the disk');
    const { volume } = this.onlineVolume(disk);
    const s = this.store.staging(disk)!;
    await volume.detachStaging();
    this.forget(disk);
    this.log.info({ disk }, 'staging area detached: every staged write is on the disk');
    return { ...info, usedBytes: 0 };
  }

  /**
   * Detaches a replica's staging area WITHOUT applying what it holds (a replica falling back
   * to its last consistent image: the records belong to the resync it abandons). Also when
   * the staging area was never opened (that fallback finishing at daemon start).
   */
  async discard(disk: string): Promise<void> {
    if (!this.store.replica(disk)) throw new FerryError('BAD_REQUEST', `only a replica's staging area is ever discarded; '${disk}' is not a replica`);
    const volume = this.disks.entry(disk).volume;
    if (volume?.staging) await volume.discardStaging();
    if (this.store.staging(disk)) this.forget(disk);
    this.log.warn({ disk }, 'replica staging area discarded: its records were not applied');
  }

  /**
   * The way out of a staging area with no copy left (lost while running, or unopenable at
   * start): detaches it WITHOUT applying it and serves the disk without it. Reports how many
   * acknowledged writes were not on the disk (lost), or null when the staging area could not
   * be read to count them. Refused, changing nothing, for a staging area that still has a
   * healthy copy (detach drains it), a mirror or a replica, or a disk that cannot be opened.
   */
  async forceDetach(disk: string): Promise<StagingDiscardInfo> {
    const e = this.disks.entry(disk);
    const s = this.store.staging(disk);
    if (!s) throw new FerryError('NO_STAGING', `disk '${disk}' has no staging area`);
    if (this.store.replica(disk)) throw new FerryError('DISK_BUSY', `disk '${disk}' is a replica: its staging area receives the primary site's records; remove the mirror at the primary site`);
    if (this.store.mirror(disk)) throw new FerryError('DISK_BUSY', `disk '${disk}' has a mirror, which needs its staging area; remove the mirror first`);
    let unapplied: number | null;
    if (e.volume?.staging) {
      const staged = e.volume.staging;
      if (!staged.failure) throw new FerryError('BAD_REQUEST', `the staging area of disk '${disk}' still has a healthy copy: \`ferry staging detach ${disk}\` applies every staged write first (and \`ferry staging repair\` rebuilds a failed copy)`);
      unapplied = Math.max(0, staged.journal.writtenSeq - staged.committer.nextSeq + 1);
      await e.volume.discardStaging();
      this.forget(disk);
    } else if (e.volume) {
      // A row without an open staging area on an online disk does not happen; drop the row.
      unapplied = null;
      this.forget(disk);
    } else {
      unapplied = null;
      await this.disks.reopen(disk, () => this.forget(disk));
    }
    const message =
      unapplied === null
        ? 'the staging area could not be read: acknowledged writes it held that were not yet on the disk (at most those since its last checkpoint) are lost'
        : unapplied === 0
          ? 'every acknowledged write was already on the disk: nothing is lost'
          : `${unapplied} acknowledged write(s) were not yet on the disk and are lost; the disk holds the data as it was before them`;
    this.log.warn({ disk, unappliedRecords: unapplied }, `failed staging area detached by force: ${message}`);
    return { disk, path: s.path, copyPath: s.copy_path, size: s.size, unappliedRecords: unapplied, message };
  }

  /** Deletes the staging row, then the files Ferry created. */
  private forget(disk: string): void {
    forgetStaging(this.store, disk);
  }

  /** Rebuilds every failed copy (a new preallocated file at the same path, or the block device reopened). */
  async repair(disk: string): Promise<StagingInfo> {
    const info = this.show(disk);
    const s = this.store.staging(disk)!;
    const journal = this.onlineVolume(disk).volume.staging!.journal;
    const failed = info.copies.filter((c) => !c.healthy && !c.rebuilding);
    if (failed.length === 0) throw new FerryError('BAD_REQUEST', `the staging area of disk '${disk}' has no failed copy`);
    // A copy is rebuilt from a healthy one: with none left there is nothing to rebuild from (and nothing is created).
    this.refuseLost(disk, 'repair');
    for (const c of failed) {
      const mine = c.path === s.path ? s.created_file === 1 : s.created_copy === 1;
      if (mine) {
        fs.rmSync(c.path, { force: true });
        await createPreallocated(c.path, s.size);
      }
      try {
        await journal.rebuildCopy(journal.copyIndexOf(c.path), BlockDevice.open(c.path));
      } catch (err) {
        // The failed copy's file was Ferry's and gone already; the new one must not look like a valid copy later.
        if (mine && !journal.stats().copies.some((x) => x.path === c.path && (x.healthy || x.rebuilding))) fs.rmSync(c.path, { force: true });
        throw err;
      }
    }
    return this.show(disk);
  }
}

/** Two device nodes of one block device (realpath cannot tell): two "copies" there would be one. */
function sameBlockDevice(a: string, b: string): boolean {
  try {
    const x = fs.statSync(a);
    const y = fs.statSync(b);
    return x.isBlockDevice() && y.isBlockDevice() && x.rdev === y.rdev;
  } catch {
    return false;
  }
}

function deviceSize(p: string): number {
  const d = BlockDevice.open(p, { readOnly: true });
  const size = d.size;
  void d.close();
  return size;
}

/** Creates a new file and writes it full of zeroes (real allocation: later syncs touch no extent metadata). */
async function createPreallocated(file: string, size: number): Promise<void> {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  } catch (err) {
    throw fromSystemError(err, `create ${file}`);
  }
  try {
    const zero = Buffer.alloc(zeroChunkBytes);
    for (let at = 0; at < size; at += zero.length) {
      const n = Math.min(zero.length, size - at);
      await new Promise<void>((resolve, reject) => fs.write(fd, zero, 0, n, at, (err) => (err ? reject(err) : resolve())));
    }
    fs.fsyncSync(fd);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(file, { force: true });
    throw fromSystemError(err, `preallocate ${file}`);
  }
  fs.closeSync(fd);
  syncDirectory(path.dirname(file));
}

/** Stands in for a staging copy whose file is gone at start: every call fails, so the journal marks it failed. */
class MissingStore implements Store {
  constructor(
    readonly path: string,
    readonly size: number,
  ) {}
  private fail(): Promise<never> {
    return Promise.reject(new FerryError('PATH_NOT_FOUND', `${this.path} is missing`));
  }
  read(): Promise<void> {
    return this.fail();
  }
  write(): Promise<void> {
    return this.fail();
  }
  sync(): Promise<void> {
    return this.fail();
  }
  stillAtPath(): boolean {
    return false;
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}
