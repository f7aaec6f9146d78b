// The control layer's management of replicas: the disks this site holds as the mirror of
// a disk at a peer site. A replica is a normal disk with a staging area whose records come
// from the replication link (src/replication/receiver.ts) instead of NBD clients; NBD
// clients may read it but not write it (the volume's replica hold) until the primary site
// removes the mirror, which releases it. A replica's staging area is formatted to start at
// the primary site's sequence number, so both sites number each record alike (R2).
// While a resync rewrites a replica that was consistent, an undo log keeps the image it had
// (src/replication/undo-log.ts), so `mirror promote` can always hand over a consistent disk
// if the primary site is lost: the newest image when in sync, the last consistent one when not.
import assert from 'node:assert';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import { STAGING_BYTES_MIN } from '../journal/journal.js';
import { MIRROR_CONSUMER } from '../volume/consumer.js';
import type { ReplicaHandle, ReplicaHost } from '../replication/receiver.js';
import { UndoGuardStore } from '../replication/undo-guard-store.js';
import { UndoLog, UndoState } from '../replication/undo-log.js';
import type { Volume } from '../volume/volume.js';
import type { MirrorStatus } from '../mirror/mirror.js';
import { replicaStatus } from './replica-status.js';
import type { DiskRegistry } from './disk-registry.js';
import { validateName } from '../names.js';
import type { StagingControl } from './staging-control.js';
import type { DiskRow, MetadataStore, ReplicaRow } from './store.js';
import type { DrControl } from './dr-control.js';
import { createGroupReplica, followMembership, groupMeta, removeCreatedReplica, type ReplicaGroupContext } from './replica-groups.js';

/** The staging area of a replica: as large as the primary site's, within these bounds. */
const replicaStagingBytesMax = 64 * 1024 * 1024 * 1024;
export const REPLICA_STAGING_DIR = 'replica-staging';

/** What `mirror promote` (or a release by the primary site) made of a replica. */
export interface PromoteReport {
  disk: string;
  /** newest: every record received was applied; rolled-back: the image from before the interrupted resync; as-is: no consistent image existed (forced). */
  image: 'newest' | 'rolled-back' | 'as-is';
  /** The newest record of the primary site's order the disk now holds. */
  seq: number;
  /** Bytes written back from the undo log (rolled-back only). */
  restoredBytes: number;
}

export class ReplicaControl implements Omit<ReplicaHost, 'switchover'> {
  private readonly handles = new Map<string, ReplicaHandle>();
  private readonly creating = new Set<string>();
  /** Replicas whose undo log is active: their disk is wrapped in the guard (U1). */
  private readonly guards = new Map<string, UndoGuardStore>();
  private readonly promoting = new Set<string>();
  /** Called before a replica becomes a normal disk (promote, release): a test failover of it ends first (drill-control.ts). */
  beforeLeaving: ((disk: string) => Promise<void>) | null = null;

  constructor(
    private readonly store: MetadataStore,
    private readonly disks: DiskRegistry,
    private readonly staging: StagingControl,
    private readonly dataDir: string,
    private readonly log: Logger,
    /** Generation histories and fencing (dr-control.ts). */
    private readonly dr: DrControl,
  ) {}

  /** What the group parts of a replica (replica-groups.ts) work with. */
  private get groupCtx(): ReplicaGroupContext {
    return { store: this.store, disks: this.disks, log: this.log, resyncing: (d) => this.guards.has(d), handle: (d) => this.handles.get(d) };
  }

  generations(disk: string): unknown[] {
    return this.dr.history(disk);
  }

  private undoFile(disk: string): string {
    return path.join(this.dataDir, REPLICA_STAGING_DIR, `${disk}.undo`);
  }

