// Recovery of a staging area at open: choose what can be trusted, then find the end
// of the log. Decisions (one row applies per line of the table; first match wins):
//
//   situation at open                                   | decision
//   ----------------------------------------------------|-----------------------------------------------
//   no copy has a valid superblock                      | refuse: STAGING_CORRUPT (never guess a format)
//   a copy's superblock is invalid or of another journal| that copy is failed (needs `staging repair`)
//   no valid checkpoint slot on any usable copy         | refuse: STAGING_CORRUPT
//   valid slots                                         | the highest generation wins (across copies)
//   record expected at pos verifies on some copy        | accept it; copies where it did not are rewritten
//   it does not verify at pos but does at ring start 0  | accept it there (the writer wrapped)
//   nothing plausible at pos                            | clean end of the log
//   header plausible (right id, seq) but bad crc/length | torn record: end of the log, reported
//   ...and a chained record follows it                  | corruption inside the log: end, reported loudly
//                                                       | with the number of records discarded
//
// Records before the oldest consumer position are never read: they are done for
// everyone and their space may already be reused. Each record accepted is asserted to be
// the expected successor in the chain (J1), and handed to the pipeline (`recovered`): the
// read overlay serves what the primary has not applied until the replay has applied it.
import assert from 'node:assert/strict';
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import type { Store } from '../disk/store.js';
import {
  CHECKPOINT_OFFSETS,
  HEADER_AREA_BYTES,
  decodeCheckpoint,
  decodeSuperblock,
  recordSpan,
  type Checkpoint,
  type ConsumerPosition,
  type RecordHeader,
  type Superblock,
} from './format.js';
import { RingWindow, readRecordAt, type VerifiedRecord } from './record-reader.js';
import type { JournalListener } from './staged-record.js';

export interface CopyVerdict {
  path: string;
  usable: boolean;
  problem?: string;
}

export interface ScanEnd {
  /** 'clean': nothing follows the last record; 'torn': a partial record ends the log; 'corrupt': records after a bad one were discarded. */
  kind: 'clean' | 'torn' | 'corrupt';
  detail?: string;
  discardedRecords: number;
}

export interface RecoveryResult {
  superblock: Superblock;
  checkpoint: Checkpoint;
  copies: CopyVerdict[];
  /** Where the next record goes. */
  nextSeq: number;
  headPos: number;
  lastCrc: number;
  /** Records found after the oldest consumer position. */
  records: number;
  payloadBytes: number;
  end: ScanEnd;
  /** Records that verified on one copy only and were rewritten onto the others. */
  rewrittenRecords: number;
}

