// Reusable buffers for WRITE payloads. A payload is received straight into one of these
// (see inbound.ts) and handed back once its write has completed, so a steady stream of
// writes allocates nothing: a fresh buffer per payload (or per 64 KiB socket read) is
// external memory to V8, and at a gigabyte per second it set off a full garbage collection
// every few tens of milliseconds. Buffers come in power-of-two sizes; what is kept free is
// bounded (freeBytesMax, shared by every connection), the rest is left to the collector.

/** Smallest buffer handed out: smaller payloads get a buffer of this size. */
const classBytesMin = 4096;
/** Free buffers kept for reuse, all sizes and connections together. */
const freeBytesMax = 32 * 1024 * 1024;

const free = new Map<number, ArrayBuffer[]>();
let freeBytes = 0;

function classBytes(length: number): number {
  let size = classBytesMin;
  while (size < length) size *= 2;
  return size;
}

/** A buffer of exactly `length` bytes (contents unspecified), to be given back with release() when done with. */
export function acquirePayload(length: number): Buffer {
  const size = classBytes(length);
  const ab = free.get(size)?.pop();
  if (ab === undefined) return Buffer.from(new ArrayBuffer(size), 0, length);
  freeBytes -= size;
  return Buffer.from(ab, 0, length);
}

/**
 * Gives back a buffer from acquirePayload() once nothing reads or writes it any more (its
 * write has completed). Releasing is optional: a buffer never released is collected.
 */
export function releasePayload(buf: Buffer): void {
  const ab = buf.buffer as ArrayBuffer;
  const size = ab.byteLength;
  if (buf.byteOffset !== 0 || size < classBytesMin || (size & (size - 1)) !== 0) return;
  if (freeBytes + size > freeBytesMax) return;
  let list = free.get(size);
  if (list === undefined) free.set(size, (list = []));
  list.push(ab);
  freeBytes += size;
}

/** Bytes held in free buffers (for tests). */
export function freePayloadBytes(): number {
  return freeBytes;
}
