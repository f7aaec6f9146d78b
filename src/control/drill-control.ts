// Test failovers (DR drills) at the mirror site: `ferry mirror test DISK --export NAME
// --scratch PATH --scratch-size SIZE` exposes, under a new NBD export, a writable image of a
// replica as it was when the test started, while replication keeps streaming and applying to
// the replica underneath; `ferry mirror test-end DISK` drops the export and the scratch file.
// The copy-on-write itself is src/replication/test-scratch.ts (invariants T1-T5), the guard
// on the replica's disk cow-guard-store.ts, the export's disk test-image-store.ts.
//
// | state            | event                                   | next             | what happens |
// |------------------|-----------------------------------------|------------------|--------------|
// | none             | test (replica, consistent, names free)  | running          | scratch file created (O_EXCL, sized), records received so far applied, apply paused at a whole group, marker `<data>/drills/DISK.json` synced, guard put on the replica's disk, apply resumed, export served |
// | none             | test refused                            | none             | nothing created: NO_MIRROR, DISK_NOT_FOUND, MIRROR_NOT_IN_SYNC, TEST_RUNNING, EXPORT_EXISTS, INVALID_NAME, INVALID_PATH, PATH_IN_USE, PATH_NOT_FOUND, SCRATCH_TOO_SMALL, INVALID_SIZE |
// | running          | a preservation finds no slot (or fails) | lost             | the export answers EIO; replication goes on unpreserved |
// | running, lost    | test-end                                | none             | export dropped (clients disconnected), guard taken off, scratch file and marker deleted |
// | running, lost    | promote at B, or release by A           | none             | as test-end, first (the replica becomes a normal disk without the guard) |
// | running, lost    | ferryd stops or is killed               | ended (at start) | see below |
// | ended            | test-end, or a new test                 | none / running   | the note is cleared |
//
// A restart of the mirror site during a test ENDS the test at start; it never resumes. Why:
// the test image is worth nothing once its clients are gone, and making the scratch maps
// durable would cost a sync per preservation on replication's path. The replica is right
// whatever the scratch file holds (T1: the test never writes it; the guard only reads it).
//
// | B starts and finds a marker | it does |
// |---|---|
// | the scratch file is the one the marker names (same device and inode) | deletes it, then the marker; logs a warning; status (both sites) shows the test `ended` with the reason until test-end or a new test |
// | the scratch file is gone or another file | deletes only the marker (a file Ferry did not create is never deleted) |
import assert from 'node:assert';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { parseSize } from '../disk/size.js';
import { FerryError } from '../errors.js';
import type { TestFailoverStatus } from '../mirror/mirror.js';
import { validateName } from '../names.js';
import { CowGuardStore } from '../replication/cow-guard-store.js';
import type { ReplicaHandle } from '../replication/receiver.js';
import { TestImageStore } from '../replication/test-image-store.js';
import { DRILL_DIR } from './drill-markers.js';
import { SCRATCH_BYTES_MIN, TEST_GRANULE_BYTES, TestScratch } from '../replication/test-scratch.js';
import { Volume } from '../volume/volume.js';
import { syncDirectory, type DiskRegistry } from './disk-registry.js';
import { assertPathFree, resolveTargetPath } from './path-guard.js';
import type { ReplicaControl } from './replica-control.js';
import { memberPlaces, memberWindow } from './group-volumes.js';
import type { MetadataStore } from './store.js';

export { DRILL_DIR } from './drill-markers.js';

export interface TestStartRequest {
  export: unknown;
  scratch: unknown;
  scratchSize: unknown;
}

/** What `mirror test-end` reports. */
export interface TestEndReport {
  disk: string;
  export: string;
  /** stopped: ended by test-end; restart: it had already ended when the mirror site restarted. */
  endedBy: 'test-end' | 'restart';
  clientsDisconnected: number;
  preservedBytes: number;
  writtenBytes: number;
  lostReason: string | null;
}

interface Marker {
  disk: string;
  export: string;
  scratch: string;
  scratchBytes: number;
  dev: number;
  ino: number;
  startedAt: string;
  seq: number;
}

interface RunningTest {
  marker: Marker;
  scratch: TestScratch;
  cow: CowGuardStore;
  volume: Volume;
  handle: ReplicaHandle;
  /** The exports: the test image itself, or (a consistency group's replica) one window of it per member, EXPORT.MEMBER. */
  exports: Volume[];
}

/** The export of each member of a group's test image: EXPORT.MEMBER. */
export function memberExportName(exportName: string, member: string): string {
  return `${exportName}.${member}`;
}

export interface DrillCollaborators {
  store: MetadataStore;
  disks: DiskRegistry;
  replicas: ReplicaControl;
  /** Disconnects the NBD clients of an export (the NBD server's). */
  disconnect: (volume: Volume) => Promise<number>;
}

