// Reconnect after a failover (`ferry mirror reconnect DISK [--discard-changes-at SITE]`): the
// site whose disk is fenced (its peer was promoted past it) or that an administrator chose
// to discard in a split brain becomes the replica of the other site, the survivor, which
// resyncs to it ONLY the regions changed on either side since the sites diverged (the union
// of both divergence maps: replication/divergence-map.ts), from the survivor's disk. The
// reconnecting site's own last image is kept by its undo log while that copy runs
// (replica-control.ts): were the survivor lost mid-resync, a promote there rolls back to it.
//
// The sites are R (reconnecting, runs the command) and S (the survivor, serves R's 'control'
// request); steps, and what a crash (kill -9) at each leaves:
//
//   step  site  what                                                  a crash here leaves                       recovery
//   1     R     checks (nothing changed on a refusal): R fenced, or   nothing changed                           -
//               split brain with --discard-changes-at naming R; no
//               NBD clients (--force disconnects them); S agrees (a
//               dry run of step 4's checks at S)
//   2     R     durably: fenced, with the survivor it waits for       R fenced (reconnecting), its mirror and    'mirror reconnect DISK' again at R goes
//               and its mirror's policy (dr-control beginReconnect);  staging area possibly dropped; S as it     on from step 3 (the survivor and the
//               in-flight writes end; its changed regions are read    was. Writes refused at R: as chosen        policy are read from the row)
//   3     R     drops its own remote mirror (no word to S) and its    as 2                                       as 2
//               staging area (every staged write onto its disk: the
//               image the undo log will keep)
//   4     S     checks the histories (R behind S, or split brain with  as 2; S's map may hold R's granules       as 2
//               R's writes discarded), drops its own held mirror to R  (bits only added: more resynced, never
//               if it has one, unites R's map with its own (durable),  less)
//               gets a staging area if it has none
//   5     S     in ONE transaction: the delta mirror's row to R, a     S primary of R (its stream redials; the    automatic: S's stream attaches to R,
//               new 'resync' generation, split brain ended; then the   first attach creates R's replica)         which creates the replica on R's disk
//               consumer, the stream, the first attach: R's replica
//               is created on R's existing disk (recorded consistent,
//               in one transaction with R's history = S's) and the
//               attach (not synced) starts its undo log
//   6     S     the delta sync copies the granules of the union;      S resumes from its sync checkpoint with    automatic
//               once done: the row says so, then the map is deleted   the map (reopened at start); R's undo
//               (D2); R is told it is consistent (its undo log goes)  log keeps its image (U1-U6)
//
// Invariants: R takes no write from step 2 until it is a replica (then the replica hold);
// S's delta sync starts only once the union is durable at S (the row is written after
// uniteChanges); S never accepts a reconnect from a site whose history is ahead of its own,
// nor a split brain without the administrator's choice.
import assert from 'node:assert';
import path from 'node:path';
import { FerryError } from '../errors.js';
import { STAGING_BYTES_MIN } from '../journal/journal.js';
import { parseHistory, relate } from '../replication/generations.js';
import { askPeer, type ControlCaller } from './control-session.js';
import { failpoint } from './failpoint.js';
import { parseRemote } from './mirror-target.js';
import { hostPort, newPrimaryRow, policyOf, policyOfRow } from './remote-mirror-row.js';
import { REPLICA_STAGING_DIR } from './replica-control.js';
import type { StagingControl } from './staging-control.js';
import type { SwitchoverDeps } from './switchover.js';

/** How long the survivor may take to check, unite the maps and attach the new replica. */
const askMsMax = 120_000;
/** The survivor's staging area, when it must create one: the reconnecting site's size, within these bounds. */
const stagingBytesDefault = 1024 * 1024 * 1024;
const stagingBytesMax = 64 * 1024 * 1024 * 1024;

export interface ReconnectReport {
  disk: string;
  /** The primary now, whose replica this disk is: PEER:DISK. */
  primary: string;
  /** The site whose writes since divergence are discarded (this one). */
  discardedAt: string;
  /** The generation the survivor started for the resync. */
  generation: string;
  /** Bytes of the 64 KiB granules changed here since divergence, at the survivor, and their union: what the resync copies. */
  changedHereBytes: number;
  changedThereBytes: number;
  resyncBytes: number;
  diskBytes: number;
  /** NBD connections closed (--force). */
  disconnected: number;
}

