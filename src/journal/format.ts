// On-disk format of a staging area. Every structure carries a CRC32C; nothing is
// trusted without it. Byte order is little-endian throughout.
//
//   0      superblock        (written once, at format)
//   4096   checkpoint slot 0 (alternating slots; the valid one with the highest
//   8192   checkpoint slot 1  generation wins; each fits in one 512-byte sector)
//   65536  ring              records, each 64-byte aligned, never straddling the end
//
// A record is a 64-byte header followed by its payload (WRITE only):
//   0 magic u32 | 4 type u16 | 6 flags u16 | 8 seq u64 | 16 journalId u64
//   24 diskOffset u64 | 32 length u64 | 40 payloadBytes u32 | 44 crc u32
//   48 timeMs u64 | 56 prevCrc u32 | 60 reserved u32
// crc is CRC32C over the header (crc field as zero) and the payload. prevCrc is the
// crc of the record before it in sequence order: records form a hash chain, so a
// record left over from before a recovery can never be mistaken for the next one.
import { crc32c } from '@node-rs/crc32';

export const SUPERBLOCK_MAGIC = 0x4754535952524546n; // "FERRYSTG" read as little-endian u64
export const CHECKPOINT_MAGIC = 0x504b4346; // "FCKP"
export const RECORD_MAGIC = 0x43455246; // "FREC"
export const FORMAT_VERSION = 1;

export const SUPERBLOCK_OFFSET = 0;
export const CHECKPOINT_OFFSETS = [4096, 8192] as const;
export const HEADER_AREA_BYTES = 65536;
export const RECORD_HEADER_BYTES = 64;
export const RECORD_ALIGN_BYTES = 64;
/** Largest payload of one record: the largest write the front end accepts (nbd/protocol.ts advertises it). */
export const RECORD_PAYLOAD_BYTES_MAX = 32 * 1024 * 1024;
export const CONSUMERS_MAX = 8;
const CONSUMER_NAME_BYTES = 32;
const CONSUMER_ENTRY_BYTES = CONSUMER_NAME_BYTES + 8 + 8 + 8;
const CHECKPOINT_BYTES = 512;
const SUPERBLOCK_BYTES = 512;

export const RecordType = { WRITE: 1, ZERO: 2, TRIM: 3 } as const;
export type RecordTypeValue = (typeof RecordType)[keyof typeof RecordType];

export interface Superblock {
  journalId: bigint;
  areaBytes: number;
  createdMs: number;
  diskName: string;
}

/** A consumer's durable position: every record with seq < nextSeq is done for it. */
export interface ConsumerPosition {
  name: string;
  nextSeq: number;
  /** Ring position of record nextSeq (where it is or will be written). */
  nextPos: number;
  /** crc of record nextSeq-1 (the chain link record nextSeq must carry). */
  prevCrc: number;
}

export interface Checkpoint {
  generation: number;
  journalId: bigint;
  consumers: ConsumerPosition[];
}

export interface RecordHeader {
  type: RecordTypeValue;
  flags: number;
  seq: number;
  journalId: bigint;
  diskOffset: number;
  length: number;
  payloadBytes: number;
  crc: number;
  timeMs: number;
  prevCrc: number;
}

/** Writes a non-negative safe integer as a little-endian u64 without BigInt (hot path). */
function writeU64(b: Buffer, value: number, at: number): void {
  b.writeUInt32LE(value % 0x100000000, at);
  b.writeUInt32LE(Math.floor(value / 0x100000000), at + 4);
}

function readU64(b: Buffer, at: number): number {
  return b.readUInt32LE(at) + b.readUInt32LE(at + 4) * 0x100000000;
}

export function alignRecord(bytes: number): number {
  return Math.ceil(bytes / RECORD_ALIGN_BYTES) * RECORD_ALIGN_BYTES;
}

/** Bytes a record occupies on the ring. */
export function recordSpan(payloadBytes: number): number {
  return alignRecord(RECORD_HEADER_BYTES + payloadBytes);
}

