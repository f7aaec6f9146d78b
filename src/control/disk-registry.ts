// The control layer's record of pools and disks, and the rules that keep them sane:
// names are validated, paths are resolved and checked (a pool directory, an existing
// file or block device, never one another disk uses, never Ferry's own metadata),
// and every change happens in an order that a crash cannot turn into a lost or
// half-registered disk: files are created (exclusively) and synced before their row
// is committed, and rows are removed before files are deleted. A bad request throws a
// FerryError before anything is changed.
import fs from 'node:fs';
import { drillMarkers } from './drill-markers.js';
import path from 'node:path';
import type { Logger } from 'pino';
import { FerryError, fromSystemError } from '../errors.js';
import { BlockDevice } from '../disk/block-device.js';
import { sizeBytesMax } from '../disk/size.js';
import { Volume } from '../volume/volume.js';
import { validateName } from '../names.js';
import { DEFAULT_POOL_DIR, assertNotReserved, assertPathFree, assertPathText, isInside } from './path-guard.js';
import type { DiskKind, DiskRow, MetadataStore, PoolRow } from './store.js';
import { GroupStore } from './group-store.js';
import { groupVolume, memberPlaces, memberWindow, openMemberDevices } from './group-volumes.js';

export const DEFAULT_POOL = 'default';

export interface DiskInfo {
  name: string;
  kind: DiskKind;
  pool: string | null;
  path: string;
  size: number;
  readOnly: boolean;
  state: 'online' | 'unavailable';
  error?: string;
  clients: number;
  allocatedBytes: number | null;
  createdAt: string;
  stats: Volume['stats'] | null;
  /** The consistency group the disk belongs to (its writes go through the group's staging area). */
  group?: string;
}

export interface PoolInfo {
  name: string;
  path: string;
  disks: number;
  createdAt: string;
}

interface OpenDisk {
  row: DiskRow;
  volume: Volume | null;
  error?: string;
  /** Unavailable because its staging area could not be opened (not its primary). */
  stagingUnopenable?: boolean;
}

/** What opens a loaded disk's staging area, mirror and roles (the daemon's start sequence). */
export type OpenRow = (row: DiskRow, volume: Volume) => Promise<void>;

export class DiskRegistry {
  private readonly disks = new Map<string, OpenDisk>();
  readonly groups: GroupStore;
  private openRow: OpenRow = async () => {};

  constructor(
    private readonly store: MetadataStore,
    private readonly dataDir: string,
    private readonly log: Logger,
  ) {
    this.groups = new GroupStore(store.db);
  }

  /**
   * Ensures the default pool and opens every registered disk, recovering its staging area
   * if it has one. A disk that cannot be opened, or whose staging area cannot be trusted,
   * is kept but marked unavailable: serving its primary alone could serve stale data.
   */
  async load(openRow: OpenRow): Promise<void> {
    this.openRow = openRow;
    if (!this.store.pool(DEFAULT_POOL)) {
      const dir = path.join(this.dataDir, DEFAULT_POOL_DIR);
      fs.mkdirSync(dir, { recursive: true });
      this.store.insertPool({ name: DEFAULT_POOL, path: fs.realpathSync(dir), created_at: Date.now() });
    }
    // Groups first: a member is a window of its group's volume (group-volumes.ts).
    const rows = this.store.disks();
    for (const row of [...rows.filter((r) => r.kind === 'group'), ...rows.filter((r) => r.kind !== 'group')]) {
      this.disks.set(row.name, await this.openAndRecover(row));
    }
  }

  /** Opens a disk (or group) and runs the start sequence on it; unavailable if either fails. */
  async openAndRecover(row: DiskRow): Promise<OpenDisk> {
    const d = row.kind === 'group' ? await this.openGroup(row) : this.open(row);
    if (d.volume) {
      try {
        await this.openRow(row, d.volume);
      } catch (err) {
        d.error = `staging area: ${err instanceof Error ? err.message : String(err)}; ${lostStagingAdvice(row.name)}`;
        d.stagingUnopenable = true;
        this.log.error({ disk: row.name, err: d.error }, 'disk unavailable: its staging area cannot be opened');
        await d.volume.close().catch(() => undefined);
        d.volume = null;
      }
    }
    return d;
  }