/** What a switchover works with (switchover.ts), and the staging areas and data directory (the survivor may need a staging area). */
export type ReconnectDeps = SwitchoverDeps & {
  staging: StagingControl;
  dataDir: string;
};

export class ReconnectControl {
  constructor(private readonly d: ReconnectDeps) {}

  /** Steps 1-3 here, 4-5 at the survivor (asked over a 'control' session). */
  run(disk: string, opts: { discardChangesAt?: string; force: boolean }): Promise<ReconnectReport> {
    return this.d.mirrors.exclusive(disk, 'reconnect', () => this.runNow(disk, opts));
  }

  private async runNow(disk: string, opts: { discardChangesAt?: string; force: boolean }): Promise<ReconnectReport> {
    const { dr, store } = this.d;
    const { volume } = this.d.disks.entry(disk);
    if (!volume) throw new FerryError('DISK_UNAVAILABLE', `disk '${disk}' is unavailable here`);
    const replica = store.replica(disk);
    if (replica) throw new FerryError('BAD_REQUEST', `disk '${disk}' is already the replica of ${replica.peer}:${replica.origin_disk}`);
    // Step 1.
    const begun = dr.reconnecting(disk);
    const survivor = begun ?? this.survivorOf(disk);
    const state = dr.status(disk)?.state ?? 'normal';
    this.checkDiscard(disk, state, survivor.peer, opts.discardChangesAt, begun !== null);
    if (this.d.disks.clientsOf(disk) > 0 && !opts.force) {
      throw new FerryError('DISK_BUSY', `${this.d.disks.clientsOf(disk)} NBD client(s) are attached to '${disk}' here; its data is about to be replaced by ${survivor.peer}'s: stop them, or --force disconnects them`);
    }
    const peer = store.peer(survivor.peer);
    if (!peer) throw new FerryError('PEER_NOT_FOUND', `peer '${survivor.peer}' is no longer paired`);
    const request = {
      op: 'reconnect',
      disk: survivor.peerDisk,
      replicaDisk: disk,
      size: volume.size,
      generations: dr.history(disk),
      discard: state === 'split-brain' || begun !== null,
      stagingBytes: volume.staging?.journal.areaBytes ?? null,
      // The mirror's policy goes on at the survivor: a retry after step 3 (the mirror dropped) sends the one recorded at step 2.
      policy:
        begun?.policy ??
        (() => {
          const row = store.mirror(disk);
          return row && !row.target.startsWith('local:') ? policyOfRow(row) : null;
        })(),
      replPort: this.d.replPort(),
    };
    await askPeer(this.d.connect, peer, { ...request, dryRun: true }, askMsMax, 'reconnect check');
    const disconnected = opts.force ? await this.d.disconnectClients(disk) : 0;
    // Step 2.
    if (!begun) {
      dr.beginReconnect(disk, survivor.peer, survivor.peerDisk, request.policy, `reconnecting as the replica of ${survivor.peer}:${survivor.peerDisk}: this site's writes since the sites diverged are discarded; writes are refused until it is a replica (run 'ferry mirror reconnect ${disk}' again if it was interrupted)`);
    }
    await volume.exclusive(async () => undefined); // writes admitted before the fence are done (and marked: D1)
    const mine = await dr.changesToSend(disk, volume.size);
    // Step 3.
    await this.d.mirrors.dropRemote(disk);
    if (store.staging(disk)) await this.d.staging.detach(disk);
    assert.ok(!store.mirror(disk) && !store.staging(disk), 'a reconnecting disk has no mirror and no staging area before the survivor attaches');
    failpoint('reconnect-dropped');
    // Steps 4-5, at the survivor.
    const answer = await askPeer(this.d.connect, peer, request, askMsMax, 'reconnect', mine.bits).catch((err: Error) => {
      throw new FerryError(err instanceof FerryError ? err.code : 'INTERNAL', `${err.message}; '${disk}' stays fenced, waiting for ${survivor.peer}: run 'ferry mirror reconnect ${disk}' again`);
    });
    const rep = answer.report as Pick<ReconnectReport, 'generation' | 'changedThereBytes' | 'resyncBytes'>;
    const report: ReconnectReport = { disk, primary: `${survivor.peer}:${survivor.peerDisk}`, discardedAt: this.d.siteName, generation: rep.generation, changedHereBytes: mine.bytes, changedThereBytes: rep.changedThereBytes, resyncBytes: rep.resyncBytes, diskBytes: volume.size, disconnected };
    this.d.log.warn({ ...report }, 'reconnected: this disk is the replica of the survivor; the changed regions are being resynced');
    return report;
  }

