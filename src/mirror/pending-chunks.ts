// The bitmap policy's index of recent records at a start: the records staged before it that
// the mirror has not acknowledged are read once, so a fallback to the dirty bitmap marks the
// chunks of every record the mirror lacks (mirror.ts keeps the index from then on).
import type { Journal } from '../journal/journal.js';
import { readRecords } from '../journal/record-cursor.js';
import { MIRROR_CONSUMER } from '../volume/consumer.js';
import { SYNC_CHUNK_BYTES } from './chunk-holds.js';
import { forEachChunk } from './dirty-map.js';

/** The scan of records staged before a start reads this much at a time. */
const scanRecordsMax = 512;
const scanBytesMax = 8 * 1024 * 1024;

/**
 * The bitmap policy's index of recent records (chunkSeq: the newest record seq per chunk),
 * for the records the mirror has not acknowledged that were staged before this start: a
 * fallback marks the chunks of every record the mirror lacks.
 */
export async function indexPendingChunks(journal: Journal, chunkSeq: Float64Array, closed: () => boolean): Promise<void> {
  if (!journal.hasConsumer(MIRROR_CONSUMER)) return;
  let pos = journal.consumer(MIRROR_CONSUMER);
  const upTo = journal.durableSeq;
  while (pos.nextSeq <= upTo && !closed()) {
    const read = await readRecords(journal, pos, { upTo, recordsMax: scanRecordsMax, bytesMax: scanBytesMax }, 'mirror-scan');
    for (const r of read.records) forEachChunk(r.diskOffset, Math.max(1, r.length), SYNC_CHUNK_BYTES, (c) => (chunkSeq[c] = Math.max(chunkSeq[c]!, r.seq)));
    pos = read.end;
  }
}
