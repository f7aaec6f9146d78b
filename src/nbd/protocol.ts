// The NBD wire protocol: every magic number, flag and limit Ferry's server speaks
// (fixed newstyle negotiation, simple and structured replies, base:allocation).
// Values follow doc/proto.md of NetworkBlockDevice/nbd. This file holds numbers
// only; handshake.ts and transmission.ts hold the two protocol phases.
import { RECORD_PAYLOAD_BYTES_MAX } from '../journal/format.js';

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server) and client flags. */
export const HandshakeFlag = { FIXED_NEWSTYLE: 1 << 0, NO_ZEROES: 1 << 1 } as const;
export const ClientFlag = { FIXED_NEWSTYLE: 1 << 0, NO_ZEROES: 1 << 1 } as const;

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

const ERR = 0x80000000;
export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: ERR + 1,
  ERR_POLICY: ERR + 2,
  ERR_INVALID: ERR + 3,
  ERR_PLATFORM: ERR + 4,
  ERR_TLS_REQD: ERR + 5,
  ERR_UNKNOWN: ERR + 6,
  ERR_SHUTDOWN: ERR + 7,
  ERR_BLOCK_SIZE_REQD: ERR + 8,
  ERR_TOO_BIG: ERR + 9,
} as const;

export const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

export const TxFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

export const Cmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

export const CmdFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
} as const;

export const ReplyFlag = { DONE: 1 << 0 } as const;
export const ReplyType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: (1 << 15) + 1,
  ERROR_OFFSET: (1 << 15) + 2,
} as const;

export const BASE_ALLOCATION = 'base:allocation';
/** The one metadata context we serve; its id is fixed for the life of the server. */
export const BASE_ALLOCATION_ID = 1;

/** Limits: put a limit on everything a client controls. */
export const Limits = {
  /** Largest READ/WRITE payload we accept (advertised as the maximum block size): what one journal record holds. */
  payloadBytesMax: RECORD_PAYLOAD_BYTES_MAX,
  /** Preferred block size advertised to clients. */
  preferredBlockBytes: 4096,
  /** Minimum block size: any byte alignment is served. */
  minimumBlockBytes: 1,
  /** Option payloads beyond this are refused (names are at most 4096 bytes by the protocol). */
  optionBytesMax: 64 * 1024,
  /** Options one client may send before it must choose an export. */
  optionsPerConnectionMax: 1024,
  /** Meta context queries in one option. */
  metaContextQueriesMax: 128,
  /** Requests one connection may have in flight before the server stops reading its socket. */
  inflightRequestsMax: 128,
  /** Payload bytes one connection may have buffered or in flight before the server stops reading. */
  inflightBytesMax: 64 * 1024 * 1024,
  /** WRITE payloads larger than payloadBytesMax but below this are drained and refused; above, the client is dropped. */
  drainBytesMax: 256 * 1024 * 1024,
  /** Extents in one BLOCK_STATUS reply. */
  extentsPerReplyMax: 2048,
  /** Time a client has to finish negotiation (milliseconds for a real client, TLS included). */
  handshakeMsMax: 10_000,
  /** Time a closing connection (DISC, server shutdown) waits for the client to take its last replies. */
  closeFlushMsMax: 10_000,
} as const;

export const HEADER_REQUEST_BYTES = 28;
export const HEADER_SIMPLE_REPLY_BYTES = 16;
export const HEADER_STRUCTURED_REPLY_BYTES = 20;
