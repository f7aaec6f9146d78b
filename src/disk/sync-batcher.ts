// Group commit for durability barriers. Many callers ask for "everything I completed
// before now is durable"; one sync call serves every caller that arrived before it
// started. A caller arriving while a sync runs cannot know whether its writes were
// included, so it waits for the next one, which starts as soon as the current ends.
// At most one sync runs and at most one is queued, whatever the number of callers.

export class SyncBatcher {
  private running: Promise<void> | null = null;
  private queued: Promise<void> | null = null;

  constructor(private readonly doSync: () => Promise<void>) {}

  sync(): Promise<void> {
    if (this.queued !== null) return this.queued;
    if (this.running === null) {
      this.running = this.run();
      return this.running;
    }
    this.queued = this.running.then(
      () => this.promoteQueued(),
      () => this.promoteQueued(),
    );
    return this.queued;
  }

  private promoteQueued(): Promise<void> {
    this.queued = null;
    this.running = this.run();
    return this.running;
  }

  private async run(): Promise<void> {
    try {
      await this.doSync();
    } finally {
      this.running = null;
    }
  }
}
