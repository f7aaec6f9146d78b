// nbdsh (libnbd's Python shell) against ferryd: every command and flag of the
// protocol one by one (FUA, flush, trim, write-zeroes with NO_HOLE / FAST_ZERO, block
// status with REQ_ONE, cache), the server's own errno for bad requests (libnbd's
// client-side checks are turned off with set_strict_mode(0) so the server decides),
// and hundreds of asynchronous requests in flight at once.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { Ferryd } from '../harness.js';
import { Cleanup, lastJson, nbdsh, py, T } from './clients.js';

const MiB = 1024 * 1024;

describe('nbdsh', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let diskPath: string;

  before(async () => {
    d = await cleanup.ferryd();
    diskPath = (await d.createDisk('sh', 256 * MiB)).path;
    const ro = await d.api('POST', '/v1/disks', { name: 'sh-ro', size: '4M', readOnly: true });
    assert.equal(ro.status, 201, JSON.stringify(ro.body));
  }, T);
  after(() => cleanup.run(), T);

  /** Python prelude: `h` connected to `disk` with base:allocation, and helpers. */
  function prelude(disk = 'sh'): string {
    return `
import json, os
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(${py(d.uri(disk))})
def extents(count, offset, flags=0):
    out = []
    def cb(meta, off, ents, err):
        assert meta == nbd.CONTEXT_BASE_ALLOCATION, meta
        out.extend([ents[i], ents[i + 1]] for i in range(0, len(ents), 2))
    h.block_status(count, offset, cb, flags)
    return out
def status_at(offset):
    return extents(1, offset)[0][1]
def allocated():
    return os.stat(${py(diskPath)}).st_blocks * 512
def errno_of(fn):
    try:
        fn()
    except nbd.Error as e:
        return e.errno
    return None
`;
  }

  async function runPy<T = any>(body: string, disk?: string): Promise<T> {
    return lastJson<T>(await nbdsh(prelude(disk) + body));
  }

  it('negotiates structured replies, base:allocation and the advertised flags', T, async () => {
    const r = await runPy(`
print(json.dumps({"size": h.get_size(), "structured": h.get_structured_replies_negotiated(),
  "meta": h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "fua": h.can_fua(), "flush": h.can_flush(),
  "trim": h.can_trim(), "zero": h.can_zero(), "fast_zero": h.can_fast_zero(), "cache": h.can_cache(),
  "df": h.can_df(), "multi": h.can_multi_conn(), "ro": h.is_read_only(),
  "bs": [h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_PREFERRED), h.get_block_size(nbd.SIZE_MAXIMUM)]}))
`);
    assert.deepEqual(r, { size: 256 * MiB, structured: true, meta: true, fua: true, flush: true, trim: true, zero: true, fast_zero: true, cache: true, df: true, multi: true, ro: false, bs: [1, 4096, 33554432] });
  });

  it('pwrite with FUA, flush, pread (and a structured read with DF) return the data', T, async () => {
    const r = await runPy(`
data = bytes(range(256)) * 64
h.pwrite(data, 1 << 20, nbd.CMD_FLAG_FUA)
h.pwrite(b"abc", (1 << 20) + 5)
h.flush()
back = h.pread(len(data), 1 << 20)
chunks = []
def chunk(sub, off, status, err):
    chunks.append([bytes(sub) == back[off - (1 << 20):off - (1 << 20) + len(sub)], status == nbd.READ_DATA])
h.pread_structured(len(data), 1 << 20, chunk, nbd.CMD_FLAG_DF)
expect = bytearray(data); expect[5:8] = b"abc"
print(json.dumps({"same": back == bytes(expect), "df_chunks": chunks}))
`);
    // DF (don't fragment): the whole read comes as one data chunk.
    assert.deepEqual(r, { same: true, df_chunks: [[true, true]] });
  });

  it('trim then pread gives zeroes, and the range becomes a hole', T, async () => {
    const r = await runPy(`
h.pwrite(b"\\x5a" * (1 << 20), 8 << 20)
before = status_at(8 << 20)
h.trim(1 << 20, 8 << 20, nbd.CMD_FLAG_FUA)
print(json.dumps({"zeros": h.pread(1 << 20, 8 << 20) == bytes(1 << 20), "before": before, "after": status_at(8 << 20)}))
`);
    assert.deepEqual(r, { zeros: true, before: 0, after: 3 });
  });

  it('zero without NO_HOLE punches a hole; with NO_HOLE it keeps the blocks allocated', T, async () => {
    const r = await runPy(`
MB = 1 << 20
h.pwrite(b"\\x11" * (4 * MB), 16 * MB)
h.flush()
data = status_at(16 * MB)
a0 = allocated()
h.zero(2 * MB, 16 * MB, nbd.CMD_FLAG_NO_HOLE)
a1 = allocated()
noh = extents(2 * MB, 16 * MB)
h.zero(2 * MB, 18 * MB)
a2 = allocated()
hole = extents(2 * MB, 18 * MB)
print(json.dumps({"data": data, "nohole_zero_bit": all(f & 2 for _, f in noh), "nohole_kept": a1 == a0,
  "hole": hole, "hole_freed": a0 - a2 >= 2 * MB,
  "zeros": h.pread(4 * MB, 16 * MB) == bytes(4 * MB)}))
`);
    assert.equal(r.data, 0, 'written range is data');
    assert.equal(r.nohole_zero_bit, true, 'NO_HOLE range reads as zero in block status');
    assert.equal(r.nohole_kept, true, 'NO_HOLE must not deallocate');
    assert.deepEqual(r.hole, [[2 * MiB, 3]], 'zero without NO_HOLE leaves a hole');
    assert.equal(r.hole_freed, true);
    assert.equal(r.zeros, true);
  });

  it('FAST_ZERO succeeds on a file-backed disk and reads back zeroes (unaligned too)', T, async () => {
    const r = await runPy(`
h.pwrite(b"\\x22" * 65536, 24 << 20)
h.zero(65536, 24 << 20, nbd.CMD_FLAG_FAST_ZERO)
h.pwrite(b"\\x33" * 8192, 25 << 20)
h.zero(1000, (25 << 20) + 3, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_FUA)
b = h.pread(8192, 25 << 20)
print(json.dumps({"z": h.pread(65536, 24 << 20) == bytes(65536),
  "edges": b[:3] == b"\\x33" * 3 and b[3:1003] == bytes(1000) and b[1003:] == b"\\x33" * (8192 - 1003)}))
`);
    assert.deepEqual(r, { z: true, edges: true });
  });

  it('block_status with REQ_ONE returns one extent; without it, the whole map', T, async () => {
    const r = await runPy(`
B = 32 << 20
for i in range(0, 8, 2):
    h.pwrite(b"\\x44" * 65536, B + i * 65536)
full = extents(8 * 65536, B)
one = extents(8 * 65536, B, nbd.CMD_FLAG_REQ_ONE)
one_hole = extents(8 * 65536, B + 65536, nbd.CMD_FLAG_REQ_ONE)
print(json.dumps({"full": full, "one": one, "one_hole": one_hole}))
`);
    assert.deepEqual(r.full.map((e: number[]) => e[1]), [0, 3, 0, 3, 0, 3, 0, 3]);
    assert.equal(r.full.reduce((s: number, e: number[]) => s + e[0], 0), 8 * 65536);
    assert.deepEqual(r.one, [[65536, 0]]);
    assert.deepEqual(r.one_hole, [[65536, 3]]);
  });

  it('cache (prefetch) is accepted', T, async () => {
    const r = await runPy(`
h.cache(4 << 20, 0)
h.cache(1, h.get_size() - 1)
print(json.dumps({"ok": True}))
`);
    assert.deepEqual(r, { ok: true });
  });

  it('out-of-range requests get EINVAL (read, trim, cache) or ENOSPC (write, zero) from the server, and the connection lives on', T, async () => {
    const r = await runPy(`
h.set_strict_mode(0)
S = h.get_size()
print(json.dumps({
  "pread": errno_of(lambda: h.pread(10, S - 5)),
  "pread_far": errno_of(lambda: h.pread(512, 1 << 62)),
  "pwrite": errno_of(lambda: h.pwrite(b"x" * 10, S - 5)),
  "zero": errno_of(lambda: h.zero(4096, S)),
  "trim": errno_of(lambda: h.trim(4096, S - 1)),
  "cache": errno_of(lambda: h.cache(2, S - 1)),
  "status": errno_of(lambda: extents(2, S)),
  "after": h.pread(5, S - 5) == bytes(5),
}))
`);
    assert.deepEqual(r, { pread: 'EINVAL', pread_far: 'EINVAL', pwrite: 'ENOSPC', zero: 'ENOSPC', trim: 'EINVAL', cache: 'EINVAL', status: 'EINVAL', after: true });
  });

  it('requests above the 32 MiB maximum get EINVAL and the connection stays usable', T, async () => {
    // Regression: the refusal of an oversized WRITE used to be sent before its payload was
    // read, which libnbd treats as a server bug ("no matching cookie") and drops the link.
    const r = await runPy(`
h.set_strict_mode(0)
M = 32 << 20
print(json.dumps({
  "read_max": len(h.pread(M, 0)) == M,
  "read_over": errno_of(lambda: h.pread(M + 1, 0)),
  "write_over": errno_of(lambda: h.pwrite(b"o" * (M + 1), 0)),
  "write_64m": errno_of(lambda: h.pwrite(b"o" * (2 * M), 0)),
  "untouched": h.pread(4096, 0) == bytes(4096),
  "write_max": errno_of(lambda: h.pwrite(b"m" * M, 128 << 20)),
  "back": h.pread(16, (128 << 20) + M - 16) == b"m" * 16,
}))
`);
    assert.deepEqual(r, { read_max: true, read_over: 'EINVAL', write_over: 'EINVAL', write_64m: 'EINVAL', untouched: true, write_max: null, back: true });
  });

  it('zero-length read, write, zero and trim succeed; zero-length block status is EINVAL', T, async () => {
    const r = await runPy(`
h.set_strict_mode(0)
print(json.dumps({"read": len(h.pread(0, 4096)), "write": errno_of(lambda: h.pwrite(b"", 4096)),
  "zero": errno_of(lambda: h.zero(0, 4096)), "trim": errno_of(lambda: h.trim(0, 4096)),
  "status": errno_of(lambda: extents(0, 4096)), "at_end": errno_of(lambda: h.pwrite(b"", h.get_size()))}))
`);
    assert.deepEqual(r, { read: 0, write: null, zero: null, trim: null, status: 'EINVAL', at_end: null });
  });

  it('writes to a read-only disk get EPERM from the server', T, async () => {
    const r = await runPy(
      `
h.set_strict_mode(0)
print(json.dumps({"ro": h.is_read_only(), "pwrite": errno_of(lambda: h.pwrite(b"x", 0)),
  "trim": errno_of(lambda: h.trim(4096, 0)), "zero": errno_of(lambda: h.zero(4096, 0)),
  "read": h.pread(4096, 0) == bytes(4096), "flush": errno_of(lambda: h.flush())}))
`,
      'sh-ro',
    );
    assert.deepEqual(r, { ro: true, pwrite: 'EPERM', trim: 'EPERM', zero: 'EPERM', read: true, flush: null });
  });

  it('256 concurrent aio_pwrite then 256 aio_pread, 128 MiB in flight, all correct', T, async () => {
    const r = await runPy(`
N, L, BASE = 256, 512 * 1024, 64 << 20
import random
bufs = [nbd.Buffer.from_bytearray(bytearray(random.randbytes(L))) for _ in range(N)]
wc = [h.aio_pwrite(bufs[i], BASE + i * L, flags=(nbd.CMD_FLAG_FUA if i % 16 == 0 else 0)) for i in range(N)]
peak_w = h.aio_in_flight()
while h.aio_in_flight() > 0:
    h.poll(-1)
for c in wc:
    assert h.aio_command_completed(c)
h.flush()
rbufs = [nbd.Buffer(L) for _ in range(N)]
rc = [h.aio_pread(rbufs[i], BASE + i * L) for i in range(N)]
peak_r = h.aio_in_flight()
while h.aio_in_flight() > 0:
    h.poll(-1)
for c in rc:
    assert h.aio_command_completed(c)
bad = [i for i in range(N) if rbufs[i].to_bytearray() != bufs[i].to_bytearray()]
print(json.dumps({"peak_w": peak_w, "peak_r": peak_r, "bad": bad}))
`);
    assert.deepEqual(r.bad, []);
    assert.ok(r.peak_w > 128 && r.peak_r > 128, `requests in flight: ${r.peak_w}, ${r.peak_r}`);
  });

  it('multi-conn: a write on one connection, a flush on another, a read on a third', T, async () => {
    const r = await runPy(`
def conn():
    c = nbd.NBD(); c.connect_uri(${py(d.uri('sh'))}); return c
a, b, c = conn(), conn(), conn()
a.pwrite(b"multi-conn!" * 100, 200 << 20)
b.flush()
print(json.dumps({"seen": c.pread(1100, 200 << 20) == b"multi-conn!" * 100}))
for x in (a, b, c): x.shutdown()
`);
    assert.deepEqual(r, { seen: true });
  });
});
