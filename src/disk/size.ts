// Byte sizes as administrators write them: 512, 4096, 10G, 1.5T, 64KiB. Suffixes are
// binary (K = 1024) as in every block-storage tool (qemu-img, lvcreate, truncate).
import { FerryError } from '../errors.js';

const units: Record<string, number> = { '': 1, B: 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 };

/** Largest size Ferry accepts: a byte offset must stay an exact JavaScript integer. */
export const sizeBytesMax = 2 ** 52;

export function parseSize(input: string | number): number {
  if (typeof input === 'number') {
    if (!Number.isSafeInteger(input) || input < 0) throw new FerryError('INVALID_SIZE', `size ${input} is not a whole number of bytes`);
    return input;
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$/i.exec(input);
  if (!m) throw new FerryError('INVALID_SIZE', `cannot read size '${input}': use a number of bytes or a K, M, G, T or P suffix (e.g. 10G)`);
  const value = Number(m[1]) * units[m[2]!.toUpperCase()]!;
  if (!Number.isSafeInteger(value)) throw new FerryError('INVALID_SIZE', `size '${input}' is not a whole number of bytes`);
  return value;
}

export function formatSize(bytes: number): string {
  for (const [suffix, unit] of [['P', 2 ** 50], ['T', 2 ** 40], ['G', 2 ** 30], ['M', 2 ** 20], ['K', 2 ** 10]] as const) {
    if (bytes >= unit) {
      const v = bytes / unit;
      return `${Number.isInteger(v) ? v : v.toFixed(1)}${suffix}iB`;
    }
  }
  return `${bytes}B`;
}
