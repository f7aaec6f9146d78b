// A mirror of one disk: a target device, the sync engine that brings it level, and a
// stream (the journal consumer "mirror") that carries every record to it in order: a
// committer for a local target, or the replication link for a disk at a peer site.
// State: syncing → in-sync; paused while the administrator holds it. The mirror is
// consistent (an image the disk really had) once the sync is complete: from then on it
// only ever receives whole records in order, and a crash replays from its checkpoint.
import { setTimeout as sleep } from 'node:timers/promises';
import assert from 'node:assert/strict';
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import type { DiskStore } from '../disk/store.js';
import type { ConsumerPosition } from '../journal/format.js';
import type { Journal } from '../journal/journal.js';
import type { MirrorGate } from '../volume/admission.js';
import { Committer } from '../volume/committer.js';
import type { StagedPath } from '../volume/staged-path.js';
import type { Volume } from '../volume/volume.js';
import { SYNC_CHUNK_BYTES, SyncEngine, type SyncMode, type SyncOptions } from './sync-engine.js';
import { DirtyMap, forEachChunk } from './dirty-map.js';
import { indexPendingChunks } from './pending-chunks.js';
import type { ChunkHolds } from './chunk-holds.js';
import { MIRROR_CONSUMER, PRIMARY_CONSUMER, type JournalConsumer } from '../volume/consumer.js';
import type { MirrorPolicy } from './mirror-policy.js';
import { verifyMirror, VerifyProgress, type VerifyReport } from './verify.js';
import type { LinkStatus, MirrorState, MirrorStatus, TestFailoverStatus } from './mirror-status.js';

export type { VerifyReport } from './verify.js';
export type { LinkStatus, MirrorStatus, TestFailoverStatus } from './mirror-status.js';

export { MIRROR_CONSUMER };

export type { MirrorState } from './mirror-status.js';

/** What carries records to the mirror: a Committer (local target) or a RemoteStream (a peer site). */
export type MirrorStream = JournalConsumer;

/** What a remote mirror's bitmap fallback needs of its link (replication/remote-stream.ts). */
export interface MirrorLink {
  readonly state: 'connecting' | 'connected' | 'down';
  /** Stop shipping (the mirror consumer leaves the journal); keep probing the peer. */
  detach(): void;
  /** Ship again from the re-added consumer's position. */
  reattach(): void;
}

export interface MirrorOptions {
  disk: string;
  targetLabel: string;
  volume: Volume;
  target: DiskStore;
  syncMode: SyncMode;
  syncDone: boolean;
  syncCursor: number;
  targetIsZero: boolean;
  paused: boolean;
  onSyncCheckpoint: (cursor: number, done: boolean) => void;
  /** The chunks the sync engine is copying, held against the stream (the stream asks them before each record: R6). */
  holds: ChunkHolds;
  /** A remote mirror's stream, built with `holds` (default: a committer applying records to `target`). */
  stream?: MirrorStream;
  linkStatus?: () => LinkStatus;
  /** A remote mirror: the test failover the mirror site last reported. */
  testStatus?: () => TestFailoverStatus | null;
  /** The link of a remote mirror (its bitmap fallback detaches and reattaches it). */
  remote?: MirrorLink;
  policy: MirrorPolicy;
  /** A resync pending from an earlier fallback (loaded at start), else null. */
  dirty: DirtyMap | null;
  bitmapFile: string;
  /** A reconnect's delta sync: only these granules of each chunk are copied (sync-engine.ts). */
  granules?: SyncOptions['granules'];
  /** Persists that a bitmap resync is pending (true: the mirror is not in sync) or done. */
  onResync: (pending: boolean) => void;
  log: Logger;
}

/** How long writes wait for space before a `bitmap` mirror lets go of the staging area. */
const fullGraceMs = 500;

/** Backoff between attempts of a failed sync. */
const syncRetryMsMin = 1000;
const syncRetryMsMax = 30_000;

export class Mirror {
  readonly disk: string;
  targetLabel: string;
  readonly committer: MirrorStream;
  private target: DiskStore;
  private readonly staged: StagedPath;
  private readonly journal: Journal;
  private sync: SyncEngine | null = null;
  private syncRetryMs = syncRetryMsMin;
  private syncDone: boolean;
  private closed = false;
  private readonly opts: MirrorOptions;
  lastSwapPauseMs: number | null = null;
  /**
   * stream: every record goes to the mirror. bitmap: the staging area filled, so the mirror
   * let go of it (no consumer) and dirty regions are tracked instead. resync: the dirty
   * regions are being copied while records flow again.
   */
  private mode: 'stream' | 'bitmap' | 'resync';
  private dirty: DirtyMap | null;
  /** Newest record seq written per sync chunk: which regions a fallback must mark (bitmap policy only). */
  private chunkSeq: Float64Array | null = null;
  private scanned: Promise<void> = Promise.resolve();
  private switching = false;
  private verifying: VerifyProgress | null = null;

