// Disaster recovery state of the disks in a mirror relationship: their generation histories
// (replication/generations.ts, kept in dr_disks by dr-store.ts) and fencing. It keeps one
// rule: a site that learns its peer was promoted past it stops taking writes on that disk,
// and a site that cannot reach its peer keeps serving as it was (asynchronous mirroring
// never stops the primary for a link outage).
//
// Per disk, this site's state:
//
//   state        entered when                                   NBD writes            the disk's mirror stream     left when
//   normal       the disk enters a mirror relationship          taken                 ships                        -
//                (history created or adopted)
//   fenced       an attach to the peer is refused and the       refused: FENCED       held: never dials again      the disk becomes the peer's replica
//                peer's history is ahead of ours (relate():     (NBD EPERM), also     (status: link down, code     (`mirror reconnect` here, reconnect.ts,
//                peer-ahead): the peer was promoted past us;    on connections        FENCED)                      or mirror create from the peer onto
//                or `mirror reconnect` began here (the          already open                                       it), `mirror unfence --force` (the peer
//                                                                                                                  gone for good: a new generation), or the
//                                                                                                                  disk is removed
//                survivor recorded: reconnect); kept across
//                restarts (the row), applied to the volume
//                before any client is served
//   split-brain  an attach finds both histories moved on from   taken (nothing is     held: nothing resynced or    `mirror reconnect --discard-changes-at`
//                a common ancestor (relate(): split-brain); at  overwritten; the      overwritten                  here (fenced, then a replica) or at the
//                the primary site and at the promoted one       data stays as is)                                  peer (normal here: the survivor), or removed
//
//   switching    `mirror switchover` at the primary, before it  refused: FENCED       ships (drains to the         the roles are reversed: the disk
//                drains (control/switchover.ts), with the       (durable, before the  replica)                     is the replica of its former mirror
//                switchover's generation pending                drain)                                             (switchover.ts, steps table), or
//                                                                                                                  `mirror unfence --force` (peer lost)
//
//   any state    the peer cannot be reached                     as before             redials with backoff         -
//
// Where generations start (each one durable before what it stands for is acknowledged):
//   create     the primary's first mirror of the disk (mirror create), when it has no history;
//   resync     the primary starts a bitmap resync (its replica is rewritten out of order);
//   diverged   a primary's first write while its mirror's link is not connected, or silent for
//              over 5 s (the mirror site answers every 2 s), after the last accepted attach: from
//              that write on it may hold data its peer never has. Records shipped while
//              connected and lost with the link are not a divergence (a failback discards them);
//   promote    `mirror promote` at the replica, in the same transaction that ends the replica;
//   switchover drawn at the primary when the switchover begins (pending), recorded by the replica
//              in the transaction that makes it the primary, then by the old primary in the one
//              that makes it the replica;
//   (adopted)  a replica takes its primary's history at every accepted attach.
//
// Changed regions since divergence (replication/divergence-map.ts, its invariants D1-D3 at its head):
//   map starts          promoted site: before the promote's transaction (empty; full when the promote took a
//                       rolled-back or as-is image), with its base seq; old primary: when it learns it is
//                       fenced or in split brain (its unacknowledged records past the base the peer sent, its
//                       dirty regions), rebuilt by union at every start
//   map marks           every client write of the disk, durably before the write is taken (Volume.trackChanges)
//   map grows           a reconnect's survivor unites the reconnecting site's map with its own (uniteChanges)
//   map ends            the disk becomes its peer's replica (replicaCreated), the survivor's delta sync
//                       completes (deltaSynced: the union is copied), or the disk is removed
//
// The reaction to each relation (relate() decides it, one table, at the head of generations.ts):
//
//   site                                relation                    does
//   primary (its stream attaches)       none / same / local-ahead   ships (the replica adopts our history)
//                                       peer-ahead                  fenced
//                                       split-brain                 split-brain (stream held)
//                                       unrelated                   attach fails, retried (logged)
//   replica (a row in replicas)         none / same / peer-ahead    adopts the primary's history, accepts
//                                       local-ahead / split-brain / refuses: SPLIT_BRAIN (with its history)
//                                       unrelated
//   promoted (no replica row; promoted  local-ahead                 refuses: FENCED (with its history): the primary fences itself
//   from this very peer and disk)       split-brain                 split-brain here too, refuses: SPLIT_BRAIN
//                                       other                       as any disk (NO_MIRROR)
import assert from 'node:assert';
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import { appendGeneration, currentGeneration, newGeneration, parseHistory, relate, type Generation, type GenerationReason } from '../replication/generations.js';
import type { Volume } from '../volume/volume.js';
import type { DivergenceMap } from '../replication/divergence-map.js';
import { ChangeMaps, type ChangedStatus } from './change-maps.js';
import { DrStore, type DrRow, type DrState } from './dr-store.js';
import type { MetadataStore } from './store.js';

