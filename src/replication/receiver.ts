// The mirror site's end of a remote mirror: one authenticated session from the primary
// site, bound by its first request (attach) to one replica disk. Frames are handled
// strictly in arrival order: records are appended to the replica's own staging area with
// the primary site's sequence numbers and acknowledged once durable (R2, R3); sync chunks
// are written to the disk only after every record received before them is applied (R6).
// The one overlap: the sync engine's requests run concurrently (at most syncOpsMax):
// chunk writes (each its own region of the disk) and the disk syncs of its checkpoints,
// each answered as it completes, so a sync is not one disk write, one fdatasync and one
// frame receive at a time. A disk sync covers every chunk write answered before it was
// asked for (they completed before it began), which is all a checkpoint counts on. Any
// other frame (records, attach, release) first waits until every such request before it
// has completed, so a record is never applied under a chunk that arrived before it.
// The replica's own committer applies records in order (R5). See remote-stream.ts for the
// invariants of the whole link; here R3 is asserted in sendAck, R5 in onRecords, R6 in
// settle and R7 in recordSyncState.
import assert from 'node:assert/strict';
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import { RecordType, type RecordTypeValue } from '../journal/format.js';
import type { StagedPath } from '../volume/staged-path.js';
import type { Volume } from '../volume/volume.js';
import type { TestFailoverStatus } from '../mirror/mirror.js';
import { encodeFrame, FRAME_PAYLOAD_BYTES_MAX, FrameFlag, FrameType, ProtocolError, type Frame } from './frame.js';
import { zstdPool } from './zstd-pool.js';
import type { PeerSession } from './peer-session.js';

/** What the receiver knows of the link, for status on the mirror site. */
export interface ReplicaLinkInfo {
  connected: boolean;
  peer: string;
  lastHeardMs: number;
  /** The newest record the primary site had written when it last told us. */
  originHeadSeq: number;
  /** The newest record made durable here. */
  durableSeq: number;
  receivedBytes: number;
  /** The primary site's view of our lag, from its last frame. */
  originLag: { records: number; bytes: number; seconds: number } | null;
  /** The mirror's RPO target (ms) as the primary site last told it; null: none. */
  originRpoMs: number | null;
}

export interface ReplicaHandle {
  disk: string;
  volume: Volume;
  staged: StagedPath;
  link: ReplicaLinkInfo;
  /** Ends the session currently attached (a newer one replaces it); resolves once it has stopped. */
  dropSession: (() => Promise<void>) | null;
  /** Set (before the session is dropped) once the replica is promoted or released: no session may touch it again. */
  released: boolean;
  /** The replica's test failover now, if any (src/control/drill-control.ts): sent to the primary site with every ACK. */
  test: (() => TestFailoverStatus) | null;
}

export interface ReplicaHost {
  /** Finds (or, when allowed, creates) the replica the primary site names; validates it belongs to this peer. */
  attach(peer: string, meta: Record<string, unknown>): Promise<{ handle: ReplicaHandle; created: boolean }>;
  /** The primary site says whether the replica is consistent (R7); becoming inconsistent starts its undo log. */
  markSynced(disk: string, synced: boolean): Promise<void>;
  /** Called before the replica is rewritten out of order (rebase, sync chunk): keeps its last consistent image. */
  beginResync(disk: string): Promise<void>;
  /** The primary site removed the mirror: drain, release the disk (it becomes a normal disk). */
  release(disk: string): Promise<void>;
  /** The replica's generation history (replication/generations.ts), sent back with every attach. */
  generations(disk: string): unknown[];
  /** A planned switchover: the replica becomes the primary (control/switchover.ts); the answer's fields. */
  switchover(disk: string, meta: Record<string, unknown>, from: { peer: string; address: string | null }): Promise<Record<string, unknown>>;
}

const recordTypes = new Set<number>([RecordType.WRITE, RecordType.ZERO, RecordType.TRIM]);

/** Sync engine requests in flight per session (a chunk write holds its frame's payload, at most 32 MiB). */
const syncOpsMax = 4;

export class Receiver {
  private handle: ReplicaHandle | null = null;
  private ackChain: Promise<void> = Promise.resolve();
  /** Sync engine requests (chunk writes, disk syncs) started and not yet answered (see the head of this file). */
  private readonly syncOps = new Set<Promise<void>>();
  private closed = false;
  private finished: Promise<void> = Promise.resolve();
  private lastSentMs = Date.now();

