// The control layer's swap of a local mirror's roles (`ferry mirror swap`): the mirror
// becomes the disk's primary and the old primary its mirror, without copying data and
// under open NBD connections. Requests are held only for the last few records: before
// the hold, writers are paced (not stopped) until both committers are near the head.
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import type { Mirror } from '../mirror/mirror.js';
import type { Volume } from '../volume/volume.js';
import type { MetadataStore } from './store.js';

/** Drains before a swap holds requests: until one takes less than quickDrainMs, at most this many. */
const preDrainRoundsMax = 4;
const quickDrainMs = 30;
/** Committer backlog (records) above which writers are paced while a swap prepares. */
const paceRecordsMax = 256;

export interface SwapReport {
  disk: string;
  primary: string;
  mirror: string;
  pauseMs: number;
}

/**
 * Exchanges the roles of disk and mirror: requests are held, the staging area is drained
 * to both, the metadata swaps the paths in one transaction, the data path switches, and
 * requests resume. Only a local mirror in sync whose committer has no error.
 */
/** `swapPaths`: the metadata's exchange of the paths, one transaction (a disk's path with its mirror's; each member's of a group). */
export async function swapRoles(ctx: { store: MetadataStore; log: Logger; swapPaths: () => void }, disk: string, m: Mirror, volume: Volume): Promise<SwapReport> {
  const staged = volume.staging;
  if (!staged) throw new FerryError('NO_STAGING', `disk '${disk}' has no staging area`);
  if (m.isRemote) throw new FerryError('NOT_SUPPORTED', `the mirror of '${disk}' is at a peer site: roles move between sites by failover (mirror promote), not by swap`);
  if (m.state !== 'in-sync') throw new FerryError('MIRROR_NOT_IN_SYNC', `the mirror of '${disk}' is ${m.state}; swap needs it in sync`);
  if (m.committer.lastError) throw new FerryError('MIRROR_NOT_IN_SYNC', `the mirror of '${disk}' is failing: ${m.committer.lastError}`);
  // Bring both close to the head first, so the pause only covers the last few records. Under
  // a sustained load the committers may be slower than the writers, and the backlog would be
  // applied inside the pause: writers are paced (not stopped) until both are within
  // paceRecordsMax records of the head, then drained again until a drain is quick.
  const backlog = (pos: number): number => staged.journal.writtenSeq - pos + 1;
  const stopPacing = staged.pace(() => backlog(staged.committer.position.nextSeq) > paceRecordsMax || backlog(m.committer.position.nextSeq) > paceRecordsMax);
  let pauseMs: number;
  try {
    for (let round = 0; round < preDrainRoundsMax; round++) {
      const started = Date.now();
      await Promise.all([staged.drain(), m.drain()]);
      if (Date.now() - started < quickDrainMs) break;
    }
    pauseMs = await volume.exclusive(async () => {
      await Promise.all([staged.drain(), m.drain()]);
      ctx.swapPaths();
      const old = volume.replacePrimary(m.targetStore);
      m.retarget(old);
    });
  } finally {
    stopPacing();
  }
  m.lastSwapPauseMs = pauseMs;
  const after = ctx.store.mirror(disk)!;
  ctx.log.info({ disk, primary: volume.primaryStore.path, mirror: after.path, pauseMs }, 'swapped primary and mirror');
  return { disk, primary: volume.primaryStore.path, mirror: after.path, pauseMs };
}
