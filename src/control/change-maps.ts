// The divergence maps of this site's disks (replication/divergence-map.ts, invariants D1-D3
// at its head): which disks track the regions they changed since the sites diverged, the
// volume hook that marks each client write before it is taken (D1), and each map's life.
// dr-control.ts decides when a map starts and ends (the table at its head); this module
// keeps them:
//
//   starts          startPromoted: before a promote's transaction, empty (full when the promote
//                   took a rolled-back or as-is image), with its base seq; startOldPrimary: when
//                   the old primary learns it is fenced or in split brain (its unacknowledged
//                   records past the base its peer sent, its dirty regions), in the background
//   reopened        reopen, at every start (an old primary's records marked again: bits only added)
//   grows           unite: a reconnect's survivor adds the reconnecting site's snapshot
//   ends            end: the disk became its peer's replica, or a reconnect's delta sync completed
//
// Files: <bitmaps>/DISK.diverged (the map), DISK.diverged.seq (its base), beside a mirror's
// DISK.dirty. Bounded: one bit per 64 KiB granule of each tracked disk.
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { SYNC_CHUNK_BYTES } from '../mirror/chunk-holds.js';
import { DIVERGENCE_GRANULE_BYTES, DivergenceMap, markUnacknowledged, readBaseSeq, writeBaseSeq } from '../replication/divergence-map.js';
import type { Volume } from '../volume/volume.js';

export interface ChangedStatus {
  granuleBytes: number;
  granules: number;
  bytes: number;
}

export class ChangeMaps {
  private readonly tracked = new Map<string, { map: DivergenceMap; volume: Volume }>();
  /** Old primaries' maps being built (their unacknowledged records scanned), per disk. */
  private readonly building = new Map<string, Promise<void>>();

  constructor(
    /** Where divergence maps (DISK.diverged) and mirrors' dirty bitmaps (DISK.dirty) are kept. */
    private readonly bitmapsDir: string,
    private readonly log: Logger,
  ) {}

  map(disk: string): DivergenceMap | null {
    return this.tracked.get(disk)?.map ?? null;
  }

  changed(disk: string): ChangedStatus | null {
    const m = this.map(disk);
    return m ? { granuleBytes: DIVERGENCE_GRANULE_BYTES, granules: m.changedGranules, bytes: m.changedBytes } : null;
  }

  exists(disk: string): boolean {
    return DivergenceMap.exists(this.file(disk));
  }

  private file(disk: string): string {
    fs.mkdirSync(this.bitmapsDir, { recursive: true, mode: 0o700 });
    return path.join(this.bitmapsDir, `${disk}.diverged`);
  }

  /** Every client write waits until its granules are durable in the map (D1). */
  private track(disk: string, volume: Volume, map: DivergenceMap): void {
    this.tracked.set(disk, { map, volume });
    volume.trackChanges((offset, length) => map.admit(offset, length));
  }

  /** The map goes as a whole (D2), with its base. */
  end(disk: string): void {
    const t = this.tracked.get(disk);
    this.tracked.delete(disk);
    t?.volume.trackChanges(null);
    if (t) t.map.remove();
    else fs.rmSync(this.file(disk), { force: true });
    writeBaseSeq(this.file(disk), null);
  }

  /** What a damaged map file is told as (it then counts as a full map: more is resynced, never less). */
  private damaged(disk: string): (err: Error) => void {
    return (err) => this.log.error({ disk, err: err.message }, 'the divergence map is damaged: every region counts as changed');
  }

  /** At start: an old primary's map, its unacknowledged records marked again; or a promoted disk's (a missing one is a full one). */
  async reopen(disk: string, volume: Volume, side: 'old-primary' | 'promoted'): Promise<void> {
    const file = this.file(disk);
    let map = await DivergenceMap.open(file, volume.size, this.damaged(disk));
    if (side === 'old-primary') {
      map ??= await DivergenceMap.create(file, volume.size);
      this.track(disk, volume, map);
      await this.markOldPrimary(disk, volume, map);
      return;
    }
    if (!map) {
      this.log.error({ disk }, 'the divergence map of a promoted disk is missing: every region counts as changed');
      map = await DivergenceMap.full(file, volume.size);
    }
    this.track(disk, volume, map);
  }

