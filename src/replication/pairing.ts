// Pairing two sites with a one-time token. Site B issues a token
// "<32 hex secret>.<first 16 hex of B's certificate fingerprint>"; the administrator
// carries it to site A. A dials B and checks that B's certificate matches the token's
// fingerprint part (so a man in the middle is refused before anything is sent), then
// proves knowledge of the secret with HMAC-SHA256(secret, A.fingerprint + B.fingerprint)
// — bound to both certificates of this very TLS session, so a proof is useless on any
// other connection. B checks the proof against the certificate A presented, consumes the
// token and registers A. The secret itself never crosses the wire.
// A retry after a lost answer (B registered A, but A never heard so) is answered again:
// the same token, the same proof from the same certificate, with A still registered under
// the same name. Anyone else presenting a used token is refused.
//
// Tokens live only in memory: at most MAX_OUTSTANDING unused and unexpired ones (the
// oldest is dropped to make room), each single use, gone at a restart.
import crypto from 'node:crypto';
import type { Logger } from 'pino';
import { FerryError } from '../errors.js';
import { validateName } from '../names.js';
import type { PeerRow } from './peer-row.js';
import type { SiteIdentity } from './identity.js';

export const MAX_OUTSTANDING = 16;
export const TTL_DEFAULT_MS = 10 * 60_000;
export const TTL_MAX_MS = 24 * 3600_000;
/** Used and expired tokens are remembered this long, for clear refusals. */
const FORGET_AFTER_MS = 3600_000;

const tokenPattern = /^([0-9a-f]{32})\.([0-9a-f]{16})$/;
const hex = (n: number): RegExp => new RegExp(`^[0-9a-f]{${n}}$`);

export interface ParsedToken {
  secret: string;
  fingerprintPrefix: string;
  /** What the PAIR frame names the token by: the first 16 hex of SHA-256(secret). */
  id: string;
}

export function parseToken(token: unknown): ParsedToken {
  const m = typeof token === 'string' ? tokenPattern.exec(token.trim().toLowerCase()) : null;
  if (!m) throw new FerryError('BAD_REQUEST', "the pairing token must look like <32 hex digits>.<16 hex digits>, as printed by 'ferry peer token' on the other site");
  return { secret: m[1]!, fingerprintPrefix: m[2]!, id: tokenId(m[1]!) };
}

function tokenId(secret: string): string {
  return crypto.createHash('sha256').update(secret).digest('hex').slice(0, 16);
}

/** The proof that the dialling site (client) holds the token's secret. */
export function pairingProof(secret: string, clientFingerprint: string, serverFingerprint: string): string {
  return crypto.createHmac('sha256', secret).update(clientFingerprint + serverFingerprint).digest('hex');
}

export interface IssuedToken {
  token: string;
  expiresAt: string;
  ttlSeconds: number;
  site: string;
  name: string;
  fingerprint: string;
}

export interface PairRequest {
  meta: Record<string, unknown>;
  /** SHA-256 of the certificate the client presented in this TLS session. */
  fingerprint: string;
  remote: string;
}

/** What the replication listener calls for a PAIR frame; throws a FerryError to refuse. */
export interface PairingHandler {
  accept(req: PairRequest): { site: string; name: string };
}

interface TokenState {
  secret: string;
  expires: number;
  /** When and by which site (certificate fingerprint, peer name) it was used: that site's retry is answered again. */
  used: { atMs: number; fingerprint: string; name: string } | null;
}

export interface PeerDirectory {
  peer(name: string): PeerRow | undefined;
  peerByFingerprint(fingerprint: string): PeerRow | undefined;
  insertPeer(row: PeerRow): void;
}

export class Pairing implements PairingHandler {
  private readonly tokens = new Map<string, TokenState>();

