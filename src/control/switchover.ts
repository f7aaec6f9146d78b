// Planned switchover of a remote mirror (`ferry mirror switchover DISK`, at either site; at
// the replica site B it asks A over a 'control' session and A runs it): writes at A stop, every staged record reaches the replica at B, the roles reverse
// in one step recorded durably on both sites with a new generation (dr-control.ts), and A
// becomes the replica of B, which streams in the other direction. No data is copied: B's
// staging area, which numbers records as A's did, becomes the staging area of a primary, and
// A's becomes a replica's; B ships from the record after A's last one.
//
//   step  site  what                                                  a crash (kill -9) here leaves             recovery
//   1     A     checks: in sync, link up, no NBD clients (--force     nothing changed                           -
//               disconnects them)
//   2     A     state 'switching' with the switchover's generation    A: writes refused (durable), mirror       'mirror switchover' again at A (status:
//               pending, durable; then writes refused (FENCED)        ships; B: replica. One primary, writes    dr.state 'switching') goes on from step 3
//                                                                     stopped
//   3     A     waits for in-flight writes, drains: B acknowledged    as 2                                      as 2
//               every record (up to lastSeq)
//   4     B     applies every record, checks it holds lastSeq, adds   B (before 4c): still a replica; an extra  as 2; a mirror consumer without a mirror
//               the mirror consumer, then in ONE transaction:         consumer is removed at its start          row is removed at start
//               replica row → mirror row to A, history with the new
//               generation, A as former primary; then writable and
//               streams to A
//   5     A     in ONE transaction: mirror row → replica row of B,    A 'switching' (no writes), B primary:     automatic: B's attach to A, or A's attach
//               the generation appended, state normal; then the       exactly one primary                       refused by B, carries B's history whose
//               mirror consumer is removed, the disk held read-only                                             current generation is A's pending one: A
//               (replica) and receives from B                                                                   completes step 5 (or 'mirror switchover')
//   after A is B's replica, in sync, no copy                         -                                         -
//
// Invariants (asserted where they are kept): the disk is writable at most at one site at any
// step (A refuses writes, durably, before B can become writable; B becomes writable only in
// the transaction that records it the primary); B takes over only holding every record A
// wrote (lastSeq); A completes only when B's current generation is the one A drew.
import { setTimeout as sleep } from 'node:timers/promises';
import assert from 'node:assert';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import { askPeer, type ControlCaller } from './control-session.js';
import { hostPort, newPrimaryRow, policyOf, policyOfRow } from './remote-mirror-row.js';
import { currentGeneration, parseHistory } from '../replication/generations.js';
import type { DiskRegistry } from './disk-registry.js';
import type { DrControl } from './dr-control.js';
import { failpoint } from './failpoint.js';
import type { MirrorControl } from './mirror-control.js';
import { parseRemote } from './mirror-target.js';
import type { ReplicaControl } from './replica-control.js';
import type { MetadataStore, PeerRow } from './store.js';
import type { PeerSession } from '../replication/peer-session.js';

/** How long the replica may take to apply its backlog and take over. */
const takeOverMsMax = 60_000;
/** How long the replica site waits for the primary site to run a switchover it asked for. */
const askedMsMax = 180_000;

export interface SwitchoverReport {
  disk: string;
  /** The primary now: PEER:DISK. */
  primary: string;
  /** The generation the reversed roles start. */
  generation: string;
  /** The last record of the old primary, the first the new one ships is the next. */
  seq: number;
  /** How long writes were refused here, from step 2 to the end. */
  pauseMs: number;
  /** NBD connections closed (--force). */
  disconnected: number;
  /** Records staged here and not yet acknowledged by the peer when writes stopped, and their bytes: all the data the switchover sent. */
  drainedRecords: number;
  drainedBytes: number;
}

export interface SwitchoverDeps {
  store: MetadataStore;
  disks: DiskRegistry;
  mirrors: MirrorControl;
  replicas: ReplicaControl;
  dr: DrControl;
  /** Closes the NBD connections to a disk (after their in-flight requests); resolves with how many. */
  disconnectClients: (disk: string) => Promise<number>;
  /** The port of this site's replication listener (the new primary dials it if it has no address for us). */
  replPort: () => number;
  /** This site's name (how the peer names it). */
  siteName: string;
  /** Dials a peer for a 'control' session (the replica site asking the primary site). */
  connect: (peer: PeerRow) => Promise<PeerSession>;
  log: Logger;
}

export class SwitchoverControl {
  /** Step 5 running per disk (it may be started by the command or by what the peer says). */
  private readonly finishing = new Map<string, Promise<void>>();

