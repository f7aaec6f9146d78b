// A member disk of a consistency group seen as a device: the range [base, base + size) of the
// group's volume. A member's Volume has this as its primary, so every client request of the
// member passes through the group's data path (its I/O gate, fence, staging area and mirror)
// at the member's place in the group's address space: one journal, one sequence for all
// members. Requests are bounded to the member by its Volume (the NBD layer checks ranges
// against the member's size), so nothing of another member is reachable from here.
import assert from 'node:assert/strict';
import type { Extent } from '../disk/block-device.js';
import type { DiskStore } from '../disk/store.js';
import type { Volume } from './volume.js';

export class WindowStore implements DiskStore {
  readonly kind = 'file' as const;

  constructor(
    private readonly group: Volume,
    readonly base: number,
    readonly size: number,
    readonly path: string,
  ) {
    assert.ok(base >= 0 && size > 0 && base + size <= group.size, `member window ${base}+${size} inside the group's ${group.size} bytes`);
  }

  /** The group is read-only (a replica, a read-only member is its own Volume's flag). */
  get readOnly(): boolean {
    return this.group.readOnly;
  }

  /** The group's volume (what a membership change or a swap replaces under the member). */
  get groupVolume(): Volume {
    return this.group;
  }

  private check(offset: number, length: number): void {
    // The message is built only on failure: this runs for every request of a member.
    if (!(offset >= 0 && length >= 0 && offset + length <= this.size)) assert.fail(`request ${offset}+${length} inside member of ${this.size} bytes`);
  }

  read(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    this.check(offset, length);
    return this.group.read(buf, bufOffset, length, this.base + offset);
  }

  write(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    this.check(offset, length);
    return this.group.write(buf, bufOffset, length, this.base + offset, false);
  }

  /** A client's write straight into the group's data path (see DiskStore.forwardWrite). */
  forwardWrite(data: Buffer, length: number, offset: number, fua: boolean, done: (err: unknown) => void): void {
    try {
      this.check(offset, length);
    } catch (err) {
      return done(err); // through done, never thrown: the member's volume has entered its gate
    }
    this.group.writeFrom(data, length, this.base + offset, fua, done);
  }

  /** A FUA write: one staged record made durable with it (cheaper than a write and a flush). */
  writeFua(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    this.check(offset, length);
    return this.group.write(buf, bufOffset, length, this.base + offset, true);
  }

  trim(offset: number, length: number): Promise<void> {
    this.check(offset, length);
    return this.group.trim(this.base + offset, length, false);
  }

  zero(offset: number, length: number, mayDeallocate: boolean, fastOnly: boolean): Promise<void> {
    this.check(offset, length);
    return this.group.zero(this.base + offset, length, mayDeallocate, fastOnly, false);
  }

  extents(offset: number, length: number, extentsMax: number): Extent[] {
    this.check(offset, length);
    return this.group.extents(this.base + offset, length, extentsMax).map((e) => ({ offset: e.offset - this.base, length: e.length, flags: e.flags }));
  }

  prefetch(offset: number, length: number): void {
    this.group.prefetch(this.base + offset, length);
  }

  /** A flush of the group: its journal's sync makes every member's completed writes durable. */
  sync(): Promise<void> {
    return this.group.flush();
  }

  stillAtPath(): boolean {
    return true;
  }

  /** The group's volume is not the member's to close. */
  async close(): Promise<void> {}
}