  constructor(
    private readonly identity: SiteIdentity,
    private readonly peers: PeerDirectory,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  create(ttlMs = TTL_DEFAULT_MS): IssuedToken {
    if (!Number.isInteger(ttlMs) || ttlMs < 1000 || ttlMs > TTL_MAX_MS) throw new FerryError('BAD_REQUEST', `the token lifetime must be between 1 second and 24 hours`);
    const t = this.now();
    this.prune(t);
    const outstanding = [...this.tokens.entries()].filter(([, s]) => s.used === null && s.expires > t);
    if (outstanding.length >= MAX_OUTSTANDING) {
      const [oldest] = outstanding.sort((a, b) => a[1].expires - b[1].expires)[0]!;
      this.tokens.delete(oldest);
      this.log.warn({ max: MAX_OUTSTANDING }, 'pairing: too many outstanding tokens; the one closest to expiry was revoked');
    }
    const secret = crypto.randomBytes(16).toString('hex');
    this.tokens.set(tokenId(secret), { secret, expires: t + ttlMs, used: null });
    this.log.info({ expiresAt: new Date(t + ttlMs).toISOString() }, 'pairing token issued');
    return {
      token: `${secret}.${this.identity.fingerprint.slice(0, 16)}`,
      expiresAt: new Date(t + ttlMs).toISOString(),
      ttlSeconds: ttlMs / 1000,
      site: this.identity.siteId,
      name: this.identity.siteName,
      fingerprint: this.identity.fingerprint,
    };
  }

  /** Tokens that can still be used. */
  get outstanding(): number {
    const t = this.now();
    return [...this.tokens.values()].filter((s) => s.used === null && s.expires > t).length;
  }

  accept(req: PairRequest): { site: string; name: string } {
    try {
      return this.check(req);
    } catch (err) {
      const e = err instanceof FerryError ? err : new FerryError('INTERNAL', String(err));
      this.log.warn({ remote: req.remote, fingerprint: req.fingerprint, code: e.code, reason: e.message }, 'pairing refused');
      throw e;
    }
  }

  private check({ meta, fingerprint }: PairRequest): { site: string; name: string } {
    const { site, name, proof, token } = meta;
    if (typeof site !== 'string' || !hex(16).test(site)) throw new FerryError('REPL_PROTOCOL', 'PAIR: site must be 16 hex digits');
    if (typeof token !== 'string' || !hex(16).test(token)) throw new FerryError('REPL_PROTOCOL', 'PAIR: token must be 16 hex digits');
    if (typeof proof !== 'string' || !hex(64).test(proof)) throw new FerryError('REPL_PROTOCOL', 'PAIR: proof must be 64 hex digits');
    if (typeof name !== 'string') throw new FerryError('REPL_PROTOCOL', 'PAIR: name must be a string');
    const t = this.now();
    const state = this.tokens.get(token);
    if (!state) throw new FerryError('PEER_AUTH_FAILED', 'the pairing token is not known here (wrong site, mistyped, or issued before a restart of ferryd)');
    const expected = Buffer.from(pairingProof(state.secret, fingerprint, this.identity.fingerprint), 'hex');
    const proven = crypto.timingSafeEqual(expected, Buffer.from(proof, 'hex'));
    if (state.used !== null) {
      const by = state.used;
      const registered = proven && by.fingerprint === fingerprint && by.name === name ? this.peers.peerByFingerprint(fingerprint) : undefined;
      if (registered?.name !== name || registered.site_id !== site) throw new FerryError('PEER_AUTH_FAILED', 'the pairing token was already used; issue a new one');
      this.log.info({ peer: name, site }, 'pairing repeated by the site that used the token (its answer was lost): answered again');
      return { site: this.identity.siteId, name: this.identity.siteName };
    }
    if (state.expires <= t) throw new FerryError('PEER_AUTH_FAILED', 'the pairing token expired; issue a new one');
    if (!proven) throw new FerryError('PEER_AUTH_FAILED', 'the pairing proof does not match the token and the certificates of this connection');
    if (fingerprint === this.identity.fingerprint) throw new FerryError('BAD_REQUEST', 'a site cannot pair with itself');
    validateName('peer', name);
    const byName = this.peers.peer(name);
    if (byName) throw new FerryError('PEER_EXISTS', `this site already has a peer named '${name}'; remove it there first, or start the other site with a different --site name`);
    const byFp = this.peers.peerByFingerprint(fingerprint);
    if (byFp) throw new FerryError('PEER_EXISTS', `this site is already paired with that site, as peer '${byFp.name}'`);
    this.peers.insertPeer({ name, address: null, fingerprint, site_id: site, created_at: t });
    state.used = { atMs: t, fingerprint, name };
    this.log.info({ peer: name, site, fingerprint }, 'paired with a new peer');
    return { site: this.identity.siteId, name: this.identity.siteName };
  }

  private prune(t: number): void {
    for (const [id, s] of this.tokens) if ((s.used?.atMs ?? s.expires) + FORGET_AFTER_MS < t) this.tokens.delete(id);
    // Bounded whatever the rate of issue: the oldest used or expired tokens go first.
    for (const [id, s] of this.tokens) {
      if (this.tokens.size < 4 * MAX_OUTSTANDING) break;
      if (s.used !== null || s.expires <= t) this.tokens.delete(id);
    }
  }
}

/** "10m", "30s", "1h", "90" (seconds) → milliseconds. */
export function parseTtl(value: unknown): number {
  if (typeof value === 'number' && Number.isInteger(value) && value > 0) return value * 1000;
  const m = typeof value === 'string' ? /^(\d{1,6})\s*(s|m|h)?$/i.exec(value.trim()) : null;
  if (!m) throw new FerryError('BAD_REQUEST', `invalid token lifetime ${JSON.stringify(value)}: use seconds, or a number with s, m or h (e.g. 10m)`);
  const unit = { s: 1000, m: 60_000, h: 3600_000 }[(m[2] ?? 's').toLowerCase() as 's' | 'm' | 'h'];
  return Number(m[1]) * unit;
}
