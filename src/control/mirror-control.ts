// The control layer's management of mirrors: one creation process for every kind of
// target (today `local:PATH`), status, pause and resume, verify, remove, and the swap
// of roles. Every refusal happens before anything is created or changed. Crash
// safety of each step is in the order of operations; see docs/ARCHITECTURE.md, "Mirrors".
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { FerryError, fromSystemError } from '../errors.js';
import { BlockDevice } from '../disk/block-device.js';
import { Mirror, MIRROR_CONSUMER, type MirrorStatus, type VerifyReport } from '../mirror/mirror.js';
import type { SyncMode } from '../mirror/sync-engine.js';
import type { Volume } from '../volume/volume.js';
import { syncDirectory, type DiskRegistry } from './disk-registry.js';
import { assertPathFree, resolveTargetPath } from './path-guard.js';
import type { StagingControl } from './staging-control.js';
import type { DiskRow, MetadataStore, MirrorRow } from './store.js';

export interface CreateMirrorRequest {
  disk: string;
  to: string;
  staging?: string;
  stagingSize?: number;
  stagingCopy?: string;
  sync?: SyncMode;
}

export interface SwapReport {
  disk: string;
  primary: string;
  mirror: string;
  pauseMs: number;
}

export class MirrorControl {
  private readonly mirrors = new Map<string, Mirror>();

  constructor(
    private readonly store: MetadataStore,
    private readonly disks: DiskRegistry,
    private readonly staging: StagingControl,
    private readonly dataDir: string,
    private readonly log: Logger,
  ) {}

  /** At daemon start, after the staging area is open: reconcile the journal's consumers with the metadata, start the mirror. */
  async openAtStart(row: DiskRow, volume: Volume): Promise<void> {
    const journal = volume.staging?.journal;
    const m = this.store.mirror(row.name);
    if (m && volume.size > row.size) {
      // Swapped onto a larger mirror before this restart: the disk keeps the size its mirror (the old primary) holds.
      this.log.warn({ disk: row.name, size: row.size, device: volume.size }, 'mirrored disk keeps its recorded size; its device is larger');
      volume.keepSize(row.size);
    }
    if (!journal) return;
    if (!m) {
      // Created or removed halfway before a crash: a consumer without a mirror would hold the staging area forever.
      if (journal.hasConsumer(MIRROR_CONSUMER)) await journal.removeConsumer(MIRROR_CONSUMER);
      return;
    }
    if (!journal.hasConsumer(MIRROR_CONSUMER)) {
      await journal.addConsumer(MIRROR_CONSUMER);
      this.store.updateMirror(row.name, { sync_cursor: 0, sync_done: 0 });
      m.sync_cursor = 0;
      m.sync_done = 0;
    }
    let target: BlockDevice;
    try {
      target = BlockDevice.open(m.path);
    } catch (err) {
      // The disk itself is fine: serve it; the mirror waits for its target (records stay staged).
      this.log.error({ disk: row.name, target: m.target, err: (err as Error).message }, 'mirror target unavailable at start; the mirror is not running');
      return;
    }
    this.startMirror(m, volume, target);
  }

  private startMirror(m: MirrorRow, volume: Volume, target: BlockDevice): Mirror {
    const mirror = new Mirror({
      disk: m.disk,
      targetLabel: m.target,
      volume,
      target,
      syncMode: m.sync_mode,
      syncDone: m.sync_done === 1,
      syncCursor: m.sync_cursor,
      targetIsZero: m.target_zero === 1,
      paused: m.paused === 1,
      onSyncCheckpoint: (cursor, done) => this.store.updateMirror(m.disk, { sync_cursor: cursor, sync_done: done ? 1 : 0 }),
      log: this.log.child({ disk: m.disk, mirror: m.target }),
    });
    this.mirrors.set(m.disk, mirror);
    mirror.start();
    return mirror;
  }

  private mirror(disk: string): Mirror {
    this.disks.entry(disk);
    const m = this.mirrors.get(disk);
    if (!m) throw new FerryError('NO_MIRROR', `disk '${disk}' has no mirror`);
    return m;
  }