export class DrillControl {
  private readonly tests = new Map<string, RunningTest>();
  /** Tests a restart ended (status says so until test-end or a new test). */
  private readonly ended = new Map<string, TestFailoverStatus>();
  /** Disks with a test starting or ending, and that operation: one at a time (a promote waits for it). */
  private readonly busy = new Map<string, Promise<unknown>>();

  constructor(
    private readonly c: DrillCollaborators,
    private readonly dataDir: string,
    private readonly log: Logger,
  ) {
    c.replicas.beforeLeaving = (disk) => this.endBeforeLeaving(disk);
  }

  private markerFile(disk: string): string {
    return path.join(this.dataDir, DRILL_DIR, `${disk}.json`);
  }

  /** The NBD catalog: a test failover's export by name. */
  exportVolume(name: string): Volume | undefined {
    for (const t of this.tests.values()) for (const v of t.exports) if (v.name === name) return v;
    return undefined;
  }

  exportNames(): string[] {
    return [...this.tests.values()].flatMap((t) => t.exports.map((v) => v.name));
  }

  /** The export names a test of `disk` would serve: EXPORT, or EXPORT.MEMBER for each member of a group. */
  private exportNamesFor(disk: string, exportName: string): string[] {
    if (!this.c.disks.isGroup(disk)) return [exportName];
    return this.c.disks.groups.members(disk).map((m) => validateName('disk', memberExportName(exportName, m.disk)));
  }

  status(disk: string): TestFailoverStatus | null {
    const t = this.tests.get(disk);
    if (!t) return this.ended.get(disk) ?? null;
    const st = t.scratch.stats();
    return {
      export: t.marker.export,
      startedAt: t.marker.startedAt,
      seq: t.marker.seq,
      state: st.lostReason ? 'lost' : 'running',
      reason: st.lostReason,
      scratchBytes: st.scratchBytes,
      scratchUsedBytes: st.usedBytes,
    };
  }

  /** The test failover of `disk` with its scratch area's figures; NO_TEST when there is none. */
  details(disk: string): TestFailoverStatus & { disk: string; scratch: string | null; preservedBytes: number; writtenBytes: number; granuleBytes: number; exports: string[] } {
    validateName('disk', disk);
    const st = this.status(disk);
    if (!st) {
      this.c.disks.entry(disk); // DISK_NOT_FOUND
      throw new FerryError('NO_TEST', `no test failover of '${disk}' is running here`);
    }
    const t = this.tests.get(disk);
    const s = t?.scratch.stats();
    return { ...st, disk, scratch: t?.marker.scratch ?? null, preservedBytes: s?.preservedBytes ?? 0, writtenBytes: s?.writtenBytes ?? 0, granuleBytes: TEST_GRANULE_BYTES, exports: t ? t.exports.map((v) => v.name) : [] };
  }

  async start(disk: string, req: TestStartRequest): Promise<TestFailoverStatus> {
    validateName('disk', disk);
    if (this.busy.has(disk)) throw new FerryError('TEST_RUNNING', `a test failover of '${disk}' is starting or ending`);
    const op = this.startLocked(disk, req);
    this.busy.set(disk, op);
    try {
      return await op;
    } finally {
      this.busy.delete(disk);
    }
  }

