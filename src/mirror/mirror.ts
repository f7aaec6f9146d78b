// A mirror of one disk: a target device, the sync engine that brings it level, and a
// committer (the journal consumer "mirror") that applies every record to it in order.
// State: syncing → in-sync; paused while the administrator holds it. The mirror is
// consistent (an image the disk really had) once the sync is complete: from then on it
// only ever receives whole records in order, and a crash replays from its checkpoint.
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import type { DiskStore } from '../disk/store.js';
import type { Journal } from '../journal/journal.js';
import { Committer } from '../volume/committer.js';
import type { StagedPath } from '../volume/staged-path.js';
import type { Volume } from '../volume/volume.js';
import { SyncEngine, type SyncMode } from './sync-engine.js';

export const MIRROR_CONSUMER = 'mirror';

export type MirrorState = 'syncing' | 'in-sync' | 'paused';

export interface MirrorStatus {
  disk: string;
  target: string;
  state: MirrorState;
  consistent: boolean;
  syncMode: SyncMode;
  syncProgress: number;
  syncBytes: number;
  syncBytesPerSec: number;
  syncEtaSeconds: number | null;
  syncError: string | null;
  lagRecords: number;
  lagBytes: number;
  lagSeconds: number;
  appliedSeq: number;
  committerError: string | null;
  lastSwapPauseMs: number | null;
}

export interface VerifyReport {
  disk: string;
  bytesCompared: number;
  regionsVerified: number;
  regionsSkipped: number;
  differences: Array<{ offset: number; length: number }>;
  seconds: number;
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
  log: Logger;
}

const verifyAttemptsMax = 5;
const compareBytes = 4096;

export class Mirror {
  readonly disk: string;
  targetLabel: string;
  readonly committer: Committer;
  private target: DiskStore;
  private readonly staged: StagedPath;
  private readonly journal: Journal;
  private sync: SyncEngine | null = null;
  private syncDone: boolean;
  private closed = false;
  private readonly opts: MirrorOptions;
  lastSwapPauseMs: number | null = null;

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
    this.committer = new Committer(this.journal, opts.target, opts.log, {
      consumer: MIRROR_CONSUMER,
      admit: (r) => this.sync?.admit(r.diskOffset, r.length) ?? null,
    });
    if (opts.paused) this.committer.pause();
  }

  get targetStore(): DiskStore {
    return this.target;
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
      if (this.closed || this.committer.isPaused || this.syncDone) return;
      const engine = new SyncEngine(
        { size: volume.size, read: (b, o, l, off) => volume.readInternal(b, o, l, off), extents: (off, len, max) => volume.extents(off, len, max) },
        this.target,
        {
          mode: this.opts.syncMode,
          targetIsZero: this.opts.targetIsZero,
          startCursor: this.opts.syncCursor,
          onCheckpoint: (cursor) => this.opts.onSyncCheckpoint(cursor, false),
          log: this.opts.log,
        },
      );
      this.sync = engine;
      await engine.start();
      if (!engine.done) return;
      // The copy is complete, but each chunk holds the disk as it was when that chunk was read
      // (up to the newest record written by now), while the committer may not have applied the
      // records before that everywhere yet: until it has, the mirror mixes moments of the disk.
      const upTo = this.journal.writtenSeq;
      while (this.committer.position.nextSeq <= upTo) {
        if (this.closed) return;
        if (this.committer.isPaused) await new Promise((res) => setTimeout(res, 200));
        else await Promise.race([this.committer.progress(), new Promise((res) => setTimeout(res, 50))]);
      }
      // Once the target is synced the mirror is consistent.
      await this.target.sync();
      if (this.closed || this.syncDone) return;
      this.syncDone = true;
      this.opts.onSyncCheckpoint(volume.size, true);
    };
    void run().catch((err) => this.opts.log.error({ err: (err as Error).message }, 'mirror sync could not complete; it resumes from its checkpoint when restarted'));
  }

  get state(): MirrorState {
    if (this.committer.isPaused) return 'paused';
    return this.syncDone ? 'in-sync' : 'syncing';
  }

  status(): MirrorStatus {
    const head = this.journal.headPosition();
    const pos = this.committer.position;
    const lagRecords = head.nextSeq - pos.nextSeq;
    const ring = this.journal.ringBytes;
    const lagBytes = lagRecords === 0 ? 0 : (head.nextPos - pos.nextPos + ring) % ring || ring;
    const oldest = lagRecords === 0 ? null : (this.journal.recordTime(pos.nextSeq) ?? (this.committer.appliedTimeMs || null));
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
      lagSeconds: oldest === null ? 0 : Math.max(0, (Date.now() - oldest) / 1000),
      appliedSeq: pos.nextSeq - 1,
      committerError: this.committer.lastError,
      lastSwapPauseMs: this.lastSwapPauseMs,
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
    return this.committer.drain();
  }

  /** After a swap of roles: the mirror's device is now the old primary. */
  retarget(target: DiskStore): void {
    this.target = target;
    this.targetLabel = `local:${target.path}`;
    this.committer.retarget(target);
  }

  /**
   * Compares the disk as clients see it with the mirror, region by region, online. A region
   * written to while it is being compared is compared again (up to 5 times), then reported
   * as skipped; a region that differs once the mirror has every write made before the
   * comparison began is a real difference.
   */
  async verify(): Promise<VerifyReport> {
    if (this.committer.isPaused) throw new FerryError('BAD_REQUEST', `resume the mirror of ${this.disk} before verifying it`);
    const started = Date.now();
    const size = this.opts.volume.size;
    const region = this.staged.genRegionBytes;
    const report: VerifyReport = { disk: this.disk, bytesCompared: 0, regionsVerified: 0, regionsSkipped: 0, differences: [], seconds: 0 };
    const ours = Buffer.allocUnsafe(region);
    const theirs = Buffer.allocUnsafe(region);
    for (let r = 0; r * region < size; r++) {
      const offset = r * region;
      const length = Math.min(region, size - offset);
      let verified = false;
      for (let attempt = 0; attempt < verifyAttemptsMax && !verified; attempt++) {
        const gen = this.staged.writeGen[r];
        const seq = this.journal.writtenSeq;
        await this.opts.volume.readInternal(ours, 0, length, offset);
        while (this.committer.position.nextSeq <= seq) {
          if (this.committer.lastError) throw new FerryError('IO_ERROR', `the mirror cannot keep up: ${this.committer.lastError}`);
          await Promise.race([this.committer.progress(), new Promise((res) => setTimeout(res, 20))]);
        }
        await this.target.read(theirs, 0, length, offset);
        if (this.staged.writeGen[r] !== gen) continue;
        verified = true;
        for (let at = 0; at < length; at += compareBytes) {
          const n = Math.min(compareBytes, length - at);
          if (ours.compare(theirs, at, at + n, at, at + n) !== 0) {
            const last = report.differences[report.differences.length - 1];
            if (last && last.offset + last.length === offset + at) last.length += n;
            else report.differences.push({ offset: offset + at, length: n });
          }
        }
        report.bytesCompared += length;
      }
      if (verified) report.regionsVerified++;
      else report.regionsSkipped++;
    }
    report.seconds = (Date.now() - started) / 1000;
    return report;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.sync?.stop();
    await this.committer.stop();
  }
}
