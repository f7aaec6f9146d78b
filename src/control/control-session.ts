// 'control' sessions between two paired sites: one request, one answer, then the session
// ends. A site asks its peer to run an operation that the peer must carry out (the
// replica site asks the primary site for a switchover; a site reconnecting as a replica
// asks the survivor to resync it). Both ends are here: askPeer() dials, sends the request
// (with an optional binary payload) and waits, bounded, for the answer; serveControl()
// reads the request of an accepted session and answers it from the handler of its op.
// An error travels as {code, message} and is raised again at the asking site with the
// same registry code (REMOTE_ERROR for a code this site does not know).
import type { Logger } from 'pino';
import { ERRORS, FerryError, type ErrorCode } from '../errors.js';
import { encodeFrame, FrameType } from '../replication/frame.js';
import type { PeerSession } from '../replication/peer-session.js';
import type { PeerRow } from './store.js';

/** What a served request may do: its answer (merged into the RESPONSE meta). */
export type ControlHandler = (from: ControlCaller, meta: Record<string, unknown>, payload: Buffer) => Promise<Record<string, unknown>>;

/** Who asked: the peer's name here, and the address its session came from. */
export interface ControlCaller {
  peer: string;
  address: string | null;
}

/** The ops a site serves, by name. */
export type ControlHandlers = Readonly<Record<string, ControlHandler>>;

/** How long an answered session is kept open for its answer to be read before it is destroyed. */
const lingerMs = 1000;

/**
 * Asks `peer` to run `meta.op` and resolves with its answer; rejects with the peer's error
 * (its code kept), PEER_UNREACHABLE when it does not answer within `timeoutMs`.
 */
export async function askPeer(connect: (peer: PeerRow) => Promise<PeerSession>, peer: PeerRow, meta: Record<string, unknown>, timeoutMs: number, what: string, payload?: Buffer): Promise<Record<string, unknown>> {
  if (!peer.address) throw new FerryError('PEER_UNREACHABLE', `this site has no address for ${peer.name} (it dialled this site): give it one with 'ferry peer set ${peer.name} --address HOST:PORT', or run the command at ${peer.name}`);
  const session = await connect(peer);
  let timer: NodeJS.Timeout | undefined;
  try {
    session.socket.write(encodeFrame(FrameType.REQUEST, { id: 1, ...meta }, payload));
    const f = await Promise.race([
      session.reader.next(),
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new FerryError('PEER_UNREACHABLE', `${peer.name} did not complete the ${what} within ${timeoutMs / 1000} s`)), timeoutMs))),
    ]);
    if (!f || f.type !== FrameType.RESPONSE) throw new FerryError('REPL_PROTOCOL', `${peer.name} closed the control session without an answer`);
    const e = f.meta.error as { code?: string; message?: string } | undefined;
    if (e) {
      const known = typeof e.code === 'string' && e.code in ERRORS;
      throw new FerryError(known ? (e.code as ErrorCode) : 'REMOTE_ERROR', `${peer.name}: ${e.message ?? `${what} failed`}`);
    }
    return f.meta;
  } finally {
    clearTimeout(timer);
    session.socket.destroy();
  }
}

/** Serves one request of an accepted 'control' session with the handler of its op. */
export async function serveControl(session: PeerSession, handlers: ControlHandlers, log: Logger): Promise<void> {
  const { socket, reader, peer } = session;
  try {
    const f = await reader.next();
    if (!f || f.type !== FrameType.REQUEST || typeof f.meta.op !== 'string') return;
    const handler = Object.hasOwn(handlers, f.meta.op) ? handlers[f.meta.op] : undefined;
    let answer: Record<string, unknown>;
    try {
      if (!handler) throw new FerryError('NOT_SUPPORTED', `this site does not serve '${f.meta.op}' requests`);
      answer = await handler({ peer: peer.name, address: socket.remoteAddress ?? null }, f.meta, f.payload);
    } catch (err) {
      const e = err as Error;
      answer = { error: { code: err instanceof FerryError ? err.code : 'INTERNAL', message: e.message } };
    }
    socket.write(encodeFrame(FrameType.RESPONSE, { id: f.meta.id, ...answer }));
    socket.end();
  } catch (err) {
    log.warn({ peer: peer.name, err: (err as Error).message }, 'control session ended with an error');
  } finally {
    setTimeout(() => socket.destroy(), lingerMs).unref();
  }
}
