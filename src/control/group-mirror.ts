// A consistency group's local mirror (`ferry mirror create --group NAME --to local:DIR`): one
// target file per member, DIR/<member>.img, created by Ferry at the member's size, and mapped
// at the member's base, like the group's own primary, into one ConcatStore. The mirror itself
// (consumer, committer, sync engine, verify, swap) is the ordinary one on the group's volume:
// it applies the group's one sequence, so the files always hold every member at the same point.
//
// Which members' files still have to be copied is recorded per member (mirror_members.synced):
// all of them at creation, a member added later alone (the others keep streaming); the sync
// engine copies only the chunks of those members (never the gaps between them).
import fs from 'node:fs';
import path from 'node:path';
import { FerryError, fromSystemError } from '../errors.js';
import { BlockDevice } from '../disk/block-device.js';
import { ConcatStore } from '../disk/concat-store.js';
import { SYNC_CHUNK_BYTES } from '../mirror/chunk-holds.js';
import { syncDirectory } from './disk-registry.js';
import type { GroupStore, MirrorMemberRow } from './group-store.js';
import { concatOf, memberPlaces } from './group-volumes.js';
import { assertNotReserved, assertPathFree, resolveTargetPath } from './path-guard.js';
import type { MetadataStore, MirrorRow, PeerRow } from './store.js';
import type { VerifyReport } from '../mirror/verify.js';
import type { MirrorStatus } from '../mirror/mirror-status.js';
import type { RegionLag } from '../journal/region-ledger.js';
import { validateName } from '../names.js';
import { parseRemote } from './mirror-target.js';

export interface GroupMirrorContext {
  store: MetadataStore;
  groups: GroupStore;
  dataDir: string;
}

/**
 * `PEER[:PREFIX]`: the group's replica at a paired site is a new group named PREFIX+GROUP whose
 * members are new disks named PREFIX+MEMBER, at the same bases (the attach carries them).
 */
export function groupRemoteTarget(ctx: GroupMirrorContext, to: string, group: string, peerRow: (name: string) => PeerRow | undefined): { peer: PeerRow; remoteDisk: string } {
  const i = to.indexOf(':');
  const name = i < 0 ? to : to.slice(0, i);
  const prefix = i < 0 ? '' : to.slice(i + 1);
  validateName('peer', name);
  if (prefix !== '' && !/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(prefix)) throw new FerryError('INVALID_TARGET', `prefix '${prefix}' is not the start of a valid disk name`);
  const remoteDisk = `${prefix}${group}`;
  for (const n of [remoteDisk, ...ctx.groups.members(group).map((m) => `${prefix}${m.disk}`)]) validateName('disk', n);
  const peer = peerRow(name);
  if (!peer) throw new FerryError('PEER_NOT_FOUND', `no peer named '${name}' (pair one with ferry peer add)`);
  if (!peer.address) throw new FerryError('INVALID_TARGET', `peer '${name}' paired with this site but has no address to dial; pair from this site (ferry peer add)`);
  const other = ctx.store.mirrors().find((x) => x.target === `${name}:${remoteDisk}`);
  if (other) throw new FerryError('PATH_IN_USE', `${name}:${remoteDisk} is already the mirror of '${other.disk}'`);
  return { peer, remoteDisk };
}

/** The group's layout as its replica at the peer takes it: each member's replica name, base and size. */
export function replicaLayout(ctx: GroupMirrorContext, group: string, remoteDisk: string): { members: Array<{ disk: string; base: number; size: number }> } {
  // The naming rule holds for a mirror created here (remoteDisk = PREFIX + group). A mirror that came
  // from a switchover or a reconnect targets a group that exists at the peer already, with its own
  // names: the attach never creates it, and status names the group rather than guessing members.
  const prefix = remoteDisk.endsWith(group) ? remoteDisk.slice(0, remoteDisk.length - group.length) : null;
  return { members: memberPlaces(ctx.groups.members(group), (n) => ctx.store.disk(n)).map((p) => ({ disk: prefix === null ? remoteDisk : `${prefix}${p.disk}`, base: p.base, size: p.size })) };
}

/** The directory of `local:DIR`, checked: absolute, an existing directory, not Ferry's own. */
export function groupTargetDir(ctx: GroupMirrorContext, to: unknown): string {
  if (typeof to !== 'string' || !to.startsWith('local:')) throw new FerryError('INVALID_TARGET', "a group's local mirror is local:DIR (a file per member in DIR)");
  const p = to.slice('local:'.length);
  if (!path.isAbsolute(p)) throw new FerryError('INVALID_PATH', `mirror target directory '${p}' must be absolute`);
  const { real, stat } = resolveTargetPath(p, 'mirror target directory');
  if (!stat) throw new FerryError('PATH_NOT_FOUND', `${real} does not exist: a group's mirror needs an existing directory (a file per member is created in it)`);
  if (!stat.isDirectory()) throw new FerryError('INVALID_TARGET', `${real} is not a directory: a group's mirror is local:DIR, a file per member in DIR`);
  assertNotReserved(ctx.dataDir, real, stat);
  return real;
}