  /**
   * At daemon start, before the staging area opens and replays: a replica with an undo log
   * gets its guard back first (U1), a rollback that a crash interrupted is finished (U6),
   * and a log whose resync had completed is deleted (U5).
   */
  async guardAtStart(row: DiskRow, volume: Volume): Promise<void> {
    const r = this.store.replica(row.name);
    const file = this.undoFile(row.name);
    if (!r || !fs.existsSync(file)) return;
    const raw = volume.primaryStore;
    const undo = UndoLog.open(file, raw, volume.size);
    if (undo.state === UndoState.ROLLING_BACK) {
      const { bytes } = await undo.rollback();
      await this.staging.discard(row.name);
      await undo.remove();
      this.store.deleteReplica(row.name);
      this.log.warn({ disk: row.name, seq: undo.baseSeq, restoredBytes: bytes }, 'finished a rollback interrupted by a crash: the disk holds its last consistent image and is a normal disk now');
      return;
    }
    if (r.synced === 1) {
      await raw.sync();
      await undo.remove();
      this.log.info({ disk: row.name }, 'deleted the undo log of a resync that had completed');
      return;
    }
    const guard = new UndoGuardStore(raw, undo);
    volume.replacePrimary(guard);
    this.guards.set(row.name, guard);
    this.log.info({ disk: row.name, ...undo.stats() }, 'replica resyncing: its undo log keeps the last consistent image');
  }

  /** At daemon start, after the staging area is open: a replica is held read-only again. */
  openAtStart(row: DiskRow, volume: Volume): void {
    const r = this.store.replica(row.name);
    if (!r) return;
    if (!volume.staging) {
      this.log.error({ disk: row.name }, 'replica without its staging area: it cannot receive records');
      return;
    }
    volume.setReplicaHold(true);
    this.handles.set(row.name, this.newHandle(row.name, volume, r.peer));
  }

  /** The replica's handle, when it is online here as a replica. */
  handle(disk: string): ReplicaHandle | undefined {
    return this.handles.get(disk);
  }

  /** Whether the replica's disk is wrapped in an undo log's guard (a resync runs: not consistent). */
  resyncing(disk: string): boolean {
    return this.guards.has(disk);
  }

  isReplica(disk: string): boolean {
    return this.store.replica(disk) !== undefined;
  }

  private newHandle(disk: string, volume: Volume, peer: string): ReplicaHandle {
    return {
      disk,
      volume,
      staged: volume.staging!,
      link: { connected: false, peer, lastHeardMs: 0, originHeadSeq: 0, durableSeq: volume.staging!.journal.durableSeq, receivedBytes: 0, originLag: null, originRpoMs: null },
      dropSession: null,
      released: false,
      test: null,
    };
  }

  async attach(peer: string, meta: Record<string, unknown>): Promise<{ handle: ReplicaHandle; created: boolean }> {
    const disk = meta.disk;
    const originDisk = meta.originDisk;
    const size = meta.size;
    if (typeof disk !== 'string' || typeof originDisk !== 'string' || typeof size !== 'number' || !Number.isSafeInteger(size) || size <= 0) {
      throw new FerryError('BAD_REQUEST', 'attach needs disk, originDisk and size');
    }
    validateName('disk', disk);
    const row = this.store.replica(disk);
    if (row) {
      if (row.peer !== peer || row.origin_disk !== originDisk) {
        throw new FerryError('DISK_BUSY', `disk '${disk}' is the replica of ${row.peer}:${row.origin_disk}, not of ${peer}:${originDisk}`);
      }
      let h = this.handles.get(disk);
      if (!h) throw new FerryError('DISK_UNAVAILABLE', `replica '${disk}' is not online here`);
      if (this.promoting.has(disk)) throw new FerryError('DISK_BUSY', `replica '${disk}' is being promoted at this site`);
      if (meta.group !== undefined && this.disks.isGroup(disk)) h = await followMembership(this.groupCtx, disk, h, groupMeta(meta.group, size), size);
      this.dr.replicaAttach(disk, peer, meta.generations);
      return { handle: h, created: false };
    }
    // A disk promoted from this very peer's disk answers from its history (the peer is stale: FENCED, or split brain).
    this.dr.formerReplicaAttach(disk, peer, originDisk, meta.generations);
    if (meta.create !== true) throw new FerryError('NO_MIRROR', `disk '${disk}' is not a replica of ${peer}:${originDisk} here (was the mirror removed at this site?)`);
    if (this.creating.has(disk)) throw new FerryError('DISK_BUSY', `replica '${disk}' is being created`);
    this.creating.add(disk);
    try {
      return await this.create(peer, disk, originDisk, size, meta);
    } finally {
      this.creating.delete(disk);
    }
  }