  private async startLocked(disk: string, req: TestStartRequest): Promise<TestFailoverStatus> {
    // Every check before anything is created: a refusal changes nothing.
    this.c.disks.entry(disk); // DISK_NOT_FOUND
    const h = this.c.replicas.handle(disk);
    const row = this.c.store.replica(disk);
    if (!h || !row) throw new FerryError('NO_MIRROR', `disk '${disk}' is not a replica at this site: a test failover runs at the mirror site, on the replica`);
    if (this.tests.has(disk)) throw new FerryError('TEST_RUNNING', `a test failover of '${disk}' is running (export '${this.tests.get(disk)!.marker.export}'); end it first with 'ferry mirror test-end ${disk}'`);
    this.assertConsistent(disk);
    const exportName = validateName('disk', req.export);
    for (const name of this.exportNamesFor(disk, exportName)) {
      if (this.c.disks.volume(name) || this.c.store.disk(name) || this.exportVolume(name)) {
        throw new FerryError('EXPORT_EXISTS', `an NBD export named '${name}' exists here (a disk or a test failover): choose another name`);
      }
    }
    if (req.scratchSize === undefined || req.scratchSize === null) throw new FerryError('INVALID_SIZE', 'a test failover needs --scratch-size: the bound of its scratch area');
    const scratchBytes = Math.floor(parseSize(req.scratchSize as string | number) / 65536) * 65536;
    if (scratchBytes < SCRATCH_BYTES_MIN) throw new FerryError('SCRATCH_TOO_SMALL', `the scratch area must hold at least ${SCRATCH_BYTES_MIN} bytes (1 MiB)`);
    const { real, stat } = resolveTargetPath(req.scratch, 'scratch');
    if (stat) throw new FerryError('PATH_IN_USE', `${real} exists: Ferry creates the scratch file of a test failover itself, and deletes it at test-end`);
    assertPathFree(this.c.store, this.dataDir, real);
    const fsStat = fs.statfsSync(path.dirname(real));
    const freeBytes = fsStat.bavail * fsStat.bsize;
    if (freeBytes < scratchBytes) throw new FerryError('SCRATCH_TOO_SMALL', `the file system of ${real} has ${freeBytes} bytes free, less than the scratch size ${scratchBytes}`);

    let fd = -1;
    let created: Marker | null = null;
    let heldMs = 0;
    let pauseStarted = 0n;
    let applyPausedMs = 0;
    try {
      try {
        fd = fs.openSync(real, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new FerryError('PATH_IN_USE', `${real} was created meanwhile by someone else`);
        throw err;
      }
      fs.ftruncateSync(fd, scratchBytes);
      fs.fsyncSync(fd);
      syncDirectory(path.dirname(real));
      const st = fs.fstatSync(fd);
      const c = h.staged.committer;
      const wasPaused = c.isPaused;
      // The image of the test: every record received when the command came applied (unless an
      // operator holds the apply: then the held image), up to a whole group: a prefix of the primary's order.
      if (!wasPaused) await h.staged.drain();
      pauseStarted = process.hrtime.bigint();
      await c.pauseSettled();
      try {
        this.assertConsistent(disk); // a resync may have begun while the apply settled
        if (h.released) throw new FerryError('NO_MIRROR', `replica '${disk}' is being promoted or released`);
        const seq = c.position.nextSeq - 1;
        created = { disk, export: exportName, scratch: real, scratchBytes, dev: st.dev, ino: st.ino, startedAt: new Date().toISOString(), seq };
        this.writeMarker(created);
        const scratch = new TestScratch(real, fd, h.volume.primaryStore, h.volume.size, scratchBytes);
        const cow = new CowGuardStore(h.volume.primaryStore, scratch);
        heldMs = await h.volume.exclusive(async () => void h.volume.replacePrimary(cow));
        const volume = new Volume(exportName, new TestImageStore(scratch), false);
        // A group's image is one address space: each member is served as its window of it, all at one point.
        const exports = this.c.disks.isGroup(disk)
          ? memberPlaces(this.c.disks.groups.members(disk), (n) => this.c.store.disk(n)).map((p) => new Volume(memberExportName(exportName, p.disk), memberWindow(volume, p, `${exportName}:${p.disk}`), false))
          : [volume];
        this.tests.set(disk, { marker: created, scratch, cow, volume, handle: h, exports });
        this.ended.delete(disk);
        h.test = () => this.status(disk)!;
      } finally {
        if (!wasPaused) c.resume();
        applyPausedMs = Number(process.hrtime.bigint() - pauseStarted) / 1e6;
      }
    } catch (err) {
      if (!this.tests.has(disk)) {
        if (fd >= 0) fs.closeSync(fd);
        if (fd >= 0) fs.rmSync(real, { force: true });
        if (created) fs.rmSync(this.markerFile(disk), { force: true });
      }
      throw err;
    }
    this.log.info({ disk, export: exportName, scratch: real, scratchBytes, seq: created.seq, applyPausedMs, readsHeldMs: heldMs }, 'test failover started: the export serves a writable image of the replica as of now; replication goes on underneath');
    return this.status(disk)!;
  }

  private assertConsistent(disk: string): void {
    const row = this.c.store.replica(disk);
    if (!row || row.synced !== 1 || this.c.replicas.resyncing(disk)) {
      throw new FerryError('MIRROR_NOT_IN_SYNC', `replica '${disk}' is not consistent (its first sync or a resync is running): it holds no image the primary site had; start the test once the resync completes`);
    }
  }

  private writeMarker(m: Marker): void {
    const dir = path.join(this.dataDir, DRILL_DIR);
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const file = this.markerFile(m.disk);
    const tmp = `${file}.tmp`;
    const fd = fs.openSync(tmp, 'w', 0o600);
    try {
      fs.writeSync(fd, JSON.stringify(m));
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
    syncDirectory(dir);
  }

  async end(disk: string): Promise<TestEndReport> {
    validateName('disk', disk);
    if (this.busy.has(disk)) throw new FerryError('TEST_RUNNING', `a test failover of '${disk}' is starting or ending`);
    const t = this.tests.get(disk);
    if (!t) {
      const note = this.ended.get(disk);
      if (note) {
        this.ended.delete(disk);
        const h = this.c.replicas.handle(disk);
        if (h) h.test = null;
        return { disk, export: note.export, endedBy: 'restart', clientsDisconnected: 0, preservedBytes: 0, writtenBytes: 0, lostReason: null };
      }
      this.c.disks.entry(disk); // DISK_NOT_FOUND
      throw new FerryError('NO_TEST', `no test failover of '${disk}' is running here`);
    }
    const op = this.stop(disk, t);
    this.busy.set(disk, op);
    try {
      return await op;
    } finally {
      this.busy.delete(disk);
    }
  }

  private async stop(disk: string, t: RunningTest): Promise<TestEndReport> {
    const st = t.scratch.stats();
    // The export goes first: no new client finds it, those attached are disconnected.
    this.tests.delete(disk);
    let clientsDisconnected = 0;
    for (const v of t.exports) clientsDisconnected += await this.c.disconnect(v);
    for (const v of t.exports) if (v !== t.volume) await v.close();
    await t.volume.close();
    const h = t.handle;
    const c = h.staged.committer;
    const wasPaused = c.isPaused;
    await c.pauseSettled();
    try {
      await h.volume.exclusive(async () => {
        t.cow.detach();
        // Under an undo log's guard (a resync began during the test) the guard stays, a pass-through, until that guard goes.
        if (h.volume.primaryStore === t.cow) h.volume.replacePrimary(t.cow.raw);
      });
    } finally {
      if (!wasPaused) c.resume();
    }
    await t.scratch.close();
    fs.rmSync(t.marker.scratch, { force: true });
    fs.rmSync(this.markerFile(disk), { force: true });
    syncDirectory(path.dirname(t.marker.scratch));
    h.test = null;
    const report: TestEndReport = { disk, export: t.marker.export, endedBy: 'test-end', clientsDisconnected, preservedBytes: st.preservedBytes, writtenBytes: st.writtenBytes, lostReason: st.lostReason };
    // mapBytes: the memory its granule maps took (paged on first touch: test-scratch.ts).
    this.log.info({ ...report, mapBytes: st.mapBytes }, 'test failover ended: its export and scratch file are gone; the replica was never written by it');
    return report;
  }

  /** A replica about to become a normal disk (promote, release): its test ends first. */
  private async endBeforeLeaving(disk: string): Promise<void> {
    await this.busy.get(disk)?.catch(() => undefined); // a start or end under way completes first
    this.ended.delete(disk);
    const t = this.tests.get(disk);
    if (!t) return;
    this.log.warn({ disk, export: t.marker.export }, 'the replica is promoted or released: its test failover ends first');
    await this.stop(disk, t);
  }

  /**
   * At daemon start, once every disk is open: a test that was running when ferryd stopped
   * (or was killed) is ended; its scratch file is deleted only if it is the file Ferry created.
   */
  recoverAtStart(): void {
    const dir = path.join(this.dataDir, DRILL_DIR);
    let names: string[];
    try {
      names = fs.readdirSync(dir);
    } catch {
      return;
    }
    for (const name of names) {
      const file = path.join(dir, name);
      if (!name.endsWith('.json')) {
        fs.rmSync(file, { force: true }); // a marker whose rename a crash cut short
        continue;
      }
      let m: Marker;
      try {
        m = JSON.parse(fs.readFileSync(file, 'utf8')) as Marker;
        assert.ok(typeof m.disk === 'string' && typeof m.scratch === 'string');
      } catch {
        this.log.warn({ file }, 'unreadable test failover marker deleted');
        fs.rmSync(file, { force: true });
        continue;
      }
      let deleted = false;
      try {
        const st = fs.statSync(m.scratch);
        if (st.dev === m.dev && st.ino === m.ino) {
          fs.rmSync(m.scratch, { force: true });
          deleted = true;
        }
      } catch {
        // gone already
      }
      fs.rmSync(file, { force: true });
      const reason = 'the mirror site restarted during the test: the test was ended and its image discarded (the replica was never written by it)';
      this.log.warn({ disk: m.disk, export: m.export, scratch: m.scratch, scratchDeleted: deleted, startedAt: m.startedAt }, `test failover ended at start: ${reason}`);
      const note: TestFailoverStatus = { export: m.export, startedAt: m.startedAt, seq: m.seq, state: 'ended', reason, scratchBytes: m.scratchBytes, scratchUsedBytes: 0 };
      const h = this.c.replicas.handle(m.disk);
      if (h) {
        this.ended.set(m.disk, note);
        h.test = () => note;
      }
    }
    syncDirectory(dir);
  }

  /** At stop: scratch files are closed, not deleted (the next start ends the tests: see the table above). */
  async close(): Promise<void> {
    for (const t of this.tests.values()) await t.scratch.close().catch(() => undefined);
    this.tests.clear();
  }
}