export interface DrStatus {
  state: DrState;
  /** The disk's current generation id. */
  generation: string | null;
  /** Oldest first, at most GENERATIONS_MAX. */
  generations: Generation[];
  reason: string | null;
  since: string | null;
  /** After a promote here: the former primary, PEER:DISK. */
  formerPrimary: string | null;
  /** The regions this disk changed since the sites diverged (divergence-map.ts), while they are tracked. */
  changed: ChangedStatus | null;
}

export class DrControl {
  private readonly rows: DrStore;
  /** In-memory copies of the rows (the write path asks on every write while a link is down). */
  private readonly cache = new Map<string, DrRow | null>();
  private readonly volumes = new Map<string, Volume>();
  /** Per primary with a remote mirror: whether its link is connected now (null: its stream is stopped). */
  private readonly links = new Map<string, () => boolean | null>();
  /** Called when this site, switching over, learns the peer already took the primary role. */
  private peerSwitched: (disk: string) => void = () => undefined;

  /** The regions changed since divergence of the disks that track them (promoted here, fenced, split brain, a reconnect's survivor). */
  private readonly changes: ChangeMaps;

  constructor(
    store: MetadataStore,
    private readonly log: Logger,
    /** Where divergence maps (DISK.diverged) and mirrors' dirty bitmaps (DISK.dirty) are kept. */
    bitmapsDir: string,
  ) {
    this.rows = new DrStore(store);
    this.changes = new ChangeMaps(bitmapsDir, log);
  }

  private row(disk: string): DrRow | undefined {
    if (!this.cache.has(disk)) this.cache.set(disk, this.rows.get(disk) ?? null);
    return this.cache.get(disk) ?? undefined;
  }

  private put(row: DrRow): void {
    this.rows.put(row);
    this.cache.set(row.disk, row);
  }

  history(disk: string): Generation[] {
    return this.row(disk)?.generations ?? [];
  }

  status(disk: string): DrStatus | null {
    const r = this.row(disk);
    if (!r) return null;
    return {
      state: r.state,
      generation: currentGeneration(r.generations)?.id ?? null,
      generations: r.generations,
      reason: r.stateReason,
      since: r.stateAtMs !== null ? new Date(r.stateAtMs).toISOString() : null,
      formerPrimary: r.peer !== null && r.peerDisk !== null ? `${r.peer}:${r.peerDisk}` : null,
      changed: this.changes.changed(disk),
    };
  }


  /** At daemon start, before clients are served: a fenced disk refuses writes again. */
  openAtStart(disk: string, volume: Volume): void {
    this.volumes.set(disk, volume);
    const r = this.row(disk);
    if (r?.state === 'fenced' || r?.state === 'switching') {
      volume.setFence(r.stateReason ?? 'its peer site was promoted past it');
      this.log.warn({ disk, state: r.state, reason: r.stateReason }, 'disk fenced: it takes no writes');
    }
  }

  // ---- changed regions since divergence (change-maps.ts) ----

  /** The divergence map of a disk, if its changed regions are tracked. */
  changeMap(disk: string): DivergenceMap | null {
    return this.changes.map(disk);
  }

  /**
   * At daemon start, once the disk's staging area is open and before its mirror starts or
   * clients are served: a fenced or split-brain disk reopens its map and marks its
   * unacknowledged records again; a disk promoted here, or the survivor of a reconnect whose
   * delta sync is not complete, reopens its map (a later generation does not end the
   * tracking: only D2 does).
   */
  async openChangeMap(disk: string, volume: Volume): Promise<void> {
    const r = this.row(disk);
    if (!r) return;
    if (r.state === 'fenced' || r.state === 'split-brain') await this.changes.reopen(disk, volume, 'old-primary');
    else if (this.changes.exists(disk) || this.promotedHere(r)) await this.changes.reopen(disk, volume, 'promoted');
  }

  private promotedHere(r: DrRow): boolean {
    return r.peer !== null && currentGeneration(r.generations)?.reason === 'promote';
  }

