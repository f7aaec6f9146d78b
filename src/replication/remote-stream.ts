// The primary site's end of a remote mirror: a staging area consumer ("mirror") that ships
// durable records, in order, over an authenticated link to the mirror site, and a small
// request channel on the same link that the sync engine writes chunks through (see
// request-channel.ts, remote-store.ts). The link is redialled with backoff whenever it
// drops; every session begins with an attach that tells us the last record the mirror
// site made durable, and shipping resumes right after it.
//
// Invariants (asserted where records are shipped and acknowledgements arrive, here and at
// the mirror site, replication/receiver.ts):
//   R1  Only records durable on this site are shipped (seq <= journal.durableSeq): the
//       mirror site never holds a write this site could lose in a crash. Asserted in ship().
//   R2  Records are shipped in sequence order without gaps; the mirror site appends each
//       with the same sequence number and drops those it already has. Asserted in ship()
//       and record-cursor.ts; at the mirror site by the journal's expectSeq check.
//   R3  The mirror site acknowledges seq s only once every record <= s is durable in its
//       own staging area. Asserted in receiver.ts sendAck().
//   R4  This consumer's durable position never passes the last acknowledged seq + 1, so
//       this staging area keeps every record the mirror site may still need. Asserted in
//       ack-window.ts ack(), which keeps the acknowledged position and what is in flight.
//   R5  The mirror site applies records strictly in sequence order (its own committer):
//       its disk is always an image this disk really had, once synced. Asserted in
//       receiver.ts onRecords() and the committer's apply().
//   R6  A sync chunk is read after every record touching it that precedes it on the link,
//       and no record touching it is shipped until the chunk is acknowledged (admit, the
//       mirror's ChunkHolds), so chunks and records converge exactly as for a local mirror.
//       At the mirror site, asserted in receiver.ts settle().
//   R7  The mirror site reports itself consistent only after this site told it that the
//       sync completed; every attach repeats that state. Asserted in receiver.ts
//       recordSyncState().
import { setTimeout as sleep } from 'node:timers/promises';
import assert from 'node:assert';
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import type { ConsumerPosition } from '../journal/format.js';
import type { Journal, StagedRecord } from '../journal/journal.js';
import { readRecords } from '../journal/record-cursor.js';
import { MIRROR_CONSUMER, type JournalConsumer } from '../volume/consumer.js';
import { AckWindow } from './ack-window.js';
import { ackTestFailover, drained, encodeFrame, encodeFrameParts, frameBytes, FrameFlag, FrameType, writeFrameParts, type Frame } from './frame.js';
import type { TestFailoverStatus } from '../mirror/mirror.js';
import { LinkShaper } from './link-shaper.js';
import type { PeerSession } from './peer-session.js';
import { RequestChannel } from './request-channel.js';
import { ThroughputMeter } from './throughput-meter.js';

/** A remote mirror is its disk's mirror consumer. */
export const REMOTE_CONSUMER = MIRROR_CONSUMER;

const recordsPerFrameMax = 512;
const bytesPerFrameMax = 8 * 1024 * 1024;
const gatherDelayMs = 10;
/** How long the stream waits for records to become durable by someone else's sync (a client flush, the committer) before it syncs itself. */
const durableWaitMs = 40;
const heartbeatMs = 1000;
/** No frame from the mirror site for this long while we wait on it: the link is dead. */
const silenceMsMax = 10_000;
const backoffMsMin = 100;
const backoffMsMax = 10_000;

export type LinkState = 'connecting' | 'connected' | 'down';

export interface RemoteStreamOptions {
  disk: string;
  peer: string;
  remoteDisk: string;
  journal: Journal;
  /** Dials the peer and authenticates (PeerSession after HELLO_OK). */
  connect: () => Promise<PeerSession>;
  /** The attach request's fields (size, staging size, whether the sync completed, whether the replica may be created). */
  attachMeta: () => Record<string, unknown>;
  /** For the sync engine: null when a record may be shipped now, else when it may (R6). */
  admit: (r: StagedRecord) => Promise<void> | null;
  /** Link rate limit in bytes per second (0: none); applies to records and sync chunks alike. */
  bandwidthBytesPerSec: number;
  /** zstd-compress payloads (off the event loop); a payload that does not shrink goes as it is. */
  compress: boolean;
  /** Called, while detached (the mirror fell back to its dirty bitmap), each time the peer answers: the link is back. */
  onLinkUp?: () => void;
  /** Disaster recovery (control/dr-control.ts): why the stream must not dial now (the disk is fenced, or in split brain), else null. */
  held?: () => FerryError | null;
  /** Every attach the mirror site accepted, before shipping resumes; a throw fails the attach. */
  onAttached?: (reply: Frame) => void;
  /** Every failure of the link or of an attach (a refusal carries the mirror site's code and details). */
  onFailed?: (err: unknown) => void;
  log: Logger;
}

