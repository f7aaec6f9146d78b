// The control layer's metadata store: one SQLite database (WAL, synchronous=FULL) in
// the data directory holding pools, disks, staging areas, mirrors and peers. It is the
// single source of truth for what the daemon serves after a restart. Every change is
// one transaction; schema changes are numbered migrations applied at open.
import type { PeerRow } from '../replication/peer-row.js';
import Database from 'better-sqlite3';

export interface PoolRow {
  name: string;
  path: string;
  created_at: number;
}

export type DiskKind = 'virtual' | 'adopted';

export interface DiskRow {
  name: string;
  kind: DiskKind | 'group';
  pool: string | null;
  path: string;
  size: number;
  read_only: number;
  created_at: number;
}

/** A migration starting with this marker runs with foreign keys off (a table rebuild), checked after. */
const REBUILD_WITHOUT_FOREIGN_KEYS = '-- rebuild without foreign keys';

const migrations: string[] = [
  `CREATE TABLE pools (
     name TEXT PRIMARY KEY,
     path TEXT NOT NULL UNIQUE,
     created_at INTEGER NOT NULL
   );
   CREATE TABLE disks (
     name TEXT PRIMARY KEY,
     kind TEXT NOT NULL CHECK (kind IN ('virtual', 'adopted')),
     pool TEXT REFERENCES pools(name),
     path TEXT NOT NULL UNIQUE,
     size INTEGER NOT NULL CHECK (size > 0),
     read_only INTEGER NOT NULL DEFAULT 0,
     created_at INTEGER NOT NULL
   );`,
  `CREATE TABLE staging (
     disk TEXT PRIMARY KEY REFERENCES disks(name),
     path TEXT NOT NULL UNIQUE,
     copy_path TEXT UNIQUE,
     size INTEGER NOT NULL CHECK (size > 0),
     created_file INTEGER NOT NULL,
     created_copy INTEGER NOT NULL,
     created_at INTEGER NOT NULL
   );`,
  `CREATE TABLE mirrors (
     disk TEXT PRIMARY KEY REFERENCES disks(name),
     target TEXT NOT NULL,
     path TEXT NOT NULL UNIQUE,
     created_file INTEGER NOT NULL,
     sync_mode TEXT NOT NULL CHECK (sync_mode IN ('full', 'checksum')),
     sync_cursor INTEGER NOT NULL,
     sync_done INTEGER NOT NULL,
     target_zero INTEGER NOT NULL,
     paused INTEGER NOT NULL DEFAULT 0,
     created_at INTEGER NOT NULL
   );`,
  // Peers: other ferryd sites this one trusts, identified by the SHA-256 fingerprint of
  // their certificate (pinned at pairing). address is NULL for a peer that paired with us
  // and that we never dial.
  `CREATE TABLE peers (
     name TEXT PRIMARY KEY,
     address TEXT,
     fingerprint TEXT NOT NULL UNIQUE,
     site_id TEXT NOT NULL,
     created_at INTEGER NOT NULL
   );`,
  // Replicas: disks this site holds as the mirror of a disk at a peer site.
  `CREATE TABLE replicas (
     disk TEXT PRIMARY KEY REFERENCES disks(name),
     peer TEXT NOT NULL,
     origin_disk TEXT NOT NULL,
     synced INTEGER NOT NULL,
     created_disk INTEGER NOT NULL,
     created_at INTEGER NOT NULL
   );`,
  // Mirror policies: what a full staging area does (on_full), bounded lag (max_lag_*),
  // the link's rate limit and compression; resync = 1 while a dirty-region bitmap waits to
  // be (or is being) copied after a fallback.
  `ALTER TABLE mirrors ADD COLUMN on_full TEXT NOT NULL DEFAULT 'throttle' CHECK (on_full IN ('bitmap', 'throttle', 'fail'));
   ALTER TABLE mirrors ADD COLUMN max_lag_bytes INTEGER;
   ALTER TABLE mirrors ADD COLUMN max_lag_ms INTEGER;
   ALTER TABLE mirrors ADD COLUMN bandwidth INTEGER NOT NULL DEFAULT 0;
   ALTER TABLE mirrors ADD COLUMN compress TEXT NOT NULL DEFAULT 'none' CHECK (compress IN ('zstd', 'none'));
   ALTER TABLE mirrors ADD COLUMN resync INTEGER NOT NULL DEFAULT 0;`,
  // Recovery point objective of a mirror (`--rpo`), NULL: none.
  `ALTER TABLE mirrors ADD COLUMN rpo_ms INTEGER;`,
  // Disaster recovery state of a disk in a mirror relationship (control/dr-store.ts): its
  // generation history, fenced, split brain or switching over (with the switchover's
  // generation, pending until the roles are reversed), and, after a promote or a switchover,
  // the former primary.
  `CREATE TABLE dr_disks (
     disk TEXT PRIMARY KEY REFERENCES disks(name) ON DELETE CASCADE,
     generations TEXT NOT NULL,
     state TEXT NOT NULL DEFAULT 'normal' CHECK (state IN ('normal', 'fenced', 'split-brain', 'switching')),
     pending TEXT,
     state_reason TEXT,
     state_at INTEGER,
     diverged INTEGER NOT NULL DEFAULT 0,
     peer TEXT,
     peer_disk TEXT
   );`,
  // A reconnect (control/reconnect.ts): at the survivor, delta = 1 while its mirror's sync copies
  // only the granules of the disk's divergence map (replication/divergence-map.ts), not the whole disk;
  // and, at the site reconnecting as the replica, the survivor it waits for (JSON {peer, peerDisk}).
  `ALTER TABLE mirrors ADD COLUMN delta INTEGER NOT NULL DEFAULT 0;
   ALTER TABLE dr_disks ADD COLUMN reconnect TEXT;`,
  // Consistency groups (control/group-control.ts): a group is a row of disks of kind 'group'
  // (path 'group:NAME', size its address space) that owns the members' staging area and
  // mirror; group_members maps each member at its fixed base; mirror_members holds a local
  // group mirror's target file per member (synced = 0 while a member added later is copied).
  // SQLite cannot alter a CHECK: disks is rebuilt (foreign keys off for this migration only).
  `${REBUILD_WITHOUT_FOREIGN_KEYS}
   CREATE TABLE disks_new (
     name TEXT PRIMARY KEY,
     kind TEXT NOT NULL CHECK (kind IN ('virtual', 'adopted', 'group')),
     pool TEXT REFERENCES pools(name),
     path TEXT NOT NULL UNIQUE,
     size INTEGER NOT NULL CHECK (size > 0),
     read_only INTEGER NOT NULL DEFAULT 0,
     created_at INTEGER NOT NULL
   );
   INSERT INTO disks_new (name, kind, pool, path, size, read_only, created_at) SELECT name, kind, pool, path, size, read_only, created_at FROM disks;
   DROP TABLE disks;
   ALTER TABLE disks_new RENAME TO disks;
   CREATE TABLE group_members (
     disk TEXT PRIMARY KEY REFERENCES disks(name),
     grp TEXT NOT NULL REFERENCES disks(name),
     base INTEGER NOT NULL CHECK (base >= 0),
     added_at INTEGER NOT NULL
   );
   CREATE TABLE mirror_members (
     grp TEXT NOT NULL REFERENCES mirrors(disk) ON DELETE CASCADE,
     disk TEXT NOT NULL,
     path TEXT NOT NULL UNIQUE,
     created_file INTEGER NOT NULL,
     synced INTEGER NOT NULL,
     PRIMARY KEY (grp, disk)
   );`,
];

