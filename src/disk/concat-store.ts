// One address space over several devices: the primary (or a local mirror's target) of a
// consistency group. Member k's device is mapped at [base_k, base_k + size_k); bases never
// move while the group exists, so a record staged for a member always means the same bytes
// of the same device. Between members lie gaps (removed members, alignment): they read as
// zeroes and report as holes. Every operation is split at member boundaries.
//
// Invariants (asserted where data is written):
//   C1  data is written only inside a member; a ZERO or TRIM over a gap is a no-op (nothing
//       there to zero), a data write into a gap is a bug upstream (the members' windows
//       bound every client request to its member).
//   C2  members never overlap, and each lies inside the address space.
//   C3  writeBatch keeps the caller's order across members, not only within each: the
//       pieces go in one thread-pool job over all the members' descriptors (BlockDevice.
//       writeBatchAcross), or, on stores that are no BlockDevice, one member run after
//       another. A kill in the middle leaves the members at one point of the group's order
//       (a prefix of the batch), never one member ahead of another.
import assert from 'node:assert/strict';
import { BlockDevice, ExtentFlag, type Extent, type DeviceKind } from './block-device.js';
import { writeInOrder, writeSoon, type DiskStore } from './store.js';

export interface ConcatMember {
  /** The member's name (a disk), for messages. */
  name: string;
  base: number;
  /** Bytes of the member mapped (its disk's size; its device may be larger). */
  size: number;
  store: DiskStore;
}

/** A piece of a request that falls on one member (store null: a gap). */
interface Piece {
  member: ConcatMember | null;
  /** Offset within the member's device (or within the address space for a gap). */
  at: number;
  /** Offset within the request. */
  rel: number;
  length: number;
}

export class ConcatStore implements DiskStore {
  readonly path: string;
  readonly size: number;
  readonly kind: DeviceKind;
  /** Any member's device read-only (fixed: a ConcatStore's members never change; read on every request). */
  readonly readOnly: boolean;
  private readonly members: ConcatMember[];

  /** `members` in any order; they are sorted by base and checked (C2). */
  constructor(label: string, size: number, members: ConcatMember[]) {
    this.path = label;
    this.size = size;
    this.members = [...members].sort((a, b) => a.base - b.base);
    for (let i = 0; i < this.members.length; i++) {
      const m = this.members[i]!;
      assert.ok(m.base >= 0 && m.size > 0 && m.base + m.size <= size, `C2: member ${m.name} lies inside the address space`);
      assert.ok(m.store.size >= m.size, `C2: member ${m.name}'s device holds its ${m.size} bytes`);
      if (i > 0) assert.ok(this.members[i - 1]!.base + this.members[i - 1]!.size <= m.base, `C2: members ${this.members[i - 1]!.name} and ${m.name} do not overlap`);
    }
    this.kind = this.members.every((m) => m.store.kind === 'file') ? 'file' : 'block';
    this.readOnly = this.members.some((m) => m.store.readOnly);
  }

  /** The members, by base (for status and for a swap of roles). */
  get layout(): readonly ConcatMember[] {
    return this.members;
  }

