// Formatting a new staging area (all its copies the same size): the superblock naming the
// journal and its disk, and a first checkpoint with one consumer at `firstSeq` (a mirror
// site's staging area numbers records as its primary site does).
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { FerryError } from '../errors.js';
import type { Store } from '../disk/store.js';
import { CHECKPOINT_OFFSETS, HEADER_AREA_BYTES, RECORD_HEADER_BYTES, encodeCheckpoint, encodeSuperblock } from './format.js';

/** Smallest staging area: the largest NBD write (32 MiB) must always fit with room to spare. */
export const STAGING_BYTES_MIN = 64 * 1024 * 1024;

export async function formatStagingArea(stores: Store[], diskName: string, consumer: string, firstSeq = 1): Promise<void> {
  assert.ok(Number.isSafeInteger(firstSeq) && firstSeq >= 1, 'the first sequence number is a positive integer');
  const areaBytes = Math.min(...stores.map((s) => s.size));
  if (areaBytes < STAGING_BYTES_MIN) throw new FerryError('STAGING_TOO_SMALL', `a staging area needs at least ${STAGING_BYTES_MIN} bytes`);
  const journalId = crypto.randomBytes(8).readBigUInt64LE(0) || 1n;
  const sb = encodeSuperblock({ journalId, areaBytes, createdMs: Date.now(), diskName });
  const cp = encodeCheckpoint({ generation: 1, journalId, consumers: [{ name: consumer, nextSeq: firstSeq, nextPos: 0, prevCrc: 0 }] });
  const empty = Buffer.alloc(RECORD_HEADER_BYTES);
  for (const s of stores) {
    await s.write(sb, 0, sb.length, 0);
    await s.write(cp, 0, cp.length, CHECKPOINT_OFFSETS[1]);
    await s.write(empty, 0, empty.length, CHECKPOINT_OFFSETS[0]);
    await s.write(empty, 0, empty.length, HEADER_AREA_BYTES);
    await s.sync();
  }
}