  /** A group's volume over its members' devices (its members' windows are opened with them). */
  private async openGroup(row: DiskRow): Promise<OpenDisk> {
    try {
      const places = memberPlaces(this.groups.members(row.name), (n) => this.store.disk(n));
      const devices = await openMemberDevices(places, (n) => this.store.disk(n));
      return { row, volume: groupVolume(row.name, row.size, places, devices) };
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      this.log.error({ group: row.name, err: message }, 'consistency group unavailable');
      return { row, volume: null, error: message };
    }
  }

  /** Sets the open volume of a disk or group (a membership change rebuilt it), or marks it unavailable. */
  setVolume(name: string, volume: Volume | null, error?: string): void {
    const d = this.disks.get(name);
    const row = this.store.disk(name);
    if (!row) throw new FerryError('INTERNAL', `no row for '${name}'`);
    if (!d) {
      this.disks.set(name, { row, volume, ...(error ? { error } : {}) });
      return;
    }
    d.row = row;
    d.volume = volume;
    if (error) d.error = error;
    else delete d.error;
    delete d.stagingUnopenable;
  }

  /** Forgets a group's entry (its row is gone). */
  dropGroup(name: string): void {
    this.disks.delete(name);
  }

  /** Re-reads a disk's row after another control changed it (a swap of roles). */
  reloadRow(name: string): void {
    const d = this.mustGet(name);
    d.row = this.store.disk(name)!;
  }

  /** The registry entry of a disk (row and open volume), for the staging and mirror controls. */
  entry(name: string): { row: DiskRow; volume: Volume | null } {
    return this.mustGet(name);
  }

  private open(row: DiskRow): OpenDisk {
    const member = this.groups.groupOf(row.name);
    if (member) {
      const g = this.disks.get(member.grp);
      if (!g?.volume) {
        const error = `its consistency group '${member.grp}' is unavailable${g?.error ? `: ${g.error}` : ''}`;
        this.log.error({ disk: row.name, group: member.grp }, 'disk unavailable: its group is');
        return { row, volume: null, error };
      }
      return { row, volume: new Volume(row.name, memberWindow(g.volume, { disk: row.name, base: member.base, size: row.size }, row.path), row.read_only === 1) };
    }
    try {
      // A disk registered before the path rules of path-guard.ts (e.g. a file of the data
      // directory adopted through a pool inside it) is not served: unavailable, saying why.
      assertNotReserved(this.dataDir, fs.realpathSync(row.path), fs.statSync(row.path));
      const device = BlockDevice.open(row.path, { readOnly: row.read_only === 1 });
      const volume = new Volume(row.name, device, row.read_only === 1);
      if (device.size > row.size) {
        // A disk never grows behind its clients' backs (e.g. after a swap onto a larger target).
        volume.keepSize(row.size);
      } else if (device.size < row.size) {
        this.log.warn({ disk: row.name, recorded: row.size, actual: device.size }, 'disk shrank outside Ferry; serving the actual size');
      }
      return { row, volume };
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      this.log.error({ disk: row.name, path: row.path, err: message }, 'disk unavailable');
      return { row, volume: null, error: message };
    }
  }

  /**
   * Brings an unavailable disk back online without a staging area (`staging detach --force`):
   * opens its primary, then runs `commit` (drop the staging area), then serves it. If the disk
   * cannot be opened or `commit` throws, nothing changed and the error is thrown.
   */
  async reopen(name: string, commit: () => void): Promise<void> {
    const d = this.mustGet(name);
    if (d.volume) throw new FerryError('BAD_REQUEST', `disk '${name}' is online`);
    const opened = d.row.kind === 'group' ? await this.openGroup(d.row) : this.open(d.row);
    if (!opened.volume) throw new FerryError('DISK_UNAVAILABLE', `disk '${name}' cannot be opened: ${opened.error}`);
    try {
      commit();
    } catch (err) {
      await opened.volume.close().catch(() => undefined);
      throw err;
    }
    d.volume = opened.volume;
    delete d.error;
    delete d.stagingUnopenable;
    this.log.warn({ disk: name }, 'disk online again, without a staging area');
    // A group's members were unavailable with it: they are windows of the group's volume again.
    for (const m of d.row.kind === 'group' ? this.groups.members(name) : []) {
      const row = this.store.disk(m.disk);
      if (row) this.disks.set(m.disk, await this.openAndRecover(row));
    }
  }

  /** The exports: every online disk (a group is served through its members, never as itself). */
  names(): string[] {
    return [...this.disks.keys()].filter((n) => this.disks.get(n)!.volume !== null && this.disks.get(n)!.row.kind !== 'group').sort();
  }

