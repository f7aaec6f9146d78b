// The control layer's removal of a mirror (`ferry mirror remove`): the mirror is brought up
// to date first (unless paused), a remote mirror's site takes the last records and releases
// its replica, then the consumer and the row go. What the copy left behind is, as far as this
// site knows, is reported; never "up-to-date" when the mirror site did not confirm it.
//
// | mirror               | without --force                    | with --force                          |
// |----------------------|------------------------------------|---------------------------------------|
// | still syncing        | MIRROR_NOT_IN_SYNC, nothing changed | removed, copy `incomplete`            |
// | paused               | removed, copy `as-of-pause`        | same                                  |
// | remote, site silent  | PEER_UNREACHABLE after removeWaitMs | removed, copy `unknown` (and why)     |
// | remote, site says it holds no replica, | (as silent)       | removed at once, copy `unknown`       |
// |   or refuses us (FENCED, SPLIT_BRAIN)  |                   |                                       |
// | otherwise            | drained, removed, `up-to-date`     | same                                  |
import fs from 'node:fs';
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import { MIRROR_CONSUMER, type Mirror, type MirrorStatus } from '../mirror/mirror.js';
import type { RemoteStream } from '../replication/remote-stream.js';
import type { Volume } from '../volume/volume.js';
import type { MetadataStore } from './store.js';

/** What `mirror remove` left behind. */
export interface RemovedMirror extends MirrorStatus {
  /** up-to-date: every record; as-of-pause; incomplete: never finished its sync; unknown: the mirror site did not confirm (forced). */
  copy: 'up-to-date' | 'as-of-pause' | 'incomplete' | 'unknown';
  /** Why the mirror site did not confirm, when copy is unknown. */
  unconfirmed: string | null;
}

/** How long removing a remote mirror waits for the mirror site to take the last records and release its replica. */
const removeWaitMs = 15_000;

export interface RemoveTarget {
  disk: string;
  mirror: Mirror;
  volume: Volume;
  /** A remote mirror's stream. */
  stream: RemoteStream | undefined;
  bitmapFile: string;
  /** Drops the mirror from the control layer's maps (called once its row is gone). */
  forget: () => void;
}

export async function removeMirror(ctx: { store: MetadataStore; log: Logger }, t: RemoveTarget, opts: { force?: boolean }): Promise<RemovedMirror> {
  const { disk, mirror: m, stream } = t;
  if (!m.isSynced && !opts.force) {
    throw new FerryError('MIRROR_NOT_IN_SYNC', `the mirror of '${disk}' is still syncing: its copy is incomplete; remove it with --force to abandon it`);
  }
  /** Why the mirror site did not confirm the last records and the release (forced removal only). */
  let unconfirmed: string | null = null;
  if (stream && opts.force && ['NO_MIRROR', 'FENCED', 'SPLIT_BRAIN'].includes(stream.lastErrorCode ?? '') && stream.state !== 'connected') {
    // The mirror site already answered that it holds no such replica (or refuses this site): nothing to wait for.
    unconfirmed = stream.lastError ?? 'the mirror site holds no such replica';
  } else if (stream) {
    // The mirror site gets every record, then releases its replica (a normal disk there from then on).
    // Bounded: a mirror site that is gone (or no longer holds the replica) must not hang the removal.
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const why = m.status().link?.lastError;
        reject(new FerryError('PEER_UNREACHABLE', `the mirror site did not take the last records and release its replica within ${removeWaitMs / 1000} s${why ? ` (${why})` : ''}; remove with --force to abandon it`));
      }, removeWaitMs);
    });
    try {
      await Promise.race([
        (async () => {
          // An abandoned (still syncing) mirror is released as it is: the mirror site falls
          // back to its last consistent image, if it has one (its undo log).
          if (m.state !== 'paused' && m.isSynced) await m.drain();
          await stream.request({ op: 'release' });
        })(),
        deadline,
      ]);
    } catch (err) {
      if (!opts.force) throw err;
      unconfirmed = (err as Error).message;
      ctx.log.warn({ disk, err: (err as Error).message }, 'mirror removed without the mirror site: its replica stays held there until the peer is told');
    } finally {
      clearTimeout(timer);
    }
  } else if (m.state !== 'paused') await m.drain();
  const before = m.status();
  fs.rmSync(t.bitmapFile, { force: true });
  await m.close();
  // Consumer first, then the row: a crash in between is repaired at start (openAtStart).
  await t.volume.staging!.journal.removeConsumer(MIRROR_CONSUMER);
  ctx.store.deleteMirror(disk);
  t.forget();
  await m.targetStore.close();
  // What the copy left behind is, as far as this site knows; never "up-to-date" unconfirmed.
  const copy: RemovedMirror['copy'] = unconfirmed !== null ? 'unknown' : !before.consistent ? 'incomplete' : before.state === 'paused' ? 'as-of-pause' : 'up-to-date';
  ctx.log.info({ disk, target: before.target, consistent: before.consistent, copy }, 'mirror removed; its copy is no longer used by Ferry');
  return { ...before, copy, unconfirmed };
}
