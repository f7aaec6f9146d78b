// What goes into a journal and what comes out: an append request (a client write, zero or
// trim, or a mirror site's copy of a primary site's record) and the record it becomes,
// with its place in the ring and its chain link (see journal.ts for the invariants and
// format.ts for the bytes on disk).
import type { FerryError } from '../errors.js';
import type { ConsumerPosition, RecordTypeValue } from './format.js';

export interface AppendRequest {
  type: RecordTypeValue;
  flags: number;
  diskOffset: number;
  length: number;
  payload: Buffer | null;
  /** FUA: resolve only once durable on every healthy copy. */
  durable: boolean;
  /** The record's time (a mirror site keeps the primary site's); default: now. */
  timeMs?: number;
  /** The sequence number the record must get (a mirror site keeps the primary site's numbering). */
  expectSeq?: number;
}

export interface StagedRecord {
  seq: number;
  pos: number;
  span: number;
  type: RecordTypeValue;
  flags: number;
  diskOffset: number;
  length: number;
  crc: number;
  timeMs: number;
  /** Payload bytes (WRITE), held while the record is in the recent cache. */
  payload: Buffer | null;
}

/** A disk pipeline's part in its journal, given at open (staged-path.ts wires it). */
export interface JournalListener {
  /** Called synchronously with each written batch, before any of its appends resolves (the read overlay's index). */
  written?(records: StagedRecord[]): void;
  /**
   * Asked when a record finds no free space: null to wait for space (backpressure), or the
   * error every waiting append fails with (a mirror's `--on-full fail`). Nothing is written.
   */
  whenFull?(): FerryError | null;
  /**
   * Called at open, during recovery, with each record found in the log (oldest first, no
   * payload) and the checkpointed consumer positions: the read overlay indexes those its
   * primary has not applied, so they are served from the staging area until they are.
   */
  recovered?(record: StagedRecord, consumers: readonly ConsumerPosition[]): void;
}

export interface JournalStats {
  areaBytes: number;
  ringBytes: number;
  usedBytes: number;
  nextSeq: number;
  writtenSeq: number;
  durableSeq: number;
  consumers: Array<{ name: string; nextSeq: number; pendingRecords: number }>;
  copies: Array<{ path: string; healthy: boolean; rebuilding: boolean; problem?: string }>;
}
