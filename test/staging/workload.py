#!/usr/bin/python3
# Tagged write workload for the staging-area crash tests (run with /usr/bin/python3: the
# libnbd bindings are installed for the system interpreter).
#
#   workload.py URI LOG FIRST_COUNTER FIRST_BLOCK BLOCKS SEED MAX_SECONDS QUEUE_DEPTH
#
# Writes runs of 1..16 4 KiB blocks at random places of blocks [FIRST_BLOCK,
# FIRST_BLOCK+BLOCKS), with QUEUE_DEPTH requests in flight, some of them FUA, with an occasional
# FLUSH. Every block written carries (block index, write counter) and a CRC32, so the
# checker (check.py) can tell which write a block holds and whether it is torn. Counters
# grow in issue order, one per write request.
#
# LOG is append-only and line-buffered (each line reaches the kernel as it is written;
# the server is what gets killed, not this process nor the machine):
#   I c block nblocks fua          before write c is sent
#   A c block nblocks fua          write c acknowledged
#   E c errno                      write c failed
#   FI f acks                      before flush f is sent; `acks` A lines precede it
#   F f acks maxc                  flush f acknowledged: it covers the writes of the first
#                                  `acks` A lines (maxc: the highest counter among them)
#   FE f errno                     flush f failed
# It prints "connected" once connected, and a JSON summary on exit. It ends when the
# connection dies (the server was killed), or after MAX_SECONDS or on SIGINT (then it
# drains, flushes and disconnects).
import json
import random
import signal
import struct
import sys
import time
import zlib

import nbd

MAGIC = b"FERRYWL1"
BS = 4096
MASK = (1 << 64) - 1


def block_bytes(b, c):
    head = MAGIC + struct.pack("<QQI", b, c, 0)  # 28 bytes
    body = struct.pack("<QQ", (c * 0x9E3779B97F4A7C15) & MASK, ((b * 0xC2B2AE3D27D4EB4F) ^ c) & MASK) * 254  # 4064 bytes
    data = head + body
    return data + struct.pack("<I", zlib.crc32(data))


def main():
    uri, log_path = sys.argv[1], sys.argv[2]
    counter = int(sys.argv[3])
    first_block = int(sys.argv[4])
    blocks = int(sys.argv[5])
    rnd = random.Random(int(sys.argv[6]))
    deadline = time.time() + float(sys.argv[7])
    depth = int(sys.argv[8])
    stop = [False]
    signal.signal(signal.SIGINT, lambda *_: stop.__setitem__(0, True))
    log = open(log_path, "a", buffering=1)
    first = counter
    stats = {"issued": 0, "acked": 0, "failed": 0, "flushes": 0, "fua": 0, "error": None}
    acks = [0]
    max_acked = [0]
    inflight = {}
    h = nbd.NBD()
    try:
        h.connect_uri(uri)
    except nbd.Error as e:
        stats["error"] = "connect: " + str(e)
        print(json.dumps({"first": first, "next": counter, **stats}), flush=True)
        return
    print("connected", flush=True)

    def write_done(c, b, n, fua):
        def cb(err):
            inflight.pop(("w", c), None)
            if err.value == 0:
                log.write("A %d %d %d %d\n" % (c, b, n, fua))
                acks[0] += 1
                stats["acked"] += 1
                max_acked[0] = max(max_acked[0], c)
            else:
                log.write("E %d %d\n" % (c, err.value))
                stats["failed"] += 1
            return 1
        return cb

    def flush_done(f, covered, maxc):
        def cb(err):
            inflight.pop(("f", f), None)
            if err.value == 0:
                log.write("F %d %d %d\n" % (f, covered, maxc))
                stats["flushes"] += 1
            else:
                log.write("FE %d %d\n" % (f, err.value))
            return 1
        return cb

    flush_id = 0
    try:
        while time.time() < deadline and not stop[0]:
            while h.aio_in_flight() < depth:
                r = rnd.random()
                if r < 0.02:
                    flush_id += 1
                    log.write("FI %d %d\n" % (flush_id, acks[0]))
                    inflight[("f", flush_id)] = True
                    h.aio_flush(completion=flush_done(flush_id, acks[0], max_acked[0]))
                    continue
                n = 1 if rnd.random() < 0.7 else rnd.randint(2, 16)
                b = first_block + rnd.randrange(0, blocks - n + 1)
                fua = 1 if r < 0.10 else 0
                data = b"".join(block_bytes(b + i, counter) for i in range(n))
                buf = nbd.Buffer.from_bytearray(bytearray(data))
                log.write("I %d %d %d %d\n" % (counter, b, n, fua))
                inflight[("w", counter)] = buf  # keeps the buffer alive until completion
                c = counter
                stats["issued"] += 1
                stats["fua"] += fua
                counter += 1
                h.aio_pwrite(buf, b * BS, completion=write_done(c, b, n, fua), flags=nbd.CMD_FLAG_FUA if fua else 0)
            h.poll(-1)
        while h.aio_in_flight() > 0:
            h.poll(-1)
        h.flush()
        log.write("F 0 %d %d\n" % (acks[0], max_acked[0]))
        h.shutdown()
    except nbd.Error as e:
        stats["error"] = str(e)
    log.close()
    print(json.dumps({"first": first, "next": counter, **stats}), flush=True)


main()
