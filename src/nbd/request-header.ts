// An NBD transmission-phase request header (28 bytes): its fields, the flags each command
// accepts, and what a request costs in queued bytes before it is taken from the receive
// buffer (queued-bytes.ts admits it or makes its connection wait). transmission.ts validates
// and runs the request.
import { Cmd, CmdFlag, Limits } from './protocol.js';

/**
 * Flags each command accepts; anything else is NBD_EINVAL (doc/proto.md, "Error values").
 * FUA is valid on every command once SEND_FUA is advertised ("the server MUST accept all
 * commands with this bit set"); where nothing is written it is ignored.
 */
export const allowedFlags: Record<number, number> = {
  [Cmd.READ]: CmdFlag.DF | CmdFlag.FUA,
  [Cmd.WRITE]: CmdFlag.FUA,
  [Cmd.DISC]: CmdFlag.FUA,
  [Cmd.FLUSH]: CmdFlag.FUA,
  [Cmd.TRIM]: CmdFlag.FUA,
  [Cmd.CACHE]: CmdFlag.FUA,
  [Cmd.WRITE_ZEROES]: CmdFlag.FUA | CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO,
  [Cmd.BLOCK_STATUS]: CmdFlag.REQ_ONE | CmdFlag.FUA,
};

export interface Request {
  flags: number;
  type: number;
  cookieHi: number;
  cookieLo: number;
  offset: number;
  length: number;
}

/** The fields of a request header (its magic is checked by the caller). */
export function parseRequestHeader(h: Buffer): Request {
  const offsetHi = h.readUInt32BE(16);
  return {
    flags: h.readUInt16BE(4),
    type: h.readUInt16BE(6),
    cookieHi: h.readUInt32BE(8),
    cookieLo: h.readUInt32BE(12),
    // Offsets of 2^53 and beyond cannot be in range of any disk; keep them unsafe so the range check refuses them.
    offset: offsetHi >= 0x200000 ? Number.MAX_SAFE_INTEGER + 1 : offsetHi * 0x100000000 + h.readUInt32BE(20),
    length: h.readUInt32BE(24),
  };
}

/**
 * Bytes a request will hold while it runs and until its reply is taken: the data of a READ
 * or WRITE of a size served (larger ones are refused, or drained and refused, holding
 * nothing); other replies are small.
 */
export function requestCost(h: Buffer): number {
  const type = h.readUInt16BE(6);
  const length = h.readUInt32BE(24);
  return (type === Cmd.READ || type === Cmd.WRITE) && length <= Limits.payloadBytesMax ? length : 0;
}
