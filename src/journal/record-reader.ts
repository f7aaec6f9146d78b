// Reading and verifying records from the ring, from any healthy copy. A record is
// accepted only if everything checks: magic, journal id, the expected sequence number,
// the hash-chain link to its predecessor, a consistent payload length, a span that fits
// the ring, and the CRC32C of header and payload. Otherwise it is not a record.
import type { Store } from '../disk/store.js';
import {
  HEADER_AREA_BYTES,
  RECORD_HEADER_BYTES,
  RECORD_PAYLOAD_BYTES_MAX,
  RecordType,
  decodeRecordHeader,
  recordCrc,
  recordSpan,
  type RecordHeader,
} from './format.js';

export interface VerifiedRecord {
  header: RecordHeader;
  /** The header and payload bytes exactly as stored (span bytes, padding included). */
  raw: Buffer;
  payload: Buffer;
  pos: number;
  span: number;
}

export type ReadOutcome =
  | { ok: true; record: VerifiedRecord }
  | { ok: false; reason: string; plausible: RecordHeader | null };

export interface Expectation {
  journalId: bigint;
  seq: number;
  /** The chain link; undefined to skip the check (only for diagnostics). */
  prevCrc: number | undefined;
  ringBytes: number;
}

/** Reads ring bytes [pos, pos+length) of one copy through a bounded window. */
export class RingWindow {
  private buf: Buffer = Buffer.alloc(0);
  private start = 0;

  constructor(
    readonly store: Store,
    private readonly ringBytes: number,
    private readonly windowBytes = 8 * 1024 * 1024,
  ) {}

  async get(pos: number, length: number): Promise<Buffer> {
    if (pos >= this.start && pos + length <= this.start + this.buf.length) return this.buf.subarray(pos - this.start, pos - this.start + length);
    if (length > this.windowBytes) {
      const out = Buffer.allocUnsafe(length);
      await this.store.read(out, 0, length, HEADER_AREA_BYTES + pos);
      return out;
    }
    const n = Math.min(this.windowBytes, this.ringBytes - pos);
    if (this.buf.length !== this.windowBytes) this.buf = Buffer.allocUnsafe(this.windowBytes);
    await this.store.read(this.buf, 0, n, HEADER_AREA_BYTES + pos);
    this.buf = this.buf.subarray(0, n);
    this.start = pos;
    return this.buf.subarray(0, length);
  }

  invalidate(): void {
    this.buf = Buffer.alloc(0);
    this.start = 0;
  }
}

/** Reads and verifies the record expected at `pos` from one copy. */
export async function readRecordAt(src: RingWindow, pos: number, exp: Expectation): Promise<ReadOutcome> {
  if (pos < 0 || pos + RECORD_HEADER_BYTES > exp.ringBytes) return { ok: false, reason: 'no room for a record header here', plausible: null };
  let head: Buffer;
  try {
    head = await src.get(pos, RECORD_HEADER_BYTES);
  } catch (err) {
    return { ok: false, reason: `read failed: ${(err as Error).message}`, plausible: null };
  }
  const h = decodeRecordHeader(head);
  if (!h) return { ok: false, reason: 'no record header', plausible: null };
  if (h.journalId !== exp.journalId) return { ok: false, reason: 'record of another staging area', plausible: null };
  if (h.seq !== exp.seq) return { ok: false, reason: `sequence ${h.seq} where ${exp.seq} was expected`, plausible: null };
  const plausible = h;
  if (exp.prevCrc !== undefined && h.prevCrc !== exp.prevCrc) return { ok: false, reason: 'chain link does not match the previous record', plausible };
  const payloadOk = h.type === RecordType.WRITE ? h.payloadBytes === h.length && h.length <= RECORD_PAYLOAD_BYTES_MAX : h.payloadBytes === 0;
  if (!payloadOk) return { ok: false, reason: 'inconsistent payload length', plausible };
  const span = recordSpan(h.payloadBytes);
  if (pos + span > exp.ringBytes) return { ok: false, reason: 'record runs past the end of the ring', plausible };
  let raw: Buffer;
  try {
    raw = Buffer.from(await src.get(pos, span));
  } catch (err) {
    return { ok: false, reason: `read failed: ${(err as Error).message}`, plausible };
  }
  const payload = raw.subarray(RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + h.payloadBytes);
  if (recordCrc(raw, 0, payload) !== h.crc) return { ok: false, reason: 'checksum mismatch', plausible };
  return { ok: true, record: { header: h, raw, payload, pos, span } };
}
