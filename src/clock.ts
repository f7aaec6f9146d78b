// Time as the data path's state machines see it (committers, the remote stream, the
// admission steps): the current time and timers. The daemon uses the system clock; the
// in-process pipeline tests pass a fake one (src/testing/fake-clock.ts) and move time by
// hand, so a gather delay or a checkpoint interval is tested without sleeping.
export interface Clock {
  /** Milliseconds since the epoch (Date.now()). */
  nowMs(): number;
  /** Calls `fn` once after `ms` milliseconds unless cancelled first. */
  timeout(ms: number, fn: () => void): { cancel(): void };
}

export const systemClock: Clock = {
  nowMs: () => Date.now(),
  timeout(ms, fn) {
    const t = setTimeout(fn, ms);
    return { cancel: () => clearTimeout(t) };
  },
};

/** Resolves after `ms` on `clock` (for a wait that nothing else can end early). */
export function sleepOn(clock: Clock, ms: number): Promise<void> {
  return new Promise((resolve) => clock.timeout(ms, resolve));
}
