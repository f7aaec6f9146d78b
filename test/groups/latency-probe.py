#!/usr/bin/python3
# A client-side clock on how long a disk's requests wait (for the membership tests: how long
# requests are held while a group's data path is rebuilt). Run with /usr/bin/python3 (libnbd).
#
#   latency-probe.py URI BLOCKS SLOW_MS STOP_FILE
#
# One connection, queue depth 1: reads 4 KiB of a random block of [0, BLOCKS), one after the
# other, until STOP_FILE exists (or a failed request, which ends it with an error: a held
# request must wait, never fail). Prints "connected" once connected, and on exit one JSON line: requests
# done, the slowest, and every request slower than SLOW_MS as [start, ms] (start: seconds
# since the epoch, the clock the test's Date.now() reads), at most 10000 of them.
import json
import os
import random
import sys
import time

import nbd

SLOW_MAX = 10000


def main():
    uri, blocks, slow_ms, stop_file = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    h = nbd.NBD()
    h.connect_uri(uri)
    print("connected", flush=True)
    rng = random.Random(16)
    done, worst, slow, error = 0, 0.0, [], None
    try:
        while not os.path.exists(stop_file):
            t0 = time.time()
            h.pread(4096, 4096 * rng.randrange(blocks))
            ms = (time.time() - t0) * 1000
            done += 1
            worst = max(worst, ms)
            if ms > slow_ms and len(slow) < SLOW_MAX:
                slow.append([t0, round(ms, 3)])
    except nbd.Error as e:
        error = str(e)
    try:
        h.shutdown()
    except nbd.Error:
        pass
    print(json.dumps({"requests": done, "worstMs": round(worst, 3), "slow": slow, "error": error}), flush=True)


main()