  list(): DiskInfo[] {
    return [...this.disks.values()].filter((d) => d.row.kind !== 'group').sort((a, b) => a.row.name.localeCompare(b.row.name)).map((d) => this.info(d));
  }

  /** A disk's description; a group's only when asked (`groups`), else DISK_NOT_FOUND saying what it is. */
  get(name: string, opts: { groups?: boolean } = {}): DiskInfo {
    const d = this.mustGet(name);
    if (d.row.kind === 'group' && !opts.groups) throw new FerryError('DISK_NOT_FOUND', `'${name}' is a consistency group, not a disk (ferry group show ${name})`);
    return this.info(d);
  }

  /** NBD clients attached to a disk, or to any member of a group. */
  clientsOf(name: string): number {
    return this.exportVolumes(name).reduce((n, v) => n + v.attachedClients, 0);
  }

  /** The volumes NBD clients attach to for `name`: the disk's, or every member's of a group. */
  exportVolumes(name: string): Volume[] {
    const names = this.isGroup(name) ? this.groups.members(name).map((m) => m.disk) : [name];
    return names.map((n) => this.disks.get(n)?.volume).filter((v): v is Volume => v != null);
  }

  /** Whether `name` is a consistency group. */
  isGroup(name: string): boolean {
    return this.disks.get(name)?.row.kind === 'group';
  }

  /** The NBD export of a disk: a group is not one (nor is a name that is none). */
  volume(name: string): Volume | undefined {
    const d = this.disks.get(name);
    return d && d.row.kind !== 'group' ? (d.volume ?? undefined) : undefined;
  }

  private mustGet(name: string): OpenDisk {
    validateName('disk', name);
    const d = this.disks.get(name);
    if (!d) throw new FerryError('DISK_NOT_FOUND', `no disk named '${name}'`);
    return d;
  }

  private info(d: OpenDisk): DiskInfo {
    const member = this.groups.groupOf(d.row.name);
    let allocatedBytes: number | null = null;
    try {
      const st = fs.statSync(d.row.path);
      if (st.isFile()) allocatedBytes = st.blocks * 512;
    } catch {
      allocatedBytes = null;
    }
    return {
      name: d.row.name,
      kind: d.row.kind as DiskKind,
      pool: d.row.pool,
      path: d.row.path,
      size: d.volume?.size ?? d.row.size,
      readOnly: d.row.read_only === 1 || (d.volume?.readOnly ?? false),
      state: d.volume ? 'online' : 'unavailable',
      ...(d.error ? { error: d.error } : {}),
      clients: d.volume?.attachedClients ?? 0,
      allocatedBytes,
      createdAt: new Date(d.row.created_at).toISOString(),
      stats: d.volume ? { ...d.volume.stats } : null,
      ...(member ? { group: member.grp } : {}),
    };
  }

  /** A new disk's or group's name: free among both (they share one namespace), and no test failover's export. */
  checkNewName(name: string): void {
    validateName('disk', name);
    if (this.disks.has(name)) throw new FerryError('DISK_EXISTS', `a ${this.isGroup(name) ? 'consistency group' : 'disk'} named '${name}' already exists`);
    const test = drillMarkers(this.dataDir).find((m) => m.export === name);
    if (test) throw new FerryError('EXPORT_EXISTS', `'${name}' is the NBD export of the test failover of disk '${test.disk}'; end it (ferry mirror test-end ${test.disk}) or choose another name`);
  }