  private async create(peer: string, disk: string, originDisk: string, size: number, meta: Record<string, unknown>): Promise<{ handle: ReplicaHandle; created: boolean }> {
    const firstSeq = meta.firstSeq;
    if (typeof firstSeq !== 'number' || !Number.isSafeInteger(firstSeq) || firstSeq < 1) throw new FerryError('BAD_REQUEST', 'attach needs firstSeq');
    const wanted = typeof meta.stagingBytes === 'number' ? meta.stagingBytes : STAGING_BYTES_MIN;
    const stagingBytes = Math.min(replicaStagingBytesMax, Math.max(STAGING_BYTES_MIN, Math.floor(wanted / 4096) * 4096));
    let createdDisk = false;
    const existing = this.store.disk(disk);
    const group = meta.group === undefined ? null : groupMeta(meta.group, size);
    // A reconnect (control/reconnect.ts) makes this site's existing group the replica: it is used as it is.
    const reconnectingGroup = group !== null && existing?.kind === 'group' && this.dr.reconnecting(disk) !== null;
    if (group && !reconnectingGroup) {
      await createGroupReplica(this.groupCtx, disk, size, group);
      createdDisk = true;
    } else if (existing) {
      // An existing disk is used only if nothing else uses it and it can hold the mirror.
      const { volume } = this.disks.entry(disk);
      if (!volume) throw new FerryError('DISK_UNAVAILABLE', `disk '${disk}' is unavailable here`);
      if (this.store.staging(disk) || this.store.mirror(disk)) throw new FerryError('DISK_BUSY', `disk '${disk}' already has a staging area or a mirror here`);
      if (this.disks.clientsOf(disk) > 0) throw new FerryError('DISK_BUSY', `disk '${disk}' has NBD clients here`);
      if (this.disks.isGroup(disk) !== (group !== null)) throw new FerryError('DISK_BUSY', `'${disk}' here is ${this.disks.isGroup(disk) ? 'a consistency group' : 'a disk'}; the mirror is of ${group ? 'a group' : 'a disk'}`);
      if (group) {
        // The same layout, member for member (names are this site's own).
        const here = this.disks.groups.members(disk).map((m) => [m.base, this.store.disk(m.disk)!.size]);
        const there = group.members.map((m) => [m.base, m.size]);
        if (JSON.stringify(here) !== JSON.stringify(there)) throw new FerryError('DISK_BUSY', `group '${disk}' here has another layout than the primary's (members, bases or sizes differ)`);
      }
      if (volume.readOnly) throw new FerryError('READ_ONLY', `disk '${disk}' is read-only here`);
      if (volume.size < size) throw new FerryError('TARGET_TOO_SMALL', `disk '${disk}' holds ${volume.size} bytes here; the mirror needs ${size}`);
    } else {
      await this.disks.create({ name: disk, size });
      createdDisk = true;
    }
    const dir = path.join(this.dataDir, REPLICA_STAGING_DIR);
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const stagingPath = path.join(dir, `${disk}.stg`);
    try {
      fs.rmSync(stagingPath, { force: true }); // left over from a replica removed before a crash
      await this.staging.attach({ disk, path: stagingPath, size: stagingBytes, firstSeq });
    } catch (err) {
      if (createdDisk) await removeCreatedReplica(this.groupCtx, disk).catch(() => undefined);
      throw err;
    }
    // A reconnect this site asked for (control/reconnect.ts): the disk holds this site's last image, a consistent one; recorded
    // as such, the primary's first attach (not synced) starts the undo log that keeps it while the delta sync rewrites regions.
    const asked = this.dr.reconnecting(disk);
    const reconnect = meta.reconnect === true && !createdDisk && asked?.peer === peer && asked.peerDisk === originDisk;
    const row: ReplicaRow = { disk, peer, origin_disk: originDisk, synced: reconnect ? 1 : 0, created_disk: createdDisk ? 1 : 0, created_at: Date.now() };
    this.dr.replicaCreated(disk, meta.generations, () => this.store.insertReplica(row));
    const { volume } = this.disks.entry(disk);
    volume!.setReplicaHold(true);
    const h = this.newHandle(disk, volume!, peer);
    this.handles.set(disk, h);
    this.log.info({ disk, peer, originDisk, firstSeq, createdDisk, reconnect }, 'replica created');
    // A disk Ferry just created reads as zeroes: the sync need not write holes.
    return { handle: h, created: createdDisk };
  }

