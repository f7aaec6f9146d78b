// The bound on bytes queued for all NBD clients together (one QueuedBytes per server, one
// account per transmission-phase connection). A connection's queued bytes are what it holds
// in memory for its client: READ buffers being filled and WRITE payloads in flight or being
// received (payload-pool.ts buffers), and replies written but not yet taken by the kernel
// (the stream's writableLength). transmission.ts bounds them per connection; this file
// bounds their sum.
//
// Before a connection starts a request it asks admit() with the request's cost (a READ's or
// WRITE's length). Granted when the total stays within queuedBytesMax, or when the
// connection's own queue stays within shareBytes (queuedBytesMax / connections: every client
// may have that much whatever the others hold). Otherwise the connection waits: its reader
// pauses (it parses no new request; those in flight complete) until bytes are released, and
// waiters are woken oldest first while the total is below the bound. So the heaviest
// connections — clients that ask for large READs and never take the replies — stop, a light
// client keeps going, and the total never exceeds 2 × queuedBytesMax (the bound, plus at most
// shareBytes for each connection).
import type { Logger } from 'pino';

/** Default bound on bytes queued for all clients together. */
export const queuedBytesMaxDefault = 256 * 1024 * 1024;
/** The smallest per-connection share, however many connections the server takes. */
export const shareBytesMin = 64 * 1024;
/** While connections wait, the state is logged at most once per period (and when it changes). */
const reportMs = 10_000;

export class QueuedAccount {
  /** Bytes this connection holds, as last reported. */
  bytes = 0;
  /** Waiting for the budget: its reader is paused until wake. */
  waiting = false;
  /** Its reader is paused for any reason (the per-connection bounds too). */
  paused = false;
  closed = false;

  constructor(
    private readonly owner: QueuedBytes,
    readonly wake: () => void,
  ) {}

  /** Reports the bytes the connection holds now. */
  set(bytes: number): void {
    if (this.closed) return;
    const old = this.bytes;
    this.bytes = bytes;
    this.owner.changed(bytes - old);
  }

  /** Whether a request costing `cost` bytes may start, the connection holding `bytes` now; false: wait for wake. */
  admit(bytes: number, cost: number): boolean {
    this.set(bytes);
    if (this.owner.grants(this, cost)) {
      if (this.waiting) this.owner.forgetWaiter(this);
      // Charged now: the request's bytes are held from its start (the next set() recounts them exactly).
      this.set(bytes + cost);
      return true;
    }
    this.owner.wait(this);
    return false;
  }

  setPaused(paused: boolean): void {
    if (this.paused !== paused && !this.closed) this.owner.pausedChanged(paused ? 1 : -1);
    this.paused = paused;
  }

  /** The connection closed: everything it held is released. */
  close(): void {
    if (this.closed) return;
    this.setPaused(false);
    this.set(0);
    this.closed = true;
    this.owner.forget(this);
  }
}

export class QueuedBytes {
  readonly queuedBytesMax: number;
  readonly shareBytes: number;
  private totalBytes = 0;
  private accounts = 0;
  private pausedCount = 0;
  private readonly waiters = new Set<QueuedAccount>();
  private wakeScheduled = false;
  private reportTimer: NodeJS.Timeout | null = null;
  private lastReport = '';
  private lastReportAtMs = 0;

  constructor(
    queuedBytesMax: number,
    connectionsMax: number,
    private readonly log: Logger,
  ) {
    if (!Number.isSafeInteger(queuedBytesMax) || queuedBytesMax < 1024 * 1024) throw new Error(`queuedBytesMax must be at least 1 MiB, got ${queuedBytesMax}`);
    this.queuedBytesMax = queuedBytesMax;
    this.shareBytes = Math.max(shareBytesMin, Math.floor(queuedBytesMax / Math.max(1, connectionsMax)));
  }

  /** Bytes queued for all clients now. */
  get queuedBytes(): number {
    return this.totalBytes;
  }

  /** Connections waiting for the budget. */
  get waiting(): number {
    return this.waiters.size;
  }

  account(wake: () => void): QueuedAccount {
    this.accounts++;
    return new QueuedAccount(this, wake);
  }

  grants(a: QueuedAccount, cost: number): boolean {
    return this.totalBytes + cost <= this.queuedBytesMax || a.bytes + cost <= this.shareBytes;
  }

  changed(deltaBytes: number): void {
    this.totalBytes += deltaBytes;
    if (deltaBytes < 0 && this.waiters.size > 0 && this.totalBytes < this.queuedBytesMax) this.scheduleWake();
  }

  wait(a: QueuedAccount): void {
    if (a.closed) return;
    const first = this.waiters.size === 0;
    a.waiting = true;
    this.waiters.add(a);
    if (first) this.report();
  }

  pausedChanged(delta: number): void {
    this.pausedCount += delta;
  }

  forget(a: QueuedAccount): void {
    this.accounts--;
    this.forgetWaiter(a);
  }

  forgetWaiter(a: QueuedAccount): void {
    a.waiting = false;
    this.waiters.delete(a);
  }

  /** Wakes waiters oldest first, at the next turn (never inside a caller's parse), while the total is below the bound. */
  private scheduleWake(): void {
    if (this.wakeScheduled) return;
    this.wakeScheduled = true;
    setImmediate(() => {
      this.wakeScheduled = false;
      const list = [...this.waiters];
      this.waiters.clear();
      let i = 0;
      for (; i < list.length && this.totalBytes < this.queuedBytesMax; i++) {
        const a = list[i]!;
        a.waiting = false;
        if (!a.closed) a.wake();
      }
      // Those not woken keep their place ahead of any that queued up meanwhile.
      const later = [...this.waiters];
      this.waiters.clear();
      for (const a of list.slice(i)) this.waiters.add(a);
      for (const a of later) this.waiters.add(a);
    });
  }

  /** Logs the state (when it changed, at most once per period), then again each period while connections wait. */
  private report(): void {
    const now = Date.now();
    if (now - this.lastReportAtMs >= reportMs - 50) {
      const state = { queuedBytes: this.totalBytes, queuedBytesMax: this.queuedBytesMax, shareBytes: this.shareBytes, connections: this.accounts, paused: this.pausedCount, waiting: this.waiters.size };
      const key = JSON.stringify(state);
      if (key !== this.lastReport) {
        this.lastReport = key;
        this.lastReportAtMs = now;
        this.log.warn(state, `NBD replies and payloads queued for clients reached the memory bound: ${state.waiting} connections wait for theirs to drain`);
      }
    }
    if (this.reportTimer || this.waiters.size === 0) return;
    this.reportTimer = setTimeout(() => {
      this.reportTimer = null;
      if (this.waiters.size > 0) this.report();
    }, reportMs);
    this.reportTimer.unref();
  }
}