import type { OnFullPolicy } from '../mirror/mirror-policy.js';
export type { OnFullPolicy };

export interface ReplicaRow {
  disk: string;
  peer: string;
  origin_disk: string;
  /** 1 once the primary site said the sync completed: the replica holds an image it had (R7). */
  synced: number;
  created_disk: number;
  created_at: number;
}

export type { PeerRow } from '../replication/peer-row.js';

export interface MirrorRow {
  disk: string;
  target: string;
  path: string;
  created_file: number;
  sync_mode: 'full' | 'checksum';
  sync_cursor: number;
  sync_done: number;
  target_zero: number;
  paused: number;
  created_at: number;
  on_full: OnFullPolicy;
  max_lag_bytes: number | null;
  max_lag_ms: number | null;
  /** Bytes per second on the replication link; 0: unlimited. */
  bandwidth: number;
  compress: 'zstd' | 'none';
  resync: number;
  /** Recovery point objective in ms (`--rpo`); null: none. */
  rpo_ms: number | null;
  /** 1 while the sync copies only the regions changed since the sites diverged (a reconnect). */
  delta: number;
}

export interface StagingRow {
  disk: string;
  path: string;
  copy_path: string | null;
  size: number;
  created_file: number;
  created_copy: number;
  created_at: number;
}

export class MetadataStore {
  readonly db: Database.Database;

  constructor(file: string) {
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('foreign_keys = ON');
    this.db.pragma('busy_timeout = 5000');
    this.migrate();
  }

