// The layout the ConcatStore and WindowStore unit tests share (concat-store.test.ts,
// window-store.test.ts), on real files in a temp dir: members at fixed bases with gaps, in KiB:
// m0 [0, 1024), m1 [1024, 1792) adjacent to it, a gap [1792, 3072), m2 [3072, 3584), a gap
// [3584, 4096); m0's file is larger than what is mapped. Also the byte helpers they check with.
import { after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BlockDevice, ExtentFlag, type Extent } from '../../src/disk/block-device.js';
import { ConcatStore, type ConcatMember } from '../../src/disk/concat-store.js';
import type { DiskStore } from '../../src/disk/store.js';
import type { Rng } from '../../src/testing/faulty-store.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const SIZE = 4 * MiB;
export const HZ = ExtentFlag.HOLE | ExtentFlag.ZERO;
export const LAYOUT = [
  { name: 'm0', base: 0, size: MiB, fileBytes: MiB + 64 * KiB },
  { name: 'm1', base: MiB, size: 768 * KiB, fileBytes: 768 * KiB },
  { name: 'm2', base: 3 * MiB, size: 512 * KiB, fileBytes: 512 * KiB },
] as const;
/** Ranges of the address space that fall on a member (m0 and m1 are adjacent: one range). */
export const COVERED = [
  { from: 0, to: 1792 * KiB },
  { from: 3 * MiB, to: 3584 * KiB },
];
export const GAP1 = { from: 1792 * KiB, to: 3 * MiB };

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-concat-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

let setups = 0;

/** A new file name in the fixture's temp dir (removed after the file's tests). */
export function tmpFile(name: string): string {
  return path.join(dir, `${++setups}-${name}`);
}

export interface Setup {
  concat: ConcatStore;
  /** The member files (on BlockDevices) or null (other stores). */
  files: Array<string | null>;
  stores: DiskStore[];
  close(): Promise<void>;
}

/** Sparse member files, opened as BlockDevices. `fill`: every mapped byte of member k is 0xa0 + k. */
export function onDevices(fill = false): Setup {
  const files = LAYOUT.map((m) => {
    const f = tmpFile(`${m.name}.img`);
    fs.writeFileSync(f, '');
    fs.truncateSync(f, m.fileBytes);
    return f;
  });
  if (fill) LAYOUT.forEach((m, k) => fs.writeFileSync(files[k]!, Buffer.alloc(m.fileBytes, 0xa0 + k)));
  const stores = files.map((f) => BlockDevice.open(f));
  return make(stores, files);
}

/** Members on in-memory stores (no BlockDevice: the fallback path of writeBatch). */
export function onStores(stores: DiskStore[]): Setup {
  return make(stores, stores.map(() => null));
}

function make(stores: DiskStore[], files: Array<string | null>): Setup {
  const members: ConcatMember[] = LAYOUT.map((m, k) => ({ name: m.name, base: m.base, size: m.size, store: stores[k]! }));
  // In reverse: the constructor sorts by base.
  const concat = new ConcatStore('group:g', SIZE, [...members].reverse());
  return { concat, files, stores, close: () => concat.close() };
}

/** Bytes of a member file. */
export function fileBytes(file: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const b = Buffer.alloc(length);
    fs.readSync(fd, b, 0, length, offset);
    return b;
  } finally {
    fs.closeSync(fd);
  }
}

/** Where an address of the group lies: member index and offset in its device, or null (a gap). */
export function locate(at: number): { k: number; off: number } | null {
  const k = LAYOUT.findIndex((m) => at >= m.base && at < m.base + m.size);
  return k < 0 ? null : { k, off: at - LAYOUT[k]!.base };
}

/** A buffer whose every 4-byte word says where it goes (so a misplaced piece shows). */
export function tagged(offset: number, length: number, salt: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i + 4 <= length; i += 4) b.writeUInt32LE(((offset + i) ^ (salt * 0x9e3779b1)) >>> 0, i);
  return b;
}

/** A random range inside one of the covered ranges (possibly crossing m0/m1), 512-aligned. */
export function randomCoveredRange(rng: Rng, maxBytes: number): { offset: number; length: number } {
  const r = COVERED[rng() < 0.75 ? 0 : 1]!;
  const length = 512 * (1 + Math.floor(rng() * (maxBytes / 512)));
  const slots = (r.to - r.from - length) / 512;
  return { offset: r.from + 512 * Math.floor(rng() * (slots + 1)), length };
}

/** Checks extents tile [offset, offset+covered) in order, merged (no two neighbours alike). */
export function assertTiles(ext: Extent[], offset: number, what: string): number {
  let at = offset;
  ext.forEach((e, i) => {
    assert.equal(e.offset, at, `${what}: extent ${i} starts where the previous ended: ${JSON.stringify(ext)}`);
    assert.ok(e.length > 0, `${what}: empty extent ${JSON.stringify(ext)}`);
    if (i > 0) assert.notEqual(e.flags, ext[i - 1]!.flags, `${what}: neighbours with the same flags are merged: ${JSON.stringify(ext)}`);
    at += e.length;
  });
  return at;
}