  /** Before a promote: the disk's writes from the promote on are tracked (ChangeMaps.startPromoted). */
  preparePromote(disk: string, volume: Volume, image: 'newest' | 'rolled-back' | 'as-is', seq: number): Promise<void> {
    this.volumes.set(disk, volume);
    return this.changes.startPromoted(disk, volume, image, seq);
  }

  // ---- reconnect (control/reconnect.ts) ----

  /**
   * The site reconnecting as its peer's replica: fenced (its writes since divergence are to be
   * discarded), durably, with the survivor it waits for, before its mirror and staging area go.
   */
  beginReconnect(disk: string, peer: string, peerDisk: string, policy: unknown, reason: string): void {
    const r = this.row(disk) ?? DrStore.empty(disk);
    this.put({ ...r, state: 'fenced', stateReason: reason, stateAtMs: Date.now(), reconnect: { peer, peerDisk, policy } });
    assert.ok(this.row(disk)?.state === 'fenced', 'a reconnecting disk is fenced durably before its writes are refused');
    this.volumes.get(disk)?.setFence(reason);
    this.log.warn({ disk, survivor: `${peer}:${peerDisk}` }, 'reconnecting as the replica of the survivor: writes refused');
  }

  /** The survivor this disk reconnects to, while it does. */
  reconnecting(disk: string): { peer: string; peerDisk: string; policy: unknown } | null {
    return this.row(disk)?.reconnect ?? null;
  }

  /** Its changed regions, as the peer takes them (snapshot()); every granule when they were not tracked (more is resynced, never less). */
  changesToSend(disk: string, size: number): Promise<{ bits: Buffer; bytes: number }> {
    return this.changes.toSend(disk, size);
  }

  /**
   * At the survivor: its own changed regions (a full map when none were tracked) united with
   * the reconnecting peer's, durable before its delta sync may start; tracking goes on (its
   * writes until the sync completes are marked too).
   */
  uniteChanges(disk: string, volume: Volume, peerBits: Buffer): Promise<{ map: DivergenceMap; ownBytes: number }> {
    this.volumes.set(disk, volume);
    return this.changes.unite(disk, volume, peerBits);
  }

  /**
   * The survivor accepts the reconnect: `commit` (its mirror row to the peer) and a new 'resync'
   * generation, its split brain (if any) ended, in one transaction. The peer adopts the history
   * at its first attach.
   */
  reconnected(disk: string, commit: () => void): Generation {
    const g = newGeneration('resync');
    this.rows.transaction(() => {
      commit();
      const r = this.rows.get(disk) ?? DrStore.empty(disk);
      this.rows.put({ ...r, generations: appendGeneration(r.generations, g), state: 'normal', stateReason: null, stateAtMs: null, diverged: false });
    });
    this.cache.delete(disk);
    this.volumes.get(disk)?.setFence(null);
    this.log.warn({ disk, generation: g.id }, 'reconnect accepted: the peer becomes the replica of this disk; only the changed regions are resynced');
    return g;
  }

  /** The survivor's delta sync completed: both sides hold the same image, the changed regions no longer matter (D2). */
  deltaSynced(disk: string): void {
    const r = this.row(disk);
    if (r && (r.peer !== null || r.peerDisk !== null)) this.put({ ...r, peer: null, peerDisk: null });
    this.changes.end(disk);
    this.log.info({ disk }, 'the changed regions are resynced: the divergence map is deleted');
  }

  /**
   * `mirror unfence --force`: a fenced disk whose peer is gone for good serves its own data
   * again, or a switchover that cannot complete (its peer lost) is abandoned. Durable in one
   * row write: a new 'diverged' generation (it takes writes its peer never has), state normal,
   * no switchover pending; then writes are taken. A peer that comes back ahead of it (it was
   * promoted, or took over) finds both histories moved on: split brain on both sites, nothing
   * resolved silently; a replica that never took over adopts the new generation.
   */
  unfence(disk: string): Generation {
    const r = this.row(disk);
    if (r?.state !== 'fenced' && r?.state !== 'switching') throw new FerryError('BAD_REQUEST', `disk '${disk}' is ${r?.state ?? 'normal'}, neither fenced nor switching over: nothing to unfence`);
    const g = newGeneration('diverged');
    this.put({ ...r, generations: appendGeneration(r.generations, g), state: 'normal', stateReason: null, stateAtMs: null, diverged: true, reconnect: null, pending: null });
    assert.ok(this.row(disk)?.state === 'normal', 'an unfence is durable before writes are taken');
    this.volumes.get(disk)?.setFence(null);
    this.log.warn({ disk, generation: g.id }, 'unfenced by the administrator: the disk takes writes again; its peer, if it returns, finds a split brain');
    return g;
  }