export async function recoverJournal(stores: Store[], log: Logger, recovered?: JournalListener['recovered']): Promise<RecoveryResult> {
  const verdicts: CopyVerdict[] = stores.map((s) => ({ path: s.path, usable: true }));
  const sbs: Array<Superblock | string> = [];
  const slots: Array<Array<Checkpoint | string>> = [];
  for (const s of stores) {
    const head = Buffer.alloc(HEADER_AREA_BYTES);
    try {
      await s.read(head, 0, HEADER_AREA_BYTES, 0);
      sbs.push(decodeSuperblock(head));
      slots.push(CHECKPOINT_OFFSETS.map((off) => decodeCheckpoint(head.subarray(off))));
    } catch (err) {
      sbs.push(`unreadable: ${(err as Error).message}`);
      slots.push([]);
    }
  }
  const firstValid = sbs.find((x): x is Superblock => typeof x !== 'string');
  if (!firstValid) throw new FerryError('STAGING_CORRUPT', `no copy of the staging area has a valid superblock (${sbs.join('; ')})`);
  sbs.forEach((sb, i) => {
    if (typeof sb === 'string') verdicts[i] = { path: stores[i]!.path, usable: false, problem: sb };
    else if (sb.journalId !== firstValid.journalId || sb.areaBytes !== firstValid.areaBytes) {
      verdicts[i] = { path: stores[i]!.path, usable: false, problem: 'belongs to another staging area' };
    } else if (stores[i]!.size < sb.areaBytes) verdicts[i] = { path: stores[i]!.path, usable: false, problem: 'smaller than its superblock says' };
  });

  let checkpoint: Checkpoint | null = null;
  slots.forEach((copySlots, i) => {
    if (!verdicts[i]!.usable) return;
    for (const cp of copySlots) {
      if (typeof cp === 'string' || cp.journalId !== firstValid.journalId) continue;
      if (!checkpoint || cp.generation > checkpoint.generation) checkpoint = cp;
    }
  });
  if (!checkpoint) throw new FerryError('STAGING_CORRUPT', 'no valid checkpoint in any usable copy of the staging area');
  const cp: Checkpoint = checkpoint;
  if (cp.consumers.length === 0) throw new FerryError('STAGING_CORRUPT', 'the checkpoint lists no consumer');

  const ringBytes = firstValid.areaBytes - HEADER_AREA_BYTES;
  const start = cp.consumers.reduce((a: ConsumerPosition, b: ConsumerPosition) => (b.nextSeq < a.nextSeq ? b : a));
  const usable = stores.map((s, i) => ({ s, i, w: new RingWindow(s, ringBytes) })).filter((c) => verdicts[c.i]!.usable);

  let pos = start.nextPos;
  let seq = start.nextSeq;
  let prev = start.prevCrc;
  let records = 0;
  let payloadBytes = 0;
  let rewritten = 0;
  let end: ScanEnd = { kind: 'clean', discardedRecords: 0 };
  for (;;) {
    const exp = { journalId: firstValid.journalId, seq, prevCrc: prev, ringBytes };
    let found: VerifiedRecord | null = null;
    let plausible: RecordHeader | null = null;
    let plausibleReason = '';
    const missing: number[] = [];
    for (const at of pos === 0 ? [0] : [pos, 0]) {
      for (const c of usable) {
        const r = await readRecordAt(c.w, at, exp);
        if (r.ok) found ??= r.record;
        else {
          missing.push(c.i);
          if (at === pos && r.plausible && !plausible) {
            plausible = r.plausible;
            plausibleReason = r.reason;
          }
        }
      }
      if (found) break;
      missing.length = 0;
    }
    if (!found) {
      if (plausible) end = await classifyBadRecord(usable[0]!.w, pos, plausible, plausibleReason, firstValid.journalId, ringBytes);
      break;
    }
    // Exactly one successor per record: the expected sequence number and chain link, where the last one ended (J1).
    assert.ok(found.header.seq === seq && found.header.prevCrc === prev >>> 0, 'recovery accepts only the record expected next in the chain (J1)');
    assert.ok(found.pos === pos || found.pos === 0, 'the next record lies where the last one ended, or at the ring start (J1, J6)');
    for (const i of new Set(missing)) {
      // It verified on another copy: make this copy whole again (it was written to both before it counted).
      await stores[i]!.write(found.raw, 0, found.span, HEADER_AREA_BYTES + found.pos);
      rewritten++;
    }
    const h = found.header;
    recovered?.({ seq, pos: found.pos, span: found.span, type: h.type, flags: h.flags, diskOffset: h.diskOffset, length: h.length, crc: h.crc, timeMs: h.timeMs, payload: null }, cp.consumers);
    records++;
    payloadBytes += found.header.payloadBytes;
    prev = found.header.crc;
    seq++;
    pos = found.pos + found.span;
  }
  if (rewritten > 0) for (const c of usable) await c.s.sync();
  if (end.kind !== 'clean') log.error({ end, seq, pos }, 'staging area recovery: the log ends at a bad record; it is not replayed');
  return {
    superblock: firstValid,
    checkpoint: cp,
    copies: verdicts,
    nextSeq: seq,
    headPos: pos,
    lastCrc: prev,
    records,
    payloadBytes,
    end,
    rewrittenRecords: rewritten,
  };
}

/** A plausible but invalid record: torn (nothing valid after it) or corruption (chained records follow). */
async function classifyBadRecord(w: RingWindow, pos: number, bad: RecordHeader, reason: string, journalId: bigint, ringBytes: number): Promise<ScanEnd> {
  let discarded = 0;
  let at = pos + recordSpan(bad.payloadBytes);
  let seq = bad.seq + 1;
  let prev = bad.crc;
  for (let i = 0; i < 1_000_000; i++) {
    let r = await readRecordAt(w, at, { journalId, seq, prevCrc: prev, ringBytes });
    if (!r.ok && at !== 0) r = await readRecordAt(w, 0, { journalId, seq, prevCrc: prev, ringBytes });
    if (!r.ok) break;
    discarded++;
    prev = r.record.header.crc;
    seq++;
    at = r.record.pos + r.record.span;
  }
  const detail = `record ${bad.seq} at ring offset ${pos}: ${reason}`;
  return discarded > 0 ? { kind: 'corrupt', detail, discardedRecords: discarded } : { kind: 'torn', detail, discardedRecords: 0 };
}