  /**
   * The primary site says whether the replica is consistent (R7). Becoming inconsistent
   * starts the undo log first (beginResync); becoming consistent deletes it (U5).
   */
  async markSynced(disk: string, synced: boolean): Promise<void> {
    if (!synced) return this.beginResync(disk);
    const row = this.store.replica(disk);
    const h = this.handles.get(disk);
    if (!row || !h || row.synced === 1) return;
    const guard = this.guards.get(disk);
    if (guard) {
      const c = h.staged.committer;
      const wasPaused = c.isPaused;
      await c.pauseSettled();
      try {
        // Records not yet applied are durable in the staging area: the disk need only hold the chunks.
        await guard.raw.sync();
        this.store.updateReplica(disk, { synced: 1 });
        await h.volume.exclusive(async () => void h.volume.replacePrimary(guard.raw));
        this.guards.delete(disk);
        await guard.undo.remove();
      } finally {
        if (!wasPaused) c.resume();
      }
    } else {
      this.store.updateReplica(disk, { synced: 1 });
    }
    this.log.info({ disk }, 'replica synced: it holds an image the primary site had');
  }

  /**
   * The replica is about to be rewritten out of order (a resync, a rebase, a sync chunk).
   * If it holds a consistent image now, everything received is applied first (the newest
   * consistent image) and an undo log starts keeping it; only then is it marked inconsistent.
   */
  async beginResync(disk: string): Promise<void> {
    const row = this.store.replica(disk);
    const h = this.handles.get(disk);
    if (!row || !h || row.synced === 0) return;
    assert.ok(!this.guards.has(disk), 'a consistent replica has no undo log (U5)');
    const c = h.staged.committer;
    if (c.isPaused) c.resume(); // a resync ends an operator's hold: the primary site rewrites the disk anyway
    await h.staged.drain();
    await c.pauseSettled();
    try {
      const raw = h.volume.primaryStore;
      const undo = UndoLog.create(this.undoFile(disk), raw, h.volume.size, c.position.nextSeq - 1);
      const guard = new UndoGuardStore(raw, undo);
      await h.volume.exclusive(async () => void h.volume.replacePrimary(guard));
      this.guards.set(disk, guard);
      this.store.updateReplica(disk, { synced: 0 });
      this.log.warn({ disk, fallbackSeq: undo.baseSeq }, 'replica resyncing: not consistent until the sync completes; its undo log keeps the last consistent image');
      // The log holds each granule once: at worst the disk's size. Say so early if that may not fit.
      const fsStat = fs.statfsSync(path.dirname(undo.file));
      const freeBytes = fsStat.bavail * fsStat.bsize;
      if (freeBytes < h.volume.size) {
        this.log.warn({ disk, freeBytes, diskBytes: h.volume.size }, 'the undo log may outgrow the free space of its file system; if it does, writes to the replica fail (nothing is written unprotected) and are retried until space is freed');
      }
    } finally {
      c.resume();
    }
  }

