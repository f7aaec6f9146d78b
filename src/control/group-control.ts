// Consistency groups (`ferry group`): several disks whose writes share one staging area, so
// they get one sequence, and whose mirror therefore holds every member at the same point of
// that sequence. The group is a row of `disks` (kind 'group') whose volume is the
// concatenation of its members' devices at fixed bases (group-volumes.ts); each member stays
// an NBD export of its own, a window of the group's volume. Staging, mirror and history are
// the group's, keyed by its name like a disk's: every mirror operation acts on the group.
//
// Membership changes rebuild the group's data path under its members' held I/O:
//
// | step | what                                                    | a crash here leaves                              |
// |------|---------------------------------------------------------|--------------------------------------------------|
// | 0    | the mirror and the staging area brought up to date while requests still flow (at most catchUpMsMax; the hold then drains only what came meanwhile) | nothing changed |
// | 1    | every member's requests held (in flight ones finish)    | nothing changed                                  |
// | 2    | the mirror drained and stopped (its row and position kept) | nothing changed (the mirror restarts at start) |
// | 3    | the group's volume closed: its staging area drained to the members | nothing changed: all applied          |
// | 4    | one transaction: membership, address space, mirror files | the new membership, opened at start              |
// | 5    | the group's volume reopened on the new layout, mirror restarted | (as 4)                                    |
// | 6    | each member's primary: its new window (a removed one: its own device) | (as 4)                               |
// | 7    | requests released                                        | (as 4)                                           |
//
// Bases never move and are never reused (G1): a record staged for a member always means the
// same bytes of the same device, also one a consumer still has to apply after a change.
// A member added later is copied into the group's mirror while the others keep streaming (its
// range is the only one the sync engine copies: group-mirror.ts), and the mirror reports
// `syncing` until it is whole again.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import { BlockDevice } from '../disk/block-device.js';
import { FailedStore } from '../disk/failed-store.js';
import { sizeBytesMax } from '../disk/size.js';
import type { Volume } from '../volume/volume.js';
import { WindowStore } from '../volume/window-store.js';
import type { DiskRegistry } from './disk-registry.js';
import { GROUP_ALIGN_BYTES, GROUP_MEMBERS_MAX, alignUp, groupPath, groupVolume, memberPlaces, memberWindow, type MemberPlace } from './group-volumes.js';
import type { MirrorControl } from './mirror-control.js';
import type { StagingControl } from './staging-control.js';
import type { MetadataStore } from './store.js';

export interface GroupMemberInfo {
  disk: string;
  base: number;
  size: number;
  clients: number;
  state: 'online' | 'unavailable';
}

export interface GroupInfo {
  name: string;
  state: 'online' | 'unavailable';
  error?: string;
  /** Bytes of the group's address space (members at fixed bases, 64 MiB aligned). */
  addressBytes: number;
  members: GroupMemberInfo[];
  staging: { path: string; copyPath: string | null; size: number } | null;
  /** The group's mirror target, if it has one (`ferry mirror status NAME` tells more). */
  mirror: string | null;
  createdAt: string;
}

export interface CreateGroupRequest {
  name: string;
  disks: string[];
  staging: string;
  stagingSize?: number;
  stagingCopy?: string;
}

/** What forming and dissolving a group work with. */
export interface GroupContext {
  store: MetadataStore;
  disks: DiskRegistry;
}

/**
 * Makes a group of `volumes` (checked joiners) at `places`: rows first (one transaction), then,
 * under their held requests, the group's volume over their devices and each member's window of
 * it. No staging area yet (the caller attaches one: a group's, or a replica's).
 */
export async function formGroup(ctx: GroupContext, name: string, addressBytes: number, places: MemberPlace[], volumes: Volume[]): Promise<void> {
  const created = Date.now();
  const releases = await Promise.all(volumes.map((v) => v.hold()));
  try {
    ctx.disks.groups.transaction(() => {
      ctx.store.insertDisk({ name, kind: 'group', pool: null, path: groupPath(name), size: addressBytes, read_only: 0, created_at: created });
      for (const p of places) ctx.disks.groups.insertMember({ disk: p.disk, grp: name, base: p.base, added_at: created });
    });
    const group = groupVolume(name, addressBytes, places, volumes.map((v) => v.primaryStore));
    ctx.disks.setVolume(name, group);
    volumes.forEach((v, i) => v.replacePrimary(memberWindow(group, places[i]!, ctx.store.disk(places[i]!.disk)!.path)));
  } finally {
    for (const r of releases) r();
  }
}

