// Online verification of a mirror: the disk as clients see it compared with the mirror,
// region by region, while clients keep writing. A region written to while it is being
// compared is compared again (up to 5 times), then reported as skipped; a region that
// differs once the mirror holds every write made before the comparison began is a real
// difference. The write counters per region (staged-path.ts) tell the two apart. Its
// progress (VerifyProgress) shows in mirror status while it runs.
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from '../errors.js';
import type { DiskStore } from '../disk/store.js';
import type { Journal } from '../journal/journal.js';
import type { StagedPath } from '../volume/staged-path.js';
import type { Volume } from '../volume/volume.js';
import type { JournalConsumer } from '../volume/consumer.js';

export interface VerifyReport {
  disk: string;
  bytesCompared: number;
  regionsVerified: number;
  regionsSkipped: number;
  differences: Array<{ offset: number; length: number }>;
  seconds: number;
}

/** How far a running verify got, as mirror status shows it (the CLI draws its bar from it). */
export interface VerifyProgressStatus {
  bytes: number;
  bytesDone: number;
  progress: number;
  bytesPerSec: number;
  etaSeconds: number | null;
  startedAt: string;
}

/** The progress of one verify: updated by verifyMirror, read by status. */
export class VerifyProgress {
  bytesDone = 0;
  private readonly startedAtMs: number;
  constructor(
    readonly bytes: number,
    private readonly now: () => number = Date.now,
  ) {
    this.startedAtMs = now();
  }

  status(): VerifyProgressStatus {
    const seconds = (this.now() - this.startedAtMs) / 1000;
    const bytesPerSec = seconds > 0 ? this.bytesDone / seconds : 0;
    return {
      bytes: this.bytes,
      bytesDone: this.bytesDone,
      progress: this.bytes > 0 ? this.bytesDone / this.bytes : 1,
      bytesPerSec,
      etaSeconds: bytesPerSec > 0 ? (this.bytes - this.bytesDone) / bytesPerSec : null,
      startedAt: new Date(this.startedAtMs).toISOString(),
    };
  }
}

const verifyAttemptsMax = 5;
const compareBytes = 4096;

export async function verifyMirror(m: { disk: string; volume: Volume; staged: StagedPath; journal: Journal; stream: JournalConsumer; target: DiskStore; progress: VerifyProgress }): Promise<VerifyReport> {
  const started = Date.now();
  const size = m.volume.size;
  const region = m.staged.genRegionBytes;
  const report: VerifyReport = { disk: m.disk, bytesCompared: 0, regionsVerified: 0, regionsSkipped: 0, differences: [], seconds: 0 };
  const ours = Buffer.allocUnsafe(region);
  const theirs = Buffer.allocUnsafe(region);
  for (let r = 0; r * region < size; r++) {
    const offset = r * region;
    const length = Math.min(region, size - offset);
    let verified = false;
    for (let attempt = 0; attempt < verifyAttemptsMax && !verified; attempt++) {
      const gen = m.staged.writeGen[r];
      const seq = m.journal.writtenSeq;
      await m.volume.readInternal(ours, 0, length, offset);
      while (m.stream.position.nextSeq <= seq) {
        if (m.stream.lastError) throw new FerryError('IO_ERROR', `the mirror cannot keep up: ${m.stream.lastError}`);
        await Promise.race([m.stream.progress(), sleep(20)]);
      }
      await m.target.read(theirs, 0, length, offset);
      if (m.staged.writeGen[r] !== gen) continue;
      verified = true;
      for (let at = 0; at < length; at += compareBytes) {
        const n = Math.min(compareBytes, length - at);
        if (ours.compare(theirs, at, at + n, at, at + n) !== 0) {
          const last = report.differences[report.differences.length - 1];
          if (last && last.offset + last.length === offset + at) last.length += n;
          else report.differences.push({ offset: offset + at, length: n });
        }
      }
      report.bytesCompared += length;
    }
    if (verified) report.regionsVerified++;
    else report.regionsSkipped++;
    m.progress.bytesDone = offset + length;
  }
  report.seconds = (Date.now() - started) / 1000;
  return report;
}