  /** Parses and checks a `local:PATH` target without changing anything. */
  private checkTarget(to: unknown, row: DiskRow, size: number): { real: string; exists: boolean } {
    if (typeof to !== 'string' || to.length === 0) throw new FerryError('INVALID_TARGET', 'give a target: local:PATH (or PEER:DISK for a remote mirror)');
    if (!to.startsWith('local:')) {
      if (/^[A-Za-z0-9][A-Za-z0-9._-]*:[A-Za-z0-9][A-Za-z0-9._-]*$/.test(to)) {
        throw new FerryError('NOT_SUPPORTED', `remote mirror targets (${to}) are not available in this version of ferryd; use local:PATH`);
      }
      throw new FerryError('INVALID_TARGET', `target '${to}' is neither local:PATH nor PEER:DISK`);
    }
    const p = to.slice('local:'.length);
    if (!path.isAbsolute(p)) throw new FerryError('INVALID_PATH', `mirror target path '${p}' must be absolute`);
    const { real, stat } = resolveTargetPath(p, 'mirror target');
    if (stat && !stat.isFile() && !stat.isBlockDevice()) throw new FerryError('INVALID_TARGET', `${real} is neither a regular file nor a block device`);
    const exists = stat !== null;
    if (real === row.path) throw new FerryError('PATH_IN_USE', `${real} is the disk itself`);
    assertPathFree(this.store, this.dataDir, real);
    if (exists) {
      const d = BlockDevice.open(real, { readOnly: true });
      const targetSize = d.size;
      void d.close();
      if (targetSize < size) throw new FerryError('TARGET_TOO_SMALL', `${real} holds ${targetSize} bytes; disk '${row.name}' needs ${size}`);
    }
    return { real, exists };
  }

