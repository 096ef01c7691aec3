# A test device for the reliability scenarios: the real firmware (azure_edge.app.start and the
# Client it builds) sending a numbered reading every 50 ms instead of firmware/main.py's interval.
# Reading n is due 50*n ms after start; the client's step() blocks about 0.2 s, so due readings go
# out in small bursts, in order. After send_telemetry returns, the reading is acknowledged by the
# gateway or durable in the outbox: the console line "handed <boot> <seq>" says so, which is what
# the power-cut test holds the device to. Each body carries the heap in use (gc.mem_alloc()
# after a collection, once per step).
import binascii
import gc
import os
import sys
import time

sys.path.append("/lib")

from azure_edge import app  # noqa: E402

PERIOD_MS = 50


def _ms():
    return time.ticks_ms() if hasattr(time, "ticks_ms") else int(time.monotonic() * 1000)


def _since(t0):
    return time.ticks_diff(_ms(), t0) if hasattr(time, "ticks_diff") else _ms() - t0


def main():
    client, _port, dog = app.start()
    boot = binascii.hexlify(os.urandom(4)).decode()  # tells this boot's seq 1, 2, ... from the last's
    seq = 0
    t0 = _ms()
    while True:
        client.step(0.2)
        dog.feed()
        due = _since(t0) // PERIOD_MS
        # Heap in use after a collection (step() collects too, but not while disconnected): what
        # the device really holds, not garbage waiting for the next collection.
        gc.collect()
        heap = gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0
        while seq < due:
            seq += 1
            client.send_telemetry({"boot": boot, "seq": seq, "heap": heap})
            print("handed %s %d" % (boot, seq))


main()
