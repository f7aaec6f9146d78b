// The testing layer: a fake Clock, for fault injection and in-process tests only (never
// passed to a served disk). It owns the current time of the state machines it is handed
// (committers, admission steps, the remote stream) and their timers: time stands still
// until a test moves it with advance(), which fires the timers that fall due in time order
// (ties in the order they were set), letting promise continuations run between two timers.
// settle() lets the event loop run (setImmediate turns: no time passes, nothing sleeps)
// until nothing is left to do at the current time. So a gather delay, a retry backoff or a
// checkpoint interval is crossed by hand, and a test never sleeps on the wall clock.
import type { Clock } from '../clock.js';

interface Timer {
  at: number;
  order: number;
  fn: () => void;
}

/** Event-loop turns settle() lets run with no timer due before it calls the pipeline idle. */
const idleTurns = 3;
/** Timers fired at one instant before settle() gives up (a timer re-arming itself at 0 ms forever). */
const firesPerInstantMax = 100_000;

export class FakeClock implements Clock {
  private now: number;
  private timers: Timer[] = [];
  private order = 0;

  /** `startMs`: the time it reads at first (any fixed value: tests must not depend on the real date). */
  constructor(startMs = 1_700_000_000_000) {
    this.now = startMs;
  }

  nowMs(): number {
    return this.now;
  }

  timeout(ms: number, fn: () => void): { cancel(): void } {
    const t: Timer = { at: this.now + Math.max(0, ms), order: this.order++, fn };
    this.timers.push(t);
    return {
      cancel: () => {
        const i = this.timers.indexOf(t);
        if (i >= 0) this.timers.splice(i, 1);
      },
    };
  }

  /** Timers set and not yet fired or cancelled. */
  get pendingTimers(): number {
    return this.timers.length;
  }

  /** When the next timer falls due (null: none is set). */
  get nextDueMs(): number | null {
    const t = this.next();
    return t ? t.at : null;
  }

  /**
   * Moves time forward by `ms`: fires every timer due by then, earliest first, each at its own
   * time (nowMs() reads the timer's time while it and what it starts run), settling between
   * two timers so a timer set by a continuation is fired too if it falls due within `ms`.
   */
  async advance(ms: number): Promise<void> {
    if (!(ms >= 0)) throw new Error(`FakeClock.advance(${ms}): time only moves forward`);
    const target = this.now + ms;
    await this.settle();
    for (;;) {
      const t = this.next();
      if (!t || t.at > target) break;
      this.now = Math.max(this.now, t.at);
      await this.settle();
    }
    this.now = target;
    await this.settle();
  }

  /**
   * Lets promise continuations and setImmediate callbacks run, firing timers due at the current
   * time (0 ms timeouts), until a few event-loop turns pass with nothing due. No time passes.
   */
  async settle(): Promise<void> {
    let fired = 0;
    for (;;) {
      for (let i = 0; i < idleTurns; i++) await new Promise<void>((resolve) => setImmediate(resolve));
      const t = this.next();
      if (!t || t.at > this.now) return;
      this.timers.splice(this.timers.indexOf(t), 1);
      if (++fired > firesPerInstantMax) throw new Error('FakeClock.settle: timers keep falling due at the same instant');
      t.fn();
    }
  }

  /**
   * Advances time in steps of `stepMs` until `p` settles, and returns (or throws) what it did;
   * fails once `limitMs` of fake time has passed without it settling (a hang, not a slow test).
   */
  async runUntil<T>(p: Promise<T>, stepMs = 10, limitMs = 600_000): Promise<T> {
    let done = false;
    const watched = p.finally(() => {
      done = true;
    });
    watched.catch(() => undefined);
    await this.settle();
    for (let spent = 0; !done; spent += stepMs) {
      if (spent >= limitMs) throw new Error(`FakeClock.runUntil: still pending after ${limitMs} ms of fake time`);
      await this.advance(stepMs);
    }
    return watched;
  }

  private next(): Timer | undefined {
    let best: Timer | undefined;
    for (const t of this.timers) if (!best || t.at < best.at || (t.at === best.at && t.order < best.order)) best = t;
    return best;
  }
}