/**
 * The target file of one member in DIR, checked free (Ferry never overwrites a file): null when
 * it is to be created; 'reuse' for a file `reuseEmpty` allows: empty (size 0: killed between its
 * creation and its sizing) or exactly the member's size, and not one data extent either way (what a
 * `group add` a crash cut short leaves; it is sized again and the copy writes it whole anyway).
 */
function memberTargetFile(ctx: GroupMirrorContext, dir: string, disk: string, size: number, reuseEmpty: boolean): { file: string; reuse: boolean } {
  const file = path.join(dir, `${disk}.img`);
  assertPathFree(ctx.store, ctx.dataDir, file);
  if (!fs.existsSync(file)) return { file, reuse: false };
  const st = fs.statSync(file);
  if (reuseEmpty && st.isFile() && st.size === 0) return { file, reuse: true };
  if (reuseEmpty && st.isFile() && st.size === size) {
    const d = BlockDevice.open(file, { readOnly: true });
    try {
      if (d.extents(0, size, 2).every((e) => e.flags !== 0)) return { file, reuse: true };
    } finally {
      void d.close();
    }
  }
  throw new FerryError('PATH_IN_USE', `${file} already exists: Ferry creates each member's mirror file itself and never overwrites one (move it away, or choose another directory)`);
}

/**
 * Creates the members' target files (each O_EXCL, at its size, synced with DIR); all or none.
 * `reuseEmpty`: an empty file of the right size may be taken as it is (see memberTargetFile).
 */
