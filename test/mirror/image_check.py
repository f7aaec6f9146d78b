#!/usr/bin/python3
# Checks that an image file (a mirror, read directly) is a state the disk really had while
# test/staging/workload.py wrote to it: exactly the result of the first K writes of the
# workload in issue order, for some K (the writes are sequenced in issue order: one
# connection, requests staged as they arrive).
#
#   image_check.py IMAGE LOG FIRST_BLOCK BLOCKS [BASE]
#
# Blocks [FIRST_BLOCK, FIRST_BLOCK+BLOCKS) of IMAGE must each be intact (what the disk held
# before the workload, or magic, block index and CRC32 right) and hold the newest write
# issued to them among writes 1..K, where K is the highest write counter found in the image
# (none: what it held before). What the disk held before is the same blocks of BASE if
# given, else zeroes. LOG may still be growing: only complete lines are read. Prints a JSON
# summary; "errors" lists the first violations.
import json
import struct
import sys
import zlib

MAGIC = b"FERRYWL1"
BS = 4096
ZERO = bytes(BS)
CHUNK = 1024 * 1024


def main():
    image, log_path, first, blocks = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    base = open(sys.argv[5], "rb") if len(sys.argv) > 5 else None
    issued = {}  # counter -> (block relative to FIRST_BLOCK, nblocks)
    with open(log_path) as f:
        for line in f:
            p = line.split()
            if p and line.endswith("\n") and p[0] == "I":
                issued[int(p[1])] = (int(p[2]) - first, int(p[3]))

    errors = []
    seen = [0] * blocks
    torn = 0
    with open(image, "rb") as f:
        for off in range(0, blocks * BS, CHUNK):
            f.seek(first * BS + off)
            data = f.read(min(CHUNK, blocks * BS - off))
            before = None
            if base:
                base.seek(first * BS + off)
                before = base.read(len(data))
            for j in range(0, len(data), BS):
                b = (off + j) // BS
                blk = data[j:j + BS]
                if blk == (before[j:j + BS] if before is not None else ZERO):
                    continue
                ok = blk[:8] == MAGIC and zlib.crc32(blk[:BS - 4]) == struct.unpack_from("<I", blk, BS - 4)[0]
                bi, c = struct.unpack_from("<QQ", blk, 8)
                if not ok or bi != first + b:
                    torn += 1
                    if len(errors) < 50:
                        errors.append("block %d is torn or foreign" % (first + b))
                    continue
                seen[b] = c

    k = max(seen) if blocks else 0
    # The newest write issued to each block among writes 1..k.
    expect = [0] * blocks
    for c in sorted(issued):
        if c > k:
            break
        b, n = issued[c]
        for i in range(n):
            if 0 <= b + i < blocks:
                expect[b + i] = c
    mismatches = 0
    for b in range(blocks):
        if seen[b] != expect[b]:
            mismatches += 1
            if len(errors) < 50:
                v = seen[b]
                what = "never issued" if v and v not in issued else "issued to blocks %d+%d" % (first + issued[v][0], issued[v][1]) if v else "zeroes"
                what = what if v else "its content from before"
                errors.append("block %d holds write %d (%s) but the state after write %d has %d there" % (first + b, v, what, k, expect[b]))
    print(json.dumps({"highest": k, "issued": len(issued), "writtenBlocks": sum(1 for v in seen if v), "torn": torn, "mismatches": mismatches, "errors": errors[:50]}))


main()