  /** The peer and disk this one diverged from: its mirror's target (an old primary), or its former primary (promoted here). */
  private survivorOf(disk: string): { peer: string; peerDisk: string } {
    const state = this.d.dr.status(disk)?.state ?? 'normal';
    if (state !== 'fenced' && state !== 'split-brain') {
      const why = state === 'switching' ? 'switching over: complete it with \'ferry mirror switchover\'' : 'not fenced nor in split brain: it has not diverged from a peer';
      throw new FerryError('BAD_REQUEST', `disk '${disk}' is ${why}. Reconnect runs at the site whose disk is fenced (or in split brain); 'ferry mirror generations ${disk}' shows the state`);
    }
    const row = this.d.store.mirror(disk);
    if (row && !row.target.startsWith('local:')) {
      const { peer, remoteDisk } = parseRemote(row.target);
      return { peer, peerDisk: remoteDisk };
    }
    const former = this.d.dr.status(disk)?.formerPrimary;
    const at = former?.indexOf(':') ?? -1;
    if (!former || at <= 0) throw new FerryError('NO_MIRROR', `disk '${disk}' has no remote mirror and no former primary here: there is no peer to reconnect to`);
    return { peer: former.slice(0, at), peerDisk: former.slice(at + 1) };
  }

  private checkDiscard(disk: string, state: string, peer: string, discardAt: string | undefined, begun: boolean): void {
    const here = this.d.siteName;
    if (discardAt !== undefined && discardAt !== here && discardAt !== peer) {
      throw new FerryError('BAD_REQUEST', `--discard-changes-at names neither site of '${disk}': this site is '${here}', its peer '${peer}'`);
    }
    if (discardAt === peer) {
      throw new FerryError('BAD_REQUEST', `the site whose writes are discarded becomes the replica: to discard ${peer}'s writes, run 'ferry mirror reconnect ${disk} --discard-changes-at ${peer}' at ${peer}`);
    }
    if (state === 'split-brain' && !begun && discardAt === undefined) {
      throw new FerryError('SPLIT_BRAIN', `disk '${disk}' is in split brain: this site and ${peer} both took writes since they diverged, and nothing is resynced until you choose. 'ferry mirror reconnect ${disk} --discard-changes-at ${here}' here discards this site's writes (it becomes ${peer}'s replica); the same at ${peer} with --discard-changes-at ${peer} discards ${peer}'s`);
    }
  }

  /**
   * `mirror unfence --force`: the fenced disk serves its own data again, its peer given up for
   * good, or a switchover its lost peer cannot complete is abandoned (dr-control unfence);
   * refused without force, changing nothing.
   */
  unfence(disk: string, opts: { force: boolean }): Promise<{ disk: string; generation: string }> {
    return this.d.mirrors.exclusive(disk, 'reconnect', () => {
      this.d.disks.entry(disk); // DISK_NOT_FOUND
      const state = this.d.dr.status(disk)?.state ?? 'normal';
      if (!opts.force && state === 'fenced') {
        throw new FerryError('BAD_REQUEST', `disk '${disk}' is fenced because its peer holds newer writes; unfencing serves this site's older data and gives up the peer's (should it return, both sites are in split brain). Use 'ferry mirror reconnect ${disk}' to follow the peer, or --force to unfence`);
      }
      if (!opts.force && state === 'switching') {
        throw new FerryError('BAD_REQUEST', `disk '${disk}' is switching over; 'ferry mirror switchover ${disk}' completes it once its peer is back. Unfencing abandons the switchover (should the peer have taken over, both sites are in split brain): --force to unfence`);
      }
      // A disk neither fenced nor switching over is refused there (BAD_REQUEST: nothing to unfence).
      return { disk, generation: this.d.dr.unfence(disk).id };
    });
  }

