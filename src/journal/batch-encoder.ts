// Encodes one group-commit batch: the records of the requests, in order, into one buffer for
// one write at ring position `start`, each chained to the one before (J1). Pure: the journal
// moves its head only after this returns the whole batch.
import assert from 'node:assert/strict';
import { RECORD_HEADER_BYTES, encodeRecord, recordSpan } from './format.js';
import type { AppendRequest, StagedRecord } from './staged-record.js';

export interface EncodedBatch {
  buf: Buffer;
  records: StagedRecord[];
  /** The sequence number and chain link after the batch (the journal's next head). */
  nextSeq: number;
  lastCrc: number;
}

/**
 * `first`: the sequence number and chain link the batch starts from; `previous(seq)`: the
 * record before the batch when still cached (to check the link). Asserts J1 on every record.
 */
export function encodeBatch(
  requests: AppendRequest[],
  start: number,
  bytes: number,
  journalId: bigint,
  first: { seq: number; prevCrc: number },
  previous: (seq: number) => StagedRecord | undefined,
): EncodedBatch {
  const buf = Buffer.allocUnsafe(bytes);
  const records: StagedRecord[] = [];
  const now = Date.now();
  let at = 0;
  let seq = first.seq;
  let prevCrc = first.prevCrc;
  for (const req of requests) {
    assert.ok(req.expectSeq === undefined || req.expectSeq === seq, 'a mirrored record keeps its sequence number');
    // Record n: the one before in this batch, else the last one written (when still cached).
    const prev = records.length > 0 ? records[records.length - 1]! : previous(seq - 1);
    assert.ok(prev === undefined || (seq === prev.seq + 1 && prevCrc === prev.crc), 'record n+1 follows record n and carries its crc (J1)');
    const timeMs = req.timeMs ?? now;
    const crc = encodeRecord(buf, at, { type: req.type, flags: req.flags, seq, journalId, diskOffset: req.diskOffset, length: req.length, timeMs, prevCrc }, req.payload);
    const span = recordSpan(req.payload?.length ?? 0);
    const payload = req.payload ? buf.subarray(at + RECORD_HEADER_BYTES, at + RECORD_HEADER_BYTES + req.payload.length) : null;
    records.push({ seq, pos: start + at, span, type: req.type, flags: req.flags, diskOffset: req.diskOffset, length: req.length, crc, timeMs, payload });
    at += span;
    prevCrc = crc;
    seq++;
  }
  assert.equal(at, bytes, 'the batch fills exactly the bytes placed for it');
  return { buf, records, nextSeq: seq, lastCrc: prevCrc };
}