  /** The primary site removed the mirror: the disk becomes a normal, writable disk (its newest consistent image). */
  async release(disk: string): Promise<void> {
    if (!this.handles.has(disk)) return;
    const report = await this.toNormalDisk(disk, true, false); // asked by the session itself: it is not dropped
    this.log.info({ ...report }, 'replica released by the primary site: it is a normal disk now');
  }

  /**
   * Fail-over at the mirror site (the primary site is lost or given up): the replica becomes
   * a normal, writable disk holding a consistent image: every record received, when in
   * sync; the image from before the resync, when one was interrupted (rolled back from the
   * undo log). A replica that never completed its first sync holds no consistent image: it
   * is promoted as it is only with `force`.
   */
  async promote(disk: string, opts: { force: boolean }): Promise<PromoteReport> {
    const row = this.store.replica(disk);
    const h = this.handles.get(disk);
    if (!row || !h) throw new FerryError('NO_MIRROR', `disk '${disk}' is not a replica at this site`);
    if (this.promoting.has(disk)) throw new FerryError('DISK_BUSY', `replica '${disk}' is being promoted`);
    if (row.synced === 0 && !this.guards.has(disk) && !opts.force) {
      throw new FerryError('MIRROR_NOT_IN_SYNC', `replica '${disk}' has not completed its first sync: it holds no image the primary site had; promote it with --force to take it as it is`);
    }
    const report = await this.toNormalDisk(disk, opts.force, true);
    this.log.warn({ ...report, peer: row.peer }, 'replica promoted: it is a normal, writable disk now and no longer follows the primary site');
    return report;
  }

  private async toNormalDisk(disk: string, asIsAllowed: boolean, dropSession: boolean): Promise<PromoteReport> {
    const h = this.handles.get(disk)!;
    this.promoting.add(disk);
    h.released = true; // before the session is dropped: a session attaching now stops (receiver.ts)
    try {
      await this.beforeLeaving?.(disk);
      if (dropSession) await h.dropSession?.(); // no more frames from the primary site (a new attach is refused)
      const row = this.store.replica(disk)!;
      const guard = this.guards.get(disk);
      const j = h.staged.journal;
      let report: PromoteReport;
      if (row.synced === 1 || (!guard && asIsAllowed)) {
        if (h.staged.committer.isPaused) h.staged.committer.resume();
        await this.staging.detach(disk, { replica: true });
        report = { disk, image: row.synced === 1 ? 'newest' : 'as-is', seq: j.writtenSeq, restoredBytes: 0 };
      } else {
        assert.ok(guard, 'an inconsistent replica is rolled back only from its undo log');
        await h.staged.committer.pauseSettled();
        const { bytes } = await guard.undo.rollback();
        await this.staging.discard(disk);
        await h.volume.exclusive(async () => void h.volume.replacePrimary(guard.raw));
        this.guards.delete(disk);
        await guard.undo.remove();
        report = { disk, image: 'rolled-back', seq: guard.undo.baseSeq, restoredBytes: bytes };
      }
      // A promote ends the replica and starts the disk's new generation in one transaction.
      if (dropSession) await this.dr.preparePromote(disk, h.volume, report.image, report.seq); // its writes from the promote on are tracked (divergence-map.ts)
      if (dropSession) this.dr.promoted(disk, row.peer, row.origin_disk, () => this.store.deleteReplica(disk));
      else this.store.deleteReplica(disk);
      this.handles.delete(disk);
      h.volume.setReplicaHold(false);
      return report;
    } finally {
      this.promoting.delete(disk);
    }
  }

