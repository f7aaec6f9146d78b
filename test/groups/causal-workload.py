#!/usr/bin/python3
# Tagged write workload with cross-disk causality, for the consistency group tests (run with
# /usr/bin/python3: the libnbd bindings are installed for the system interpreter).
#
#   causal-workload.py URI1,URI2,... LOG BLOCKS SEED MAX_SECONDS QUEUE_DEPTH
#
# One process, one libnbd handle per URI (disk index = position in the list), QUEUE_DEPTH
# 4 KiB writes in flight on EACH handle, to random blocks of [0, BLOCKS) of each disk. Every
# block written carries (magic, disk index, block index, write counter) and a CRC32, so the
# checker (causal-check.py) can tell which write a block holds and whether it is torn.
# Counters are global (one sequence over all disks) and grow in issue order.
#
# Causality: after the first QUEUE_DEPTH writes per disk, a write is issued only when an
# acknowledgement frees a slot, and the write that follows an acknowledgement from disk k
# goes to disk k+1 (mod the number of disks; the next disk after it with a free slot if that
# one is full, which with every handle at QUEUE_DEPTH does not happen for long). So every
# later write depends on acknowledged writes of the OTHER disks: an application that writes
# its data only once its log write is acknowledged. Never two writes in flight to the same
# (disk, block): writes to one block are sequential, each issued after the previous one to
# it was acknowledged.
#
# LOG is append-only and line-buffered (each line reaches the kernel as it is written; the
# server is what gets killed, not this process nor the machine):
#   I c disk block acks      before write c is sent; `acks` = number of A lines before it
#   A c                      write c acknowledged
#   E c errno                write c failed
# It prints "connected" once every handle is connected, and a JSON summary on exit (counts;
# "chained": writes issued, in response to an acknowledgement, to another disk than the
# acknowledging one; "error": why it ended early, or null). It ends
# when a connection dies (the server was killed), after MAX_SECONDS, or on SIGINT (then it
# drains, flushes every disk and disconnects).
import json
import random
import select
import signal
import struct
import sys
import time
import zlib

import nbd

MAGIC = b"FERRYCW1"
BS = 4096
MASK = (1 << 64) - 1
PICK_TRIES_MAX = 1000


def block_bytes(d, b, c):
    head = MAGIC + struct.pack("<QQQ", d, b, c)  # 32 bytes
    body = (struct.pack("<QQ", (c * 0x9E3779B97F4A7C15) & MASK, ((b * 0xC2B2AE3D27D4EB4F) ^ (d << 56) ^ c) & MASK) * 254)[:BS - 36]
    data = head + body
    return data + struct.pack("<I", zlib.crc32(data))


class Stop(Exception):
    pass


def main():
    uris = sys.argv[1].split(",")
    log_path = sys.argv[2]
    blocks = int(sys.argv[3])
    rnd = random.Random(int(sys.argv[4]))
    deadline = time.time() + float(sys.argv[5])
    depth = int(sys.argv[6])
    n = len(uris)
    assert n >= 1 and depth >= 1 and blocks > depth, "need at least one disk, a depth, and more blocks than the depth"
    stop = [False]
    signal.signal(signal.SIGINT, lambda *_: stop.__setitem__(0, True))
    log = open(log_path, "a", buffering=1)
    stats = {"disks": n, "issued": 0, "acked": 0, "failed": 0, "chained": 0, "perDisk": [{"issued": 0, "acked": 0, "maxInFlight": 0} for _ in range(n)], "error": None}
    counter = [1]
    acks = [0]
    busy = [set() for _ in range(n)]  # blocks with a write in flight, per disk
    inflight = [dict() for _ in range(n)]  # counter -> buffer (kept alive until completion)
    acked_from = []  # disk of each acknowledgement since the last issue round, in order
    handles = []
    for u in uris:
        h = nbd.NBD()
        try:
            h.connect_uri(u)
        except nbd.Error as e:
            stats["error"] = "connect %s: %s" % (u, e)
            print(json.dumps(stats), flush=True)
            return
        assert h.get_size() >= blocks * BS, "disk %s is smaller than %d blocks" % (u, blocks)
        handles.append(h)
    print("connected", flush=True)

    def done(d, c, b):
        def cb(err):
            inflight[d].pop(c, None)
            busy[d].discard(b)
            if err.value == 0:
                log.write("A %d\n" % c)
                acks[0] += 1
                stats["acked"] += 1
                stats["perDisk"][d]["acked"] += 1
                acked_from.append(d)
            else:
                log.write("E %d %d\n" % (c, err.value))
                stats["failed"] += 1
                stop[0] = True  # a failed write: the server is going away
            return 1
        return cb

    def issue(d):
        h = handles[d]
        for _ in range(PICK_TRIES_MAX):
            b = rnd.randrange(0, blocks)
            if b not in busy[d]:
                break
        else:
            raise AssertionError("no free block found on disk %d" % d)
        c = counter[0]
        counter[0] += 1
        buf = nbd.Buffer.from_bytearray(bytearray(block_bytes(d, b, c)))
        log.write("I %d %d %d %d\n" % (c, d, b, acks[0]))
        busy[d].add(b)
        inflight[d][c] = buf
        stats["issued"] += 1
        per = stats["perDisk"][d]
        per["issued"] += 1
        h.aio_pwrite(buf, b * BS, completion=done(d, c, b))
        per["maxInFlight"] = max(per["maxInFlight"], len(inflight[d]))

    def wait_events():
        p = select.poll()
        fds = {}
        for h in handles:
            if h.aio_is_dead() or h.aio_is_closed():
                raise Stop("a connection died")
            fd = h.aio_get_fd()
            dirn = h.aio_get_direction()
            ev = 0
            if dirn & nbd.AIO_DIRECTION_READ:
                ev |= select.POLLIN
            if dirn & nbd.AIO_DIRECTION_WRITE:
                ev |= select.POLLOUT
            if ev:
                p.register(fd, ev)
                fds[fd] = h
        for fd, ev in p.poll(1000):
            h = fds[fd]
            if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                h.aio_notify_read()
            if ev & select.POLLOUT:
                h.aio_notify_write()
            # Completions arrive through the callbacks (which retire their commands: they return 1).

    try:
        for d in range(n):
            for _ in range(depth):
                issue(d)
        while time.time() < deadline and not stop[0]:
            wait_events()
            # One write per acknowledgement, to the next disk after the acknowledging one.
            for k in acked_from:
                for i in range(1, n + 1):
                    j = (k + i) % n
                    if len(inflight[j]) < depth:
                        issue(j)
                        stats["chained"] += j != k
                        break
            del acked_from[:]
        while any(inflight) and not any(h.aio_is_dead() for h in handles):
            wait_events()
        for h in handles:
            h.flush()
        for h in handles:
            h.shutdown()
    except (nbd.Error, Stop) as e:
        stats["error"] = str(e)
    log.close()
    stats["next"] = counter[0]
    print(json.dumps(stats), flush=True)


main()
