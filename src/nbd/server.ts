// The nbd layer: Ferry's NBD server. This file owns the listening socket and the life
// of each connection (accept → negotiation in handshake.ts → transmission in
// transmission.ts → close); the protocol phases live in their own files, the protocol
// numbers in protocol.ts. Bounded: connections at once, in total and per source address,
// negotiating ones apart (src/net/connection-limiter.ts), negotiation time, and the bytes
// queued for all clients together (queued-bytes.ts).
import net from 'node:net';
import fs from 'node:fs';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { negotiate, type ExportCatalog, type TlsMode } from './handshake.js';
import { Limits } from './protocol.js';
import { Transmission } from './transmission.js';
import { IdlePoller } from './idle-poller.js';
import { QueuedBytes, queuedBytesMaxDefault } from './queued-bytes.js';
import { ConnectionLimiter, fdBoundedMax, type ConnectionLimits } from '../net/connection-limiter.js';

export interface NbdTlsConfig {
  mode: TlsMode;
  certFile?: string;
  keyFile?: string;
  /** CA bundle; when given, clients must present a certificate it signed. */
  caFile?: string;
}

/**
 * See idle-poller.ts. The gap between a reply and a queue-depth-1 client's next request is
 * about 40 µs here while polling and about 85 µs when the server sleeps (the wake-up is
 * the difference): the window must cover the sleeping gap to ever start. 200 µs is also
 * the kernel's default halt-polling window for virtual CPUs.
 */
export const defaultPollUsMax = 200;

/**
 * Default connection limits. NBD takes up to half of the descriptors left after the reserve
 * (connection-limiter.ts); one address may hold a quarter of the sessions (an application
 * server with many disks, or multi-connection clients); negotiation takes milliseconds, so
 * fewer may be negotiating at once (128, 32 per address), the oldest dropped for a newcomer.
 */
export function nbdLimitsDefault(): ConnectionLimits {
  const connectionsMax = fdBoundedMax(512, 1 / 2);
  const pendingMax = Math.min(128, connectionsMax);
  return {
    connectionsMax,
    perAddressMax: Math.max(1, Math.floor(connectionsMax / 4)),
    pendingMax,
    // A host may start many clients at once (fio jobs, VMs); a flood from one address beyond this drops its own oldest.
    pendingPerAddressMax: Math.min(32, pendingMax),
    pendingMsMax: 0, // negotiation has its own timer (Limits.handshakeMsMax), which logs
  };
}

export interface NbdServerOptions {
  host: string;
  port: number;
  catalog: ExportCatalog;
  tls: NbdTlsConfig;
  log: Logger;
  /** Connection limits (defaults: nbdLimitsDefault()); `connectionsMax` alone overrides the total. */
  limits?: Partial<ConnectionLimits>;
  connectionsMax?: number;
  /** Bound on bytes queued for all clients together (queued-bytes.ts); default 256 MiB. */
  queuedBytesMax?: number;
  /** Longest polling window after the last request in flight replies, µs (idle-poller.ts); 0: never poll. */
  pollUsMax?: number;
}

export class NbdServer {
  private readonly server: net.Server;
  private readonly negotiating = new Set<net.Socket>();
  private readonly sessions = new Set<Transmission>();
  /** The disk each session serves (disconnect()). */
  private readonly sessionDisks = new Map<Transmission, string>();
  private readonly secureContext: tls.SecureContext | undefined;
  private readonly opts: NbdServerOptions;
  private readonly limiter: ConnectionLimiter;
  private readonly queued: QueuedBytes;
  private readonly poller: IdlePoller;
  private closing = false;