  constructor(opts: MirrorOptions) {
    const staged = opts.volume.staging;
    if (!staged) throw new FerryError('NO_STAGING', `disk ${opts.disk} has no staging area`);
    this.opts = opts;
    this.disk = opts.disk;
    this.targetLabel = opts.targetLabel;
    this.target = opts.target;
    this.staged = staged;
    this.journal = staged.journal;
    this.syncDone = opts.syncDone;
    const holds = opts.holds;
    this.committer = opts.stream ?? new Committer(this.journal, opts.target, opts.log, { consumer: MIRROR_CONSUMER, admit: (r) => holds.admit(r.diskOffset, r.length) });
    if (opts.paused) this.committer.pause();
    this.dirty = opts.dirty;
    this.mode = !this.dirty ? 'stream' : this.journal.hasConsumer(MIRROR_CONSUMER) ? 'resync' : 'bitmap';
    if (this.mode !== 'stream') this.syncDone = false;
    this.installPolicies();
  }

  // ---- the mirror's part in its disk's write path (admission.ts, MirrorGate) ----

  private installPolicies(): void {
    const p = this.opts.policy;
    if (p.onFull === 'bitmap' && this.opts.remote) {
      // Only a bitmap fallback needs to know which regions recent records touched: no other mirror pays for it.
      this.chunkSeq = new Float64Array(Math.ceil(this.opts.volume.size / SYNC_CHUNK_BYTES) + 1);
      this.journal.on('space-needed', this.onSpaceNeeded);
      // Records already staged before this start (a restart) are marked through a scan.
      this.scanned = indexPendingChunks(this.journal, this.chunkSeq, () => this.closed);
    }
    this.staged.mirrorSlot.attach(this.writePath);
  }

  private uninstallPolicies(): void {
    this.staged.mirrorSlot.detach(this.writePath);
    this.journal.off('space-needed', this.onSpaceNeeded);
  }

  /** What the write path asks of this mirror (bounded lag, dirty bitmap, full staging, indexed batches). */
  private readonly writePath: MirrorGate = {
    lagWait: () => this.lagWait(),
    bitmapWait: (offset, length) => (this.mode === 'bitmap' && this.dirty ? (this.dirty.mark(offset, length) ? this.dirty.persist() : null) : null),
    refuseWhenFull: () =>
      this.opts.policy.onFull === 'fail' && this.mode === 'stream' && this.isLaggard()
        ? new FerryError('NO_SPACE', `the staging area of ${this.disk} is full: its mirror (${this.targetLabel}) is behind and the mirror's policy is to fail writes`)
        : null,
    indexed: (records) => {
      const chunkSeq = this.chunkSeq;
      if (!chunkSeq) return;
      for (const r of records) {
        if (r.length === 0) continue;
        forEachChunk(r.diskOffset, r.length, SYNC_CHUNK_BYTES, (c) => (chunkSeq[c] = r.seq));
        // A write racing the switch to bitmap mode is marked too (persisted before the consumer goes).
        if (this.mode === 'bitmap') this.dirty?.mark(r.diskOffset, r.length);
      }
    },
  };

  /** (A method: the mode changes across awaits, which narrowing cannot see.) */
  private inBitmap(): boolean {
    return this.mode === 'bitmap';
  }

  private linkUp(): boolean {
    return !this.opts.remote || this.opts.remote.state === 'connected';
  }

  /** Bounded lag (--max-lag): null, or resolves once the mirror is within the limit (link down: the on-full policy rules). */
  private lagWait(): Promise<void> | null {
    const p = this.opts.policy;
    if (this.mode === 'bitmap' || (p.maxLagBytes === null && p.maxLagMs === null) || this.committer.isPaused || !this.linkUp() || !this.lagExceeded()) return null;
    return this.waitLag();
  }

  private lagExceeded(): boolean {
    if (!this.journal.hasConsumer(MIRROR_CONSUMER)) return false;
    const { lagBytes, lagSeconds } = this.lag();
    const p = this.opts.policy;
    return (p.maxLagBytes !== null && lagBytes > p.maxLagBytes) || (p.maxLagMs !== null && lagSeconds * 1000 > p.maxLagMs);
  }