export function encodeSuperblock(sb: Superblock): Buffer {
  const b = Buffer.alloc(SUPERBLOCK_BYTES);
  b.writeBigUInt64LE(SUPERBLOCK_MAGIC, 0);
  b.writeUInt32LE(FORMAT_VERSION, 8);
  b.writeUInt32LE(HEADER_AREA_BYTES, 12);
  b.writeBigUInt64LE(sb.journalId, 16);
  b.writeBigUInt64LE(BigInt(sb.areaBytes), 24);
  b.writeBigUInt64LE(BigInt(sb.createdMs), 32);
  const name = Buffer.from(sb.diskName, 'utf8').subarray(0, 64);
  b.writeUInt32LE(name.length, 40);
  name.copy(b, 44);
  b.writeUInt32LE(crc32c(b.subarray(0, SUPERBLOCK_BYTES - 4)), SUPERBLOCK_BYTES - 4);
  return b;
}

export function decodeSuperblock(b: Buffer): Superblock | string {
  if (b.length < SUPERBLOCK_BYTES) return 'superblock truncated';
  if (b.readBigUInt64LE(0) !== SUPERBLOCK_MAGIC) return 'not a Ferry staging area (bad superblock magic)';
  if (b.readUInt32LE(SUPERBLOCK_BYTES - 4) !== crc32c(b.subarray(0, SUPERBLOCK_BYTES - 4))) return 'superblock checksum mismatch';
  const version = b.readUInt32LE(8);
  if (version !== FORMAT_VERSION) return `staging format version ${version} is not supported (this ferryd knows ${FORMAT_VERSION})`;
  if (b.readUInt32LE(12) !== HEADER_AREA_BYTES) return 'unexpected header area size';
  const nameLen = Math.min(b.readUInt32LE(40), 64);
  return {
    journalId: b.readBigUInt64LE(16),
    areaBytes: Number(b.readBigUInt64LE(24)),
    createdMs: Number(b.readBigUInt64LE(32)),
    diskName: b.subarray(44, 44 + nameLen).toString('utf8'),
  };
}

export function encodeCheckpoint(cp: Checkpoint): Buffer {
  if (cp.consumers.length > CONSUMERS_MAX) throw new Error(`at most ${CONSUMERS_MAX} consumers`);
  const b = Buffer.alloc(CHECKPOINT_BYTES);
  b.writeUInt32LE(CHECKPOINT_MAGIC, 0);
  b.writeUInt32LE(FORMAT_VERSION, 4);
  b.writeBigUInt64LE(BigInt(cp.generation), 8);
  b.writeBigUInt64LE(cp.journalId, 16);
  b.writeUInt32LE(cp.consumers.length, 24);
  cp.consumers.forEach((c, i) => {
    const at = 32 + i * CONSUMER_ENTRY_BYTES;
    const name = Buffer.from(c.name, 'utf8');
    if (name.length > CONSUMER_NAME_BYTES) throw new Error(`consumer name '${c.name}' longer than ${CONSUMER_NAME_BYTES} bytes`);
    name.copy(b, at);
    b.writeBigUInt64LE(BigInt(c.nextSeq), at + CONSUMER_NAME_BYTES);
    b.writeBigUInt64LE(BigInt(c.nextPos), at + CONSUMER_NAME_BYTES + 8);
    b.writeUInt32LE(c.prevCrc >>> 0, at + CONSUMER_NAME_BYTES + 16);
  });
  b.writeUInt32LE(crc32c(b.subarray(0, CHECKPOINT_BYTES - 4)), CHECKPOINT_BYTES - 4);
  return b;
}