  /** What a refusal tells the old primary: the last of its records this promoted disk holds (readBaseSeq). */
  baseOf(disk: string): { appliedSeq?: number } {
    const seq = readBaseSeq(this.file(disk));
    return seq === null ? {} : { appliedSeq: seq };
  }

  /**
   * Before a promote: an empty map, durable, tracking writes (the disk is still a replica: it
   * takes none until promoted), with its base: the last record of the old primary it holds.
   * A promote that did not take the newest image (rolled back from the undo log, or taken as
   * it is) starts a full map: which regions differ from the old primary is not known.
   */
  async startPromoted(disk: string, volume: Volume, image: 'newest' | 'rolled-back' | 'as-is', seq: number): Promise<void> {
    const file = this.file(disk);
    writeBaseSeq(file, image === 'newest' ? seq : null);
    this.track(disk, volume, image === 'newest' ? await DivergenceMap.create(file, volume.size) : await DivergenceMap.full(file, volume.size));
  }

  /** The old primary learns it diverged: its unacknowledged records and dirty regions are marked, then its later writes. */
  startOldPrimary(disk: string, volume: Volume | undefined, baseSeq: number | null): void {
    if (!volume || this.tracked.has(disk) || this.building.has(disk)) return;
    const file = this.file(disk);
    writeBaseSeq(file, baseSeq);
    const built = DivergenceMap.create(file, volume.size)
      .then(async (map) => {
        // Installed with no write in flight: every write before it is staged, hence in the scan below; every one after is marked (D1).
        await volume.exclusive(async () => this.track(disk, volume, map));
        await this.markOldPrimary(disk, volume, map);
      })
      .catch((err) => this.log.error({ disk, err: (err as Error).message }, 'could not record the changed regions; they are recorded again at the next start'))
      .finally(() => this.building.delete(disk));
    this.building.set(disk, built);
  }

  private async markOldPrimary(disk: string, volume: Volume, map: DivergenceMap): Promise<void> {
    await volume.staging?.journal.sync(); // every record written so far is durable, so the scan reads it
    const records = await markUnacknowledged(map, volume.staging?.journal ?? null, path.join(this.bitmapsDir, `${disk}.dirty`), SYNC_CHUNK_BYTES, readBaseSeq(map.file));
    await map.persist();
    this.log.warn({ disk, unacknowledgedRecords: records, changedBytes: map.changedBytes }, 'changed regions since divergence recorded');
  }

  /** The disk's changed regions as its peer takes them (snapshot()), once built; every granule when none were tracked (more is resynced, never less). */
  async toSend(disk: string, size: number): Promise<{ bits: Buffer; bytes: number }> {
    await this.building.get(disk);
    const m = this.map(disk);
    if (m) return { bits: m.snapshot(), bytes: m.changedBytes };
    const granules = Math.ceil(size / DIVERGENCE_GRANULE_BYTES);
    const bits = Buffer.alloc(Math.ceil(granules / 8), 0xff);
    if (granules % 8 !== 0) bits[bits.length - 1] = (1 << (granules % 8)) - 1;
    this.log.warn({ disk }, 'no changed regions were tracked here: every region counts as changed');
    return { bits, bytes: size };
  }

  /**
   * A reconnect's survivor: its own map (a full one when none was tracked) united with the
   * peer's snapshot, durable when this resolves; tracking goes on.
   */
  async unite(disk: string, volume: Volume, peerBits: Buffer): Promise<{ map: DivergenceMap; ownBytes: number }> {
    await this.building.get(disk);
    let map = this.map(disk);
    if (!map) {
      const file = this.file(disk);
      map = (await DivergenceMap.open(file, volume.size, this.damaged(disk))) ?? (await DivergenceMap.full(file, volume.size));
      if (map.changedGranules === map.granules) this.log.warn({ disk }, 'no changed regions were tracked at this site: every region counts as changed');
      this.track(disk, volume, map);
    }
    const ownBytes = map.changedBytes;
    map.unionBits(peerBits);
    await map.persist();
    return { map, ownBytes };
  }
}