  constructor(private readonly d: SwitchoverDeps) {
    d.dr.whenPeerSwitched((disk) => void this.finishHere(disk).catch((err) => d.log.error({ disk, err: (err as Error).message }, 'completing the switchover failed; run mirror switchover again')));
  }

  /** Steps 1-5 at the primary site (or 2-5 again after a crash: idempotent); at the replica site, asks the primary site to run them. */
  run(disk: string, opts: { force: boolean }): Promise<SwitchoverReport> {
    return this.d.mirrors.exclusive(disk, 'switchover', () => (this.d.store.replica(disk) ? this.ask(disk, opts) : this.runNow(disk, opts)));
  }

  /** At the replica site: the primary site runs the switchover (over a 'control' session); its report, named from here. */
  private async ask(disk: string, opts: { force: boolean }): Promise<SwitchoverReport> {
    const r = this.d.store.replica(disk)!;
    const peer = this.d.store.peer(r.peer);
    if (!peer) throw new FerryError('PEER_NOT_FOUND', `peer '${r.peer}' is no longer paired`);
    const answer = await askPeer(this.d.connect, peer, { op: 'switchover', disk: r.origin_disk, force: opts.force }, askedMsMax, 'switchover');
    const rep = answer.report as SwitchoverReport;
    return { ...rep, disk, primary: `${this.d.siteName}:${disk}` };
  }

  /** At the primary site: the replica site (`peer`) asks for the switchover of the disk it mirrors (a 'control' request). */
  async serveRequest(from: ControlCaller, meta: Record<string, unknown>): Promise<Record<string, unknown>> {
    const peer = from.peer;
    const disk = meta.disk;
    if (typeof disk !== 'string') throw new FerryError('BAD_REQUEST', 'switchover needs disk');
    const row = this.d.store.mirror(disk);
    // Only the site holding the replica may ask.
    if (!row || row.target.startsWith('local:') || parseRemote(row.target).peer !== peer) throw new FerryError('NO_MIRROR', `disk '${disk}' has no mirror at ${peer} here`);
    return { report: await this.run(disk, { force: meta.force === true }) };
  }