  constructor(
    private readonly session: PeerSession,
    private readonly host: ReplicaHost,
    private readonly log: Logger,
  ) {}

  /** Serves the session until it ends; never throws. */
  run(): Promise<void> {
    this.finished = this.serve();
    return this.finished;
  }

  private async serve(): Promise<void> {
    const { socket, reader, peer } = this.session;
    // While a long request runs (a chunk waiting for the backlog to be applied), the primary
    // site still hears from us: an acknowledgement of what is durable is always true.
    const keepalive = setInterval(() => {
      const h = this.handle;
      if (!h || Date.now() - this.lastSentMs < 2000) return;
      try {
        this.sendAck(h, h.link.durableSeq);
      } catch (err) {
        this.log.error({ disk: h.disk, err: (err as Error).message }, 'replication session ended: invariant violated');
        this.closed = true;
        this.session.socket.destroy();
      }
    }, 1000);
    try {
      for (;;) {
        const f = await reader.next();
        // A newer session replaced this one: frames still buffered here must not be applied.
        if (f === null || this.closed) break;
        if (this.handle) this.handle.link.lastHeardMs = Date.now();
        if (f.flags & FrameFlag.ZSTD) f.payload = await zstdPool().decompress(f.payload, FRAME_PAYLOAD_BYTES_MAX);
        if (!isSyncOp(f)) await this.syncOpsDone();
        if (f.type === FrameType.REQUEST) await this.onRequest(f);
        else if (f.type === FrameType.RECORDS) await this.onRecords(f);
        else throw new ProtocolError(`unexpected frame type ${f.type}`);
      }
    } catch (err) {
      const e = err as Error;
      if (!this.closed) {
        this.log.warn({ peer: peer.name, disk: this.handle?.disk, err: e.message }, 'replication session ended with an error');
        if (e instanceof FerryError) this.send(encodeFrame(FrameType.ERROR, { code: e.code, message: e.message }));
      }
    } finally {
      clearInterval(keepalive);
      this.closed = true;
      // A newer session waits for this one to finish: never two writers at once.
      await this.syncOpsDone();
      await this.ackChain.catch(() => undefined);
      socket.end();
      setTimeout(() => socket.destroy(), 1000).unref();
      if (this.handle && this.handle.dropSession === this.drop) {
        this.handle.dropSession = null;
        this.handle.link.connected = false;
      }
    }
  }

  private readonly drop = (): Promise<void> => {
    this.closed = true;
    this.session.socket.destroy();
    return this.finished;
  };

  private send(frame: Buffer): void {
    if (this.closed || this.session.socket.destroyed) return;
    this.session.socket.write(frame);
    this.lastSentMs = Date.now();
  }

  /** Acknowledges every record up to `seq`: only records durable in this site's staging area (R3). */
  private sendAck(h: ReplicaHandle, seq: number): void {
    assert.ok(seq <= h.staged.journal.durableSeq, 'the mirror site acknowledges only records durable in its own staging area (R3)');
    this.send(encodeFrame(FrameType.ACK, { durableSeq: seq, test: h.test?.() ?? null }));
  }

  /**
   * Records the sync state the primary site sent in an attach or a `synced` request: the
   * replica is recorded consistent only when the primary site said its sync completed (R7).
   */
  private async recordSyncState(disk: string, meta: Record<string, unknown>): Promise<void> {
    const synced = meta.synced === true;
    assert.ok(!synced || meta.op === 'attach' || meta.op === 'synced', 'only an attach or a synced request tells the replica it is consistent (R7)');
    await this.host.markSynced(disk, synced);
  }

  private respond(id: unknown, meta: Record<string, unknown> = {}, payload?: Buffer): void {
    this.send(encodeFrame(FrameType.RESPONSE, { ...meta, id }, payload));
  }

  /** A request that failed here: the primary site gets its code (IO_ERROR when it has none) and message. */
  private respondError(id: unknown, err: Error): void {
    const details = err instanceof FerryError && err.details ? { details: err.details } : {};
    this.respond(id, { error: { code: err instanceof FerryError ? err.code : 'IO_ERROR', message: err.message, ...details } });
  }

  private bound(): ReplicaHandle {
    if (!this.handle) throw new ProtocolError('the session must attach to a disk first');
    if (this.handle.released) throw new ProtocolError(`replica '${this.handle.disk}' is no longer a replica here`);
    return this.handle;
  }

