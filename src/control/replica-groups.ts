// The parts of a replica that is a consistency group (replica-control.ts uses them): the
// group's layout an attach carries, checked; the new group a first attach creates (its
// members new disks at the primary's bases, one address space); the group following its
// primary's membership at every attach after a `group add` or `group remove` there; and the
// removal of what a failed creation made.
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import { validateName } from '../names.js';
import type { ReplicaHandle } from '../replication/receiver.js';
import type { Volume } from '../volume/volume.js';
import type { DiskRegistry } from './disk-registry.js';
import { dissolveGroup, formGroup, rebuildGroup } from './group-control.js';
import { GROUP_MEMBERS_MAX, type MemberPlace } from './group-volumes.js';
import type { MetadataStore } from './store.js';

export interface ReplicaGroupContext {
  store: MetadataStore;
  disks: DiskRegistry;
  log: Logger;
  /** Whether the replica's undo log is active (a resync runs). */
  resyncing: (disk: string) => boolean;
  /** The replica's handle as the replica control holds it now. */
  handle: (disk: string) => ReplicaHandle | undefined;
}

/** A consistency group's layout in an attach (the primary's bases, the replica's member names), checked. */
export function groupMeta(raw: unknown, addressBytes: number): { members: MemberPlace[] } {
  const g = raw as { members?: unknown };
  if (typeof g !== 'object' || g === null || !Array.isArray(g.members) || g.members.length === 0 || g.members.length > GROUP_MEMBERS_MAX) {
    throw new FerryError('BAD_REQUEST', 'attach: a group needs 1 to 128 members');
  }
  const members = g.members.map((m: { disk?: unknown; base?: unknown; size?: unknown }) => {
    if (typeof m.disk !== 'string' || !Number.isSafeInteger(m.base) || !Number.isSafeInteger(m.size) || (m.base as number) < 0 || (m.size as number) <= 0 || (m.base as number) + (m.size as number) > addressBytes) {
      throw new FerryError('BAD_REQUEST', 'attach: each group member needs a disk name, a base and a size inside the address space');
    }
    validateName('disk', m.disk);
    return { disk: m.disk, base: m.base as number, size: m.size as number };
  });
  return { members };
}

/** A group replica's first attach: a new group `disk` of new disks at the primary's bases (names must be free here). */
export async function createGroupReplica(ctx: ReplicaGroupContext, disk: string, size: number, group: { members: MemberPlace[] }): Promise<void> {
  for (const name of [disk, ...group.members.map((m) => m.disk)]) {
    if (ctx.store.disk(name)) throw new FerryError('DISK_EXISTS', `'${name}' exists here: the replica of a consistency group is created new (choose another prefix: --to PEER:PREFIX)`);
  }
  const volumes: Volume[] = [];
  try {
    for (const m of group.members) {
      await ctx.disks.create({ name: m.disk, size: m.size });
      volumes.push(ctx.disks.entry(m.disk).volume!);
    }
    await formGroup({ store: ctx.store, disks: ctx.disks }, disk, size, group.members, volumes);
  } catch (err) {
    for (const m of group.members) if (ctx.store.disk(m.disk) && !ctx.disks.groups.groupOf(m.disk)) await ctx.disks.remove(m.disk, { purge: true }).catch(() => undefined);
    throw err;
  }
}

/**
 * A group's replica follows its primary's membership (group add / remove there), told by
 * every attach: members are matched by base (bases are never reused, G1); a base new there
 * is a new disk here (zeroes: the primary's sync copies it), a base gone there leaves the
 * group here and is a normal disk with its data. The session holding the replica is dropped
 * first, then the group is rebuilt as at a start (group-control.ts rebuildGroup); the attach
 * goes on with the new handle. Refused while the replica resyncs (its undo log covers the
 * old layout).
 */
export async function followMembership(ctx: ReplicaGroupContext, disk: string, h: ReplicaHandle, group: { members: MemberPlace[] }, addressBytes: number): Promise<ReplicaHandle> {
  const here = ctx.disks.groups.members(disk);
  const byBase = new Map(here.map((m) => [m.base, m]));
  const wanted = new Set(group.members.map((m) => m.base));
  const adds = group.members.filter((m) => !byBase.has(m.base));
  const removes = here.filter((m) => !wanted.has(m.base));
  if (adds.length === 0 && removes.length === 0) return h;
  for (const m of group.members) {
    const x = byBase.get(m.base);
    if (x && ctx.store.disk(x.disk)!.size !== m.size) throw new FerryError('DISK_BUSY', `member '${x.disk}' of group '${disk}' here holds ${ctx.store.disk(x.disk)!.size} bytes; the primary's member at its base holds ${m.size}`);
  }
  if (ctx.resyncing(disk)) throw new FerryError('MIRROR_NOT_IN_SYNC', `group '${disk}' is resyncing here: its membership follows once the sync completed`);
  for (const a of adds) if (ctx.store.disk(a.disk)) throw new FerryError('DISK_EXISTS', `'${a.disk}' exists here: the group's new member cannot be created`);
  h.released = true; // no frame of an older session touches the old volume
  await h.dropSession?.();
  const joining: Volume[] = [];
  for (const a of adds) {
    await ctx.disks.create({ name: a.disk, size: a.size });
    joining.push(ctx.disks.entry(a.disk).volume!);
  }
  const now = Date.now();
  await rebuildGroup({ store: ctx.store, disks: ctx.disks, drainMirror: async () => undefined, suspendMirror: async () => undefined }, disk, joining, () => {
    for (const a of adds) ctx.disks.groups.insertMember({ disk: a.disk, grp: disk, base: a.base, added_at: now });
    for (const r of removes) ctx.disks.groups.deleteMember(r.disk);
    ctx.disks.groups.setGroupSize(disk, Math.max(addressBytes, ctx.store.disk(disk)!.size));
  }, () => undefined);
  const next = ctx.handle(disk);
  if (!next || next === h) throw new FerryError('DISK_UNAVAILABLE', `replica group '${disk}' could not be reopened after its membership changed`);
  ctx.log.info({ group: disk, added: adds.map((a) => a.disk), removed: removes.map((r) => r.disk) }, "replica group follows its primary's membership");
  return next;
}

/** Removes a replica's disk this site created for it (a group's: the group, then its members). */
export async function removeCreatedReplica(ctx: ReplicaGroupContext, disk: string): Promise<void> {
  if (!ctx.disks.isGroup(disk)) {
    await ctx.disks.remove(disk, { purge: true });
    return;
  }
  const members = ctx.disks.groups.members(disk).map((m) => m.disk);
  await dissolveGroup({ store: ctx.store, disks: ctx.disks }, disk);
  for (const m of members) await ctx.disks.remove(m, { purge: true });
}
