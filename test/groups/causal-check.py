#!/usr/bin/python3
# Checks that the images of several disks written together by causal-workload.py are a state
# the application could have seen: a causal cut of its writes.
#
#   causal-check.py IMAGE1,IMAGE2,... LOG BLOCKS [--acked]
#
# IMAGEk is disk k of the workload (the order of its URIs): a file (read directly) or an
# nbd:// URI. Blocks [0, BLOCKS) of each are read. LOG may still be growing: only complete
# lines are read.
#
# The cut: per (disk, block), the image shows one write (or zeroes: none); the cut holds,
# per block, every write to it up to the one shown (writes to one block are sequential: the
# workload issues a write to a block only once the previous one to it was acknowledged, and
# this checker verifies that in the log). Rules:
#   - intact: every block is zeroes, or magic, disk index, block index and CRC32 right (no
#     torn block, nothing foreign);
#   - issued: a block shows only a write that was issued to that (disk, block);
#   - causal: let M be the largest `acks` value of any write in the cut (the number of
#     acknowledgements the workload had received when it issued the newest write the images
#     show). Every write among the first M acknowledgements is in the cut (its block shows it
#     or a later write to that block). A violation is "same-disk" when the missing write is
#     needed by a write of its own disk in the cut (a single disk's image is not a prefix of
#     its own order), else "cross-disk" (each disk may be fine alone, together they are an
#     image the application never had);
#   - with --acked (the primaries after a kill -9 of the server): every acknowledged write
#     is in the cut.
# The workload's log is checked for what the rules assume (writes to one block sequential,
# acknowledgements of issued writes only); a log breaking it is reported under logErrors.
# Prints one JSON summary; "errors" lists the first violations in words, "violations" the
# first causal ones as objects.
import bisect
import json
import struct
import sys
import zlib

import nbd

MAGIC = b"FERRYCW1"
BS = 4096
ZERO = bytes(BS)
CHUNK = 1024 * 1024
ERRORS_MAX = 50
VIOLATIONS_MAX = 10


class Image:
    """A disk image to read: a file, or an nbd:// URI."""

    def __init__(self, where):
        self.where = where
        self.h = None
        self.f = None
        if where.startswith("nbd://") or where.startswith("nbds://") or where.startswith("nbd+unix://"):
            self.h = nbd.NBD()
            self.h.connect_uri(where)
            self.size = self.h.get_size()
        else:
            self.f = open(where, "rb")
            self.f.seek(0, 2)
            self.size = self.f.tell()

    def read(self, off, n):
        if self.h:
            return self.h.pread(n, off)
        self.f.seek(off)
        data = self.f.read(n)
        assert len(data) == n, "short read of %s at %d" % (self.where, off)
        return data

    def close(self):
        if self.h:
            self.h.shutdown()
        else:
            self.f.close()


