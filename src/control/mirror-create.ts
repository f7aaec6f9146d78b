// The one creation process of a mirror (`mirror create`): every refusal happens before
// anything is created or changed; a staging area the request attached goes again on a
// failure; for a local target its file, for a remote one the replica at the peer (created by
// the first attach, which happens before the answer). The row is written first, then the
// journal's consumer (a crash in between is repaired at start: mirror-control openAtStart).
// Also the survivor's side of a reconnect (reconnect.ts), a remote mirror whose sync copies
// only the regions changed since divergence. mirror-control.ts runs these in its per-disk
// operation queue and starts the mirrors they record.
import assert from 'node:assert';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { FerryError, fromSystemError } from '../errors.js';
import { BlockDevice } from '../disk/block-device.js';
import { ChunkHolds } from '../mirror/chunk-holds.js';
import { MIRROR_CONSUMER, type Mirror, type MirrorStatus } from '../mirror/mirror.js';
import { parsePolicy, type MirrorPolicy, type PolicyRequest } from '../mirror/mirror-policy.js';
import type { SyncMode } from '../mirror/sync-engine.js';
import type { RemoteStream } from '../replication/remote-stream.js';
import type { Volume } from '../volume/volume.js';
import { syncDirectory, type DiskRegistry } from './disk-registry.js';
import { checkTarget, parseRemote, type Target } from './mirror-target.js';
import { resolveTargetPath } from './path-guard.js';
import { createMemberTargets, groupRemoteTarget, groupTargetDir, openGroupTarget, removeCreatedTargets } from './group-mirror.js';
import type { DiskStore } from '../disk/store.js';
import type { StagingControl } from './staging-control.js';
import type { MetadataStore, MirrorRow, PeerRow } from './store.js';

const firstAttachMsMax = 30_000;

export interface CreateMirrorRequest extends PolicyRequest {
  disk: string;
  to: string;
  staging?: string;
  stagingSize?: number;
  stagingCopy?: string;
  sync?: SyncMode;
  /** Overwrite an existing local target that holds data (a full sync). */
  force?: boolean;
}

export function policyColumns(p: MirrorPolicy): Pick<MirrorRow, 'on_full' | 'max_lag_bytes' | 'max_lag_ms' | 'bandwidth' | 'compress' | 'rpo_ms'> {
  return { on_full: p.onFull, max_lag_bytes: p.maxLagBytes, max_lag_ms: p.maxLagMs, bandwidth: p.bandwidth, compress: p.compress, rpo_ms: p.rpoMs };
}

export interface MirrorCreateDeps {
  store: MetadataStore;
  disks: DiskRegistry;
  staging: StagingControl;
  dataDir: string;
  log: Logger;
  /** A paired peer by name (NOT_SUPPORTED without a replication listener). */
  remotePeer: (name: string) => PeerRow | undefined;
  /** Starts a recorded local mirror onto its open target. */
  startLocal: (m: MirrorRow, volume: Volume, device: DiskStore) => void;
  /** A recorded remote mirror's stream, not started. */
  remoteStream: (m: MirrorRow, volume: Volume, holds: ChunkHolds) => RemoteStream;
  /** Starts a recorded remote mirror with its (started) stream. */
  startRemote: (m: MirrorRow, volume: Volume, started: { stream: RemoteStream; holds: ChunkHolds }) => Mirror;
  statusOf: (disk: string) => MirrorStatus;
}

export class MirrorCreator {
  constructor(private readonly d: MirrorCreateDeps) {}