  // ---- planned switchover (control/switchover.ts) ----

  /** Registers what completes a switchover here once the peer is found to have taken the primary role. */
  whenPeerSwitched(handler: (disk: string) => void): void {
    this.peerSwitched = handler;
  }

  /** The primary begins a switchover: durable state 'switching' with its generation pending, writes refused. Idempotent. */
  beginSwitchover(disk: string, peer: string): Generation {
    const r = this.row(disk) ?? DrStore.empty(disk);
    if (r.state === 'switching' && r.pending) return r.pending;
    assert.ok(r.state === 'normal', 'only a disk in the normal state switches over');
    const g = newGeneration('switchover');
    const reason = `switchover to ${peer} in progress (generation ${g.id}): writes are refused until it completes; run 'ferry mirror switchover ${disk}' again to complete it`;
    this.put({ ...r, state: 'switching', stateReason: reason, stateAtMs: Date.now(), pending: g });
    assert.ok(this.row(disk)?.state === 'switching', 'the switchover is durable before writes are refused');
    this.volumes.get(disk)?.setFence(reason);
    this.log.warn({ disk, peer, generation: g.id }, 'switchover begins: writes refused');
    return g;
  }

  /** The history the reversed roles start with (the pending generation appended). */
  switchoverHistory(disk: string): Generation[] {
    const r = this.row(disk);
    assert.ok(r?.state === 'switching' && r.pending, 'a switchover history exists only while switching');
    return appendGeneration(r.generations, r.pending);
  }

  isSwitching(disk: string): boolean {
    return this.row(disk)?.state === 'switching';
  }

  /** The old primary becomes the replica: `end` (mirror row → replica row) and the generation, one transaction. */
  completeSwitchover(disk: string, end: () => void): void {
    const r = this.row(disk);
    assert.ok(r?.state === 'switching' && r.pending, 'a switchover completes only while switching');
    const generations = appendGeneration(r.generations, r.pending);
    this.rows.transaction(() => {
      end();
      this.rows.put({ ...r, generations, state: 'normal', stateReason: null, stateAtMs: null, pending: null, diverged: false, peer: null, peerDisk: null });
    });
    this.cache.delete(disk);
    this.log.warn({ disk, generation: r.pending.id }, 'switchover complete here: the disk is the replica of its former mirror');
  }

  /** The replica becomes the primary: `end` (replica row → mirror row) and the primary's switchover history, one transaction. */
  tookOver(disk: string, peer: string, originDisk: string, history: Generation[], end: () => void): void {
    this.rows.transaction(() => {
      end();
      const r = this.rows.get(disk) ?? DrStore.empty(disk);
      this.rows.put({ ...r, generations: history, state: 'normal', stateReason: null, stateAtMs: null, pending: null, diverged: false, peer, peerDisk: originDisk });
    });
    this.cache.delete(disk);
    this.log.warn({ disk, generation: currentGeneration(history)?.id, formerPrimary: `${peer}:${originDisk}` }, 'switchover: this disk is the primary now');
  }

  /** This site is switching over and the peer's current generation is the pending one: the peer took over. */
  private peerTookOver(r: DrRow | undefined, theirs: Generation[] | null): boolean {
    return r?.state === 'switching' && r.pending !== null && theirs !== null && currentGeneration(theirs)?.id === r.pending.id;
  }

  // ---- the primary site ----

  /** A disk getting its first mirror: starts its history unless it has one. */
  ensureHistory(disk: string): void {
    const r = this.row(disk);
    if (r && r.generations.length > 0) return;
    this.put({ ...(r ?? DrStore.empty(disk)), generations: [newGeneration('create')] });
  }

  /** Starts a new generation (durable when this returns). */
  rotate(disk: string, reason: GenerationReason): Generation {
    const r = this.row(disk) ?? DrStore.empty(disk);
    const g = newGeneration(reason);
    this.put({ ...r, generations: appendGeneration(r.generations, g), diverged: reason === 'diverged' ? true : r.diverged });
    this.log.info({ disk, generation: g.id, reason }, 'new generation');
    return g;
  }