  private async onRequest(f: Frame): Promise<void> {
    const { id, op } = f.meta;
    try {
      if (op === 'attach') return await this.onAttach(f);
      const h = this.bound();
      if (f.meta.disk !== h.disk) throw new ProtocolError(`this session is attached to ${h.disk}`);
      switch (op) {
        case 'write':
        case 'zero': {
          const { offset, length } = checkRange(f.meta, h.volume.size);
          if (op === 'write' && f.payload.length !== length) throw new ProtocolError('chunk payload length mismatch');
          await this.settle(h);
          await this.host.beginResync(h.disk);
          // The disk as the volume holds it: during a resync, the undo log's guard (U1).
          const disk = h.volume.primaryStore;
          await this.inBackground(id, op === 'write' ? disk.write(f.payload, 0, length, offset) : disk.zero(offset, length, true, false));
          return;
        }
        case 'sync':
          await this.inBackground(id, h.volume.primaryStore.sync());
          return;
        case 'read': {
          const { offset, length } = checkRange(f.meta, h.volume.size);
          if (length > 32 * 1024 * 1024) throw new ProtocolError('read too large');
          const buf = Buffer.allocUnsafe(length);
          await h.volume.readInternal(buf, 0, length, offset);
          return this.respond(id, {}, buf);
        }
        case 'synced':
          await this.recordSyncState(h.disk, f.meta);
          return this.respond(id);
        case 'switchover': {
          // Every record received first (the primary sent them all before asking).
          await this.ackChain;
          const out = await this.host.switchover(h.disk, f.meta, { peer: this.session.peer.name, address: this.session.socket.remoteAddress ?? null });
          return this.respond(id, out);
        }
        case 'release':
          await this.ackChain;
          await this.host.release(h.disk);
          return this.respond(id);
        default:
          throw new ProtocolError(`unknown request ${String(op)}`);
      }
    } catch (err) {
      if (err instanceof ProtocolError) throw err;
      this.respondError(id, err as Error);
    }
  }

  private async onAttach(f: Frame): Promise<void> {
    if (this.handle) throw new ProtocolError('the session is already attached');
    const { handle, created } = await this.host.attach(this.session.peer.name, f.meta);
    // One session per replica: a newer one (the primary site redialled) replaces the old,
    // once the old one has finished the frame it was handling (never two writers at once).
    const previous = handle.dropSession;
    handle.dropSession = this.drop;
    await previous?.();
    if (handle.released) throw new FerryError('NO_MIRROR', `disk '${handle.disk}' is no longer a replica here (promoted or released)`);
    this.handle = handle;
    const j = handle.staged.journal;
    await j.sync();
    const firstSeq = f.meta.firstSeq;
    if (f.meta.resync === true && typeof firstSeq === 'number' && Number.isSafeInteger(firstSeq) && j.writtenSeq + 1 < firstSeq) {
      // The primary site skipped records (its staging area overflowed: it resyncs regions instead)
      // or restarts a sync: every record here goes to the disk, then numbering restarts at firstSeq.
      if (handle.staged.committer.isPaused) handle.staged.committer.resume();
      await this.host.beginResync(handle.disk);
      await handle.staged.drain();
      await j.rebase(firstSeq);
      handle.staged.committer.reposition();
      await this.host.markSynced(handle.disk, false);
      this.log.warn({ disk: handle.disk, from: firstSeq }, 'replica rebased for a resync: not consistent until it completes');
    }
    if (typeof f.meta.synced === 'boolean') await this.recordSyncState(handle.disk, f.meta);
    handle.link.connected = true;
    handle.link.peer = this.session.peer.name;
    handle.link.durableSeq = j.durableSeq;
    this.log.info({ peer: this.session.peer.name, disk: handle.disk, durableSeq: j.durableSeq, created }, 'replication session attached');
    this.respond(f.meta.id, { durableSeq: j.durableSeq, created, size: handle.volume.size, generations: this.host.generations(handle.disk) });
  }

  /** Every sync chunk write started so far has completed and been answered. */
  private async syncOpsDone(): Promise<void> {
    while (this.syncOps.size > 0) await Promise.all(this.syncOps);
  }

  /** Answers request `id` when `work` ends, while later frames go on; waits while syncOpsMax run. */
  private async inBackground(id: unknown, work: Promise<void>): Promise<void> {
    const answered: Promise<void> = work.then(
      () => this.respond(id),
      (err: Error) => this.respondError(id, err),
    );
    this.syncOps.add(answered);
    void answered.finally(() => this.syncOps.delete(answered));
    assert.ok(this.syncOps.size <= syncOpsMax, 'sync engine requests in flight are bounded');
    if (this.syncOps.size >= syncOpsMax) await Promise.race(this.syncOps);
  }