export function decodeCheckpoint(b: Buffer): Checkpoint | string {
  if (b.length < CHECKPOINT_BYTES) return 'checkpoint truncated';
  if (b.readUInt32LE(0) !== CHECKPOINT_MAGIC) return 'no checkpoint (bad magic)';
  if (b.readUInt32LE(CHECKPOINT_BYTES - 4) !== crc32c(b.subarray(0, CHECKPOINT_BYTES - 4))) return 'checkpoint checksum mismatch';
  const count = b.readUInt32LE(24);
  if (count > CONSUMERS_MAX) return 'checkpoint lists too many consumers';
  const consumers: ConsumerPosition[] = [];
  for (let i = 0; i < count; i++) {
    const at = 32 + i * CONSUMER_ENTRY_BYTES;
    const raw = b.subarray(at, at + CONSUMER_NAME_BYTES);
    const end = raw.indexOf(0);
    consumers.push({
      name: raw.subarray(0, end < 0 ? CONSUMER_NAME_BYTES : end).toString('utf8'),
      nextSeq: Number(b.readBigUInt64LE(at + CONSUMER_NAME_BYTES)),
      nextPos: Number(b.readBigUInt64LE(at + CONSUMER_NAME_BYTES + 8)),
      prevCrc: b.readUInt32LE(at + CONSUMER_NAME_BYTES + 16),
    });
  }
  return { generation: Number(b.readBigUInt64LE(8)), journalId: b.readBigUInt64LE(16), consumers };
}

/** Writes a record header into `b` at `at` and returns its crc (computed over header and payload). */
export function encodeRecord(
  b: Buffer,
  at: number,
  h: Omit<RecordHeader, 'crc' | 'payloadBytes'>,
  payload: Buffer | null,
): number {
  const payloadBytes = payload?.length ?? 0;
  b.writeUInt32LE(RECORD_MAGIC, at);
  b.writeUInt16LE(h.type, at + 4);
  b.writeUInt16LE(h.flags, at + 6);
  writeU64(b, h.seq, at + 8);
  b.writeBigUInt64LE(h.journalId, at + 16);
  writeU64(b, h.diskOffset, at + 24);
  writeU64(b, h.length, at + 32);
  b.writeUInt32LE(payloadBytes, at + 40);
  b.writeUInt32LE(0, at + 44);
  writeU64(b, h.timeMs, at + 48);
  b.writeUInt32LE(h.prevCrc >>> 0, at + 56);
  b.writeUInt32LE(0, at + 60);
  if (payload && payloadBytes) payload.copy(b, at + RECORD_HEADER_BYTES);
  // One pass over header and payload (the crc field still zero): the same crc as the header's
  // continued over the payload, one native call instead of two.
  const crc = crc32c(b.subarray(at, at + RECORD_HEADER_BYTES + payloadBytes));
  b.writeUInt32LE(crc, at + 44);
  const span = recordSpan(payloadBytes);
  if (span > RECORD_HEADER_BYTES + payloadBytes) b.fill(0, at + RECORD_HEADER_BYTES + payloadBytes, at + span);
  return crc;
}

/** Parses a header without checking the payload; null when it is not a plausible record header. */
export function decodeRecordHeader(b: Buffer, at = 0): RecordHeader | null {
  if (b.length - at < RECORD_HEADER_BYTES || b.readUInt32LE(at) !== RECORD_MAGIC) return null;
  const type = b.readUInt16LE(at + 4);
  if (type !== RecordType.WRITE && type !== RecordType.ZERO && type !== RecordType.TRIM) return null;
  return {
    type: type as RecordTypeValue,
    flags: b.readUInt16LE(at + 6),
    seq: readU64(b, at + 8),
    journalId: b.readBigUInt64LE(at + 16),
    diskOffset: readU64(b, at + 24),
    length: readU64(b, at + 32),
    payloadBytes: b.readUInt32LE(at + 40),
    crc: b.readUInt32LE(at + 44),
    timeMs: readU64(b, at + 48),
    prevCrc: b.readUInt32LE(at + 56),
  };
}

/** CRC32C of a record as stored (header with the crc field zeroed, then payload). */
export function recordCrc(header: Buffer, headerAt: number, payload: Buffer): number {
  const h = Buffer.from(header.subarray(headerAt, headerAt + RECORD_HEADER_BYTES));
  h.writeUInt32LE(0, 44);
  let crc = crc32c(h);
  if (payload.length) crc = crc32c(payload, crc);
  return crc;
}