  /** Holds a write while the mirror is further behind than --max-lag (and its link is up: down, the on-full policy rules). */
  private async waitLag(): Promise<void> {
    while (!this.closed && this.mode !== 'bitmap' && !this.committer.isPaused && this.linkUp() && this.lagExceeded()) {
      await Promise.race([this.committer.progress(), sleep(50)]);
    }
  }

  /** The mirror holds the staging area's oldest record while the primary is past it. */
  private isLaggard(): boolean {
    if (!this.journal.hasConsumer(MIRROR_CONSUMER)) return false;
    return this.journal.consumer(MIRROR_CONSUMER).nextSeq < this.journal.consumer(PRIMARY_CONSUMER).nextSeq;
  }

  /** Writes wait for space: while they do, and the mirror is what holds the space, fall back after a grace period. */
  private readonly onSpaceNeeded = (): void => {
    if (this.mode !== 'stream' || this.switching) return;
    this.switching = true;
    const since = Date.now();
    const check = (): void => {
      if (this.closed || this.mode !== 'stream' || !this.journal.hasWaitersForSpace) {
        this.switching = false;
        return;
      }
      // The primary's committer frees its part first; only a mirror still holding the oldest record counts.
      if (Date.now() - since < fullGraceMs || !this.isLaggard()) {
        setTimeout(check, 100);
        return;
      }
      this.fallBack()
        .catch((err) => this.opts.log.error({ err: (err as Error).message }, 'mirror could not fall back to its dirty bitmap; writes wait for space'))
        .finally(() => (this.switching = false));
    };
    setTimeout(check, 100);
  };

  /**
   * The staging area is full and the mirror holds it: remember the regions of every record the
   * mirror lacks (and what its sync has not copied) in the persistent bitmap, then let go of the
   * staging area. From here each write marks its region before it is acknowledged.
   */
  private async fallBack(): Promise<void> {
    await this.scanned;
    const remote = this.opts.remote!;
    const cursor = await this.stopSync();
    // One synchronous step: from here every write passes the bitmap gate (its bit durable
    // before it is staged); every earlier one is indexed (chunkSeq) or waiting in the journal.
    const dirty = DirtyMap.create(this.opts.bitmapFile, this.opts.volume.size, SYNC_CHUNK_BYTES);
    const from = this.committer.position.nextSeq;
    const chunkSeq = this.chunkSeq!;
    for (let c = 0; c < chunkSeq.length; c++) if (chunkSeq[c]! >= from) dirty.markChunk(c);
    for (const r of this.journal.unindexedRanges()) dirty.mark(r.offset, r.length);
    if (!this.syncDone) for (let c = Math.floor(cursor / SYNC_CHUNK_BYTES); c * SYNC_CHUNK_BYTES < this.opts.volume.size; c++) dirty.markChunk(c);
    this.dirty = dirty;
    this.mode = 'bitmap';
    await dirty.persist();
    this.syncDone = false;
    this.opts.onResync(true);
    remote.detach();
    // Only now may the space go: every region the mirror lacks is in the bitmap on disk.
    await this.journal.removeConsumer(MIRROR_CONSUMER);
    this.opts.log.warn({ dirtyBytes: dirty.dirtyBytes }, 'staging area full while the mirror is behind: fell back to the dirty-region bitmap; writes go on, the regions resync when the link returns');
  }

  /** The link of a mirror in bitmap mode answered again (its stream's onLinkUp): resync. */
  linkBack(): void {
    void this.startResync();
  }

  /** The link is back: records flow again from the head, and the dirty regions are copied meanwhile. */
  private async startResync(): Promise<void> {
    if (this.mode !== 'bitmap' || this.switching || this.closed) return;
    this.switching = true;
    try {
      // A write staged before the consumer is back has its bit set (the gate); one after is streamed.
      await this.journal.addConsumer(MIRROR_CONSUMER);
      this.mode = 'resync';
      this.opts.remote!.reattach();
      this.opts.log.info({ dirtyBytes: this.dirty!.dirtyBytes }, 'link back: resyncing the dirty regions while records stream again');
      this.startSync();
    } finally {
      this.switching = false;
    }
  }

  /** Stops a running sync; resolves with its durable cursor. */
  private async stopSync(): Promise<number> {
    const s = this.sync;
    if (!s) return this.opts.syncCursor;
    await s.stop();
    this.opts.syncCursor = s.position;
    return s.position;
  }

  get targetStore(): DiskStore {
    return this.target;
  }

  get isRemote(): boolean {
    return this.opts.stream !== undefined;
  }

  get isSynced(): boolean {
    return this.syncDone;
  }

  /** Starts streaming records, and the sync if it is not complete. */
  start(): void {
    this.committer.start();
    if (!this.syncDone && !this.committer.isPaused) this.startSync();
  }

