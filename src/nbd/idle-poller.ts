// Adaptive polling of the event loop between NBD requests. When the last request in
// flight on any connection has replied, the event loop would block in epoll until the
// next one arrives, and on a virtual machine waking a sleeping thread costs tens of
// microseconds: at queue depth 1 that wake-up, not the I/O, is most of the time between
// a reply and the next request's start. So for a short window after the server goes
// idle the loop keeps turning (setImmediate: epoll is polled with a zero timeout) and
// picks up the next request without sleeping.
//
// The window adapts to the clients, as the kernel's halt-polling does: when a request
// arrives within pollUsMax of the server going idle, polling pays and the window is
// pollUsMax; when one arrives later, the window halves (and below windowUsMin stops), so
// clients that pause between requests cost at most about 2 × pollUsMax of polling per
// pause and then nothing, until requests come close together again. Polling never runs
// while a request is in flight (the thread pool may need the CPU) and stops by itself.
// Cost: up to one core while a queue-depth-1 client keeps the server busy; 0 disables it.

/** Below this the window is not worth a turn of the loop: polling stops. */
const windowUsMin = 4;

export class IdlePoller {
  private inflight = 0;
  private windowUsValue: number;
  /** performance.now() when the server last went idle. */
  private idleAtMs = 0;
  private spinning = false;

  constructor(readonly pollUsMax: number) {
    if (!Number.isFinite(pollUsMax) || pollUsMax < 0) throw new Error(`pollUsMax must be a number ≥ 0, got ${pollUsMax}`);
    this.windowUsValue = pollUsMax;
  }

  /** The current polling window, µs (0: the loop sleeps between requests). */
  get windowUs(): number {
    return this.windowUsValue;
  }

  /** Whether the loop is being kept turning now. */
  get polling(): boolean {
    return this.spinning;
  }

  /** A request started; adapts the window to how long the server was idle before it. */
  begin(): void {
    if (this.inflight++ > 0 || this.pollUsMax === 0 || this.idleAtMs === 0) return;
    const gapUs = (performance.now() - this.idleAtMs) * 1000;
    if (gapUs <= this.pollUsMax) {
      this.windowUsValue = this.pollUsMax;
    } else {
      this.windowUsValue = this.windowUsValue / 2 < windowUsMin ? 0 : this.windowUsValue / 2;
    }
  }

  /** A request replied (or failed); the last one in flight starts a polling window. */
  end(): void {
    if (--this.inflight > 0 || this.pollUsMax === 0) return;
    this.idleAtMs = performance.now();
    if (this.windowUsValue === 0 || this.spinning) return;
    this.spinning = true;
    setImmediate(this.spin);
  }

  private readonly spin = (): void => {
    if (this.inflight === 0 && (performance.now() - this.idleAtMs) * 1000 < this.windowUsValue) setImmediate(this.spin);
    else this.spinning = false;
  };
}