  /**
   * A primary's remote mirror stream: `linkUp` says whether its link is connected now (null:
   * the stream is stopped). The first write while it is not starts a 'diverged' generation.
   */
  watchPrimary(disk: string, volume: Volume, linkUp: () => boolean | null): void {
    this.volumes.set(disk, volume);
    this.links.set(disk, linkUp);
  }

  /** Before each write staged on `disk` (its staging area's DivergenceStep, given at its opening). */
  beforeWrite(disk: string): void {
    const up = this.links.get(disk)?.();
    if (up !== false) return;
    const r = this.row(disk);
    if (!r || r.diverged || r.state !== 'normal') return;
    this.rotate(disk, 'diverged');
  }

  /** Why the disk's stream must not dial (fenced, split brain), else null. */
  held(disk: string): FerryError | null {
    const r = this.row(disk);
    if (r?.state === 'fenced') return new FerryError('FENCED', `disk '${disk}' is fenced: ${r.stateReason}`);
    if (r?.state === 'split-brain') return new FerryError('SPLIT_BRAIN', `disk '${disk}' is in split brain: ${r.stateReason}`);
    return null;
  }

  /** The mirror site accepted an attach: its history (adopted from ours) must not be ahead; our link is whole again. */
  primaryAttached(disk: string, peer: string, peerGenerations: unknown): void {
    const r = this.row(disk);
    if (!r) return;
    const theirs = parseHistory(peerGenerations);
    if (theirs) {
      const rel = relate(r.generations, theirs);
      if (rel === 'peer-ahead' || rel === 'split-brain') {
        this.react(disk, peer, theirs);
        throw this.held(disk) ?? new FerryError('SPLIT_BRAIN', `${peer} holds a history of '${disk}' ahead of this site's`);
      }
    }
    if (r.diverged) this.put({ ...r, diverged: false });
  }

  /** A failed attach: a refusal with the mirror site's history (FENCED, SPLIT_BRAIN) decides this site's state. */
  primaryFailed(disk: string, peer: string, err: unknown): void {
    if (!(err instanceof FerryError) || (err.code !== 'FENCED' && err.code !== 'SPLIT_BRAIN')) return;
    const remote = err.details?.remote as Record<string, unknown> | undefined;
    const theirs = parseHistory(remote?.generations);
    if (!theirs) return;
    if (this.peerTookOver(this.row(disk), theirs)) return this.peerSwitched(disk);
    const base = remote?.appliedSeq;
    this.react(disk, peer, theirs, typeof base === 'number' && Number.isSafeInteger(base) && base >= 0 ? base : null);
  }

  private react(disk: string, peer: string, theirs: Generation[], baseSeq: number | null = null): void {
    const r = this.row(disk);
    if (!r || r.state !== 'normal') return;
    const rel = relate(r.generations, theirs);
    const mine = currentGeneration(r.generations)?.id;
    const their = currentGeneration(theirs)?.id;
    if (rel === 'peer-ahead') {
      this.setState(disk, 'fenced', `${peer} was promoted past this site (its generation ${their} follows this disk's ${mine})`);
      this.changes.startOldPrimary(disk, this.volumes.get(disk), baseSeq);
    } else if (rel === 'split-brain') {
      this.setState(disk, 'split-brain', `this site and ${peer} both took writes since generation ${commonAncestor(r.generations, theirs)} (here ${mine}, at ${peer} ${their}); nothing is resynced until the administrator chooses the side to discard`);
      this.changes.startOldPrimary(disk, this.volumes.get(disk), baseSeq);
    } else {
      this.log.warn({ disk, peer, relation: rel, mine, theirs: their }, 'the mirror site refused the attach; its history does not put this site behind it');
    }
  }

  private setState(disk: string, state: DrState, reason: string): void {
    const r = this.row(disk) ?? DrStore.empty(disk);
    this.put({ ...r, state, stateReason: reason, stateAtMs: Date.now() });
    const v = this.volumes.get(disk);
    if (state === 'fenced') {
      assert.ok(this.row(disk)?.state === 'fenced', 'a disk is fenced durably before its writes are refused');
      v?.setFence(reason);
    } else v?.setFence(null);
    this.log.warn({ disk, state, reason }, state === 'fenced' ? 'disk fenced: it takes no writes' : state === 'split-brain' ? 'split brain: both sites took writes' : 'disaster recovery state cleared');
  }

  // ---- the mirror site ----