  async create(req: CreateMirrorRequest): Promise<MirrorStatus> {
    const { row, volume } = this.disks.entry(req.disk);
    if (!volume) throw new FerryError('DISK_UNAVAILABLE', `disk '${req.disk}' is unavailable`);
    if (this.store.mirror(req.disk)) throw new FerryError('MIRROR_EXISTS', `disk '${req.disk}' already has a mirror`);
    if (volume.readOnly) throw new FerryError('READ_ONLY', `disk '${req.disk}' is read-only`);
    const mode: SyncMode = req.sync ?? 'full';
    const target = this.checkTarget(req.to, row, volume.size);
    const hasStaging = this.store.staging(req.disk) !== undefined;
    if (req.staging === undefined && (req.stagingSize !== undefined || req.stagingCopy !== undefined)) {
      throw new FerryError('BAD_REQUEST', '--staging-size and --staging-copy describe a staging area to attach: give --staging too');
    }
    if (hasStaging && req.staging !== undefined) throw new FerryError('STAGING_EXISTS', `disk '${req.disk}' already has a staging area; leave out --staging`);
    if (!hasStaging && req.staging === undefined) {
      throw new FerryError('NO_STAGING', `disk '${req.disk}' has no staging area: give --staging PATH --staging-size SIZE (every write to a mirrored disk goes through one)`);
    }
    if (mode === 'checksum' && !target.exists) throw new FerryError('BAD_REQUEST', '--sync=checksum compares with data already on the target; a new file holds none (use full)');
    if (!hasStaging) {
      // The staging area is created first: given the target's (new) path too, it would take it.
      for (const [p, what] of [[req.staging, 'staging area'], [req.stagingCopy, 'staging copy']] as const) {
        let real: string | null = null;
        try {
          real = typeof p === 'string' && path.isAbsolute(p) ? resolveTargetPath(p, what).real : null;
        } catch {
          real = null; // a bad staging path: attach() refuses it
        }
        if (real === target.real) throw new FerryError('PATH_IN_USE', `${real} cannot be both the mirror target and the ${what}`);
      }
      await this.staging.attach({ disk: req.disk, path: req.staging!, size: req.stagingSize, copy: req.stagingCopy });
    }

    let device: BlockDevice;
    let created = false;
    try {
      if (!target.exists) {
        const fd = fs.openSync(target.real, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
        created = true;
        fs.ftruncateSync(fd, volume.size);
        fs.fsyncSync(fd);
        fs.closeSync(fd);
        syncDirectory(path.dirname(target.real));
      }
      device = BlockDevice.open(target.real);
    } catch (err) {
      if (created) fs.rmSync(target.real, { force: true });
      // Nothing half-done: the staging area this request attached goes again.
      if (!hasStaging) await this.staging.detach(req.disk).catch((e) => this.log.error({ disk: req.disk, err: (e as Error).message }, 'could not detach the staging area of a failed mirror create'));
      throw fromSystemError(err, `mirror target ${target.real}`);
    }
    const m: MirrorRow = {
      disk: req.disk,
      target: `local:${target.real}`,
      path: target.real,
      created_file: created ? 1 : 0,
      sync_mode: mode,
      sync_cursor: 0,
      sync_done: 0,
      target_zero: created ? 1 : 0,
      paused: 0,
      created_at: Date.now(),
    };
    // Row first, then the consumer: a crash in between is repaired at start (openAtStart).
    this.store.insertMirror(m);
    await volume.staging!.journal.addConsumer(MIRROR_CONSUMER);
    this.startMirror(m, volume, device);
    this.log.info({ disk: req.disk, target: m.target, sync: mode }, 'mirror created; syncing');
    return this.mirror(req.disk).status();
  }

  status(disk?: string): MirrorStatus[] {
    if (disk !== undefined) return [this.mirror(disk).status()];
    return [...this.mirrors.values()].sort((a, b) => a.disk.localeCompare(b.disk)).map((m) => m.status());
  }

  pause(disk: string): MirrorStatus {
    const m = this.mirror(disk);
    m.pause();
    this.store.updateMirror(disk, { paused: 1 });
    return m.status();
  }

  resume(disk: string): MirrorStatus {
    const m = this.mirror(disk);
    m.resume();
    this.store.updateMirror(disk, { paused: 0 });
    return m.status();
  }

  verify(disk: string): Promise<VerifyReport> {
    return this.mirror(disk).verify();
  }

  /** Detaches the mirror: it is brought up to date first, so the copy left behind is whole and consistent. */
  async remove(disk: string, opts: { force?: boolean }): Promise<MirrorStatus> {
    const m = this.mirror(disk);
    const { volume } = this.disks.entry(disk);
    if (!m.isSynced && !opts.force) {
      throw new FerryError('MIRROR_NOT_IN_SYNC', `the mirror of '${disk}' is still syncing: its copy is incomplete; remove it with --force to abandon it`);
    }
    if (m.state !== 'paused') await m.drain();
    const before = m.status();
    await m.close();
    // Consumer first, then the row: a crash in between is repaired at start (openAtStart).
    await volume!.staging!.journal.removeConsumer(MIRROR_CONSUMER);
    this.store.deleteMirror(disk);
    this.mirrors.delete(disk);
    await m.targetStore.close();
    this.log.info({ disk, target: before.target, consistent: before.consistent }, 'mirror removed; its copy is no longer used by Ferry');
    return before;
  }

  /**
   * Exchanges the roles of disk and mirror: requests are held, the staging area is drained
   * to both, the metadata swaps the paths in one transaction, the data path switches, and
   * requests resume. Open NBD connections see no error.
   */
  async swap(disk: string): Promise<SwapReport> {
    const m = this.mirror(disk);
    const { volume } = this.disks.entry(disk);
    if (!volume?.staging) throw new FerryError('NO_STAGING', `disk '${disk}' has no staging area`);
    if (m.state !== 'in-sync') throw new FerryError('MIRROR_NOT_IN_SYNC', `the mirror of '${disk}' is ${m.state}; swap needs it in sync`);
    if (m.committer.lastError) throw new FerryError('MIRROR_NOT_IN_SYNC', `the mirror of '${disk}' is failing: ${m.committer.lastError}`);
    // Bring both close to the head first, so the pause only covers the last few records.
    await Promise.all([volume.staging.drain(), m.drain()]);
    const pauseMs = await volume.exclusive(async () => {
      await Promise.all([volume.staging!.drain(), m.drain()]);
      this.store.swapMirrorPaths(disk);
      const old = volume.replacePrimary(m.targetStore);
      m.retarget(old);
      this.disks.reloadRow(disk);
    });
    m.lastSwapPauseMs = pauseMs;
    const after = this.store.mirror(disk)!;
    this.log.info({ disk, primary: volume.primaryStore.path, mirror: after.path, pauseMs }, 'swapped primary and mirror');
    return { disk, primary: volume.primaryStore.path, mirror: after.path, pauseMs };
  }

  hasMirror(disk: string): boolean {
    return this.mirrors.has(disk);
  }

  async close(): Promise<void> {
    for (const m of this.mirrors.values()) {
      await m.close().catch(() => undefined);
      await m.targetStore.close().catch(() => undefined);
    }
    this.mirrors.clear();
  }
}