export class RemoteStream implements JournalConsumer {
  /** The acknowledged position, the frames shipped beyond it, and its checkpoints (R4). */
  private readonly window: AckWindow;
  private paused = false;
  private stopped = false;
  private session: PeerSession | null = null;
  private connGen = 0;
  private loop: Promise<void> | null = null;
  /** Requests on the link (sync chunks...): sent again on the next link when one drops. */
  private readonly requests: RequestChannel;
  private waiters: Array<() => void> = [];
  private progressWaiters: Array<() => void> = [];
  private lastHeardMs = 0;
  state: LinkState = 'connecting';
  lastError: string | null = null;
  /** The registry code of the last link failure, as the mirror site sent it when it refused (e.g. NO_MIRROR). */
  lastErrorCode: string | null = null;
  shippedBytes = 0;
  /** The test failover the mirror site reported in its last acknowledgement (null: none). */
  peerTest: TestFailoverStatus | null = null;
  private readonly rate = new ThroughputMeter();
  /** Compression and the rate limit. */
  private readonly shaper: LinkShaper;
  /** The mirror's RPO target (ms, null: none), told to the mirror site in every frame for its status. */
  rpoMs: number | null = null;
  connectedSinceMs: number | null = null;
  reconnects = 0;
  /** Settles at the first attach: resolved with the mirror site's reply, or rejected with the first failure. */
  readonly firstAttach: Promise<Frame>;
  private settleFirst: { resolve: (f: Frame) => void; reject: (e: Error) => void } | null = null;

  /** Fallen back to a dirty bitmap: no consumer, nothing shipped; the link is only probed (opts.onLinkUp). */
  private detached: boolean;

  constructor(private readonly opts: RemoteStreamOptions) {
    this.shaper = new LinkShaper(opts.compress, opts.bandwidthBytesPerSec);
    this.requests = new RequestChannel(opts.peer, opts.remoteDisk, this.shaper);
    this.detached = !opts.journal.hasConsumer(REMOTE_CONSUMER);
    const acked = this.detached ? { ...opts.journal.headPosition(), name: REMOTE_CONSUMER } : opts.journal.consumer(REMOTE_CONSUMER);
    this.window = new AckWindow(acked, { journal: opts.journal, consumer: REMOTE_CONSUMER, attached: () => !this.detached, log: opts.log });
    opts.journal.on('space-needed', () => this.wake());
    this.firstAttach = new Promise<Frame>((resolve, reject) => (this.settleFirst = { resolve, reject }));
    this.firstAttach.catch(() => undefined);
  }

  /** Payload bytes before and after compression, for status. */
  get rawBytes(): number {
    return this.shaper.rawBytes;
  }

  get wireBytes(): number {
    return this.shaper.wireBytes;
  }

  get position(): ConsumerPosition {
    return { ...this.window.acked };
  }

  /** Time of the newest record the mirror site acknowledged, for lag reporting. */
  get appliedTimeMs(): number {
    return this.window.appliedTimeMs;
  }

  get isPaused(): boolean {
    return this.paused;
  }

  get bytesPerSec(): number {
    return this.rate.perSec;
  }

  start(): void {
    this.loop ??= this.run();
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    this.wake();
  }

  kick(): void {
    this.wake();
  }

  get isStopped(): boolean {
    return this.stopped;
  }

  /**
   * Connected and heard from within `ms`: the mirror site answers at least every 2 s while
   * attached (acknowledgements, or its keepalive), so a link silent for longer is one this
   * site has not yet declared dead (it does so only while it waits on an answer).
   */
  heardWithin(ms: number): boolean {
    return this.state === 'connected' && Date.now() - this.lastHeardMs <= ms;
  }

  get isDetached(): boolean {
    return this.detached;
  }

  /** Stops shipping (the mirror fell back to its dirty bitmap and leaves the journal); keeps probing the link. */
  detach(): void {
    this.detached = true;
    this.dropLink();
  }

  /** Ships again from the (re-added) consumer's position; the next attach carries the resync. */
  reattach(): void {
    this.window.restartAt(this.opts.journal.consumer(REMOTE_CONSUMER));
    this.detached = false;
    this.dropLink();
  }

