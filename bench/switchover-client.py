#!/usr/bin/python3
# The client of the dr-switchover-pause measurement (bench/dr-rows.ts); run with /usr/bin/python3
# (Debian's libnbd bindings are installed for the system interpreter).
#
#   switchover-client.py URI_FROM URI_TO SIZE MAX_SECONDS
#
# Writes 4 KiB blocks at QD1 (one synchronous pwrite at a time, random 4 KiB-aligned offsets
# below SIZE) to URI_FROM, the primary's export, noting the monotonic time of each
# acknowledgement; prints "writing" after the first. When a write fails there (the switchover
# refused it, or closed the connection), it connects to URI_TO, the new primary's export, and
# writes until a write is acknowledged there: a new connection for every attempt (a replica's
# export is read-only until the switchover made it the primary), 1 ms apart. Prints one JSON
# line: the last acknowledgement at FROM, the first at TO and the pause between them (ms).
# Gives up (pauseMs null) after MAX_SECONDS at either end.
import json
import os
import random
import sys
import time

import nbd

BS = 4096


def main():
    uri_from, uri_to, size, max_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    rnd = random.Random(14)
    blocks = size // BS
    buf = os.urandom(BS)
    out = {"writesFrom": 0, "lastAckFrom": None, "errorFrom": None, "attemptsTo": 0, "firstAckTo": None, "errorTo": None, "pauseMs": None}

    h = nbd.NBD()
    h.connect_uri(uri_from)
    deadline = time.monotonic() + max_s
    try:
        while time.monotonic() < deadline:
            h.pwrite(buf, rnd.randrange(blocks) * BS)
            out["lastAckFrom"] = time.monotonic()
            out["writesFrom"] += 1
            if out["writesFrom"] == 1:
                print("writing", flush=True)
    except nbd.Error as e:
        out["errorFrom"] = str(e)
    del h
    if out["errorFrom"] is None:
        out["errorFrom"] = "no write failed in %s s" % max_s
        print(json.dumps(out), flush=True)
        return

    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        out["attemptsTo"] += 1
        try:
            g = nbd.NBD()
            g.connect_uri(uri_to)
            g.pwrite(buf, rnd.randrange(blocks) * BS)
            out["firstAckTo"] = time.monotonic()
            g.shutdown()
            break
        except nbd.Error as e:
            out["errorTo"] = str(e)
        time.sleep(0.001)
    if out["firstAckTo"] is not None and out["lastAckFrom"] is not None:
        out["pauseMs"] = (out["firstAckTo"] - out["lastAckFrom"]) * 1000
    print(json.dumps(out), flush=True)


main()
