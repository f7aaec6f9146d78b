#!/usr/bin/python3
# Checks a disk written by workload.py after the server was killed and restarted.
#
#   check.py URI LOG FIRST_BLOCK BLOCKS STATE_IN STATE_OUT
#
# Checks blocks [FIRST_BLOCK, FIRST_BLOCK+BLOCKS). STATE_IN holds, per block, the write
# counter the block held at the previous check (0: zeroes), "-" for a fresh disk; LOG
# is the log of the one workload run since then (an empty file: nothing written). The
# whole range is read and every block must be:
#   - intact: all zeroes, or magic, block index and CRC32 right (no torn block);
#   - issued: what the previous check saw, or a write of this run that covered it;
#   - not older than the newest acknowledged write to it (every acknowledged write
#     survives, FUA and flushed or not: kill -9 keeps the page cache);
#   - a prefix of the issue order: if write K survived, every write issued before K
#     survived too (the block holds it or something issued later).
# With FERRY_CHECK_PREFIX_ONLY=1 (a mirror site's image, which lags behind the
# acknowledgements) the rule on acknowledged writes is left out; the rest holds.
# Prints a JSON summary; "errors" lists the first violations. Writes STATE_OUT.
import json
import os
import struct
import sys
import zlib
from array import array

import nbd

MAGIC = b"FERRYWL1"
BS = 4096
ZERO = bytes(BS)
CHUNK = 1024 * 1024


def main():
    uri, log_path, first, blocks, state_in, state_out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
    base = array("Q", bytes(8 * blocks))
    if state_in != "-":
        with open(state_in, "rb") as f:
            base = array("Q")
            base.frombytes(f.read())
    assert len(base) == blocks

    issued = {}  # counter -> (block, nblocks, fua)
    acked = set()
    flushes = []  # (flush id, acks covered)
    ack_order = []
    with open(log_path) as f:
        for line in f:
            p = line.split()
            if not p or not line.endswith("\n"):
                continue
            if p[0] == "I":
                issued[int(p[1])] = (int(p[2]) - first, int(p[3]), int(p[4]))  # block relative to FIRST_BLOCK
            elif p[0] == "A":
                acked.add(int(p[1]))
                ack_order.append(int(p[1]))
            elif p[0] == "F":
                flushes.append((int(p[1]), int(p[2])))

    errors = []
    # Per block: counters of this run's writes that covered it, in issue order.
    writes_to = {}
    for c in sorted(issued):
        b, n, _ = issued[c]
        for i in range(n):
            writes_to.setdefault(b + i, []).append(c)
    newest_acked = {}
    for c in acked:
        if c not in issued:
            errors.append("log: write %d acknowledged but never issued" % c)
            continue
        b, n, _ = issued[c]
        for i in range(n):
            if newest_acked.get(b + i, 0) < c:
                newest_acked[b + i] = c
    flushed = set()
    for _, covered in flushes:
        flushed.update(ack_order[:covered])

    h = nbd.NBD()
    h.connect_uri(uri)
    size = h.get_size()
    assert size >= (first + blocks) * BS, "disk smaller than the workload's range"
    seen = array("Q", bytes(8 * blocks))
    torn = 0
    for off in range(0, blocks * BS, CHUNK):
        data = h.pread(min(CHUNK, blocks * BS - off), first * BS + off)
        for j in range(0, len(data), BS):
            b = (off + j) // BS
            blk = data[j:j + BS]
            if blk == ZERO:
                seen[b] = 0
                continue
            ok = blk[:8] == MAGIC and zlib.crc32(blk[:BS - 4]) == struct.unpack_from("<I", blk, BS - 4)[0]
            bi, c = struct.unpack_from("<QQ", blk, 8)
            if not ok or bi != first + b:
                torn += 1
                seen[b] = 0
                if len(errors) < 50:
                    errors.append("block %d is torn or foreign (magic %r, index %d, counter %d)" % (first + b, bytes(blk[:8]), bi, c))
                continue
            seen[b] = c
    h.shutdown()

    survived_unacked = set()
    k = 0  # highest counter of this run that survived
    for b in range(blocks):
        v = seen[b]
        mine = writes_to.get(b, [])
        if v != base[b] and v not in issued:
            errors.append("block %d holds write %d, which was never issued to it (before: %d)" % (first + b, v, base[b]))
        elif v in issued and v not in mine:
            errors.append("block %d holds write %d, which was issued to blocks %d+%d" % (first + b, v, first + issued[v][0], issued[v][1]))
        need = 0 if os.environ.get("FERRY_CHECK_PREFIX_ONLY") == "1" else newest_acked.get(b, 0)
        if need and v < need:
            errors.append("block %d holds %d: acknowledged write %d (%s) was lost" % (first + b, v, need, "flushed" if need in flushed else "fua" if issued[need][2] else "plain"))
        if v in issued:
            k = max(k, v)
            if v not in acked:
                survived_unacked.add(v)
    # Prefix of the issue order: every write issued before k to block b is there or superseded.
    prefix_violations = 0
    for b, cs in writes_to.items():
        older = [c for c in cs if c <= k]
        if older and seen[b] < older[-1]:
            prefix_violations += 1
            if len(errors) < 50:
                errors.append("block %d holds %d but write %d to it was issued before surviving write %d: not a prefix of the issue order" % (first + b, seen[b], older[-1], k))

    with open(state_out, "wb") as f:
        f.write(seen.tobytes())
    lost_unacked = sum(1 for c in issued if c > k)
    print(json.dumps({
        "issued": len(issued),
        "acked": len(acked),
        "flushedAcked": len(flushed),
        "fuaAcked": sum(1 for c in acked if c in issued and issued[c][2]),
        "highestSurvivor": k,
        "survivedUnacked": len(survived_unacked),
        "lostUnacked": lost_unacked,
        "writtenBlocks": sum(1 for b in range(blocks) if seen[b]),
        "torn": torn,
        "prefixViolations": prefix_violations,
        "errors": errors[:50],
    }))


main()
