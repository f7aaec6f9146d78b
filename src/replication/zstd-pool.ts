// zstd compression of replication payloads, off the event loop: a small pool of worker
// threads (zstd-napi, level 1) shared by every link of the daemon. Jobs are queued (a
// bounded queue: callers already bound what they have in flight) and answered in order per
// worker. A payload that does not shrink is sent as it is (the caller checks the size).
// worthCompressing samples a large payload on the calling thread first (tens of
// microseconds), so that data zstd cannot shrink never makes the round trip to a worker.
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import * as zstd from 'zstd-napi';
import { FerryError } from '../errors.js';

const workerSource = `
const { parentPort } = require('node:worker_threads');
const zstd = require('zstd-napi');
parentPort.on('message', ({ id, op, data, maxBytes }) => {
  try {
    const input = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const out = op === 'compress' ? zstd.compress(input, { compressionLevel: 1 }) : zstd.decompress(input);
    if (op === 'decompress' && out.length > maxBytes) throw new Error('decompressed payload exceeds ' + maxBytes + ' bytes');
    const copy = new Uint8Array(out.length);
    copy.set(out);
    parentPort.postMessage({ id, data: copy }, [copy.buffer]);
  } catch (err) {
    parentPort.postMessage({ id, error: String(err && err.message || err) });
  }
});
`;

const jobsQueuedMax = 256;

interface Job {
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
}

export class ZstdPool {
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<number, Job>();
  private nextId = 1;
  private turn = 0;

  constructor(size = Math.max(1, Math.min(2, os.availableParallelism() - 1))) {
    for (let i = 0; i < size; i++) {
      const w = new Worker(workerSource, { eval: true });
      w.unref();
      w.on('message', (m: { id: number; data?: Uint8Array; error?: string }) => {
        const job = this.pending.get(m.id);
        if (!job) return;
        this.pending.delete(m.id);
        if (m.error !== undefined) job.reject(new FerryError('REPL_PROTOCOL', `zstd: ${m.error}`));
        else job.resolve(Buffer.from(m.data!.buffer, m.data!.byteOffset, m.data!.byteLength));
      });
      w.on('error', (err) => {
        for (const j of this.pending.values()) j.reject(err);
        this.pending.clear();
      });
      this.workers.push(w);
    }
  }

  private run(op: 'compress' | 'decompress', input: Buffer, maxBytes: number): Promise<Buffer> {
    if (this.pending.size >= jobsQueuedMax) return Promise.reject(new FerryError('INTERNAL', 'too many zstd jobs queued'));
    const id = this.nextId++;
    const w = this.workers[this.turn++ % this.workers.length]!;
    return new Promise<Buffer>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      // An exact copy is transferred: cloning a view would copy its whole backing store (a
      // record's payload is a view of an 8 MiB batch), and the caller's buffer stays untouched.
      const copy = new Uint8Array(input.length);
      copy.set(input);
      w.postMessage({ id, op, data: copy, maxBytes }, [copy.buffer]);
    });
  }

  compress(input: Buffer): Promise<Buffer> {
    return this.run('compress', input, 0);
  }

  /** Refuses output larger than maxBytes (a peer cannot make us allocate without limit). */
  decompress(input: Buffer, maxBytes: number): Promise<Buffer> {
    return this.run('decompress', input, maxBytes);
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.workers.length = 0;
  }
}

let shared: ZstdPool | null = null;

/** The daemon's pool, created on first use. */
export function zstdPool(): ZstdPool {
  shared ??= new ZstdPool();
  return shared;
}

/** Payloads at least this large are sampled before they are compressed; smaller ones always are. */
export const PROBE_PAYLOAD_BYTES_MIN = 128 * 1024;
const probeSlices = 8;
const probeSliceBytes = 4096;
/** The sample must shrink to this fraction or less for the payload to be worth compressing. */
const probeRatioMax = 0.97;
const probe = { buf: Buffer.allocUnsafeSlow(probeSlices * probeSliceBytes), compressor: null as zstd.Compressor | null };

/**
 * Whether zstd (level 1) is likely to shrink the payload: for a large one, compresses
 * probeSlices slices spread over it (32 KiB in all) on this thread and looks at the ratio.
 */
export function worthCompressing(payload: Buffer): boolean {
  if (payload.length < PROBE_PAYLOAD_BYTES_MIN) return true;
  const step = Math.floor((payload.length - probeSliceBytes) / (probeSlices - 1));
  for (let i = 0; i < probeSlices; i++) payload.copy(probe.buf, i * probeSliceBytes, i * step, i * step + probeSliceBytes);
  if (!probe.compressor) {
    probe.compressor = new zstd.Compressor();
    probe.compressor.setParameters({ compressionLevel: 1 });
  }
  return probe.compressor.compress(probe.buf).length <= probe.buf.length * probeRatioMax;
}
