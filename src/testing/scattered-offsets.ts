// Scattered 4 KiB-aligned offsets on a disk, the same every run (a seeded linear congruential
// generator): the "1,000 scattered 4 KiB writes" of the failback measurements, shared by the
// test that checks them (test/replication/reconnect.test.ts) and the bench row that reports
// them (bench/dr-rows.ts), so both write exactly the same blocks.

/** `count` distinct 4 KiB-aligned offsets below `size` (a multiple of 4 KiB), from `seed`. */
export function scatteredOffsets(count: number, size: number, seed: number): number[] {
  const blocks = Math.floor(size / 4096);
  if (!Number.isSafeInteger(count) || count < 0 || count > blocks) throw new RangeError(`${count} distinct 4 KiB blocks do not fit in ${size} bytes`);
  const out = new Set<number>();
  let x = seed >>> 0;
  while (out.size < count) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out.add((x % blocks) * 4096);
  }
  return [...out];
}