  /** An attach to an existing replica: it adopts its primary's history, unless its own is ahead or elsewhere. */
  replicaAttach(disk: string, peer: string, peerGenerations: unknown): void {
    const theirs = parseHistory(peerGenerations);
    if (!theirs || theirs.length === 0) return;
    const r = this.row(disk) ?? DrStore.empty(disk);
    const rel = relate(r.generations, theirs);
    if (rel === 'none' || rel === 'same' || rel === 'peer-ahead') {
      if (rel !== 'same') this.put({ ...r, generations: theirs });
      return;
    }
    throw new FerryError('SPLIT_BRAIN', `replica '${disk}' holds generation ${currentGeneration(r.generations)?.id}, not in ${peer}'s history (${rel})`, { generations: r.generations });
  }

  /** A replica created (or taken over) for the peer: its history is the primary's; a fence or split brain on it ends (it follows the peer now). */
  replicaCreated(disk: string, peerGenerations: unknown, commit: () => void = () => undefined): void {
    const theirs = parseHistory(peerGenerations) ?? [];
    const r = this.row(disk);
    if (r && r.state !== 'normal') this.log.warn({ disk, state: r.state }, 'the disk becomes the replica of its peer: its disaster recovery state ends');
    // `commit` (the replica row) in the same transaction: a crash never leaves a replica still fenced, or a fenced disk unrecorded.
    this.rows.transaction(() => {
      commit();
      this.rows.put({ ...DrStore.empty(disk), generations: theirs });
    });
    this.cache.delete(disk);
    this.volumes.get(disk)?.setFence(null);
    this.changes.end(disk); // its data is rewritten to the peer's image: what it changed no longer matters (D2)
  }

  /** An attach for a disk that is no replica here: a disk promoted from this peer's answers from its history. */
  formerReplicaAttach(disk: string, peer: string, originDisk: string, peerGenerations: unknown): void {
    const r = this.row(disk);
    const theirs = parseHistory(peerGenerations);
    if (this.peerTookOver(r, theirs)) {
      // The peer took the primary role and dials us as its replica: complete the switchover here first.
      this.peerSwitched(disk);
      throw new FerryError('DISK_BUSY', `disk '${disk}' is completing its switchover to ${peer}; attach again`);
    }
    if (r?.reconnect && r.reconnect.peer === peer && r.reconnect.peerDisk === originDisk) return; // the survivor we asked: it creates the replica here
    if (!r || !theirs || r.peer !== peer || r.peerDisk !== originDisk) return;
    const rel = relate(r.generations, theirs);
    const mine = currentGeneration(r.generations)?.id;
    if (rel === 'local-ahead') {
      throw new FerryError('FENCED', `disk '${disk}' was promoted at this site (generation ${mine}): ${peer}'s '${originDisk}' is stale and is no longer a replica here`, { generations: r.generations, ...this.changes.baseOf(disk) });
    }
    if (rel === 'split-brain') {
      if (r.state !== 'split-brain') this.setState(disk, 'split-brain', `${peer} took writes on '${originDisk}' after this disk was promoted from it (since generation ${commonAncestor(r.generations, theirs)}); nothing is resynced until the administrator chooses the side to discard`);
      throw new FerryError('SPLIT_BRAIN', `disk '${disk}' was promoted at this site and ${peer} took writes on '${originDisk}' since: split brain`, { generations: r.generations, ...this.changes.baseOf(disk) });
    }
  }

  /** `end` (ending the replica) and the promote generation in one transaction: the disk is never writable with its primary's generation. */
  promoted(disk: string, peer: string, originDisk: string, end: () => void): Generation {
    const g = newGeneration('promote');
    this.rows.transaction(() => {
      end();
      const r = this.rows.get(disk) ?? DrStore.empty(disk);
      this.rows.put({ ...r, generations: appendGeneration(r.generations, g), state: 'normal', stateReason: null, stateAtMs: null, diverged: false, peer, peerDisk: originDisk });
    });
    this.cache.delete(disk);
    this.log.warn({ disk, generation: g.id, formerPrimary: `${peer}:${originDisk}` }, 'new generation: promoted');
    return g;
  }
}

function commonAncestor(a: readonly Generation[], b: readonly Generation[]): string | null {
  const ids = new Set(b.map((g) => g.id));
  for (let i = a.length - 1; i >= 0; i--) if (ids.has(a[i]!.id)) return a[i]!.id;
  return null;
}
