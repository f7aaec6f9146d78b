// The one way a consumer reads its journal: the records after its position, in sequence
// order, each verified and read once (from the recent cache while it holds them, else from a
// healthy copy), up to a bound per call. The primary's committer, a local mirror's committer,
// the remote stream (shipping, and skipping what the mirror site already holds) and a
// mirror's scan of what it has not acknowledged all read through here.
import assert from 'node:assert/strict';
import type { ConsumerPosition } from './format.js';
import type { Journal } from './journal.js';
import type { StagedRecord } from './staged-record.js';

export interface ReadBounds {
  /** The newest sequence number to read (at most the journal's durable one: J5). */
  upTo: number;
  recordsMax: number;
  /** Ring bytes (record spans); the first record is read whatever its size. */
  bytesMax: number;
}

export interface RecordsRead {
  records: StagedRecord[];
  /** The position after the last record read (`from` when none was). */
  end: ConsumerPosition;
  /** Ring bytes of the records read. */
  bytes: number;
}

/** Reads the records after `from`, in order, within `bounds`; `reader` names the consumer (for copy fail-over logs). */
export async function readRecords(journal: Journal, from: ConsumerPosition, bounds: ReadBounds, reader: string): Promise<RecordsRead> {
  assert.ok(bounds.upTo <= journal.durableSeq, 'consumers only read durable records (J5)');
  const records: StagedRecord[] = [];
  let pos = from;
  let bytes = 0;
  while (pos.nextSeq <= bounds.upTo && records.length < bounds.recordsMax && (records.length === 0 || bytes < bounds.bytesMax)) {
    const r = await journal.readRecord(pos.nextSeq, pos.nextPos, pos.prevCrc, reader);
    assert.equal(r.seq, pos.nextSeq, 'records are read in order, without gaps (J1)');
    records.push(r);
    bytes += r.span;
    pos = { name: from.name, nextSeq: r.seq + 1, nextPos: r.pos + r.span, prevCrc: r.crc };
  }
  return { records, end: pos, bytes };
}
