// The dialling side of the replication link. Every connection is TLS 1.3 with this
// site's own certificate; the server's certificate is accepted only if its SHA-256
// fingerprint is the one pinned for the peer (or, while pairing, starts with the
// fingerprint part of the token), checked before a single frame is sent. Then one
// exchange: HELLO → HELLO_OK for a session, PAIR → PAIR_OK for a pairing; an ERROR
// frame becomes a FerryError with the peer's code.
import net from 'node:net';
import tls from 'node:tls';
import { ERRORS, FerryError, type ErrorCode } from '../errors.js';
import type { PeerRow } from './peer-row.js';
import { encodeFrame, FrameReader, FrameType, type FrameTypeValue } from './frame.js';
import { certFingerprint, type SiteIdentity } from './identity.js';
import { pairingProof, type ParsedToken } from './pairing.js';
import type { PeerSession } from './peer-session.js';

export const CONNECT_TIMEOUT_MS = 10_000;

/** HOST:PORT of a peer's replication listener (a hostname, IPv4, or [IPv6]; port 1-65535). */
export function parseAddress(value: unknown): { host: string; port: number } {
  const m = typeof value === 'string' ? /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]{1,253})):(\d{1,5})$/.exec(value) : null;
  const port = m ? Number(m[3]) : NaN;
  const host = m ? (m[1] ?? m[2]!) : '';
  if (!m || port < 1 || port > 65535 || (m[1] !== undefined && net.isIPv6(host) === false)) {
    throw new FerryError('BAD_REQUEST', `invalid peer address ${JSON.stringify(value)}: use HOST:PORT of the peer's replication listener (e.g. 10.0.0.2:7401 or [fd00::2]:7401)`);
  }
  return { host, port };
}

interface Dialled {
  socket: tls.TLSSocket;
  reader: FrameReader;
  fingerprint: string;
}

const unreachableCodes = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EPIPE', 'EADDRNOTAVAIL']);

function dialError(err: unknown, address: string): FerryError {
  if (err instanceof FerryError) return err;
  const code = (err as NodeJS.ErrnoException).code ?? '';
  if (unreachableCodes.has(code)) return new FerryError('PEER_UNREACHABLE', `cannot reach the peer at ${address} (${code})`, undefined, { cause: err });
  return new FerryError('REPL_PROTOCOL', `TLS with ${address} failed (is it a ferryd replication port?): ${(err as Error).message}`, undefined, { cause: err });
}

/** A TLS session whose server certificate passed verify(fingerprint) (which throws to refuse). */
function dial(identity: SiteIdentity, address: string, timeoutMs: number, verify: (fingerprint: string) => void): Promise<Dialled> {
  const { host, port } = parseAddress(address);
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host,
      port,
      key: identity.keyPem,
      cert: identity.certPem,
      minVersion: 'TLSv1.3',
      // The peer is authenticated by its pinned fingerprint below, not by a CA.
      rejectUnauthorized: false,
      ...(net.isIP(host) ? {} : { servername: host }),
    });
    const fail = (err: unknown): void => {
      clearTimeout(timer);
      socket.destroy();
      reject(dialError(err, address));
    };
    const timer = setTimeout(() => fail(new FerryError('PEER_UNREACHABLE', `no TLS session with the peer at ${address} within ${timeoutMs} ms`)), timeoutMs);
    socket.once('error', fail);
    socket.once('secureConnect', () => {
      const raw = socket.getPeerCertificate(true)?.raw;
      if (!raw) return fail(new FerryError('PEER_AUTH_FAILED', `the server at ${address} presented no certificate`));
      const fingerprint = certFingerprint(raw);
      try {
        verify(fingerprint);
      } catch (err) {
        return fail(err);
      }
      clearTimeout(timer);
      socket.off('error', fail);
      socket.setNoDelay(true);
      resolve({ socket, reader: new FrameReader(socket), fingerprint });
    });
  });
}

