// The net layer: limits on the connections one listener holds (NBD, REST API, replication
// all use this one helper). It owns the counts — in total and per source address, for
// connections still pending (negotiating, not yet authenticated) and for established ones —,
// the choice to refuse a new connection or drop the oldest pending one, the time a pending
// connection may take, the rate-limited log line that reports refusals, and the defaults
// derived from the process's open-file limit (descriptors are kept in reserve for disks,
// staging areas, the database and outgoing peer links).
//
// Why pending connections are limited apart: an established connection (a negotiated NBD
// session, an authenticated peer) costs a slot it holds; a pending one should be gone in
// milliseconds. A flood from one address is stopped by the per-address limits; a flood
// from many addresses fills pendingMax, and then each newcomer drops the oldest pending
// connection, so a real client that completes its handshake in less time than the flood
// takes to open pendingMax new connections always gets through, and established
// connections can never be crowded out by pending ones. The same goes for one address: its
// oldest pending connection is dropped for its newest, so a flood from the address a real
// client shares (NAT) churns itself rather than locking the client out.
import fs from 'node:fs';
import type net from 'node:net';
import type { Logger } from 'pino';

export interface ConnectionLimits {
  /** Connections at once, all addresses, pending ones included. */
  connectionsMax: number;
  /** Connections at once from one source address (an IPv6 /64 counts as one address). */
  perAddressMax: number;
  /** Pending connections at once, all addresses; when full, the oldest one is dropped for a newcomer. */
  pendingMax: number;
  /** Pending connections at once from one source address; beyond it that address's oldest pending one is dropped for a newcomer. */
  pendingPerAddressMax: number;
  /** Time a connection may stay pending before it is closed; 0: the owner times it out itself. */
  pendingMsMax: number;
}

export type RefusalReason = 'closing' | 'total' | 'perAddress';

/** One admitted connection. */
export interface Admission {
  /** The source address as counted (IPv4, or an IPv6 /64 prefix). */
  readonly address: string;
  readonly pending: boolean;
  /** The connection negotiated or authenticated: it leaves the pending pool (no-op if already). */
  established(): void;
  /** The connection closed: frees its slot (idempotent; also done on the socket's 'close'). */
  release(): void;
}

export interface ConnectionLimiterOptions {
  /** Names the listener in log lines: 'NBD', 'API', 'replication'. */
  name: string;
  limits: ConnectionLimits;
  log: Logger;
  /** At most one refusal line per this period, with the count of refusals it stands for. */
  refusalLogMs?: number;
}

/** Files kept out of every listener's reach, at least: disks, staging areas, the database, logs, peer links. */
export const reservedFdsMin = 256;
export const refusalLogMsDefault = 10_000;

/** The process's soft limit on open files (/proc/self/limits); 1024 when it cannot be read. */
export function openFilesSoftLimit(): number {
  try {
    const m = /^Max open files\s+(\d+|unlimited)\s/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'));
    if (m) return m[1] === 'unlimited' ? 1 << 20 : Number(m[1]);
  } catch {
    // not Linux: assume the common default
  }
  return 1024;
}

/**
 * Connections a listener may hold by default: `wanted`, but at most `share` of the
 * descriptors left once a quarter of the soft limit (and at least reservedFdsMin) is kept
 * in reserve. The listeners' shares add up to at most 1.
 */
export function fdBoundedMax(wanted: number, share: number, softLimit = openFilesSoftLimit()): number {
  const reserve = Math.max(reservedFdsMin, Math.floor(softLimit / 4));
  const budget = Math.max(0, softLimit - reserve);
  return Math.max(8, Math.min(wanted, Math.floor(budget * share)));
}

/** The key a source address is counted under: IPv4 as is (also when IPv4-mapped), IPv6 by its /64. */
export function addressKey(remote: string | undefined): string {
  if (!remote) return 'unknown';
  if (remote.startsWith('::ffff:') && remote.includes('.')) return remote.slice(7);
  if (!remote.includes(':')) return remote;
  const [head = '', tail = ''] = remote.split('::');
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = remote.includes('::') ? [...h, ...Array<string>(Math.max(0, 8 - h.length - t.length)).fill('0'), ...t] : h;
  return `${groups.slice(0, 4).map((g) => parseInt(g, 16).toString(16)).join(':')}::/64`;
}

interface Entry {
  address: string;
  socket: net.Socket;
  pending: boolean;
  timer: NodeJS.Timeout | null;
}

export class ConnectionLimiter {
  private readonly name: string;
  private readonly log: Logger;
  private readonly refusalLogMs: number;
  readonly limits: ConnectionLimits;
  /** Pending connections, oldest first (a Map keeps insertion order). */
  private readonly pendingEntries = new Map<Entry, true>();
  private readonly perAddress = new Map<string, { all: number; pending: number }>();
  private total = 0;
  private closing = false;
  private refused: Record<RefusalReason | 'evicted' | 'timedOut', number> = { closing: 0, total: 0, perAddress: 0, evicted: 0, timedOut: 0 };
  private lastRemote = '';
  private windowTimer: NodeJS.Timeout | null = null;