  private dropLink(): void {
    this.connGen++;
    this.session?.socket.destroy();
    this.window.clear();
    this.wake();
  }

  /** `mirror set`: the link's new rate limit and compression, from the next frame on. */
  reshape(compress: boolean, bandwidthBytesPerSec: number): void {
    this.shaper.reshape(compress, bandwidthBytesPerSec);
  }

  /** Resolves at the next acknowledgement from the mirror site. */
  progress(): Promise<void> {
    return new Promise((resolve) => this.progressWaiters.push(resolve));
  }

  /** Waits until the mirror site has made durable every record written so far (bounded: the link may be down). */
  async drain(timeoutMs = 60_000): Promise<void> {
    if (this.paused) throw new FerryError('BAD_REQUEST', 'the mirror is paused; resume it first');
    const target = this.opts.journal.writtenSeq;
    const deadline = Date.now() + timeoutMs;
    while (this.window.acked.nextSeq <= target) {
      if (Date.now() > deadline) throw new FerryError('PEER_UNREACHABLE', `the mirror site has not caught up within ${timeoutMs / 1000} s (link ${this.state}${this.lastError ? `: ${this.lastError}` : ''})`);
      await Promise.race([this.progress(), sleep(100)]);
    }
    await this.window.checkpoint();
  }

