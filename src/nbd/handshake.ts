// Negotiation phase of NBD (fixed newstyle only): option haggling up to the moment a
// client picks an export with GO or EXPORT_NAME. Every option is length-checked before
// it is parsed, every malformed option gets NBD_REP_ERR_INVALID and changes nothing,
// unknown options get NBD_REP_ERR_UNSUP, and the whole phase is bounded in options,
// bytes and time. STARTTLS upgrades the socket in place and forgets earlier state.
import tls from 'node:tls';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import {
  BASE_ALLOCATION,
  BASE_ALLOCATION_ID,
  ClientFlag,
  HandshakeFlag,
  IHAVEOPT,
  Info,
  Limits,
  NBDMAGIC,
  Opt,
  OPTION_REPLY_MAGIC,
  Rep,
  TxFlag,
} from './protocol.js';
import { ConnectionClosed, SocketReader } from './socket-reader.js';
import type { Volume } from '../volume/volume.js';

export type TlsMode = 'off' | 'on' | 'require';

export interface ExportCatalog {
  /** A volume that can be served now, or undefined (unknown, or not available). */
  find(name: string): Volume | undefined;
  /** Names of the exports to list. */
  names(): string[];
}

export interface NegotiationResult {
  volume: Volume;
  stream: Duplex;
  structuredReplies: boolean;
  /** Whether base:allocation was selected for this export. */
  baseAllocation: boolean;
  transmissionFlags: number;
  /** Bytes already received that belong to the transmission phase. */
  pending: Buffer;
  tls: boolean;
}

export interface NegotiationOptions {
  catalog: ExportCatalog;
  tlsMode: TlsMode;
  secureContext: tls.SecureContext | undefined;
  /** Require and verify client certificates against the configured CA. */
  verifyClients: boolean;
  log: (msg: string, extra?: Record<string, unknown>) => void;
}

class ProtocolViolation extends Error {}

export function transmissionFlags(volume: Volume, structured: boolean): number {
  let flags = TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH | TxFlag.SEND_FUA | TxFlag.SEND_CACHE | TxFlag.CAN_MULTI_CONN;
  if (volume.readOnly) flags |= TxFlag.READ_ONLY;
  else {
    flags |= TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES;
    if (volume.canFastZero) flags |= TxFlag.SEND_FAST_ZERO;
  }
  if (structured) flags |= TxFlag.SEND_DF;
  return flags;
}