def main():
    images = sys.argv[1].split(",")
    log_path, blocks = sys.argv[2], int(sys.argv[3])
    acked_rule = "--acked" in sys.argv[4:]
    n = len(images)
    errors = []
    log_errors = [0]

    def error(msg):
        if len(errors) < ERRORS_MAX:
            errors.append(msg)

    def log_error(msg):
        log_errors[0] += 1
        error("log: " + msg)

    # The log.
    issued = {}  # counter -> (disk, block, acks)
    ack_order = []  # counters, in acknowledgement order
    ack_pos = {}  # counter -> its index in ack_order
    failed = 0
    last_acks = 0
    with open(log_path) as f:
        for line in f:
            p = line.split()
            if not p or not line.endswith("\n"):
                continue
            if p[0] == "I":
                c, d, b, a = int(p[1]), int(p[2]), int(p[3]), int(p[4])
                if c in issued:
                    log_error("write %d issued twice" % c)
                elif not (0 <= d < n and 0 <= b < blocks):
                    log_error("write %d to disk %d block %d: outside %d disks of %d blocks" % (c, d, b, n, blocks))
                elif a != len(ack_order) or a < last_acks:
                    log_error("write %d says %d acknowledgements preceded it; the log has %d" % (c, a, len(ack_order)))
                else:
                    issued[c] = (d, b, a)
                last_acks = a
            elif p[0] == "A":
                c = int(p[1])
                if c not in issued or c in ack_pos:
                    log_error("acknowledgement of write %d, never issued or acknowledged twice" % c)
                    continue
                ack_pos[c] = len(ack_order)
                ack_order.append(c)
            elif p[0] == "E":
                failed += 1

    # Per (disk, block): its writes in issue order, each issued after the previous one was acknowledged.
    writes_to = {}
    for c in sorted(issued):
        d, b, a = issued[c]
        prev = writes_to.setdefault((d, b), [])
        if prev and not (prev[-1] in ack_pos and ack_pos[prev[-1]] < a):
            log_error("write %d to disk %d block %d was issued before write %d to it was acknowledged" % (c, d, b, prev[-1]))
        prev.append(c)

    # The images.
    seen = [[0] * blocks for _ in range(n)]
    torn = 0
    unissued = 0
    for d, where in enumerate(images):
        img = Image(where)
        assert img.size >= blocks * BS, "image %s holds %d bytes, fewer than %d blocks" % (where, img.size, blocks)
        for off in range(0, blocks * BS, CHUNK):
            data = img.read(off, min(CHUNK, blocks * BS - off))
            for j in range(0, len(data), BS):
                b = (off + j) // BS
                blk = data[j:j + BS]
                if blk == ZERO:
                    continue
                ok = blk[:8] == MAGIC and zlib.crc32(blk[:BS - 4]) == struct.unpack_from("<I", blk, BS - 4)[0]
                bd, bb, c = struct.unpack_from("<QQQ", blk, 8)
                if not ok or bd != d or bb != b:
                    torn += 1
                    error("disk %d block %d is torn or foreign (magic %r, disk %d, block %d, counter %d)" % (d, b, bytes(blk[:8]), bd, bb, c))
                    continue
                if c not in issued or issued[c][:2] != (d, b):
                    unissued += 1
                    where_to = "never issued" if c not in issued else "issued to disk %d block %d" % issued[c][:2]
                    error("disk %d block %d holds write %d, %s" % (d, b, c, where_to))
                    continue
                seen[d][b] = c
        img.close()

    def in_cut(c):
        d, b, _ = issued[c]
        return seen[d][b] >= c

    # The cut's writes that others depend on: the writes shown (earlier writes to their blocks have smaller acks).
    shown = sorted((issued[c][2], c) for d in range(n) for c in seen[d] if c)
    shown_acks = [a for a, _ in shown]
    m = shown_acks[-1] if shown else 0
    m_disk = [max((issued[c][2] for c in seen[d] if c), default=0) for d in range(n)]
    if m > len(ack_order):
        log_error("a write in the cut was issued after %d acknowledgements; the log has %d" % (m, len(ack_order)))

    same_disk = 0
    cross_disk = 0
    violations = []
    for p in range(min(m, len(ack_order))):
        x = ack_order[p]
        if in_cut(x):
            continue
        xd, xb, _ = issued[x]
        # The first write of the cut issued after x's acknowledgement: the earliest one that depends on it.
        w = shown[bisect.bisect_right(shown_acks, p)][1]
        wd, wb, wa = issued[w]
        cross = m_disk[xd] <= p
        if cross:
            cross_disk += 1
        else:
            same_disk += 1
        if len(violations) < VIOLATIONS_MAX:
            violations.append({
                "missing": {"disk": xd, "block": xb, "counter": x, "ackIndex": p, "shows": seen[xd][xb]},
                "dependent": {"disk": wd, "block": wb, "counter": w, "acks": wa},
                "crossDisk": cross,
            })
        error("%s: disk %d block %d shows write %d, not write %d (acknowledgement %d), which write %d on disk %d block %d (issued after %d acknowledgements) depends on" % (
            "cross-disk" if cross else "same-disk", xd, xb, seen[xd][xb], x, p + 1, w, wd, wb, wa))

    lost_acked = 0
    if acked_rule:
        for x in ack_order:
            if not in_cut(x):
                lost_acked += 1
                xd, xb, _ = issued[x]
                error("disk %d block %d shows write %d: acknowledged write %d was lost" % (xd, xb, seen[xd][xb], x))

    acked_in_cut = sum(1 for x in ack_order if in_cut(x))
    print(json.dumps({
        "disks": n,
        "issued": len(issued),
        "acked": len(ack_order),
        "failed": failed,
        "maxAcks": m,
        "ackedInCut": acked_in_cut,
        "perDisk": [{
            "issued": sum(1 for c in issued if issued[c][0] == d),
            "writtenBlocks": sum(1 for c in seen[d] if c),
            "highest": max(seen[d]) if blocks else 0,
            "maxAcks": m_disk[d],
        } for d in range(n)],
        "torn": torn,
        "unissued": unissued,
        "causalViolations": same_disk + cross_disk,
        "sameDiskViolations": same_disk,
        "crossDiskViolations": cross_disk,
        "lostAcked": lost_acked,
        "logErrors": log_errors[0],
        "violations": violations,
        "errors": errors,
    }))


main()