export function createMemberTargets(ctx: GroupMirrorContext, group: string, dir: string, members: Array<{ disk: string; size: number }>, reuseEmpty = false): MirrorMemberRow[] {
  const targets = members.map((m) => memberTargetFile(ctx, dir, m.disk, m.size, reuseEmpty));
  const files = targets.map((t) => t.file);
  const created: string[] = [];
  try {
    members.forEach((m, i) => {
      const reuse = targets[i]!.reuse;
      const fd = fs.openSync(files[i]!, reuse ? fs.constants.O_RDWR : fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
      if (!reuse) created.push(files[i]!);
      try {
        fs.ftruncateSync(fd, m.size);
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
    });
    syncDirectory(dir);
  } catch (err) {
    for (const f of created) fs.rmSync(f, { force: true });
    throw fromSystemError(err, `mirror files in ${dir}`);
  }
  return members.map((m, i) => ({ grp: group, disk: m.disk, path: files[i]!, created_file: targets[i]!.reuse ? 0 : 1, synced: 0 }));
}

/** Deletes target files this request created (its change failed before it was recorded). */
export function removeCreatedTargets(rows: MirrorMemberRow[]): void {
  for (const r of rows) if (r.created_file === 1) fs.rmSync(r.path, { force: true });
}

/** The group mirror's target: every member's file at the member's base. */
export function openGroupTarget(ctx: GroupMirrorContext, m: MirrorRow): ConcatStore {
  const group = m.disk;
  const places = memberPlaces(ctx.groups.members(group), (n) => ctx.store.disk(n));
  const rows = new Map(ctx.groups.mirrorMembers(group).map((r) => [r.disk, r]));
  const devices: BlockDevice[] = [];
  try {
    for (const p of places) {
      const r = rows.get(p.disk);
      if (!r) throw new FerryError('INTERNAL', `member '${p.disk}' of group '${group}' has no mirror file recorded`);
      devices.push(BlockDevice.open(r.path));
    }
    return concatOf(`${m.target}`, ctx.store.disk(group)!.size, places, devices);
  } catch (err) {
    for (const d of devices) void d.close();
    throw err;
  }
}

/** The chunks the group mirror's sync copies: those of members not yet copied (none of the gaps). */
export function unsyncedChunks(ctx: GroupMirrorContext, group: string): { bytes: number; has(chunk: number): boolean } | undefined {
  const rows = ctx.groups.mirrorMembers(group);
  // No rows: a remote group mirror that never changed membership copies the whole address space (its gaps are holes).
  if (rows.length === 0) return undefined;
  const pending = rows.filter((r) => r.synced === 0).map((r) => r.disk);
  // Every member copied (the one being copied was removed): nothing to copy, the sync ends at once.
  if (pending.length === 0) return { bytes: SYNC_CHUNK_BYTES, has: () => false };
  const ranges = memberPlaces(ctx.groups.members(group).filter((g) => pending.includes(g.disk)), (n) => ctx.store.disk(n)).map((p) => ({ first: Math.floor(p.base / SYNC_CHUNK_BYTES), last: Math.floor((p.base + p.size - 1) / SYNC_CHUNK_BYTES) }));
  return { bytes: SYNC_CHUNK_BYTES, has: (chunk) => ranges.some((r) => chunk >= r.first && chunk <= r.last) };
}

type MirrorMember = NonNullable<MirrorStatus['members']>[number];

/** Per member of a group mirror, for its status. */
export function memberTargets(ctx: GroupMirrorContext, group: string): Array<{ disk: string; target: string; synced: boolean }> {
  return ctx.groups.mirrorMembers(group).map((r) => ({ disk: r.disk, target: `local:${r.path}`, synced: r.synced === 1 }));
}

/**
 * Each member of a group's mirror: its local file, or its replica at the peer, whether it is
 * copied, and its share of the mirror's lag. `lag`: the journal's records not yet applied by
 * the mirror, per region (Journal.lagByRegion: one per member, in the order of their bases);
 * null, or a layout that no longer matches the members (a change reopening the group), leaves
 * the shares unknown (null).
 */
export function groupMirrorMembers(ctx: GroupMirrorContext, group: string, lag: RegionLag[] | null): MirrorMember[] {
  const row = ctx.store.mirror(group);
  if (!row) return [];
  const members = ctx.groups.members(group);
  const shares = new Map(lag && lag.length === members.length ? members.map((m, i) => [m.disk, lag[i]!]) : []);
  const withLag = (m: { disk: string; target: string; synced: boolean }): MirrorMember => ({ ...m, lagRecords: shares.get(m.disk)?.records ?? null, lagBytes: shares.get(m.disk)?.bytes ?? null });
  if (row.target.startsWith('local:')) return memberTargets(ctx, group).map(withLag);
  const { peer, remoteDisk } = parseRemote(row.target);
  return replicaLayout(ctx, group, remoteDisk).members.map((x, i) => {
    const disk = members[i]!.disk;
    return withLag({ disk, target: `${peer}:${x.disk}`, synced: (ctx.groups.mirrorMember(group, disk)?.synced ?? row.sync_done) === 1 });
  });
}

/**
 * What a membership change does to the group's (running, not paused) mirror, checked now (a
 * refusal changes nothing). Local: a joining member gets its new file in the mirror's
 * directory and is copied after the change; a leaving one keeps its file, a copy as of its
 * removal. At a peer: the peer's group follows at the next attach (replica-groups.ts), which
 * the mirror's restart makes; a joining member is copied alone (its row synced 0, the others'
 * rows synced 1); only in sync (one change at a time), and only while the peer's names follow
 * PREFIX+MEMBER (a mirror created here). `record` runs in the change's transaction; `undo`
 * deletes what was created if it fails.
 */
export function groupMemberChange(ctx: GroupMirrorContext, m: MirrorRow, state: string, change: { add: string; size: number } | { remove: string }): { record: () => void; undo: () => void } {
  const group = m.disk;
  if ('remove' in change) return { record: () => ctx.groups.deleteMirrorMember(group, change.remove), undo: () => undefined };
  if (m.target.startsWith('local:')) {
    const rows = createMemberTargets(ctx, group, groupTargetDir(ctx, m.target), [{ disk: change.add, size: change.size }], true);
    return {
      record: () => {
        for (const r of rows) ctx.groups.insertMirrorMember(r);
        ctx.store.updateMirror(group, { sync_cursor: 0, sync_done: 0 });
      },
      undo: () => removeCreatedTargets(rows),
    };
  }
  const { peer, remoteDisk } = parseRemote(m.target);
  if (!remoteDisk.endsWith(group)) throw new FerryError('NOT_SUPPORTED', `the mirror of group '${group}' came from a switchover or a reconnect: its members at ${peer} are named otherwise; remove and re-create the mirror to change the membership`);
  if (m.sync_done !== 1 || state !== 'in-sync') throw new FerryError('MIRROR_NOT_IN_SYNC', `the mirror of group '${group}' is ${state}: a membership change waits until it is in sync (one change at a time)`);
  const prefix = remoteDisk.slice(0, remoteDisk.length - group.length);
  const row = (disk: string, synced: number): MirrorMemberRow => ({ grp: group, disk, path: `remote:${peer}:${prefix}${disk}`, created_file: 0, synced });
  return {
    record: () => {
      for (const g of ctx.groups.members(group)) if (g.disk !== change.add && !ctx.groups.mirrorMember(group, g.disk)) ctx.groups.insertMirrorMember(row(g.disk, 1));
      ctx.groups.insertMirrorMember(row(change.add, 0));
      ctx.store.updateMirror(group, { sync_cursor: 0, sync_done: 0 });
    },
    undo: () => undefined,
  };
}

/**
 * A group mirror's verify report told per member: each difference in the group's address space
 * (Ferry's own business) as the member's range it lies in (C1: one member per range).
 */
export function perMember(ctx: GroupMirrorContext, group: string, report: VerifyReport): VerifyReport {
  const places = memberPlaces(ctx.groups.members(group), (n) => ctx.store.disk(n));
  const differences = report.differences.flatMap((x) =>
    places
      .filter((p) => p.base < x.offset + x.length && x.offset < p.base + p.size)
      .map((p) => {
        const start = Math.max(x.offset, p.base);
        return { offset: start - p.base, length: Math.min(x.offset + x.length, p.base + p.size) - start, member: p.disk };
      }),
  );
  return { ...report, differences };
}
