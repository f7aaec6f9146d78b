// A gate in front of a volume's I/O: requests pass freely until the gate closes; then
// new requests wait and close() resolves once those already inside have finished. Used
// to switch a disk's data path (attach or detach a staging area, swap roles) under
// open NBD connections without failing a request. Passing an open gate costs no await.

export class IoGate {
  private active = 0;
  private closed = false;
  private reopened: Promise<void> | null = null;
  private reopen: (() => void) | null = null;
  private idle: Array<() => void> = [];

  /** Returns null when the caller may proceed now, else a promise to await first (then call enter() again). */
  enter(): Promise<void> | null {
    if (!this.closed) {
      this.active++;
      return null;
    }
    return this.reopened;
  }

  /** True when enter() would let the caller through now. */
  get isOpen(): boolean {
    return !this.closed;
  }

  leave(): void {
    this.active--;
    if (this.active === 0) for (const w of this.idle.splice(0)) w();
  }

  async close(): Promise<void> {
    if (this.closed) throw new Error('the I/O gate is already closed');
    this.closed = true;
    this.reopened = new Promise((r) => (this.reopen = r));
    if (this.active > 0) await new Promise<void>((r) => this.idle.push(r));
  }

  open(): void {
    this.closed = false;
    this.reopen?.();
    this.reopen = null;
    this.reopened = null;
  }
}