/** Members back on their own devices, then the rows go (a crash between: the group is opened again). No staging area left. */
export async function dissolveGroup(ctx: GroupContext, name: string): Promise<void> {
  const members = ctx.disks.groups.members(name);
  const vols = members.map((m) => ctx.disks.entry(m.disk).volume);
  const releases = await Promise.all(vols.map((v) => v?.hold()));
  try {
    const group = ctx.disks.entry(name).volume;
    for (let i = 0; i < members.length; i++) {
      const v = vols[i];
      if (!v) continue;
      v.replacePrimary(BlockDevice.open(ctx.store.disk(members[i]!.disk)!.path));
    }
    if (group) await group.close();
    ctx.disks.groups.transaction(() => {
      for (const m of members) ctx.disks.groups.deleteMember(m.disk);
      ctx.store.deleteDisk(name);
    });
    ctx.disks.dropGroup(name);
  } finally {
    for (const r of releases) r?.();
  }
}

export class GroupControl {
  constructor(
    private readonly store: MetadataStore,
    private readonly disks: DiskRegistry,
    private readonly staging: StagingControl,
    private readonly mirrors: MirrorControl,
    private readonly log: Logger,
  ) {}

  list(): GroupInfo[] {
    return this.store.disks().filter((r) => r.kind === 'group').map((r) => this.info(r.name));
  }

  show(name: string): GroupInfo {
    this.mustBeGroup(name);
    return this.info(name);
  }

  private mustBeGroup(name: string): void {
    if (!this.disks.isGroup(name)) {
      const isDisk = this.store.disk(name) !== undefined;
      throw new FerryError('GROUP_NOT_FOUND', isDisk ? `'${name}' is a disk, not a consistency group` : `no consistency group named '${name}'`);
    }
  }

  private rebuildContext(): RebuildContext {
    return { store: this.store, disks: this.disks, drainMirror: (g) => this.mirrors.drainGroupMirror(g), suspendMirror: (g) => this.mirrors.suspendGroupMirror(g) };
  }

  /** A group whose membership this site may change: not the replica of a group at a peer (its primary decides). */
  private mustBeChangeable(name: string): void {
    this.mustBeGroup(name);
    if (this.store.replica(name)) throw new FerryError('BAD_REQUEST', `group '${name}' is the replica of a group at a peer site: its membership follows that group's`);
  }

  private info(name: string): GroupInfo {
    const row = this.store.disk(name)!;
    const e = this.disks.entry(name);
    const s = this.store.staging(name);
    const m = this.store.mirror(name);
    return {
      name,
      state: e.volume ? 'online' : 'unavailable',
      ...(e.volume ? {} : { error: this.disks.get(name, { groups: true }).error ?? 'unavailable' }),
      addressBytes: row.size,
      members: this.disks.groups.members(name).map((g) => {
        const d = this.disks.get(g.disk);
        return { disk: g.disk, base: g.base, size: d.size, clients: d.clients, state: d.state };
      }),
      staging: s ? { path: s.path, copyPath: s.copy_path, size: s.size } : null,
      mirror: m ? m.target : null,
      createdAt: new Date(row.created_at).toISOString(),
    };
  }

  /** A disk that may join a group: online, writable, in no group, with no staging area, mirror or role of its own. */
  private checkJoiner(disk: string): Volume {
    const { row, volume } = this.disks.entry(disk);
    if (row.kind === 'group') throw new FerryError('BAD_REQUEST', `'${disk}' is a consistency group; a group holds disks`);
    const member = this.disks.groups.groupOf(disk);
    if (member) throw new FerryError('DISK_IN_GROUP', `disk '${disk}' is already a member of consistency group '${member.grp}'`);
    if (!volume) throw new FerryError('DISK_UNAVAILABLE', `disk '${disk}' is unavailable`);
    if (volume.readOnly) throw new FerryError('READ_ONLY', `disk '${disk}' is read-only; a group's staging area writes its members`);
    if (this.store.replica(disk)) throw new FerryError('DISK_BUSY', `disk '${disk}' is the replica of a disk at a peer site`);
    if (this.store.mirror(disk)) throw new FerryError('DISK_BUSY', `disk '${disk}' has a mirror of its own; remove it first (the group's mirror will hold the disk)`);
    if (this.store.staging(disk) || volume.staging) throw new FerryError('DISK_BUSY', `disk '${disk}' has a staging area of its own; detach it first (ferry staging detach ${disk}): the group's staging area takes its writes`);
    return volume;
  }