  /** The member holding byte `offset`, or null (a gap). */
  private memberAt(offset: number): ConcatMember | null {
    let lo = 0;
    let hi = this.members.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const m = this.members[mid]!;
      if (m.base + m.size <= offset) lo = mid + 1;
      else hi = mid;
    }
    const m = this.members[lo];
    return m && m.base <= offset ? m : null;
  }

  /** Splits [offset, offset+length) at member boundaries, gaps included, in order. */
  private pieces(offset: number, length: number): Piece[] {
    if (!(offset >= 0 && length >= 0 && offset + length <= this.size)) assert.fail(`range ${offset}+${length} inside the group's ${this.size} bytes`); // message built on failure only
    const out: Piece[] = [];
    const end = offset + length;
    let at = offset;
    // First member that ends after `at` (binary search: up to 128 members).
    let lo = 0;
    let hi = this.members.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const m = this.members[mid]!;
      if (m.base + m.size <= at) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; at < end; i++) {
      const m = this.members[i];
      if (!m || m.base >= end) {
        out.push({ member: null, at, rel: at - offset, length: end - at });
        break;
      }
      if (m.base > at) {
        out.push({ member: null, at, rel: at - offset, length: m.base - at });
        at = m.base;
      }
      const n = Math.min(end, m.base + m.size) - at;
      out.push({ member: m, at: at - m.base, rel: at - offset, length: n });
      at += n;
    }
    return out;
  }

  read(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    const ps = this.pieces(offset, length);
    if (ps.length === 1 && ps[0]!.member) return ps[0]!.member.store.read(buf, bufOffset, length, ps[0]!.at);
    const ops: Promise<void>[] = [];
    for (const p of ps) {
      if (p.member) ops.push(p.member.store.read(buf, bufOffset + p.rel, p.length, p.at));
      else buf.fill(0, bufOffset + p.rel, bufOffset + p.rel + p.length);
    }
    return Promise.all(ops).then(() => undefined);
  }

  private writeWith(fn: (s: DiskStore, buf: Buffer, bufOffset: number, length: number, at: number) => Promise<void>, buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    const ps = this.pieces(offset, length);
    for (const p of ps) if (p.member === null) assert.fail(`C1: data written at ${offset}+${length} falls on no member of ${this.path}`);
    if (ps.length === 1) return fn(ps[0]!.member!.store, buf, bufOffset, length, ps[0]!.at);
    return Promise.all(ps.map((p) => fn(p.member!.store, buf, bufOffset + p.rel, p.length, p.at))).then(() => undefined);
  }

  write(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    return this.writeWith((s, b, bo, n, at) => s.write(b, bo, n, at), buf, bufOffset, length, offset);
  }

  writeSoon(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    return this.writeWith((s, b, bo, n, at) => writeSoon(s, b, bo, n, at), buf, bufOffset, length, offset);
  }

  /** Every piece in the caller's order, across members too (C3). */
  async writeBatch(buffers: Buffer[], offsets: number[]): Promise<void> {
    const members: ConcatMember[] = [];
    const bufs: Buffer[] = [];
    const ats: number[] = [];
    for (let i = 0; i < buffers.length; i++) {
      const b = buffers[i]!;
      // The common case, a record inside one member (the members' windows bound every request): no piece list.
      const m = this.memberAt(offsets[i]!);
      if (m !== null && offsets[i]! + b.length <= m.base + m.size) {
        members.push(m);
        bufs.push(b);
        ats.push(offsets[i]! - m.base);
        continue;
      }
      for (const p of this.pieces(offsets[i]!, b.length)) {
        if (p.member === null) assert.fail(`C1: data written at ${offsets[i]}+${b.length} falls on no member of ${this.path}`);
        members.push(p.member);
        bufs.push(p.rel === 0 && p.length === b.length ? b : b.subarray(p.rel, p.rel + p.length));
        ats.push(p.at);
      }
    }
    if (members.every((m) => m.store instanceof BlockDevice)) {
      return BlockDevice.writeBatchAcross(members.map((m) => m.store as BlockDevice), bufs, ats);
    }
    // One member's run after another, each in order: the same prefix property, more jobs.
    for (let i = 0; i < bufs.length; ) {
      let j = i + 1;
      while (j < bufs.length && members[j] === members[i]) j++;
      await writeInOrder(members[i]!.store, bufs.slice(i, j), ats.slice(i, j));
      i = j;
    }
  }

  async trim(offset: number, length: number): Promise<void> {
    await Promise.all(this.pieces(offset, length).map((p) => (p.member ? p.member.store.trim(p.at, p.length) : undefined)));
  }

  async zero(offset: number, length: number, mayDeallocate: boolean, fastOnly: boolean): Promise<void> {
    await Promise.all(this.pieces(offset, length).map((p) => (p.member ? p.member.store.zero(p.at, p.length, mayDeallocate, fastOnly) : undefined)));
  }

  extents(offset: number, length: number, extentsMax: number): Extent[] {
    const out: Extent[] = [];
    const push = (e: Extent): void => {
      const last = out[out.length - 1];
      if (last && last.flags === e.flags && last.offset + last.length === e.offset) last.length += e.length;
      else out.push(e);
    };
    for (const p of this.pieces(offset, length)) {
      if (out.length >= extentsMax) break;
      if (!p.member) {
        push({ offset: offset + p.rel, length: p.length, flags: ExtentFlag.HOLE | ExtentFlag.ZERO });
        continue;
      }
      const shift = p.member.base;
      const got = p.member.store.extents(p.at, p.length, extentsMax - out.length);
      for (const e of got) push({ offset: e.offset + shift, length: e.length, flags: e.flags });
      // A member that stopped early (its limit): what it did not describe is left undescribed.
      const covered = got.length ? got[got.length - 1]!.offset + got[got.length - 1]!.length : p.at;
      if (covered < p.at + p.length) break;
    }
    return out.slice(0, extentsMax);
  }

  prefetch(offset: number, length: number): void {
    for (const p of this.pieces(offset, length)) if (p.member) p.member.store.prefetch(p.at, p.length);
  }

  /** Cached pages of the members' parts of the range; -1 if any member cannot tell (gaps hold none). */
  cachedPages(offset: number, length: number): number {
    let n = 0;
    for (const p of this.pieces(offset, length)) {
      if (!p.member) continue;
      const c = p.member.store.cachedPages?.(p.at, p.length) ?? -1;
      if (c < 0) return -1;
      n += c;
    }
    return n;
  }

  dropCache(offset: number, length: number): void {
    for (const p of this.pieces(offset, length)) if (p.member) p.member.store.dropCache?.(p.at, p.length);
  }

  async sync(): Promise<void> {
    await Promise.all(this.members.map((m) => m.store.sync()));
  }

  stillAtPath(): boolean {
    return this.members.every((m) => m.store.stillAtPath());
  }

  async close(): Promise<void> {
    await Promise.all(this.members.map((m) => m.store.close()));
  }
}