  /** Steps 4-5 at the survivor: the reconnecting site's request (a dry run checks only). */
  serveRequest(from: ControlCaller, meta: Record<string, unknown>, bits: Buffer): Promise<Record<string, unknown>> {
    const disk = meta.disk;
    const replicaDisk = meta.replicaDisk;
    const theirs = parseHistory(meta.generations);
    if (typeof disk !== 'string' || typeof replicaDisk !== 'string' || !theirs || typeof meta.size !== 'number') throw new FerryError('BAD_REQUEST', 'reconnect needs disk, replicaDisk, size and generations');
    return this.d.mirrors.exclusive(disk, 'reconnect', async () => {
      const { store, dr } = this.d;
      const { volume } = this.d.disks.entry(disk);
      if (!volume) throw new FerryError('DISK_UNAVAILABLE', `disk '${disk}' is unavailable at ${this.d.siteName}`);
      if (store.replica(disk)) throw new FerryError('BAD_REQUEST', `disk '${disk}' is a replica at ${this.d.siteName}: it cannot be the survivor`);
      if (volume.size !== meta.size) throw new FerryError('BAD_REQUEST', `disk '${disk}' holds ${volume.size} bytes at ${this.d.siteName}, '${replicaDisk}' ${String(meta.size)} at ${from.peer}: not two copies of one disk`);
      const state = dr.status(disk)?.state ?? 'normal';
      if (state === 'fenced') throw new FerryError('FENCED', `disk '${disk}' is fenced at ${this.d.siteName}: it is the stale side; reconnect it here instead`);
      if (state === 'switching') throw new FerryError('DISK_BUSY', `disk '${disk}' is switching over at ${this.d.siteName}`);
      const rel = relate(dr.history(disk), theirs);
      if (rel === 'split-brain' && meta.discard !== true) throw new FerryError('SPLIT_BRAIN', `'${disk}' at ${this.d.siteName} and '${replicaDisk}' at ${from.peer} both took writes since they diverged: name the side to discard`);
      if (rel !== 'local-ahead' && rel !== 'split-brain') {
        const why = rel === 'peer-ahead' ? `${from.peer}'s history is ahead of this site's: reconnect at ${this.d.siteName} instead` : rel === 'same' ? 'both hold the same generation: they have not diverged' : 'they share no generation: create the mirror with a full sync';
        throw new FerryError('BAD_REQUEST', `'${disk}' at ${this.d.siteName} and '${replicaDisk}' at ${from.peer}: ${why}`);
      }
      const row = store.mirror(disk);
      const ours = row && !row.target.startsWith('local:') && parseRemote(row.target).peer === from.peer && parseRemote(row.target).remoteDisk === replicaDisk;
      if (row && !ours) throw new FerryError('MIRROR_EXISTS', `disk '${disk}' already has a mirror at ${this.d.siteName} (${row.target}): remove it first`);
      if (meta.dryRun === true) return {};
      // Step 4.
      if (ours) await this.d.mirrors.dropRemote(disk);
      const { map, ownBytes } = await dr.uniteChanges(disk, volume, bits);
      if (!store.staging(disk)) {
        const wanted = typeof meta.stagingBytes === 'number' && Number.isSafeInteger(meta.stagingBytes) ? meta.stagingBytes : stagingBytesDefault;
        const size = Math.min(stagingBytesMax, Math.max(STAGING_BYTES_MIN, Math.floor(wanted / 4096) * 4096));
        await this.d.staging.attach({ disk, path: path.join(this.d.dataDir, REPLICA_STAGING_DIR, `${disk}.stg`), size, firstSeq: 1 });
      }
      const p = store.peer(from.peer);
      const replPort = typeof meta.replPort === 'number' && Number.isSafeInteger(meta.replPort) ? meta.replPort : null;
      // Step 5.
      const m = newPrimaryRow(disk, from.peer, replicaDisk, policyOf(meta.policy), true);
      let generation = '';
      await this.d.mirrors.startDelta(m, volume, () => {
        generation = dr.reconnected(disk, () => {
          store.insertMirror(m);
          // The reconnecting site dialled us: without an address for it, its own (the session's source, its listener's port).
          if (p && p.address === null && from.address && replPort) store.updatePeerAddress(from.peer, hostPort(from.address, replPort));
        }).id;
      });
      const resyncBytes = map.changedBytes;
      this.d.log.warn({ disk, replica: `${from.peer}:${replicaDisk}`, generation, resyncBytes, ownBytes }, 'reconnect: the peer is the replica of this disk; resyncing the regions changed on either side');
      return { report: { generation, changedThereBytes: ownBytes, resyncBytes } };
    });
  }
}