  /** Creates the group over existing disks and attaches its staging area; refusals change nothing. */
  async create(req: CreateGroupRequest): Promise<GroupInfo> {
    this.disks.checkNewName(req.name);
    if (!Array.isArray(req.disks) || req.disks.length === 0) throw new FerryError('BAD_REQUEST', 'give the disks of the group (--disks D1,D2,...)');
    if (req.disks.length > GROUP_MEMBERS_MAX) throw new FerryError('BAD_REQUEST', `a group holds at most ${GROUP_MEMBERS_MAX} disks`);
    if (new Set(req.disks).size !== req.disks.length) throw new FerryError('BAD_REQUEST', 'a disk is named twice in --disks');
    if (typeof req.staging !== 'string' || req.staging.length === 0) throw new FerryError('BAD_REQUEST', "give the group's staging area (--staging PATH --staging-size SIZE): its members' writes get one sequence there");
    const volumes = req.disks.map((d) => this.checkJoiner(d));
    const places: MemberPlace[] = [];
    let at = 0;
    for (let i = 0; i < req.disks.length; i++) {
      places.push({ disk: req.disks[i]!, base: at, size: volumes[i]!.size });
      at = alignUp(at + volumes[i]!.size, GROUP_ALIGN_BYTES);
    }
    if (at > sizeBytesMax) throw new FerryError('INVALID_SIZE', `the group's address space (${at} bytes) exceeds ${sizeBytesMax} bytes`);
    await formGroup({ store: this.store, disks: this.disks }, req.name, at, places, volumes);
    try {
      await this.staging.attach({ disk: req.name, path: req.staging, size: req.stagingSize, copy: req.stagingCopy });
    } catch (err) {
      // The staging area's refusal changed nothing: neither does the group's creation.
      await dissolveGroup({ store: this.store, disks: this.disks }, req.name);
      throw err;
    }
    this.log.info({ group: req.name, members: req.disks, addressBytes: at }, 'consistency group created');
    return this.info(req.name);
  }

  /**
   * Deletes the group: its staging area is drained into the members and detached; each member
   * is a disk of its own again, with its data. Refused while the group has a mirror.
   */
  async delete(name: string): Promise<GroupInfo> {
    this.mustBeGroup(name);
    return this.mirrors.exclusive(name, 'group delete', async () => {
      if (this.store.mirror(name)) throw new FerryError('DISK_BUSY', `group '${name}' has a mirror; remove it first (ferry mirror remove ${name})`);
      const before = this.info(name);
      if (this.store.staging(name)) await this.staging.detach(name);
      await dissolveGroup({ store: this.store, disks: this.disks }, name);
      this.log.info({ group: name, members: before.members.map((m) => m.disk) }, 'consistency group deleted; its members are disks of their own');
      return { ...before, staging: null };
    });
  }

  /** Adds a disk to the group online; the group's mirror copies it while the others keep streaming. */
  async add(name: string, disk: string): Promise<GroupInfo> {
    this.mustBeChangeable(name);
    return this.mirrors.exclusive(name, 'group add', async () => {
      const joining = this.checkJoiner(disk);
      if (this.disks.groups.members(name).length >= GROUP_MEMBERS_MAX) throw new FerryError('BAD_REQUEST', `group '${name}' already holds ${GROUP_MEMBERS_MAX} disks`);
      const row = this.store.disk(name)!;
      // G1: the new member goes past every base ever used (row.size is the high-water mark).
      const base = row.size;
      const addressBytes = alignUp(base + joining.size, GROUP_ALIGN_BYTES);
      if (addressBytes > sizeBytesMax) throw new FerryError('INVALID_SIZE', `group '${name}' would need ${addressBytes} bytes of address space (at most ${sizeBytesMax})`);
      const mirrorChange = this.mirrors.groupMemberChange(name, { add: disk, size: joining.size });
      await rebuildGroup(this.rebuildContext(), name, [joining], () => {
        this.disks.groups.insertMember({ disk, grp: name, base, added_at: Date.now() });
        this.disks.groups.setGroupSize(name, addressBytes);
        mirrorChange.record();
      }, mirrorChange.undo);
      this.log.info({ group: name, disk, base }, 'disk added to consistency group');
      return this.info(name);
    });
  }

