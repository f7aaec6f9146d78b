// The listening side of the replication link. Each connection: TLS 1.3 asking for the
// client's certificate (accepted whatever signed it: peers are authenticated by the
// certificate fingerprint pinned at pairing, not by a CA), then within 10 s one first
// frame, PAIR or HELLO. PAIR goes to the pairing handler; HELLO from a known fingerprint
// gets HELLO_OK and becomes a PeerSession for onSession (purpose 'ping' is answered here
// and closed). Anything else — an unknown certificate, no certificate, garbage, plain
// TCP, a slow client — is logged with the remote address and disconnected; nothing
// changes. Before authentication nothing larger than a first frame of FIRST_FRAME_BYTES_MAX
// is read. Connections are limited in total and per source address, unauthenticated ones
// apart (src/net/connection-limiter.ts): a flood from one address is held to a few pending
// connections, a flood from many drops the oldest pending one for each newcomer, and
// authenticated sessions hold slots pending ones cannot take — so a paired peer, whose
// handshake takes milliseconds, always gets through.
import net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import type { PeerRow } from './peer-row.js';
import { encodeFrame, FIRST_FRAME_BYTES_MAX, FrameReader, FrameType, type Frame } from './frame.js';
import { ConnectionLimiter, fdBoundedMax, type ConnectionLimits } from '../net/connection-limiter.js';
import { certFingerprint, type SiteIdentity } from './identity.js';
import type { PairingHandler } from './pairing.js';
import type { PeerSession } from './peer-session.js';

export const FIRST_FRAME_TIMEOUT_MS = 10_000;

/**
 * Default connection limits: a quarter of the descriptors left after the reserve, at most
 * 128 (a peer holds a few sessions: one per mirrored disk or group, pings, requests);
 * unauthenticated ones at most 32 in all and 4 per address.
 */
export function replLimitsDefault(): ConnectionLimits {
  const connectionsMax = fdBoundedMax(128, 1 / 4);
  const pendingMax = Math.min(32, connectionsMax);
  return { connectionsMax, perAddressMax: Math.max(1, Math.floor(connectionsMax / 2)), pendingMax, pendingPerAddressMax: Math.min(4, pendingMax), pendingMsMax: 0 };
}

export interface ReplListenerOptions {
  host: string;
  port: number;
  identity: SiteIdentity;
  peers: { byFingerprint(fp: string): PeerRow | undefined };
  pairing: PairingHandler;
  /** Receives every authenticated session (HELLO with a purpose other than 'ping'); absent: refused. */
  onSession?: (s: PeerSession) => void;
  log: Logger;
  /** Connection limits (defaults: replLimitsDefault()). */
  limits?: Partial<ConnectionLimits>;
}

export class ReplListener {
  private readonly server: net.Server;
  private readonly context: tls.SecureContext;
  private readonly log: Logger;
  private readonly sockets = new Set<tls.TLSSocket>();
  private readonly limiter: ConnectionLimiter;

  constructor(private readonly opts: ReplListenerOptions) {
    this.log = opts.log.child({ component: 'repl' });
    this.context = tls.createSecureContext({ key: opts.identity.keyPem, cert: opts.identity.certPem, minVersion: 'TLSv1.3' });
    this.limiter = new ConnectionLimiter({ name: 'replication', limits: { ...replLimitsDefault(), ...opts.limits }, log: this.log });
    this.server = net.createServer({ noDelay: true }, (raw) => this.accept(raw));
    this.server.on('error', (err) => this.log.error({ err: String(err) }, 'replication listener error'));
  }

  /** Connections not yet past their first frame. */
  get pendingConnections(): number {
    return this.limiter.pending;
  }