  constructor(opts: NbdServerOptions) {
    this.opts = opts;
    const limits = { ...nbdLimitsDefault(), ...opts.limits };
    if (opts.connectionsMax !== undefined) limits.connectionsMax = opts.connectionsMax;
    limits.perAddressMax = Math.min(limits.perAddressMax, limits.connectionsMax);
    limits.pendingMax = Math.min(limits.pendingMax, limits.connectionsMax);
    this.limiter = new ConnectionLimiter({ name: 'NBD', limits, log: opts.log });
    this.queued = new QueuedBytes(opts.queuedBytesMax ?? queuedBytesMaxDefault, limits.connectionsMax, opts.log);
    this.poller = new IdlePoller(opts.pollUsMax ?? defaultPollUsMax);
    if (opts.tls.mode !== 'off') {
      if (!opts.tls.certFile || !opts.tls.keyFile) throw new Error('NBD TLS needs a certificate and a key (--tls-cert, --tls-key)');
      this.secureContext = tls.createSecureContext({
        cert: fs.readFileSync(opts.tls.certFile),
        key: fs.readFileSync(opts.tls.keyFile),
        ca: opts.tls.caFile ? fs.readFileSync(opts.tls.caFile) : undefined,
        minVersion: 'TLSv1.2',
      });
    }
    this.server = net.createServer({ noDelay: true, pauseOnConnect: true }, (socket) => this.accept(socket));
    // An accept that fails (ENOBUFS, ENOMEM) is logged, never an uncaught 'error'.
    this.server.on('error', (err) => this.opts.log.error({ err: String(err) }, 'NBD listener error'));
  }

  listen(): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.opts.port, this.opts.host, () => {
        this.server.off('error', reject);
        const addr = this.server.address() as net.AddressInfo;
        resolve({ host: addr.address, port: addr.port });
      });
    });
  }

  get connectionCount(): number {
    return this.negotiating.size + this.sessions.size;
  }

  /** Bytes queued for all clients together now (replies, READ buffers, WRITE payloads). */
  get queuedBytes(): number {
    return this.queued.queuedBytes;
  }

  private accept(socket: net.Socket): void {
    socket.on('error', () => undefined);
    const admission = this.limiter.admit(socket);
    if (admission === null) return;
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30_000);
    this.negotiating.add(socket);
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    const log = (msg: string, extra?: Record<string, unknown>): void => this.opts.log.warn({ remote, ...extra }, msg);
    const timer = setTimeout(() => {
      log('negotiation timed out');
      socket.destroy();
    }, Limits.handshakeMsMax);
    negotiate(socket, {
      catalog: this.opts.catalog,
      tlsMode: this.opts.tls.mode,
      secureContext: this.secureContext,
      verifyClients: Boolean(this.opts.tls.caFile),
      log,
    })
      .then((result) => {
        clearTimeout(timer);
        this.negotiating.delete(socket);
        if (!result) return;
        // The disk may have been removed while the client negotiated: never attach to a closed volume.
        if (this.closing || this.opts.catalog.find(result.volume.name) !== result.volume) {
          result.stream.destroy();
          return;
        }
        admission.established();
        this.opts.log.info({ remote, disk: result.volume.name, tls: result.tls, structured: result.structuredReplies }, 'NBD client attached');
        const session = new Transmission(result.stream, result.pending, {
          volume: result.volume,
          structuredReplies: result.structuredReplies,
          baseAllocation: result.baseAllocation,
          poller: this.poller,
          queued: this.queued,
          log,
        });
        this.sessions.add(session);
        this.sessionDisks.set(session, result.volume.name);
        void session.done.then(() => {
          this.sessions.delete(session);
          this.sessionDisks.delete(session);
          this.opts.log.info({ remote, disk: result.volume.name }, 'NBD client detached');
        });
      })
      .catch((err) => {
        clearTimeout(timer);
        this.negotiating.delete(socket);
        log('negotiation failed', { err: String(err) });
        socket.destroy();
      });
  }

  /** Closes the connections to one disk, each after its in-flight requests are answered; resolves with how many. */
  async disconnect(disk: string): Promise<number> {
    const mine = [...this.sessions].filter((s) => this.sessionDisks.get(s) === disk);
    await Promise.all(mine.map((s) => s.shutdown()));
    return mine.length;
  }

  /** Stops accepting, lets every in-flight request finish and reply, then closes all connections. */
  async close(): Promise<void> {
    this.closing = true;
    this.limiter.close();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.negotiating) s.destroy();
    await Promise.all([...this.sessions].map((s) => s.shutdown()));
    await closed;
  }
}