  private async runNow(disk: string, opts: { force: boolean }): Promise<SwitchoverReport> {
    const { store, dr } = this.d;
    const { volume } = this.d.disks.entry(disk);
    const row = store.mirror(disk);
    if (!row) throw new FerryError('NO_MIRROR', `disk '${disk}' has no mirror`);
    if (row.target.startsWith('local:')) throw new FerryError('BAD_REQUEST', `the mirror of '${disk}' is local: use 'ferry mirror swap'`);
    const remote = this.d.mirrors.remoteOf(disk);
    if (!remote || !volume?.staging) throw new FerryError('DISK_UNAVAILABLE', `the mirror of '${disk}' is not running here`);
    const { peer, remoteDisk } = parseRemote(row.target);
    // Step 1 (a switchover already begun goes on: its checks passed then, and writes are stopped).
    if (!dr.isSwitching(disk)) {
      const held = dr.held(disk);
      if (held) throw held;
      const st = remote.mirror.status();
      if (st.state !== 'in-sync' || !st.consistent) throw new FerryError('MIRROR_NOT_IN_SYNC', `the mirror of '${disk}' is ${st.state}: a switchover needs it in sync`);
      if (remote.stream.state !== 'connected') throw new FerryError('PEER_UNREACHABLE', `the link to ${peer} is ${remote.stream.state}${remote.stream.lastError ? ` (${remote.stream.lastError})` : ''}`);
      if (this.d.disks.clientsOf(disk) > 0 && !opts.force) {
        throw new FerryError('DISK_BUSY', `${this.d.disks.clientsOf(disk)} NBD client(s) are attached to '${disk}' here: stop them (the application moves to ${peer}), or --force disconnects them`);
      }
    }
    const disconnected = opts.force ? await this.d.disconnectClients(disk) : 0;
    const t0 = performance.now();
    // Step 2: durable, then writes refused.
    const g = dr.beginSwitchover(disk, peer);
    failpoint('switchover-fenced');
    // Step 3: writes admitted before the fence are staged, then all of them reach B.
    await volume.exclusive(async () => undefined);
    const lastSeq = volume.staging.journal.writtenSeq;
    // What is left to ship: the only data the switchover moves.
    const staged = remote.stream.lag();
    const done = this.completion(disk);
    await Promise.race([
      (async () => {
        await remote.mirror.drain();
        failpoint('switchover-drained');
        // Step 4, at B.
        let timer: NodeJS.Timeout | undefined;
        const policy = policyOfRow(row);
        const request = remote.stream.request({ op: 'switchover', generations: dr.switchoverHistory(disk), lastSeq, replPort: this.d.replPort(), policy });
        try {
          await Promise.race([request, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new FerryError('PEER_UNREACHABLE', `${peer} did not take over within ${takeOverMsMax / 1000} s`)), takeOverMsMax)))]);
        } finally {
          clearTimeout(timer);
        }
        failpoint('switchover-peer-took-over');
        await this.finishHere(disk);
      })(),
      done,
    ]).catch(async (err: Error) => {
      // The request fails when step 5, started because the peer had taken over, stops the stream: that is success.
      await this.finishing.get(disk);
      if (store.replica(disk)) return;
      throw new FerryError(err instanceof FerryError ? err.code : 'INTERNAL', `${err.message}; '${disk}' stays switching over (writes refused): run 'ferry mirror switchover ${disk}' again to complete it`);
    });
    assert.ok(store.replica(disk) !== undefined, 'after a switchover the old primary is the replica');
    this.d.log.info({ disk, primary: `${peer}:${remoteDisk}`, generation: g.id, seq: lastSeq }, 'switchover complete');
    return { disk, primary: `${peer}:${remoteDisk}`, generation: g.id, seq: lastSeq, pauseMs: performance.now() - t0, disconnected, drainedRecords: staged.records, drainedBytes: staged.bytes };
  }

  /** Resolves once step 5 has run here (started by anyone). */
  private async completion(disk: string): Promise<void> {
    for (;;) {
      const f = this.finishing.get(disk);
      if (f) return f;
      if (this.d.store.replica(disk)) return;
      await sleep(50);
    }
  }

  /** Step 5: the old primary becomes the replica of its former mirror. Idempotent. */
  finishHere(disk: string): Promise<void> {
    let f = this.finishing.get(disk);
    if (!f) {
      f = this.finishNow(disk).finally(() => this.finishing.delete(disk));
      this.finishing.set(disk, f);
    }
    return f;
  }

  private async finishNow(disk: string): Promise<void> {
    const { store, dr } = this.d;
    if (store.replica(disk) || !dr.isSwitching(disk)) return;
    const row = store.mirror(disk);
    assert.ok(row && !row.target.startsWith('local:'), 'a switching disk has its remote mirror row until step 5');
    const { peer, remoteDisk } = parseRemote(row.target);
    const { volume } = this.d.disks.entry(disk);
    await this.d.mirrors.stopRemote(disk);
    failpoint('switchover-before-replica-commit');
    dr.completeSwitchover(disk, () => {
      store.deleteMirror(disk);
      store.insertReplica({ disk, peer, origin_disk: remoteDisk, synced: 1, created_disk: 0, created_at: Date.now() });
    });
    // Row first, then the consumer: a consumer without a mirror row is removed at start.
    await volume!.staging!.journal.removeConsumer('mirror');
    this.d.replicas.adoptAfterSwitchover(disk, peer);
    volume!.setFence(null); // held read-only as a replica first: no write slips between
  }

  /** Step 4, at B (a request from the primary on the replica's session). */
  async takeOver(disk: string, meta: Record<string, unknown>, from: { peer: string; address: string | null }): Promise<Record<string, unknown>> {
    const { store, dr } = this.d;
    const history = parseHistory(meta.generations);
    const lastSeq = meta.lastSeq;
    if (!history || history.length === 0 || typeof lastSeq !== 'number' || !Number.isSafeInteger(lastSeq) || lastSeq < 0) {
      throw new FerryError('BAD_REQUEST', 'switchover needs generations and lastSeq');
    }
    const theirs = currentGeneration(history)!.id;
    if (!store.replica(disk)) {
      // Asked again after the answer was lost: already the primary by this very switchover.
      if (currentGeneration(dr.history(disk))?.id === theirs) return { generations: dr.history(disk) };
      throw new FerryError('NO_MIRROR', `disk '${disk}' is not a replica here`);
    }
    const replPort = typeof meta.replPort === 'number' && Number.isSafeInteger(meta.replPort) ? meta.replPort : null;
    await this.d.replicas.takeOver(disk, from.peer, lastSeq, (r) => {
      dr.tookOver(disk, r.peer, r.origin_disk, history, () => {
        store.deleteReplica(disk);
        store.insertMirror(newPrimaryRow(disk, r.peer, r.origin_disk, policyOf(meta.policy)));
        // The old primary dialled us: without an address for it, its own (the session's source, its listener's port).
        const p = store.peer(r.peer);
        if (p && p.address === null && from.address && replPort) store.updatePeerAddress(r.peer, hostPort(from.address, replPort));
      });
    });
    failpoint('switchover-replica-took-over');
    this.d.mirrors.startRecorded(disk);
    return { generations: dr.history(disk) };
  }
}