/** Runs the negotiation; resolves with the chosen export, or null when the client aborted or left. */
export async function negotiate(socket: Socket, opts: NegotiationOptions): Promise<NegotiationResult | null> {
  let stream: Duplex = socket;
  let reader = new SocketReader(stream);
  let isTls = false;
  let structured = false;
  let metaExport: string | null = null; // export named by the last successful SET_META_CONTEXT
  let metaSelected = false;

  const send = (buf: Buffer): void => {
    stream.write(buf);
  };
  const reply = (option: number, type: number, data: Buffer = Buffer.alloc(0)): void => {
    const h = Buffer.allocUnsafe(20 + data.length);
    h.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(type >>> 0, 12);
    h.writeUInt32BE(data.length, 16);
    data.copy(h, 20);
    send(h);
  };
  const replyError = (option: number, type: number, message: string): void => reply(option, type, Buffer.from(message, 'utf8'));

  const hello = Buffer.allocUnsafe(18);
  hello.writeBigUInt64BE(NBDMAGIC, 0);
  hello.writeBigUInt64BE(IHAVEOPT, 8);
  hello.writeUInt16BE(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES, 16);
  send(hello);

  try {
    const clientFlags = (await reader.read(4)).readUInt32BE(0);
    if (clientFlags & ~(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES)) throw new ProtocolViolation(`unknown client flags 0x${clientFlags.toString(16)}`);
    const noZeroes = (clientFlags & ClientFlag.NO_ZEROES) !== 0;

    for (let count = 0; count < Limits.optionsPerConnectionMax; count++) {
      const head = await reader.read(16);
      if (head.readBigUInt64BE(0) !== IHAVEOPT) throw new ProtocolViolation('bad option magic');
      const option = head.readUInt32BE(8);
      const length = head.readUInt32BE(12);
      if (length > Limits.optionBytesMax) throw new ProtocolViolation(`option ${option} of ${length} bytes exceeds ${Limits.optionBytesMax}`);
      const data = length ? await reader.read(length) : Buffer.alloc(0);

      if (opts.tlsMode === 'require' && !isTls && option !== Opt.STARTTLS && option !== Opt.ABORT) {
        if (option === Opt.EXPORT_NAME) throw new ProtocolViolation('EXPORT_NAME without TLS while TLS is required');
        replyError(option, Rep.ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first');
        continue;
      }

      switch (option) {
        case Opt.ABORT:
          reply(option, Rep.ACK);
          // Flush the ACK, then close: nothing else would ever close this socket.
          stream.end(() => stream.destroy());
          return null;

        case Opt.STARTTLS: {
          if (length !== 0) {
            replyError(option, Rep.ERR_INVALID, 'STARTTLS takes no data');
            break;
          }
          if (isTls) {
            replyError(option, Rep.ERR_INVALID, 'TLS is already negotiated');
            break;
          }
          if (opts.tlsMode === 'off' || !opts.secureContext) {
            replyError(option, Rep.ERR_POLICY, 'TLS is not configured on this server');
            break;
          }
          reply(option, Rep.ACK);
          const leftover = reader.detach();
          if (leftover.length) throw new ProtocolViolation('plaintext data after STARTTLS');
          const secure = new tls.TLSSocket(socket, {
            isServer: true,
            secureContext: opts.secureContext,
            requestCert: opts.verifyClients,
            rejectUnauthorized: opts.verifyClients,
          });
          await new Promise<void>((resolve, reject) => {
            secure.once('secure', () => resolve());
            secure.once('error', (err) => reject(new ConnectionClosed(`TLS handshake failed: ${err.message}`)));
            secure.once('close', () => reject(new ConnectionClosed('closed during TLS handshake')));
          });
          stream = secure;
          reader = new SocketReader(stream);
          isTls = true;
          structured = false;
          metaExport = null;
          metaSelected = false;
          break;
        }

        case Opt.LIST: {
          if (length !== 0) {
            replyError(option, Rep.ERR_INVALID, 'LIST takes no data');
            break;
          }
          for (const name of opts.catalog.names()) {
            const n = Buffer.from(name, 'utf8');
            const d = Buffer.allocUnsafe(4 + n.length);
            d.writeUInt32BE(n.length, 0);
            n.copy(d, 4);
            reply(option, Rep.SERVER, d);
          }
          reply(option, Rep.ACK);
          break;
        }

        case Opt.STRUCTURED_REPLY:
          if (length !== 0) replyError(option, Rep.ERR_INVALID, 'STRUCTURED_REPLY takes no data');
          else if (structured) replyError(option, Rep.ERR_INVALID, 'structured replies are already negotiated');
          else {
            structured = true;
            reply(option, Rep.ACK);
          }
          break;

        case Opt.LIST_META_CONTEXT:
        case Opt.SET_META_CONTEXT: {
          const parsed = parseMetaContextOption(data);
          if (typeof parsed === 'string') {
            replyError(option, Rep.ERR_INVALID, parsed);
            break;
          }
          if (!structured) {
            replyError(option, Rep.ERR_INVALID, 'negotiate structured replies before meta contexts');
            break;
          }
          if (!opts.catalog.find(parsed.exportName)) {
            replyError(option, Rep.ERR_UNKNOWN, `no export named '${parsed.exportName}'`);
            break;
          }
          const isSet = option === Opt.SET_META_CONTEXT;
          let matched = false;
          if (parsed.queries.length === 0) matched = !isSet; // LIST with no query lists everything; SET selects nothing
          for (const q of parsed.queries) {
            if (q === BASE_ALLOCATION || (!isSet && q === 'base:')) matched = true;
          }
          if (matched) {
            const name = Buffer.from(BASE_ALLOCATION, 'utf8');
            const d = Buffer.allocUnsafe(4 + name.length);
            d.writeUInt32BE(BASE_ALLOCATION_ID, 0);
            name.copy(d, 4);
            reply(option, Rep.META_CONTEXT, d);
          }
          if (isSet) {
            metaExport = parsed.exportName;
            metaSelected = matched;
          }
          reply(option, Rep.ACK);
          break;
        }

        case Opt.INFO:
        case Opt.GO: {
          const parsed = parseInfoOption(data);
          if (typeof parsed === 'string') {
            replyError(option, Rep.ERR_INVALID, parsed);
            break;
          }
          const volume = opts.catalog.find(parsed.exportName);
          if (!volume) {
            replyError(option, Rep.ERR_UNKNOWN, parsed.exportName === '' ? 'this server has no default export: name a disk' : `no export named '${parsed.exportName}'`);
            break;
          }
          const flags = transmissionFlags(volume, structured);
          const exportInfo = Buffer.allocUnsafe(12);
          exportInfo.writeUInt16BE(Info.EXPORT, 0);
          exportInfo.writeBigUInt64BE(BigInt(volume.size), 2);
          exportInfo.writeUInt16BE(flags, 10);
          reply(option, Rep.INFO, exportInfo);
          if (parsed.requests.includes(Info.NAME)) {
            const n = Buffer.from(volume.name, 'utf8');
            const d = Buffer.allocUnsafe(2 + n.length);
            d.writeUInt16BE(Info.NAME, 0);
            n.copy(d, 2);
            reply(option, Rep.INFO, d);
          }
          const bs = Buffer.allocUnsafe(14);
          bs.writeUInt16BE(Info.BLOCK_SIZE, 0);
          bs.writeUInt32BE(Limits.minimumBlockBytes, 2);
          bs.writeUInt32BE(Limits.preferredBlockBytes, 6);
          bs.writeUInt32BE(Limits.payloadBytesMax, 10);
          reply(option, Rep.INFO, bs);
          reply(option, Rep.ACK);
          if (option === Opt.GO) {
            return {
              volume,
              stream,
              structuredReplies: structured,
              baseAllocation: metaSelected && metaExport === parsed.exportName,
              transmissionFlags: flags,
              pending: reader.detach(),
              tls: isTls,
            };
          }
          break;
        }

        case Opt.EXPORT_NAME: {
          const name = data.toString('utf8');
          const volume = opts.catalog.find(name);
          if (!volume) throw new ProtocolViolation(`EXPORT_NAME for unknown export '${name}'`);
          const flags = transmissionFlags(volume, structured);
          const d = Buffer.alloc(noZeroes ? 10 : 134);
          d.writeBigUInt64BE(BigInt(volume.size), 0);
          d.writeUInt16BE(flags, 8);
          send(d);
          return {
            volume,
            stream,
            structuredReplies: structured,
            baseAllocation: metaSelected && metaExport === name,
            transmissionFlags: flags,
            pending: reader.detach(),
            tls: isTls,
          };
        }

        default:
          replyError(option, Rep.ERR_UNSUP, `option ${option} is not supported`);
      }
    }
    throw new ProtocolViolation(`more than ${Limits.optionsPerConnectionMax} options`);
  } catch (err) {
    if (err instanceof ProtocolViolation) opts.log('negotiation refused', { reason: err.message });
    else if (!(err instanceof ConnectionClosed)) throw err;
    reader.detach();
    stream.destroy();
    return null;
  }
}

function readString(data: Buffer, at: number, what: string): { value: string; next: number } | string {
  if (at + 4 > data.length) return `truncated ${what} length`;
  const len = data.readUInt32BE(at);
  if (len > 4096) return `${what} longer than 4096 bytes`;
  if (at + 4 + len > data.length) return `${what} runs past the option data`;
  const raw = data.subarray(at + 4, at + 4 + len);
  if (raw.includes(0)) return `${what} contains NUL`;
  return { value: raw.toString('utf8'), next: at + 4 + len };
}

function parseInfoOption(data: Buffer): { exportName: string; requests: number[] } | string {
  const name = readString(data, 0, 'export name');
  if (typeof name === 'string') return name;
  let at = name.next;
  if (at + 2 > data.length) return 'missing number of information requests';
  const count = data.readUInt16BE(at);
  at += 2;
  if (at + count * 2 !== data.length) return 'option length does not match the information requests';
  const requests: number[] = [];
  for (let i = 0; i < count; i++) requests.push(data.readUInt16BE(at + i * 2));
  return { exportName: name.value, requests };
}

function parseMetaContextOption(data: Buffer): { exportName: string; queries: string[] } | string {
  const name = readString(data, 0, 'export name');
  if (typeof name === 'string') return name;
  let at = name.next;
  if (at + 4 > data.length) return 'missing number of queries';
  const count = data.readUInt32BE(at);
  at += 4;
  if (count > Limits.metaContextQueriesMax) return `more than ${Limits.metaContextQueriesMax} queries`;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    const q = readString(data, at, 'query');
    if (typeof q === 'string') return q;
    queries.push(q.value);
    at = q.next;
  }
  if (at !== data.length) return 'trailing bytes after the queries';
  return { exportName: name.value, queries };
}