  private startSync(): void {
    const volume = this.opts.volume;
    const previous = this.sync;
    const run = async (): Promise<void> => {
      if (previous) {
        // A stopped engine (pause) finishes the chunks it began, and keeps holding back the
        // records that touch them (admit) until then: a new one only starts after it.
        await previous.stop();
        this.opts.syncCursor = previous.position;
      }
      if (this.closed || this.committer.isPaused || this.syncDone || this.mode === 'bitmap') return;
      const dirty = this.mode === 'resync' ? this.dirty : null;
      const engine = new SyncEngine(
        { size: volume.size, read: (b, o, l, off) => volume.readInternal(b, o, l, off), extents: (off, len, max) => volume.extents(off, len, max), cachedPages: (off, len) => volume.primaryStore.cachedPages?.(off, len) ?? -1, dropCache: (off, len) => volume.primaryStore.dropCache?.(off, len) },
        this.target,
        dirty
          ? {
              // A resync: only the dirty chunks, over what the mirror holds; a chunk's bit goes once it is durable there.
              mode: 'full',
              targetIsZero: false,
              startCursor: 0,
              only: (chunk) => dirty.has(chunk),
              onChunkCopied: (chunk) => dirty.clear(chunk),
              holds: this.opts.holds,
              onCheckpoint: () => void dirty.persist().catch((err) => this.opts.log.error({ err: (err as Error).message }, 'could not save the dirty-region bitmap')),
              log: this.opts.log,
            }
          : {
              mode: this.opts.syncMode,
              targetIsZero: this.opts.targetIsZero,
              startCursor: this.opts.syncCursor,
              granules: this.opts.granules,
              onCheckpoint: (cursor) => this.opts.onSyncCheckpoint(cursor, false),
              holds: this.opts.holds,
              log: this.opts.log,
            },
      );
      this.sync = engine;
      await engine.start();
      if (!engine.done) {
        if (engine.error !== null) this.retrySyncLater(engine);
        return;
      }
      this.syncRetryMs = syncRetryMsMin;
      // The copy is complete, but each chunk holds the disk as it was when that chunk was read
      // (up to the newest record written by now), while the committer may not have applied the
      // records before that everywhere yet: until it has, the mirror mixes moments of the disk.
      const upTo = this.journal.writtenSeq;
      while (this.committer.position.nextSeq <= upTo) {
        if (this.closed) return;
        if (this.committer.isPaused) await sleep(200);
        else await Promise.race([this.committer.progress(), sleep(50)]);
      }
      // Once the target is synced the mirror is consistent.
      await this.target.sync();
      if (this.closed || this.syncDone || this.inBitmap()) return;
      if (dirty) {
        assert.equal(dirty.dirtyChunks, 0, 'a resync ends with every dirty region copied');
        this.mode = 'stream';
        this.dirty = null;
        dirty.remove();
        this.opts.onResync(false);
      }
      this.syncDone = true;
      this.opts.onSyncCheckpoint(volume.size, true);
    };
    void run().catch((err) => this.opts.log.error({ err: (err as Error).message }, 'mirror sync could not complete; it resumes from its checkpoint when restarted'));
  }

  /**
   * A sync that failed (the target or the link refused a chunk: a full disk, an I/O error,
   * a mirror site whose undo log has no space) is tried again from its checkpoint, with
   * backoff, for as long as the mirror exists; its error shows in the status meanwhile.
   */
  private retrySyncLater(failed: SyncEngine): void {
    const waitMs = this.syncRetryMs;
    this.syncRetryMs = Math.min(this.syncRetryMs * 2, syncRetryMsMax);
    this.opts.log.warn({ err: failed.error, retryMs: waitMs }, 'mirror sync failed; retrying from its checkpoint');
    setTimeout(() => {
      if (this.sync === failed && !this.closed && !this.committer.isPaused && !this.syncDone && this.mode !== 'bitmap') this.startSync();
    }, waitMs).unref();
  }

  get state(): MirrorState {
    if (this.committer.isPaused) return 'paused';
    if (this.mode === 'bitmap') return 'bitmap';
    if (this.mode === 'resync') return 'resyncing';
    return this.syncDone ? 'in-sync' : 'syncing';
  }

  private lag(): { lagRecords: number; lagBytes: number; lagSeconds: number } {
    const { records, bytes, seconds } = this.journal.lagBehind(this.committer.position, this.committer.appliedTimeMs);
    return { lagRecords: records, lagBytes: bytes, lagSeconds: seconds };
  }