/** Sends one frame and waits for the expected reply (or an ERROR frame); destroys the socket on failure. */
async function exchange(d: Dialled, address: string, type: FrameTypeValue, meta: object, expect: FrameTypeValue, timeoutMs: number): Promise<Record<string, unknown>> {
  let timer: NodeJS.Timeout | undefined;
  try {
    d.socket.write(encodeFrame(type, meta));
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new FerryError('PEER_UNREACHABLE', `the peer at ${address} did not answer within ${timeoutMs} ms`)), timeoutMs);
    });
    const frame = await Promise.race([d.reader.next(), timeout]);
    if (frame === null) throw new FerryError('REPL_PROTOCOL', `the peer at ${address} closed the connection without answering`);
    if (frame.type === FrameType.ERROR) {
      const code = typeof frame.meta.code === 'string' && frame.meta.code in ERRORS ? (frame.meta.code as ErrorCode) : 'REMOTE_ERROR';
      const message = typeof frame.meta.message === 'string' ? frame.meta.message.slice(0, 1000) : 'no reason given';
      throw new FerryError(code, `the peer at ${address} refused: ${message}`, { remoteCode: frame.meta.code });
    }
    if (frame.type !== expect) throw new FerryError('REPL_PROTOCOL', `the peer at ${address} answered with frame type ${frame.type}, expected ${expect}`);
    return frame.meta;
  } catch (err) {
    d.socket.destroy();
    throw dialError(err, address);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * An authenticated session with a paired peer: dial its address, pin its certificate,
 * HELLO { site, name, ...hello }, HELLO_OK. The session's hello is the peer's HELLO_OK meta.
 */
export async function connectPeer(identity: SiteIdentity, peer: PeerRow, hello: Record<string, unknown> = {}, timeoutMs = CONNECT_TIMEOUT_MS): Promise<PeerSession> {
  if (!peer.address) throw new FerryError('PEER_UNREACHABLE', `peer '${peer.name}' has no address: it paired with this site, which never dials it`);
  const address = peer.address;
  const deadline = Date.now() + timeoutMs;
  const d = await dial(identity, address, timeoutMs, (fp) => {
    if (fp !== peer.fingerprint) {
      throw new FerryError('PEER_AUTH_FAILED', `the server at ${address} is not peer '${peer.name}': its certificate fingerprint ${fp} is not the one pinned at pairing (${peer.fingerprint})`);
    }
  });
  const reply = await exchange(d, address, FrameType.HELLO, { site: identity.siteId, name: identity.siteName, ...hello }, FrameType.HELLO_OK, Math.max(1, deadline - Date.now()));
  return { peer, socket: d.socket, reader: d.reader, hello: reply };
}

export interface PairResult {
  fingerprint: string;
  site: string;
  name: string;
}

/**
 * The dialling half of a pairing (see pairing.ts). checkServer runs once the server's
 * certificate matched the token, before anything is sent: it throws to stop (PEER_EXISTS).
 */
export async function pairWithPeer(
  identity: SiteIdentity,
  address: string,
  token: ParsedToken,
  checkServer: (fingerprint: string) => void,
  timeoutMs = CONNECT_TIMEOUT_MS,
): Promise<PairResult> {
  const deadline = Date.now() + timeoutMs;
  const d = await dial(identity, address, timeoutMs, (fp) => {
    if (!fp.startsWith(token.fingerprintPrefix)) {
      throw new FerryError(
        'PEER_AUTH_FAILED',
        `the server at ${address} is not the site that issued the token: its certificate fingerprint starts with ${fp.slice(0, 16)}, the token names ${token.fingerprintPrefix} (wrong address, or someone in the middle)`,
      );
    }
    if (fp === identity.fingerprint) throw new FerryError('BAD_REQUEST', `${address} is this ferryd itself: a site cannot pair with itself`);
    checkServer(fp);
  });
  const proof = pairingProof(token.secret, identity.fingerprint, d.fingerprint);
  const reply = await exchange(d, address, FrameType.PAIR, { site: identity.siteId, name: identity.siteName, token: token.id, proof }, FrameType.PAIR_OK, Math.max(1, deadline - Date.now()));
  d.socket.end();
  const { site, name } = reply;
  if (typeof site !== 'string' || !/^[0-9a-f]{16}$/.test(site) || typeof name !== 'string') {
    d.socket.destroy();
    throw new FerryError('REPL_PROTOCOL', `the peer at ${address} answered PAIR_OK without a valid site id and name`);
  }
  return { fingerprint: d.fingerprint, site, name };
}
