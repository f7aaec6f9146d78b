// Payload reads in flight from the staging area (the read overlay serving a client), by
// generation: before the journal frees ring space (moves its tail) it waits for every read
// that began before, so no record is written over bytes a read may still be reading (J2).
export class ReadTracker {
  private generation = 0;
  private readonly inFlight = new Map<number, number>();
  private waiters: Array<{ upTo: number; resolve: () => void }> = [];

  /** Marks a read as started; pass the result to end(). */
  begin(): number {
    const gen = this.generation;
    this.inFlight.set(gen, (this.inFlight.get(gen) ?? 0) + 1);
    return gen;
  }

  end(gen: number): void {
    const left = this.inFlight.get(gen)! - 1;
    if (left === 0) this.inFlight.delete(gen);
    else this.inFlight.set(gen, left);
    this.waiters = this.waiters.filter((w) => {
      if (this.anyUpTo(w.upTo)) return true;
      w.resolve();
      return false;
    });
  }

  /** Resolves when every read that started before this call has finished. */
  drain(): Promise<void> {
    const upTo = this.generation++;
    if (!this.anyUpTo(upTo)) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ upTo, resolve }));
  }

  private anyUpTo(upTo: number): boolean {
    for (const g of this.inFlight.keys()) if (g <= upTo) return true;
    return false;
  }
}