  constructor(opts: ConnectionLimiterOptions) {
    this.name = opts.name;
    this.log = opts.log;
    this.limits = opts.limits;
    this.refusalLogMs = opts.refusalLogMs ?? refusalLogMsDefault;
    const l = opts.limits;
    for (const [k, v] of Object.entries(l)) if (!Number.isInteger(v) || v < 0) throw new Error(`${this.name} connection limit ${k} must be a whole number ≥ 0, got ${v}`);
    if (l.pendingMax < 1 || l.pendingMax > l.connectionsMax) throw new Error(`${this.name} pendingMax must be between 1 and connectionsMax (${l.connectionsMax})`);
  }

  /** Connections held now, pending ones included. */
  get connections(): number {
    return this.total;
  }

  get pending(): number {
    return this.pendingEntries.size;
  }

  /** Refuses every later connection (the listener is closing). */
  close(): void {
    this.closing = true;
  }

  /**
   * Counts a just-accepted socket as pending, or refuses it: destroys it, counts the
   * refusal for the log, and returns null. When the pending pool is full (or the listener
   * is, and some connection is pending), the oldest pending connection is dropped instead.
   */
  admit(socket: net.Socket): Admission | null {
    const address = addressKey(socket.remoteAddress);
    const l = this.limits;
    const counts = this.perAddress.get(address) ?? { all: 0, pending: 0 };
    let reason: RefusalReason | null = null;
    if (this.closing) reason = 'closing';
    else if (counts.all >= l.perAddressMax) reason = 'perAddress';
    else if (this.total >= l.connectionsMax && this.pendingEntries.size === 0) reason = 'total';
    if (reason !== null) {
      this.refuse(reason, socket);
      return null;
    }
    if (counts.pending >= l.pendingPerAddressMax) this.evictOldest(address);
    else if (this.pendingEntries.size >= l.pendingMax || this.total >= l.connectionsMax) this.evictOldest();
    const entry: Entry = { address, socket, pending: true, timer: null };
    this.pendingEntries.set(entry, true);
    counts.all++;
    counts.pending++;
    this.perAddress.set(address, counts);
    this.total++;
    if (l.pendingMsMax > 0) {
      entry.timer = setTimeout(() => {
        if (!entry.pending) return;
        this.count('timedOut', socket);
        socket.destroy();
      }, l.pendingMsMax);
      entry.timer.unref();
    }
    let released = false;
    const admission: Admission = {
      address,
      get pending() {
        return entry.pending;
      },
      established: () => {
        if (released || !entry.pending) return;
        this.leavePending(entry);
      },
      release: () => {
        if (released) return;
        released = true;
        if (entry.pending) this.leavePending(entry);
        const c = this.perAddress.get(address)!;
        if (--c.all === 0) this.perAddress.delete(address);
        this.total--;
      },
    };
    socket.once('close', () => admission.release());
    return admission;
  }

  private leavePending(entry: Entry): void {
    entry.pending = false;
    if (entry.timer) clearTimeout(entry.timer);
    this.pendingEntries.delete(entry);
    this.perAddress.get(entry.address)!.pending--;
  }

  /** Drops the oldest pending connection (of `address` if given) to make room; its 'close' releases its slot. */
  private evictOldest(address?: string): void {
    let oldest: Entry | undefined;
    for (const e of this.pendingEntries.keys()) {
      if (address === undefined || e.address === address) {
        oldest = e;
        break;
      }
    }
    if (!oldest) return;
    this.leavePending(oldest);
    this.count('evicted', oldest.socket);
    oldest.socket.destroy();
  }

  private refuse(reason: RefusalReason, socket: net.Socket): void {
    this.count(reason, socket);
    socket.destroy();
  }

  /** Counts a refusal; the first of a period is logged at once, the rest when the period ends. */
  private count(reason: RefusalReason | 'evicted' | 'timedOut', socket: net.Socket): void {
    this.refused[reason]++;
    this.lastRemote = `${socket.remoteAddress}:${socket.remotePort}`;
    if (this.windowTimer) return;
    this.flush();
    this.armWindow();
  }

  /** Refusals within the period are logged when it ends, in one line; a period with none ends the cycle. */
  private armWindow(): void {
    this.windowTimer = setTimeout(() => {
      this.windowTimer = null;
      if (!Object.values(this.refused).some((n) => n > 0)) return;
      this.flush();
      this.armWindow();
    }, this.refusalLogMs);
    this.windowTimer.unref();
  }

  private flush(): void {
    const r = this.refused;
    const counts = Object.fromEntries(Object.entries(r).filter(([, n]) => n > 0));
    const n = Object.values(r).reduce((a, b) => a + b, 0);
    this.log.warn(
      { listener: this.name, ...counts, last: this.lastRemote, connections: this.total, pending: this.pendingEntries.size, limits: this.limits },
      `${this.name} connections refused or dropped at their limits: ${n} (${Object.keys(counts).join(', ')})`,
    );
    this.refused = { closing: 0, total: 0, perAddress: 0, evicted: 0, timedOut: 0 };
  }
}