  /** Creates a thin-provisioned (sparse) virtual disk in a pool. */
  async create(req: { name: string; size: number; pool?: string; readOnly?: boolean }): Promise<DiskInfo> {
    this.checkNewName(req.name);
    const poolName = req.pool ?? DEFAULT_POOL;
    validateName('pool', poolName);
    const pool = this.store.pool(poolName);
    if (!pool) throw new FerryError('POOL_NOT_FOUND', `no pool named '${poolName}'`);
    if (!Number.isSafeInteger(req.size) || req.size <= 0 || req.size > sizeBytesMax) {
      throw new FerryError('INVALID_SIZE', `disk size must be between 1 byte and ${sizeBytesMax} bytes`);
    }
    if (req.size % 512 !== 0) throw new FerryError('INVALID_SIZE', `disk size ${req.size} is not a multiple of 512 bytes`);
    const file = path.join(pool.path, `${req.name}.img`);
    assertPathFree(this.store, this.dataDir, file);
    let fd: number;
    try {
      fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new FerryError(
          'PATH_IN_USE',
          `${file} already exists in pool '${poolName}' (the data of a disk '${req.name}' removed without --purge, or a file put there): Ferry never overwrites it. To serve that data again: ferry disk adopt ${req.name} --path ${file}; to start empty, delete the file (or remove the old disk with --purge next time)`,
        );
      }
      throw fromSystemError(err, `create ${file}`);
    }
    try {
      fs.ftruncateSync(fd, req.size);
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      syncDirectory(pool.path);
      const row: DiskRow = { name: req.name, kind: 'virtual', pool: poolName, path: file, size: req.size, read_only: req.readOnly ? 1 : 0, created_at: Date.now() };
      this.store.insertDisk(row);
      const opened = this.open(row);
      this.disks.set(row.name, opened);
      this.log.info({ disk: row.name, size: row.size, pool: poolName }, 'virtual disk created');
      return this.info(opened);
    } catch (err) {
      try {
        fs.closeSync(fd);
      } catch {
        // already closed
      }
      fs.rmSync(file, { force: true });
      if (err instanceof FerryError) throw err;
      if ((err as NodeJS.ErrnoException).code === 'EFBIG' || (err as NodeJS.ErrnoException).code === 'EINVAL') {
        throw new FerryError('INVALID_SIZE', `the pool's file system cannot hold a ${req.size}-byte file`);
      }
      throw fromSystemError(err, `create ${file}`);
    }
  }

  /** Serves an existing image file or block device as-is: nothing is written into it but client data. */
  async adopt(req: { name: string; path: string; readOnly?: boolean }): Promise<DiskInfo> {
    this.checkNewName(req.name);
    assertPathText(req.path, 'path');
    let real: string;
    try {
      real = fs.realpathSync(req.path);
    } catch (err) {
      throw fromSystemError(err, `adopt ${req.path}`);
    }
    const st = fs.statSync(real);
    assertNotReserved(this.dataDir, real, st);
    if (!st.isFile() && !st.isBlockDevice()) throw new FerryError('INVALID_PATH', `${real} is neither a regular file nor a block device`);
    assertPathFree(this.store, this.dataDir, real);
    const device = BlockDevice.open(real, { readOnly: req.readOnly ?? false });
    if (device.size === 0) {
      await device.close();
      throw new FerryError('INVALID_SIZE', `${real} is empty; a disk needs at least one byte`);
    }
    const row: DiskRow = { name: req.name, kind: 'adopted', pool: null, path: real, size: device.size, read_only: req.readOnly ? 1 : 0, created_at: Date.now() };
    try {
      this.store.insertDisk(row);
    } catch (err) {
      await device.close();
      throw fromSystemError(err, `register ${real}`);
    }
    const opened: OpenDisk = { row, volume: new Volume(row.name, device, row.read_only === 1) };
    this.disks.set(row.name, opened);
    this.log.info({ disk: row.name, path: real, size: row.size }, 'disk adopted');
    return this.info(opened);
  }

  /** Unregisters a disk. A virtual disk's file is deleted only with purge; an adopted disk's data never. */
  async remove(name: string, opts: { purge?: boolean }): Promise<DiskInfo> {
    const d = this.mustGet(name);
    if (d.row.kind === 'group') throw new FerryError('DISK_NOT_FOUND', `'${name}' is a consistency group, not a disk: delete it with ferry group delete ${name}`);
    const member = this.groups.groupOf(name);
    if (member) throw new FerryError('DISK_IN_GROUP', `disk '${name}' is a member of consistency group '${member.grp}': remove it from the group first (ferry group remove ${member.grp} ${name})`);
    if (opts.purge && d.row.kind === 'adopted') {
      throw new FerryError('BAD_REQUEST', `disk '${name}' is adopted: Ferry never deletes its data; remove it without --purge`);
    }
    if (this.store.mirror(name)) throw new FerryError('DISK_BUSY', `disk '${name}' has a mirror; remove it first (ferry mirror remove ${name})`);
    // A staging area with no copy left (or that could not be opened at start) goes with the disk: nothing can drain it.
    const stagingLost = d.volume ? d.volume.staging?.failure != null : d.stagingUnopenable === true;
    if (this.store.staging(name) && !stagingLost) throw new FerryError('DISK_BUSY', `disk '${name}' has a staging area; detach it first (ferry staging detach ${name})`);
    const clients = d.volume?.attachedClients ?? 0;
    if (clients > 0) throw new FerryError('DISK_BUSY', `disk '${name}' has ${clients} NBD client(s) attached; disconnect them first`);
    const before = this.info(d);
    if (this.store.staging(name)) {
      const unapplied = d.volume?.staging ? d.volume.staging.journal.writtenSeq - d.volume.staging.committer.nextSeq + 1 : null;
      if (d.volume?.staging) await d.volume.discardStaging();
      forgetStaging(this.store, name);
      this.log.warn({ disk: name, unappliedRecords: unapplied }, 'the failed staging area of a removed disk was discarded');
    }
    this.store.deleteDisk(name);
    this.disks.delete(name);
    await d.volume?.close();
    if (opts.purge && d.row.kind === 'virtual') {
      fs.rmSync(d.row.path, { force: true });
      syncDirectory(path.dirname(d.row.path));
    }
    this.log.info({ disk: name, purged: Boolean(opts.purge) }, 'disk removed');
    return before;
  }

  pools(): PoolInfo[] {
    return this.store.pools().map((p) => this.poolInfo(p));
  }

  private poolInfo(p: PoolRow): PoolInfo {
    return { name: p.name, path: p.path, disks: this.store.disksInPool(p.name), createdAt: new Date(p.created_at).toISOString() };
  }

  addPool(req: { name: string; path: string }): PoolInfo {
    validateName('pool', req.name);
    if (this.store.pool(req.name)) throw new FerryError('POOL_EXISTS', `a pool named '${req.name}' already exists`);
    assertPathText(req.path, 'pool path');
    let real: string;
    try {
      real = fs.realpathSync(req.path);
    } catch (err) {
      throw fromSystemError(err, `pool ${req.path}`);
    }
    const st = fs.statSync(real);
    if (!st.isDirectory()) throw new FerryError('INVALID_PATH', `${real} is not a directory`);
    const clash = this.store.pools().find((p) => isInside(real, p.path) || isInside(p.path, real));
    if (clash) throw new FerryError('PATH_IN_USE', `${real} overlaps pool '${clash.name}' (${clash.path})`);
    // Nothing of the data directory is a pool, nor a directory holding it: its disks' files could be named there.
    assertNotReserved(this.dataDir, real, st);
    const dataReal = fs.realpathSync(this.dataDir);
    if (isInside(dataReal, real)) throw new FerryError('INVALID_PATH', `${real} contains Ferry's own data directory ${dataReal}`);
    const row: PoolRow = { name: req.name, path: real, created_at: Date.now() };
    this.store.insertPool(row);
    this.log.info({ pool: req.name, path: real }, 'pool added');
    return this.poolInfo(row);
  }

  removePool(name: string): PoolInfo {
    validateName('pool', name);
    const p = this.store.pool(name);
    if (!p) throw new FerryError('POOL_NOT_FOUND', `no pool named '${name}'`);
    if (name === DEFAULT_POOL) throw new FerryError('BAD_REQUEST', 'the default pool cannot be removed');
    const n = this.store.disksInPool(name);
    if (n > 0) throw new FerryError('POOL_NOT_EMPTY', `pool '${name}' still holds ${n} disk(s)`);
    this.store.deletePool(name);
    return { ...this.poolInfo(p), disks: 0 };
  }

  /** At shutdown: every disk's writes still waiting for staging space are refused with `err`. */
  refuseWaitingWrites(err: FerryError): void {
    for (const d of this.disks.values()) d.volume?.refuseWaitingWrites(err);
  }

  async close(): Promise<void> {
    await Promise.all([...this.disks.values()].map((d) => d.volume?.close()));
  }
}

/** Where a lost or unopenable staging area's status and refusals point the administrator. */
export function lostStagingAdvice(disk: string): string {
  return `run \`ferry staging detach ${disk} --force\` to serve the disk without it (acknowledged writes not yet on the disk are lost; the command reports how many), or \`ferry disk remove ${disk}\``;
}

/** Deletes a disk's staging row, then the staging files Ferry created (never a block device or a file it did not create). */
export function forgetStaging(store: MetadataStore, disk: string): void {
  const s = store.staging(disk);
  if (!s) return;
  store.deleteStaging(disk);
  for (const [p, mine] of [[s.path, s.created_file], [s.copy_path, s.created_copy]] as const) {
    if (p && mine) {
      fs.rmSync(p, { force: true });
      syncDirectory(path.dirname(p));
    }
  }
}

/** Makes a directory entry change (create, unlink) durable. */
export function syncDirectory(dir: string): void {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
