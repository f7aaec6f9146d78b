// The metadata of consistency groups (tables group_members and mirror_members, created by
// the migration in store.ts): which disks a group holds and at which base of its address
// space, and a local group mirror's target file per member. The group itself is a row of
// `disks` (kind 'group'), so its staging area, mirror and history are keyed like a disk's.
import type Database from 'better-sqlite3';

export interface GroupMemberRow {
  disk: string;
  grp: string;
  base: number;
  added_at: number;
}

export interface MirrorMemberRow {
  grp: string;
  disk: string;
  path: string;
  created_file: number;
  synced: number;
}

export class GroupStore {
  constructor(private readonly db: Database.Database) {}

  /** A group's members, by base. */
  members(grp: string): GroupMemberRow[] {
    return this.db.prepare('SELECT * FROM group_members WHERE grp = ? ORDER BY base').all(grp) as GroupMemberRow[];
  }

  /** The group a disk belongs to, if any. */
  groupOf(disk: string): GroupMemberRow | undefined {
    return this.db.prepare('SELECT * FROM group_members WHERE disk = ?').get(disk) as GroupMemberRow | undefined;
  }

  insertMember(row: GroupMemberRow): void {
    this.db.prepare('INSERT INTO group_members (disk, grp, base, added_at) VALUES (@disk, @grp, @base, @added_at)').run(row);
  }

  deleteMember(disk: string): void {
    this.db.prepare('DELETE FROM group_members WHERE disk = ?').run(disk);
  }

  setGroupSize(grp: string, size: number): void {
    this.db.prepare("UPDATE disks SET size = ? WHERE name = ? AND kind = 'group'").run(size, grp);
  }

  mirrorMembers(grp: string): MirrorMemberRow[] {
    return this.db.prepare('SELECT * FROM mirror_members WHERE grp = ? ORDER BY disk').all(grp) as MirrorMemberRow[];
  }

  mirrorMember(grp: string, disk: string): MirrorMemberRow | undefined {
    return this.db.prepare('SELECT * FROM mirror_members WHERE grp = ? AND disk = ?').get(grp, disk) as MirrorMemberRow | undefined;
  }

  insertMirrorMember(row: MirrorMemberRow): void {
    this.db.prepare('INSERT INTO mirror_members (grp, disk, path, created_file, synced) VALUES (@grp, @disk, @path, @created_file, @synced)').run(row);
  }

  setMirrorMemberSynced(grp: string, disk: string, synced: boolean): void {
    this.db.prepare('UPDATE mirror_members SET synced = ? WHERE grp = ? AND disk = ?').run(synced ? 1 : 0, grp, disk);
  }

  deleteMirrorMember(grp: string, disk: string): void {
    this.db.prepare('DELETE FROM mirror_members WHERE grp = ? AND disk = ?').run(grp, disk);
  }

  /** A swap of a local group mirror's roles: every member's path and its mirror file's exchange, in one transaction. */
  swapMemberPaths(grp: string): void {
    this.db.transaction(() => {
      for (const m of this.mirrorMembers(grp)) {
        const d = this.db.prepare('SELECT path FROM disks WHERE name = ?').get(m.disk) as { path: string };
        this.db.prepare('UPDATE mirror_members SET path = ? WHERE grp = ? AND disk = ?').run(`swapping:${m.path}`, grp, m.disk);
        this.db.prepare("UPDATE disks SET path = ?, kind = 'adopted', pool = NULL WHERE name = ?").run(m.path, m.disk);
        this.db.prepare('UPDATE mirror_members SET path = ? WHERE grp = ? AND disk = ?').run(d.path, grp, m.disk);
      }
    })();
  }

  /** Runs `fn` in one transaction. */
  transaction(fn: () => void): void {
    this.db.transaction(fn)();
  }
}