  /**
   * Switchover, at the replica (control/switchover.ts): every record received is applied,
   * the journal gets the mirror consumer (at its head: the next record this site writes), and
   * `commit` reverses the roles in one transaction (replica row → mirror row). Only then is
   * the disk writable. Refused, changing nothing, unless in sync and holding every record up
   * to `lastSeq` (what the primary wrote before it stopped writes).
   */
  async takeOver(disk: string, peer: string, lastSeq: number, commit: (row: ReplicaRow) => void): Promise<void> {
    const row = this.store.replica(disk);
    const h = this.handles.get(disk);
    if (!row || !h) throw new FerryError('NO_MIRROR', `disk '${disk}' is not a replica at this site`);
    if (row.peer !== peer) throw new FerryError('DISK_BUSY', `disk '${disk}' is the replica of ${row.peer}, not of ${peer}`);
    if (row.synced !== 1 || this.guards.has(disk)) throw new FerryError('MIRROR_NOT_IN_SYNC', `replica '${disk}' is not in sync: it cannot take over`);
    if (this.promoting.has(disk)) throw new FerryError('DISK_BUSY', `replica '${disk}' is being promoted`);
    this.promoting.add(disk);
    try {
      const c = h.staged.committer;
      if (c.isPaused) c.resume();
      await h.staged.drain();
      const j = h.staged.journal;
      await j.sync();
      if (j.writtenSeq !== lastSeq) throw new FerryError('MIRROR_NOT_IN_SYNC', `replica '${disk}' holds records up to ${j.writtenSeq}; the primary site wrote up to ${lastSeq}`);
      // The consumer first: a mirror row without it would be taken at start for a new mirror (a full sync).
      if (!j.hasConsumer(MIRROR_CONSUMER)) await j.addConsumer(MIRROR_CONSUMER);
      h.released = true; // no frame of the old primary's session touches it again
      commit(row);
      this.handles.delete(disk);
      h.volume.setReplicaHold(false);
    } finally {
      this.promoting.delete(disk);
    }
  }

  /** Switchover, at the old primary: its disk, recorded as the replica of `peer` (switchover.ts), is held and receives again. */
  adoptAfterSwitchover(disk: string, peer: string): void {
    const { volume } = this.disks.entry(disk);
    assert.ok(volume?.staging && this.store.replica(disk), 'a disk is adopted as a replica only once recorded as one, with its staging area');
    volume.setReplicaHold(true);
    this.handles.set(disk, this.newHandle(disk, volume, peer));
  }

  /** Status in the same shape as a mirror's, seen from this (the mirror) site: role 'replica', target = the source. */
  status(disk?: string): MirrorStatus[] {
    const names = disk !== undefined ? [disk] : [...this.handles.keys()].sort();
    const out: MirrorStatus[] = [];
    for (const name of names) {
      const h = this.handles.get(name);
      const row = this.store.replica(name);
      if (!h || !row) continue;
      out.push(replicaStatus(name, h, row, this.guards.get(name)));
    }
    return out;
  }

  /**
   * Holds (or resumes) applying received records to the replica disk: the disk file then
   * stays a fixed image the primary site had (for a backup or a check) while records still
   * arrive and are made durable in the staging area, which the hold fills.
   */
  async holdApply(disk: string, hold: boolean): Promise<MirrorStatus> {
    const h = this.handles.get(disk);
    const row = this.store.replica(disk);
    if (!h || !row) throw new FerryError('NO_MIRROR', `disk '${disk}' is not a replica`);
    const c = h.staged.committer;
    if (hold) {
      if (!row.synced) throw new FerryError('MIRROR_NOT_IN_SYNC', `replica '${disk}' is still syncing; its image is not one the primary site had`);
      if (c.isPaused) throw new FerryError('BAD_REQUEST', `applying to replica '${disk}' is already paused`);
      // Answered only once the group being applied is complete: the file is then a whole image.
      await c.pauseSettled();
    } else {
      if (!c.isPaused) throw new FerryError('BAD_REQUEST', `applying to replica '${disk}' is not paused`);
      c.resume();
    }
    this.log.info({ disk, hold }, hold ? 'replica apply paused: the disk image is frozen; records gather in the staging area' : 'replica apply resumed');
    return this.status(disk)[0]!;
  }

  /** Peers that replicas here belong to (a peer in use is not removed). */
  usesPeer(peer: string): boolean {
    return this.store.replicas().some((r) => r.peer === peer);
  }

  close(): void {
    for (const h of this.handles.values()) void h.dropSession?.();
  }
}
