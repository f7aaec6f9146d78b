// Byte sizes as administrators write them: 512, 4096, 10G, 1.5T, 64KiB. One rule: suffixes
// are binary, K = KiB = 1024 (as in qemu-img, lvcreate, truncate), M/MiB, G/GiB, T/TiB,
// P/PiB, and B for bytes. `10GB` is refused, never read as GiB: people mean 10^9 by it as
// often as 2^30. A fraction is taken only when the result is a whole number of bytes
// (1.5T yes, 1.3K no).
import { FerryError } from '../errors.js';

const units: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 };

/** Largest size Ferry accepts: a byte offset must stay an exact JavaScript integer. */
export const sizeBytesMax = 2 ** 52;

export function parseSize(input: string | number): number {
  if (typeof input === 'number') {
    if (!Number.isSafeInteger(input) || input < 0) throw new FerryError('INVALID_SIZE', `size ${input} is not a whole number of bytes`);
    return input;
  }
  const decimal = /^\s*\d+(?:\.\d+)?\s*([KMGTP])B\s*$/i.exec(input);
  if (decimal) {
    const p = decimal[1]!.toUpperCase();
    throw new FerryError('INVALID_SIZE', `size '${input}' is ambiguous: Ferry's suffixes are binary, so write ${input.trim().slice(0, -2).trim()}${p} or ${input.trim().slice(0, -2).trim()}${p}iB (1 ${p}iB = 2^${Math.log2(units[p]!)} bytes), or the number of bytes for a decimal size`);
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*(?:([KMGTP])(?:iB)?|B)?\s*$/i.exec(input);
  if (!m) throw new FerryError('INVALID_SIZE', `cannot read size '${input}': use a number of bytes or a binary suffix K, M, G, T or P (also KiB ... PiB), e.g. 10G`);
  const value = Number(m[1]) * units[(m[2] ?? '').toUpperCase()]!;
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