  async create(req: CreateMirrorRequest): Promise<MirrorStatus> {
    const { row, volume } = this.d.disks.entry(req.disk);
    if (!volume) throw new FerryError('DISK_UNAVAILABLE', `disk '${req.disk}' is unavailable`);
    if (this.d.store.mirror(req.disk)) throw new FerryError('MIRROR_EXISTS', `${row.kind === 'group' ? 'group' : 'disk'} '${req.disk}' already has a mirror`);
    if (volume.readOnly) throw new FerryError('READ_ONLY', `disk '${req.disk}' is read-only`);
    const member = this.d.disks.groups.groupOf(req.disk);
    if (member) throw new FerryError('DISK_IN_GROUP', `disk '${req.disk}' is a member of consistency group '${member.grp}': mirror the group (ferry mirror create --group ${member.grp})`);
    const mode: SyncMode = req.sync ?? 'full';
    if (row.kind === 'group') return this.createGroup(req, volume, mode);
    const target = checkTarget(req.to, row, volume.size, { store: this.d.store, dataDir: this.d.dataDir, peer: this.d.remotePeer }, { fullSync: mode === 'full', force: req.force === true });
    const policy = parsePolicy(req, target.kind === 'remote');
    const hasStaging = this.d.store.staging(req.disk) !== undefined;
    if (req.staging === undefined && (req.stagingSize !== undefined || req.stagingCopy !== undefined)) {
      throw new FerryError('BAD_REQUEST', '--staging-size and --staging-copy describe a staging area to attach: give --staging too');
    }
    if (hasStaging && req.staging !== undefined) throw new FerryError('STAGING_EXISTS', `disk '${req.disk}' already has a staging area; leave out --staging`);
    if (!hasStaging && req.staging === undefined) {
      throw new FerryError('NO_STAGING', `disk '${req.disk}' has no staging area: give --staging PATH --staging-size SIZE (every write to a mirrored disk goes through one)`);
    }
    if (mode === 'checksum' && target.kind === 'local' && !target.exists) throw new FerryError('BAD_REQUEST', '--sync=checksum compares with data already on the target; a new file holds none (use full)');
    if (!hasStaging) {
      // The staging area is created first: given the target's (new) path too, it would take it.
      for (const [p, what] of [[req.staging, 'staging area'], [req.stagingCopy, 'staging copy']] as const) {
        let real: string | null = null;
        try {
          real = typeof p === 'string' && path.isAbsolute(p) ? resolveTargetPath(p, what).real : null;
        } catch {
          real = null; // a bad staging path: attach() refuses it
        }
        if (target.kind === 'local' && real === target.real) throw new FerryError('PATH_IN_USE', `${real} cannot be both the mirror target and the ${what}`);
      }
      await this.d.staging.attach({ disk: req.disk, path: req.staging!, size: req.stagingSize, copy: req.stagingCopy });
    }
    // Nothing half-done: the staging area this request attached goes again.
    const undoStaging = async (): Promise<void> => {
      if (!hasStaging) await this.d.staging.detach(req.disk).catch((e) => this.d.log.error({ disk: req.disk, err: (e as Error).message }, 'could not detach the staging area of a failed mirror create'));
    };
    if (target.kind === 'remote') return this.createRemote(req, volume, target, mode, policy, undoStaging);

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
      await undoStaging();
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
      ...policyColumns(policy),
      resync: 0,
      delta: 0,
    };
    // Row first, then the consumer: a crash in between is repaired at start (openAtStart).
    this.d.store.insertMirror(m);
    await volume.staging!.journal.addConsumer(MIRROR_CONSUMER);
    this.d.startLocal(m, volume, device);
    this.d.log.info({ disk: req.disk, target: m.target, sync: mode }, 'mirror created; syncing');
    return this.d.statusOf(req.disk);
  }

  /**
   * A consistency group's local mirror: a new file per member in the target directory
   * (group-mirror.ts), the group's staging area (the group always has one), one consumer.
   * The row and the members' files in one transaction, then the consumer (a crash in between
   * is repaired at start, as for a disk).
   */
  private async createGroup(req: CreateMirrorRequest, volume: Volume, mode: SyncMode): Promise<MirrorStatus> {
    const ctx = { store: this.d.store, groups: this.d.disks.groups, dataDir: this.d.dataDir };
    if (typeof req.to !== 'string' || req.to.length === 0) throw new FerryError('INVALID_TARGET', "give the group's mirror target: local:DIR (a file per member) or PEER[:PREFIX] (a group at a paired site)");
    const remote = !req.to.startsWith('local:') ? groupRemoteTarget(ctx, req.to, req.disk, this.d.remotePeer) : null;
    const dir = remote ? null : groupTargetDir(ctx, req.to);
    if (mode !== 'full') throw new FerryError('BAD_REQUEST', "a group's mirror is new: --sync full (the default)");
    const policy = parsePolicy(req, remote !== null);
    if (req.staging !== undefined || req.stagingSize !== undefined || req.stagingCopy !== undefined) {
      throw new FerryError('BAD_REQUEST', `group '${req.disk}' has its staging area (given at group create): leave out --staging`);
    }
    if (!volume.staging) throw new FerryError('NO_STAGING', `group '${req.disk}' has no staging area: attach one (ferry staging attach ${req.disk} --path PATH --size SIZE)`);
    if (remote) return this.createRemote(req, volume, { kind: 'remote', ...remote }, mode, policy, async () => undefined);
    const members = this.d.disks.groups.members(req.disk).map((g) => ({ disk: g.disk, size: this.d.store.disk(g.disk)!.size }));
    const rows = createMemberTargets(ctx, req.disk, dir!, members);
    const m: MirrorRow = {
      disk: req.disk,
      target: `local:${dir!}`,
      path: `group:${req.disk}`,
      created_file: 1,
      sync_mode: mode,
      sync_cursor: 0,
      sync_done: 0,
      target_zero: 1,
      paused: 0,
      created_at: Date.now(),
      ...policyColumns(policy),
      resync: 0,
      delta: 0,
    };
    let target;
    try {
      this.d.disks.groups.transaction(() => {
        this.d.store.insertMirror(m);
        for (const r of rows) this.d.disks.groups.insertMirrorMember(r);
      });
      target = openGroupTarget(ctx, m);
    } catch (err) {
      if (this.d.store.mirror(req.disk)) this.d.store.deleteMirror(req.disk);
      removeCreatedTargets(rows);
      throw err;
    }
    await volume.staging.journal.addConsumer(MIRROR_CONSUMER);
    this.d.startLocal(m, volume, target);
    this.d.log.info({ group: req.disk, target: m.target, members: members.length }, 'group mirror created; syncing');
    return this.d.statusOf(req.disk);
  }

  /**
   * A mirror on a peer site: the first attach happens before this returns, so every refusal
   * at the peer (disk in use, too small, not paired) reaches the administrator, with nothing
   * left behind on either site.
   */
  private async createRemote(req: CreateMirrorRequest, volume: Volume, target: Extract<Target, { kind: 'remote' }>, mode: SyncMode, policy: MirrorPolicy, undoStaging: () => Promise<void>): Promise<MirrorStatus> {
    const label = `${target.peer.name}:${target.remoteDisk}`;
    const m: MirrorRow = {
      disk: req.disk,
      target: label,
      path: `remote:${label}`,
      created_file: 0,
      sync_mode: mode,
      sync_cursor: 0,
      sync_done: 0,
      target_zero: 0,
      paused: 0,
      created_at: Date.now(),
      ...policyColumns(policy),
      resync: 0,
      delta: 0,
    };
    const journal = volume.staging!.journal;
    this.d.store.insertMirror(m);
    await journal.addConsumer(MIRROR_CONSUMER);
    const holds = new ChunkHolds();
    const stream = this.d.remoteStream(m, volume, holds);
    stream.start();
    try {
      const reply = await firstAttach(stream, target.peer.name);
      if (reply.meta.created === true) {
        this.d.store.updateMirror(req.disk, { target_zero: 1 });
        m.target_zero = 1;
      }
    } catch (err) {
      await stream.stop();
      await journal.removeConsumer(MIRROR_CONSUMER);
      this.d.store.deleteMirror(req.disk);
      await undoStaging();
      throw err;
    }
    this.d.startRemote(m, volume, { stream, holds });
    this.d.log.info({ disk: req.disk, target: label, sync: mode }, 'remote mirror created; syncing over the link');
    return this.d.statusOf(req.disk);
  }

  /**
   * The survivor of a reconnect, with no mirror (dropRemote): `record` writes the delta
   * mirror's row (in the caller's transaction); then a new consumer at the journal's head, the stream and its first attach,
   * which creates the replica at the peer. A failed first attach leaves the mirror recorded:
   * it redials, and its status says why it does not attach.
   */
  async startDelta(m: MirrorRow, volume: Volume, record: () => void): Promise<MirrorStatus> {
    assert.ok(m.delta === 1 && m.sync_done === 0, 'a reconnect starts a delta sync');
    const journal = volume.staging!.journal;
    assert.ok(!journal.hasConsumer(MIRROR_CONSUMER), 'a reconnect starts from no mirror (dropRemote)');
    record();
    // Row first, then the consumer (at the head: the sync copies everything before it): a row without one gets it at start.
    await journal.addConsumer(MIRROR_CONSUMER);
    const holds = new ChunkHolds();
    const stream = this.d.remoteStream(m, volume, holds);
    stream.start();
    this.d.startRemote(m, volume, { stream, holds });
    await firstAttach(stream, parseRemote(m.target).peer);
    return this.d.statusOf(m.disk);
  }
}

/** The stream's first attach, within firstAttachMsMax. */
async function firstAttach(stream: RemoteStream, peer: string): Promise<Awaited<RemoteStream['firstAttach']>> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      stream.firstAttach,
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new FerryError('PEER_UNREACHABLE', `peer '${peer}' did not answer within ${firstAttachMsMax / 1000} s`)), firstAttachMsMax))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
