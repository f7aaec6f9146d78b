// The control layer's management of mirrors of every kind of target (`local:PATH`, or
// `PEER:DISK` for a disk at a paired site, carried by the replication link): starting them
// (at daemon start, after a creation: mirror-create.ts), status, policies, pause and resume,
// verify, remove, the swap of roles, and the pieces a switchover and a reconnect use.
// Operations on one disk's mirror run one at a time (mirror-ops-queue.ts). Every refusal
// happens before anything is created or changed. Crash safety of each step is in the
// order of operations; see docs/ARCHITECTURE.md, "Mirrors".
import assert from 'node:assert';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import { BlockDevice } from '../disk/block-device.js';
import { Mirror, MIRROR_CONSUMER, type MirrorStatus, type VerifyReport } from '../mirror/mirror.js';
import type { Volume } from '../volume/volume.js';
import type { DiskRegistry } from './disk-registry.js';
import { parseRemote } from './mirror-target.js';
import type { StagingControl } from './staging-control.js';
import type { DiskRow, MetadataStore, MirrorRow, PeerRow } from './store.js';
import type { PromoteReport, ReplicaControl } from './replica-control.js';
import type { DrControl } from './dr-control.js';
import type { PeerSession } from '../replication/peer-session.js';
import { RemoteStream } from '../replication/remote-stream.js';
import { RemoteStore } from '../replication/remote-store.js';
import type { DiskStore } from '../disk/store.js';
import { swapRoles, type SwapReport } from './mirror-swap.js';
import { removeMirror, type RemovedMirror } from './mirror-remove.js';
import { MirrorOpsQueue } from './mirror-ops-queue.js';
import { MirrorCreator, policyColumns, type CreateMirrorRequest } from './mirror-create.js';
export type { CreateMirrorRequest } from './mirror-create.js';

export type { SwapReport } from './mirror-swap.js';

import { DirtyMap } from '../mirror/dirty-map.js';
import { ChunkHolds, SYNC_CHUNK_BYTES } from '../mirror/chunk-holds.js';
import { changePolicy, type PolicyRequest } from '../mirror/mirror-policy.js';
import { RpoWatch } from '../mirror/rpo-watch.js';
import { DIVERGENCE_GRANULE_BYTES } from '../replication/divergence-map.js';
import { groupMemberChange, groupMirrorMembers, openGroupTarget, perMember, replicaLayout, unsyncedChunks, type GroupMirrorContext } from './group-mirror.js';

/** How mirror control reaches peer sites (wired by the daemon). */
export type { RemovedMirror } from './mirror-remove.js';

export interface RemoteSites {
  peer(name: string): PeerRow | undefined;
  connect(peer: PeerRow, hello: Record<string, unknown>): Promise<PeerSession>;
  replicas: ReplicaControl;
  dr: DrControl;
}

/** A write while the mirror site has been silent this long may be one it never gets: a new generation (dr-control.ts). */
const DIVERGENCE_SILENCE_MS = 5_000;


/** How often every mirror's RPO is observed (a breach is logged within this of its start). */
const rpoObserveMs = 1000;


