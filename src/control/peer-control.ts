// Peers: the other ferryd sites this one trusts. Pairing (add) dials the other site with
// a one-time token it issued (see src/replication/pairing.ts) and records, on both
// sides, the other's certificate fingerprint and site id; only this side records an
// address. Show adds a live check (dial, TLS, HELLO 'ping'); remove forgets the peer, so
// its next connection is refused. Every refusal changes nothing on either site.
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import { validateName } from '../names.js';
import type { MetadataStore, PeerRow } from './store.js';
import type { SiteIdentity } from '../replication/identity.js';
import { Pairing, parseTtl, parseToken, TTL_DEFAULT_MS, type IssuedToken } from '../replication/pairing.js';
import { CONNECT_TIMEOUT_MS, connectPeer, pairWithPeer, parseAddress } from '../replication/peer-connector.js';

export interface PeerInfo {
  name: string;
  /** HOST:PORT this site dials, or null: the peer paired with this site and is never dialled from here. */
  address: string | null;
  fingerprint: string;
  siteId: string;
  createdAt: string;
}

export interface PeerCheck {
  /** A TLS session was established with the address. */
  reachable: boolean;
  /** Both sides recognised each other's pinned certificate (HELLO answered by HELLO_OK). */
  authenticated: boolean;
  /** Time of the whole check: TCP and TLS handshakes plus HELLO round trip. */
  rttMs: number | null;
  /** The peer's own site name, as it answered. */
  remoteName: string | null;
  error: { code: string; message: string } | null;
}

export interface PeerDetails extends PeerInfo {
  /** null for a peer without an address (it is never dialled from here). */
  check: PeerCheck | null;
}

export class PeerControl {
  readonly pairing: Pairing;
  /** Set by the mirror layer: true while mirrors use the peer (remove is then refused). */
  private readonly inUse: ((name: string) => boolean) | undefined;
  private readonly adding = new Set<string>();

  constructor(
    private readonly store: MetadataStore,
    readonly identity: SiteIdentity,
    private readonly log: Logger,
    opts: { inUse?: (name: string) => boolean } = {},
  ) {
    this.inUse = opts.inUse;
    this.pairing = new Pairing(identity, store, log.child({ component: 'pairing' }));
  }

  list(): PeerInfo[] {
    return this.store.peers().map(info);
  }

  /** The row of a peer, or PEER_NOT_FOUND. */
  row(name: string): PeerRow {
    validateName('peer', name);
    const row = this.store.peer(name);
    if (!row) throw new FerryError('PEER_NOT_FOUND', `no peer is named '${name}'`);
    return row;
  }

  byFingerprint(fingerprint: string): PeerRow | undefined {
    return this.store.peerByFingerprint(fingerprint);
  }

  async show(name: string): Promise<PeerDetails> {
    const row = this.row(name);
    return { ...info(row), check: row.address ? await this.check(row) : null };
  }

  private async check(row: PeerRow): Promise<PeerCheck> {
    const t0 = performance.now();
    try {
      const s = await connectPeer(this.identity, row, { purpose: 'ping' }, CONNECT_TIMEOUT_MS);
      const rttMs = Math.round((performance.now() - t0) * 100) / 100;
      s.reader.detach();
      s.socket.destroy();
      return { reachable: true, authenticated: true, rttMs, remoteName: typeof s.hello.name === 'string' ? s.hello.name : null, error: null };
    } catch (err) {
      const e = err instanceof FerryError ? err : new FerryError('INTERNAL', String(err));
      return { reachable: e.code !== 'PEER_UNREACHABLE', authenticated: false, rttMs: null, remoteName: null, error: { code: e.code, message: e.message } };
    }
  }

  /** Pairs with the site at address that issued token, and records it as peer name. */
  async add(opts: { name: unknown; address: unknown; token: unknown }): Promise<PeerInfo> {
    const name = validateName('peer', opts.name);
    const address = opts.address;
    const { host, port } = parseAddress(address);
    const token = parseToken(opts.token);
    if (this.store.peer(name)) throw new FerryError('PEER_EXISTS', `a peer named '${name}' exists; remove it first or choose another name`);
    if (this.adding.has(name)) throw new FerryError('PEER_EXISTS', `a pairing with peer '${name}' is already in progress`);
    this.adding.add(name);
    try {
      const r = await pairWithPeer(this.identity, address as string, token, (fp) => {
        const known = this.store.peerByFingerprint(fp);
        if (known) throw new FerryError('PEER_EXISTS', `the site at ${String(address)} is already peer '${known.name}'`);
      });
      const row: PeerRow = { name, address: host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`, fingerprint: r.fingerprint, site_id: r.site, created_at: Date.now() };
      try {
        this.store.insertPeer(row);
      } catch (err) {
        this.log.error({ peer: name, err: String(err) }, 'paired, but the peer could not be recorded here; remove this site on the other side and pair again');
        throw new FerryError('PEER_EXISTS', `paired, but peer '${name}' could not be recorded here (${(err as Error).message}); remove this site on the other side and pair again`);
      }
      this.log.info({ peer: name, address: row.address, site: r.site, remoteName: r.name, fingerprint: r.fingerprint }, 'paired with a new peer');
      return info(row);
    } finally {
      this.adding.delete(name);
    }
  }

  /**
   * Sets the address this site dials the peer at: a peer that paired with this site (it
   * dialled us, so we stored no address) gets one, for a mirror in the other direction
   * (fail-back after `mirror promote`), or a peer that moved gets its new one. Identity
   * stays pinned to the fingerprint: the address only says where to dial.
   */
  setAddress(name: string, address: unknown): PeerInfo {
    const row = this.row(name);
    const { host, port } = parseAddress(address);
    const normalized = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
    this.store.updatePeerAddress(name, normalized);
    this.log.info({ peer: name, from: row.address, to: normalized }, 'peer address set');
    return info({ ...row, address: normalized });
  }

  remove(name: string): PeerInfo {
    const row = this.row(name);
    if (this.inUse?.(name)) throw new FerryError('PEER_IN_USE', `mirrors still use peer '${name}'; remove them first`);
    this.store.deletePeer(name);
    this.log.info({ peer: name, fingerprint: row.fingerprint }, 'peer removed');
    return info(row);
  }

  createToken(opts: { ttl?: unknown } = {}): IssuedToken {
    return this.pairing.create(opts.ttl === undefined ? TTL_DEFAULT_MS : parseTtl(opts.ttl));
  }
}

function info(r: PeerRow): PeerInfo {
  return { name: r.name, address: r.address, fingerprint: r.fingerprint, siteId: r.site_id, createdAt: new Date(r.created_at).toISOString() };
}