  /** Removes a member online; it keeps its data (everything staged is applied first) and is a disk of its own again. */
  async remove(name: string, disk: string): Promise<GroupInfo> {
    this.mustBeChangeable(name);
    return this.mirrors.exclusive(name, 'group remove', async () => {
      const member = this.disks.groups.groupOf(disk);
      if (!member || member.grp !== name) throw new FerryError('BAD_REQUEST', `disk '${disk}' is not a member of group '${name}'`);
      if (this.disks.groups.members(name).length === 1) throw new FerryError('BAD_REQUEST', `'${disk}' is the last member of group '${name}': delete the group instead (ferry group delete ${name})`);
      const mirrorChange = this.mirrors.groupMemberChange(name, { remove: disk });
      await rebuildGroup(this.rebuildContext(), name, [], () => {
        this.disks.groups.deleteMember(disk);
        mirrorChange.record();
      }, mirrorChange.undo);
      this.log.info({ group: name, disk }, 'disk removed from consistency group; it keeps its data');
      return this.info(name);
    });
  }
}

/** How long step 0 may bring the mirror and the staging area up to date before the hold (then the hold drains the rest). */
const catchUpMsMax = 30_000;

/** What rebuilding a group asks of its mirror (none at a replica site: it receives, its peer mirrors). */
export interface RebuildContext extends GroupContext {
  /** Applies to the group's mirror every record staged so far (requests still flow). */
  drainMirror: (group: string) => Promise<void>;
  /** Drains and stops the group's mirror, its row and position kept (step 2). */
  suspendMirror: (group: string) => Promise<void>;
}

/**
 * Steps 0–7 of the table at the head of this file. `joining`: volumes that become members;
 * `change`: the metadata transaction; `undo`: what to clean when it fails before committing.
 */
export async function rebuildGroup(ctx: RebuildContext, name: string, joining: Volume[], change: () => void, undo: () => void): Promise<void> {
  const old = ctx.disks.entry(name).volume;
  if (!old) throw new FerryError('DISK_UNAVAILABLE', `group '${name}' is unavailable`);
  // 0: best effort (a paused mirror or a failing disk is told at step 2 or 3, under the hold, which changes nothing then).
  const catchUp = Promise.all([ctx.drainMirror(name), old.staging?.drain()]).catch(() => undefined);
  await Promise.race([catchUp, sleep(catchUpMsMax, undefined, { ref: false })]);
  const before = ctx.disks.groups.members(name).map((m) => m.disk);
  const held = [...before.map((d) => ctx.disks.entry(d).volume), ...joining];
  const releases = await Promise.all(held.map((v) => v?.hold()));
  try {
    await ctx.suspendMirror(name); // 2: drained, stopped; a refusal changes nothing
    let failure: unknown = null;
    try {
      await old.close(); // 3: the staging area drained into the members, the journal closed
    } catch (err) {
      failure = new FerryError('IO_ERROR', `group '${name}' could not be drained for the change (nothing was changed): ${(err as Error).message}`);
    }
    try {
      if (failure === null) ctx.disks.groups.transaction(change); // 4
    } catch (err) {
      failure = err;
    }
    if (failure !== null) undo();
    // 5 and 6, also after a failure: the group comes back (as it was, then), its members never left waiting on a closed volume.
    const reopened = await ctx.disks.openAndRecover(ctx.store.disk(name)!);
    ctx.disks.setVolume(name, reopened.volume, reopened.error);
    placeMembers(ctx, name, before, joining, reopened.volume, reopened.error);
    if (failure !== null) throw failure;
  } finally {
    for (const r of releases) r?.();
  }
}

/** 6: every member's primary is its window of the (re)opened group, a former member its own device. */
function placeMembers(ctx: GroupContext, name: string, before: string[], joining: Volume[], group: Volume | null, error: string | undefined): void {
  const now = ctx.disks.groups.members(name);
  const places = memberPlaces(now, (n) => ctx.store.disk(n));
  const volumes = new Map<string, Volume>();
  for (const d of before) {
    const v = ctx.disks.entry(d).volume;
    if (v) volumes.set(d, v);
  }
  for (const v of joining) volumes.set(v.name, v);
  for (const [disk, v] of volumes) {
    const place = places.find((p) => p.disk === disk);
    const row = ctx.store.disk(disk)!;
    let old;
    if (!place) old = v.replacePrimary(BlockDevice.open(row.path));
    else if (group) old = v.replacePrimary(memberWindow(group, place, row.path));
    else old = v.replacePrimary(new FailedStore(row.path, place.size, new FerryError('DISK_UNAVAILABLE', `its consistency group '${name}' is unavailable: ${error ?? 'unknown'}`)));
    // A joining disk's own device is now the group's (opened by the group's volume): its old handle goes.
    if (!(old instanceof WindowStore) && !(old instanceof FailedStore)) void old.close();
    assert.ok(v.primaryStore !== old, 'G2: every member was placed');
  }
}