export class MirrorControl {
  private readonly mirrors = new Map<string, Mirror>();
  private readonly streams = new Map<string, RemoteStream>();
  /** Bitmaps loaded at start, handed to the mirror when it starts. */
  private readonly pendingDirty = new Map<string, DirtyMap | null>();
  private readonly ops = new MirrorOpsQueue();
  /** The one creation process (mirror-create.ts). */
  private readonly creator: MirrorCreator;
  /** Each mirror's RPO watch, observed every rpoObserveMs (breaches are logged once each). */
  private readonly rpo = new Map<string, RpoWatch>();
  private readonly rpoTimer = setInterval(() => {
    for (const [disk, m] of this.mirrors) this.rpo.get(disk)?.observe(m.imageAtMs());
  }, rpoObserveMs).unref();
  constructor(
    private readonly store: MetadataStore,
    private readonly disks: DiskRegistry,
    staging: StagingControl,
    private readonly dataDir: string,
    private readonly log: Logger,
    /** How remote mirrors reach peer sites (null: this ferryd has none). */
    private readonly remote: RemoteSites | null = null,
  ) {
    this.creator = new MirrorCreator({
      store,
      disks,
      staging,
      dataDir,
      log,
      remotePeer: (name) => this.remoteSites().peer(name),
      startLocal: (m, volume, device) => void this.startMirror(m, volume, device),
      remoteStream: (m, volume, holds) => this.remoteStream(m, volume, holds),
      startRemote: (m, volume, started) => this.startRemote(m, volume, started),
      statusOf: (disk) => this.statusOf(this.mirror(disk)),
    });
  }

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
    let dirty: DirtyMap | null = null;
    if (m.resync === 1) {
      // A fallback to the dirty bitmap before this restart: the resync waits for the link (or resumes).
      dirty = DirtyMap.load(this.bitmapFile(m.disk), volume.size, SYNC_CHUNK_BYTES);
      if (!dirty) {
        this.log.error({ disk: m.disk }, 'dirty-region bitmap missing: the whole disk is resynced');
        dirty = DirtyMap.create(this.bitmapFile(m.disk), volume.size, SYNC_CHUNK_BYTES);
        dirty.mark(0, volume.size);
        await dirty.persist();
      }
    } else if (!journal.hasConsumer(MIRROR_CONSUMER)) {
      await journal.addConsumer(MIRROR_CONSUMER);
      this.store.updateMirror(row.name, { sync_cursor: 0, sync_done: 0 });
      m.sync_cursor = 0;
      m.sync_done = 0;
    }
    this.pendingDirty.set(m.disk, dirty);
    if (!m.target.startsWith('local:')) {
      this.startRemote(m, volume);
      return;
    }
    let target: DiskStore;
    try {
      target = row.kind === 'group' ? openGroupTarget(this.groupCtx, m) : BlockDevice.open(m.path);
    } catch (err) {
      // The disk itself is fine: serve it; the mirror waits for its target (records stay staged).
      this.log.error({ disk: row.name, target: m.target, err: (err as Error).message }, 'mirror target unavailable at start; the mirror is not running');
      return;
    }
    this.startMirror(m, volume, target);
  }

  /** A remote mirror's stream: dials the peer, attaches, ships; redials forever. Not started. */
  private remoteStream(m: MirrorRow, volume: Volume, holds: ChunkHolds): RemoteStream {
    const { peer, remoteDisk } = parseRemote(m.target);
    const sites = this.remoteSites();
    const journal = volume.staging!.journal;
    sites.dr.ensureHistory(m.disk); // a new mirror, or one from before generations: its first
    const stream: RemoteStream = new RemoteStream({
      disk: m.disk,
      peer,
      remoteDisk,
      journal,
      connect: () => {
        const row = sites.peer(peer);
        if (!row) return Promise.reject(new FerryError('PEER_NOT_FOUND', `peer '${peer}' is no longer paired`));
        return sites.connect(row, { purpose: 'mirror' });
      },
      attachMeta: () => {
        const row = this.store.mirror(m.disk);
        const fresh = row !== undefined && row.sync_cursor === 0 && row.sync_done === 0 && row.resync === 0;
        // While the mirror site's copy is being rewritten anyway (a sync, a resync), it may restart its numbering here (rebase).
        const rebase = row !== undefined && (row.resync === 1 || row.sync_done === 0);
        // reconnect: the mirror site's disk is the one that reconnected (reconnect.ts); its image is protected while the delta sync runs.
        // A consistency group's replica is a group at the peer, its members at the same bases (group-mirror.ts).
        const group = this.disks.isGroup(m.disk) ? { group: replicaLayout(this.groupCtx, m.disk, remoteDisk) } : {};
        return { originDisk: m.disk, size: volume.size, stagingBytes: journal.areaBytes, firstSeq: journal.consumer(MIRROR_CONSUMER).nextSeq, synced: row?.sync_done === 1, create: fresh, resync: rebase, reconnect: row?.delta === 1, generations: sites.dr.history(m.disk), ...group };
      },
      held: () => sites.dr.held(m.disk),
      onAttached: (reply) => sites.dr.primaryAttached(m.disk, peer, reply.meta.generations),
      onFailed: (err) => sites.dr.primaryFailed(m.disk, peer, err),
      admit: (r) => holds.admit(r.diskOffset, r.length),
      onLinkUp: () => this.mirrors.get(m.disk)?.linkBack(),
      bandwidthBytesPerSec: m.bandwidth,
      compress: m.compress === 'zstd',
      log: this.log.child({ disk: m.disk, mirror: m.target }),
    });
    sites.dr.watchPrimary(m.disk, volume, () => (stream.isStopped ? null : stream.heardWithin(DIVERGENCE_SILENCE_MS)));
    return stream;
  }

  private remoteSites(): RemoteSites {
    if (!this.remote) throw new FerryError('NOT_SUPPORTED', 'this ferryd has no replication listener');
    return this.remote;
  }

  private startRemote(m: MirrorRow, volume: Volume, started?: { stream: RemoteStream; holds: ChunkHolds }): Mirror {
    const holds = started?.holds ?? new ChunkHolds();
    const stream = started?.stream ?? this.remoteStream(m, volume, holds);
    this.streams.set(m.disk, stream);
    const store = new RemoteStore(stream, m.path, volume.size);
    return this.startMirror(m, volume, store, { stream, holds });
  }

  private bitmapFile(disk: string): string {
    const dir = path.join(this.dataDir, 'bitmaps');
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    return path.join(dir, `${disk}.dirty`);
  }

  private startMirror(m: MirrorRow, volume: Volume, target: DiskStore, remote?: { stream: RemoteStream; holds: ChunkHolds }): Mirror {
    const stream = remote?.stream;
    const dirty = this.pendingDirty.get(m.disk) ?? null;
    this.pendingDirty.delete(m.disk);
    const mirror = new Mirror({
      dirty,
      bitmapFile: this.bitmapFile(m.disk),
      onResync: (pending) => {
        this.store.updateMirror(m.disk, pending ? { resync: 1, sync_done: 0 } : { resync: 0 });
        if (pending && stream) this.remote?.dr.rotate(m.disk, 'resync');
        if (pending && stream) stream.request({ op: 'synced', synced: false }).catch(() => undefined);
      },
      remote: stream,
      disk: m.disk,
      targetLabel: m.target,
      volume,
      target,
      syncMode: m.sync_mode,
      syncDone: m.sync_done === 1,
      syncCursor: m.sync_cursor,
      targetIsZero: m.target_zero === 1,
      paused: m.paused === 1,
      policy: { onFull: m.on_full, maxLagBytes: m.max_lag_bytes, maxLagMs: m.max_lag_ms, bandwidth: m.bandwidth, compress: m.compress, rpoMs: m.rpo_ms },
      // A reconnect's sync copies only the regions changed on either side since divergence (every region if that map is gone);
      // a group's only its members not yet copied (group-mirror.ts).
      granules: m.delta === 1 ? { bytes: DIVERGENCE_GRANULE_BYTES, has: (g) => this.remote?.dr.changeMap(m.disk)?.has(g) ?? true } : this.disks.isGroup(m.disk) ? unsyncedChunks(this.groupCtx, m.disk) : undefined,
      onSyncCheckpoint: (cursor, done) => {
        const delta = done && this.store.mirror(m.disk)?.delta === 1;
        this.disks.groups.transaction(() => {
          this.store.updateMirror(m.disk, { sync_cursor: cursor, sync_done: done ? 1 : 0, ...(delta ? { delta: 0 } : {}) });
          if (done) for (const r of this.disks.groups.mirrorMembers(m.disk)) this.disks.groups.setMirrorMemberSynced(m.disk, r.disk, true);
        });
        if (delta) this.remote?.dr.deltaSynced(m.disk); // after the row: a crash between keeps the map (more resynced later, never less)
        // The mirror site learns it is consistent (R7); every attach repeats it, should this be lost.
        if (done && stream) stream.request({ op: 'synced', synced: true }).catch((err) => this.log.warn({ disk: m.disk, err: (err as Error).message }, 'could not tell the mirror site that the sync completed; the next attach will'));
      },
      holds: remote?.holds ?? new ChunkHolds(),
      ...(stream
        ? {
            stream,
            linkStatus: () => ({ state: stream.state, peer: parseRemote(m.target).peer, lastError: stream.lastError, bytesPerSec: stream.bytesPerSec, shippedBytes: stream.shippedBytes, reconnects: stream.reconnects }),
            testStatus: () => stream.peerTest,
          }
        : {}),
      log: this.log.child({ disk: m.disk, mirror: m.target }),
    });
    this.mirrors.set(m.disk, mirror);
    this.rpo.set(m.disk, new RpoWatch(m.rpo_ms, this.log.child({ disk: m.disk, mirror: m.target })));
    if (stream) stream.rpoMs = m.rpo_ms;
    mirror.start();
    return mirror;
  }

  private mirror(disk: string): Mirror {
    this.disks.entry(disk);
    const member = this.disks.groups.groupOf(disk);
    if (member) throw new FerryError('DISK_IN_GROUP', `disk '${disk}' is a member of consistency group '${member.grp}': its mirror is the group's (ferry mirror status ${member.grp})`);
    if (this.remote?.replicas.isReplica(disk)) {
      throw new FerryError('BAD_REQUEST', `disk '${disk}' is the replica of a disk at a peer site: manage the mirror there`);
    }
    const m = this.mirrors.get(disk);
    if (!m) throw new FerryError('NO_MIRROR', `disk '${disk}' has no mirror`);
    return m;
  }

  create(req: CreateMirrorRequest): Promise<MirrorStatus> {
    return this.ops.run(req.disk, 'create', () => this.creator.create(req));
  }

  /** Mirrors of this site's disks, and replicas this site holds for peers (role 'replica'). */
  status(disk?: string): MirrorStatus[] {
    const replicas = this.remote?.replicas;
    if (disk !== undefined) {
      if (replicas?.isReplica(disk)) return replicas.status(disk);
      return [this.statusOf(this.mirror(disk))];
    }
    const all = [...this.mirrors.values()].map((m) => this.statusOf(m));
    if (replicas) all.push(...replicas.status());
    return all.sort((a, b) => a.disk.localeCompare(b.disk));
  }

  /** A mirror's status with its RPO (observed now). */
  private statusOf(m: Mirror): MirrorStatus {
    const watch = this.rpo.get(m.disk);
    const status = m.status();
    // A group's members: each one's share of the lag, from the position the mirror has applied (or the peer acknowledged).
    const members = this.disks.isGroup(m.disk)
      ? { members: groupMirrorMembers(this.groupCtx, m.disk, this.disks.entry(m.disk).volume?.staging?.journal.lagByRegion(status.appliedSeq + 1) ?? null) }
      : {};
    return { ...status, rpo: watch ? watch.observe(m.imageAtMs()) : null, ...members };
  }

  private get groupCtx(): GroupMirrorContext {
    return { store: this.store, groups: this.disks.groups, dataDir: this.dataDir };
  }

  // ---- for a consistency group's membership change (group-control.ts) ----

  /**
   * What a membership change does to the group's mirror, checked now (a refusal changes
   * nothing): a joining member gets its (new) file in the mirror's directory and is copied
   * after the change; a leaving one keeps its file, a consistent copy as of its removal.
   * `record` runs in the change's transaction; `undo` deletes what was created if it fails.
   */
  groupMemberChange(group: string, change: { add: string; size: number } | { remove: string }): { record: () => void; undo: () => void } {
    const m = this.store.mirror(group);
    if (!m) return { record: () => undefined, undo: () => undefined };
    const running = this.mirrors.get(group);
    if (!running) throw new FerryError('MIRROR_BUSY', `the mirror of group '${group}' is not running (its target is unavailable): a membership change needs it`);
    if (running.state === 'paused') throw new FerryError('MIRROR_BUSY', `the mirror of group '${group}' is paused: resume it first (a membership change brings it up to date)`);
    return groupMemberChange(this.groupCtx, m, running.state, change);
  }

  /** Applies to the group's mirror every record staged so far, if it has a running mirror (a paused one refuses). */
  async drainGroupMirror(group: string): Promise<void> {
    await this.mirrors.get(group)?.drain();
  }

  /** Brings the group's mirror up to date and stops it (its row and journal position stay); openAtStart starts it again. */
  async suspendGroupMirror(group: string): Promise<void> {
    const m = this.mirrors.get(group);
    if (!m) return;
    await m.drain();
    this.mirrors.delete(group);
    this.rpo.delete(group);
    await m.close();
    await m.targetStore.close();
  }

  /**
   * `mirror set`: changes a mirror's policies (--on-full, --max-lag, --bandwidth, --compress,
   * --rpo) at once, without a restart: checked as at creation, recorded, then applied (the
   * write path, the link's shaper and the RPO watch read them from here on).
   */
  set(disk: string, req: PolicyRequest): Promise<MirrorStatus> {
    return this.ops.run(disk, 'set', () => {
      const m = this.mirror(disk);
      const row = this.store.mirror(disk)!;
      const remote = !row.target.startsWith('local:');
      const policy = changePolicy(m.policy, req, remote);
      m.setPolicy(policy);
      this.store.updateMirror(disk, policyColumns(policy));
      const stream = this.streams.get(disk);
      stream?.reshape(policy.compress === 'zstd', policy.bandwidth);
      if (stream) stream.rpoMs = policy.rpoMs;
      this.rpo.get(disk)?.setTarget(policy.rpoMs);
      this.log.info({ disk, policy }, 'mirror policies changed');
      return this.statusOf(m);
    });
  }

  pause(disk: string): Promise<MirrorStatus> {
    return this.ops.run(disk, 'pause', () => this.setPaused(disk, true));
  }

  resume(disk: string): Promise<MirrorStatus> {
    return this.ops.run(disk, 'resume', () => this.setPaused(disk, false));
  }

  private setPaused(disk: string, paused: boolean): MirrorStatus | Promise<MirrorStatus> {
    if (this.remote?.replicas.isReplica(disk)) return this.remote.replicas.holdApply(disk, paused);
    const m = this.mirror(disk);
    if (paused) m.pause();
    else m.resume();
    this.store.updateMirror(disk, { paused: paused ? 1 : 0 });
    return this.statusOf(m);
  }

  /** Fail-over at the mirror site (see ReplicaControl.promote); a disk with a mirror here is already the primary. */
  promote(disk: string, opts: { force: boolean }): Promise<PromoteReport> {
    return this.ops.run(disk, 'promote', () => {
      const replicas = this.remote?.replicas;
      if (replicas?.isReplica(disk)) return replicas.promote(disk, opts);
      if (this.mirrors.has(disk)) throw new FerryError('BAD_REQUEST', `disk '${disk}' is the primary of its mirror; promote runs at the mirror site, on the replica`);
      throw new FerryError('NO_MIRROR', `disk '${disk}' is not a replica at this site`);
    });
  }

  verify(disk: string): Promise<VerifyReport> {
    return this.ops.run(disk, 'verify', async () => {
      const report = await this.mirror(disk).verify();
      return this.disks.isGroup(disk) ? perMember(this.groupCtx, disk, report) : report;
    });
  }

  /** Detaches the mirror: it is brought up to date first, so the copy left behind is whole and consistent. */
  remove(disk: string, opts: { force?: boolean }): Promise<RemovedMirror> {
    return this.ops.run(disk, 'remove', () => this.removeNow(disk, opts));
  }

  private async removeNow(disk: string, opts: { force?: boolean }): Promise<RemovedMirror> {
    const m = this.mirror(disk);
    const { volume } = this.disks.entry(disk);
    const forget = (): void => {
      this.streams.delete(disk);
      this.mirrors.delete(disk);
      this.rpo.delete(disk);
    };
    return removeMirror({ store: this.store, log: this.log }, { disk, mirror: m, volume: volume!, stream: this.streams.get(disk), bitmapFile: this.bitmapFile(disk), forget }, opts);
  }

  /** Exchanges the roles of disk and mirror (see swapRoles); open NBD connections see no error. */
  swap(disk: string): Promise<SwapReport> {
    return this.ops.run(disk, 'swap', () => {
      const m = this.mirror(disk);
      const { volume } = this.disks.entry(disk);
      if (!volume?.staging) throw new FerryError('NO_STAGING', `disk '${disk}' has no staging area`);
      const swapPaths = this.disks.isGroup(disk)
        ? () => {
            this.disks.groups.swapMemberPaths(disk);
            for (const g of this.disks.groups.members(disk)) this.disks.reloadRow(g.disk);
          }
        : () => {
            this.store.swapMirrorPaths(disk);
            this.disks.reloadRow(disk);
          };
      return swapRoles({ store: this.store, log: this.log, swapPaths }, disk, m, volume);
    });
  }

  // ---- for a planned switchover (switchover.ts) ----

  /** Runs `fn` as the only operation on the mirror of `disk`. */
  exclusive<T>(disk: string, op: 'switchover' | 'reconnect' | 'group add' | 'group remove' | 'group delete', fn: () => T | Promise<T>): Promise<T> {
    return this.ops.run(disk, op, fn);
  }

  /** The running remote mirror of `disk` and its stream, if it has one. */
  remoteOf(disk: string): { mirror: Mirror; stream: RemoteStream } | null {
    const mirror = this.mirrors.get(disk);
    const stream = this.streams.get(disk);
    return mirror && stream ? { mirror, stream } : null;
  }

  /** Stops the remote mirror of `disk` (its row, consumer and the replica stay as they are). */
  async stopRemote(disk: string): Promise<void> {
    const m = this.mirrors.get(disk);
    this.streams.delete(disk);
    this.rpo.delete(disk);
    this.mirrors.delete(disk);
    await m?.close();
    await m?.targetStore.close();
  }

  // ---- for a reconnect (reconnect.ts) ----

  /**
   * The site reconnecting as the replica lets go of its own remote mirror, without a word to
   * the peer (which is ahead of it): the stream stops, then the row, then the consumer (a
   * consumer without a row is removed at start), then a fallback's dirty bitmap.
   */
  async dropRemote(disk: string): Promise<void> {
    const row = this.store.mirror(disk);
    if (!row || row.target.startsWith('local:')) return;
    await this.stopRemote(disk);
    this.store.deleteMirror(disk);
    const journal = this.disks.entry(disk).volume?.staging?.journal;
    if (journal?.hasConsumer(MIRROR_CONSUMER)) await journal.removeConsumer(MIRROR_CONSUMER);
    fs.rmSync(this.bitmapFile(disk), { force: true });
    this.log.warn({ disk, target: row.target }, 'remote mirror dropped: this disk reconnects as the replica of its peer');
  }

  /** The survivor of a reconnect (see MirrorCreator.startDelta). */
  startDelta(m: MirrorRow, volume: Volume, record: () => void): Promise<MirrorStatus> {
    assert.ok(!this.mirrors.has(m.disk), 'a reconnect starts from no mirror (dropRemote)');
    return this.creator.startDelta(m, volume, record);
  }

  /** Starts the remote mirror recorded for `disk` (a replica that just became the primary). */
  startRecorded(disk: string): void {
    const m = this.store.mirror(disk);
    const { volume } = this.disks.entry(disk);
    if (!m || !volume?.staging) throw new FerryError('NO_MIRROR', `disk '${disk}' has no recorded mirror to start`);
    this.startRemote(m, volume);
  }

  /** Mirrors that use the peer (it is not removed while they do). */
  usesPeer(peer: string): boolean {
    return this.store.mirrors().some((m) => !m.target.startsWith('local:') && parseRemote(m.target).peer === peer) || (this.remote?.replicas.usesPeer(peer) ?? false);
  }

  hasMirror(disk: string): boolean {
    return this.mirrors.has(disk);
  }

  async close(): Promise<void> {
    clearInterval(this.rpoTimer);
    for (const m of this.mirrors.values()) {
      await m.close().catch(() => undefined);
      await m.targetStore.close().catch(() => undefined);
    }
    this.mirrors.clear();
  }
}