  /** Every record received so far is applied to the disk (a chunk may then overwrite it, R6). */
  private async settle(h: ReplicaHandle): Promise<void> {
    await this.ackChain;
    const j = h.staged.journal;
    if (h.staged.committer.position.nextSeq <= j.writtenSeq) await h.staged.drain();
    assert.ok(h.staged.committer.position.nextSeq > j.writtenSeq, 'a sync chunk is written only after every record received before it is applied (R6)');
  }

  private async onRecords(f: Frame): Promise<void> {
    const h = this.bound();
    const j = h.staged.journal;
    const m = f.meta;
    const list = m.records;
    if (typeof m.firstSeq !== 'number' || !Array.isArray(list)) throw new ProtocolError('malformed records frame');
    if (typeof m.headSeq === 'number') h.link.originHeadSeq = m.headSeq;
    h.link.originRpoMs = typeof m.rpoMs === 'number' && m.rpoMs > 0 ? m.rpoMs : null;
    const lag = m.lag as Record<string, unknown> | undefined;
    if (lag && typeof lag.records === 'number' && typeof lag.bytes === 'number' && typeof lag.seconds === 'number') h.link.originLag = { records: lag.records, bytes: lag.bytes, seconds: lag.seconds };
    h.link.receivedBytes += f.payload.length;
    let seq = m.firstSeq;
    const expected = j.writtenSeq + 1;
    if (seq > expected) throw new ProtocolError(`records from ${seq} leave a gap after ${expected - 1}`);
    let at = 0;
    const appends: Array<{ seq: number; type: RecordTypeValue; flags: number; diskOffset: number; length: number; timeMs: number; payload: Buffer | null }> = [];
    for (const item of list) {
      if (!Array.isArray(item) || item.length !== 5 || !item.every((x) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0)) throw new ProtocolError('malformed record');
      const [type, flags, diskOffset, length, timeMs] = item as number[];
      if (!recordTypes.has(type!)) throw new ProtocolError(`unknown record type ${type}`);
      if (diskOffset! + length! > h.volume.size) throw new ProtocolError('record beyond the end of the disk');
      let payload: Buffer | null = null;
      if (type === RecordType.WRITE) {
        if (at + length! > f.payload.length) throw new ProtocolError('record payload missing');
        payload = f.payload.subarray(at, at + length!);
        at += length!;
      }
      // Records we already hold (sent again after a dropped link) are skipped (R2).
      if (seq >= expected) appends.push({ seq, type: type as RecordTypeValue, flags: flags!, diskOffset: diskOffset!, length: length!, timeMs: timeMs!, payload });
      seq++;
    }
    if (at !== f.payload.length) throw new ProtocolError('records frame has trailing payload bytes');
    // Staged right after what this site holds, in the primary site's order without gaps (each
    // keeps its number, asserted in the journal): the committer applies them in that order (R5).
    assert.ok(appends.length === 0 || (appends[0]!.seq === expected && appends[appends.length - 1]!.seq === seq - 1), 'records are staged here in sequence order, without gaps (R5)');
    if (appends.length) await h.staged.appendMirrored(appends);
    assert.ok(j.writtenSeq >= seq - 1, 'every record of the frame is written here (R2)');
    const upTo = j.writtenSeq;
    // Acknowledge once durable (R3); the next frame is appended while this sync runs.
    this.ackChain = this.ackChain.then(async () => {
      if (j.durableSeq < upTo) await j.sync();
      h.link.durableSeq = Math.max(h.link.durableSeq, upTo);
      this.sendAck(h, upTo);
    });
    this.ackChain.catch((err) => {
      this.log.error({ disk: h.disk, err: (err as Error).message }, 'replica staging area failed; ending the session');
      this.closed = true;
      this.session.socket.destroy();
    });
  }
}

function checkRange(meta: Record<string, unknown>, size: number): { offset: number; length: number } {
  const { offset, length } = meta;
  if (typeof offset !== 'number' || typeof length !== 'number' || !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
    throw new ProtocolError('request range outside the disk');
  }
  return { offset, length };
}

/** A sync engine request (chunk write or zero, disk sync): the one kind that may overlap others of its kind. */
function isSyncOp(f: Frame): boolean {
  return f.type === FrameType.REQUEST && (f.meta.op === 'write' || f.meta.op === 'zero' || f.meta.op === 'sync');
}