  private migrate(): void {
    const version = this.db.pragma('user_version', { simple: true }) as number;
    if (version > migrations.length) {
      throw new Error(`metadata schema version ${version} is newer than this ferryd understands (${migrations.length}); upgrade ferryd`);
    }
    for (let v = version; v < migrations.length; v++) {
      // The pragma is a no-op inside a transaction: set around it (SQLite's table rebuild procedure).
      const rebuild = migrations[v]!.trimStart().startsWith(REBUILD_WITHOUT_FOREIGN_KEYS);
      if (rebuild) this.db.pragma('foreign_keys = OFF');
      try {
        this.db.transaction(() => {
          this.db.exec(migrations[v]!);
          if (rebuild && (this.db.pragma('foreign_key_check') as unknown[]).length > 0) throw new Error(`metadata migration ${v + 1} broke a foreign key`);
          this.db.pragma(`user_version = ${v + 1}`);
        })();
      } finally {
        if (rebuild) this.db.pragma('foreign_keys = ON');
      }
    }
  }

  pools(): PoolRow[] {
    return this.db.prepare('SELECT * FROM pools ORDER BY name').all() as PoolRow[];
  }

  pool(name: string): PoolRow | undefined {
    return this.db.prepare('SELECT * FROM pools WHERE name = ?').get(name) as PoolRow | undefined;
  }

  insertPool(row: PoolRow): void {
    this.db.prepare('INSERT INTO pools (name, path, created_at) VALUES (@name, @path, @created_at)').run(row);
  }

  deletePool(name: string): void {
    this.db.prepare('DELETE FROM pools WHERE name = ?').run(name);
  }

  disks(): DiskRow[] {
    return this.db.prepare('SELECT * FROM disks ORDER BY name').all() as DiskRow[];
  }

  disk(name: string): DiskRow | undefined {
    return this.db.prepare('SELECT * FROM disks WHERE name = ?').get(name) as DiskRow | undefined;
  }

  diskByPath(path: string): DiskRow | undefined {
    return this.db.prepare('SELECT * FROM disks WHERE path = ?').get(path) as DiskRow | undefined;
  }

  disksInPool(pool: string): number {
    return (this.db.prepare('SELECT count(*) AS n FROM disks WHERE pool = ?').get(pool) as { n: number }).n;
  }

  insertDisk(row: DiskRow): void {
    this.db
      .prepare('INSERT INTO disks (name, kind, pool, path, size, read_only, created_at) VALUES (@name, @kind, @pool, @path, @size, @read_only, @created_at)')
      .run(row);
  }

  deleteDisk(name: string): void {
    this.db.prepare('DELETE FROM disks WHERE name = ?').run(name);
  }

  staging(disk: string): StagingRow | undefined {
    return this.db.prepare('SELECT * FROM staging WHERE disk = ?').get(disk) as StagingRow | undefined;
  }

  insertStaging(row: StagingRow): void {
    this.db
      .prepare('INSERT INTO staging (disk, path, copy_path, size, created_file, created_copy, created_at) VALUES (@disk, @path, @copy_path, @size, @created_file, @created_copy, @created_at)')
      .run(row);
  }

  deleteStaging(disk: string): void {
    this.db.prepare('DELETE FROM staging WHERE disk = ?').run(disk);
  }

  mirror(disk: string): MirrorRow | undefined {
    return this.db.prepare('SELECT * FROM mirrors WHERE disk = ?').get(disk) as MirrorRow | undefined;
  }

  mirrors(): MirrorRow[] {
    return this.db.prepare('SELECT * FROM mirrors ORDER BY disk').all() as MirrorRow[];
  }

  insertMirror(row: MirrorRow): void {
    this.db
      .prepare(
        'INSERT INTO mirrors (disk, target, path, created_file, sync_mode, sync_cursor, sync_done, target_zero, paused, created_at, on_full, max_lag_bytes, max_lag_ms, bandwidth, compress, resync, rpo_ms, delta) VALUES (@disk, @target, @path, @created_file, @sync_mode, @sync_cursor, @sync_done, @target_zero, @paused, @created_at, @on_full, @max_lag_bytes, @max_lag_ms, @bandwidth, @compress, @resync, @rpo_ms, @delta)',
      )
      .run(row);
  }

  updateMirror(disk: string, fields: Partial<Pick<MirrorRow, 'sync_cursor' | 'sync_done' | 'paused' | 'target_zero' | 'resync' | 'delta' | 'on_full' | 'max_lag_bytes' | 'max_lag_ms' | 'bandwidth' | 'compress' | 'rpo_ms'>>): void {
    const sets = Object.keys(fields).map((k) => `${k} = @${k}`).join(', ');
    if (sets) this.db.prepare(`UPDATE mirrors SET ${sets} WHERE disk = @disk`).run({ ...fields, disk });
  }

  deleteMirror(disk: string): void {
    this.db.prepare('DELETE FROM mirrors WHERE disk = ?').run(disk);
  }