  status(): MirrorStatus {
    const pos = this.committer.position;
    const { lagRecords, lagBytes, lagSeconds } = this.lag();
    const s = this.sync;
    return {
      disk: this.disk,
      target: this.targetLabel,
      state: this.state,
      consistent: this.syncDone,
      syncMode: this.opts.syncMode,
      syncProgress: this.syncDone ? 1 : (s?.progress ?? this.opts.syncCursor / Math.max(1, this.opts.volume.size)),
      syncBytes: this.syncDone ? this.opts.volume.size : (s?.position ?? this.opts.syncCursor),
      syncBytesPerSec: this.syncDone ? 0 : (s?.rateBytesPerSec ?? 0),
      syncEtaSeconds: this.syncDone ? 0 : (s?.etaSeconds ?? null),
      syncError: s?.error ?? null,
      lagRecords,
      lagBytes,
      lagSeconds,
      appliedSeq: pos.nextSeq - 1,
      committerError: this.committer.lastError,
      lastSwapPauseMs: this.lastSwapPauseMs,
      role: 'primary',
      link: this.opts.linkStatus?.() ?? null,
      policy: this.opts.policy,
      dirtyBytes: this.dirty?.dirtyBytes ?? 0,
      fallback: null,
      rpo: null,
      verify: this.verifying?.status() ?? null,
      test: this.opts.testStatus?.() ?? null,
    };
  }

  pause(): void {
    if (this.committer.isPaused) throw new FerryError('BAD_REQUEST', `the mirror of ${this.disk} is already paused`);
    this.committer.pause();
    void this.sync?.stop();
  }

  resume(): void {
    if (!this.committer.isPaused) throw new FerryError('BAD_REQUEST', `the mirror of ${this.disk} is not paused`);
    this.committer.resume();
    if (!this.syncDone) this.startSync();
  }

  /** Applies every record written so far to the mirror. */
  drain(): Promise<void> {
    if (this.mode === 'bitmap') return Promise.reject(new FerryError('MIRROR_NOT_IN_SYNC', `the mirror of ${this.disk} fell back to its dirty bitmap; it takes writes again once its link returns`));
    return this.committer.drain();
  }

  /** After a swap of roles: the mirror's device is now the old primary. */
  retarget(target: DiskStore): void {
    this.target = target;
    this.targetLabel = `local:${target.path}`;
    if (!(this.committer instanceof Committer)) throw new FerryError('NOT_SUPPORTED', 'only a local mirror changes its target');
    this.committer.retarget(target);
  }

  /** Compares disk and mirror online (see verify.ts); its progress shows in status meanwhile. */
  async verify(): Promise<VerifyReport> {
    if (this.committer.isPaused) throw new FerryError('BAD_REQUEST', `resume the mirror of ${this.disk} before verifying it`);
    if (this.mode !== 'stream') throw new FerryError('MIRROR_NOT_IN_SYNC', `the mirror of ${this.disk} is ${this.state}: it is not comparable until its resync completes`);
    const progress = new VerifyProgress(this.opts.volume.size);
    this.verifying = progress;
    try {
      return await verifyMirror({ disk: this.disk, volume: this.opts.volume, staged: this.staged, journal: this.journal, stream: this.committer, target: this.target, progress });
    } finally {
      this.verifying = null;
    }
  }

  /**
   * `mirror set`: the new policies apply at once (the write path reads them at each write;
   * a remote link's rate and compression are its stream's). Leaving the bitmap policy while
   * the mirror depends on its bitmap is refused: the dirty regions must be resynced first.
   */
  setPolicy(policy: MirrorPolicy): void {
    const was = this.opts.policy;
    if (was.onFull === 'bitmap' && policy.onFull !== 'bitmap' && this.mode !== 'stream') {
      throw new FerryError('MIRROR_NOT_IN_SYNC', `the mirror of ${this.disk} is ${this.state}: it keeps --on-full bitmap until its dirty regions are resynced`);
    }
    this.opts.policy = policy;
    if (was.onFull === policy.onFull) return;
    // The bitmap policy's index of recent records (chunkSeq) is built, or dropped, with it.
    this.uninstallPolicies();
    this.chunkSeq = null;
    this.installPolicies();
  }

  get policy(): MirrorPolicy {
    return this.opts.policy;
  }

  /** The newest image the mirror holds, for its RPO: now less its lag while consistent and streaming; null otherwise. */
  imageAtMs(): number | null {
    if (!this.syncDone || this.mode !== 'stream') return null;
    return Date.now() - this.lag().lagSeconds * 1000;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.uninstallPolicies();
    // The stream first: a remote one fails the sync's pending link requests, so the sync can stop.
    const streamStopped = this.committer.stop();
    await this.sync?.stop();
    await streamStopped;
  }
}
