// A mirror's recovery point objective (`--rpo`): a target that is watched, never enforced
// (writes are never slowed for it: that is --max-lag). The figure watched is the exposure:
// how much recent history a loss of this site now would lose, i.e. now minus the time of
// the newest image the mirror holds (every write acknowledged before that time is there).
//
// The mirror supplies the image time at each observation: now minus its lag while it is
// consistent and streaming (0 lag: the image is now), null while it is not (syncing, bitmap,
// resyncing): the watch then keeps the last image it saw, which is conservative (the mirror
// applied records up to a moment after it). A mirror never consistent since this start has
// no known image: the target is not met.
//
// | target | image known | exposure ≤ target | met   |
// |--------|-------------|-------------------|-------|
// | none   | -           | -                 | null  |
// | set    | none yet    | -                 | false (the first sync: not a breach) |
// | set    | no          | -                 | false |
// | set    | yes         | yes               | true  |
// | set    | yes         | no                | false |
//
// A breach starts when `met` turns false (logged once, warn, counted) and ends when it turns
// true again (logged once, info, with its length). Clearing or changing the target ends a
// breach; the next observation starts a new one if the new target is not met either.

import type { Logger } from 'pino';

export interface RpoStatus {
  /** The target, seconds; null: none set. */
  targetSeconds: number | null;
  /** Whether the exposure is within the target; null: no target. */
  met: boolean | null;
  /** Now minus the newest image's time, seconds; null: no image known. */
  exposureSeconds: number | null;
  /** The newest image the mirror holds: every write acknowledged before this time is in it. */
  newestImageAt: string | null;
  /** How long the target has not been met (null: met, or no target). */
  breachSeconds: number | null;
  /** Breaches since this ferryd started. */
  breaches: number;
}

/** What one observation decides, from the target, the newest image's time and now (the table above, as a function). */
export type RpoJudgement = Pick<RpoStatus, 'targetSeconds' | 'met' | 'exposureSeconds' | 'newestImageAt'>;

/**
 * Judges an image against a target: the exposure is now minus the image's time (never below 0),
 * met when it is within the target (null: no target; false: no image known). Used by the
 * watch here at the primary site and, for its status, by the mirror site (replica-control.ts).
 */
export function judgeRpo(targetMs: number | null, imageAtMs: number | null, nowMs: number): RpoJudgement {
  const exposureMs = imageAtMs === null ? null : Math.max(0, nowMs - imageAtMs);
  return {
    targetSeconds: targetMs === null ? null : targetMs / 1000,
    met: targetMs === null ? null : exposureMs !== null && exposureMs <= targetMs,
    exposureSeconds: exposureMs === null ? null : exposureMs / 1000,
    newestImageAt: imageAtMs === null ? null : new Date(imageAtMs).toISOString(),
  };
}

export class RpoWatch {
  private breachSinceMs: number | null = null;
  private lastImageAtMs: number | null = null;
  breaches = 0;

  constructor(
    private targetMs: number | null,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  get target(): number | null {
    return this.targetMs;
  }

  setTarget(targetMs: number | null): void {
    if (targetMs === this.targetMs) return;
    this.targetMs = targetMs;
    if (this.breachSinceMs !== null) this.endBreach('target changed');
  }

  /** One observation: `imageAtMs` is the newest image's time, or null while the mirror holds none it can vouch for now. */
  observe(imageAtMs: number | null): RpoStatus {
    const now = this.now();
    if (imageAtMs !== null) this.lastImageAtMs = Math.min(now, Math.max(imageAtMs, this.lastImageAtMs ?? imageAtMs));
    const image = this.lastImageAtMs;
    const judged = judgeRpo(this.targetMs, image, now);
    const { met, exposureSeconds } = judged;
    // A mirror that never held an image (its first sync) misses the target but has not left it.
    if (met === false && this.breachSinceMs === null && image !== null) {
      this.breachSinceMs = now;
      this.breaches++;
      this.log.warn({ rpoSeconds: judged.targetSeconds, exposureSeconds, breaches: this.breaches }, 'RPO target breached: the mirror holds no image recent enough');
    } else if (met === true && this.breachSinceMs !== null) {
      this.endBreach('met again', exposureSeconds!);
    }
    return {
      ...judged,
      breachSeconds: this.breachSinceMs === null ? null : (now - this.breachSinceMs) / 1000,
      breaches: this.breaches,
    };
  }

  private endBreach(why: string, exposureSeconds?: number): void {
    const lengthMs = this.now() - this.breachSinceMs!;
    this.breachSinceMs = null;
    this.log.info({ rpoSeconds: this.targetMs === null ? null : this.targetMs / 1000, breachSeconds: lengthMs / 1000, ...(exposureSeconds !== undefined ? { exposureSeconds } : {}), why }, 'RPO breach ended');
  }
}
