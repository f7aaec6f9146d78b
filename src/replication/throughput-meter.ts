// The throughput a remote stream (remote-stream.ts) reports: the bytes of the frames it
// ships are counted, and the rate is taken over windows of at least a second; the last
// closed window's rate is what is reported until the next one closes.
export class ThroughputMeter {
  private bytes = 0;
  private sinceMs = Date.now();
  private perSecValue = 0;

  /** Counts `n` bytes shipped. */
  add(n: number): void {
    this.bytes += n;
    this.roll();
  }

  /** Bytes per second over the last closed window. */
  get perSec(): number {
    this.roll();
    return this.perSecValue;
  }

  private roll(): void {
    const now = Date.now();
    const dt = now - this.sinceMs;
    if (dt >= 1000) {
      this.perSecValue = (this.bytes * 1000) / dt;
      this.bytes = 0;
      this.sinceMs = now;
    }
  }
}