  /** Exchanges the disk's path with its mirror's, in one transaction (a swap of roles). */
  swapMirrorPaths(disk: string): void {
    this.db.transaction(() => {
      const d = this.disk(disk)!;
      const m = this.mirror(disk)!;
      // Free the UNIQUE paths first, then exchange them.
      this.db.prepare('UPDATE mirrors SET path = ? WHERE disk = ?').run(`swapping:${m.path}`, disk);
      this.db.prepare("UPDATE disks SET path = ?, kind = 'adopted', pool = NULL WHERE name = ?").run(m.path, disk);
      this.db.prepare('UPDATE mirrors SET path = ?, target = ? WHERE disk = ?').run(d.path, `local:${d.path}`, disk);
    })();
  }

  replicas(): ReplicaRow[] {
    return this.db.prepare('SELECT * FROM replicas ORDER BY disk').all() as ReplicaRow[];
  }

  replica(disk: string): ReplicaRow | undefined {
    return this.db.prepare('SELECT * FROM replicas WHERE disk = ?').get(disk) as ReplicaRow | undefined;
  }

  insertReplica(row: ReplicaRow): void {
    this.db.prepare('INSERT INTO replicas (disk, peer, origin_disk, synced, created_disk, created_at) VALUES (@disk, @peer, @origin_disk, @synced, @created_disk, @created_at)').run(row);
  }

  updateReplica(disk: string, fields: Partial<Pick<ReplicaRow, 'synced'>>): void {
    if (fields.synced !== undefined) this.db.prepare('UPDATE replicas SET synced = ? WHERE disk = ?').run(fields.synced, disk);
  }

  deleteReplica(disk: string): void {
    this.db.prepare('DELETE FROM replicas WHERE disk = ?').run(disk);
  }

  peers(): PeerRow[] {
    return this.db.prepare('SELECT * FROM peers ORDER BY name').all() as PeerRow[];
  }

  peer(name: string): PeerRow | undefined {
    return this.db.prepare('SELECT * FROM peers WHERE name = ?').get(name) as PeerRow | undefined;
  }

  peerByFingerprint(fingerprint: string): PeerRow | undefined {
    return this.db.prepare('SELECT * FROM peers WHERE fingerprint = ?').get(fingerprint) as PeerRow | undefined;
  }

  insertPeer(row: PeerRow): void {
    this.db.prepare('INSERT INTO peers (name, address, fingerprint, site_id, created_at) VALUES (@name, @address, @fingerprint, @site_id, @created_at)').run(row);
  }

  updatePeerAddress(name: string, address: string): void {
    this.db.prepare('UPDATE peers SET address = ? WHERE name = ?').run(address, name);
  }

  deletePeer(name: string): void {
    this.db.prepare('DELETE FROM peers WHERE name = ?').run(name);
  }

  /** Every path Ferry uses, with who uses it. */
  usedPaths(): Array<{ path: string; user: string }> {
    const out: Array<{ path: string; user: string }> = [];
    for (const d of this.disks()) out.push({ path: d.path, user: `disk '${d.name}'` });
    for (const s of this.db.prepare('SELECT disk, path, copy_path FROM staging').all() as Array<{ disk: string; path: string; copy_path: string | null }>) {
      out.push({ path: s.path, user: `the staging area of disk '${s.disk}'` });
      if (s.copy_path) out.push({ path: s.copy_path, user: `the staging area of disk '${s.disk}' (its copy)` });
    }
    for (const m of this.mirrors()) out.push({ path: m.path, user: `the mirror of disk '${m.disk}'` });
    for (const m of this.db.prepare('SELECT grp, disk, path FROM mirror_members').all() as Array<{ grp: string; disk: string; path: string }>) {
      out.push({ path: m.path, user: `the mirror of disk '${m.disk}' (group '${m.grp}')` });
    }
    return out;
  }

  /** Who uses a path (a disk, or a staging area or its copy), for "path already in use" refusals. */
  pathUser(path: string): string | undefined {
    const d = this.diskByPath(path);
    if (d) return `disk '${d.name}'`;
    const s = this.db.prepare('SELECT disk, path FROM staging WHERE path = ? OR copy_path = ?').get(path, path) as { disk: string; path: string } | undefined;
    if (s) return `the staging area of disk '${s.disk}'${s.path === path ? '' : ' (its copy)'}`;
    const m = this.db.prepare('SELECT disk FROM mirrors WHERE path = ?').get(path) as { disk: string } | undefined;
    if (m) return `the mirror of disk '${m.disk}'`;
    const g = this.db.prepare('SELECT grp, disk FROM mirror_members WHERE path = ?').get(path) as { grp: string; disk: string } | undefined;
    if (g) return `the mirror of disk '${g.disk}' (group '${g.grp}')`;
    return undefined;
  }

  close(): void {
    this.db.close();
  }
}