  listen(): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.opts.port, this.opts.host, () => {
        this.server.off('error', reject);
        const a = this.server.address() as net.AddressInfo;
        resolve({ host: a.address, port: a.port });
      });
    });
  }

  async close(): Promise<void> {
    this.limiter.close();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  private accept(raw: net.Socket): void {
    const remote = `${raw.remoteAddress}:${raw.remotePort}`;
    raw.on('error', () => undefined); // reported through the TLS socket
    const admission = this.limiter.admit(raw);
    if (admission === null) return;
    let settled = false;
    /** The first frame is handled (or the connection refused): no longer pending. */
    const settle = (): void => {
      if (!settled) {
        settled = true;
        admission.established();
      }
    };
    raw.setNoDelay(true);
    const socket = new tls.TLSSocket(raw, { isServer: true, secureContext: this.context, requestCert: true, rejectUnauthorized: false });
    this.sockets.add(socket);
    raw.once('close', () => {
      settle();
      this.sockets.delete(socket);
    });
    const refuse = (reason: string, extra: Record<string, unknown> = {}): void => {
      settle();
      this.log.warn({ remote, ...extra }, `replication connection refused: ${reason}`);
      socket.destroy();
      raw.destroy();
    };
    const timer = setTimeout(() => refuse(`no PAIR or HELLO within ${FIRST_FRAME_TIMEOUT_MS / 1000} s`), FIRST_FRAME_TIMEOUT_MS);
    raw.once('close', () => clearTimeout(timer));
    socket.on('error', (err) => {
      if (!settled) refuse(`TLS failed: ${err.message}`);
    });
    socket.once('secure', () => {
      const raw509 = socket.getPeerCertificate(true)?.raw;
      const fingerprint = raw509 ? certFingerprint(raw509) : null;
      const reader = new FrameReader(socket, { firstFrameBytesMax: FIRST_FRAME_BYTES_MAX });
      reader.next().then(
        (frame) => {
          clearTimeout(timer);
          if (settled) return;
          if (frame === null) return refuse('closed before its first frame', { fingerprint });
          this.first(socket, reader, frame, fingerprint, remote, settle, refuse);
        },
        (err: Error) => {
          clearTimeout(timer);
          if (!settled) refuse(err instanceof FerryError ? err.message : `connection failed: ${err.message}`, { fingerprint });
        },
      );
    });
  }

  private first(
    socket: tls.TLSSocket,
    reader: FrameReader,
    frame: Frame,
    fingerprint: string | null,
    remote: string,
    settle: () => void,
    refuse: (reason: string, extra?: Record<string, unknown>) => void,
  ): void {
    /** Answers with an ERROR frame, then closes once it is written. */
    const deny = (err: FerryError): void => {
      settle();
      this.log.warn({ remote, fingerprint, code: err.code, reason: err.message }, 'replication connection refused');
      socket.end(encodeFrame(FrameType.ERROR, { code: err.code, message: err.message }));
      setTimeout(() => socket.destroy(), 2000).unref();
    };
    if (frame.type !== FrameType.PAIR && frame.type !== FrameType.HELLO) return refuse(`first frame is of type ${frame.type}, not PAIR or HELLO`, { fingerprint });
    if (!fingerprint) return deny(new FerryError('PEER_AUTH_FAILED', 'no client certificate was presented'));

    if (frame.type === FrameType.PAIR) {
      let reply: { site: string; name: string };
      try {
        reply = this.opts.pairing.accept({ meta: frame.meta, fingerprint, remote });
      } catch (err) {
        // The pairing handler logged the refusal; only answer.
        settle();
        const e = err instanceof FerryError ? err : new FerryError('INTERNAL', String(err));
        socket.end(encodeFrame(FrameType.ERROR, { code: e.code, message: e.message }));
        setTimeout(() => socket.destroy(), 2000).unref();
        return;
      }
      settle();
      socket.end(encodeFrame(FrameType.PAIR_OK, reply));
      setTimeout(() => socket.destroy(), 2000).unref();
      return;
    }

    const peer = this.opts.peers.byFingerprint(fingerprint);
    if (!peer) return deny(new FerryError('PEER_AUTH_FAILED', `site ${this.opts.identity.siteName} has no peer with certificate fingerprint ${fingerprint}; pair the sites first (ferry peer token / ferry peer add)`));
    if (typeof frame.meta.site === 'string' && frame.meta.site !== peer.site_id) {
      return deny(new FerryError('PEER_AUTH_FAILED', `the certificate of peer '${peer.name}' was presented with site id ${frame.meta.site}, not ${peer.site_id}`));
    }
    const ok = { site: this.opts.identity.siteId, name: this.opts.identity.siteName };
    if (frame.meta.purpose === 'ping') {
      settle();
      this.log.debug({ remote, peer: peer.name }, 'replication ping');
      socket.end(encodeFrame(FrameType.HELLO_OK, ok));
      setTimeout(() => socket.destroy(), 2000).unref();
      return;
    }
    const onSession = this.opts.onSession;
    if (!onSession) return deny(new FerryError('NOT_SUPPORTED', 'this ferryd does not accept replication sessions yet'));
    settle();
    socket.write(encodeFrame(FrameType.HELLO_OK, ok));
    this.log.info({ remote, peer: peer.name, purpose: frame.meta.purpose }, 'replication session opened');
    try {
      onSession({ peer, socket, reader, hello: frame.meta });
    } catch (err) {
      this.log.error({ err: String(err), peer: peer.name }, 'replication session handler failed');
      socket.destroy();
    }
  }
}
