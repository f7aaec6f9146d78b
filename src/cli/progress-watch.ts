// How the CLI shows a long operation's progress while it runs (`mirror create --wait`,
// `mirror status --watch`, `mirror verify`): a bar with rate and ETA on a terminal (stderr),
// else one line every progressLineMs, a log rather than a bar. The figures are ferryd's
// (measured where the work happens), polled from the API.
import { setTimeout as sleep } from 'node:timers/promises';
import { bytes, duration } from './output.js';

/** Without a terminal, one progress line this often. */
const progressLineMs = 10_000;
/** How often the API is asked. */
const pollMs = 500;

export interface ProgressSample {
  /** 0..1 */
  progress: number;
  bytesDone: number;
  bytesPerSec: number;
  etaSeconds: number | null;
}

/** One poll: the figures to show (null: none yet), and the result once the work ended. */
export interface ProgressStep<T> {
  sample: ProgressSample | null;
  result?: T;
}

/** Polls `step` until it returns a result; `label` names the work ("sync app", "verify app"). */
export async function watchProgress<T>(label: string, step: () => Promise<ProgressStep<T>>): Promise<T> {
  const tty = process.stderr.isTTY;
  // Loaded only when a bar is drawn (a terminal): a short command does not pay for it.
  const cliProgress = tty ? (await import('cli-progress')).default : null;
  const bar = cliProgress ? new cliProgress.SingleBar({ format: `${label} [{bar}] {percentage}% | {rate}/s | eta {eta}`, hideCursor: true }, cliProgress.Presets.shades_classic) : null;
  bar?.start(100, 0, { rate: '0B', eta: '-' });
  let lineAtMs = Date.now();
  try {
    for (;;) {
      const { sample: s, result } = await step();
      if (s) {
        const pct = Math.floor(s.progress * 100);
        bar?.update(pct, { rate: bytes(s.bytesPerSec), eta: duration(s.etaSeconds) });
        if (!bar && result === undefined && Date.now() - lineAtMs >= progressLineMs) {
          lineAtMs = Date.now();
          process.stderr.write(`${label}: ${pct}% (${bytes(s.bytesDone)}), ${bytes(s.bytesPerSec)}/s, eta ${duration(s.etaSeconds)}\n`);
        }
      }
      if (result !== undefined) return result;
      await sleep(pollMs);
    }
  } finally {
    bar?.stop();
  }
}