  /** A request on the link (sync chunk, disk sync, read...), sent again on the next link if this one drops: see RequestChannel.request. */
  request(meta: Record<string, unknown>, payload?: Buffer): Promise<Frame> {
    return this.requests.request(meta, payload);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.settleFirst?.reject(new FerryError('PEER_UNREACHABLE', 'the mirror is stopped'));
    this.settleFirst = null;
    this.session?.socket.destroy();
    this.wake();
    this.requests.close(() => new FerryError('PEER_UNREACHABLE', 'the mirror is stopped'));
    for (const w of this.progressWaiters.splice(0)) w();
    await this.loop;
    await this.window.checkpointInProgress;
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  private waitWake(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms);
      this.waiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  /** Dial, attach, ship until the link drops; again with backoff until stopped. */
  private async run(): Promise<void> {
    let backoffMs = backoffMsMin;
    while (!this.stopped) {
      const held = this.opts.held?.();
      if (held) {
        // Nothing is dialled or shipped while held; asked again every second.
        if (this.lastError !== held.message) this.opts.log.warn({ peer: this.opts.peer, code: held.code, err: held.message }, 'mirror held: not shipping');
        this.settleFirst?.reject(held);
        this.settleFirst = null;
        this.state = 'down';
        this.lastError = held.message;
        this.lastErrorCode = held.code;
        await this.waitWake(heartbeatMs);
        continue;
      }
      this.state = 'connecting';
      let session: PeerSession;
      try {
        session = await this.opts.connect();
      } catch (err) {
        this.linkFailed(err, backoffMs);
        await this.waitWake(backoffMs * (0.5 + Math.random()));
        backoffMs = Math.min(backoffMs * 2, backoffMsMax);
        continue;
      }
      if (this.stopped) {
        session.socket.destroy();
        break;
      }
      if (this.detached) {
        // Only a probe: the peer answered, so the link is back.
        session.socket.destroy();
        this.state = 'down';
        this.lastError = 'staging area overflowed: tracking dirty regions until the resync';
        backoffMs = backoffMsMin;
        this.opts.onLinkUp?.();
        await this.waitWake(2000);
        continue;
      }
      const gen = ++this.connGen;
      this.session = session;
      this.lastHeardMs = Date.now();
      const closed = this.readFrames(session, gen);
      // Also while the ship loop waits (on a sync chunk, on space): a silent link is a dead one.
      const watchdog = setInterval(() => {
        if (this.silentTooLong()) {
          this.lastError = `no answer from ${this.opts.peer} for ${silenceMsMax / 1000} s`;
          session.socket.destroy();
        }
      }, 1000);
      try {
        await Promise.race([this.attach(session), closed.then(() => Promise.reject(new FerryError('PEER_UNREACHABLE', 'the link closed during attach')))]);
        backoffMs = backoffMsMin;
        this.state = 'connected';
        this.connectedSinceMs = Date.now();
        this.lastError = null;
        this.lastErrorCode = null;
        this.opts.log.info({ peer: this.opts.peer, remoteDisk: this.opts.remoteDisk, from: this.window.acked.nextSeq }, 'replication link up; shipping records');
        await Promise.race([this.ship(session, gen), closed]);
        // (A link we dropped ourselves, to detach or reattach, is not an error.)
        if (!this.stopped && gen === this.connGen) throw new FerryError('PEER_UNREACHABLE', `${this.opts.peer} closed the link`);
      } catch (err) {
        this.linkFailed(err, backoffMs);
      }
      clearInterval(watchdog);
      session.socket.destroy();
      await closed.catch(() => undefined);
      this.session = null;
      this.requests.linkDown();
      this.connectedSinceMs = null;
      this.window.clear();
      if (this.stopped) break;
      this.state = 'down';
      this.reconnects++;
      await this.waitWake(backoffMs * (0.5 + Math.random()));
      backoffMs = Math.min(backoffMs * 2, backoffMsMax);
    }
    this.state = 'down';
  }

  private silentTooLong(): boolean {
    return (this.window.size > 0 || this.requests.size > 0 || this.state === 'connecting') && Date.now() - this.lastHeardMs > silenceMsMax;
  }

  private linkFailed(err: unknown, backoffMs: number): void {
    this.opts.onFailed?.(err);
    this.settleFirst?.reject(err as Error);
    this.settleFirst = null;
    const msg = (err as Error).message;
    if (this.lastError !== msg) this.opts.log.warn({ peer: this.opts.peer, err: msg, retryMs: backoffMs }, 'replication link down; retrying');
    this.lastError = msg;
    const e = err as FerryError;
    this.lastErrorCode = typeof e.details?.remoteCode === 'string' ? e.details.remoteCode : e instanceof FerryError ? e.code : null;
    this.state = 'down';
  }

  /** The attach: the mirror site's durable position decides where shipping resumes. */
  private async attach(session: PeerSession): Promise<void> {
    const reply = await this.requests.attach(session.socket, this.opts.attachMeta);
    this.opts.onAttached?.(reply);
    const durableSeq = reply.meta.durableSeq;
    if (typeof durableSeq !== 'number' || !Number.isSafeInteger(durableSeq)) throw new FerryError('REPL_PROTOCOL', 'attach reply without durableSeq');
    const j = this.opts.journal;
    const acked = this.window.acked;
    if (durableSeq + 1 < acked.nextSeq) {
      throw new FerryError('REMOTE_ERROR', `the mirror site holds records up to ${durableSeq} but acknowledged up to ${acked.nextSeq - 1}: its staging area lost acknowledged data; the mirror needs a full resync`);
    }
    if (durableSeq > j.durableSeq) throw new FerryError('REMOTE_ERROR', `the mirror site holds record ${durableSeq}, beyond this site's durable ${j.durableSeq}: it mirrors another history`);
    // It made durable records whose acknowledgement we never got: move past them (R4).
    let pos = acked;
    while (pos.nextSeq <= durableSeq) {
      const read = await readRecords(j, pos, { upTo: durableSeq, recordsMax: recordsPerFrameMax, bytesMax: bytesPerFrameMax }, REMOTE_CONSUMER);
      pos = read.end;
      this.window.appliedTimeMs = read.records[read.records.length - 1]!.timeMs;
    }
    if (pos !== this.window.acked) this.window.skipTo(pos);
    this.settleFirst?.resolve(reply);
    this.settleFirst = null;
    // Requests lost with the previous link go again, in their order.
    this.requests.linkUp(session.socket);
  }

  private async readFrames(session: PeerSession, gen: number): Promise<void> {
    for (;;) {
      const f = await session.reader.next();
      if (f === null || gen !== this.connGen) return;
      this.lastHeardMs = Date.now();
      switch (f.type) {
        case FrameType.ACK:
          this.peerTest = ackTestFailover(f.meta);
          this.onAck(f.meta.durableSeq);
          break;
        case FrameType.RESPONSE:
          this.requests.answer(f);
          break;
        case FrameType.ERROR:
          throw new FerryError('REMOTE_ERROR', `${this.opts.peer} closed the link: ${String(f.meta.message ?? f.meta.code)}`);
        default:
          throw new FerryError('REPL_PROTOCOL', `unexpected frame type ${f.type} from ${this.opts.peer}`);
      }
    }
  }

  private onAck(durableSeq: unknown): void {
    if (typeof durableSeq !== 'number' || this.detached) return;
    // (The window checkpoints the new position when one is due.)
    if (!this.window.ack(durableSeq)) return;
    for (const w of this.progressWaiters.splice(0)) w();
    this.wake();
  }

  /** Ships records while this link lives; heartbeats when idle; gives up on a silent link. */
  private async ship(session: PeerSession, gen: number): Promise<void> {
    const j = this.opts.journal;
    let pos = this.window.acked;
    let lastSentMs = 0;
    let writtenWaitSeq = -1;
    const alive = (): boolean => gen === this.connGen && !this.stopped && !session.socket.destroyed;
    while (alive()) {
      if (this.silentTooLong()) throw new FerryError('PEER_UNREACHABLE', `no answer from ${this.opts.peer} for ${silenceMsMax / 1000} s`);
      if (this.window.checkpointDue) await this.window.checkpoint();
      const canShip = !this.paused && this.window.hasRoom && pos.nextSeq <= j.writtenSeq;
      if (!canShip) {
        if (Date.now() - lastSentMs >= heartbeatMs) {
          writeFrameParts(session.socket, await this.recordsFrame(pos.nextSeq, [], []));
          lastSentMs = Date.now();
        }
        if (writtenWaitSeq !== pos.nextSeq) {
          // One waiter per position: an idle link must not pile up waiters in the journal.
          writtenWaitSeq = pos.nextSeq;
          void j.whenWrittenBeyond(pos.nextSeq - 1).then(() => this.wake());
        }
        await this.waitWake(heartbeatMs);
        continue;
      }
      // Let records gather a moment, then make them durable here before they leave (R1).
      if (j.writtenSeq - pos.nextSeq + 1 < recordsPerFrameMax) await sleep(gatherDelayMs);
      // Every sync of the staging area stalls the appends that share its last page: piggyback
      // on the syncs the committer and clients make anyway, and sync only if none comes.
      if (pos.nextSeq > j.durableSeq) await Promise.race([j.whenDurableBeyond(pos.nextSeq - 1), sleep(durableWaitMs)]);
      if (pos.nextSeq > j.durableSeq) await j.sync();
      if (!alive()) break;
      const read = await readRecords(j, pos, { upTo: j.durableSeq, recordsMax: recordsPerFrameMax, bytesMax: bytesPerFrameMax }, REMOTE_CONSUMER);
      const records = read.records;
      const payloads: Buffer[] = [];
      for (let i = 0; i < records.length; i++) {
        const r = records[i]!;
        assert.ok(r.seq === pos.nextSeq + i && r.seq <= j.durableSeq, 'records leave in order, durable (R1, R2)');
        // In order: a record touching a chunk the sync engine is copying waits for that chunk (R6).
        const wait = this.opts.admit(r);
        if (wait) await wait;
        if (r.payload) payloads.push(r.payload.subarray(0, r.length));
      }
      pos = read.end;
      if (!alive() || records.length === 0) continue;
      const frame = await this.recordsFrame(records[0]!.seq, records, payloads);
      const frameLength = frameBytes(frame);
      await this.shaper.pace(frameLength);
      if (!alive()) break;
      this.window.shipped({ lastSeq: records[records.length - 1]!.seq, end: pos, bytes: frameLength, lastTimeMs: records[records.length - 1]!.timeMs });
      this.shippedBytes += frameLength;
      this.rate.add(frameLength);
      lastSentMs = Date.now();
      if (!writeFrameParts(session.socket, frame)) await drained(session.socket);
    }
  }

  /** How far the mirror site is behind (records, bytes, seconds): sent with every frame, so both sites show it. */
  lag(): { records: number; bytes: number; seconds: number } {
    return this.opts.journal.lagBehind(this.window.acked, this.window.appliedTimeMs);
  }

  /** A frame of records (none: a heartbeat), as parts: a payload that is not a new buffer (one record's, a view of the journal's reads) is copied in. */
  private async recordsFrame(firstSeq: number, records: StagedRecord[], payloads: Buffer[]): Promise<Buffer[]> {
    const j = this.opts.journal;
    const meta = {
      firstSeq,
      lag: this.lag(),
      headSeq: j.writtenSeq,
      sentMs: Date.now(),
      rpoMs: this.rpoMs,
      records: records.map((r) => [r.type, r.flags, r.diskOffset, r.length, r.timeMs]),
    };
    const { data, flags } = await this.shaper.pack(payloads.length === 1 ? payloads[0] : payloads.length ? Buffer.concat(payloads) : undefined);
    if (payloads.length === 1 && !(flags & FrameFlag.ZSTD)) return [encodeFrame(FrameType.RECORDS, meta, data, flags)];
    return encodeFrameParts(FrameType.RECORDS, meta, data, flags);
  }
}
